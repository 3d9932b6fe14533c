import socket
import urllib.error
from pathlib import Path

import keras
import keras.src.backend.config
import keras.src.utils.file_utils
import numpy as np
import pandas as pd
import pytest

from cgan_keras.data import DataError, check_digits, load_data, make_dataset, resolve_source

HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))


def random_digits(count, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
    return pixels, rng.integers(0, 10, size=count).astype(np.uint8)


def write_csv(path, pixels, labels, edit=None):
    """Writes a train.csv; `edit(cells)` may change the str cells, one list per data row."""
    cells = [[str(label), *map(str, image.ravel())] for image, label in zip(pixels, labels, strict=True)]
    if edit:
        edit(cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *(",".join(row) for row in cells)]) + "\n")
    return path


def expected_images(pixels):
    return (pixels.astype(np.float32) / 255 * 2 - 1).reshape(-1, 28, 28, 1)


def test_csv_loads_exactly_scaled_digits(tmp_path):
    pixels, labels = random_digits(3)
    images, loaded_labels = load_data(str(write_csv(tmp_path / "train.csv", pixels, labels)))
    assert images.dtype == np.float32 and images.shape == (3, 28, 28, 1)
    assert loaded_labels.dtype == np.int32 and loaded_labels.shape == (3,)
    np.testing.assert_array_equal(images, expected_images(pixels))
    assert images.min() == -1.0 and images.max() == 1.0
    np.testing.assert_array_equal(loaded_labels, labels)


def test_npz_loads_exactly_scaled_digits(tmp_path):
    pixels, labels = random_digits(4)
    np.savez(tmp_path / "mnist.npz", x_train=pixels, y_train=labels, x_test=pixels[:1], y_test=labels[:1])
    images, loaded_labels = load_data(tmp_path / "mnist.npz")  # a Path as well as a str
    assert images.dtype == np.float32 and loaded_labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected_images(pixels))
    np.testing.assert_array_equal(loaded_labels, labels)


def test_builtin_loads_5000_digits_of_all_classes():
    images, labels = load_data("builtin")
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int32
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_auto_prefers_data_train_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pixels, labels = random_digits(2)
    write_csv(tmp_path / "data" / "train.csv", pixels, labels)
    assert resolve_source("auto") == "data/train.csv"
    np.testing.assert_array_equal(load_data("auto")[1], labels)


def test_auto_uses_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    pixels, labels = random_digits(2)
    np.savez(tmp_path / "datasets" / "mnist.npz", x_train=pixels, y_train=labels)
    assert resolve_source("auto") == str(tmp_path / "datasets" / "mnist.npz")


def test_auto_falls_back_to_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert resolve_source("auto") == "builtin"


@pytest.mark.parametrize("source", ["builtin", "mnist", "a/train.csv", "x.NPZ"])
def test_resolve_source_keeps_explicit_sources(source):
    assert resolve_source(source) == source


@pytest.mark.parametrize("source", ["kaggle", "train.txt", ""])
def test_resolve_source_rejects_unknown_sources(source):
    with pytest.raises(DataError, match="PATH.csv.*PATH.npz") as error:
        resolve_source(source)
    assert f"Received: source={source!r}" in str(error.value)


def test_mnist_offline_fails_fast_without_partial_file(tmp_path, monkeypatch):
    timeouts = []

    def offline_urlretrieve(url, filename, reporthook=None):
        timeouts.append(socket.getdefaulttimeout())
        Path(filename).write_bytes(b"partial")
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", offline_urlretrieve)
    # Keras fixed its cache directory at import; a real cached mnist.npz would skip the download.
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path))
    previous_timeout = socket.getdefaulttimeout()
    with pytest.raises(DataError, match="download") as error:
        load_data("mnist")
    assert "`builtin`" in str(error.value) and "PATH.csv" in str(error.value)
    assert timeouts and timeouts[0] is not None and timeouts[0] <= 30
    assert socket.getdefaulttimeout() == previous_timeout
    assert not (tmp_path / "datasets" / "mnist.npz").exists()


