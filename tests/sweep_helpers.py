"""What the sweep tests share: a tiny stability grid, records without their timing, and
processes started in a session of their own so that a test can stop them all, whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# 2-layer models, a few steps: each run takes a fraction of a second.
TINY_GRID = [
    "--schemes",
    "post,pre",
    "--depths",
    "2",
    "--seeds",
    "1",
    "--warmup",
    "2",
    "--steps",
    "4",
    "--d-model",
    "8",
    "--batch",
    "4",
    "--eval-every",
    "2",
]
# Long enough per run (a second or so) that a test can act while the grid is half done.
SLOW_GRID = [
    "--schemes",
    "post,pre",
    "--depths",
    "2",
    "--seeds",
    "2",
    "--warmup",
    "10",
    "--steps",
    "60",
    "--d-model",
    "16",
    "--batch",
    "8",
    "--eval-every",
    "30",
]
SLOW_GRID_RUNS = 8


def tiny_configs(**changes):
    from lnref.train import grid_configs

    settings = dict(task="reverse", lr=1e-3, steps=4, d_model=8, heads=2, batch=4, eval_every=2) | changes
    return grid_configs(("post", "pre"), (2,), (0, 2), range(1), **settings)


def without_timing(record):
    """A record less what may differ between two runs of the same task: the wall time, the
    host and process, and the run's own timing (its speed, its seconds)."""
    record = {k: v for k, v in record.items() if k not in ("seconds", "host", "pid")}
    result = record.get("result")
    if isinstance(result, dict) and isinstance(result.get("summary"), dict):
        summary = {k: v for k, v in result["summary"].items() if k not in ("seconds", "steps_per_second")}
        record["result"] = dict(result, summary=summary)
    return record


def by_key(records):
    return {record["key"]: without_timing(record) for record in records}


def read_lines(path):
    """The complete records of a file, parsed, in file order."""
    if not os.path.exists(path):
        return []
    data = Path(path).read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def environment():
    """The environment of an lnref subprocess: this checkout's lnref, one BLAS thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}


def lnref_command(*args):
    return [sys.executable, "-m", "lnref", *args]


def start(command, log_path, cwd=None):
    """A process in a session of its own (its children too), output to ``log_path``."""
    log = open(log_path, "wb")  # noqa: SIM115  (closed by stop)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    process.log = log
    return process


def stop(process, sig=signal.SIGTERM, grace=10.0):
    """Stop ``process`` and every process of its session, by its id; SIGKILL after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the session is left
    process.wait(timeout=grace)
    process.log.close()


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
