"""Norm kinds are a registry: a new kind is one entry, and every scheme takes it."""

import numpy as np
import pytest

import lnref
from lnref import gradcheck as checker
from lnref import norms
from lnref.autograd import ops
from lnref.model import ConfigError


def _scaled_rms_init(width, dtype):
    return {"gamma": np.full(width, 0.5, dtype)}


SCALED_RMS = norms.NormKind(
    "scaled_rms",
    "gamma * x / sqrt(mean(x^2) + eps), gamma_0 = 1/2",
    _scaled_rms_init,
    lambda x, p, eps: ops.rms_norm(x, p["gamma"], eps=eps),
)


@pytest.fixture
def scaled_rms(monkeypatch):
    monkeypatch.setitem(norms.NORM_KINDS, "scaled_rms", SCALED_RMS)


def test_layernorm_and_rmsnorm_are_the_built_in_kinds():
    assert set(norms.NORM_KINDS) >= {"layernorm", "rmsnorm"}


@pytest.mark.usefixtures("scaled_rms")
@pytest.mark.parametrize("scheme", ["post", "pre", "residual", "peri"])
def test_a_registered_kind_gives_every_norm_its_parameters_and_passes_the_check(scheme):
    model = lnref.build(scheme, n_layers=2, norm="scaled_rms", d_model=8, d_ff=16)
    gains = [name for name in model.params if name.endswith(".gamma")]
    assert gains and all(np.all(model.params[name] == 0.5) for name in gains)
    assert not any(name.endswith(".beta") for name in model.params)
    assert checker.gradcheck(model, batch=2, seq=4).ok


def test_an_unknown_kind_is_a_config_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="layernorm, rmsnorm"):
        lnref.build("pre", n_layers=1, norm="batchnorm")