def set_cell(row, column, value):
    def edit(cells):
        cells[row][column] = value

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (set_cell(1, 6, "abc"), ["data row 2 (line 3)", "`pixel5`", "a number", "`abc`"]),
        (set_cell(2, 1, ""), ["data row 3 (line 4)", "`pixel0`", "empty cell"]),
        (set_cell(1, 2, "nan"), ["data row 2 (line 3)", "`pixel1`", "a number", "`nan`"]),
        (set_cell(0, 784, "256"), ["data row 1 (line 2)", "`pixel783`", "0..255", "`256`"]),
        (set_cell(1, 10, "-1"), ["data row 2 (line 3)", "`pixel9`", "`-1`"]),
        (set_cell(2, 0, "10"), ["data row 3 (line 4)", "`label`", "0..9", "`10`"]),
        (set_cell(0, 0, "3.5"), ["data row 1 (line 2)", "`label`", "integer", "`3.5`"]),
        # The first offending row wins, whatever the kind of problem.
        (lambda cells: (set_cell(2, 3, "x")(cells), set_cell(1, 700, "999")(cells)), ["data row 2 (line 3)"]),
        (lambda cells: cells.insert(1, [""]), ["data row 2 (line 3)", "empty cell"]),
        (lambda cells: cells[1].append("0"), ["line 3", "saw 786"]),
    ],
    ids=[
        "non-numeric",
        "missing",
        "nan-text",
        "pixel-high",
        "pixel-low",
        "label-range",
        "label-float",
        "first",
        "blank",
        "ragged",
    ],
)
def test_csv_reports_the_first_bad_cell(tmp_path, edit, expected):
    path = write_csv(tmp_path / "train.csv", *random_digits(3), edit=edit)
    with pytest.raises(DataError) as error:
        load_data(str(path))
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message
    for text in expected:
        assert text in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        ("", "empty"),
        (",".join(f"pixel{i}" for i in range(784)) + "\n0" + ",0" * 783 + "\n", "no `label` column"),
        ("5" + ",0" * 784 + "\n", "Found: `5,0,0,0"),
        ("label," + ",".join(f"pixel{i}" for i in range(783)) + "\n", "found 783"),
        (HEADER + "\n", "no data rows"),
    ],
    ids=["missing-file", "empty", "no-label", "no-header", "pixel-count", "header-only"],
)
def test_csv_reports_bad_files(tmp_path, content, expected):
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expected) as error:
        load_data(str(path))
    assert str(path) in str(error.value)


def test_csv_that_cannot_be_opened_is_a_data_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "train.csv"
    path.write_text(HEADER + "\n")

    def read_csv(source, **kwargs):  # what pandas raises for a file without read permission (tests may run as root)
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(pd, "read_csv", read_csv)
    with pytest.raises(DataError, match=f"{path}: cannot be read \\(Permission denied\\)"):
        load_data(str(path))


def bad_pixel_npz(arrays):
    arrays["x_train"] = arrays["x_train"].astype(np.int16)
    arrays["x_train"][2, 5, 5] = 300


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda arrays: arrays.pop("y_train"), "found ['x_test', 'x_train']"),
        (lambda arrays: arrays.update(x_train=arrays["x_train"][:, :27]), "shape (3, 27, 28)"),
        (lambda arrays: arrays.update(x_train=arrays["x_train"] / 255), "dtype float64"),
        (lambda arrays: arrays.update(y_train=arrays["y_train"][:, None]), "shape (3, 1)"),
        (lambda arrays: arrays.update(y_train=arrays["y_train"][:2]), "3 images but `y_train` holds 2"),
        (lambda arrays: arrays["y_train"].__setitem__(1, 10), "`y_train[1]` is 10"),
        (bad_pixel_npz, "`x_train[2]` holds pixel value 300"),
        (lambda arrays: arrays.update(x_train=np.array([None] * 3)), "Object arrays cannot be loaded"),
    ],
    ids=["missing-key", "shape", "float", "label-shape", "count", "label-range", "pixel-range", "pickled"],
)
def test_npz_reports_bad_arrays(tmp_path, edit, expected):
    pixels, labels = random_digits(3)
    arrays = {"x_train": pixels, "y_train": labels, "x_test": pixels}
    edit(arrays)
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as error:
        load_data(str(path))
    assert str(error.value).startswith(str(path)) and expected in str(error.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        (b"", "not a readable"),
        (b"not a zip", "not a readable"),
        ("npy", "not a readable"),
    ],
)
def test_npz_reports_bad_files(tmp_path, content, expected):
    path = tmp_path / "mnist.npz"
    if content == "npy":
        with path.open("wb") as file:
            np.save(file, np.zeros(3))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as error:
        load_data(str(path))
    assert str(path) in str(error.value)


def test_check_digits_keeps_ready_arrays():
    images = np.zeros((2, 28, 28, 1), np.float32)
    labels = np.array([3, 4], np.int32)
    checked_images, checked_labels = check_digits(images, labels)
    assert checked_images is images and checked_labels is labels


@pytest.mark.parametrize("labels", [[3, 9], [[3], [9]], np.eye(10)[[3, 9]], np.eye(10, dtype=bool)[[3, 9]]], ids=str)
def test_check_digits_converts_layouts(labels):
    images = np.linspace(-1, 1, 2 * 28 * 28).reshape(2, 28, 28)
    checked_images, checked_labels = check_digits(images, labels)
    assert checked_images.shape == (2, 28, 28, 1) and checked_images.dtype == np.float32
    np.testing.assert_allclose(checked_images[..., 0], images, atol=1e-7)
    assert checked_labels.dtype == np.int32
    np.testing.assert_array_equal(checked_labels, [3, 9])


