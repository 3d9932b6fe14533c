"""The judge: a fixed MNIST classifier that every generator is scored with.

Inception features mean little on 28x28 digits, so a compact CNN trained once
on 50,000 MNIST training digits stands in for Inception. It ships with the
package (`judge_files/`: 1.7 MB of weights, 1 MB of reference features), as
Inception ships with FID, so every run on every data source (builtin, a CSV,
an npz) is scored by the same yardstick, and no run spends time training a
classifier. `python -m cgan_keras.metrics.train_judge`
remakes it.

Beside its weights lie the judge's features of the 10,000 training digits it
never saw, split class by class into two halves of 5,000 (`A` and `B`): the
real digits every score compares with, and the real-vs-real floors (A vs B).
They are stored as float16 features, not as images, so no MNIST digit is
copied into the project.

The judge sees float32 images `(N, 28, 28, 1)` in [0, 1], the exported
generator's range.
"""

import functools
import json
from pathlib import Path

import keras
import numpy as np
from keras import layers

from cgan_keras.metrics import scores

FILES = Path(__file__).with_name("judge_files")
BATCH_SIZE = 1000
FEATURES_LAYER = "features"


def build_judge(image_shape=(28, 28, 1), num_classes=10):
    """Builds the judge: float32 `(N, H, W, C)` in [0, 1] -> probabilities `(N, num_classes)`.

    Two conv/pool stages, then the 128-wide `features` layer (the FID's feature
    space). Random shifts of up to 2 pixels while training make it read
    off-centre strokes as MNIST's own variations, not as new digits.
    """
    images = keras.Input(shape=image_shape, name="images")
    x = layers.RandomTranslation(0.08, 0.08, fill_mode="constant", name="random_shift")(images)
    for index, filters in enumerate((32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv_{index}")(x)
        x = layers.MaxPooling2D(name=f"pool_{index}")(x)
    x = layers.Dropout(0.3, name="dropout_conv")(layers.Flatten(name="flatten")(x))
    x = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.3, name="dropout_features")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(images, probabilities, name="judge")


class Judge:
    """The trained classifier and its features of real digits it never trained on.

    Attributes:
        classifier: the `keras.Model` of `build_judge`.
        reference: dict of the held-out real digits' judge outputs: `features_a`,
            `features_b` float64 `(M, 128)`, `labels_a`, `labels_b` int32 `(M,)`.
        accuracy: the classifier's accuracy on all held-out digits (A and B),
            the ceiling of any generator's label accuracy.
        info: the training record (`judge.json`): data, its sha256, digits, epochs.
    """

    def __init__(self, classifier, reference, info):
        self.classifier = classifier
        self.reference = reference
        self.info = info
        self.accuracy = info["held_out_accuracy"]
        features = classifier.get_layer(FEATURES_LAYER).output
        self._features_and_probabilities = keras.Model(classifier.input, [features, classifier.output])

    @functools.cached_property
    def floors(self):
        """The scores of real half B against real half A, what a perfect generator would get.

        A dict: `fid_floor`, `intra_fid_floor`, `precision_floor`, `recall_floor`;
        computed on first use (a few seconds), then kept.
        """
        features_a, features_b = self.reference["features_a"], self.reference["features_b"]
        precision, recall = scores.precision_recall(features_a, features_b)
        return {
            "fid_floor": scores.frechet_distance(features_a, features_b),
            "intra_fid_floor": scores.intra_class_frechet_distance(
                features_a, self.reference["labels_a"], features_b, self.reference["labels_b"]
            ),
            "precision_floor": precision,
            "recall_floor": recall,
        }

    def predict(self, images):
        """Images float32 `(N, H, W, C)` in [0, 1] -> `(features, probabilities)`,
        float32 `(N, 128)` and `(N, num_classes)`."""
        return tuple(self._features_and_probabilities.predict(images, batch_size=BATCH_SIZE, verbose=0))


def load_judge(directory=FILES):
    """Loads the judge written by `save_judge` (by default the one shipped with the package).

    Raises:
        FileNotFoundError: a file of the judge is missing.
    """
    directory = Path(directory)
    classifier = build_judge()
    classifier.load_weights(directory / "judge.weights.h5")
    with np.load(directory / "reference.npz", allow_pickle=False) as archive:
        reference = {
            key: archive[key].astype(np.float64 if key.startswith("features") else np.int32) for key in archive.files
        }
    info = json.loads((directory / "judge.json").read_text())
    return Judge(classifier, reference, info)
