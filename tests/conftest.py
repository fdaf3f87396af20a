"""Fixtures shared by the test modules."""

import pytest

from lnref.autograd import kernels


@pytest.fixture
def ffn_backward_without_the_relu_pattern():
    """The FFN's backward with its ReLU pattern dropped (dhidden = dacted, on every path):
    a broken VJP that every gradient check must catch."""

    def backward(dout, x, w1, w2, hidden, acted, activation, mask):
        dacted, dw2, db2 = kernels.linear_backward(dout, acted, w2)
        dx, dw1, db1 = kernels.linear_backward(dacted, x, w1)
        return dx, dw1, db1, dw2, db2

    with kernels.seam.replaced("feed_forward_backward", backward):
        yield
