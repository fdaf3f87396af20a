"""What a scheme sees: one run of the model, and views of its stack and of each layer.

A scheme's ``layer(x, layer)`` computes through the :class:`Layer` view: its branches
(``layer.branches``, the sublayers in order), its norms (``layer.norm(name, x)``) and its
parameters (``layer.param(name)``). ``embed`` and ``readout`` see the :class:`Stack`.

The view is also the one place that chooses the fast path: a sublayer with no optional
piece, in a run that allows it, is computed by its fused primitive (``autograd/fused.py``);
everything else by the readable composition of ``nn``. A run can change how it computes
without changing the function: ``freeze`` holds values fixed at a point (the gradient
checker's frozen ReLU patterns and stop-gradient values), ``linear`` replaces the linear map
(the checker's weights moved one per batch row), ``view`` wraps the layer views (the claims'
recording of every branch and norm).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

import numpy as np

from lnref import nn
from lnref.autograd import Tensor, fused, ops
from lnref.pieces import HeadL2Norm, Scaled
from lnref.qk_norms import QK_NORMS

# freeze(key, compute) -> the value held for ``key`` (``compute()`` the first time)
Freeze = Callable[[Hashable, Callable[[], np.ndarray]], np.ndarray]
State = tuple[Tensor, ...]


class StagedModel(Protocol):
    """A model run stage by stage (``lnref.model.Model``): what the views, the gradient checker,
    the probes and the claims use of it. ``layer`` runs one layer on a state (a tuple of
    Tensors, one per stream) and ``forward`` runs the stack from a layer on."""

    config: Any
    params: dict[str, Any]
    groups: dict[str, list[tuple[str, str]]]
    head_norms: set[str]
    fast: bool
    dtype: np.dtype

    input_names: tuple[str, ...]  # the model's inputs: ("input",), or ("source", "target")

    @property
    def n_blocks(
        self,
    ) -> int: ...  # the blocks ``layer`` runs: a stack's layers (an encoder-decoder model's, and its bridge)

    def run(
        self, params: dict[str, Any] | None = None, memory: Any = None, freeze: Freeze | None = None, **options: Any
    ) -> Run: ...
    def embed(self, run: Run, x: Any) -> State: ...
    def layer(self, run: Run, index: int, state: State) -> State: ...
    def readout(self, run: Run, state: State) -> Tensor: ...
    def forward(
        self, run: Run, x: Any = None, state: State | None = None, start: int = 0, keep_states: bool = False
    ) -> tuple[Tensor, list[State] | None]: ...
    def stream_names(self, index: int) -> tuple[str, ...]: ...
    def layer_of(self, name: str) -> int | None: ...
    def block_label(self, index: int) -> tuple[str, str]: ...


class Run:
    """One evaluation of the model: the parameter values in use, the memory, and how to compute.

    ``prefix`` is the stack's name in ``params`` ("encoder.", "decoder." in an encoder-decoder
    model; "" for a model of one stack): a parameter its views call ``layers.3.attn.wq`` is
    ``params[prefix + "layers.3.attn.wq"]``."""

    def __init__(
        self,
        model: StagedModel,
        params: dict[str, Any],
        memory: Any = None,
        *,
        freeze: Freeze | None = None,
        linear: Callable[..., Tensor] = ops.linear,
        view: Callable[[Run, int], Any] | None = None,
        prefix: str = "",
    ) -> None:
        self.model = model
        self.config = model.config
        self.params = params
        self.memory = memory
        self.freeze = freeze
        self.linear = linear
        self.view = view
        self.prefix = prefix
        self.fused = model.fast and linear is ops.linear
        self._groups: dict[str, dict[str, Any]] = {}

    def of_stack(self, stack: StagedModel, prefix: str, memory: Any = None) -> Run:
        """A run of one stack of this run's model (an encoder-decoder model's encoder or decoder,
        its parameters named ``prefix...``), computing as this run computes."""
        return Run(stack, self.params, memory, freeze=self.freeze, linear=self.linear, view=self.view, prefix=prefix)

    def group(self, prefix: str) -> dict[str, Any]:
        """{short name: value} of the parameters named ``prefix.<short name>``."""
        group = self._groups.get(prefix)
        if group is None:
            members = self.model.groups[prefix]
            group = self._groups[prefix] = {short: self.params[self.prefix + full] for short, full in members}
        return group

    def layer_view(self, index: int) -> Any:
        return Layer(self, index) if self.view is None else self.view(self, index)


class _View:
    """What the stack and layer views share: norms, parameters, frozen values."""

    def __init__(self, run: Run, prefix: str, block: Hashable) -> None:
        self.run = run
        self.config = run.config
        self.prefix = prefix
        self._block = block if not run.prefix else (run.prefix, block)  # the two stacks' call sites apart
        self._frozen = 0

    def param(self, name: str) -> Any:
        return self.run.params[self.run.prefix + self.prefix + name]

    def option(self, name: str) -> Any:
        """The value of the scheme's own option ``name``."""
        return self.config.option(name)

    def norm(self, name: str, x: Any) -> Tensor:
        """The norm ``name`` of the configured kind; one of ``HEAD_NORMS`` acts on each head."""
        params, kind, eps = self.run.group(self.prefix + name), self.config.norm, self.config.eps
        if self.prefix + name in self.run.model.head_norms:
            return nn.per_head(x, self.config.n_heads, lambda heads: nn.norm(heads, params, kind, eps))
        return nn.norm(x, params, kind, eps)

    def frozen(self, kind: str, compute: Callable[[], np.ndarray]) -> np.ndarray | None:
        """The value the run holds fixed for this call site (None when the run freezes nothing).

        Call sites are numbered in the order a block meets them, the same on every run; ``kind``
        ("relu", "stop_gradient") lets a run hold some kinds and not others."""
        if self.run.freeze is None:
            return None
        key = (self._block, self._frozen, kind)
        self._frozen += 1
        return self.run.freeze(key, compute)

    def stop_gradient(self, x: Any) -> Tensor:
        """sg(x): x going forward, no gradient coming back. A run that holds values at a point
        (the gradient checker's) holds it there: the function whose derivative the tape gives."""
        held = self.frozen("stop_gradient", lambda: np.array(x.value if isinstance(x, Tensor) else x))
        return ops.stop_gradient(x) if held is None else Tensor.wrap(held)


