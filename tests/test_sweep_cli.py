"""The grid commands on the sweep machinery: records by default, resuming, --from, the gradient-
check sweep, and a driver killed mid-sweep (each test in a directory of its own: conftest)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
from pathlib import Path

from click.testing import CliRunner
from sweep_helpers import (
    SLOW_GRID,
    SLOW_GRID_RUNS,
    TINY_GRID,
    by_key,
    environment,
    lnref_command,
    read_lines,
    start,
    stop,
    wait_for,
)

from lnref.cli import main
from lnref.norms import NORM_KINDS


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def stability(*args):
    return invoke("stability", *TINY_GRID, "--backend", "serial", *args)


# ----- records by default, resume, --from ------------------------------------------------------------


def test_stability_records_every_run_in_a_file_named_after_its_grid():
    result = stability()
    assert result.exit_code == 0, result.stderr
    (path,) = Path().glob("stability-*.jsonl")
    assert f"records in {path.name}" in result.stderr
    assert [r["status"] for r in read_lines(path)] == ["ok"] * 4


def test_another_grid_gets_another_default_file():
    stability()
    stability("--seeds", "2")
    assert len(list(Path().glob("stability-*.jsonl"))) == 2


def test_a_second_invocation_resumes_and_runs_nothing():
    first = stability("--out", "runs.jsonl")
    again = stability("--out", "runs.jsonl")
    assert again.exit_code == 0 and "4 of 4 already recorded, 0 to run" in again.stderr
    assert again.stdout == first.stdout
    assert len(read_lines("runs.jsonl")) == 4  # negative control below: without resuming it grows


def test_no_resume_runs_every_task_again_and_keeps_the_earlier_records():
    stability("--out", "runs.jsonl")
    again = stability("--out", "runs.jsonl", "--no-resume")
    assert again.exit_code == 0 and "(4 to run)" in again.stderr
    assert len(read_lines("runs.jsonl")) == 8


def test_from_renders_the_table_the_run_printed():
    ran = stability("--out", "runs.jsonl", "--backend", "local", "--workers", "2")
    rendered = invoke("stability", "--from", "runs.jsonl")
    assert ran.exit_code == rendered.exit_code == 0
    assert rendered.stdout == ran.stdout and ran.stdout.startswith("| depth")
    assert "records in" not in rendered.stderr  # nothing ran


def test_from_renders_the_same_json_as_the_run():
    ran = stability("--out", "runs.jsonl", "--json")
    assert json.loads(invoke("stability", "--from", "runs.jsonl", "--json").stdout) == json.loads(ran.stdout)


def test_from_refuses_records_of_another_command():
    stability("--out", "runs.jsonl")
    result = invoke("profile", "--from", "runs.jsonl")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "holds stability records, not profile records" in result.stderr


def test_from_with_an_option_that_runs_is_refused():
    stability("--out", "runs.jsonl")
    result = invoke("stability", "--from", "runs.jsonl", "--backend", "local")
    assert result.exit_code == 2 and "--backend has no use with it" in result.stderr


def test_resume_refuses_results_of_another_version(monkeypatch):
    stability("--out", "runs.jsonl")
    monkeypatch.setattr("lnref.__version__", "99.0")
    result = stability("--out", "runs.jsonl")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "results of lnref 0" in result.stderr and "--mixed-versions" in result.stderr
    assert stability("--out", "runs.jsonl", "--mixed-versions").exit_code == 0


def test_a_failed_run_is_recorded_and_the_command_exits_1(monkeypatch):
    real = __import__("lnref.train", fromlist=["train"]).train

    def train_but_not_pre(config, *args, **kwargs):
        if config.scheme == "pre":
            raise RuntimeError("pre refused")
        return real(config, *args, **kwargs)

    monkeypatch.setattr("lnref.train.train", train_but_not_pre)
    result = stability("--out", "runs.jsonl")
    assert result.exit_code == 1
    assert "failed: pre L=2 warmup=0 seed=0: RuntimeError: pre refused" in result.stderr
    assert sorted(r["status"] for r in read_lines("runs.jsonl")) == ["error", "error", "ok", "ok"]
    monkeypatch.setattr("lnref.train.train", real)
    retried = stability("--out", "runs.jsonl")
    assert retried.exit_code == 0 and "2 of 4 already recorded, 2 to run" in retried.stderr


def test_the_dask_backend_without_distributed_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real_find_spec(name, *a)
    )
    result = stability("--backend", "dask")
    assert result.exit_code == 2 and result.stderr.splitlines()[-1] == (
        'error: the dask backend needs Dask distributed: pip install "lnref[dask]"'
    )
    assert list(Path().iterdir()) == []  # refused before the records file was created


# ----- profile, prove, gradcheck ---------------------------------------------------------------------------

PROFILE = [
    "profile",
    "--scheme",
    "post,pre",
    "--layers",
    "1,2",
    "--d-model",
    "4",
    "--heads",
    "1",
    "--d-ff",
    "8",
    "--batch",
    "1",
    "--seq",
    "3",
    "--seeds",
    "2",
    "--out",
    "runs.jsonl",
]


def test_profile_from_records_renders_the_same_table_and_chart():
    ran = invoke(*PROFILE)
    assert ran.exit_code == 0, ran.stderr
    assert len(read_lines("runs.jsonl")) == 8  # one record per model: 2 schemes x 2 depths x 2 seeds
    assert invoke("profile", "--from", "runs.jsonl").stdout == ran.stdout


def test_prove_from_records_renders_the_same_verdicts():
    ran = invoke("prove", "ln-jacobian", "--quick", "-v", "--out", "runs.jsonl")
    assert ran.exit_code == 0, ran.stderr
    assert invoke("prove", "--from", "runs.jsonl", "-v").stdout == ran.stdout
    assert "verdict:" in ran.stdout


GRADCHECK = [
    "gradcheck",
    "--scheme",
    "post,pre",
    "--layers",
    "1,2",
    "--norm",
    "all",
    "--d-model",
    "8",
    "--d-ff",
    "16",
    "--backend",
    "serial",
]


def test_the_gradcheck_sweep_checks_every_scheme_norm_and_depth():
    result = invoke(*GRADCHECK)
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| post") or line.startswith("| pre")]
    assert [tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows] == [
        (s, n, d) for s in ("post", "pre") for n in NORM_KINDS for d in ("1", "2")
    ]
    count = 2 * len(NORM_KINDS) * 2
    assert result.stdout.splitlines()[-1] == f"{count} models: {count} passed, 0 failed"


def test_the_gradcheck_sweep_fails_when_a_backward_is_wrong(ffn_backward_without_the_relu_pattern):
    result = invoke(*GRADCHECK)
    assert result.exit_code == 1
    count = 2 * len(NORM_KINDS) * 2
    assert result.stdout.splitlines()[-1] == f"{count} models: 0 passed, {count} failed"
    assert "FAILED post, layernorm, 1 layer:" in result.stdout


def test_one_scheme_one_depth_one_norm_is_the_one_model_check_and_writes_no_records():
    result = invoke("gradcheck", "--scheme", "post", "--layers", "2", "--d-model", "8", "--d-ff", "16")
    assert result.exit_code == 0 and "gradcheck post: 2 layers" in result.stdout.splitlines()[1]
    assert list(Path().iterdir()) == []


# ----- a driver killed mid-sweep --------------------------------------------------------------------------


def test_a_driver_killed_mid_sweep_resumes_with_only_the_missing_runs(tmp_path):
    out = tmp_path / "runs.jsonl"
    command = lnref_command("stability", *SLOW_GRID, "--backend", "local", "--workers", "2", "--out", str(out))
    driver = start(command, tmp_path / "first.log")
    try:
        wait_for(lambda: len(read_lines(out)) >= 1, 120, "the first record")
    finally:
        stop(driver, signal.SIGKILL)  # the driver and its pool's workers, at once
    before = read_lines(out)
    assert 0 < len(before) < SLOW_GRID_RUNS, "the kill must come in mid-sweep for this test to mean anything"

    resumed = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    missing = SLOW_GRID_RUNS - len(before)
    assert f"{len(before)} of {SLOW_GRID_RUNS} already recorded, {missing} to run" in resumed.stderr
    after = read_lines(out)
    assert after[: len(before)] == before and len(after) == SLOW_GRID_RUNS  # each key once: none re-run

    reference = tmp_path / "uninterrupted.jsonl"
    whole = subprocess.run(
        [*command[:-1], str(reference)], env=environment(), capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    assert by_key(after) == by_key(read_lines(reference))
