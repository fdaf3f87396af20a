"""lnref.process.blas: OpenBLAS's thread count, read and set, and whether its idle workers sleep."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lnref.process import blas

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, **env):
    """``code`` in a fresh interpreter (OpenBLAS reads its environment once, when it loads)."""
    environment = {k: v for k, v in os.environ.items() if k != blas.TIMEOUT_VARIABLE}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize(
    "value, sleep",
    [
        (None, False),
        (str(blas.IDLE_TIMEOUT), True),
        ("4", True),
        (" 8 ", True),
        (str(blas.IDLE_TIMEOUT + 1), False),
        ("28", False),
        ("", False),
        ("soon", False),
        ("-1", False),
    ],
)
def test_idle_workers_sleep_when_the_timeout_is_set_at_most_to_lnrefs(value, sleep):
    environ = {} if value is None else {blas.TIMEOUT_VARIABLE: value}
    assert blas.idle_workers_sleep(environ) is sleep


def let_idle_workers_sleep_in_a_fresh_process(numpy_first=False, **env):
    """[what let_idle_workers_sleep returned, the variable afterwards] in a fresh interpreter."""
    return run_python(
        f"import os{', numpy' if numpy_first else ''}; from lnref.process import blas\n"
        "print(blas.let_idle_workers_sleep(), os.environ.get(blas.TIMEOUT_VARIABLE))",
        **env,
    )


def test_let_idle_workers_sleep_sets_the_timeout_before_numpy_loads():
    assert let_idle_workers_sleep_in_a_fresh_process() == ["True", str(blas.IDLE_TIMEOUT)]


def test_let_idle_workers_sleep_takes_an_empty_timeout_for_an_unset_one():
    assert let_idle_workers_sleep_in_a_fresh_process(OPENBLAS_THREAD_TIMEOUT="") == ["True", str(blas.IDLE_TIMEOUT)]


def test_let_idle_workers_sleep_leaves_a_timeout_the_user_set():
    assert let_idle_workers_sleep_in_a_fresh_process(OPENBLAS_THREAD_TIMEOUT="25") == ["False", "25"]


def test_let_idle_workers_sleep_does_nothing_once_numpy_is_loaded():
    # OpenBLAS has read its environment by then: setting it would only mislead idle_workers_sleep.
    assert let_idle_workers_sleep_in_a_fresh_process(numpy_first=True) == ["False", "None"]


def test_threads_reads_and_set_threads_changes_openblas_thread_count():
    import numpy  # noqa: F401  (maps OpenBLAS, if NumPy is linked to it)

    if not blas._openblas_functions(blas._GETTERS):
        pytest.skip("NumPy here is not linked to OpenBLAS")
    out = run_python(
        "from lnref.process import blas\nbefore = blas.threads(); blas.set_threads(1); print(before, blas.threads())",
        OPENBLAS_NUM_THREADS="2",
    )
    assert out == ["2", "1"]


def test_the_lnref_command_lets_idle_workers_sleep_before_numpy_loads():
    out = run_python(
        "import os, sys\n"
        "from lnref.cli import main\n"
        "main(['schemes'], standalone_mode=False)\n"
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    )
    assert out[-1] == str(blas.IDLE_TIMEOUT)


def test_the_readme_gives_lnrefs_idle_timeout_to_library_users():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"OPENBLAS_THREAD_TIMEOUT={blas.IDLE_TIMEOUT}" in readme


@pytest.mark.parametrize(
    "core, unpacked",
    [("SkylakeX", True), ("Cooperlake", True), ("SapphireRapids", True), ("Haswell", False), ("Zen", False)]
    + [(None, False)],
)
def test_small_products_unpacked_for_openblas_kernels_with_small_matrix_kernels(monkeypatch, core, unpacked):
    monkeypatch.setattr(blas, "core_name", lambda: core)
    assert blas.small_products_unpacked() is unpacked


def test_small_products_unpacked_is_false_where_openblas_cannot_be_asked(monkeypatch):
    def unreadable():
        raise OSError("cannot open the library")

    monkeypatch.setattr(blas, "core_name", unreadable)
    assert blas.small_products_unpacked() is False


@pytest.mark.parametrize("core", ["Haswell", "SkylakeX"])
def test_the_linear_maps_loop_limit_follows_the_kernels_openblas_runs(core):
    import numpy  # noqa: F401  (maps OpenBLAS, if NumPy is linked to it)

    if not blas._openblas_functions(blas._CORE_NAMES):
        pytest.skip("NumPy here is not linked to OpenBLAS")
    name, limit = run_python(
        "from lnref.process import blas\nfrom lnref.autograd.kernels import linear\n"
        "print(blas.core_name(), linear.LOOP_PAYS_UP_TO)",
        OPENBLAS_CORETYPE=core,  # OpenBLAS falls back to another kernel where the CPU lacks this one's
    )
    expected = 32 * 16 * 64 if name.lower() in blas.SMALL_MATRIX_CORES else 512 * 16 * 64
    assert int(limit) == expected, f"OpenBLAS runs its {name} kernels"