class Stack(_View):
    """What a scheme's ``embed`` and ``readout`` see: stack-level norms and parameters."""

    def __init__(self, run: Run, stage: str) -> None:
        super().__init__(run, "", stage)


class Layer(_View):
    """What a scheme's ``layer`` sees of layer ``index``."""

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, f"layers.{index}.", index)
        self.index = index
        self.n_layers = run.config.n_layers

    @property
    def branches(self) -> list[tuple[str, Callable[..., Tensor]]]:
        """(name, function) for the sublayers in order: self-attention ``attn``, cross-attention
        ``cross`` (decoder stacks only) and ``ffn``; a function takes its sublayer's optional
        pieces as keywords (``branch(x, hidden_norm="ln_hidden")``)."""
        branches: list[tuple[str, Callable[..., Tensor]]] = [("attn", self.self_attention)]
        if self.config.cross_attention:
            branches.append(("cross", self.cross_attention))
        branches.append(("ffn", self.ffn))
        return branches

    def self_attention(self, x: Any, **pieces: Any) -> Tensor:
        """Self-attention; ``pieces`` name the optional norms and scale of ``nn.attention``
        (``q_norm="q_norm"``: the layer's norm of that name; ``head_scale``: a parameter; or,
        instead of a name, what the scheme computes itself: a function of the projection, a
        scale)."""
        return self._attention("attn", x, None, self.config.causal, pieces)

    def cross_attention(self, x: Any, **pieces: Any) -> Tensor:
        return self._attention("cross", x, self.run.memory, False, pieces)

    def _attention(self, group: str, x: Any, memory: Any, causal: bool, pieces: dict[str, Any]) -> Tensor:
        p, n_heads = self.run.group(self.prefix + group), self.config.n_heads
        qk_pieces = QK_NORMS[self.config.qk_norm].pieces(self, self.prefix + group)
        if self.run.fused and not pieces and not qk_pieces:
            weights = [p[name] for name in nn.ATTENTION_PARAMS]
            return fused.attention_sublayer(x, memory, *weights, n_heads=n_heads, causal=causal)
        if self.run.fused and not qk_pieces and memory is None and self._fused_heads_pieces(pieces):
            weights = [p[name] for name in nn.ATTENTION_PARAMS]
            scale = self.param(pieces["head_scale"]) if "head_scale" in pieces else None
            q_norm, k_norm, v_norm, heads_norm = (
                self.run.group(self.prefix + pieces[key]) if key in pieces else {}
                for key in ("q_norm", "k_norm", "v_norm", "heads_norm")
            )
            return fused.heads_pieces_attention(
                x,
                *weights,
                *(norm.get(name) for norm in (q_norm, k_norm, v_norm) for name in ("gamma", "beta")),
                scale,
                heads_norm.get("gamma"),
                heads_norm.get("beta"),
                n_heads=n_heads,
                causal=causal,
                eps=self.config.eps,
            )
        # q and k each L2-normalized per head times a gain (pieces.HeadL2Norm), nothing else: one step.
        l2_heads = {key: piece for key, piece in pieces.items() if isinstance(piece, HeadL2Norm)}
        if self.run.fused and not qk_pieces and memory is None and set(l2_heads) == set(pieces) == {"q_norm", "k_norm"}:
            weights = [p[name] for name in nn.ATTENTION_PARAMS]
            q_gain, k_gain = l2_heads["q_norm"].gain, l2_heads["k_norm"].gain
            return fused.l2_heads_attention(
                x,
                *weights,
                q_gain.value,
                k_gain.value,
                q_factor=q_gain.factor,
                k_factor=k_gain.factor,
                n_heads=n_heads,
                causal=causal,
            )
        resolved = {**qk_pieces, **{key: self._piece(key, name) for key, name in pieces.items()}}
        return nn.attention(x, p, n_heads, causal=causal, memory=memory, linear=self.run.linear, **resolved)

    def _fused_heads_pieces(self, pieces: dict[str, Any]) -> bool:
        """Whether ``pieces`` are what ``fused.heads_pieces_attention`` computes, all of them or
        some: LayerNorms of each head's queries, keys, values (the layer's head norms), a head
        scale and a LayerNorm over all d features between the heads and W_o."""
        if not pieces or not set(pieces) <= {"q_norm", "k_norm", "v_norm", "head_scale", "heads_norm"}:
            return False
        if not all(isinstance(name, str) for name in pieces.values()):
            return False
        norms = {key: self.prefix + name for key, name in pieces.items() if key != "head_scale"}
        return (not norms or self.config.norm == "layernorm") and all(
            (norm in self.run.model.head_norms) == (key != "heads_norm") for key, norm in norms.items()
        )

    def ffn(self, x: Any, **pieces: Any) -> Tensor:
        """The feed-forward sublayer; ``hidden_norm="name"`` puts that norm (of d_ff features)
        after the activation, ``hidden_scale="name"`` that parameter (d_ff,) on the hidden
        units before it (or a scale the scheme computes; a ``pieces.Scaled``, a parameter
        times a constant, is one fused step)."""
        p, activation = self.run.group(self.prefix + "ffn"), self.config.activation
        frozen_relu = activation == "relu" and self.run.freeze is not None
        if self.run.fused and not frozen_relu and activation in fused.FFN_ACTIVATIONS:
            if not pieces:
                return fused.feed_forward(x, p["w1"], p["b1"], p["w2"], p["b2"], activation=activation)
            # A LayerNorm over all d_ff hidden features has its fused kernel; other kinds do not.
            norm = f"{self.prefix}{pieces.get('hidden_norm')}"
            plain = isinstance(pieces.get("hidden_norm"), str) and norm not in self.run.model.head_norms
            if set(pieces) == {"hidden_norm"} and plain and self.config.norm == "layernorm":
                g = self.run.group(norm)
                weights = (p["w1"], p["b1"], g["gamma"], g["beta"], p["w2"], p["b2"])
                return fused.normed_feed_forward(x, *weights, activation=activation, eps=self.config.eps)
            scale = pieces.get("hidden_scale")
            if set(pieces) == {"hidden_scale"} and isinstance(scale, Scaled):
                return fused.scaled_feed_forward(
                    x, p["w1"], p["b1"], scale.value, p["w2"], p["b2"], scale_factor=scale.factor, activation=activation
                )
        resolved = {key: self._piece(key, name) for key, name in pieces.items()}
        if isinstance(resolved.get("hidden_scale"), Scaled):
            resolved["hidden_scale"] = resolved["hidden_scale"].compose()
        activate = self._frozen_relu if frozen_relu else None
        return nn.ffn(x, p, activation, activate=activate, linear=self.run.linear, **resolved)

    def _frozen_relu(self, hidden: Tensor) -> Tensor:
        """ReLU with its on/off pattern held at the run's point: the smooth piece of the
        network that contains the point."""
        pattern = self.frozen("relu", lambda: (hidden.value > 0).astype(hidden.dtype))
        return ops.mul(hidden, pattern)

    def _piece(self, key: str, name: Any) -> Any:
        if not isinstance(name, str):  # what the scheme computed itself: a function, a scale
            return name
        if key in ("head_scale", "hidden_scale"):
            return self.param(name)
        return lambda x: self.norm(name, x)


