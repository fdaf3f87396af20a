"""The sweep machinery (lnref.sweep): task keys, run records, the driver, resuming, the backends
that need nothing beyond lnref (serial, local), and the progress count."""

from __future__ import annotations

import io
import json
import os

import pytest
from sweep_helpers import by_key, tiny_configs

import lnref
from lnref.process.workers import in_worker, map_in_order
from lnref.sweep import BackendError, driver
from lnref.sweep.backends import SerialExecutor, open_backend
from lnref.sweep.kinds import run_task
from lnref.sweep.progress import Progress
from lnref.sweep.records import RecordsError, RecordWriter, latest, read_records
from lnref.sweep.task import Task, grid
from lnref.train import grid_tasks, run_grid, task_config

# ----- tasks and keys ------------------------------------------------------------------------------


def test_a_key_ignores_the_order_of_settings_and_follows_their_values():
    one = Task("stability", {"scheme": "post", "seed": 0, "lr": 1e-3})
    same = Task("stability", {"lr": 1e-3, "seed": 0, "scheme": "post"})
    other_seed = Task("stability", {"scheme": "post", "seed": 1, "lr": 1e-3})
    other_kind = Task("profile", {"scheme": "post", "seed": 0, "lr": 1e-3})
    assert one.key == same.key
    assert len({one.key, other_seed.key, other_kind.key}) == 3


def test_a_key_is_fixed_across_versions_of_the_code():
    # Resuming depends on it: a change of the canonical form would re-run every recorded task.
    # The value: the first 16 hex digits of sha256 of
    # '{"config":{"layers":6,"lr":0.001,"scheme":"post"},"kind":"stability"}', computed by sha256sum.
    assert Task("stability", {"scheme": "post", "layers": 6, "lr": 0.001}).key == "dc54b119be52d099"


def test_a_training_run_has_one_key_whether_its_rates_are_ints_or_floats():
    (as_int,) = [task_config(c) for c in tiny_configs(lr=1)[:1]]
    (as_float,) = [task_config(c) for c in tiny_configs(lr=1.0)[:1]]
    assert Task("stability", as_int).key == Task("stability", as_float).key


def test_a_configuration_that_is_not_plain_json_is_refused():
    with pytest.raises(ValueError, match="plain JSON"):
        Task("stability", {"lr": float("nan")})


def test_a_grid_runs_a_configuration_given_twice_once():
    tasks = grid("stability", [{"seed": 0}, {"seed": 1}, {"seed": 0}])
    assert [t.config["seed"] for t in tasks] == [0, 1] and [t.index for t in tasks] == [0, 1]


# ----- the records file ------------------------------------------------------------------------------


def record(key, status="ok", version=lnref.__version__, index=0, kind="stability"):
    return {
        "key": key,
        "kind": kind,
        "index": index,
        "config": {"k": key},
        "status": status,
        "error": None if status == "ok" else "ValueError: boom",
        "result": {"v": key} if status == "ok" else None,
        "lnref": version,
    }


def test_a_record_reads_back_as_it_was_appended(tmp_path):
    path = tmp_path / "runs.jsonl"
    with RecordWriter(path) as writer:
        written = [writer.append(record("a")), writer.append(record("b", index=1))]
    assert read_records(path) == written == [record("a"), record("b", index=1)]
    assert path.read_text().count("\n") == 2


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "runs.jsonl"
    whole = json.dumps(record("a")) + "\n"
    path.write_text(whole + json.dumps(record("b"))[:25])  # a driver killed in mid-write
    assert read_records(path) == [record("a")]
    with RecordWriter(path) as writer:
        writer.append(record("c"))
    assert read_records(path) == [record("a"), record("c")]
    assert path.read_text().startswith(whole) and path.read_text().count("\n") == 2


def test_a_complete_line_that_is_no_record_is_reported_with_its_number(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + '{"key": "b"}\n')
    with pytest.raises(RecordsError, match="line 2: not a run record"):
        read_records(path)


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    path = tmp_path / "runs.jsonl"
    with RecordWriter(path), pytest.raises(RecordsError, match="another lnref sweep"):
        RecordWriter(path)
    RecordWriter(path).close()  # the lock goes with the first writer


def test_a_key_stands_for_its_last_ok_record():
    records = [record("a"), record("a", status="error"), record("b", status="error")]
    chosen = latest(records)
    assert chosen["a"]["status"] == "ok" and chosen["b"]["status"] == "error"


# ----- resuming ----------------------------------------------------------------------------------------


def test_resume_skips_ok_keys_and_reruns_the_rest():
    tasks = [Task("stability", {"k": name}, i) for i, name in enumerate("abcd")]
    previous = [record(tasks[0].key), record(tasks[1].key, status="error")]
    done, todo = driver.plan(tasks, previous)
    assert list(done) == [tasks[0].key]
    assert [t.key for t in todo] == [t.key for t in tasks[1:]]


