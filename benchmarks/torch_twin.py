"""The PyTorch twin of lnref's Pre-LN and Post-LN models, for ``bench_model.py`` and the split.

The same model written with torch ops (``F.linear`` with weights stored (d_out, d_in) as
``nn.Linear`` does, ``F.layer_norm``, ``F.scaled_dot_product_attention``, ``F.relu``), the
weights copied from lnref's; :func:`check_agreement` holds the two together before any timing.
"""

from __future__ import annotations


class TorchTwin:
    """The lnref model in torch ops, Pre-LN or Post-LN, with lnref's weights."""

    def __init__(self, model, torch):
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.config = model.config
        self.names = list(model.params)
        # nn.Linear's layout: W^T, (d_out, d_in), contiguous.
        self.transposed = {n for n in self.names if model.params[n].ndim == 2}
        self.leaves = {
            n: torch.tensor(model.params[n].T.copy() if n in self.transposed else model.params[n], requires_grad=True)
            for n in self.names
        }

    def attention(self, x, prefix):
        p, F, H = self.leaves, self.F, self.config.n_heads
        batch, seq, d = x.shape

        def heads(name):  # (B, T, d) -> (B, H, T, d/H)
            projected = F.linear(x, p[prefix + "w" + name], p[prefix + "b" + name])
            return projected.view(batch, seq, H, d // H).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads("q"), heads("k"), heads("v"))
        return F.linear(out.transpose(1, 2).reshape(batch, seq, d), p[prefix + "wo"], p[prefix + "bo"])

    def ffn(self, x, prefix):
        p, F = self.leaves, self.F
        return F.linear(F.relu(F.linear(x, p[prefix + "w1"], p[prefix + "b1"])), p[prefix + "w2"], p[prefix + "b2"])

    def norm(self, x, prefix):
        p = self.leaves
        return self.F.layer_norm(x, (x.shape[-1],), p[prefix + ".gamma"], p[prefix + ".beta"], self.config.eps)

    def forward(self, x):
        for layer in range(self.config.n_layers):
            at = f"layers.{layer}."
            if self.config.scheme == "pre":
                x = x + self.attention(self.norm(x, at + "ln_attn"), at + "attn.")
                x = x + self.ffn(self.norm(x, at + "ln_ffn"), at + "ffn.")
            else:  # post
                x = self.norm(x + self.attention(x, at + "attn."), at + "ln_attn")
                x = self.norm(x + self.ffn(x, at + "ffn."), at + "ln_ffn")
        return self.norm(x, "final_ln") if self.config.scheme == "pre" else x

    def value_and_grad(self, x, dy):
        """(loss, output, gradients in the order of ``self.names`` then the input)."""
        leaves = [self.leaves[n] for n in self.names]
        y = self.forward(x)
        loss = (y * dy).sum()
        return loss, y, self.torch.autograd.grad(loss, [*leaves, x])


def check_agreement(model, twin, x, dy, torch):
    """Largest relative difference between lnref and torch over y, the loss and every gradient.

    A gradient's difference is relative to its largest entry, floored at 1e-4 of the largest
    entry of any gradient: some gradients are exactly zero (the key biases': softmax is
    invariant to a shift of a query's scores) or cancel down to ~1e-13 of the largest (the
    queries and keys of deep Post-LN at init, where attention is nearly uniform), and both
    sides hold rounding noise there. A modelling difference shows up at O(1).
    """
    import numpy as np

    loss, grads = model.value_and_grad(x, dy)
    y = model(x)
    t_loss, t_y, t_grads = twin.value_and_grad(torch.tensor(x, requires_grad=True), torch.tensor(dy))
    worst = max(
        abs(float(t_loss.detach()) - loss) / max(abs(loss), 1e-300),
        float(np.abs(t_y.detach().numpy() - y).max() / np.abs(y).max()),
    )
    floor = 1e-4 * max(float(np.abs(g).max()) for g in grads.values())
    for name, t_grad in zip([*twin.names, "input"], t_grads):
        theirs = t_grad.numpy().T if name in twin.transposed else t_grad.numpy()
        ours = grads[name]
        scale = max(float(np.abs(ours).max()), floor, 1e-300)
        worst = max(worst, float(np.abs(theirs - ours).max()) / scale)
    return worst
