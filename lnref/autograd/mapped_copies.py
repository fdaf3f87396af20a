"""mHC's sublayers with their mappings, replayed as one step each: the mappings' steps go into
the mixed sublayer's.

After ``stacked_copies.py``, each mHC sublayer whose copies come as a stack X (n, B, T, d) is
eight steps: the mappings that give its weights from vec(X), then the sublayer between the
copies' width and depth connections,

    mappings:  flat = concatenate(X, axis=-1, stacked)   u = layer_norm(flat, g, c)
               h_pre = scaled_linear(u, phi_pre, alpha_pre, b_pre[, activation, gain])
               h_post = scaled_linear(u, phi_post, alpha_post, b_post[, activation, gain])
               res = scaled_linear(u, phi_res, alpha_res, b_res[, activation, gain])
               m = reshape(res, shape)   h_res = sinkhorn(m, iterations)
    sublayer:  Y = mixed_normed_S(X, h_pre, h_res, h_post, gamma, beta, W...[, transpose])

and :func:`fuse_mapped_sublayers` puts one step in the place of the eight, Y =
mapped_normed_S(X, g, c, phi_pre, alpha_pre, b_pre, phi_post, alpha_post, b_post, phi_res,
alpha_res, b_res, gamma, beta, W...) (``fused_mapped.py``), the steps' statics its own (the
norm's eps as ``mix_eps``, each map's activation and gain as ``pre_activation``, ``pre_gain``,
..., the reshape's ``shape``, Sinkhorn's ``iterations``, the mixed step's). It does so where the
fused step gives the bits of the eight:

* flat, m and res are each read by the next step alone, u by the three maps alone, h_pre,
  h_res and h_post by the mixed step alone, as its width, depth and branch weights; the maps
  come in the order pre, post, res. On the tape u's cotangent is then the
  res map's term plus the post map's, plus the pre map's, the sum the fused VJP forms;
* X is read by the concatenate, the mixed step and otherwise by steps before the concatenate
  alone. On the tape its cotangent is the mixed step's term, then the concatenate's, then the
  earlier readers' in the backward order; the fused VJP forms the first sum, and the replay adds
  the rest after it;
* no step between the concatenate and the mixed step, other than the eight, reads X or a
  parameter of the eight, and the fused step's arguments are distinct inputs or values of the
  pass (none a constant): each parameter's cotangent is then one term, which comes at the fused
  step's place, with nothing between.

Only a LayerNorm as the mapping norm (``layer_norm``, the default kind of norm) has a fused
form; with another the eight steps run as recorded. The first sublayer's copies are the embedding n
times, not a stack: its steps stay as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from lnref.autograd.stacked_copies import steps_reading
from lnref.autograd.steps import Step

# Each mixed sublayer's fused step -> the fused step of it with its mappings.
MAPPED_SUBLAYERS = {
    "mixed_normed_attention": "mapped_normed_attention",
    "mixed_normed_feed_forward": "mapped_normed_feed_forward",
}
MAPS = ("pre", "post", "res")


def fuse_mapped_sublayers(steps: Sequence[Step], fixed: dict[int, Any], output_slot: int) -> list[Step]:
    """``steps`` with each mixed sublayer and its mappings (see the module) as one step, at the
    mixed step's place; ``fixed`` the slots the pass takes as given (constants)."""
    uses = Counter(slot for _, args, _, _ in steps for slot in args)
    uses[output_slot] += 1
    maker = {out: index for index, (_, _, _, out) in enumerate(steps)}
    readers_of = steps_reading(steps)
    fused: dict[int, Step] = {}
    taken: set[int] = set()
    for index, (name, args, params, out) in enumerate(steps):
        match = _mappings(steps, maker, uses, index) if name in MAPPED_SUBLAYERS else None
        if match is None or taken.intersection(match):
            continue
        concatenate_index, norm_index, pre_index, post_index, res_index, reshape_index, sinkhorn_index = match
        stack, _, _, _, gamma, beta, *weights = args
        (_, g, c), maps = steps[norm_index][1], [steps[i][1][1:] for i in (pre_index, post_index, res_index)]
        arguments = (stack, g, c, *(slot for map_args in maps for slot in map_args), gamma, beta, *weights)
        if (
            len(set(arguments)) != len(arguments)
            or any(slot in fixed for slot in arguments)
            or any(reader > concatenate_index for reader in readers_of[stack] if reader not in (*match, index))
            or any(
                set(arguments).intersection(steps[between][1])
                for between in range(concatenate_index + 1, index)
                if between not in match
            )
        ):
            continue
        statics: dict[str, Any] = {"mix_eps": steps[norm_index][2].get("eps", 1e-5)}
        for short, map_index in zip(MAPS, (pre_index, post_index, res_index)):
            statics[f"{short}_activation"] = steps[map_index][2].get("activation")
            statics[f"{short}_gain"] = steps[map_index][2].get("gain", 1.0)
        statics.update(shape=steps[reshape_index][2]["shape"], iterations=steps[sinkhorn_index][2]["iterations"])
        fused[index] = (MAPPED_SUBLAYERS[name], arguments, {**statics, **params}, out)
        taken.update((*match, index))
    return [fused.get(index, step) for index, step in enumerate(steps) if index in fused or index not in taken]


