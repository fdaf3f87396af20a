"""GPAS, Gradient-Preserving Activation Scaling (Chen et al. 2025, "GPAS: Accelerating
Convergence of LLM Pretraining via Gradient-Preserving Activation Scaling", NeurIPS, Sec. 3),
on Pre-LN (the paper's Pre + GPAS).

After each residual add the stream is scaled down in the forward pass only:

    x <- x + S(LN_S(x));   x <- x - SiLU(a_l) sg(x)        for each sublayer S
    y  = LN_final(x_L)

with sg the stop-gradient and one learned scalar a_l per layer (``gate``), shared by its
sublayers, a_0 = 0: SiLU(0) = 0, so at init the layer is Pre-LN's, forward and backward.
Forward, x is multiplied by 1 - SiLU(a); backward, the gradient reaching the stream is left as
it is (d/dx is the identity for every a) and a learns from dL/da = -SiLU'(a) <g, x>. Once
a != 0 the tape's gradient is by design not the derivative of the forward function: the
gradient checker holds sg's value at the point and checks the function whose derivative the tape
gives (``hold_stop_gradients``), and the report says so.

Read against dandingsky/GPAS @3198068, peft_pretraining/modeling_llama.py (GPASBlock: x -
act(gate) x.detach(), gate_init_value 0, act SiLU; norm_type pre_gpas: one GPASBlock per
decoder layer, after the attention's residual add and after the MLP's). The repository also puts
it on Sandwich-LN, DeepNorm and Mix-LN and initializes the embeddings N(0, 2/5) and weights
N(0, 0.02); lnref keeps its own init.
"""

import numpy as np

from lnref.autograd import ops

SUMMARY = "x <- x + S(LN(x)); x <- x - SiLU(a) sg(x), a_0 = 0; y = LN(x_L)"
PAPER = "Chen et al. 2025, GPAS: Accelerating Convergence of LLM Pretraining via Gradient-Preserving Activation Scaling"
NORMS = ("ln_{}",)
STACK_NORMS = ("final_ln",)


def layer_params(index, branches, config):
    return {"gate": np.zeros(())}


def silu(a):
    return a * ops.sigmoid(a)


def layer(x, layer):
    scale = silu(layer.param("gate"))
    for name, branch in layer.branches:
        x = x + branch(layer.norm(f"ln_{name}", x))
        x = x - scale * layer.stop_gradient(x)
    return x


def readout(x, stack):
    return stack.norm("final_ln", x)
