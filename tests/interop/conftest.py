"""Make the PyTorch port importable as ``torch_port`` (tests/interop is not a package)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
