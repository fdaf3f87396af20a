"""lnref inside a porter's test suite: lnref as an assertion one calls from one's own tests.

    from lnref.testing import golden, assert_matches, check_port, check_init, check_gradient

    record = golden("residual", 6)                     # config, x, dy, params, y, loss, grads, hidden
    assert_matches(my_port(record), record)            # raises AssertionError: where, how much, why
    check_port(run, "residual", layers=(1, 2, 6), norm=["layernorm", "rmsnorm"])
    check_init(sample_params, "deepnorm", 6)           # the port's initialization, tensor by tensor
    check_gradient(f, grad_f, x, gamma, beta)          # a hand-written backward, by finite differences

- :func:`golden`: the golden record of a configuration in memory, cached per process (at a
  generic point by default; ``rounded_to`` for low-precision ports).
- :func:`assert_matches`: a port's arrays against a record or a golden file, by the rule of
  ``lnref compare``; the failure message has the table, the worst element of each failing
  tensor, the fraction of its elements that fail, the first diverging state in layer order,
  and hints at the usual causes.
- :func:`check_port`: a port's whole matrix of depths and options in one call.
- :func:`check_init`: a port's initialization against the scheme's, by z tests.
- :func:`check_gradient`: the checker's noise-aware finite differences for one's own function.
- ``lnref.testing.strategies``: hypothesis strategies over model configurations (needs hypothesis).
- ``lnref.testing.pytest_plugin``: the fixture ``lnref_golden`` and ``--lnref-golden-dir``.

Importing this module imports NumPy and the light parts of lnref only; the engine loads when a
record is first computed.
"""

from lnref.testing.assertions import assert_matches
from lnref.testing.gradient import check_gradient
from lnref.testing.initialization import InitResult, check_init
from lnref.testing.ports import check_port
from lnref.testing.records import golden

__all__ = ["InitResult", "assert_matches", "check_gradient", "check_init", "check_port", "golden"]
