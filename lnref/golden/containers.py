"""The two containers of a golden file, .npz and .safetensors: written atomically, and read
without trusting the file (no pickle; every .npy header checked before anything is allocated)."""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from lnref import files
from lnref.files import PathLike
from lnref.golden.format import CONFIG_ENTRY, EXTENSIONS, GoldenError, one_line

ConfigEntry = np.ndarray | str | None  # .npz: the uint8 array; .safetensors: the metadata string


def check_output_path(path: PathLike) -> str:
    """The container (extension) of a golden file to write at ``path``; GoldenError if the
    extension is unknown, its writer is not installed or ``path`` cannot be written."""
    path = os.fspath(path)
    extension = _extension(path)
    if extension == ".safetensors":
        _safetensors_module()
    with _as_golden_error():
        files.check_output_path(path)
    return extension


def write_file(path: PathLike, arrays: dict[str, np.ndarray], config_text: str) -> None:
    """Write ``arrays`` and the JSON ``config_text`` to ``path``, in the container its
    extension names; ``path`` holds either its old content or the complete new file."""
    path = os.fspath(path)
    with _as_golden_error():
        if _extension(path) == ".npz":
            entries = {CONFIG_ENTRY: np.frombuffer(config_text.encode("utf-8"), dtype=np.uint8), **arrays}
            files.atomic_write(path, lambda stream: np.savez(stream, **entries))
        else:
            payload = _safetensors_module().save(arrays, metadata={CONFIG_ENTRY: config_text})
            files.atomic_write(path, lambda stream: stream.write(payload))


def read_arrays(path: PathLike) -> tuple[dict[str, np.ndarray], ConfigEntry]:
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


@contextlib.contextmanager
def _as_golden_error() -> Iterator[None]:
    try:
        yield
    except files.OutputError as err:
        raise GoldenError(str(err)) from None


def _extension(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        raise GoldenError(
            f"{path}: unknown extension {extension or '(none)'!r}; "
            "use .npz (NumPy) or .safetensors (needs lnref[safetensors])"
        )
    return extension


def _safetensors_module() -> ModuleType:
    try:
        import safetensors.numpy
    except ImportError:
        raise GoldenError(
            ".safetensors files need the optional extra lnref[safetensors] (pip install 'lnref[safetensors]')"
        ) from None
    return safetensors.numpy


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], ConfigEntry]:
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
        raise GoldenError(f"{path}: not a readable .npz file ({one_line(err)})") from None
    config = arrays.pop(CONFIG_ENTRY, None)
    return arrays, config


def _read_npy_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    fmt = np.lib.format
    with archive.open(info) as member:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(member)
        else:
            raise GoldenError(f"{path}: member {info.filename!r} has unsupported .npy version {version}")
        if dtype.hasobject:
            raise GoldenError(
                f"{path}: {info.filename[:-4]!r} is an object array; pickled data is refused (allow_pickle=False)"
            )
        data_bytes = math.prod(shape) * dtype.itemsize
        if data_bytes != info.file_size - member.tell():
            raise GoldenError(
                f"{path}: member {info.filename!r} is truncated or corrupt (its header promises {data_bytes} bytes)"
            )
        data = member.read(data_bytes)
        member.read()  # reach the member's end, where zipfile checks the CRC
    if len(data) != data_bytes:
        raise GoldenError(f"{path}: member {info.filename!r} is truncated")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran_order else "C").copy(order="K")


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], ConfigEntry]:
    _safetensors_module()  # a clear error naming the extra when it is absent
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except BaseException as err:  # the Rust reader's errors, and its panics (a BaseException)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise GoldenError(f"{path}: not a readable .safetensors file ({one_line(err)})") from None
    return arrays, metadata.get(CONFIG_ENTRY)