def test_resume_refuses_results_of_another_lnref_version_unless_told():
    tasks = [Task("stability", {"k": "a"})]
    previous = [record(tasks[0].key, version="0.0.1")]
    with pytest.raises(RecordsError, match="lnref 0.0.1"):
        driver.plan(tasks, previous)
    done, todo = driver.plan(tasks, previous, mixed_versions=True)
    assert list(done) == [tasks[0].key] and todo == []


def test_resume_refuses_records_of_another_command():
    with pytest.raises(RecordsError, match="profile records"):
        driver.plan([Task("stability", {"k": "a"})], [record("x", kind="profile")])


# ----- the driver and the backends ----------------------------------------------------------------------


def run_records(backend, workers=None, path=None):
    tasks = grid_tasks(tiny_configs())
    with open_backend(backend, workers) as opened:
        writer = RecordWriter(path) if path else None
        try:
            outcome = driver.run(tasks, opened.executor, writer, opened.window)
        finally:
            if writer:
                writer.close()
    return outcome.records


def test_serial_and_two_local_workers_give_the_same_records():
    serial, local = run_records("serial"), run_records("local", workers=2)
    assert len(serial) == 4 and all(r["status"] == "ok" for r in serial)
    assert by_key(serial) == by_key(local)
    assert os.getpid() not in {r["pid"] for r in local}  # the comparison is across processes


def test_the_driver_returns_the_records_as_the_file_holds_them(tmp_path):
    path = tmp_path / "runs.jsonl"
    returned = run_records("local", workers=2, path=path)
    assert read_records(path) == returned


def test_a_record_holds_the_task_the_versions_the_host_and_the_wall_time():
    (first, *_) = run_records("serial")
    import numba
    import numpy

    assert {"key", "kind", "index", "config", "status", "error", "result"} <= set(first)
    assert (first["lnref"], first["numpy"], first["numba"]) == (lnref.__version__, numpy.__version__, numba.__version__)
    assert first["kernels"] in ("numba", "numpy") and first["host"] and first["seconds"] > 0


def test_a_task_that_raises_becomes_an_error_record_and_the_others_finish():
    configs = [task_config(c) for c in tiny_configs()]
    configs[1]["scheme"] = "no-such-scheme"
    tasks = grid("stability", configs)
    outcome = driver.run(tasks, SerialExecutor(), window=1)
    statuses = {r["index"]: r["status"] for r in outcome.records}
    assert statuses == {0: "ok", 1: "error", 2: "ok", 3: "ok"}
    (failed,) = outcome.failed
    assert "no-such-scheme" in failed["error"] and "Traceback" in failed["traceback"]


def test_run_grid_raises_when_a_run_fails(monkeypatch):
    monkeypatch.setattr("lnref.train.train", lambda config: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_grid(tiny_configs())


def test_a_worker_of_another_lnref_version_refuses_the_task():
    part = run_task("stability", task_config(tiny_configs()[0]), driver_version="0.0.1")
    assert part["status"] == "error" and "the driver lnref 0.0.1" in part["error"] and part["result"] is None


def nested_processes(_):
    """Runs in a worker of the local backend: where map_in_order's work runs."""
    return in_worker(), set(map_in_order(lambda item: os.getpid(), range(4), workers=2)) == {os.getpid()}


def test_a_local_worker_is_set_up_and_runs_nested_work_in_place():
    with open_backend("local", 2) as backend:
        assert backend.executor.submit(nested_processes, None).result() == (True, True)
    assert not in_worker()


def test_scheduler_options_need_the_dask_backend():
    with pytest.raises(BackendError, match="need --backend dask"), open_backend("local", 1, scheduler="tcp://x:1"):
        pass


# ----- progress ---------------------------------------------------------------------------------------------


def test_plain_progress_is_one_line_per_task_with_count_failures_and_time_left():
    lines = []
    progress = Progress("stability", lines.append)
    progress.start(total=4, skipped=1)
    progress.task_done("post L=2", "held-out loss 2.8", ok=True)
    progress.task_done("pre L=2", "error: boom", ok=False)
    progress.close()
    assert lines[0].startswith("stability [2/4] post L=2: held-out loss 2.8 (") and "left)" in lines[0]
    assert lines[1].startswith("stability [3/4, 1 failed] pre L=2: error: boom (")
    assert len(lines) == 2


def test_terminal_progress_redraws_one_bar_and_prints_failures_above_it():
    lines, terminal = [], io.StringIO()
    progress = Progress("profile", lines.append, bar_stream=terminal)
    progress.start(total=2, skipped=0)
    progress.task_done("post", "loss 1", ok=True)
    progress.task_done("pre", "error: boom", ok=False)
    progress.close()
    drawn = terminal.getvalue()
    assert "\r" in drawn and "#" * 12 + "-" * 12 in drawn and "1/2" in drawn
    assert lines == ["profile: pre: error: boom", lines[-1]] and lines[-1].startswith("profile [2/2, 1 failed]")
