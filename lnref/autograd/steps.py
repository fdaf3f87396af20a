"""A step of a replayed pass, as ``replay.Program`` records it and the fusions rewrite it."""

from typing import Any

# (primitive name, argument slots, static parameters, output slot)
Step = tuple[str, tuple[int, ...], dict[str, Any], int]
