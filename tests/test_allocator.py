"""lnref.process.allocator: memory a pass frees stays in the process for the next pass."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A pass in miniature: forty 1 MiB arrays made and freed, five times over; prints the page
# faults of the last four rounds (the first one maps the memory in any case).
ROUNDS = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from lnref.process.allocator import keep_freed_memory
kept = keep_freed_memory() if {keep} else None
def one_round():
    arrays = [np.ones(1 << 17) for _ in range(40)]
    del arrays
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    one_round()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_four_rounds(keep):
    # glibc's defaults, whatever this environment tunes.
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS.format(root=str(ROOT), keep=keep)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    kept, faults = done.stdout.split()
    return kept, int(faults)


@glibc_only
def test_keep_freed_memory_lets_the_next_pass_reuse_the_freed_pages():
    kept, faults = faults_of_four_rounds(keep=True)
    assert kept == "True"
    assert faults < 400  # 40 MiB a round: 10,240 pages if they were mapped afresh


@glibc_only
def test_without_it_glibc_returns_the_freed_pages_and_every_pass_faults_them_in_again():
    # The control: the measurement above can tell the two apart.
    kept, faults = faults_of_four_rounds(keep=False)
    assert kept == "None"
    assert faults > 4 * 5_000


RETURNED = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from lnref.process.allocator import keep_freed_memory, return_freed_memory
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20
keep_freed_memory()
arrays = [np.ones(1 << 17) for _ in range(40)]
del arrays
kept = resident_mb()
return_freed_memory()
print(kept - resident_mb())
"""


@glibc_only
def test_return_freed_memory_hands_the_kept_pages_back_at_once():
    done = subprocess.run(
        [sys.executable, "-c", RETURNED.format(root=str(ROOT))], capture_output=True, text=True, check=True
    )
    assert float(done.stdout) > 30  # of the 40 MiB freed and kept


def test_every_lnref_command_keeps_freed_memory_first(monkeypatch):
    from click.testing import CliRunner

    import lnref.cli

    calls = []
    monkeypatch.setattr(lnref.cli, "keep_freed_memory", lambda: calls.append("kept"))
    result = CliRunner().invoke(lnref.cli.main, ["schemes"])
    assert result.exit_code == 0 and calls == ["kept"]
