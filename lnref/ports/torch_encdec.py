"""The PyTorch port's encoder-decoder form (``lnref.ports.torch.evaluate`` reads such a file).

Written from Vaswani et al. 2017, Sec. 3.1, on the port's own stacks (``torch.Transformer`` and
its scheme functions): the encoder is a stack of the scheme's layers over the source, with
self-attention in both directions; its output, after the stack's last stage (Pre-LN's final
norm, ResiDual's merge), is the memory; the decoder is a stack of the scheme's layers over the
target, with causal self-attention and, in every layer, cross-attention to the memory:

    memory = Encoder(source)                N layers: A (no mask), F
    y      = Decoder(target, memory)        M layers: A (causal), C (keys, values from memory), F

The file's model config names the depths (encoder_layers N, decoder_layers M); each stack's
parameters are the file's names after "encoder." or "decoder.", and each stack's config tells
its scheme function which stack it is ("role") and both depths, for the constants that depend
on them (DeepNorm's alpha in the encoder: 0.81 (N^4 M)^(1/16)).
"""

from __future__ import annotations

import numpy as np
import torch

from lnref.ports.torch import SCHEMES, STREAMS, Transformer, read_golden

STACKS = ("encoder", "decoder")


def stack_config(config, stack, role):
    """The config of one stack of an encoder-decoder model's ``config``, telling its scheme ``role``."""
    decoder = stack == "decoder"
    depth = config["decoder_layers"] if decoder else config["encoder_layers"]
    return {**config, "role": role, "n_layers": depth, "causal": decoder, "cross_attention": decoder}


def run(config, params, source, target, dy, memory_from="readout", roles=STACKS):
    """Everything an encoder-decoder golden record predicts, by torch autograd: {name: numpy
    array} with y, memory, loss = sum(y * dy), grads/<param>, grads/source, grads/target and
    hidden/<stack>/<l>/<stream>. ``params`` are arrays by the file's names.

    For negative controls: ``memory_from="last layer"`` gives the decoder the encoder's last
    layer output instead of the stack's output, and ``roles`` are what the two stacks' configs
    tell their schemes ("stack": a stack of its own)."""
    leaves = {name: torch.tensor(np.asarray(value), requires_grad=True) for name, value in params.items()}
    inputs = {
        name: torch.tensor(np.asarray(value), requires_grad=True) for name, value in zip(STACKS, (source, target))
    }

    def of_stack(stack):
        prefix = f"{stack}."
        return {name[len(prefix) :]: value for name, value in leaves.items() if name.startswith(prefix)}

    scheme = SCHEMES[config["scheme"]]
    encoder = Transformer(stack_config(config, "encoder", roles[0]), of_stack("encoder"))
    memory, encoder_states = scheme(encoder, inputs["encoder"])
    if memory_from == "last layer":
        memory = encoder_states[-1][0]
    decoder = Transformer(stack_config(config, "decoder", roles[1]), of_stack("decoder"), memory)
    y, decoder_states = scheme(decoder, inputs["decoder"])
    loss = (y * torch.tensor(np.asarray(dy))).sum()
    loss.backward()

    def grad_of(leaf):
        return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad

    results = {"y": y.detach(), "memory": memory.detach(), "loss": loss.detach()}
    results.update({f"grads/{name}": grad_of(leaf) for name, leaf in leaves.items()})
    results.update({"grads/source": grad_of(inputs["encoder"]), "grads/target": grad_of(inputs["decoder"])})
    stream_names = STREAMS.get(config["scheme"], lambda layer: ("x",))
    for stack, states in zip(STACKS, (encoder_states, decoder_states)):
        for layer, state in enumerate(states):
            for stream, value in zip(stream_names(layer), state):
                results[f"hidden/{stack}/{layer}/{stream}"] = value.detach()
    return {name: value.numpy() for name, value in results.items()}


def evaluate(path, memory_from="readout", roles=STACKS, **overrides):
    """Everything an encoder-decoder golden file predicts, recomputed (as :func:`run`);
    ``overrides`` replace entries of the file's model config."""
    document, arrays = read_golden(path)
    config = {**document["model"], **overrides}
    params = {name[len("params/") :]: value for name, value in arrays.items() if name.startswith("params/")}
    return run(config, params, arrays["source"], arrays["target"], arrays["dy"], memory_from, roles)
