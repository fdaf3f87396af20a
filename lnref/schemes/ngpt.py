"""nGPT, the normalized Transformer (Loshchilov, Hsieh, Sun and Ginsburg 2025, "nGPT: Normalized
Transformer with Representation Learning on the Hypersphere", ICLR, Sec. 2).

No norm anywhere: the stream stays on the unit sphere, and each sublayer moves it a learned
step towards its own normalized output (||.|| below is v -> v / ||v|| over the features):

    h_0 = ||x||                                  (the embedding rows are unit vectors)
    h  <- || ||h|| + |alpha_S| (||S(h)|| - ||h||) ||     for each sublayer S
    attention: q = s_qk ||q_h||, k = s_qk ||k_h|| per head, softmax(sqrt(d_h) q k^T) v
    FFN:       W_2 act(s_u (W_1 h + b_1)) + b_2
    y = h_L                                      (no final norm)

|logit| <= sqrt(d_h) s_qk^2 in every head. The learned vectors are stored in the paper's
rescaled form, p = scaling at init, the value used p * (init / scaling): alpha_S (``alpha_{S}``,
(d,)) init 0.05, scaling 1/sqrt(d); s_qk (``{attn,cross}.s_qk``, (d,), cut into heads) init 1,
scaling 1/sqrt(d); s_u (``ffn.s_u``, (d_ff,)) init 1, scaling 1, used times sqrt(d). The
rescaling changes how an optimizer moves them, not the function; each reaches its sublayer or
update as a ``Scaled`` (the stored vector and its constant, ``lnref/pieces.py``). Every weight
vector along d_model has unit norm: the columns of W_q, W_k, W_v, W_1 (their inputs) and the
rows of W_o, W_2 (their outputs), in lnref's (d_in, d_out) layout. That is an optimizer-side
projection, not part of the forward pass: ``project`` applies it at init and ``lnref train``
after every step.

Read against NVIDIA/ngpt @ed19eb2, model.py (Block.forward, justnorm, the *_init_value and
*_init_scaling pairs) and train.py (normalize_matrices). Code and paper: the code normalizes h
again before each update (``A_norm``, "normally not needed"), as here; its L2 normalization has
no epsilon, and lnref's refuses the zero vector with an error rather than a NaN. Left out, as
lnref's stack has no tokens or positions: RoPE, the unit-norm embedding and output matrices (the
stack's input is normalized instead) and the logit scale s_z. The authors' maps have no biases
and their MLP is SwiGLU, u * SiLU(v) with s_u and s_v; lnref keeps its biases (zero at init)
and its FFN with ``--activation``, scaling the one hidden projection by s_u. A decoder's
cross-attention (nGPT has none) takes the self-attention's form, with its own alpha and s_qk.
"""

import math

import numpy as np

from lnref.autograd import ops
from lnref.pieces import HeadL2Norm, Scaled

SUMMARY = "h <- norm(norm(h) + |alpha| (norm(S(h)) - norm(h))); q, k normalized per head, softmax(sqrt(d_h) q k^T)"
PAPER = "Loshchilov et al. 2025, nGPT: Normalized Transformer with Representation Learning on the Hypersphere"
REFUSES = {
    "norm": "nGPT has no norm: the stream lives on the unit sphere",
    "qk_norm": "nGPT normalizes q and k itself",
    "eps": "nGPT's normalizations take no epsilon",
}
ALPHA_INIT, S_QK_INIT, S_U_INIT = 0.05, 1.0, 1.0


def alpha_scaling(config):
    return 1 / math.sqrt(config.d_model)


def layer_params(index, branches, config):
    scaling = alpha_scaling(config)
    params = {f"alpha_{name}": np.full(config.d_model, scaling) for name in branches}
    params.update({f"{name}.s_qk": np.full(config.d_model, scaling) for name in branches if name != "ffn"})
    params["ffn.s_u"] = np.ones(config.d_ff)
    return params


def project(params, config):
    """Every weight vector along d_model to unit norm, in place."""
    for name, value in params.items():
        kind = name.rpartition(".")[2]
        if kind in ("wq", "wk", "wv", "w1"):
            value /= np.linalg.norm(value, axis=0, keepdims=True)
        elif kind in ("wo", "w2"):
            value /= np.linalg.norm(value, axis=1, keepdims=True)


def initialize(model, rng):
    project(model.params, model.config)


def normalize(v):
    return ops.l2_normalize(v)


def step(h, output, alpha):
    """h <- ||  ||h|| + |alpha| (||output|| - ||h||)  ||: one move of h towards the sublayer's
    normalized output, back onto the sphere (alpha a ``Scaled``: the stored vector and its
    constant)."""
    return ops.normalized_lerp(h, output, alpha.value, rate_scale=alpha.factor)


def embed(x, stack):
    return normalize(x)


def layer(h, layer):
    cfg = layer.config
    d_head = cfg.d_model // cfg.n_heads
    for name, branch in layer.branches:
        if name == "ffn":
            s_u = Scaled(layer.param("ffn.s_u"), S_U_INIT * math.sqrt(cfg.d_model))
            output = branch(h, hidden_scale=s_u)
        else:
            s_qk = layer.param(f"{name}.s_qk")
            # q times d_h: the core's 1/sqrt(d_h) becomes nGPT's sqrt(d_h)
            queries = HeadL2Norm(Scaled(s_qk, S_QK_INIT / alpha_scaling(cfg) * d_head), cfg.n_heads)
            keys = HeadL2Norm(Scaled(s_qk, S_QK_INIT / alpha_scaling(cfg)), cfg.n_heads)
            output = branch(h, q_norm=queries, k_norm=keys)
        h = step(h, output, Scaled(layer.param(f"alpha_{name}"), ALPHA_INIT / alpha_scaling(cfg)))
    return h
