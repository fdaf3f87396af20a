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

:class:`TranslationModel` is the same around an encoder-decoder model
(``build(scheme, encoder_layers=N, decoder_layers=M)``), for tasks with a source sequence and a
target sequence (``lnref.tasks``, a ``Seq2SeqTask``), trained with teacher forcing:

    s_0    = E_src[source] + P[0..S-1]        E_src = embed.source (V_src, d)
    t_0    = E_tgt[inputs] + P[0..T-1]        E_tgt = embed.target (V, d); inputs: BOS, then the
                                              target shifted right by one
    h      = model(s_0, t_0)                  the encoder reads s_0, the decoder t_0 and the memory
    logits = h[scored] @ W + b,  loss as above

One table P of positions serves both sides (both start from the same sinusoids).
"""

from __future__ import annotations

import numpy as np

from lnref import nn
from lnref.autograd import Tape, Tensor, ops
from lnref.building import build
from lnref.model import ConfigError
from lnref.tasks import IGNORE

EMBED_TOKENS, EMBED_POSITIONS, HEAD_W, HEAD_B = "embed.tokens", "embed.positions", "head.w", "head.b"
LM_PARAMS = (EMBED_TOKENS, EMBED_POSITIONS, HEAD_W, HEAD_B)
EMBED_SOURCE, EMBED_TARGET = "embed.source", "embed.target"


def sinusoidal_positions(max_len, d_model):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) (Vaswani Sec. 3.5)."""
    positions = np.arange(max_len)[:, None]
    frequencies = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: d_model // 2])
    return table


def checked_tokens(tokens, targets, vocab_size, max_len, name="tokens"):
    """(tokens, targets) as arrays, each a (batch, seq) integer array of tokens in [0,
    vocab_size) (targets may also be IGNORE, and must score a position); targets may be None."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integers of shape (batch, seq), got {tokens.dtype} {tokens.shape}")
    if tokens.shape[1] > max_len:
        raise ConfigError(f"sequence length {tokens.shape[1]} exceeds the model's max_len {max_len}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ConfigError(f"{name} outside [0, {vocab_size})")
    if targets is None:
        return tokens, None
    targets = np.asarray(targets)
    if targets.shape != tokens.shape or targets.dtype.kind not in "iu":
        raise ConfigError(
            f"targets must be integers of the {name}' shape {tokens.shape}, got {targets.dtype} {targets.shape}"
        )
    scored = targets != IGNORE
    if not scored.any():
        raise ConfigError("no scored position: every target is IGNORE")
    if targets[scored].min() < 0 or targets[scored].max() >= vocab_size:
        raise ConfigError(f"targets outside [0, {vocab_size}) (use {IGNORE} for unscored positions)")
    return tokens, targets


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

    def sample_batch(self, rng, batch, seq):
        """Uniformly random (tokens, targets) of shape (batch, seq): the gradient checker's."""
        tokens = rng.integers(0, self.vocab_size, size=(batch, seq))
        return tokens, rng.integers(0, self.vocab_size, size=(batch, seq))

    # -- input checks --

    def check_batch(self, tokens, targets=None):
        return checked_tokens(tokens, targets, self.vocab_size, self.max_len)

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


