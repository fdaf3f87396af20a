"""The kernels of the DyT, Derf and ScaleNorm norm kinds: each Numba loop twin against its NumPy
twin (1e-12 relative in float64, single precision in float32), the inputs they refuse, and the
rows ScaleNorm clamps. The VJPs against finite differences are in ``tests/test_norm_kinds.py``.

Reached through the seam (``seam.twin(name).loop``), so that with the JIT disabled the loops run
as Python: the shapes stay small.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from lnref.autograd import kernels as K
from lnref.autograd.kernels import seam

TWIN_RTOL = 1e-12
EPS = 1e-5
ROW_SHAPES = [(64, 16), (7, 3), (5, 33), (1, 1), (3, 8)]


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def assert_twins_agree(loop_out, ref_out, rtol=TWIN_RTOL):
    """Equal up to ``rtol`` relative to each output's largest magnitude; dtypes and shapes equal."""
    if isinstance(ref_out, np.ndarray):
        loop_out, ref_out = (loop_out,), (ref_out,)
    assert len(loop_out) == len(ref_out)
    for a, b in zip(loop_out, ref_out):
        assert a.shape == b.shape and a.dtype == b.dtype
        scale = max(float(np.abs(b).max()), np.finfo(np.float64).tiny)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def inputs(key, n, d, dtype=np.float64):
    """x, dy (n, d); alpha, s, g (0-d); gamma, beta (d,): seeded, of ``dtype``."""
    rng = rng_for(*key, n, d)
    x = (2.0 * rng.standard_normal((n, d))).astype(dtype)
    dy = rng.standard_normal((n, d)).astype(dtype)
    alpha, shift, g = (
        np.asarray(v, dtype) for v in (0.5 + rng.random(), 0.3 * rng.standard_normal(), 1 + rng.random())
    )
    gamma = (1.0 + 0.5 * rng.standard_normal(d)).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    return dict(x=x, dy=dy, alpha=alpha, shift=shift, g=g, gamma=gamma, beta=beta)


# Each kernel called as (forward, backward) from one set of inputs: name -> (args of the
# forward, args of the backward given the forward's output).
CALLS = {
    "dyt": (
        lambda v: (v["x"], v["alpha"], v["gamma"], v["beta"]),
        lambda v, out: (v["dy"], v["x"], v["alpha"], v["gamma"]),
    ),
    "derf": (
        lambda v: (v["x"], v["alpha"], v["shift"], v["gamma"], v["beta"]),
        lambda v, out: (v["dy"], v["x"], v["alpha"], v["shift"], v["gamma"]),
    ),
    "scale_norm": (
        lambda v: (v["x"], v["g"], EPS),
        lambda v, out: (v["dy"], v["x"], v["g"], out[1], EPS),
    ),
}
KINDS = sorted(CALLS)


def twins(kind, direction):
    twin = seam.twin(f"{kind}_{direction}")
    return twin.loop, twin.reference


def forward_and_backward(kind, impl, values):
    """(forward output, backward output) of one twin (``impl`` 0: loop, 1: reference)."""
    forward_args, backward_args = CALLS[kind]
    out = twins(kind, "forward")[impl](*forward_args(values))
    return out, twins(kind, "backward")[impl](*backward_args(values, out))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_the_loop_twins_match_the_numpy_twins_in_float64(kind, shape):
    values = inputs(("twins", kind), *shape)
    loop_out, loop_grads = forward_and_backward(kind, 0, values)
    ref_out, ref_grads = forward_and_backward(kind, 1, values)
    assert_twins_agree(loop_out, ref_out)
    assert_twins_agree(loop_grads, ref_grads)


