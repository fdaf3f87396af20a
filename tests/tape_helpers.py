"""What several tests compute on a tape."""

from lnref.autograd import Tape, Tensor


def tape_gradients(fn, arrays, dy):
    """The gradient of the sum of fn(*arrays) * dy with respect to each array, as the tape
    chains the VJPs of the primitives fn calls."""
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    with Tape() as tape:
        out = fn(*leaves)
    tape.backward(out, dy)
    return [leaf.grad for leaf in leaves]
