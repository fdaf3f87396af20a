"""Hypothesis strategies over model configurations, for property tests of a port (needs the
optional extra ``lnref[hypothesis]``).

    from hypothesis import given, settings
    from lnref.testing import assert_matches, golden
    from lnref.testing.strategies import configs

    @settings(max_examples=25, deadline=None)
    @given(configs(schemes=("pre", "residual")))
    def test_my_port(config):
        record = golden(**config)
        assert_matches(my_port(record), record)

A configuration is a dict of :func:`lnref.testing.golden`'s keywords (scheme, n_layers,
d_model, n_heads, d_ff, norm, activation, causal, cross_attention, qk_norm, options, seed),
always one lnref builds: what a scheme refuses is never drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def configs(
    schemes: Sequence[str] | None = None,
    max_layers: int = 3,
    head_sizes: Sequence[int] = (2, 4),
    max_heads: int = 2,
) -> st.SearchStrategy[dict[str, Any]]:
    """Configurations of the given schemes (default: every built-in one), up to ``max_layers``
    layers, ``n_heads`` heads of a size in ``head_sizes``, with any norm kind, activation,
    QK-norm variant and option choice the scheme takes, causal or not, encoder or decoder."""
    from lnref.model import ACTIVATIONS
    from lnref.norms import NORM_KINDS
    from lnref.qk_norms import QK_NORMS
    from lnref.schemes import SCHEMES, get_scheme, options_of, places_norms, refusals_of

    chosen = tuple(schemes or SCHEMES)

    @st.composite
    def draw_config(draw: Any) -> dict[str, Any]:
        scheme = draw(st.sampled_from(chosen))
        module = get_scheme(scheme)
        refused = refusals_of(module)
        n_heads = draw(st.integers(1, max_heads))
        d_model = n_heads * draw(st.sampled_from(tuple(head_sizes)))
        config: dict[str, Any] = {
            "scheme": scheme,
            "n_layers": draw(st.integers(1, max_layers)),
            "d_model": d_model,
            "n_heads": n_heads,
            "d_ff": draw(st.sampled_from((d_model, 2 * d_model, 4 * d_model))),
            "seed": draw(st.integers(0, 2**16)),
        }
        choices = {
            "norm": tuple(NORM_KINDS) if places_norms(module) else (),
            "activation": tuple(ACTIVATIONS),
            "qk_norm": tuple(QK_NORMS),
            "causal": (False, True),
            "cross_attention": (False, True),
        }
        for name, values in choices.items():
            if name not in refused and values:
                config[name] = draw(st.sampled_from(values))
        options = {
            name: draw(st.sampled_from(option.choices))
            for name, option in options_of(module).items()
            if option.choices is not None
        }
        if options:
            config["options"] = options
        return config

    return draw_config()
