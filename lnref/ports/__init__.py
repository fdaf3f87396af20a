"""Reference ports: lnref's placements in other frameworks, written from the papers' equations.

    lnref.ports.jax     pure JAX functions (extra lnref[jax])

Each loads lnref's parameters by their documented names (docs/golden-format.md), computes
with its framework's own operations and autodiff, and is checked against lnref's conformance
suite (``lnref export-suite``) in the test suite. They import nothing of lnref's computation:
they are what a port is copied from, and an independent check of lnref itself.
"""
