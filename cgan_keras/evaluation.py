"""Scores a conditional generator with a small MNIST classifier, the "judge".

Inception features mean little on 28x28 digits, so a compact CNN trained on the
real digits stands in for Inception: its probabilities give the label accuracy
(is the digit asked for the digit drawn?) and the classifier score (Inception
Score); its penultimate `features` layer is the feature space of the FID.

The judge sees float32 images `(N, H, W, C)` in [0, 1], the exported
generator's range; `load_or_train_judge` takes `load_data`'s [-1, 1] digits.
"""

import json
import math
import re
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import scipy.linalg
import scipy.special
import tensorflow as tf
from keras import layers

from cgan_keras import export
from cgan_keras.artifacts import atomic_path
from cgan_keras.data import NUM_CLASSES, check_digits
from cgan_keras.gan import sample_noise

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
        verbose: Keras `fit` verbosity (0 silent, 2 one line per epoch).

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
    classifier.fit(images[train], labels[train], batch_size=64, epochs=epochs, verbose=verbose)
    train_seconds = round(time.perf_counter() - start, 1)
    _, accuracy = classifier.evaluate(images[held_out], labels[held_out], batch_size=BATCH_SIZE, verbose=0)
    with atomic_path(model_path) as temporary:
        classifier.save(temporary)
    info = {"held_out_accuracy": accuracy, "held_out": len(held_out), "train": len(train), "epochs": epochs}
    with atomic_path(info_path) as temporary:
        temporary.write_text(json.dumps({**info, "train_seconds": train_seconds}, indent=2) + "\n")
    return Judge(classifier, images[held_out], labels[held_out], accuracy, model_path)


def frechet_distance(features_a, features_b):
    """Frechet distance of Gaussians fitted to two feature sets (the FID formula), in float64.

    `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrt(S_a S_b))`. Small samples bias it
    upwards: compare only values computed from the same sample sizes.

    Args:
        features_a: float `(N, D)`, N >= 2.
        features_b: float `(M, D)`, M >= 2.

    Returns:
        A float >= 0 (up to rounding).
    """
    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if (
        features_a.ndim != 2
        or features_a.shape[1:] != features_b.shape[1:]
        or min(len(features_a), len(features_b)) < 2
    ):
        raise ValueError(
            "Expected features (N, D) and (M, D) with N, M >= 2. "
            f"Received: features_a.shape={features_a.shape}, features_b.shape={features_b.shape}"
        )
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    # scipy 1.16 deprecated `disp=False`; sqrtm now warns on singular products
    # instead. Those are routine here (dead ReLU units, fewer samples than
    # features) and are caught by the finiteness check and its offset retry.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma_a)) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if not np.isfinite(covmean).all() or not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(
            "sqrt(S_a S_b) is not finite or has a large imaginary part: the feature covariances are "
            f"ill-conditioned. Received: max |imag| on the diagonal={np.abs(np.diagonal(covmean).imag).max()}"
        )
    covmean = covmean.real
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def classifier_score(probabilities):
    """Inception Score with the judge, `exp(mean_x KL(p(y|x) || p(y)))`, of float `(N, K)` probabilities.

    In [1, K]: K for confident predictions spread evenly over K classes, 1 when
    every image gets the same prediction.
    """
    probabilities = np.asarray(probabilities, np.float64)
    marginal = probabilities.mean(axis=0, keepdims=True)
    return float(np.exp(scipy.special.rel_entr(probabilities, marginal).sum(axis=1).mean()))


def label_accuracy(probabilities, digits):
    """Share of images whose most probable class is their digit, overall and per class.

    Args:
        probabilities: float `(N, K)`.
        digits: int `(N,)` the digit each image should show.

    Returns:
        `(accuracy, per_class)`: a float and float64 `(K,)`, NaN for a class without images.
    """
    num_classes = np.shape(probabilities)[1]
    correct = np.argmax(probabilities, axis=1) == digits
    hits = np.bincount(digits, weights=correct, minlength=num_classes)
    counts = np.bincount(digits, minlength=num_classes)
    per_class = np.divide(hits, counts, out=np.full(num_classes, np.nan), where=counts > 0)
    return float(correct.mean()), per_class


