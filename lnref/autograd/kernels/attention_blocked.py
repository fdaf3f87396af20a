"""Attention's compiled path for big heads: BLAS products around small in-place loops, the
batch split over threads when that pays.

Token-major layout throughout, as the loop twins of ``attention.py``: ``q`` (B, T, H, Dh),
``k`` and ``v`` (B, S, H, Dh), ``probs`` (B, H, T, S). The four products are batched matrix
products over (B, H, T, Dh) views of those arrays (strided, never copied); the softmax and
its backward run in place on the (B, H, T, S) scores, by loop kernels (and NumPy's exp). The
formulas are the twins' (``attention.py``); the seam takes this path past the loop's limit.

Threads. The batched products are many small ones (one per batch row and head), too small
for OpenBLAS to thread, and the loops are serial: alone, the path runs on one core. With
several BLAS threads (``lnref.process.blas.threads``) it takes one thread per part of the
batch. The parts write disjoint slices and each (b, h) product is the same BLAS call as
unsplit, so the bits do not depend on the number of parts. Threads pay only for enough work
(:data:`THREADED_WORK_MIN`) and only when OpenBLAS's idle workers sleep instead of spinning
on the cores the parts need (``lnref.process.blas.idle_workers_sleep``; the ``lnref`` command
sees to it); otherwise the path stays on one thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lnref.autograd.kernels.seam import njit
from lnref.process import blas

# B H T S Dh, the multiply-adds of one batched product, from which splitting the batch pays:
# below it the hand-off to a thread costs what the part saves.
THREADED_WORK_MIN = 1 << 20


def heads_first(a: np.ndarray) -> np.ndarray:
    """(B, T, H, Dh) -> a (B, H, T, Dh) view (no copy)."""
    return a.transpose(0, 2, 1, 3)


# The loops release the GIL (``nogil``): the parts of a split batch run them on helper threads.
@njit(cache=True, nogil=True)
def _shifted_scores_kernel(scores: np.ndarray, causal: bool, sqrt_dh: float) -> None:
    """In place, per row ``t`` of the raw scores q k^T (B, H, T, S): divide by sqrt(Dh) and
    subtract the row maximum; with ``causal`` the columns ``s > t`` are set to 0 (masked
    later: exp(0) takes exp's fast path, where exp(-inf) does not)."""
    n_batch, n_head, t_len, s_len = scores.shape
    for b in range(n_batch):
        for h in range(n_head):
            for t in range(t_len):
                row = scores[b, h, t]
                s_end = min(t + 1, s_len) if causal else s_len
                row_max = -np.inf
                for s in range(s_end):
                    row[s] = row[s] / sqrt_dh
                    if row[s] > row_max:
                        row_max = row[s]
                for s in range(s_end):
                    row[s] = row[s] - row_max
                for s in range(s_end, s_len):
                    row[s] = 0.0


@njit(cache=True, nogil=True)
def _normalized_rows_kernel(exps: np.ndarray, causal: bool) -> None:
    """In place, per row ``t``: exp(shifted scores) -> probabilities, each divided by the
    row's sum; with ``causal`` the columns ``s > t`` are set to exactly 0."""
    n_batch, n_head, t_len, s_len = exps.shape
    for b in range(n_batch):
        for h in range(n_head):
            for t in range(t_len):
                row = exps[b, h, t]
                s_end = min(t + 1, s_len) if causal else s_len
                total = 0.0
                for s in range(s_end):
                    total += row[s]
                for s in range(s_end):
                    row[s] = row[s] / total
                for s in range(s_end, s_len):
                    row[s] = 0.0


def _attention_probs(scores: np.ndarray, causal: bool, sqrt_dh: float) -> None:
    """In place: raw scores q k^T (B, H, T, S) -> probabilities, the loop twin's softmax
    (divide by sqrt(Dh), subtract the row maximum, exponentiate, normalize). The exponentials
    are NumPy's: its exp runs on the CPU's vector units, where a compiled loop's exp takes
    one element at a time and costs more than the rest of the softmax together."""
    _shifted_scores_kernel(scores, causal, sqrt_dh)
    np.exp(scores, out=scores)
    _normalized_rows_kernel(scores, causal)


@njit(cache=True, nogil=True)
def _attention_dscores_kernel(dprobs: np.ndarray, probs: np.ndarray, sqrt_dh: float) -> None:
    """In place: dprobs (B, H, T, S) -> dscores / sqrt(Dh), the softmax backward per row."""
    n_batch, n_head, t_len, s_len = probs.shape
    for b in range(n_batch):
        for h in range(n_head):
            for t in range(t_len):
                d_row = dprobs[b, h, t]
                p_row = probs[b, h, t]
                row_dot = 0.0
                for s in range(s_len):
                    row_dot += d_row[s] * p_row[s]
                for s in range(s_len):
                    d_row[s] = p_row[s] * (d_row[s] - row_dot) / sqrt_dh


def attention_forward_blocked(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, n_parts: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token-major attention with BLAS products, for big heads; returns ``(out, probs)``.

    ``scores = q k^T`` and ``out = probs v`` are batched products; :func:`_attention_probs`
    turns the scores into probabilities in place. The batch runs in ``n_parts`` parts, by
    default as many as :func:`batch_parts` says.
    """
    n_batch, t_len, n_head, head_dim = q.shape
    scores = np.empty((n_batch, n_head, t_len, k.shape[1]), q.dtype)  # (B, H, T, S)
    out = np.empty_like(q)
    sqrt_dh = math.sqrt(head_dim)

    def part(lo: int, hi: int) -> None:
        np.matmul(heads_first(q[lo:hi]), k[lo:hi].transpose(0, 2, 3, 1), out=scores[lo:hi])
        _attention_probs(scores[lo:hi], causal, sqrt_dh)
        np.matmul(scores[lo:hi], heads_first(v[lo:hi]), out=heads_first(out[lo:hi]))

    over_batch_parts(part, n_batch, _parts(n_parts, n_batch, scores.size * head_dim))
    return out, scores


def attention_backward_blocked(
    dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, n_parts: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`attention_forward_blocked`; returns ``(dq, dk, dv)``: four batched
    products and the softmax backward in place (:func:`_attention_dscores_kernel`, which also
    divides by sqrt(Dh), so that dq and dk need no pass of their own), in parts as the forward."""
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dscores = np.empty_like(probs)  # dprobs, then dscores / sqrt(Dh)
    sqrt_dh = math.sqrt(q.shape[3])

    def part(lo: int, hi: int) -> None:
        dout_heads = heads_first(dout[lo:hi])
        np.matmul(probs[lo:hi].transpose(0, 1, 3, 2), dout_heads, out=heads_first(dv[lo:hi]))
        np.matmul(dout_heads, v[lo:hi].transpose(0, 2, 3, 1), out=dscores[lo:hi])
        _attention_dscores_kernel(dscores[lo:hi], probs[lo:hi], sqrt_dh)
        np.matmul(dscores[lo:hi], heads_first(k[lo:hi]), out=heads_first(dq[lo:hi]))
        np.matmul(dscores[lo:hi].transpose(0, 1, 3, 2), heads_first(q[lo:hi]), out=heads_first(dk[lo:hi]))

    over_batch_parts(part, q.shape[0], _parts(n_parts, q.shape[0], probs.size * q.shape[3]))
    return dq, dk, dv


# ----- the batch on threads -------------------------------------------------------------


def batch_parts(batch: int, work: int) -> int:
    """How many parts (threads) the blocked path splits a batch of this work into."""
    if work < THREADED_WORK_MIN or batch < 2 or not blas.idle_workers_sleep():
        return 1
    return min(batch, blas.threads())


def _parts(n_parts: int | None, batch: int, work: int) -> int:
    return batch_parts(batch, work) if n_parts is None else min(n_parts, batch)


class HelperThreads:
    """The threads that run all parts of a split batch but the last: a pool made on first
    use, replaced by a bigger one when more parts come (OpenBLAS was given more threads)."""

    def __init__(self) -> None:
        self.count = 0
        self.pool: ThreadPoolExecutor | None = None

    def pool_of(self, count: int) -> ThreadPoolExecutor:
        """A pool of at least ``count`` threads; a smaller one in its way is shut down."""
        if self.pool is None or self.count < count:
            if self.pool is not None:
                self.pool.shutdown(wait=False)
            self.count, self.pool = count, ThreadPoolExecutor(count, thread_name_prefix="lnref-attention")
        return self.pool

    def forget(self) -> None:
        """In a forked child: the parent's threads are not there, so neither is the pool."""
        self.count, self.pool = 0, None

    def shutdown(self) -> None:
        """Shut the pool down (its threads end once idle); the next split makes a new one."""
        if self.pool is not None:
            self.pool.shutdown(wait=False)
        self.forget()


HELPERS = HelperThreads()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=HELPERS.forget)


def over_batch_parts(
    part: Callable[[int, int], None], batch: int, n_parts: int, helpers: HelperThreads = HELPERS
) -> None:
    """``part(lo, hi)`` over ``n_parts`` consecutive parts of ``range(batch)``: the first ones
    on helper threads, the last on this one; returns when all are done, raising the first
    error."""
    if n_parts == 1:
        part(0, batch)
        return
    bounds = [batch * i // n_parts for i in range(n_parts + 1)]
    pool = helpers.pool_of(n_parts - 1)
    running = [pool.submit(part, lo, hi) for lo, hi in zip(bounds[:-2], bounds[1:-1])]
    try:
        part(bounds[-2], bounds[-1])
    finally:
        errors = [helper.exception() for helper in running]  # (waits for each)
    for error in errors:
        if error is not None:
            raise error
