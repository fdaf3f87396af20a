"""The dask backend (the ``lnref[dask]`` extra): a private LocalCluster, a cluster started by
Dask's own commands (``dask scheduler``, ``dask worker``) on loopback, a worker killed
mid-sweep, and the refusal of a worker of another lnref version. Every process a test starts is
stopped by its process id when the test ends, whatever happened."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
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
from test_sweep import run_records

distributed = pytest.importorskip("distributed", reason='Dask distributed (the "lnref[dask]" extra) is not installed')

from lnref.sweep import BackendError  # noqa: E402
from lnref.sweep.backends import open_backend  # noqa: E402


def test_serial_local_and_a_dask_local_cluster_give_the_same_records():
    serial = run_records("serial")
    local = run_records("local", workers=2)
    dask = run_records("dask", workers=2)  # LocalCluster(n_workers=2, threads_per_worker=1), loopback
    assert len(serial) == 4 and all(r["status"] == "ok" for r in serial)
    assert by_key(serial) == by_key(local) == by_key(dask)


def test_a_dask_worker_of_another_lnref_version_is_refused(monkeypatch):
    monkeypatch.setattr("lnref.__version__", "99.0")  # the driver's; the spawned workers import the real one
    with pytest.raises(BackendError, match=r"runs lnref .*, this driver lnref 99.0"), open_backend("dask", 1):
        pass


def test_a_missing_scheduler_file_is_one_line(tmp_path):
    done = subprocess.run(
        lnref_command("stability", *TINY_GRID, "--backend", "dask", "--scheduler-file", str(tmp_path / "nowhere.json")),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.splitlines()[-1].endswith("nowhere.json does not exist")
    assert "Traceback" not in done.stderr


# ----- a cluster of Dask's own commands --------------------------------------------------------------------


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-thread workers on 127.0.0.1 (scheduler file, no dashboard);
    yields (scheduler file, worker processes)."""
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    processes = []
    try:
        processes.append(
            start(
                [
                    *dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                tmp_path / "scheduler.log",
            )
        )
        wait_for(scheduler_file.exists, 60, "the scheduler file")
        for number in range(2):
            processes.append(
                start(
                    [
                        *dask,
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                    ],
                    tmp_path / f"worker{number}.log",
                )
            )
        with distributed.Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield scheduler_file, processes[1:]
    finally:
        for process in reversed(processes):
            stop(process)


def test_stability_on_a_cluster_of_dask_commands_matches_serial(dask_cluster, tmp_path):
    scheduler_file, _ = dask_cluster
    out = tmp_path / "dask.jsonl"
    done = subprocess.run(
        lnref_command(
            "stability", *TINY_GRID, "--backend", "dask", "--scheduler-file", str(scheduler_file), "--out", str(out)
        ),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "2 worker(s)" in done.stderr
    assert by_key(read_lines(out)) == by_key(run_records("serial"))


def test_a_dask_worker_killed_mid_sweep_leaves_one_ok_record_per_key(dask_cluster, tmp_path):
    scheduler_file, (_, victim) = dask_cluster
    out = tmp_path / "dask.jsonl"
    sweep = start(
        lnref_command(
            "stability", *SLOW_GRID, "--backend", "dask", "--scheduler-file", str(scheduler_file), "--out", str(out)
        ),
        tmp_path / "driver.log",
    )
    try:
        wait_for(lambda: len(read_lines(out)) >= 1, 120, "the first record")
        stop(victim, signal.SIGKILL)  # the worker and its nanny, in mid-task
        recorded_at_kill = len(read_lines(out))
        assert sweep.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        stop(sweep)
    assert recorded_at_kill < SLOW_GRID_RUNS, "the kill must come in mid-sweep for this test to mean anything"
    records = read_lines(out)
    assert [r["status"] for r in records] == ["ok"] * SLOW_GRID_RUNS
    assert len({r["key"] for r in records}) == SLOW_GRID_RUNS  # exactly one record per key
