"""What the grid commands share: the sweep options, running a grid with records, and reading
records back (``--from``).

    @sweep_options                 --backend --workers --scheduler --scheduler-file --out
                                   --resume/--no-resume --mixed-versions --from
    request = SweepRequest.pop(kwargs)
    records = execute("stability", tasks, request)   the records of every task, in grid order
    records = load("stability", path)                the ok records of a file, in grid order

Both end the command in one line and exit code 2 on bad input (a backend that cannot start,
a records file of another kind or version), as every lnref command does. ``execute`` ends it
with exit code 1 when a task failed or could not run, after saying where its records are.

Imports only click and the light parts of lnref.sweep (``lnref.sweep`` holds the machinery):
``--help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from lnref.cli.options import COUNT, EXIT_FAILED, fail
from lnref.files import OutputError
from lnref.sweep import BackendError
from lnref.sweep.backends import BACKENDS
from lnref.sweep.records import RecordsError
from lnref.sweep.task import Task, grid_key

Command = TypeVar("Command", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130
RUN_OPTIONS = ("backend", "workers", "scheduler", "scheduler_file", "out", "resume", "mixed_versions")


def sweep_options(function: Command | None = None, *, workers: bool = True) -> Any:
    """The options of every grid command, as a decorator; ``@sweep_options(workers=False)``
    leaves ``--workers`` to the command."""
    if function is None:
        return lambda decorated: sweep_options(decorated, workers=workers)
    options = [
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            default="local",
            show_default=True,
            help="Where the runs go: local worker processes, a Dask cluster (lnref[dask]), or this process.",
        ),
        click.option(
            "--workers",
            type=COUNT,
            default=None,
            help="Local processes, or the private Dask cluster's workers [default: the CPUs available].",
        ),
        click.option(
            "--scheduler", metavar="ADDRESS", default=None, help="A running Dask scheduler (tcp://HOST:PORT)."
        ),
        click.option(
            "--scheduler-file",
            type=click.Path(dir_okay=False),
            default=None,
            help="The file of a running Dask scheduler (dask scheduler --scheduler-file).",
        ),
        click.option(
            "--out",
            type=click.Path(dir_okay=False),
            default=None,
            help="Run records, one JSON line per finished run [default: COMMAND-GRIDHASH.jsonl here].",
        ),
        click.option(
            "--resume/--no-resume",
            default=None,
            help="Skip runs already recorded as ok in --out [default: resume when the file exists].",
        ),
        click.option("--mixed-versions", is_flag=True, help="Resume from records that another lnref version wrote."),
        click.option(
            "--from",
            "from_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Render the output from these run records; run nothing.",
        ),
    ]
    if not workers:
        options = options[:1] + options[2:]
    for option in reversed(options):
        function = option(function)
    return function


@dataclass
class SweepRequest:
    backend: str = "serial"
    workers: int | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    out: str | None = None
    resume: bool | None = None
    mixed_versions: bool = False
    from_path: str | None = None

    @classmethod
    def pop(cls, options: dict[str, Any]) -> SweepRequest:
        """The request the sweep options describe, taken out of a command's ``options``."""
        names = (*RUN_OPTIONS, "from_path")
        request = cls(**{name: options.pop(name) for name in names if name in options})
        if request.from_path is not None:
            context = click.get_current_context(silent=True)
            given = [
                name
                for name in RUN_OPTIONS
                if context is not None
                and context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
            ]
            if given:
                fail(f"--from runs nothing: --{given[0].replace('_', '-')} has no use with it")
        return request


def echo(message: str) -> None:
    click.echo(message, err=True)


def execute(command: str, tasks: list[Task], request: SweepRequest) -> list[dict[str, Any]]:
    """Run ``tasks`` as ``request`` says, recording each; the record of every task, in grid order.

    Exits with code 1 (after one line per problem) when a task failed or could not run."""
    from lnref.sweep import driver
    from lnref.sweep.backends import check_backend, open_backend
    from lnref.sweep.progress import Progress
    from lnref.sweep.records import RecordWriter, latest, read_records

    out = request.out or f"{command}-{grid_key(tasks)}.jsonl"
    try:
        resume = os.path.exists(out) if request.resume is None else request.resume
        previous = read_records(out) if resume and os.path.exists(out) else []
        try:
            done, todo = driver.plan(tasks, previous, request.mixed_versions)
        except RecordsError as err:
            raise RecordsError(f"--out {out}: {err}") from None
        note = f"{len(done)} of {len(tasks)} already recorded, " if done else ""
        echo(f"{command}: {len(tasks)} runs; records in {out} ({note}{len(todo)} to run)")
        outcome = driver.Outcome()
        if todo:
            check_backend(request.backend, request.scheduler, request.scheduler_file)
            with (
                RecordWriter(out) as writer,
                open_backend(request.backend, request.workers, request.scheduler, request.scheduler_file) as backend,
            ):
                echo(f"{command}: running on {backend.description}")
                progress = Progress.on_stderr(command, echo)
                progress.start(len(tasks), len(done))
                try:
                    outcome = driver.run(todo, backend.executor, writer, backend.window, progress)
                finally:
                    progress.close()
    except (BackendError, RecordsError, OutputError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        echo(f"{command}: interrupted; every finished run is in {out}: run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)
    standing = latest([*done.values(), *outcome.records])
    records = [standing[task.key] for task in tasks if task.key in standing]
    failed = [record for record in records if record["status"] != "ok"]
    for record in failed:
        echo(f"{command}: failed: {_label(record)}: {record['error']}")
    if outcome.broken:
        echo(f"{command}: the backend stopped taking runs ({outcome.broken}); {len(outcome.not_run)} not run")
    if failed or outcome.not_run:
        echo(
            f"{command}: {len(failed) + len(outcome.not_run)} of {len(tasks)} runs did not succeed; "
            f"the rest are in {out}: run the same command again to retry them"
        )
        sys.exit(EXIT_FAILED)
    return records


def load(command: str, path: str) -> list[dict[str, Any]]:
    """The ok records of ``path`` for ``command``'s kind, one per task, in grid order.

    One line and exit code 2 when the file cannot be read, holds another kind or no ok
    record; a note on stderr for tasks whose every record is an error (they are left out)."""
    from lnref.sweep.records import latest, read_records

    try:
        records = read_records(path)
    except RecordsError as err:
        fail(f"--from: {err}")
    others = sorted({record["kind"] for record in records} - {command})
    if others:
        fail(f"--from: {path} holds {', '.join(others)} records, not {command} records")
    standing = sorted(latest(records).values(), key=lambda record: record["index"])
    ok = [record for record in standing if record["status"] == "ok"]
    if not ok:
        fail(f"--from: {path} holds no {command} run that finished ok")
    if len(ok) < len(standing):
        echo(f"note: {len(standing) - len(ok)} run(s) in {path} ended in an error and are left out")
    versions = sorted({record["lnref"] for record in ok})
    if len(versions) > 1:
        echo(f"note: {path} mixes results of lnref {', '.join(versions)}")
    return ok


def _label(record: dict[str, Any]) -> str:
    from lnref.sweep import kinds

    return kinds.get(record["kind"]).label(record["config"])
