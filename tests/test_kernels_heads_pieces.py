"""Self-attention with pieces around its core as one kernel each way: LayerNorms of each head's
queries, keys and values before it (HybridNorm), a head scale and a LayerNorm between the
heads and W_o after it (NormFormer, Sub-LN). Its loop twin against its NumPy twin, the fused
primitive against the composition and against finite differences, the view's choice of it,
and broken backwards caught."""

from __future__ import annotations

import numpy as np
import pytest
import test_fast_paths

import lnref
from lnref import nn
from lnref.autograd import PRIMITIVES, Tape, Tensor, fused, ops, value_and_grad
from lnref.autograd.kernels import seam
from lnref.gradcheck import check_vjp
from lnref.model import refusal

TWIN_RTOL = 1e-12
FLOAT32_RTOL = 1e-4
N_HEADS, EPS = 2, 1e-5
# Which of the pieces after the core are present: (the head scale, the LayerNorm before W_o).
PIECES = {"none": (False, False), "scale": (True, False), "norm": (False, True), "both": (True, True)}
# Which of q, k, v have a head norm.
HEAD_NORMS = {"none": "", "qk": "qk", "qkv": "qkv", "v": "v"}
PIECE_NAMES = ("q_gamma", "q_beta", "k_gamma", "k_beta", "v_gamma", "v_beta", "scale", "gamma", "beta")


