"""Schemes written only for the tests: placements lnref does not ship, each one file."""
