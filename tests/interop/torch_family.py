"""Placements added after the first eleven (placeholder)."""

SCHEMES = {}
STREAMS = {}
