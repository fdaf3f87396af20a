"""The gradient check of a language model (``lnref.lm``): token and position embeddings, the stack, the head;
or of a translation model, its source and target embeddings, its encoder-decoder model and its head."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lnref.finite_diff import STENCIL, difference_from_values, step_and_rtol
from lnref.gradcheck.point import jitter_params, linear_per_row
from lnref.gradcheck.report import Report, compare, layers_text, summarize
from lnref.views import Freezer

LM_MODES = ("directional", "entries", "full")


def gradcheck_lm(
    lm: Any,
    mode: str = "directional",
    point: str = "generic",
    batch: int = 2,
    seq: int = 8,
    entries: int = 4,
    step: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Check every gradient of a language model (or a translation model): embeddings, stack and head.

    The loss is the model's mean cross-entropy on a seeded random batch (``lm.sample_batch``); each tensor
    is moved along its probes and the whole model re-run (the wrapped stacks are small), with
    the ReLU patterns of the point held as for ``gradcheck``.
    """
    from lnref.gradcheck import probes

    if mode not in LM_MODES:
        raise ValueError(f"mode {mode!r} is not available with the language-model head; valid: {', '.join(LM_MODES)}")
    if seq > lm.max_len:
        raise ValueError(f"seq {seq} exceeds the language model's max_len {lm.max_len}")
    dtype = lm.config.dtype
    h, rtol = step_and_rtol(dtype, step, rtol)
    seed = lm.config.seed if seed is None else seed
    started = time.perf_counter()
    arrays = lm.sample_batch(np.random.default_rng([seed, 5]), batch, seq)
    params = lm.params if point == "init" else jitter_params(lm.params, seed)
    kind = "translation" if lm.config.role == "encoder-decoder" else "language"
    if progress:
        progress(
            f"gradcheck: {lm.config.scheme} {kind} model, {layers_text(lm.config)}, {len(params)} tensors, {mode} mode"
        )
    loss, grads = lm.value_and_grad(*arrays, params)
    freezer = Freezer()
    lm.loss(*arrays, params, run_options={"freeze": freezer.record})
    held = {"freeze": freezer.hold(), "linear": linear_per_row}
    floor = np.finfo(dtype).eps * max(abs(loss), 1.0)
    results = []
    for index, (name, value) in enumerate(params.items()):
        where = _where_in_lm(lm.model, name)
        checks = []
        for label, direction in probes(np.random.default_rng([seed, 3, index]), value.shape, mode, entries):
            direction = direction.astype(value.dtype)
            values = [lm.loss(*arrays, {**params, name: value + t * h * direction}, run_options=held) for t in STENCIL]
            numeric, sigma = difference_from_values(values, h)
            analytic = float(np.sum(grads[name] * direction))
            checks.append(compare(name, where, label, analytic, numeric, max(sigma, floor), h, rtol, atol))
        results.append(summarize(name, where, checks))
    config = {**lm.config.to_dict(), "head": f"{kind} model", "vocab_size": lm.vocab_size}
    return Report(config, mode, point, h, rtol, atol, results, time.perf_counter() - started)


def _where_in_lm(model: Any, name: str) -> str:
    block = model.layer_of(name)
    if block is not None:
        return str(model.block_label(block)[1])
    return "head" if name.startswith("head.") else "embed" if name.startswith("embed.") else "stack"
