"""Reference ports: lnref's placements in other frameworks, written from the papers' equations.

    lnref.ports.torch   PyTorch (extra lnref[torch]); its schemes in torch_schemes.py,
                        torch_family.py and torch_family2.py, its norm kinds and QK-norm
                        variants in torch_norms.py
    lnref.ports.jax     pure JAX functions (extra lnref[jax]); its schemes in jax_schemes.py
                        and jax_family2.py

Each loads lnref's parameters by their documented names (docs/golden-format.md), computes
with its framework's own operations and autodiff, and is checked against lnref's conformance
suite (``lnref export-suite``) in the test suite. They import nothing of lnref's computation:
they are what a port is copied from, and an independent check of lnref itself.
"""
