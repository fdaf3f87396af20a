"""lnref.process.workers: the forked worker pool and the BLAS threads of lnref's processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lnref.process import blas, workers
from lnref.process.workers import available_cpus, map_in_order

ROOT = Path(__file__).resolve().parent.parent
can_fork = pytest.mark.skipif(not workers._can_fork(), reason="needs os.fork")


class WorkFailed(Exception):
    """An exception type of the caller's, not a builtin one."""


def run_python(code, **environ):
    env = {**os.environ, **environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("count", [1, 2])
def test_work_on_one_item_or_one_worker_runs_in_this_process(count):
    assert list(map_in_order(lambda item: (item, os.getpid()), range(count), workers=3 - count)) == [
        (item, os.getpid()) for item in range(count)
    ]


@can_fork
def test_results_come_in_the_order_of_the_items_from_forked_workers():
    import time

    def work(item):
        time.sleep(0.02 * (item % 3 == 0))  # the early items finish last
        return item * item, os.getpid()

    results = list(map_in_order(work, range(40), workers=2))
    assert [square for square, _ in results] == [item * item for item in range(40)]
    assert os.getpid() not in {pid for _, pid in results}


@can_fork
def test_a_closure_over_the_parents_state_is_the_work():
    state = np.random.default_rng(0).standard_normal((50, 50))
    assert list(map_in_order(lambda row: float(state[row].sum()), range(50), workers=2)) == [
        float(state[row].sum()) for row in range(50)
    ]


@can_fork
def test_results_are_the_same_bits_for_one_and_two_workers():
    def work(seed):
        rng = np.random.default_rng(seed)
        a, b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))
        return np.tanh(a @ b).sum(axis=0)

    alone, shared = list(map_in_order(work, range(8), 1)), list(map_in_order(work, range(8), 2))
    assert all(np.array_equal(x, y) for x, y in zip(alone, shared))


@can_fork
def test_an_exception_in_a_worker_reaches_the_caller_as_itself():
    def work(item):
        if item == 5:
            raise WorkFailed("item 5", item)
        return item

    results = map_in_order(work, range(12), workers=2)
    with pytest.raises(WorkFailed) as raised:
        list(results)
    assert raised.value.args == ("item 5", 5)


@can_fork
def test_a_worker_runs_the_work_in_this_process_rather_than_fork_again():
    def work(item):
        return list(map_in_order(lambda inner: (inner, os.getpid()), range(2), workers=2))

    for inner in map_in_order(work, range(2), workers=2):
        assert len({pid for _, pid in inner}) == 1 and inner[0][1] != os.getpid()


@can_fork
def test_a_worker_runs_openblas_on_one_thread_and_leaves_the_parents_count():
    if not blas._openblas_functions(blas._GETTERS):  # (NumPy, and any OpenBLAS, is loaded here)
        pytest.skip("NumPy here is not linked to OpenBLAS")
    out = run_python(
        "from lnref.process import blas\n"
        "from lnref.process.workers import map_in_order\n"
        "before = blas.threads()\n"
        "inside = list(map_in_order(lambda _: blas.threads(), range(2), workers=2))\n"
        "print(before, *inside, blas.threads())",
        OPENBLAS_NUM_THREADS="2",
    )
    assert out == ["2", "1", "1", "2"]


@pytest.mark.parametrize(
    "environ, threads",
    [
        ({}, "1"),
        ({"OPENBLAS_NUM_THREADS": ""}, "1"),
        ({"OPENBLAS_NUM_THREADS": "2"}, "2"),
        ({"OMP_NUM_THREADS": "2"}, "2"),
    ],
)
def test_one_blas_thread_unless_the_user_chose_a_count(environ, threads):
    import numpy  # noqa: F401  (maps OpenBLAS, if NumPy is linked to it)

    if not blas._openblas_functions(blas._GETTERS) or available_cpus() < 2:
        pytest.skip("needs NumPy linked to OpenBLAS, and 2 CPUs for its default")
    unset = {name: "" for name in workers.BLAS_THREAD_VARIABLES}
    out = run_python(
        "import numpy\n"
        "from lnref.process import blas, workers\n"
        "workers.one_blas_thread_unless_chosen(); print(blas.threads())",
        **{**unset, **environ},
    )
    assert out == [threads]


def test_available_cpus_is_the_affinity_mask_where_there_is_one():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cpus() == expected >= 1