def _made_by(
    steps: Sequence[Step],
    maker: dict[int, int],
    uses: Counter[int],
    slot: int,
    name: str,
    n_args: int,
    params: set[str],
) -> int | None:
    """The index of the step that makes ``slot``, if it is a ``name`` step of ``n_args`` arguments
    whose statics are among ``params``, and ``slot`` has one reader; else None."""
    index = maker.get(slot)
    if index is None or uses[slot] != 1:
        return None
    name_made, args, made_params, _ = steps[index]
    if name_made != name or len(args) != n_args or not set(made_params) <= params:
        return None
    return index


def _mappings(
    steps: Sequence[Step], maker: dict[int, int], uses: Counter[int], mixed_index: int
) -> tuple[int, ...] | None:
    """(concatenate, norm, pre map, post map, res map, reshape, sinkhorn) indices if the mixed step
    at ``mixed_index`` takes its weights from mappings of its copies of that shape (see the module)."""
    stack, a_m, a_r, b, *_ = steps[mixed_index][1]
    sinkhorn_index = _made_by(steps, maker, uses, a_r, "sinkhorn", 1, {"iterations"})
    if sinkhorn_index is None or "iterations" not in steps[sinkhorn_index][2]:
        return None
    reshape_index = _made_by(steps, maker, uses, steps[sinkhorn_index][1][0], "reshape", 1, {"shape"})
    if reshape_index is None or "shape" not in steps[reshape_index][2]:
        return None
    maps = {"activation", "gain"}
    res_index = _made_by(steps, maker, uses, steps[reshape_index][1][0], "scaled_linear", 4, maps)
    pre_index = _made_by(steps, maker, uses, a_m, "scaled_linear", 4, maps)
    post_index = _made_by(steps, maker, uses, b, "scaled_linear", 4, maps)
    if res_index is None or pre_index is None or post_index is None or not pre_index < post_index < res_index:
        return None
    normed = steps[pre_index][1][0]
    if steps[post_index][1][0] != normed or steps[res_index][1][0] != normed or uses[normed] != 3:
        return None
    norm_index = maker.get(normed)
    if norm_index is None or steps[norm_index][0] != "layer_norm" or len(steps[norm_index][1]) != 3:
        return None
    if not set(steps[norm_index][2]) <= {"eps"}:
        return None
    flat = steps[norm_index][1][0]
    concatenate_index = _made_by(steps, maker, uses, flat, "concatenate", 1, {"axis", "stacked"})
    if concatenate_index is None or steps[concatenate_index][1] != (stack,):
        return None
    if steps[concatenate_index][2] != {"axis": -1, "stacked": True}:
        return None
    return concatenate_index, norm_index, pre_index, post_index, res_index, reshape_index, sinkhorn_index
