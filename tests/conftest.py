"""Fixtures shared by the test modules."""

import os

import pytest

from lnref.autograd import kernels


@pytest.fixture(autouse=True, scope="session")
def session_working_directory(tmp_path_factory):
    """The grid commands write their run records to the current directory by default, and a
    record left by one test (or an earlier pytest run) would be resumed by the next instead of
    run. So nothing runs in the checkout: not even module-scoped fixtures, which start before
    each test's own directory (below) is entered."""
    checkout = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session-cwd"))
    yield
    os.chdir(checkout)


@pytest.fixture(autouse=True)
def own_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in an empty directory of its own."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def ffn_backward_without_the_relu_pattern():
    """The FFN's backward with its ReLU pattern dropped (dhidden = dacted, on every path):
    a broken VJP that every gradient check must catch."""

    def backward(dout, x, w1, w2, hidden, acted, activation):
        dacted, dw2, db2 = kernels.linear_backward(dout, acted, w2)
        dx, dw1, db1 = kernels.linear_backward(dacted, x, w1)
        return dx, dw1, db1, dw2, db2

    with kernels.seam.replaced("feed_forward_backward", backward):
        yield
