"""The placements after the first eleven (the next commit)."""

SCHEMES = {}
STREAMS = {}
