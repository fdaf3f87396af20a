"""What the interop tests share: golden files of small models and the agreement measure.

Agreement is measured as ``lnref compare`` measures it (docs/golden-format.md): a tensor
agrees when max|a - e| <= rtol * scale, scale the largest |e| among the tensor and its
siblings (names equal up to the last '.').
"""

from __future__ import annotations

import numpy as np

import lnref
from lnref.golden import export_golden
from lnref.gradcheck.point import jitter_params
from lnref.ports import torch as torch_port

RTOL = 1e-10
SMALL = dict(d_model=16, n_heads=2, d_ff=64)


def export(tmp_path, scheme, layers, generic=False, **options):
    """A golden file of ``scheme`` at its initialization, or (``generic``) at a point where
    every tensor is moved off its initial value, so that no gain is 1 and no shift 0."""
    model = lnref.build(scheme, layers, **SMALL, **options)
    if generic:
        model.load(jitter_params(model.params, seed=1))
    path = tmp_path / f"{scheme}-{layers}.npz"
    export_golden(model, path, batch=2, seq=8)
    return path


def stored(path):
    return torch_port.read_golden(path)[1]


def group(name):
    head, slash, tail = name.rpartition("/")
    return head + slash + tail.rpartition(".")[0] if "." in tail else name


def sublayer(name):
    """The scale group of a gradient at the scale of its whole sublayer: the q and k norms'
    gain gradients ``grads/layers.45.attn.q_norm.gamma`` go with ``grads/layers.45.attn.*``."""
    parts = name.split(".")
    return ".".join(parts[:3]) if name.startswith("grads/layers.") and len(parts) > 4 else group(name)


def disagreements(expected, actual, rtol=RTOL, grouping=group):
    """{name: max|a - e| / scale} for every tensor of ``actual`` beyond ``rtol``; the scale
    of a tensor is the largest |e| in its group (``grouping(name)``)."""
    scales = {}
    for name, value in expected.items():
        if name != "config":
            scales[grouping(name)] = max(scales.get(grouping(name), 0.0), float(np.max(np.abs(value))))
    failing = {}
    for name, value in actual.items():
        error = float(np.max(np.abs(value - expected[name])))
        scale = scales[grouping(name)]
        if not error <= rtol * scale:
            failing[name] = error / scale if scale else float("inf")
    return failing


def nudged(path, out):
    """A copy of the golden file at ``path`` with every parameter one unit in the last place up."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    for name in arrays:
        if name.startswith("params/"):
            arrays[name] = np.nextafter(arrays[name], np.inf)
    np.savez(out, **arrays)
    return out


def assert_agrees(path, undecided_by_float64=False):
    """Every array the file predicts (y, loss, each gradient, each hidden state) agrees.

    ``undecided_by_float64``: for deep stacks whose tokens grow alike (rank collapse), where
    some gradients (the q and k norms' of the upper layers) are tiny differences of large
    terms. A tensor may then disagree beyond 1e-10 of its own group only if the port's own
    value moves by a tenth of that when every parameter moves by one unit in the last place
    (float64 does not fix those digits: two implementations' round-off differs by a few
    times one such move), and it must still agree to 1e-10 of its whole sublayer's scale.
    """
    expected, actual = stored(path), torch_port.evaluate(path)
    predicted = {"y", "loss", "grads/input", *(n for n in expected if n.startswith(("grads/", "hidden/")))}
    assert set(actual) == predicted
    failing = disagreements(expected, actual)
    if undecided_by_float64:
        moved = disagreements(actual, torch_port.evaluate(nudged(path, path.with_suffix(".nudged.npz"))), RTOL / 10)
        assert set(failing) <= set(moved), (
            f"decided by float64, yet disagreeing: {sorted(set(failing) - set(moved))[:5]}"
        )
        failing = disagreements(expected, actual, grouping=sublayer)
    assert not failing, f"torch disagrees beyond {RTOL:g}: {dict(list(failing.items())[:5])}"
