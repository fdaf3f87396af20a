"""The conformance suite: a directory of golden files covering every scheme, norm kind and option
at several depths, with a ``manifest.json`` naming each case.

A port that passes the suite computes what lnref computes for every configuration lnref
builds: ``lnref export-suite -o DIR`` writes it, a port writes its own arrays for each case
under the same file name in ACTUAL_DIR, and ``lnref compare DIR ACTUAL_DIR`` compares them all.
The cases of one scheme: its base model (LayerNorm, ReLU, encoder), then one change at a time:
each other norm kind, a causal stack, a decoder stack (causal, with cross-attention to a
memory), each other activation, each QK-norm variant, each choice of each of the scheme's own
options; a change the scheme refuses is left out, and so is a change its ``UNJUDGED`` names
(a case no port can pass). An alias (gemma2: sandwich with Gemma's norm) has its preset model alone.
Every case at each depth, at a generic point (no gain 1, no shift 0), on a small model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lnref import __version__, files
from lnref.files import PathLike
from lnref.golden.format import GoldenError

if TYPE_CHECKING:
    from lnref.golden.compare import Comparison

SUITE_FORMAT = "lnref-suite"
SUITE_VERSION = 1
MANIFEST = "manifest.json"
SUITE_LAYERS = (1, 2, 6)
# A small model and short inputs: the suite's worth is its coverage, not its size.
SUITE_MODEL = {"d_model": 8, "n_heads": 2, "d_ff": 16}
SUITE_INPUTS = {"batch": 2, "seq": 4}


@dataclass(frozen=True)
class Case:
    """One golden file of the suite: its name, file, and what :func:`lnref.testing.golden` is
    called with to compute the same record (``scheme``, ``n_layers``, ``config``)."""

    name: str
    file: str
    scheme: str
    n_layers: int
    config: dict[str, Any]

    def key(self) -> str:
        config = dict(self.config)
        inputs = {name: config.pop(name) for name in ("batch", "seq", "memory_len") if name in config}
        point, rounded_to = config.pop("point", "generic"), config.pop("rounded_to", None)
        return record_key(
            self.scheme,
            self.n_layers,
            inputs.get("batch", 2),
            inputs.get("seq", 8),
            inputs.get("memory_len"),
            point,
            rounded_to,
            config,
        )


def record_key(
    scheme: str,
    n_layers: int,
    batch: int,
    seq: int,
    memory_len: int | None,
    point: str,
    rounded_to: str | None,
    config: dict[str, Any],
) -> str:
    """The canonical text of a record's configuration: equal for equal models whatever way
    they are spelled (defaults given or left out); a suite's cases are found by it."""
    from lnref.model import Config, ConfigError

    try:
        model = Config(scheme, n_layers, **config).to_dict()
    except TypeError as err:
        raise ConfigError(f"golden: {err}") from None
    if model["cross_attention"] and memory_len is None:
        memory_len = seq
    inputs = {"batch": batch, "seq": seq, "memory_len": memory_len}
    return json.dumps({"model": model, "inputs": inputs, "point": point, "rounded_to": rounded_to}, sort_keys=True)