def images_with(value):
    images = np.zeros((2, 28, 28, 1), np.float32)
    images[1, 3, 4, 0] = value
    return images


@pytest.mark.parametrize(
    "images, labels, expected",
    [
        (np.zeros((2, 28, 28, 1)), [1, 2, 3], "Received: images.shape=(2, 28, 28, 1), labels.shape=(3,)"),
        (np.zeros((2, 32, 32, 1)), [1, 2], "Received: images.shape=(2, 32, 32, 1)"),
        (np.zeros((2, 28, 28, 1), np.uint8), [1, 2], "Received: images.dtype=uint8"),
        (images_with(255.0), [1, 2], "x / 255 * 2 - 1`). Received: images.min()=0.0, images.max()=255.0"),
        (images_with(np.nan), [1, 2], "images.min()=nan"),
        (np.zeros((2, 28, 28, 1)), [1, 10], "Received: labels[1]=10"),
        (np.zeros((2, 28, 28, 1)), [1.0, 2.0], "Received: labels.dtype=float64"),
        (np.zeros((2, 28, 28, 1)), np.zeros((2, 10)), "Received: labels[0]=[0.0, 0.0"),
        (np.zeros((2, 28, 28, 1)), np.zeros((2, 3)), "Received: labels.shape=(2, 3)"),
    ],
    ids=[
        "count",
        "shape",
        "uint8",
        "range",
        "nan",
        "label-range",
        "label-float",
        "not-one-hot",
        "label-shape",
    ],
)
def test_check_digits_rejects_bad_inputs(images, labels, expected):
    with pytest.raises(ValueError) as error:
        check_digits(images, labels)
    assert expected in str(error.value)


def tiny_digits(count=10):
    images = np.linspace(-1, 1, count, dtype=np.float32)[:, None, None, None] * np.ones((1, 28, 28, 1), np.float32)
    return images, np.arange(count, dtype=np.int32) % 10


def take_labels(dataset, batches):
    return [labels.numpy().tolist() for _, labels in dataset.take(batches)]


def test_make_dataset_streams_fixed_size_batches():
    dataset = make_dataset(*tiny_digits(), batch_size=4, seed=0)
    assert dataset.element_spec[0].shape == (4, 28, 28, 1) and dataset.element_spec[0].dtype == "float32"
    assert dataset.element_spec[1].shape == (4,) and dataset.element_spec[1].dtype == "int32"
    images = tiny_digits()[0]
    for batch_images, batch_labels in dataset.take(8):
        assert batch_images.shape == (4, 28, 28, 1)
        np.testing.assert_array_equal(batch_images.numpy(), images[batch_labels.numpy()])


def test_make_dataset_reshuffles_each_pass_deterministically():
    passes = take_labels(make_dataset(*tiny_digits(), batch_size=10, seed=7), 3)
    assert all(sorted(labels) == list(range(10)) for labels in passes)
    assert passes[0] != passes[1] and passes[0] != list(range(10))
    assert take_labels(make_dataset(*tiny_digits(), batch_size=10, seed=7), 3) == passes
    assert take_labels(make_dataset(*tiny_digits(), batch_size=10, seed=8), 3) != passes


def test_make_dataset_skips_batches_into_the_same_stream():
    stream = take_labels(make_dataset(*tiny_digits(), batch_size=4, seed=7), 9)  # 3.6 passes: batches span them
    assert take_labels(make_dataset(*tiny_digits(), batch_size=4, seed=7, skip_batches=5), 4) == stream[5:]
    with pytest.raises(ValueError, match="Expected skip_batches >= 0. Received: skip_batches=-1"):
        make_dataset(*tiny_digits(), batch_size=4, seed=7, skip_batches=-1)
    with pytest.raises(ValueError, match="Received: skip_batches=True"):  # a flag, not one batch
        make_dataset(*tiny_digits(), batch_size=4, seed=7, skip_batches=True)


def test_make_dataset_without_shuffle_keeps_order():
    assert take_labels(make_dataset(*tiny_digits(), batch_size=4, seed=0, shuffle=False), 3) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 0, 1],
    ]


def test_make_dataset_takes_numpy_integers_and_refuses_other_batch_sizes():
    assert make_dataset(*tiny_digits(), batch_size=np.int64(4), seed=0).element_spec[1].shape == (4,)
    for batch_size in (True, 4.0, 0):
        with pytest.raises(ValueError, match=f"a positive integer batch_size. Received: batch_size={batch_size}"):
            make_dataset(*tiny_digits(), batch_size=batch_size, seed=0)


def test_make_dataset_needs_one_full_batch():
    with pytest.raises(DataError, match="Batch size 64 needs at least 64 digits, but the data holds 10"):
        make_dataset(*tiny_digits(), batch_size=64, seed=0)
