"""A language model around any scheme's stack: embeddings, the stack, a linear head, cross-entropy.

For integer tokens of shape (B, T) and targets of the same shape (``IGNORE`` = -1 where a
position is not scored):

    h_0    = E[tokens] + P[0..T-1]            E = embed.tokens (V, d), P = embed.positions (T_max, d)
    h_L    = stack(h_0)                       the scheme's embed, layers and readout (causal mask)
    logits = h_L[scored] @ W + b              W = head.w (d, V), b = head.b (V,)
    loss   = mean over scored positions of -log softmax(logits)[target]

Positions are *learned*. They start from the fixed sinusoidal table of Vaswani et al. 2017,
Sec. 3.5, so every position is distinguishable at step 0, and training may move them.
E starts as N(0, 1) per entry. That is the scale of fairseq's N(0, 1/d) table multiplied by
sqrt(d), which the Post-LN, Pre-LN and Admin papers' models use, so E||h_0||^2 is about
1.5 d. W is Xavier-normal like every other weight in lnref and b starts at 0. Nothing is
shared between E and W.

Gradients come from the same tape as the stack (``Model.gradients`` is the pattern). The
embedding lookup and the selection of scored rows are ``index`` primitives, so their
backward adds the rows up.
"""

from __future__ import annotations

import numpy as np

from lnref import nn
from lnref.autograd import Tape, Tensor, ops
from lnref.model import ConfigError, build
from lnref.tasks import IGNORE

EMBED_TOKENS, EMBED_POSITIONS, HEAD_W, HEAD_B = "embed.tokens", "embed.positions", "head.w", "head.b"
LM_PARAMS = (EMBED_TOKENS, EMBED_POSITIONS, HEAD_W, HEAD_B)


def sinusoidal_positions(max_len, d_model):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) (Vaswani Sec. 3.5)."""
    positions = np.arange(max_len)[:, None]
    frequencies = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: d_model // 2])
    return table


class LanguageModel:
    """A scheme's stack (``lnref.build``) with token and position embeddings and a softmax head.

    ``params`` holds every trainable array: ``embed.tokens``, ``embed.positions``, the stack's
    own names (``layers.3.attn.wq``, ...) and ``head.w``, ``head.b``.
    """

    def __init__(self, model, vocab_size, max_len, seed=None):
        if not model.config.causal:
            raise ConfigError("a language model needs a causal stack (build(..., causal=True))")
        if model.config.cross_attention:
            raise ConfigError("a language model is decoder-only: build the stack without cross-attention")
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.model = model
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        d_model, dtype = model.config.d_model, model.dtype
        # A stream of its own, so adding the wrapper leaves the stack's initialization unchanged.
        rng = np.random.default_rng([model.config.seed if seed is None else seed, 2])
        self.params = {
            EMBED_TOKENS: rng.standard_normal((self.vocab_size, d_model)).astype(dtype),
            EMBED_POSITIONS: sinusoidal_positions(self.max_len, d_model).astype(dtype),
            **model.params,
            HEAD_W: nn.xavier_normal(rng, d_model, self.vocab_size, dtype),
            HEAD_B: np.zeros(self.vocab_size, dtype),
        }

    @property
    def config(self):
        return self.model.config

    def n_params(self):
        return int(sum(value.size for value in self.params.values()))

    # -- input checks --

    def check_batch(self, tokens, targets=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise ConfigError(f"tokens must be integers of shape (batch, seq), got {tokens.dtype} {tokens.shape}")
        if tokens.shape[1] > self.max_len:
            raise ConfigError(f"sequence length {tokens.shape[1]} exceeds the model's max_len {self.max_len}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ConfigError(f"tokens outside [0, {self.vocab_size})")
        if targets is None:
            return tokens, None
        targets = np.asarray(targets)
        if targets.shape != tokens.shape or targets.dtype.kind not in "iu":
            raise ConfigError(
                f"targets must be integers of the tokens' shape {tokens.shape}, got {targets.dtype} {targets.shape}"
            )
        scored = targets != IGNORE
        if not scored.any():
            raise ConfigError("no scored position: every target is IGNORE")
        if targets[scored].min() < 0 or targets[scored].max() >= self.vocab_size:
            raise ConfigError(f"targets outside [0, {self.vocab_size}) (use {IGNORE} for unscored positions)")
        return tokens, targets

    # -- the forward, on Tensors or arrays --

    def _hidden(self, params, tokens, run_options=None):
        """h_L (B, T, d): the stack's output for embedded tokens plus positions."""
        seq = tokens.shape[1]
        embedded = ops.add(
            ops.embedding(params[EMBED_TOKENS], tokens), ops.index(params[EMBED_POSITIONS], index=slice(0, seq))
        )
        # run_options (freeze, linear) let the gradient checker hold ReLU patterns.
        y, _ = self.model.forward(self.model.run(params, **(run_options or {})), embedded)
        return y

    def _logits(self, params, hidden, rows=None):
        """Logits of the flattened positions ``rows`` (all positions when None): (N, V)."""
        batch, seq, d_model = hidden.shape
        flat = ops.reshape(hidden, shape=(batch * seq, d_model))
        if rows is not None:
            flat = ops.index(flat, index=rows)
        return ops.linear(flat, params[HEAD_W], params[HEAD_B])

    def _loss(self, params, tokens, targets, run_options=None):
        flat_targets = targets.reshape(-1)
        rows = np.flatnonzero(flat_targets != IGNORE)
        logits = self._logits(params, self._hidden(params, tokens, run_options), rows)
        return ops.cross_entropy(logits, flat_targets[rows]), logits, flat_targets[rows]

    # -- public API --

    def logits(self, tokens, params=None):
        """Logits at every position, shape (B, T, V)."""
        tokens, _ = self.check_batch(tokens)
        params = self.params if params is None else params
        logits = self._logits(params, self._hidden(params, tokens)).value
        return logits.reshape(*tokens.shape, self.vocab_size)

    def loss(self, tokens, targets, params=None, run_options=None):
        """Mean cross-entropy over the scored positions, as a float (no tape)."""
        tokens, targets = self.check_batch(tokens, targets)
        loss, _, _ = self._loss(self.params if params is None else params, tokens, targets, run_options)
        return float(loss.value)

    def evaluate(self, tokens, targets, params=None):
        """(loss, exact-token accuracy) over the scored positions, no tape."""
        tokens, targets = self.check_batch(tokens, targets)
        loss, logits, scored_targets = self._loss(self.params if params is None else params, tokens, targets)
        return float(loss.value), float((logits.value.argmax(axis=-1) == scored_targets).mean())

    def value_and_grad(self, tokens, targets, params=None):
        """(loss, grads): the loss and its gradient for every name in ``params``."""
        tokens, targets = self.check_batch(tokens, targets)
        params = self.params if params is None else params
        leaves = {name: Tensor(value, requires_grad=True) for name, value in params.items()}
        with Tape() as tape:
            loss, _, _ = self._loss(leaves, tokens, targets)
        tape.backward(loss)
        grads = {name: leaf.grad_or_zeros() for name, leaf in leaves.items()}
        return float(loss.value), grads


def build_lm(scheme, n_layers, vocab_size, max_len, d_model=32, n_heads=2, d_ff=None, seed=0, **options):
    """A causal stack of ``scheme`` wrapped as a language model (``d_ff`` defaults to 4 d)."""
    model = build(
        scheme, n_layers, d_model, n_heads, 4 * d_model if d_ff is None else d_ff, seed=seed, causal=True, **options
    )
    return LanguageModel(model, vocab_size, max_len)
