"""B2T connection (Takase et al. 2023, "B2T Connection: Serving Stability and Performance
in Deep Transformers", Sec. 3).

A Post-LN layer whose input x_l skips every sublayer and its norms except the last norm:

    h       = LN_attn(x_l + A(x_l))            (and LN_cross(h + C(h)) in a decoder)
    x_{l+1} = LN_ffn(h + F(h) + x_l)

As in the authors' code the connection is in every layer, the last included, and there is
no final LN. (A later commit of their code also rescales weights by N^-1/2; lnref keeps
the paper's standard initialization.)
"""

SUMMARY = "h = LN(x + A(x)); x <- LN(h + F(h) + x); no final LN"
PAPER = "Takase et al. 2023, B2T Connection, Findings of ACL 2023, Sec. 3"
NORMS = ("ln_{}",)


def layer(x, layer):
    layer_input = x
    *inner, (last_name, last_branch) = layer.branches
    for name, branch in inner:
        x = layer.norm(f"ln_{name}", x + branch(x))
    return layer.norm(f"ln_{last_name}", x + last_branch(x) + layer_input)
