"""Make the porting tests' own modules importable (tests/porting is not a package), and run
torch on one thread: tensors this small gain nothing from threads, and on a busy machine the
thread pool costs far more than it saves."""

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
