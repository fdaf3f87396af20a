"""The golden format's fixed names and the error every golden function raises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lnref.schemes import get_scheme, stream_names

if TYPE_CHECKING:
    from lnref.model import Config

FORMAT_NAME = "lnref-golden"
FORMAT_VERSION = 5  # what changed at each version: compat.py
CONFIG_ENTRY = "config"
EXTENSIONS = (".npz", ".safetensors")
LOSS_DEFINITION = "sum(y * dy)"
WEIGHT_LAYOUT = "y = x @ W + b, W of shape (d_in, d_out)"
# Where the stored parameters are: the model's initialization, or a generic point (every tensor
# moved by 0.1 rms N(0, 1), as the gradient checker moves them).
POINTS = ("init", "generic")

# Weight matrices (as opposed to biases, gains and scheme vectors): the names that
# ``--transpose-weights`` transposes for frameworks storing (d_out, d_in).
WEIGHT_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2")


class GoldenError(ValueError):
    """A golden file (or a file to compare) that cannot be used; one line, exit code 2."""


def hidden_streams(scheme: str, layer: int, config: Any = None) -> tuple[str, ...]:
    """Names of the arrays making up the state that enters ``layer``, as the scheme declares
    them (its ``STREAMS`` or ``streams(layer, config)``; one stream "x" by default); ``config``
    the model's (its options can set the number of streams), None for the defaults."""
    return stream_names(get_scheme(scheme), layer, config)


def hidden_name(layer: int, stream: str, stack: str | None = None) -> str:
    """``hidden/3/x``; in an encoder-decoder file ``hidden/encoder/3/x`` (``stack``: its stack)."""
    return f"hidden/{layer}/{stream}" if stack is None else f"hidden/{stack}/{layer}/{stream}"


def stack_depths(config: Config) -> dict[str, int]:
    """{stack: layers} of an encoder-decoder model's config ({"encoder": N, "decoder": M})."""
    return {"encoder": config.encoder_layers, "decoder": config.decoder_layers}


def is_weight_matrix(name: str) -> bool:
    """True for ``params/...wq`` and the like, the (d_in, d_out) matrices."""
    return name.rpartition(".")[2] in WEIGHT_NAMES


def one_line(err: BaseException) -> str:
    """An exception's message on one line, short enough for an error message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def first_names(names: Sequence[str], count: int = 3) -> str:
    """The first ``count`` names and how many more, for an error message."""
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more
