"""Make the interop tests' helpers importable (``agreement``; tests/interop is not a package),
and run the PyTorch port's tensors on one torch thread."""

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tensors this small gain nothing from threads, and on a busy machine torch's thread
    pool costs 30x; restore the setting for whatever runs next."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