def compute_record(key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, config document) of the record ``key`` names: what its golden file holds."""
    from lnref.golden.export import golden_record
    from lnref.model import Config, Model

    described = json.loads(key)
    model = Model(Config(**described["model"]))
    inputs = described["inputs"]
    return golden_record(
        model, inputs["batch"], inputs["seq"], inputs["memory_len"], described["point"], described["rounded_to"]
    )


def variants(scheme: str) -> dict[str, dict[str, Any]]:
    """The scheme's cases at one depth: {name suffix: changes from the base model}."""
    from lnref.model import ACTIVATIONS
    from lnref.norms import NORM_KINDS
    from lnref.qk_norms import QK_NORMS
    from lnref.schemes import ALIASES, get_scheme, options_of, places_norms, refusals_of

    found: dict[str, dict[str, Any]] = {"": {}}
    if scheme in ALIASES:  # its preset model: its base scheme's cases vary the rest
        return found
    module = get_scheme(scheme)
    refused = refusals_of(module)
    if places_norms(module) and "norm" not in refused:
        found.update({f"-{kind}": {"norm": kind} for kind in NORM_KINDS if kind != "layernorm"})
    if "causal" not in refused:
        found["-causal"] = {"causal": True}
    if "cross_attention" not in refused:
        found["-decoder"] = {"causal": True, "cross_attention": True}
    if "activation" not in refused:
        found.update({f"-{name}": {"activation": name} for name in ACTIVATIONS if name != "relu"})
    if "qk_norm" not in refused:
        found.update({f"-qk_{name}": {"qk_norm": name} for name in QK_NORMS if name != "none"})
    for option, declared in options_of(module).items():
        for choice in declared.choices or ():
            if choice != declared.default:
                found[f"-{option}_{choice}"] = {"options": {option: choice}}
    unjudged = getattr(module, "UNJUDGED", {})  # (setting, value) -> why no port can pass it
    return {suffix: c for suffix, c in found.items() if not any(c.get(k) == v for k, v in unjudged)}


def suite_cases(schemes: tuple[str, ...] | None = None, layers: tuple[int, ...] = SUITE_LAYERS) -> list[Case]:
    """Every case of the suite, scheme by scheme, depth by depth; by default every scheme,
    then every alias."""
    from lnref.schemes import ALIASES, SCHEMES

    cases = []
    for scheme in schemes or SCHEMES + tuple(ALIASES):
        for n_layers in layers:
            for suffix, changes in variants(scheme).items():
                name = f"{_file_stem(scheme)}-L{n_layers}{suffix}"
                config = {**SUITE_MODEL, **SUITE_INPUTS, **changes}
                cases.append(Case(name, f"{name}.npz", scheme, n_layers, config))
    return cases


def export_suite(
    directory: PathLike,
    schemes: tuple[str, ...] | None = None,
    layers: tuple[int, ...] = SUITE_LAYERS,
    progress: Any = None,
) -> list[Case]:
    """Write every case's golden file and the manifest into ``directory`` (created if absent);
    ``progress(done, total)`` is called after each file. Returns the cases written."""
    from lnref.golden.containers import write_file

    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise GoldenError(f"{directory}: exists and is not a directory")
    os.makedirs(directory, exist_ok=True)
    files.check_output_path(os.path.join(directory, MANIFEST))
    cases = suite_cases(schemes, layers)
    for done, case in enumerate(cases, 1):
        arrays, document = compute_record(case.key())
        write_file(os.path.join(directory, case.file), arrays, json.dumps(document, indent=1))
        if progress is not None:
            progress(done, len(cases))
    manifest = {
        "format": SUITE_FORMAT,
        "version": SUITE_VERSION,
        "lnref_version": __version__,
        "cases": [
            {"name": c.name, "file": c.file, "scheme": c.scheme, "n_layers": c.n_layers, "config": c.config}
            for c in cases
        ],
    }
    text = json.dumps(manifest, indent=1).encode("utf-8")
    files.atomic_write(os.path.join(directory, MANIFEST), lambda stream: stream.write(text))
    return cases


