"""The driver: submits a grid's tasks to an executor and records each as it finishes.

    done, todo = plan(tasks, previous_records, mixed_versions)   what a resume skips
    outcome = run(todo, executor, writer, window, progress)      the rest, recorded one by one

The executor is any ``concurrent.futures.Executor`` (``lnref.sweep.backends``); what it runs
is always :func:`lnref.sweep.kinds.run_task`, by name, with the task's kind and configuration
and the driver's lnref version. At most ``window`` tasks are in flight at once (all of them
when None): enough to keep every worker busy, few enough that an interruption finds little
work begun and unrecorded.

A task's own exception comes back as an error record. So does a worker lost under its task
(``future.result()`` raising): the record says so, and a resumed sweep runs the task again.
An executor that refuses new tasks (a process pool whose worker was killed) ends the
submissions; the tasks already in flight are still collected, and ``outcome.not_run`` counts
the rest.

Records reach the caller as a reader of the records file sees them (parsed back from the line
written), so a table rendered now and one rendered later from the file are the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lnref
from lnref.sweep import kinds
from lnref.sweep.progress import Progress
from lnref.sweep.records import RecordsError, RecordWriter
from lnref.sweep.task import Task

REFRESH_SECONDS = 1.0


@dataclass
class Outcome:
    """What :func:`run` did: the records it wrote, in the order the tasks finished."""

    records: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[Task] = field(default_factory=list)
    broken: str | None = None  # why the executor stopped taking tasks

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def plan(
    tasks: list[Task], previous: Iterable[dict[str, Any]], mixed_versions: bool = False
) -> tuple[dict[str, dict[str, Any]], list[Task]]:
    """(key -> ok record already there, tasks still to run), for a resume over ``previous``.

    RecordsError when ``previous`` holds records of another kind, or ok records of another
    lnref version (unless ``mixed_versions``: those then count as done).
    """
    previous = list(previous)
    kind = tasks[0].kind if tasks else None
    others = sorted({r["kind"] for r in previous} - {kind})
    if others:
        raise RecordsError(f"it holds {', '.join(others)} records, not {kind} records")
    versions = sorted({r["lnref"] for r in previous if r["status"] == "ok"} - {lnref.__version__})
    if versions and not mixed_versions:
        raise RecordsError(
            f"it holds results of lnref {', '.join(versions)}, and this is lnref {lnref.__version__}; "
            "--mixed-versions to add to it anyway, or choose another --out"
        )
    ok = {r["key"]: r for r in previous if r["status"] == "ok"}
    done = {task.key: ok[task.key] for task in tasks if task.key in ok}
    return done, [task for task in tasks if task.key not in ok]


def run(
    tasks: list[Task],
    executor: cf.Executor,
    writer: RecordWriter | None = None,
    window: int | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run ``tasks`` on ``executor``; each finished task becomes a record, appended to
    ``writer``'s file (when given) before the next is looked at."""
    outcome = Outcome()
    waiting = deque(tasks)
    in_flight: dict[cf.Future[dict[str, Any]], Task] = {}
    try:
        while waiting or in_flight:
            while waiting and outcome.broken is None and (window is None or len(in_flight) < window):
                task = waiting[0]
                try:
                    future = executor.submit(kinds.run_task, task.kind, task.config, lnref.__version__)
                except Exception as err:  # a broken pool, an executor shut down under us
                    outcome.broken = _one_line(err)
                    break
                waiting.popleft()
                in_flight[future] = task
            if not in_flight:
                break
            # Woken every second at least, so that a terminal's count shows the time passing.
            finished, _ = cf.wait(in_flight, timeout=REFRESH_SECONDS, return_when=cf.FIRST_COMPLETED)
            if progress is not None:
                progress.refresh()
            for future in sorted(finished, key=lambda f: in_flight[f].index):
                task = in_flight.pop(future)
                record = _record(task, future, writer)
                outcome.records.append(record)
                if progress is not None:
                    ok = record["status"] == "ok"
                    text = kinds.get(task.kind).outcome(record["result"]) if ok else f"error: {record['error']}"
                    progress.task_done(kinds.get(task.kind).label(task.config), text, ok)
    except BaseException:
        for future in in_flight:
            future.cancel()
        raise
    outcome.not_run = list(waiting)
    return outcome


def _record(task: Task, future: cf.Future[dict[str, Any]], writer: RecordWriter | None) -> dict[str, Any]:
    try:
        part = future.result()
    except Exception as err:
        part = _lost(err)
    record = {"key": task.key, "kind": task.kind, "index": task.index, "config": task.config, **part}
    if writer is not None:
        return writer.append(record)
    parsed: dict[str, Any] = json.loads(json.dumps(record, allow_nan=False))
    return parsed


def _lost(err: BaseException) -> dict[str, Any]:
    """The record of a task whose worker never answered (it died, or the pool broke)."""
    return {
        "status": "error",
        "error": f"lost with its worker: {_one_line(err)}",
        "traceback": None,
        "result": None,
        **kinds.environment(),
        "seconds": 0.0,
    }


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
