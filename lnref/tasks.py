"""Training tasks that ship with the package: two synthetic ones and a character-level text for
a language model, and a synthetic translation task for an encoder-decoder model.

Every language-model task is next-token prediction under a causal mask. A batch is a pair of
integer arrays of shape (batch, seq):

    tokens[b, t]    the input the model sees at position t
    targets[b, t]   the token position t must predict, or IGNORE (-1) where nothing is scored

The loss is the mean cross-entropy over the scored positions. Accuracy is the share of
scored positions where the arg-max of the logits is the target: exact-token accuracy.

``reverse``  s_1 ... s_n SEP r_1 ... r_(n-1)   with r_i = s_(n+1-i). The n scored positions
             run from SEP to the end and predict r_1 ... r_n. Solving it means attending
             by position to the mirrored input, which a bag of tokens cannot do.
``recall``   k_1 v_1 ... k_P v_P  q_1 a_1 ... q_Q a_Q   (multi-query associative recall).
             The P keys are distinct. Each query q_j is one of them, no key asked twice, and
             a_j is the value stored with it. The positions of the queries are scored, so
             the model must find the earlier copy of the query and read the token after it.
             That needs two attention steps in sequence, so more than one layer.
``chars``    windows of a public-domain English text (``lnref/data``, see its README),
             every position scored. The last 10% of the text is held out for evaluation.

A translation task (a :class:`Seq2SeqTask`) has a batch of three arrays, source (batch,
source_len), inputs and targets (batch, seq): the decoder reads the target shifted right behind a
BOS token (teacher forcing) and predicts the target:

``mirror``   source s_1 ... s_n, target s_n ... s_1: the inputs are BOS s_n ... s_2, and every
             target position is scored. The source and the target are separate sequences, so
             the decoder must find source position n + 1 - t through cross-attention.

Each task has a ``baseline_loss``: the cross-entropy of the best prediction that ignores
the context (the target tokens' own distribution). A run whose loss stays near it has
learned nothing beyond token frequencies.

Generators are deterministic functions of a ``numpy.random.Generator``. The trainer keeps
separate streams for training and evaluation batches.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np

IGNORE = -1
LM_TASKS = ("reverse", "recall", "chars")
SEQ2SEQ_TASKS = ("mirror",)
TASKS = LM_TASKS + SEQ2SEQ_TASKS
TEXT_FILE = "devils_dictionary.txt"
HELD_OUT = 0.1  # share of the text (from its end) kept for evaluation


class Task:
    """A batch generator with a fixed vocabulary and sequence length."""

    name: str
    vocab_size: int
    seq_len: int
    baseline_loss: float
    description: str
    seq2seq = False  # a translation task: batches of (source, inputs, targets)

    def batch(self, rng, batch_size):  # pragma: no cover - every task overrides it
        raise NotImplementedError

    def eval_batch(self, rng, batch_size):
        """A held-out batch. Synthetic tasks draw fresh sequences. The text uses its tail."""
        return self.batch(rng, batch_size)

    def describe(self):
        return {
            "task": self.name,
            "vocab_size": self.vocab_size,
            "seq": self.seq_len,
            "baseline_loss": self.baseline_loss,
            "description": self.description,
        }


class ReverseTask(Task):
    """Reverse a sequence of ``seq // 2`` symbols after a separator token."""

    name = "reverse"

    def __init__(self, seq_len=16, symbols=10):
        if seq_len < 2 or seq_len % 2:
            raise ValueError(f"task reverse needs an even --seq >= 2, got {seq_len}")
        if symbols < 2:
            raise ValueError(f"task reverse needs at least 2 symbols, got {symbols}")
        self.seq_len = seq_len
        self.length = seq_len // 2
        self.symbols = symbols
        self.separator = symbols
        self.vocab_size = symbols + 1
        self.baseline_loss = math.log(symbols)
        self.description = (
            f"reverse {self.length} symbols out of {symbols} after a separator; {self.length} scored positions"
        )

    def batch(self, rng, batch_size):
        n = self.length
        source = rng.integers(0, self.symbols, size=(batch_size, n))
        sequence = np.concatenate([source, np.full((batch_size, 1), self.separator), source[:, ::-1]], axis=1)
        tokens = sequence[:, :-1]
        targets = np.full_like(tokens, IGNORE)
        targets[:, n:] = sequence[:, n + 1 :]
        return tokens.astype(np.int64), targets.astype(np.int64)


