"""The fast paths (fused sublayers, replayed passes) compute what the readable composition does.

Per op: the fused attention sublayer and the fused FFN give the composition's forward bit for
bit (the same kernels for each product, in the same order); their backward passes sum the
same terms in another order, so gradients agree to 1e-12 of the largest gradient of their
tensor's group (``layers.3.attn.*``), the scale that round-off is relative to.
"""

import numpy as np
import pytest

import lnref
from lnref.model import fast_paths_enabled, refusal

OPTIONS = {
    "plain": {},
    "decoder": {"cross_attention": True, "causal": True},
    "rmsnorm-gelu": {"norm": "rmsnorm", "activation": "gelu"},
    "gelu-tanh": {"activation": "gelu_tanh"},
    "float32": {"dtype": "float32"},
}
TAKEN = [(scheme, name) for scheme in lnref.SCHEMES for name in OPTIONS if refusal(scheme, **OPTIONS[name]) is None]


def _both_paths(scheme, options):
    model = lnref.build(scheme, n_layers=3, **options)
    x, dy, memory = model.sample_inputs(batch=2, seq=5)
    model.fast = True
    fast = model(x, memory), model.value_and_grad(x, dy, memory)
    model.fast = False
    reference = model(x, memory), model.value_and_grad(x, dy, memory)
    return fast, reference


@pytest.mark.parametrize("scheme, options", TAKEN)
def test_fast_paths_give_the_compositions_forward_bit_for_bit(scheme, options):
    (y_fast, (loss_fast, _)), (y_reference, (loss_reference, _)) = _both_paths(scheme, OPTIONS[options])
    np.testing.assert_array_equal(y_fast, y_reference)
    assert loss_fast == loss_reference


@pytest.mark.parametrize("scheme, options", TAKEN)
def test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group(scheme, options):
    (_, (_, fast)), (_, (_, reference)) = _both_paths(scheme, OPTIONS[options])
    rtol = 1e-12 if OPTIONS[options].get("dtype") != "float32" else 1e-5
    assert list(fast) == list(reference)
    groups = {}
    for name, grad in reference.items():
        groups[name.rpartition(".")[0]] = max(groups.get(name.rpartition(".")[0], 0.0), float(np.abs(grad).max()))
    for name, grad in fast.items():
        scale = groups[name.rpartition(".")[0]]
        assert np.abs(grad - reference[name]).max() <= rtol * scale, name


def test_the_fast_paths_are_on_unless_lnref_fast_says_off():
    assert fast_paths_enabled({}) and fast_paths_enabled({"LNREF_FAST": "1"})
    assert not fast_paths_enabled({"LNREF_FAST": "0"}) and not fast_paths_enabled({"LNREF_FAST": "off"})


def test_the_comparison_catches_a_fused_backward_off_by_one_part_in_a_billion(monkeypatch):
    from lnref.autograd import PRIMITIVES

    vjp = PRIMITIVES["feed_forward"].vjp
    off = PRIMITIVES["feed_forward"]._replace(vjp=lambda d, r: tuple(g * (1 + 1e-9) for g in vjp(d, r)))
    monkeypatch.setitem(PRIMITIVES, "feed_forward", off)
    with pytest.raises(AssertionError):
        test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("pre", "plain")
