"""The cases the conformance suite leaves out (a scheme's UNJUDGED): a gradient zero by
structure, alone in its comparison group, whose stored value is round-off that no port
reproduces. Each is shown to be zero by structure, and to fail a correct port."""

from __future__ import annotations

import pytest

import lnref
from lnref.golden import compare_arrays
from lnref.golden.suite import SUITE_INPUTS, SUITE_MODEL, suite_cases
from lnref.gradcheck.point import jitter_params
from lnref.schemes import get_scheme
from lnref.testing import golden


def siamese_scalenorm(layers=2):
    model = lnref.build("siamese", layers, **SUITE_MODEL, norm="scalenorm")
    model.load(jitter_params(model.params, seed=3))
    return model


def test_siameses_first_y_norm_gain_under_scalenorm_has_gradient_zero_at_a_generic_point():
    """y_0 = x_0, so the first sublayer normalizes (g_x + g_y) x / ||x||, where g_y drops out;
    in the next layer, where y and x differ, it does not."""
    model = siamese_scalenorm()
    x, dy, _ = model.sample_inputs()
    _, grads = model.value_and_grad(x, dy)
    assert abs(grads["layers.0.ln_attn_y.g"]) < 1e-14 * abs(grads["layers.0.ln_attn_x.g"])
    assert abs(grads["layers.1.ln_attn_y.g"]) > 1e-3 * abs(grads["layers.1.ln_attn_x.g"])


def test_the_suite_leaves_out_the_unjudged_cases_and_keeps_their_neighbours():
    names = [case.name for case in suite_cases(("siamese",), (1,))]
    assert ("norm", "scalenorm") in get_scheme("siamese").UNJUDGED
    assert "siamese-L1-scalenorm" not in names and "siamese-L1-rmsnorm" in names and "siamese-L1" in names


@pytest.mark.torch
def test_a_correct_port_fails_the_unjudged_case_on_that_gradient_alone():
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from lnref.ports import torch as port

    record = golden("siamese", 1, **SUITE_MODEL, **SUITE_INPUTS, norm="scalenorm")
    actual = port.run(record.config.to_dict(), dict(record.params), record.x, record.dy, record.memory)
    comparison = compare_arrays(dict(record.arrays), actual, golden=record)
    failed = {result.name for result in comparison.results if result.compared and result.status != "ok"}
    assert failed == {"grads/layers.0.ln_attn_y.g"}
    assert abs(actual["grads/layers.0.ln_attn_y.g"]) < 1e-15