class RecallTask(Task):
    """Multi-query associative recall: P key-value pairs, then Q of the keys, answer each value."""

    name = "recall"

    def __init__(self, seq_len=16, keys=16, values=16):
        if seq_len < 4 or seq_len % 2:
            raise ValueError(f"task recall needs an even --seq >= 4, got {seq_len}")
        self.seq_len = seq_len
        self.pairs = -(-seq_len // 4)  # ceil(seq / 4) pairs ...
        self.queries = seq_len // 2 - self.pairs  # ... and the rest of the sequence as queries
        if keys < self.pairs:
            raise ValueError(f"task recall with --seq {seq_len} needs at least {self.pairs} keys")
        self.keys, self.values = keys, values
        self.vocab_size = keys + values
        self.baseline_loss = math.log(values)
        self.description = (
            f"{self.pairs} key-value pairs ({keys} keys, {values} values), "
            f"then {self.queries} queries; the answers are scored"
        )

    def batch(self, rng, batch_size):
        p, q = self.pairs, self.queries
        keys = np.stack([rng.permutation(self.keys)[:p] for _ in range(batch_size)])
        values = rng.integers(0, self.values, size=(batch_size, p)) + self.keys
        asked = np.stack([rng.permutation(p)[:q] for _ in range(batch_size)])
        rows = np.arange(batch_size)[:, None]
        tokens = np.empty((batch_size, 2 * (p + q)), dtype=np.int64)
        tokens[:, 0 : 2 * p : 2], tokens[:, 1 : 2 * p : 2] = keys, values
        tokens[:, 2 * p :: 2], tokens[:, 2 * p + 1 :: 2] = keys[rows, asked], values[rows, asked]
        targets = np.full_like(tokens, IGNORE)
        targets[:, 2 * p :: 2] = values[rows, asked]  # at a query, predict the answer that follows
        return tokens, targets


class Seq2SeqTask(Task):
    """A translation task: batches of (source, inputs, targets), a source vocabulary of its own."""

    seq2seq = True
    source_vocab: int
    source_len: int

    def describe(self):
        return {**super().describe(), "source_vocab": self.source_vocab, "source_len": self.source_len}


class MirrorTask(Seq2SeqTask):
    """Translate a sequence of ``seq`` symbols into its reversal, source and target apart."""

    name = "mirror"

    def __init__(self, seq_len=8, symbols=10):
        if seq_len < 1:
            raise ValueError(f"task mirror needs --seq >= 1, got {seq_len}")
        if symbols < 2:
            raise ValueError(f"task mirror needs at least 2 symbols, got {symbols}")
        self.seq_len = self.source_len = seq_len
        self.symbols = self.source_vocab = symbols
        self.bos = symbols
        self.vocab_size = symbols + 1
        self.baseline_loss = math.log(symbols)
        self.description = (
            f"translate {seq_len} symbols out of {symbols} into their reversal; source and target apart, "
            f"{seq_len} scored positions"
        )

    def batch(self, rng, batch_size):
        source = rng.integers(0, self.symbols, size=(batch_size, self.seq_len))
        targets = source[:, ::-1]
        inputs = np.concatenate([np.full((batch_size, 1), self.bos), targets[:, :-1]], axis=1)
        return source.astype(np.int64), inputs.astype(np.int64), targets.astype(np.int64)


class CharTask(Task):
    """Next-character prediction on windows of the shipped public-domain text."""

    name = "chars"

    def __init__(self, seq_len=32, text=None):
        if seq_len < 1:
            raise ValueError(f"task chars needs --seq >= 1, got {seq_len}")
        text = load_text() if text is None else text
        self.alphabet = sorted(set(text))
        lookup = {char: i for i, char in enumerate(self.alphabet)}
        ids = np.array([lookup[char] for char in text], dtype=np.int64)
        split = int(len(ids) * (1 - HELD_OUT))
        self.train_ids, self.eval_ids = ids[:split], ids[split:]
        if len(self.eval_ids) < seq_len + 1:
            raise ValueError(f"task chars: --seq {seq_len} is longer than the held-out text")
        self.seq_len = seq_len
        self.vocab_size = len(self.alphabet)
        counts = np.bincount(self.train_ids, minlength=self.vocab_size)
        frequencies = counts[counts > 0] / counts.sum()
        self.baseline_loss = float(-(frequencies * np.log(frequencies)).sum())
        self.description = (
            f"next character of {TEXT_FILE} ({len(ids)} characters, "
            f"{self.vocab_size} distinct; last {HELD_OUT:.0%} held out)"
        )

    def _windows(self, ids, starts):
        offsets = np.arange(self.seq_len + 1)
        windows = ids[starts[:, None] + offsets]
        return windows[:, :-1].copy(), windows[:, 1:].copy()

    def batch(self, rng, batch_size):
        starts = rng.integers(0, len(self.train_ids) - self.seq_len, size=batch_size)
        return self._windows(self.train_ids, starts)

    def eval_batch(self, rng, batch_size):
        """Evenly spaced windows over the held-out tail (``rng`` is not needed)."""
        last = len(self.eval_ids) - self.seq_len - 1
        starts = np.linspace(0, last, batch_size).round().astype(np.int64)
        return self._windows(self.eval_ids, starts)

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def load_text():
    """The shipped text (ASCII), read as package data."""
    return resources.files("lnref").joinpath("data", TEXT_FILE).read_text(encoding="ascii")


def get_task(name, seq_len=None):
    """The task ``name`` at its default length, or at ``seq_len`` tokens per sequence."""
    makers = {"reverse": ReverseTask, "recall": RecallTask, "chars": CharTask, "mirror": MirrorTask}
    if name not in makers:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return makers[name]() if seq_len is None else makers[name](seq_len)


def accuracy(logits, targets):
    """Share of scored positions (targets != IGNORE) where arg-max(logits) == target."""
    scored = targets != IGNORE
    if not scored.any():
        return float("nan")
    return float((logits.argmax(axis=-1)[scored] == targets[scored]).mean())