class Freezer:
    """Values a run holds fixed at a point (ReLU patterns, stop-gradient values), by call site.

    One run records them (``freeze=freezer.record``); later runs hold them
    (``freeze=freezer.hold(count)``), tiled ``count`` times along the batch axis for runs that
    stack several moved copies of the point. A function evaluated this way is the smooth piece
    of the network that contains the point, where finite differences mean something. Kinds
    named in ``hold(release=...)`` are computed afresh by every run instead.
    """

    def __init__(self) -> None:
        self.values: dict[Hashable, np.ndarray] = {}
        self._tiled: dict[int, dict[Hashable, np.ndarray]] = {}

    @property
    def kinds(self) -> set[str]:
        """The kinds of the values recorded ("relu", "stop_gradient")."""
        return {key[-1] for key in self.values if isinstance(key, tuple)}

    def record(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        value = self.values[key] = compute()
        self._tiled.clear()
        return value

    def hold(self, count: int = 1, release: tuple[str, ...] = ()) -> Freeze:
        def held(key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
            if isinstance(key, tuple) and key[-1] in release:
                return compute()
            if count == 1:
                return self.values[key]
            tiled = self._tiled.setdefault(count, {})
            if key not in tiled:
                tiled[key] = np.concatenate([self.values[key]] * count)
            return tiled[key]

        return held


def record_frozen(
    model: StagedModel, stage: Callable[[Run], Any], params: dict[str, Any] | None = None, memory: Any = None
) -> Freezer:
    """A Freezer holding the values that ``stage(run)`` (a forward pass, or part of one) meets
    at ``params`` (default: the model's)."""
    freezer = Freezer()
    stage(model.run(params, memory, freeze=freezer.record))
    return freezer
