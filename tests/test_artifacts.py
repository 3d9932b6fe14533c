from pathlib import Path

import pytest

from cgan_keras.artifacts import ArtifactWriteError, atomic_path, first_line, remove_partial


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


def test_a_full_disk_raises_one_line_naming_the_artifact_and_leaves_no_debris(full_disk):
    target = full_disk.path / "history.csv"
    target.write_text("old")
    full_disk.fill((Path, "write_bytes"))
    with pytest.raises(ArtifactWriteError) as failed, atomic_path(target) as temporary:
        temporary.write_bytes(bytes(1 << 20))
    assert str(failed.value) == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old"
    assert [path.name for path in full_disk.path.iterdir() if path.name != "ballast"] == ["history.csv"]


def test_remove_partial_clears_what_a_killed_write_left(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / ".step_000100.png.abcd1234.partial").mkdir()
    (tmp_path / ".generator.efgh5678.partial" / "generator").mkdir(parents=True)
    (tmp_path / "generator").mkdir()
    assert len(remove_partial(tmp_path)) == 2
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == ["generator", "samples"]


def test_first_line_of_an_error_is_its_first_line_or_its_type():
    assert first_line(OSError("Cannot parse file\nmore detail")) == "Cannot parse file"
    assert first_line(ValueError("")) == "ValueError"  # an empty message still says something