class TranslationModel:
    """An encoder-decoder model (``lnref.build(scheme, encoder_layers=N, decoder_layers=M)``) with
    token and position embeddings on both sides and a softmax head on the decoder.

    ``params`` holds every trainable array: ``embed.source``, ``embed.target``,
    ``embed.positions``, the model's own names (``encoder.layers.3.attn.wq``, ...) and ``head.w``,
    ``head.b``. A batch is (source, inputs, targets): integer arrays of shape (B, S), (B, T), (B, T).
    """

    def __init__(self, model, source_vocab, vocab_size, max_len, seed=None):
        if model.config.role != "encoder-decoder":
            raise ConfigError("a translation model needs an encoder-decoder model (build(..., encoder_layers=N, ...))")
        for name, value in (("source_vocab", source_vocab), ("vocab_size", vocab_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.model = model
        self.source_vocab, self.vocab_size, self.max_len = int(source_vocab), int(vocab_size), int(max_len)
        d_model, dtype = model.config.d_model, model.dtype
        rng = np.random.default_rng([model.config.seed if seed is None else seed, 2])
        self.params = {
            EMBED_SOURCE: rng.standard_normal((self.source_vocab, d_model)).astype(dtype),
            EMBED_TARGET: rng.standard_normal((self.vocab_size, d_model)).astype(dtype),
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

    def sample_batch(self, rng, batch, seq):
        """Uniformly random (source, inputs, targets), each (batch, seq): the gradient checker's."""
        source = rng.integers(0, self.source_vocab, size=(batch, seq))
        inputs = rng.integers(0, self.vocab_size, size=(batch, seq))
        return source, inputs, rng.integers(0, self.vocab_size, size=(batch, seq))

    def check_batch(self, source, inputs, targets):
        source, _ = checked_tokens(source, None, self.source_vocab, self.max_len, name="source")
        inputs, targets = checked_tokens(inputs, targets, self.vocab_size, self.max_len, name="inputs")
        if min(source.shape[1], inputs.shape[1]) < 1:
            raise ConfigError("source and inputs need at least one token each")
        if inputs.shape[0] != source.shape[0]:
            raise ConfigError(f"source and target batches differ: {source.shape[0]} and {inputs.shape[0]}")
        return source, inputs, targets

    def _hidden(self, params, source, inputs, run_options=None):
        def embedded(table, tokens):
            positions = ops.index(params[EMBED_POSITIONS], index=slice(0, tokens.shape[1]))
            return ops.add(ops.embedding(params[table], tokens), positions)

        run = self.model.run(params, **(run_options or {}))
        y, _ = self.model.forward(run, (embedded(EMBED_SOURCE, source), embedded(EMBED_TARGET, inputs)))
        return y

    def _loss(self, params, source, inputs, targets, run_options=None):
        flat_targets = targets.reshape(-1)
        rows = np.flatnonzero(flat_targets != IGNORE)
        logits = _logits(params, self._hidden(params, source, inputs, run_options), rows)
        return ops.cross_entropy(logits, flat_targets[rows]), logits, flat_targets[rows]

    def loss(self, source, inputs, targets, params=None, run_options=None):
        """Mean cross-entropy over the scored positions, as a float (no tape)."""
        batch = self.check_batch(source, inputs, targets)
        loss, _, _ = self._loss(self.params if params is None else params, *batch, run_options)
        return float(loss.value)

    def evaluate(self, source, inputs, targets, params=None):
        """(loss, exact-token accuracy) over the scored positions, no tape."""
        batch = self.check_batch(source, inputs, targets)
        loss, logits, scored = self._loss(self.params if params is None else params, *batch)
        return float(loss.value), float((logits.value.argmax(axis=-1) == scored).mean())

    def value_and_grad(self, source, inputs, targets, params=None):
        """(loss, grads): the loss and its gradient for every name in ``params``."""
        batch = self.check_batch(source, inputs, targets)
        params = self.params if params is None else params
        leaves = {name: Tensor(value, requires_grad=True) for name, value in params.items()}
        with Tape() as tape:
            loss, _, _ = self._loss(leaves, *batch)
        tape.backward(loss)
        return float(loss.value), {name: leaf.grad_or_zeros() for name, leaf in leaves.items()}


def _logits(params, hidden, rows):
    """Logits (N, V) of the flattened positions ``rows`` of hidden (B, T, d)."""
    batch, seq, d_model = hidden.shape
    flat = ops.index(ops.reshape(hidden, shape=(batch * seq, d_model)), index=rows)
    return ops.linear(flat, params[HEAD_W], params[HEAD_B])


def with_head(model, vocab_size, max_len):
    """``model`` with embeddings and a head: a LanguageModel of a stack (causal, no
    cross-attention), a TranslationModel of an encoder-decoder model (source and target
    vocabularies of ``vocab_size`` tokens)."""
    if model.config.role == "encoder-decoder":
        return TranslationModel(model, vocab_size, vocab_size, max_len)
    return LanguageModel(model, vocab_size, max_len)


def build_lm(scheme, n_layers, vocab_size, max_len, d_model=32, n_heads=2, d_ff=None, seed=0, **options):
    """A causal stack of ``scheme`` wrapped as a language model (``d_ff`` defaults to 4 d)."""
    model = build(
        scheme, n_layers, d_model, n_heads, 4 * d_model if d_ff is None else d_ff, seed=seed, causal=True, **options
    )
    return LanguageModel(model, vocab_size, max_len)
