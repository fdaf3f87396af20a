"""A task: one run of a grid, named by a stable key.

A task is a kind (which function runs it: ``lnref.sweep.kinds``) and a configuration that
determines the run completely, seeds included. The configuration is canonical JSON: keys
sorted, no NaN or infinity, tuples written as lists. The key hashes the kind and that text,
so the same run has the same key on any machine, in any process, in any order of a grid;
a change to any setting gives another key.

A grid is a list of tasks; its position in the list (``index``) orders tables, and is not
part of the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

KEY_HEX_DIGITS = 16  # 64 bits: a collision among a million tasks has odds of about 3e-8


def canonical_json(value: Any) -> str:
    """``value`` as the one JSON text the keys hash: sorted keys, no spaces, no NaN."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"a task configuration must be plain JSON data: {err}") from None


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and lists, tuples as lists,
    and non-finite floats as the strings "nan", "inf", "-inf" (JSON has none of them)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass(frozen=True, eq=False)
class Task:
    """One run: ``kind`` names the function, ``config`` its one argument (plain JSON data)."""

    kind: str
    config: dict[str, Any]
    index: int = 0

    def __post_init__(self) -> None:
        # The configuration as a reader of the records file will see it.
        object.__setattr__(self, "config", json.loads(canonical_json(self.config)))

    @property
    def key(self) -> str:
        text = canonical_json({"kind": self.kind, "config": self.config})
        return hashlib.sha256(text.encode()).hexdigest()[:KEY_HEX_DIGITS]


def grid(kind: str, configs: list[dict[str, Any]]) -> list[Task]:
    """One task per configuration, indexed in order; a configuration given twice runs once."""
    tasks: list[Task] = []
    seen: set[str] = set()
    for config in configs:
        task = Task(kind, config, len(tasks))
        if task.key not in seen:
            seen.add(task.key)
            tasks.append(task)
    return tasks


def grid_key(tasks: list[Task]) -> str:
    """A short hash of a grid's task keys in order: the default records file is named by it."""
    return hashlib.sha256("\n".join(task.key for task in tasks).encode()).hexdigest()[:12]
