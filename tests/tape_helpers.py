"""What several tests compute on a tape."""

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
