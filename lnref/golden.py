"""Golden files: one model's inputs, parameters, outputs, gradients and hidden states in
one self-contained file, so that another implementation can be unit-tested against lnref.

A golden file is a flat mapping name -> array (``.npz``, NumPy only, or ``.safetensors``,
the optional extra ``lnref[safetensors]``) plus a JSON text describing the model. The names
(documented in docs/golden-format.md):

    config                      the JSON text (npz: a 1-D uint8 array of UTF-8 bytes;
                                safetensors: the metadata entry "config")
    x, dy                       input (batch, seq, d_model) and output cotangent, same shape
    memory                      cross-attention memory (batch, memory_len, d_model), decoders only
    y, loss                     output (batch, seq, d_model) and loss = sum(y * dy), shape ()
    params/<name>               every parameter, lnref names (``layers.3.attn.wq``), W is (d_in, d_out)
    grads/<name>                d loss / d parameter, same shapes
    grads/input, grads/memory   d loss / d x (and d loss / d memory)
    hidden/<l>/<stream>         the state entering layer l (l = n_layers: the last layer's output)

Three uses, one per section below: ``export_golden`` writes a file, ``load_golden`` reads and
validates one, ``from_golden`` rebuilds the model and checks that it reproduces every stored
array bit for bit; ``compare_files`` measures another implementation's arrays against a file.

Comparison rule, per tensor, with e the expected and a the actual array:

    scale         = max |e'| over the tensor's group: every expected tensor e' whose name
                    equals this one's up to its last "." (grads/layers.3.attn.wq -> all of
                    grads/layers.3.attn.*); a name without "." after its last "/" (y, loss,
                    grads/input, hidden/3/x) is its own group
    max_abs_error = max |a - e|
    max_rel_error = max |a - e| / max(scale, tiny)         (tiny: the dtype's smallest normal)
    pass  iff  max |a - e| <= atol + rtol * scale

Why a group and not the tensor alone: some gradients are zero in exact arithmetic and hold
only round-off from cancelling terms as large as their siblings' gradients. The key bias b_k
is one (softmax is invariant to a shift shared by every key, so d loss / d b_k = 0); the
query/key weights of deep Post-LN layers, whose tokens have all but collapsed, are another
(~1e-12 of the value weights' gradients at 48 layers). Two correct float64 implementations
then differ by ~1e-16 of the group's scale, which is O(1) of the tensor's own. With
``per_tensor`` the scale is the tensor's own max |e|.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from lnref import __version__
from lnref.schemes import get_scheme, stream_names

FORMAT_NAME = "lnref-golden"
FORMAT_VERSION = 1
CONFIG_ENTRY = "config"
EXTENSIONS = (".npz", ".safetensors")
LOSS_DEFINITION = "sum(y * dy)"
WEIGHT_LAYOUT = "y = x @ W + b, W of shape (d_in, d_out)"

# Default rtol by dtype. Measured against an independent PyTorch implementation of every
# scheme at up to 48 layers: float64 agrees to 9e-14, float32 to 2e-5 on every tensor and
# 7e-5 on the loss (a sum of B*T*d products that partly cancel). Both leave >10x margin.
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-3}
DEFAULT_ATOL = 0.0
RULE = "pass iff max|a-e| <= atol + rtol * scale"

# Weight matrices (as opposed to biases, gains and scheme vectors): the names that
# ``--transpose-weights`` transposes for frameworks storing (d_out, d_in).
WEIGHT_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2")


class GoldenError(ValueError):
    """A golden file (or a file to compare) that cannot be used; one line, exit code 2."""


# ----- names -----------------------------------------------------------------------------

def hidden_streams(scheme: str, layer: int) -> tuple[str, ...]:
    """Names of the arrays making up the state that enters ``layer``, as the scheme declares
    them (its ``STREAMS`` or ``streams(layer)``; one stream "x" by default)."""
    return stream_names(get_scheme(scheme), layer)


def hidden_name(layer: int, stream: str) -> str:
    return f"hidden/{layer}/{stream}"


def is_weight_matrix(name: str) -> bool:
    """True for ``params/...wq`` and the like, the (d_in, d_out) matrices."""
    return name.rpartition(".")[2] in WEIGHT_NAMES


# ----- writing ---------------------------------------------------------------------------

def golden_arrays(model, x, dy, memory=None) -> dict[str, np.ndarray]:
    """Every array of a golden file, computed by ``model`` at (x, dy, memory), in file order."""
    loss, grads = model.value_and_grad(x, dy, memory)
    y = model(x, memory)
    states = model.hidden_states(x, memory)
    dtype = model.dtype
    arrays = {"x": np.asarray(x), "dy": np.asarray(dy)}
    if memory is not None:
        arrays["memory"] = np.asarray(memory)
    arrays["y"] = y
    arrays["loss"] = np.asarray(loss, dtype=dtype)  # exact: the loss was computed in this dtype
    arrays.update({f"params/{name}": value for name, value in model.params.items()})
    arrays.update({f"grads/{name}": grads[name] for name in model.params})
    arrays["grads/input"] = grads["input"]
    if memory is not None:
        arrays["grads/memory"] = grads["memory"]
    for layer, state in enumerate(states):
        names = hidden_streams(model.config.scheme, layer)
        if len(names) != len(state):
            raise GoldenError(f"layer {layer} of {model.config.scheme} carries {len(state)} streams; "
                              f"the golden format names {len(names)}")
        arrays.update({hidden_name(layer, name): value for name, value in zip(names, state)})
    return {name: np.asarray(value, order="C") for name, value in arrays.items()}


def golden_config(model, batch, seq, memory_len) -> dict:
    """The JSON document stored beside the arrays."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lnref_version": __version__,
        "model": model.config.to_dict(),
        "inputs": {"batch": batch, "seq": seq, "memory_len": memory_len, "seed": model.config.seed},
        "loss": LOSS_DEFINITION,
        "layout": WEIGHT_LAYOUT,
    }


