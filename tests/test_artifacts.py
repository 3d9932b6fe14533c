import pytest

from cgan_keras.artifacts import atomic_path


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["config.json"]


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "generator"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with atomic_path(target, directory=True) as temporary:
        temporary.mkdir()
        assert not (tmp_path / "generator" / "new.pb").exists()  # invisible until renamed
        (temporary / "new.pb").write_text("new")
    assert [path.name for path in target.iterdir()] == ["new.pb"]
    assert [path.name for path in tmp_path.iterdir()] == ["generator"]


def test_a_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "generator"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with pytest.raises(OSError), atomic_path(target, directory=True) as temporary:
        temporary.mkdir()
        raise OSError("disk full")
    assert (target / "old.pb").read_text() == "old"