def read_suite(directory: PathLike) -> list[Case]:
    """The cases of the suite in ``directory``, from its manifest (GoldenError if unreadable)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise GoldenError(f"{directory}: not a directory")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except OSError:
        raise GoldenError(f"{directory}: no {MANIFEST} (write a suite with lnref export-suite -o DIR)") from None
    except ValueError as err:
        raise GoldenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SUITE_FORMAT:
        raise GoldenError(f"{path}: not an lnref suite manifest")
    if manifest.get("version") != SUITE_VERSION:
        raise GoldenError(f"{path}: suite version {manifest.get('version')!r}; this lnref reads {SUITE_VERSION}")
    try:
        return [Case(c["name"], c["file"], c["scheme"], c["n_layers"], dict(c["config"])) for c in manifest["cases"]]
    except (KeyError, TypeError, ValueError):
        raise GoldenError(f"{path}: a case lacks its name, file, scheme, n_layers or config") from None


@dataclass
class CaseResult:
    """One case compared: ``status`` ok, FAIL, missing (no file in ACTUAL_DIR) or unreadable."""

    case: Case
    status: str
    comparison: Comparison | None = None
    note: str = ""

    def line(self, width: int) -> str:
        if self.comparison is None:
            return f"{self.status:10s} {self.case.name:{width}s}  {self.note}"
        c = self.comparison
        if self.status == "ok":
            return f"{self.status:10s} {self.case.name:{width}s}  {c.passed} tensors"
        first = f"; first failing: {c.first_failing}" if c.first_failing else ""
        return f"{self.status:10s} {self.case.name:{width}s}  {c.failed} of {c.passed + c.failed} tensors failed{first}"


@dataclass
class SuiteComparison:
    """Every case of a suite compared with a port's files; one line per case, then the count."""

    expected: str
    actual: str
    results: list[CaseResult]

    @property
    def passed(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_text(self) -> str:
        width = max([len(r.case.name) for r in self.results] + [4])
        lines = [f"suite {self.expected}   actual {self.actual}   {len(self.results)} cases"]
        lines += [r.line(width) for r in self.results]
        lines += [
            f"hint: {r.case.name}: {hint}"
            for r in self.results
            if r.comparison is not None
            for hint in r.comparison.hints
        ]
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "actual": self.actual,
            "cases": [
                {
                    "name": r.case.name,
                    "file": r.case.file,
                    "status": r.status,
                    "note": r.note,
                    "comparison": None if r.comparison is None else r.comparison.to_dict(),
                }
                for r in self.results
            ],
            "passed": self.passed,
            "failed": self.failed,
            "ok": self.ok,
        }


def compare_suite(expected: PathLike, actual: PathLike, **options: Any) -> SuiteComparison:
    """Compare every case of the suite in ``expected`` with the file of the same name in
    ``actual`` (``options`` as :func:`lnref.golden.compare_arrays`'s). A damaged suite is a
    GoldenError; a port's file that is absent or unreadable fails its case."""
    from lnref.golden.compare import compare_arrays
    from lnref.golden.containers import read_arrays
    from lnref.golden.load import load_golden

    expected, actual = os.fspath(expected), os.fspath(actual)
    cases = read_suite(expected)
    if not os.path.isdir(actual):
        raise GoldenError(f"{actual}: not a directory (the port's files, one per case of {expected})")
    results = []
    for case in cases:
        expected_path, actual_path = os.path.join(expected, case.file), os.path.join(actual, case.file)
        golden = load_golden(expected_path)
        if not os.path.exists(actual_path):
            results.append(CaseResult(case, "missing", note=f"no {case.file} in {actual}"))
            continue
        try:
            arrays, _ = read_arrays(actual_path)
            labels = (expected_path, actual_path)
            comparison = compare_arrays(golden.arrays, arrays, golden=golden, labels=labels, **options)
        except GoldenError as err:
            results.append(CaseResult(case, "unreadable", note=str(err)))
            continue
        results.append(CaseResult(case, "ok" if comparison.ok else "FAIL", comparison))
    return SuiteComparison(expected, actual, results)


def _file_stem(scheme: str) -> str:
    """A scheme's name as a file name (a scheme file of one's own: its stem)."""
    stem = os.path.splitext(os.path.basename(scheme))[0]
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in stem)


def size_of(directory: PathLike) -> int:
    """Bytes the suite's files take."""
    directory = os.fspath(directory)
    return int(np.sum([os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)]))