def export_golden(model, path, batch=2, seq=8, memory_len=None) -> dict[str, np.ndarray]:
    """Write ``model``'s golden file to ``path`` (.npz or .safetensors, by extension).

    The inputs x, dy (and memory) are ``model.sample_inputs(batch, seq, memory_len)``, seeded
    by the model's seed. The file is written to a temporary file in the same directory and
    moved into place, so ``path`` holds either the old content or the complete new file.
    Returns the arrays written.
    """
    path = os.fspath(path)
    extension = check_output_path(path)  # fail before computing
    if not model.config.cross_attention and memory_len is not None:
        raise GoldenError("memory_len is only meaningful with cross-attention")
    x, dy, memory = model.sample_inputs(batch, seq, memory_len)
    arrays = golden_arrays(model, x, dy, memory)
    memory_len = None if memory is None else memory.shape[1]
    config_text = json.dumps(golden_config(model, batch, seq, memory_len), indent=1)
    if extension == ".npz":
        entries = {CONFIG_ENTRY: np.frombuffer(config_text.encode("utf-8"), dtype=np.uint8), **arrays}
        _write_atomically(path, lambda handle: np.savez(handle, **entries))
    else:
        payload = _safetensors_module().save(arrays, metadata={CONFIG_ENTRY: config_text})
        _write_atomically(path, lambda handle: handle.write(payload))
    return arrays


def check_output_path(path) -> str:
    """The format (extension) of a golden file to write at ``path``; GoldenError if the
    extension is unknown, its writer is not installed or the directory does not exist."""
    extension = _extension(path)
    if extension == ".safetensors":
        _safetensors_module()
    _check_target(path)
    return extension


def _extension(path):
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        raise GoldenError(f"{path}: unknown extension {extension or '(none)'!r}; "
                          "use .npz (NumPy) or .safetensors (needs lnref[safetensors])")
    return extension


def _safetensors_module():
    try:
        import safetensors.numpy
    except ImportError:
        raise GoldenError(".safetensors files need the optional extra lnref[safetensors] "
                          "(pip install 'lnref[safetensors]')") from None
    return safetensors.numpy