@pytest.mark.parametrize("kind", KINDS)
def test_the_loop_twins_match_the_numpy_twins_to_single_precision_in_float32(kind):
    values = inputs(("float32", kind), 6, 10, np.float32)
    loop_out, loop_grads = forward_and_backward(kind, 0, values)
    ref_out, ref_grads = forward_and_backward(kind, 1, values)
    assert_twins_agree(loop_out, ref_out, rtol=1e-5)
    assert_twins_agree(loop_grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_the_public_kernels_give_the_same_bits_on_two_calls(kind):
    values = inputs(("bits", kind), 5, 7)
    forward, backward = getattr(K, f"{kind}_forward"), getattr(K, f"{kind}_backward")
    forward_args, backward_args = CALLS[kind]
    runs = []
    for _ in range(2):
        out = forward(*forward_args(values))
        runs.append([*(out if isinstance(out, tuple) else (out,)), *backward(*backward_args(values, out))])
    assert [a.tobytes() for a in runs[0]] == [b.tobytes() for b in runs[1]]


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_in_x_is_refused(impl, kind, bad):
    values = inputs(("nonfinite", kind), 4, 6)
    values["x"][2, 3] = bad
    forward_args, _ = CALLS[kind]
    with pytest.raises(ValueError, match="NaN or inf"):
        twins(kind, "forward")[impl](*forward_args(values))


@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_dyt_and_derf_take_huge_finite_values_to_their_bounds(kind):
    values = inputs(("huge", kind), 3, 4)
    values["x"] = np.full((3, 4), 1e300)
    forward_args, _ = CALLS[kind]
    y = getattr(K, f"{kind}_forward")(*forward_args(values))
    np.testing.assert_allclose(y, np.broadcast_to(values["gamma"] + values["beta"], y.shape), rtol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_the_scalar_parameters_must_be_0_d(kind):
    values = inputs(("scalars", kind), 3, 4)
    for name in ("alpha", "g"):
        values[name] = np.full(4, float(values[name]))
    forward_args, _ = CALLS[kind]
    with pytest.raises(ValueError, match="scalar"):
        getattr(K, f"{kind}_forward")(*forward_args(values))


def test_a_gain_of_another_dtype_is_refused_rather_than_cast():
    values = inputs(("dtype",), 3, 4)
    with pytest.raises(TypeError, match="one dtype"):
        K.dyt_forward(values["x"].astype(np.float32), values["alpha"], values["gamma"], values["beta"])


@pytest.mark.skipif(not K.USE_NUMBA, reason="the size rule chooses between compiled and NumPy twins only then")
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_small_dyt_takes_the_loop_and_bigger_dyt_numpy_s_vectorized_tanh(direction):
    twin = seam.twin(f"dyt_{direction}")
    assert twin.pick(2 * 8 * 16) is twin.loop  # the small model's norms
    assert twin.pick(8 * 64 * 256) is twin.reference  # the large model's


# ----- ScaleNorm's clamp ----------------------------------------------------------------


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
def test_scale_norm_rows_above_eps_land_on_the_sphere_of_radius_g(impl):
    values = inputs(("sphere",), 5, 6)
    (y, norm), _ = forward_and_backward("scale_norm", impl, values)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), float(values["g"]), rtol=1e-14)
    np.testing.assert_allclose(norm, np.linalg.norm(values["x"], axis=1), rtol=1e-14)


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
def test_scale_norm_rows_under_eps_are_scaled_by_g_over_eps_and_so_is_their_gradient(impl):
    values = inputs(("clamped",), 3, 4)
    values["x"] *= 1e-8  # norms about 1e-7, under eps
    (y, _), (dx, dg) = forward_and_backward("scale_norm", impl, values)
    g = float(values["g"])
    np.testing.assert_allclose(y, values["x"] * (g / EPS), rtol=1e-14)
    np.testing.assert_allclose(dx, values["dy"] * (g / EPS), rtol=1e-14)
    np.testing.assert_allclose(dg, np.sum(values["dy"] * values["x"]) / EPS, rtol=1e-12)


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
def test_scale_norm_of_a_zero_row_is_zero_with_a_finite_gradient(impl):
    values = inputs(("zero",), 3, 4)
    values["x"][1] = 0.0
    (y, _), (dx, dg) = forward_and_backward("scale_norm", impl, values)
    assert np.all(y[1] == 0.0) and np.isfinite(dx).all() and np.isfinite(dg)


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
def test_scale_norm_at_the_bound_keeps_the_radial_term(impl):
    values = inputs(("bound",), 1, 4)
    values["x"] *= EPS / np.linalg.norm(values["x"])
    _, norm = twins("scale_norm", "forward")[impl](values["x"], values["g"], EPS)
    norm = np.full_like(norm, EPS)  # exactly at the bound
    dx, _ = twins("scale_norm", "backward")[impl](values["dy"], values["x"], values["g"], norm, EPS)
    x_hat = values["x"] / EPS
    radial_part = float(np.sum(dx * x_hat))  # the sphere's derivative has none
    assert abs(radial_part) < 1e-9 * float(np.abs(dx).max())


# ----- Derf's derivative is erf's exact one -----------------------------------------------


@pytest.mark.parametrize("impl", [0, 1], ids=["loop", "reference"])
def test_the_derf_backward_slope_is_two_over_sqrt_pi_exp_minus_z_squared(impl):
    values = inputs(("slope",), 2, 5)
    values["gamma"], values["dy"] = np.ones(5), np.ones((2, 5))
    _, (dx, *_) = forward_and_backward("derf", impl, values)
    z = float(values["alpha"]) * values["x"] + float(values["shift"])
    expected = float(values["alpha"]) * 2.0 / math.sqrt(math.pi) * np.exp(-z * z)
    np.testing.assert_allclose(dx, expected, rtol=1e-14)
