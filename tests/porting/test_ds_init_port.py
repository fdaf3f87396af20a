"""DS-Init (Zhang, Titov and Sennrich 2019, Sec. 3) as a port draws it, against lnref's post
with ``init=ds_paper`` and ``init=ds_code``, through lnref.testing.check_init.

The port's draw is written from the paper and the official code (bzhangGo/zero @d97e2c2,
models/transformer.py): the Xavier draw of every weight of layer l (1-based) with its spread
times l^-1/2 (the paper's bound gamma alpha / sqrt(l), alpha = 1) or l^-1/4 (the code's
variance scaling by l^-1/2); biases 0, gains 1.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lnref[torch]' runs the porting tests)")

import porter  # noqa: E402  (imports torch)

from lnref.testing import check_init  # noqa: E402

pytestmark = pytest.mark.torch

SPREAD_EXPONENT = {"ds_paper": 0.5, "ds_code": 0.25}


def ds_init(preset):
    def sample(config, seed):
        params = porter.Port(config).initialized(seed)
        for name, value in params.items():
            if name.startswith("layers.") and value.ndim == 2:
                params[name] = value * (int(name.split(".")[1]) + 1) ** -SPREAD_EXPONENT[preset]
        return params

    return sample


@pytest.mark.parametrize("preset", SPREAD_EXPONENT)
def test_check_init_passes_each_ds_init_preset_drawn_from_the_paper_and_the_code(preset):
    results = check_init(ds_init(preset), "post", 6, options={"init": preset})
    assert results and all(r.status == "ok" for r in results)


def test_check_init_flags_the_papers_ds_init_where_the_codes_is_asked_for_above_the_first_layer():
    with pytest.raises(AssertionError) as failed:
        check_init(ds_init("ds_paper"), "post", 6, options={"init": "ds_code"})
    off = {line.split(":")[0] for line in str(failed.value).splitlines()[1:] if ":" in line}
    assert "layers.5.ffn.w1" in off and not any(name.startswith("layers.0.") for name in off)
