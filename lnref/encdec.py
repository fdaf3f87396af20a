"""The encoder-decoder model: ``build(scheme, encoder_layers=N, decoder_layers=M)``.

Two stacks of the scheme's layers (Vaswani et al. 2017, Sec. 3.1). The encoder reads the source
with self-attention in both directions; its output, after its readout (Pre-LN's final norm), is
the *memory*. The decoder reads the target with causal self-attention, attends to the memory in
every layer (cross-attention) and ends with its own readout:

    memory = Encoder(source)            N layers: attn, ffn; no mask
    y      = Decoder(target, memory)    M layers: causal attn, cross, ffn

Each stack is a :class:`lnref.model.Model` of the scheme, its config telling the scheme its role
("encoder" or "decoder") and both depths (``encoder_layers`` N, ``decoder_layers`` M), so a scheme
whose paper gives an encoder's constants and a decoder's (DeepNorm, Sub-LN, T-Fixup, Admin) reads
them there. Parameters are the stacks' own names after "encoder." or "decoder."
(``encoder.layers.3.attn.wq``, ``decoder.layers.0.cross.wk``, ``encoder.final_ln.gamma``).

As a staged model (``lnref.views.StagedModel``: what the gradient checker, the probes and the
claims run) its ``n_blocks = N + M + 1`` blocks are the encoder's layers, the *bridge*, then the
decoder's layers. The state carries what the later blocks need:

    embed          (source, target)                      -> (encoder streams..., target)
    block i < N    encoder layer i                          (encoder streams..., target)
    block N        the bridge: memory = encoder readout,  -> (decoder streams..., memory)
                   the decoder's embed of the target
    block N+1+j    decoder layer j, attending to memory     (decoder streams..., memory)
                   (the last one leaves the memory behind: nothing after it reads it)
    readout        the decoder's readout                 -> y

so moving an encoder parameter re-runs everything after it, and every block, the bridge
included, can be checked on its own. The encoder's streams have the source's length, the
decoder's the target's; each stack checks its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnref.autograd import Tensor
from lnref.autograd.replay import Replayer
from lnref.model import Config, Model, fast_paths_enabled
from lnref.schemes import get_scheme
from lnref.staged import ConfigError, Staged, as_state, index_groups
from lnref.views import Freeze, Run, State

STACKS = ("encoder", "decoder")


class EncoderDecoder(Staged):
    """An encoder stack and a decoder stack of one scheme (see the module docstring).

    ``params`` holds both stacks' parameters, each name after its stack's ("encoder.",
    "decoder."); ``encoder`` and ``decoder`` are the two stacks (``lnref.model.Model``).
    """

    input_names: tuple[str, ...] = ("source", "target")

    def __init__(self, config: Config) -> None:
        if config.role != "encoder-decoder":
            raise ConfigError(f"an EncoderDecoder needs the config of an encoder-decoder model, got role {config.role}")
        self.config = config
        self.scheme = get_scheme(config.scheme)
        self.dtype = np.dtype(config.dtype)
        self.replayer = Replayer()
        self.encoder = Model(config.stack("encoder"))
        self.decoder = Model(config.stack("decoder"), encoder=self.encoder)
        self.params = {
            f"{stack}.{name}": value for stack in STACKS for name, value in getattr(self, stack).params.items()
        }
        self.groups = index_groups(self.params)
        self.head_norms = {f"{stack}.{name}" for stack in STACKS for name in getattr(self, stack).head_norms}
        self.fast = fast_paths_enabled()

    @property
    def fast(self) -> bool:
        """Whether passes take the fused sublayers and replay a repeated ``value_and_grad``."""
        return self.encoder.fast and self.decoder.fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self.encoder.fast = self.decoder.fast = value

    @property
    def linear_params(self) -> set[str]:
        """Names of the parameters that only the sublayers' linear maps read."""
        return {f"{stack}.{name}" for stack in STACKS for name in getattr(self, stack).linear_params}

    def load(self, params: dict[str, Any]) -> None:
        """Replace every parameter; names, shapes and dtypes must match exactly."""
        self.params = self._checked_params(params)
        for stack in STACKS:
            prefix = f"{stack}."
            getattr(self, stack).params = {n[len(prefix) :]: v for n, v in self.params.items() if n.startswith(prefix)}

    # -- inputs --

    def check_input(self, x: Any, memory: Any = None) -> None:
        """``x`` = (source, target): (batch, source length, d) and (batch, target length, d)."""
        if memory is not None:
            raise ConfigError("an encoder-decoder model computes its memory from the source: give none")
        if not (isinstance(x, tuple) and len(x) == 2):
            raise ConfigError("an encoder-decoder model's input is (source, target)")
        batch = None
        for name, value in zip(self.input_names, x):
            value = np.asarray(value)
            if value.ndim != 3 or value.shape[-1] != self.config.d_model or value.shape[1] < 1:
                raise ConfigError(
                    f"{name} must have shape (batch, length >= 1, {self.config.d_model}), got {value.shape}"
                )
            if batch is not None and value.shape[0] != batch:
                raise ConfigError(f"source and target must have one batch size, got {batch} and {value.shape[0]}")
            batch = value.shape[0]
            if value.dtype != self.dtype:
                raise ConfigError(f"{name} has dtype {value.dtype}, the model is {self.dtype}")
            if not np.isfinite(value).all():
                raise ConfigError(f"{name} contains NaN or inf")

    def sample_inputs(
        self, batch: int = 2, seq: int = 8, memory_len: int | None = None, seed: int | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, None]:
        """Seeded standard-normal ((source, target), dy, None): the target (and dy) ``seq`` long,
        the source ``memory_len`` long (the memory has the source's length; default ``seq``). The
        seed defaults to the model's."""
        rng = np.random.default_rng([self.config.seed if seed is None else seed, 1])
        d_model = self.config.d_model
        source = rng.standard_normal((batch, seq if memory_len is None else memory_len, d_model)).astype(self.dtype)
        target = rng.standard_normal((batch, seq, d_model)).astype(self.dtype)
        dy = rng.standard_normal((batch, seq, d_model)).astype(self.dtype)
        return (source, target), dy, None

    # -- the staged model --

    @property
    def n_blocks(self) -> int:
        """The encoder's layers, the bridge, the decoder's layers."""
        return self.config.encoder_layers + 1 + self.config.decoder_layers

    def stream_names(self, index: int) -> tuple[str, ...]:
        """Names of the arrays of the state entering block ``index`` (index n_blocks: the last
        block's output)."""
        n = self.config.encoder_layers
        if index <= n:
            return (*self.encoder.stream_names(index), "target")
        streams = self.decoder.stream_names(index - n - 1)
        return streams if index == self.n_blocks else (*streams, "memory")

    def layer_of(self, name: str) -> int | None:
        """The block whose layer parameter ``name`` is; None for a stack-level one."""
        stack, _, rest = name.partition(".")
        layer = getattr(self, stack).layer_of(rest) if stack in STACKS else None
        if layer is None or stack == "encoder":
            return layer
        return self.config.encoder_layers + 1 + layer

    def block_label(self, index: int) -> tuple[str, str]:
        """(name, place) of block ``index``: ("encoder.layers.3", "encoder layer 3"), ("bridge",
        "bridge"), ("decoder.layers.0", "decoder layer 0")."""
        n = self.config.encoder_layers
        if index == n:
            return "bridge", "bridge"
        stack, layer = ("encoder", index) if index < n else ("decoder", index - n - 1)
        return f"{stack}.layers.{layer}", f"{stack} layer {layer}"

    def run(
        self, params: dict[str, Any] | None = None, memory: Any = None, freeze: Freeze | None = None, **options: Any
    ) -> Run:
        """A run over ``params`` (default: the model's); the stacks run as ``stack_run`` derives them."""
        if memory is not None:
            raise ConfigError("an encoder-decoder model computes its memory from the source: give none")
        return Run(self, self.params if params is None else params, freeze=freeze, **options)

    def stack_run(self, run: Run, stack: str, memory: Any = None) -> Run:
        """The run of the encoder or the decoder (attending to ``memory``) within ``run``: its
        views see the stack's own parameter names and layer indices, and ``run.prefix``
        ("encoder.", "decoder.") tells which stack they are of."""
        return run.of_stack(getattr(self, stack), f"{stack}.", memory)

    def embed(self, run: Run, x: Any) -> State:
        source, target = x
        return (*self.encoder.embed(self.stack_run(run, "encoder"), source), *as_state(target))

    def layer(self, run: Run, index: int, state: State) -> State:
        n = self.config.encoder_layers
        *streams, carried = as_state(state)
        if index < n:
            return (*self.encoder.layer(self.stack_run(run, "encoder"), index, tuple(streams)), carried)
        if index == n:
            memory = self.encoder.readout(self.stack_run(run, "encoder"), tuple(streams))
            return (*self.decoder.embed(self.stack_run(run, "decoder", memory), carried), memory)
        decoder = self.stack_run(run, "decoder", carried)
        out = self.decoder.layer(decoder, index - n - 1, tuple(streams))
        return out if index == self.n_blocks - 1 else (*out, carried)  # past the last layer none reads the memory

    def readout(self, run: Run, state: State) -> Tensor:
        return self.decoder.readout(self.stack_run(run, "decoder"), state)

    def stack_states(self, states: list[State]) -> dict[str, list[State]]:
        """The states of a staged pass (``forward(..., keep_states=True)``) as each stack's own:
        {"encoder": the states entering its layers 0..N-1 and its last layer's output,
        "decoder": the same for its M layers, state 0 its embedding of the target}."""
        n = self.config.encoder_layers
        return {
            "encoder": [s[:-1] for s in states[: n + 1]],
            "decoder": [s[:-1] for s in states[n + 1 : -1]] + [states[-1]],
        }

    # -- the public face --

    def __call__(self, source: Any, target: Any) -> np.ndarray:
        """y, of the target's shape."""
        self.check_input((source, target))
        y, _ = self.forward(self.run(), (source, target))
        return y.value

    def memory(self, source: Any, target: Any) -> np.ndarray:
        """The encoder's output (after its readout): what every decoder layer attends to."""
        self.check_input((source, target))
        _, states = self.forward(self.run(), (source, target), keep_states=True)
        assert states is not None
        return states[self.config.encoder_layers + 1][-1].value

    def hidden_states(self, source: Any, target: Any) -> dict[str, list[tuple[np.ndarray, ...]]]:
        """Per stack, the arrays of the state entering each of its layers (index N or M: the last
        layer's output, before the stack's readout)."""
        self.check_input((source, target))
        _, states = self.forward(self.run(), (source, target), keep_states=True)
        assert states is not None
        return {
            stack: [tuple(np.asarray(s.value) for s in state) for state in stack_states]
            for stack, stack_states in self.stack_states(states).items()
        }

    def value_and_grad(self, source: Any, target: Any, dy: Any) -> tuple[float, dict[str, np.ndarray]]:
        """loss = sum(y * dy) and its gradient for every parameter of both stacks, plus "source"
        and "target" (the decoder's gradients reach the encoder through the memory)."""
        self.check_input((source, target))
        return self._value_and_grad((source, target), dy, None, self.fast)
