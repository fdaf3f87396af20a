"""The float dtypes the engine computes in: float64 (the default of every check) and float32."""

from __future__ import annotations

import numpy as np

FLOAT64 = np.dtype(np.float64)
FLOAT32 = np.dtype(np.float32)
FLOAT_DTYPES = (FLOAT64, FLOAT32)
