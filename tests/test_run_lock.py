import os

import pytest
from support import hold_lock

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
