"""What several tests compute on a tape, and how they compare its results."""

import numpy as np

import lnref
from lnref.autograd import Tape, Tensor
from lnref.autograd.kernels import seam


def tape_gradients(fn, arrays, dy):
    """The gradient of the sum of fn(*arrays) * dy with respect to each array, as the tape
    chains the VJPs of the primitives fn calls."""
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    with Tape() as tape:
        out = fn(*leaves)
    tape.backward(out, dy)
    return [leaf.grad for leaf in leaves]


def taped_and_replayed(model, seed=1):
    """Two passes of ``model.value_and_grad`` on one sample: the first on the tape, the
    second replaying the calls the first recorded."""
    x, dy, memory = model.sample_inputs(seed=seed)
    return model.value_and_grad(x, dy, memory), model.value_and_grad(x, dy, memory)


def recorded_program(model):
    """The replay's program of ``model``'s one recorded pass."""
    (program,) = model.replayer.programs.values()
    return program


def fused_steps(model):
    """The steps a replay of ``model``'s one recorded pass runs, its fused steps in place."""
    return recorded_program(model).fused_steps


def replayed_with_backward_off(model, backward):
    """A replayed pass of ``model`` on the sample of seed 1 while the loop twin ``backward``
    hands its first cotangent back off by a part in a billion: the negative control of a bit
    test of a fused step."""
    good = seam.twin(backward).loop

    def off_by_a_little(*args):
        first, *rest = good(*args)
        return (first * (1 + 1e-9), *rest)

    with seam.replaced(backward, off_by_a_little):
        return model.value_and_grad(*model.sample_inputs(seed=1))


def same_bits(array):
    """``array``'s bytes: what two arrays compare by when the signs of zeros must agree too."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def assert_same_bits(first, second):
    """The same value and gradients of two ``value_and_grad`` results, bit for bit: the signs of
    zeros too."""
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    for name in grads_a:
        assert grads_a[name].dtype == grads_b[name].dtype, name
        np.testing.assert_array_equal(same_bits(grads_a[name]), same_bits(grads_b[name]), err_msg=name)


def assert_same_program_bits(replayed, taped):
    """A replayed program's output and gradients against the tape's, bit for bit."""
    (out, grads), (taped_out, taped_grads) = replayed, taped
    assert out.value == taped_out
    for mine, theirs in zip(grads, taped_grads, strict=True):
        np.testing.assert_array_equal(same_bits(mine), same_bits(theirs))


def mhc_with_varied_mappings(size, **options):
    """An mHC model whose mappings differ from token to token and from copy to copy (at init
    phi = 0 gives every token the same weights)."""
    model = lnref.build("mhc", **size, **options)
    rng = np.random.default_rng(5)
    for name, value in model.params.items():
        if ".mhc_" in name:
            model.params[name] = np.asarray(value + 0.3 * rng.standard_normal(value.shape), value.dtype)
    return model


def branch_arrays_with_scale(branch, seed=0, d=8):
    """(a, gamma, beta, the attention's or the FFN's weights..., a per-feature scale w) of one
    branch on a (2, 3, d) stream: the scaled branch's and the scaled skip's fused steps take them."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((2, 3, d)), 1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)]
    if branch == "attention":
        arrays += [a for _ in range(4) for a in (0.3 * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d))]
    else:
        arrays += [0.5 * rng.standard_normal((d, 12)), 0.1 * rng.standard_normal(12)]
        arrays += [0.5 * rng.standard_normal((12, d)), 0.1 * rng.standard_normal(d)]
    return [*arrays, 1 + 0.5 * rng.standard_normal(d)]
