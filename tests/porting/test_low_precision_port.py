"""A port computing in float16 or bfloat16, judged on golden records whose inputs and
parameters are rounded to its precision, every output exact (float64) from them: its forward
passes at the precision's default tolerance, and a mistake still fails."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch runs the porting tests)")

import porter  # noqa: E402  (imports torch)

from lnref.testing import check_port  # noqa: E402

pytestmark = pytest.mark.torch
PRECISIONS = [
    ("float16", torch.float16),
    pytest.param(
        "bfloat16",
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not __import__("importlib").util.find_spec("ml_dtypes"),
            reason="bfloat16 records need lnref[lowp] (ml_dtypes)",
        ),
    ),
]


def forward_only(config, params, x, dy, memory, **options):
    """The port's output and hidden states: a backward computed in the low precision too
    accumulates its rounding far beyond the forward's (see docs/golden-format.md)."""
    arrays = porter.run(config, params, x, dy, memory, **options)
    return {name: value for name, value in arrays.items() if name == "y" or name.startswith("hidden/")}


@pytest.mark.parametrize("rounded_to, dtype", PRECISIONS)
@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "deepnorm"])
def test_a_port_computing_in_low_precision_passes_on_records_rounded_to_it(scheme, rounded_to, dtype):
    run = functools.partial(forward_only, dtype=dtype)
    assert len(check_port(run, scheme, rounded_to=rounded_to)) == 3


@pytest.mark.parametrize("rounded_to, dtype", PRECISIONS)
def test_a_low_precision_port_with_a_doubled_final_norm_still_fails(rounded_to, dtype):
    run = functools.partial(forward_only, dtype=dtype, double_final_norm=True)
    with pytest.raises(AssertionError, match="first failing: y"):
        check_port(run, "pre", rounded_to=rounded_to)


def test_a_float16_port_fails_a_record_of_full_precision_inputs():
    run = functools.partial(forward_only, dtype=torch.float16)
    with pytest.raises(AssertionError, match="dtype float16!=float64"):
        check_port(run, "pre", layers=(1,))
