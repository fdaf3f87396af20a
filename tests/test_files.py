"""lnref.files: output paths checked in one line, files replaced atomically, pyplot or the extra's name."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from lnref import files
from lnref.files import OutputError, atomic_write, check_output_path, require_pyplot, write_figure


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def assert_one_line(err, *words):
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def read_only_directory(monkeypatch):
    """Creating a file fails as on a read-only file system (permission bits do not stop root)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)


# ----- atomic_write -----------------------------------------------------------------------


def test_atomic_write_creates_the_file_with_what_write_wrote(tmp_path):
    atomic_write(tmp_path / "out.bin", lambda stream: stream.write(b"new"))
    assert (tmp_path / "out.bin").read_bytes() == b"new"


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "out.bin", lambda stream: stream.write(b"new"))
    assert os.listdir(tmp_path) == ["out.bin"]


def test_the_target_keeps_its_old_content_until_the_write_completes(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    seen = []

    def write(stream):
        stream.write(b"new")
        seen.append(path.read_bytes())

    atomic_write(path, write)
    assert seen == [b"old"] and path.read_bytes() == b"new"


def test_the_temporary_file_is_in_the_targets_directory(tmp_path):
    """A rename is atomic only within one file system."""
    listings = []
    atomic_write(tmp_path / "out.bin", lambda stream: listings.append(os.listdir(tmp_path)))
    (listing,) = listings
    assert len(listing) == 1 and listing[0].startswith(".out.bin.")


def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def interrupted(stream):
        stream.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_an_os_error_while_writing_is_one_line_naming_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def disk_full(stream):
        stream.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError) as err:
        atomic_write(path, disk_full)
    assert_one_line(err, str(path), os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_another_exception_from_write_propagates_unchanged(tmp_path):
    def broken(stream):
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        atomic_write(tmp_path / "out.bin", broken)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask_as_for_a_plain_open(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "out.bin", lambda stream: stream.write(b"new"))
    with open(tmp_path / "plain.bin", "wb"):
        pass
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == mode == (tmp_path / "plain.bin").stat().st_mode & 0o777


def test_atomic_write_leaves_the_umask_as_it_found_it(tmp_path, umask):
    umask(0o027)
    atomic_write(tmp_path / "out.bin", lambda stream: stream.write(b"new"))
    assert os.umask(0o027) == 0o027


def test_atomic_write_into_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "nowhere" / "out.bin", lambda stream: stream.write(b"new"))
    assert_one_line(err, "out.bin", "does not exist")


def test_atomic_write_where_no_file_can_be_created_is_one_line(tmp_path, monkeypatch):
    read_only_directory(monkeypatch)
    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "out.bin", lambda stream: stream.write(b"new"))
    assert_one_line(err, "out.bin", "not writable", os.strerror(errno.EROFS))


# ----- check_output_path ------------------------------------------------------------------


def test_a_writable_path_gives_its_directory_and_leaves_nothing_behind(tmp_path):
    assert check_output_path(tmp_path / "out.png") == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(OutputError) as err:
        check_output_path(tmp_path / "nowhere" / "out.png")
    assert_one_line(err, "out.png", f"directory {tmp_path / 'nowhere'} does not exist")


def test_a_directory_given_as_the_file_is_one_line(tmp_path):
    with pytest.raises(OutputError) as err:
        check_output_path(tmp_path)
    assert_one_line(err, str(tmp_path), "it is a directory")


def test_a_file_in_place_of_the_directory_is_one_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError) as err:
        check_output_path(tmp_path / "file.txt" / "out.png")
    assert_one_line(err, "out.png", f"{tmp_path / 'file.txt'} is not a directory")


def test_an_unwritable_directory_is_one_line(tmp_path, monkeypatch):
    read_only_directory(monkeypatch)
    with pytest.raises(OutputError) as err:
        check_output_path(tmp_path / "out.png")
    assert_one_line(err, "out.png", "not writable", os.strerror(errno.EROFS))


def test_the_option_opens_the_message(tmp_path):
    with pytest.raises(OutputError) as err:
        check_output_path(tmp_path, "--svg")
    assert str(err.value).startswith("--svg: cannot write ")


def test_output_errors_are_value_errors():
    """The command line reports a ValueError as bad input: one line, exit code 2."""
    assert issubclass(OutputError, ValueError)


# ----- matplotlib -------------------------------------------------------------------------


def test_require_pyplot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an absent package looks like to import
    with pytest.raises(ImportError) as err:
        require_pyplot()
    assert_one_line(err, 'pip install "lnref[plot]"')


def test_require_pyplot_gives_pyplot_on_the_agg_backend():
    pytest.importorskip("matplotlib", reason="needs the plot extra")
    plt = require_pyplot()
    assert plt.get_backend().lower() == "agg"


def test_write_figure_writes_the_format_and_closes_the_figure(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the plot extra")
    plt = require_pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    write_figure(figure, tmp_path / "f.png", "png", dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(figure.number)


def test_a_figure_that_fails_to_draw_is_closed_and_leaves_no_file(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the plot extra")
    plt = require_pyplot()
    figure, _ = plt.subplots()
    with pytest.raises(ValueError, match="no-such-format"):
        write_figure(figure, tmp_path / "f.png", "no-such-format")
    assert not plt.fignum_exists(figure.number) and os.listdir(tmp_path) == []
