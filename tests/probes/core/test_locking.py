"""One prism process at a time in an output directory: the lock, its release and what it leaves behind."""

from __future__ import annotations

import os
import signal

import pytest

from probes.core.errors import ToolkitError
from probes.core.locking import LOCK_NAME, directory_lock
from tests.directory_holder import held_elsewhere, snapshot


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with held_elsewhere(out) as holder:
        before = snapshot(out)
        with pytest.raises(ToolkitError) as caught:
            with directory_lock(out):
                pytest.fail("the directory was entered while another process held it")
        assert str(caught.value) == (
            f"{out} is in use by another prism process (pid {holder.pid}); wait for it or use another --out"
        )
        assert snapshot(out) == before and before[LOCK_NAME] == f"{holder.pid}\n".encode()


def test_a_killed_holder_never_blocks_a_later_run(tmp_path):
    out = tmp_path / "out"
    with held_elsewhere(out) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert (out / LOCK_NAME).is_file()  # a stale lock file, held by no one
    with directory_lock(out):
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK_NAME).exists()


def test_the_lock_leaves_nothing_behind_and_removes_only_the_empty_folders_it_made(tmp_path):
    with directory_lock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
    assert list(tmp_path.iterdir()) == []  # a refused or empty run: no folder left
    with directory_lock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "result.json").write_text("{}")
    assert snapshot(tmp_path) == {"a/b/result.json": b"{}"}
    (tmp_path / "empty").mkdir()
    with directory_lock(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty").is_dir()  # the user's own folder stays


def test_one_process_cannot_enter_a_directory_twice(tmp_path):
    with directory_lock(tmp_path):
        with pytest.raises(ToolkitError, match=rf"is in use by another prism process \(pid {os.getpid()}\)"):
            with directory_lock(tmp_path):
                pass
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()
