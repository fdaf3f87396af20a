"""The split of a pass by kind of work (``lnref.autograd.timing``): what it times, where each
call lands, and that it leaves nothing behind."""

from __future__ import annotations

import time

import numpy as np
import pytest

import lnref
from lnref.autograd import primitive, timing
from lnref.autograd.kernels import attention_blocked, seam
from lnref.autograd.kernels.norms import layer_norm_forward_reference


@pytest.fixture(scope="module")
def small_model():
    model = lnref.build("pre", n_layers=2, d_model=16, n_heads=2, d_ff=32)
    x, dy, _ = model.sample_inputs(batch=2, seq=4)
    return model, x, dy


def _picked() -> list[tuple[object, object]]:
    return [(t.pick(), t.pick(*(1 << 40 for _ in t.loop_pays_up_to))) for t in seam.twins()]


def test_a_split_leaves_the_registry_the_twins_and_the_loops_as_they_were(small_model):
    model, x, dy = small_model
    registry, picked = dict(primitive.PRIMITIVES), _picked()
    probs_loop = attention_blocked._attention_probs
    with timing.TimeSplit():
        model.value_and_grad(x, dy)
    assert primitive.PRIMITIVES == registry
    assert all(primitive.PRIMITIVES[name] is value for name, value in registry.items())
    assert all(a is c and b is d for (a, b), (c, d) in zip(picked, _picked()))
    assert attention_blocked._attention_probs is probs_loop


def test_a_pass_under_the_timers_gives_the_same_bits(small_model):
    model, x, dy = small_model
    loss, grads = model.value_and_grad(x, dy)
    with timing.TimeSplit():
        timed_loss, timed_grads = model.value_and_grad(x, dy)
    assert timed_loss == loss
    assert all(np.array_equal(timed_grads[name], grads[name]) for name in grads)


def test_the_numpy_twins_split_into_products_attention_norms_and_element_wise(small_model):
    model, x, dy = small_model
    with seam.forced("reference"), timing.TimeSplit() as split:
        model.value_and_grad(x, dy)
    for kind in (timing.PRODUCTS, timing.ATTENTION, timing.NORMS, timing.ELEMENTWISE):
        assert split.seconds[kind] > 0, kind
    assert split.calls[timing.SUBLAYERS] == 0


def test_the_compiled_sublayers_are_a_kind_of_their_own(small_model):
    model, x, dy = small_model
    sublayer_kernels = [
        f"{name}_{way}" for name in ("attention_sublayer", "feed_forward") for way in ("forward", "backward")
    ]
    with seam.forced("loop", *sublayer_kernels), timing.TimeSplit() as split:
        model.value_and_grad(x, dy)
    assert split.calls[timing.SUBLAYERS] == 4 * model.config.n_layers  # two sublayers, forward and backward
    assert split.seconds[timing.SUBLAYERS] > 0


def test_a_slow_norm_shows_in_the_norms_and_nowhere_else(small_model):
    """The negative control: a norm kernel made slow on purpose moves the norms' time by what it sleeps."""
    model, x, dy = small_model
    nap = 2e-3

    def slow_layer_norm(*args):
        time.sleep(nap)
        return layer_norm_forward_reference(*args)

    with timing.TimeSplit() as fast:
        model.value_and_grad(x, dy)
    with seam.replaced("layer_norm_forward", slow_layer_norm), timing.TimeSplit() as slow:
        model.value_and_grad(x, dy)
    norms = 2 * model.config.n_layers + 1  # two per layer and the final one
    assert slow.seconds[timing.NORMS] - fast.seconds[timing.NORMS] >= norms * nap
    others = sum(slow.seconds[kind] for kind in timing.KINDS if kind != timing.NORMS)
    assert others < norms * nap / 2


def test_the_time_of_a_kernel_is_taken_out_of_the_call_around_it():
    split = timing.TimeSplit()
    inner = split.timed(timing.NORMS, lambda: time.sleep(2e-3))
    outer = split.timed(timing.PRODUCTS, lambda: inner())
    outer()
    assert split.seconds[timing.NORMS] >= 2e-3
    assert split.seconds[timing.PRODUCTS] < 1e-3


def test_every_kernel_path_has_a_kind_of_work():
    for twin in seam.twins():
        for implementation in twin.paths.values():
            assert timing.kernel_kind(twin, implementation) in timing.KINDS


def test_wrapping_blocks_do_not_nest():
    with seam.wrapped(lambda twin, fn: fn), pytest.raises(RuntimeError, match="active already"):
        with seam.wrapped(lambda twin, fn: fn):
            pass