def _inputs(batch=2, seq=5, d=8, seed=0, dtype=np.float64):
    """x, the eight weights of nn.ATTENTION_PARAMS, every piece by name, and a cotangent."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq, d))
    weights = [rng.standard_normal(shape) / 3 for _ in range(4) for shape in ((d, d), (d,))]
    pieces = {"scale": 1 + rng.standard_normal(N_HEADS) / 5}
    for prefix, width in (("q_", d // N_HEADS), ("k_", d // N_HEADS), ("v_", d // N_HEADS), ("", d)):
        pieces[f"{prefix}gamma"], pieces[f"{prefix}beta"] = (
            1 + rng.standard_normal(width) / 10,
            rng.standard_normal(width) / 10,
        )
    dout = rng.standard_normal((batch, seq, d))
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(x), [cast(w) for w in weights], {name: cast(a) for name, a in pieces.items()}, cast(dout)


def _present(head_norms, pieces):
    """The names of PIECE_NAMES present with these head norms and pieces after the core."""
    with_scale, with_norm = PIECES[pieces]
    return (
        {f"{p}_{g}" for p in HEAD_NORMS[head_norms] for g in ("gamma", "beta")}
        | ({"scale"} if with_scale else set())
        | ({"gamma", "beta"} if with_norm else set())
    )


@pytest.mark.parametrize(
    "dtype, rtol", [(np.float64, TWIN_RTOL), (np.float32, FLOAT32_RTOL)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("head_norms", HEAD_NORMS)
def test_the_loop_twin_computes_what_the_numpy_twin_does(head_norms, pieces, dtype, rtol):
    x, weights, given, dout = _inputs(dtype=dtype)
    present = _present(head_norms, pieces)
    arguments = [given[name] if name in present else np.empty(0, dtype) for name in PIECE_NAMES]
    q_gamma, _, k_gamma, _, v_gamma, _, scale, gamma, _ = arguments
    stacked, biases = np.stack(weights[0::2]), np.stack(weights[1::2])
    results = {}
    for path in ("loop", "reference"):
        forward = seam.twin("heads_pieces_attention_forward").paths[path]
        backward = seam.twin("heads_pieces_attention_backward").paths[path]
        out, *kept = forward(x, stacked, biases, *arguments, N_HEADS, False, EPS)
        grads = backward(dout, x, stacked, q_gamma, k_gamma, v_gamma, scale, gamma, *kept)
        results[path] = (out, *kept, *grads)
    assert len(results["loop"]) == len(results["reference"])
    for loop, reference in zip(results["loop"], results["reference"]):
        scale_of = max(float(np.abs(reference).max()), 1.0) if reference.size else 1.0
        np.testing.assert_allclose(loop, reference, rtol=rtol, atol=rtol * scale_of)


def _composed_attention(x, weights, pieces, head_norms):
    """nn.attention with the pieces present in ``pieces`` (a dict of arrays or Tensors)."""
    params = dict(zip(nn.ATTENTION_PARAMS, weights))
    keywords = {}
    for p in HEAD_NORMS[head_norms]:
        gamma, beta = pieces[f"{p}_gamma"], pieces[f"{p}_beta"]
        norm = lambda h, gamma=gamma, beta=beta: ops.layer_norm(h, gamma, beta, eps=EPS)  # noqa: E731
        keywords[f"{p}_norm"] = lambda t, norm=norm: nn.per_head(t, N_HEADS, norm)
    if "scale" in pieces:
        keywords["head_scale"] = pieces["scale"]
    if "gamma" in pieces:
        keywords["heads_norm"] = lambda h: ops.layer_norm(h, pieces["gamma"], pieces["beta"], eps=EPS)
    return nn.attention(x, params, N_HEADS, **keywords)


@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("head_norms", HEAD_NORMS)
def test_the_fused_primitive_is_the_attention_with_its_pieces(head_norms, pieces):
    x, weights, given, dout = _inputs(seed=1)
    present = _present(head_norms, pieces)

    def fused_loss(x, *rest):
        weights, by_name = rest[:8], dict(zip(PIECE_NAMES, rest[8:]))
        arguments = [by_name[name] if name in present else None for name in PIECE_NAMES]
        return ops.sum(fused.heads_pieces_attention(x, *weights, *arguments, n_heads=N_HEADS, eps=EPS) * dout)

    def composed_loss(x, *rest):
        weights, by_name = rest[:8], dict(zip(PIECE_NAMES, rest[8:]))
        out = _composed_attention(x, weights, {name: by_name[name] for name in present}, head_norms)
        absent = [0.0 * ops.sum(by_name[name]) for name in PIECE_NAMES if name not in present]
        return sum(absent, ops.sum(out * dout))

    arrays = (x, *weights, *(given[name] for name in PIECE_NAMES))
    fused_value, fused_grads = value_and_grad(fused_loss)(*arrays)
    composed_value, composed_grads = value_and_grad(composed_loss)(*arrays)
    assert fused_value == composed_value  # the same kernels in the same order
    for ours, theirs in zip(fused_grads, composed_grads):
        np.testing.assert_allclose(ours, theirs, rtol=TWIN_RTOL, atol=TWIN_RTOL * max(np.abs(theirs).max(), 1.0))


def _fused_with(head_norms, pieces):
    """The fused attention as a function of x, the weights and the present pieces (in the
    order of PIECE_NAMES), and the names of those pieces."""
    present = [name for name in PIECE_NAMES if name in _present(head_norms, pieces)]

    def attention(x, *rest):
        by_name = dict(zip(present, rest[8:]))
        arguments = [by_name.get(name) for name in PIECE_NAMES]
        return fused.heads_pieces_attention(x, *rest[:8], *arguments, n_heads=N_HEADS, eps=EPS)

    return attention, present


def _assert_all_pass_but_the_key_norms_shift(checks, key_shift):
    """Every check passed except that of the key norm's shift: adding q . beta_k to every
    score of a query leaves its softmax unchanged, so that gradient is exactly zero and finite
    differences cannot resolve it (as ``nn.ZERO_BY_STRUCTURE`` says)."""
    assert checks[key_shift].status == "unresolved" and abs(checks[key_shift].analytic) < 1e-12, checks[key_shift]
    rest = checks[:key_shift] + checks[key_shift + 1 :]
    assert all(check.status == "passed" for check in rest), rest


@pytest.mark.parametrize("path", ["loop", "reference"])
@pytest.mark.parametrize("pieces", ["none", "both"])
def test_the_fused_vjp_with_head_norms_matches_finite_differences(path, pieces):
    x, weights, given, _ = _inputs(seed=2)
    attention, present = _fused_with("qkv", pieces)
    with seam.forced(path, "heads_pieces_attention_forward", "heads_pieces_attention_backward"):
        checks = check_vjp(attention, x, *weights, *(given[name] for name in present))
    _assert_all_pass_but_the_key_norms_shift(checks, key_shift=1 + 8 + present.index("k_beta"))


def test_a_backward_that_drops_the_value_norms_vjp_fails_the_finite_difference_check():
    loop = seam.twin("heads_pieces_attention_backward").loop

    def backward_without_the_value_norm(dout, x, weights, q_gamma, k_gamma, v_gamma, *rest):
        """The value projection's cotangent taken to be dV, as if v had no norm."""
        true = loop(dout, x, weights, q_gamma, k_gamma, v_gamma, *rest)
        dropped = loop(dout, x, weights, q_gamma, k_gamma, np.empty(0, x.dtype), *rest)
        return (*dropped[:7], *true[7:9], *dropped[9:])  # dv_gamma and dv_beta still right

    x, weights, given, _ = _inputs(seed=3)
    attention, present = _fused_with("qkv", "none")
    arrays = (x, *weights, *(given[name] for name in present))
    key_shift = 1 + 8 + present.index("k_beta")
    with seam.forced("loop", "heads_pieces_attention_forward", "heads_pieces_attention_backward"):
        _assert_all_pass_but_the_key_norms_shift(check_vjp(attention, *arrays), key_shift)
        with seam.replaced("heads_pieces_attention_backward", backward_without_the_value_norm):
            checks = check_vjp(attention, *arrays)
    failed = {i for i, check in enumerate(checks) if check.status == "failed"}
    assert failed == {0, 5, 6}  # x, wv, bv: what reads the value projection's cotangent


