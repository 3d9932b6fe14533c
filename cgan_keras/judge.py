"""The "judge": a small MNIST classifier that scores generated digits.

Inception features mean little on 28x28 digits, so a compact CNN trained on the
real digits stands in for Inception (see `evaluation`). It is trained once per
data source on a seeded 90% of the digits and cached; the other 10% are held
out as the real digits every score is compared with.

The judge sees float32 images `(N, H, W, C)` in [0, 1], the exported
generator's range; `load_or_train_judge` takes `load_data`'s [-1, 1] digits.
"""

import json
import math
import re
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers

from cgan_keras.artifacts import atomic_path
from cgan_keras.data import NUM_CLASSES, check_digits
from cgan_keras.progress import RunProgress

HELD_OUT_FRACTION = 0.1
BATCH_SIZE = 1000
FEATURES_LAYER = "features"


def build_judge(image_shape, num_classes=NUM_CLASSES, feature_dim=128):
    """Builds the judge: float32 `(N, H, W, C)` in [0, 1] -> probabilities `(N, num_classes)`.

    Two conv/pool stages, then the `feature_dim`-wide `features` layer. Random
    shifts of up to 10% while training add ~1% held-out accuracy on the
    5,000-digit builtin set for ~2x the training time.
    """
    images = keras.Input(shape=image_shape, name="images")
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant", name="random_shift")(images)
    for index, filters in enumerate((32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv_{index}")(x)
        x = layers.MaxPooling2D(name=f"pool_{index}")(x)
    x = layers.Dropout(0.3, name="dropout_conv")(layers.Flatten(name="flatten")(x))
    x = layers.Dense(feature_dim, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.3, name="dropout_features")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(images, probabilities, name="judge")


class Judge:
    """A trained judge and the held-out real digits it never trained on.

    Attributes:
        classifier: the `keras.Model` of `build_judge`.
        held_out_images: float32 `(M, H, W, C)` in [0, 1].
        held_out_labels: int32 `(M,)`.
        accuracy: the classifier's accuracy on the held-out digits.
        path: its cached `.keras` file.
    """

    def __init__(self, classifier, held_out_images, held_out_labels, accuracy, path):
        self.classifier = classifier
        self.held_out_images, self.held_out_labels = held_out_images, held_out_labels
        self.accuracy, self.path = accuracy, Path(path)
        features = classifier.get_layer(FEATURES_LAYER).output
        self._features_and_probabilities = keras.Model(classifier.input, [features, classifier.output])

    def predict(self, images):
        """Images float32 `(N, H, W, C)` in [0, 1] -> `(features, probabilities)`,
        float32 `(N, feature_dim)` and `(N, num_classes)`."""
        return tuple(self._features_and_probabilities.predict(images, batch_size=BATCH_SIZE, verbose=0))


def load_or_train_judge(images, labels, source, directory="saved_models/judge", seed=0, epochs=None, verbose=0):
    """Loads the judge cached for these digits, or trains and caches one.

    A seeded `HELD_OUT_FRACTION` of the digits is held out; the rest trains the
    judge (Adam, cosine-decayed learning rate, batch 64). The cache key is the
    source name, digit count, seed and epochs: `<key>.keras` is written, then
    `<key>.json` with the held-out accuracy, each atomically, so a `.json`
    marks a complete entry. Training reseeds Keras' global random state.

    Args:
        images: float32 `(N, 28, 28, 1)` in [-1, 1], as `load_data` returns them.
        labels: int32 `(N,)` digit classes.
        source: name of the data source, e.g. `builtin` (only names the cache entry).
        directory: cache directory.
        seed: seed of the held-out split and of training.
        epochs: training epochs. `None` means enough to see ~45,000 digits
            (10 on the builtin set) and at least 5.
        verbose: when training, print one line saying so, then its progress
            (`progress.RunProgress`: a bar on a terminal, else a line per epoch).

    Returns:
        A `Judge`.

    Example:

    >>> judge = load_or_train_judge(*load_data("builtin"), "builtin")
    >>> judge.accuracy
    """
    images, labels = check_digits(images, labels)
    images = (images + 1) / 2
    order = np.random.default_rng(seed).permutation(len(images))
    held_out, train = np.split(order, [max(1, round(HELD_OUT_FRACTION * len(images)))])
    if epochs is None:
        epochs = max(5, math.ceil(45_000 / len(train)))
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", source).strip("_")
    key = f"{name}-{len(images)}digits-seed{seed}-{epochs}epochs"
    model_path, info_path = Path(directory) / f"{key}.keras", Path(directory) / f"{key}.json"
    if model_path.exists() and info_path.exists():
        classifier = keras.saving.load_model(model_path)
        accuracy = json.loads(info_path.read_text())["held_out_accuracy"]
        return Judge(classifier, images[held_out], labels[held_out], accuracy, model_path)

    keras.utils.set_random_seed(seed)
    classifier = build_judge(images.shape[1:])
    steps = epochs * math.ceil(len(train) / 64)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps))
    classifier.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    progress = []
    if verbose:
        print(f"training the judge on {len(train):,} digits, once; cached in {model_path}")
        progress = [RunProgress(steps, keys=("loss", "accuracy"))]
    classifier.fit(images[train], labels[train], batch_size=64, epochs=epochs, verbose=0, callbacks=progress)
    train_seconds = round(time.perf_counter() - start, 1)
    _, accuracy = classifier.evaluate(images[held_out], labels[held_out], batch_size=BATCH_SIZE, verbose=0)
    with atomic_path(model_path) as temporary:
        classifier.save(temporary)
    info = {"held_out_accuracy": accuracy, "held_out": len(held_out), "train": len(train), "epochs": epochs}
    with atomic_path(info_path) as temporary:
        temporary.write_text(json.dumps({**info, "train_seconds": train_seconds}, indent=2) + "\n")
    return Judge(classifier, images[held_out], labels[held_out], accuracy, model_path)
