import fcntl
import os

import pytest
from support import hold_lock

from cgan_keras import run_lock
from cgan_keras.run_lock import LOCK_NAME, RunDirectoryBusy, RunLock


def test_a_second_lock_names_the_holder_and_a_kill_9_frees_it(tmp_path):
    holder = hold_lock(tmp_path / "run")
    with pytest.raises(
        RunDirectoryBusy, match=rf"^--out {tmp_path / 'run'} is in use by another run \(pid {holder.pid}\)"
    ):
        RunLock(tmp_path / "run").acquire()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path / "run") as lock:  # no stale lock
        assert lock.path.read_text() == f"{os.getpid()}\n"


def test_the_lock_is_released_on_exit_and_the_file_stays(tmp_path):
    with RunLock(tmp_path):
        pass
    with RunLock(tmp_path):
        pass
    assert [path.name for path in tmp_path.iterdir()] == [LOCK_NAME]


def test_an_out_under_a_file_is_an_os_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError):
        RunLock(tmp_path / "a_file").acquire()


def test_the_directories_a_lock_made_go_with_it_when_nothing_else_was_written(tmp_path):
    with RunLock(tmp_path / "runs" / "new"):
        assert (tmp_path / "runs" / "new" / LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []
    with RunLock(tmp_path / "runs" / "new"):
        (tmp_path / "runs" / "new" / "config.json").write_text("{}")
    assert sorted(path.name for path in (tmp_path / "runs" / "new").iterdir()) == [LOCK_NAME, "config.json"]


def test_a_lock_whose_file_its_holder_removed_meanwhile_starts_again(tmp_path, monkeypatch):
    holder = RunLock(tmp_path / "run").acquire()
    real_flock = fcntl.flock

    def flock_after_the_holder_left(file, operation):
        holder.release()  # between the second lock's open and its flock: the file it opened is unlinked
        monkeypatch.setattr(run_lock.fcntl, "flock", real_flock)
        return real_flock(file, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock_after_the_holder_left)
    with RunLock(tmp_path / "run") as lock:
        assert os.path.samestat(os.fstat(lock._file.fileno()), os.stat(tmp_path / "run" / LOCK_NAME))
        with pytest.raises(RunDirectoryBusy):
            RunLock(tmp_path / "run").acquire()


def test_a_dangling_lock_symlink_is_an_os_error(tmp_path):
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "missing" / "target")
    with pytest.raises(FileNotFoundError):
        RunLock(tmp_path).acquire()