def evaluate_generator(generate, judge, real_images, real_labels, *, latent_dim, per_class=1000, seed=0):
    """Scores a generator against real digits the judge did not train on.

    The real digits are split class by class into equal halves A and B. The
    FID floor compares A with B; the generator's FID compares A with as many
    generated digits as B, asked for B's labels: same sample sizes, same mix.

    Args:
        generate: `generate(digits int32 (n,), noise float32 (n, latent_dim))` ->
            float32 `(n, H, W, C)` in [0, 1]; given at most `BATCH_SIZE` digits a call.
        judge: a `Judge`.
        real_images: float32 `(M, H, W, C)` in [0, 1], M >= 4, e.g. `judge.held_out_images`.
        real_labels: int `(M,)`.
        latent_dim: length of the generator's noise vector.
        per_class: generated digits of each class for accuracy and classifier score.
        seed: seed of the noise (`np.random.default_rng(seed)`).

    Returns:
        A JSON-ready dict: `label_accuracy`, `per_class_accuracy` (list),
        `worst_class`, `worst_class_accuracy`, `fid`, `fid_floor`, `fid_samples`
        (digits per side), `classifier_score`, `real_classifier_score`,
        `judge_accuracy` (on the real digits), `generated`, `seed`.
    """
    if per_class < 1:
        raise ValueError(f"`per_class` must be a positive integer. Received: per_class={per_class!r}")
    real_labels = np.asarray(real_labels)
    if len(real_images) != len(real_labels) or len(real_images) < 4:
        raise ValueError(
            "Expected at least 4 real images, one label each. "
            f"Received: len(real_images)={len(real_images)}, len(real_labels)={len(real_labels)}"
        )
    real_features, real_probabilities = judge.predict(real_images)
    by_class = np.argsort(real_labels, kind="stable")
    half_b = by_class[1::2]
    half_a = by_class[0::2][: len(half_b)]
    num_classes = real_probabilities.shape[1]
    asked = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    digits = np.concatenate([asked, real_labels[half_b].astype(np.int32)])
    noise = sample_noise(len(digits), latent_dim, seed)
    features, probabilities = _generate_and_judge(generate, judge, digits, noise)
    accuracy, per_class_accuracy = label_accuracy(probabilities[: len(asked)], asked)
    worst_class = int(np.argmin(per_class_accuracy))
    return {
        "label_accuracy": accuracy,
        "per_class_accuracy": per_class_accuracy.tolist(),
        "worst_class": worst_class,
        "worst_class_accuracy": float(per_class_accuracy[worst_class]),
        "fid": frechet_distance(real_features[half_a], features[len(asked) :]),
        "fid_floor": frechet_distance(real_features[half_a], real_features[half_b]),
        "fid_samples": len(half_b),
        "classifier_score": classifier_score(probabilities[: len(asked)]),
        "real_classifier_score": classifier_score(real_probabilities),
        "judge_accuracy": label_accuracy(real_probabilities, real_labels)[0],
        "generated": len(asked),
        "seed": seed,
    }


def _generate_and_judge(generate, judge, digits, noise):
    # Batch by batch, keeping only the judge's outputs, so memory stays bounded.
    image_shape = judge.classifier.input_shape[1:]
    features, probabilities = [], []
    for start in range(0, len(digits), BATCH_SIZE):
        stop = min(start + BATCH_SIZE, len(digits))
        images = np.asarray(generate(digits[start:stop], noise[start:stop]))
        if images.shape != (stop - start, *image_shape):
            raise ValueError(
                f"`generate` must return images of shape (n, {', '.join(map(str, image_shape))}) "
                f"for n={stop - start} digits. Received: shape={images.shape}"
            )
        if not (images.min() >= 0 and images.max() <= 1):
            raise ValueError(
                "`generate` must return images in [0, 1]: map a tanh output with (x + 1) / 2. "
                f"Received: min={images.min()}, max={images.max()}"
            )
        batch_features, batch_probabilities = judge.predict(images)
        features.append(batch_features)
        probabilities.append(batch_probabilities)
    return np.concatenate(features), np.concatenate(probabilities)


def generator_from_saved_model(path):
    """Loads an exported generator as `(generate, latent_dim)` for `evaluate_generator`.

    Raises:
        export.SavedModelError: the path is not a generator SavedModel.
    """
    serve, latent_dim = export.load_generator(path)

    def generate(digits, noise):
        return serve(digit=tf.constant(digits, tf.int32), noise=tf.constant(noise, tf.float32))["images"].numpy()

    return generate, latent_dim


def generator_from_model(gan):
    """Wraps a `ConditionalGAN`'s generator (tanh, [-1, 1]) as `(generate, latent_dim)` in [0, 1]."""

    def generate(digits, noise):
        images = gan.generator({"digit": digits, "noise": noise}, training=False)
        return (keras.ops.convert_to_numpy(images) + 1) / 2

    return generate, gan.latent_dim


def evaluate_and_save(generate, latent_dim, judge, path, per_class=1000, seed=0, **context):
    """Runs `evaluate_generator` on the judge's held-out digits and writes the results as JSON.

    Args:
        generate, latent_dim: as `generator_from_model` or `generator_from_saved_model` return them.
        judge: a `Judge`.
        path: the JSON file (e.g. `eval.json`), written atomically.
        per_class, seed: as in `evaluate_generator`.
        **context: more JSON-ready fields to record (model path, data source).

    Returns:
        The results dict of `evaluate_generator`.
    """
    results = evaluate_generator(
        generate,
        judge,
        judge.held_out_images,
        judge.held_out_labels,
        latent_dim=latent_dim,
        per_class=per_class,
        seed=seed,
    )
    record = {**context, "judge": str(judge.path), **results}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
    return results


def format_table(results):
    """Formats `evaluate_generator`'s results as an aligned two-column text table."""
    per_class = enumerate(results["per_class_accuracy"])
    rows = [
        ("label accuracy", f"{results['label_accuracy']:.2%} of {results['generated']} generated digits"),
        ("per class", " ".join(f"{digit}:{accuracy:.0%}" for digit, accuracy in per_class)),
        ("worst class", f"{results['worst_class']} ({results['worst_class_accuracy']:.2%})"),
        ("FID", f"{results['fid']:.3f} ({results['fid_samples']} vs {results['fid_samples']} digits)"),
        ("FID floor, real vs real", f"{results['fid_floor']:.3f} (same sample sizes)"),
        ("classifier score", f"{results['classifier_score']:.3f}"),
        ("classifier score, real", f"{results['real_classifier_score']:.3f}"),
        ("judge accuracy, real", f"{results['judge_accuracy']:.2%}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