def _check_target(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise GoldenError(f"cannot write {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise GoldenError(f"cannot write {path}: it is a directory")
    return directory


def _write_atomically(path, write):
    directory = _check_target(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                                 suffix=".tmp")
    except OSError as err:
        raise GoldenError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; give it the permissions an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise GoldenError(f"cannot write {path}: {err.strerror or err}") from None
        raise


# ----- reading ---------------------------------------------------------------------------

def read_arrays(path) -> tuple[dict[str, np.ndarray], object]:
    """The arrays of an .npz or .safetensors file, and its config entry (None if absent).

    Any readable file of named arrays qualifies: another framework's output may hold only
    ``y`` and ``grads/...``. Object arrays are refused (they would need pickle), and every
    .npy header is checked against the bytes its member holds before anything is allocated.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GoldenError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise GoldenError(f"{path}: not a regular file")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        return _read_safetensors(path)
    if extension == ".npz" or zipfile.is_zipfile(path):
        return _read_npz(path)
    raise GoldenError(f"{path}: not an .npz or .safetensors file")


def _read_npz(path):
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name, suffix = info.filename[:-4], info.filename[-4:]
                if suffix != ".npy":
                    raise GoldenError(f"{path}: member {info.filename!r} is not a .npy array")
                arrays[name] = _read_npy_member(path, archive, info)
    except GoldenError:
        raise
    except Exception as err:  # a damaged file fails in zipfile, the .npy parser or zlib
        raise GoldenError(f"{path}: not a readable .npz file ({_one_line(err)})") from None
    config = arrays.pop(CONFIG_ENTRY, None)
    return arrays, config


def _read_npy_member(path, archive, info):
    fmt = np.lib.format
    with archive.open(info) as member:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(member)
        else:
            raise GoldenError(f"{path}: member {info.filename!r} has unsupported .npy version {version}")
        if dtype.hasobject:
            raise GoldenError(f"{path}: {info.filename[:-4]!r} is an object array; "
                              "pickled data is refused (allow_pickle=False)")
        data_bytes = math.prod(shape) * dtype.itemsize
        if data_bytes != info.file_size - member.tell():
            raise GoldenError(f"{path}: member {info.filename!r} is truncated or corrupt "
                              f"(its header promises {data_bytes} bytes)")
    with archive.open(info) as member:
        array = fmt.read_array(member, allow_pickle=False)
        member.read()  # reach the member's end, where zipfile checks the CRC
    return array


def _read_safetensors(path):
    _safetensors_module()  # a clear error naming the extra when it is absent
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except BaseException as err:  # the Rust reader's errors, and its panics (a BaseException)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise GoldenError(f"{path}: not a readable .safetensors file ({_one_line(err)})") from None
    return arrays, metadata.get(CONFIG_ENTRY)


def _one_line(err):
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class Golden:
    """A validated golden file: its config, input sizes and arrays by name."""

    path: str
    config: object  # lnref.model.Config
    batch: int
    seq: int
    memory_len: int | None
    lnref_version: str
    arrays: dict = field(repr=False)

    @property
    def x(self):
        return self.arrays["x"]

    @property
    def dy(self):
        return self.arrays["dy"]

    @property
    def memory(self):
        return self.arrays.get("memory")

    @property
    def y(self):
        return self.arrays["y"]

    @property
    def loss(self) -> float:
        return float(self.arrays["loss"])

    @property
    def params(self) -> dict[str, np.ndarray]:
        return _with_prefix(self.arrays, "params/")

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Parameter gradients by parameter name, plus "input" (and "memory")."""
        return _with_prefix(self.arrays, "grads/")

    @property
    def hidden(self) -> list[dict[str, np.ndarray]]:
        """hidden[l][stream]: the state entering layer l (l = n_layers: the last output)."""
        return [{stream: self.arrays[hidden_name(layer, stream)]
                 for stream in hidden_streams(self.config.scheme, layer)}
                for layer in range(self.config.n_layers + 1)]


def _with_prefix(arrays, prefix):
    return {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}


def load_golden(path) -> Golden:
    """Read and validate a golden file; raises GoldenError (a ValueError) with one line.

    Checks, in order: the file is a readable .npz/.safetensors without object arrays; it has
    a config naming this format and a version this lnref reads; the config builds a valid
    model; every array is finite and of the config's dtype; the entries are exactly those
    the format prescribes for this model, with the shapes it prescribes.
    """
    golden, _ = _load(path)
    return golden


def _load(path):
    path = os.fspath(path)
    arrays, config_entry = read_arrays(path)
    document = _parse_config(path, config_entry)
    config = _model_config(path, document.get("model"))
    batch, seq, memory_len = _input_sizes(path, document.get("inputs"), config)
    _check_values(path, arrays, config.dtype)
    _check_size_bounds(path, arrays, config)
    model = _build(config)
    expected = _expected_shapes(model, batch, seq, memory_len)
    _check_entries(path, arrays, expected)
    golden = Golden(path, config, batch, seq, memory_len, str(document.get("lnref_version", "?")),
                    {name: arrays[name] for name in expected})
    return golden, model


def _parse_config(path, entry):
    if entry is None:
        raise GoldenError(f"{path}: not an lnref golden file (no {CONFIG_ENTRY!r} entry)")
    if isinstance(entry, np.ndarray):
        if entry.dtype != np.uint8 or entry.ndim != 1:
            raise GoldenError(f"{path}: the {CONFIG_ENTRY!r} entry must be a 1-D uint8 array "
                              f"of UTF-8 JSON text, got {entry.dtype} of shape {entry.shape}")
        entry = entry.tobytes()
        try:
            entry = entry.decode("utf-8")
        except UnicodeDecodeError:
            raise GoldenError(f"{path}: the {CONFIG_ENTRY!r} entry is not UTF-8 text") from None
    try:
        document = json.loads(entry)
    except ValueError as err:
        raise GoldenError(f"{path}: the config is not valid JSON ({_one_line(err)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise GoldenError(f"{path}: not an lnref golden file (config format is not {FORMAT_NAME!r})")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise GoldenError(f"{path}: golden format version {version!r}; this lnref "
                          f"({__version__}) reads version {FORMAT_VERSION}")
    return document


def _model_config(path, fields):
    from lnref.model import Config

    names = [f.name for f in dataclasses.fields(Config)]
    if not isinstance(fields, dict):
        raise GoldenError(f"{path}: config has no 'model' object")
    missing = [name for name in names if name not in fields]
    unknown = [name for name in fields if name not in names]
    if missing or unknown:
        raise GoldenError(f"{path}: config 'model' " + "; ".join(
            part for part in (missing and f"lacks {', '.join(missing)}",
                              unknown and f"has unknown {', '.join(unknown)}") if part))
    for flag in ("causal", "cross_attention"):
        if not isinstance(fields[flag], bool):
            raise GoldenError(f"{path}: config {flag} must be true or false, got {fields[flag]!r}")
    for number in ("eps", "post_fraction"):
        if isinstance(fields[number], bool) or not isinstance(fields[number], (int, float)):
            raise GoldenError(f"{path}: config {number} must be a number, got {fields[number]!r}")
    for text in ("scheme", "norm", "activation", "dtype"):
        if not isinstance(fields[text], str):
            raise GoldenError(f"{path}: config {text} must be a string, got {fields[text]!r}")
    try:
        return Config(**fields)
    except ValueError as err:  # ConfigError
        raise GoldenError(f"{path}: config: {_one_line(err)}") from None


def _input_sizes(path, inputs, config):
    if not isinstance(inputs, dict):
        raise GoldenError(f"{path}: config has no 'inputs' object")
    sizes = []
    for name in ("batch", "seq"):
        value = inputs.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GoldenError(f"{path}: config inputs.{name} must be an integer >= 1, got {value!r}")
        sizes.append(value)
    memory_len = inputs.get("memory_len")
    if config.cross_attention:
        if isinstance(memory_len, bool) or not isinstance(memory_len, int) or memory_len < 1:
            raise GoldenError(f"{path}: config inputs.memory_len must be an integer >= 1 "
                              f"with cross-attention, got {memory_len!r}")
    elif memory_len is not None:
        raise GoldenError(f"{path}: config inputs.memory_len is {memory_len!r} but the model "
                          "has no cross-attention")
    return sizes[0], sizes[1], memory_len


def _check_values(path, arrays, dtype):
    for name, value in arrays.items():
        if value.dtype != np.dtype(dtype):
            raise GoldenError(f"{path}: {name} has dtype {value.dtype}, the config says {dtype}")
        if not np.isfinite(value).all():
            raise GoldenError(f"{path}: {name} contains NaN or inf")


def _check_size_bounds(path, arrays, config):
    """Sizes the config claims must be backed by the arrays before a model is built from it
    (a damaged config could otherwise ask for a billion layers)."""
    x = arrays.get("x")
    if x is None or x.ndim != 3 or x.shape[2] != config.d_model:
        raise GoldenError(f"{path}: x must be (batch, seq, {config.d_model}), "
                          f"got {None if x is None else x.shape}")
    layers = {name.split("/")[1] for name in arrays if name.startswith("hidden/")}
    if len(layers) != config.n_layers + 1:
        raise GoldenError(f"{path}: config says {config.n_layers} layers, the file holds hidden states "
                          f"for {len(layers)} (expected n_layers + 1)")
    w1 = arrays.get("params/layers.0.ffn.w1")
    if w1 is None or w1.shape != (config.d_model, config.d_ff):
        raise GoldenError(f"{path}: params/layers.0.ffn.w1 must be ({config.d_model}, {config.d_ff}), "
                          f"got {None if w1 is None else w1.shape}")


def _build(config):
    from lnref.model import Model

    return Model(config)


def _expected_shapes(model, batch, seq, memory_len):
    """Every name the format prescribes for ``model``, with its shape, in file order."""
    cfg = model.config
    activations = (batch, seq, cfg.d_model)
    shapes = {"x": activations, "dy": activations}
    if cfg.cross_attention:
        shapes["memory"] = (batch, memory_len, cfg.d_model)
    shapes.update({"y": activations, "loss": ()})
    shapes.update({f"params/{name}": value.shape for name, value in model.params.items()})
    shapes.update({f"grads/{name}": value.shape for name, value in model.params.items()})
    shapes["grads/input"] = activations
    if cfg.cross_attention:
        shapes["grads/memory"] = shapes["memory"]
    for layer in range(cfg.n_layers + 1):
        shapes.update({hidden_name(layer, stream): activations
                       for stream in hidden_streams(cfg.scheme, layer)})
    return shapes


def _check_entries(path, arrays, expected):
    missing = [name for name in expected if name not in arrays]
    unexpected = [name for name in arrays if name not in expected]
    if missing:
        raise GoldenError(f"{path}: missing {_first(missing)}")
    if unexpected:
        raise GoldenError(f"{path}: unexpected {_first(unexpected)}")
    for name, shape in expected.items():
        if arrays[name].shape != tuple(shape):
            raise GoldenError(f"{path}: {name} has shape {arrays[name].shape}, expected {tuple(shape)}")


def _first(names, count=3):
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


# ----- rebuilding ------------------------------------------------------------------------

def from_golden(path, verify=True):
    """The model stored in a golden file, with its stored parameters.

    With ``verify`` (the default) the model recomputes y, the loss, every gradient and every
    hidden state from the stored x, dy (and memory), and each must equal the stored array
    bit for bit; otherwise GoldenError names the arrays that differ. Parameters are loaded,
    not re-derived: Admin's profiled omega is the stored one.
    """
    golden, model = _load(path)
    model.load(golden.params)
    if verify:
        recomputed = golden_arrays(model, golden.x, golden.dy, golden.memory)
        differing = [name for name, stored in golden.arrays.items()
                     if not _same_bits(stored, recomputed.get(name))]
        if differing:
            raise GoldenError(f"{golden.path}: lnref {__version__} does not reproduce "
                              f"{len(differing)} arrays bit for bit: {_first(differing)} "
                              f"(written by lnref {golden.lnref_version})")
    return model


def _same_bits(a, b):
    return (b is not None and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())


# ----- comparing -------------------------------------------------------------------------

@dataclass
class TensorResult:
    """How one expected tensor compares; status is ok, FAIL, shape, dtype, nonfinite or missing."""

    name: str
    status: str
    shape: tuple
    dtype: str
    actual_shape: tuple | None = None
    actual_dtype: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    max_abs_expected: float | None = None
    scale: float | None = None

    @property
    def compared(self):
        return self.status != "missing"


@dataclass
class Comparison:
    expected_path: str
    actual_path: str
    rtol: float
    atol: float
    require_all: bool
    per_tensor: bool
    results: list
    extra: list

    @property
    def missing(self):
        return [r.name for r in self.results if r.status == "missing"]

    @property
    def passed(self):
        return sum(r.status == "ok" for r in self.results)

    @property
    def failed(self):
        return sum(self._counts_as_failure(r) for r in self.results)

    def _counts_as_failure(self, result):
        if result.status == "missing":
            return self.require_all
        return result.status != "ok"

    @property
    def ok(self):
        return self.failed == 0

    def to_dict(self):
        return {
            "expected": self.expected_path,
            "actual": self.actual_path,
            "rule": RULE,
            "scale": "tensor" if self.per_tensor else "group",
            "rtol": self.rtol,
            "atol": self.atol,
            "require_all": self.require_all,
            "tensors": [_finite_or_none(dataclasses.asdict(r)) for r in self.results if r.compared],
            "missing": self.missing,
            "extra": self.extra,
            "passed": self.passed,
            "failed": self.failed,
            "ok": self.ok,
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1)

    def to_text(self):
        compared = [r for r in self.results if r.compared]
        width = max([len("name")] + [len(r.name) for r in compared])
        lines = [f"expected {self.expected_path}   actual {self.actual_path}",
                 f"{RULE}, scale = max|e| over the {'tensor' if self.per_tensor else 'group'}   "
                 f"rtol {self.rtol:g}   atol {self.atol:g}",
                 f"{'name':{width}s}  {'shape':14s} {'max_abs_err':>11s} {'max_rel_err':>11s}  status"]
        for r in compared:
            shape = _shape_text(r.shape)
            if r.actual_shape is not None and tuple(r.actual_shape) != tuple(r.shape):
                shape += f"!={_shape_text(r.actual_shape)}"
            status = r.status if r.status != "dtype" else f"dtype {r.actual_dtype}!={r.dtype}"
            lines.append(f"{r.name:{width}s}  {shape:14s} {_number(r.max_abs_error):>11s} "
                         f"{_number(r.max_rel_error):>11s}  {status}")
        missing = self.missing
        if missing:
            verdict = "failures" if self.require_all else "not compared"
            lines.append(f"missing in ACTUAL ({verdict}): {len(missing)}: {_first(missing, 8)}")
        if self.extra:
            lines.append(f"extra in ACTUAL (not compared): {len(self.extra)}: {_first(self.extra, 8)}")
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


def _shape_text(shape):
    return "(" + ",".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _number(value):
    return "-" if value is None else f"{value:.3g}"


def _finite_or_none(record):
    """JSON has no NaN: non-finite errors become null (the status says nonfinite)."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in record.items()}


def read_name_map(path) -> dict[str, str]:
    """A JSON object {actual name: expected name}."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except OSError as err:
        raise GoldenError(f"{path}: cannot read the name map ({err.strerror or err})") from None
    except ValueError as err:
        raise GoldenError(f"{path}: the name map is not valid JSON ({_one_line(err)})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise GoldenError(f"{path}: the name map must be a JSON object of "
                          "\"actual name\": \"expected name\" strings")
    return mapping


def group_of(name: str) -> str:
    """The group whose largest |e| scales a tensor's errors (see the module docstring)."""
    head, slash, tail = name.rpartition("/")
    return head + slash + tail.rpartition(".")[0] if "." in tail else name


def compare_files(expected_path, actual_path, rtol=None, atol=DEFAULT_ATOL, name_map=None,
                  transpose_weights=False, require_all=False, per_tensor=False) -> Comparison:
    """Compare every tensor of EXPECTED with the same-named tensor of ACTUAL.

    EXPECTED holding a config must be a valid golden file (validated by ``load_golden``);
    otherwise any file of finite floating arrays serves. ACTUAL is any file of named arrays,
    possibly a subset; ``name_map`` renames ACTUAL's names to EXPECTED's, then
    ``transpose_weights`` transposes ACTUAL's 2-D weight matrices (a framework that stores
    (d_out, d_in)). ``rtol`` defaults by EXPECTED's dtype (DEFAULT_RTOL). Errors are
    measured on the scale of the tensor's group, or of the tensor alone with ``per_tensor``.
    """
    expected_path, actual_path = os.fspath(expected_path), os.fspath(actual_path)
    expected, config_entry = read_arrays(expected_path)
    if config_entry is not None:
        expected = load_golden(expected_path).arrays
    else:
        _check_plain_expected(expected_path, expected)
    actual, _ = read_arrays(actual_path)
    actual = _rename(actual_path, actual, name_map or {})
    if transpose_weights:
        actual = {name: (value.T if value.ndim == 2 and is_weight_matrix(name) else value)
                  for name, value in actual.items()}
    if not set(expected) & set(actual):
        raise GoldenError(f"{actual_path}: holds none of the names in {expected_path} "
                          "(a name map given with --map renames ACTUAL's names)")
    if rtol is None:
        widest = "float32" if any(v.dtype == np.float32 for v in expected.values()) else "float64"
        rtol = DEFAULT_RTOL[widest]
    if rtol < 0 or atol < 0:
        raise GoldenError("rtol and atol must be >= 0")
    scales = _scales(expected, per_tensor)
    results = [_compare_tensor(name, value, actual.get(name), scales[name], rtol, atol)
               for name, value in expected.items()]
    extra = [name for name in actual if name not in expected]
    return Comparison(expected_path, actual_path, rtol, atol, require_all, per_tensor, results, extra)


def _scales(expected, per_tensor):
    own = {name: float(np.max(np.abs(value))) if value.size else 0.0 for name, value in expected.items()}
    if per_tensor:
        return own
    group_max = {}
    for name, value in own.items():
        group = group_of(name)
        group_max[group] = max(group_max.get(group, 0.0), value)
    return {name: group_max[group_of(name)] for name in expected}


def _check_plain_expected(path, arrays):
    if not arrays:
        raise GoldenError(f"{path}: holds no arrays")
    for name, value in arrays.items():
        if value.dtype not in (np.float32, np.float64):
            raise GoldenError(f"{path}: {name} has dtype {value.dtype}; expected arrays must be "
                              "float32 or float64")
        if not np.isfinite(value).all():
            raise GoldenError(f"{path}: {name} contains NaN or inf")


def _rename(path, arrays, name_map):
    renamed = {}
    for name, value in arrays.items():
        target = name_map.get(name, name)
        if target in renamed:
            raise GoldenError(f"{path}: two arrays map to the expected name {target!r}")
        renamed[target] = value
    return renamed


def _compare_tensor(name, expected, actual, scale, rtol, atol):
    result = TensorResult(name, "missing", tuple(expected.shape), str(expected.dtype))
    if actual is None:
        return result
    result.actual_shape, result.actual_dtype = tuple(actual.shape), str(actual.dtype)
    numeric = actual.dtype.kind in "fiu"
    if actual.shape != expected.shape or not numeric:
        result.status = "shape" if actual.shape != expected.shape else "dtype"
        return result
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        abs_error = float(np.max(np.abs(a - e))) if e.size else 0.0
    tiny = float(np.finfo(expected.dtype).tiny)
    result.max_abs_error = abs_error
    result.max_rel_error = abs_error / max(scale, tiny)
    result.max_abs_expected = float(np.max(np.abs(e))) if e.size else 0.0
    result.scale = scale
    if not np.isfinite(actual).all():
        result.status = "nonfinite"
    elif actual.dtype != expected.dtype:
        result.status = "dtype"
    elif abs_error <= atol + rtol * scale:
        result.status = "ok"
    else:
        result.status = "FAIL"
    return result