def _self_attention_records(**options):
    """The names of the tape records of layer 0's self-attention in a HybridNorm model."""
    model = lnref.build("hybridnorm", n_layers=2, **options)
    run = model.run()
    x = Tensor(model.sample_inputs()[0], requires_grad=True)
    layer = run.layer_view(0)
    with Tape() as tape:
        layer.self_attention(x, q_norm="attn.q_norm", k_norm="attn.k_norm", v_norm="attn.v_norm")
    return [record[0].name for record in tape.records]


@pytest.mark.parametrize("first_block", ["qkv", "pre"])
def test_hybridnorms_self_attention_is_one_tape_record(first_block):
    assert _self_attention_records(options={"first_block": first_block}) == ["heads_pieces_attention"]


def test_hybridnorm_with_another_norm_kind_keeps_the_composition():
    names = _self_attention_records(norm="rmsnorm")
    assert "heads_pieces_attention" not in names and "multi_head_attention" in names


@pytest.mark.parametrize("scheme", ["subln", "normformer", "hybridnorm"])
def test_the_attention_of_a_scheme_with_pieces_around_its_core_is_one_record(scheme):
    model = lnref.build(scheme, n_layers=2)
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    names = [step[0] for step in program.steps]
    assert names.count("heads_pieces_attention") == model.config.n_layers
    assert "multi_head_attention" not in names


def test_another_norm_kind_between_the_heads_and_w_o_keeps_the_composition():
    model = lnref.build("subln", n_layers=2, norm="rmsnorm")
    model.value_and_grad(*model.sample_inputs()[:2])
    (program,) = model.replayer.programs.values()
    assert "heads_pieces_attention" not in [step[0] for step in program.steps]


# HybridNorm* (its first block Pre-Norm) under each option set of the fast paths' comparison.
HYBRIDNORM_STAR = {
    f"hybridnorm*-{name}": {**options, "options": {"first_block": "pre"}}
    for name, options in test_fast_paths.OPTIONS.items()
    if refusal("hybridnorm", **options) is None
}


@pytest.mark.parametrize("options", HYBRIDNORM_STAR)
def test_hybridnorm_stars_fast_path_is_its_composition(monkeypatch, options):
    monkeypatch.setitem(test_fast_paths.OPTIONS, options, HYBRIDNORM_STAR[options])
    test_fast_paths.test_fast_paths_give_the_compositions_forward_bit_for_bit("hybridnorm", options)
    test_fast_paths.test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("hybridnorm", options)


def test_the_fast_path_comparison_catches_a_heads_pieces_backward_off_by_one_part_in_a_billion(monkeypatch):
    vjp = PRIMITIVES["heads_pieces_attention"].vjp
    off = PRIMITIVES["heads_pieces_attention"]._replace(
        vjp=lambda d, r: tuple(None if g is None else g * (1 + 1e-9) for g in vjp(d, r))
    )
    monkeypatch.setitem(PRIMITIVES, "heads_pieces_attention", off)
    with pytest.raises(AssertionError):
        test_fast_paths.test_fast_paths_give_the_compositions_gradients_to_1e_12_of_their_group("normformer", "plain")
