"""Scores a conditional generator with a small MNIST classifier, the "judge".

Inception features mean little on 28x28 digits, so a compact CNN trained on the
real digits stands in for Inception: its probabilities give the label accuracy
(is the digit asked for the digit drawn?) and the classifier score (Inception
Score); its penultimate `features` layer is the feature space of the FID.

The judge itself (training, caching, held-out digits) lives in `judge.py`.
"""

import json
import warnings

import numpy as np
import scipy.linalg
import scipy.special

from cgan_keras.artifacts import atomic_path
from cgan_keras.judge import BATCH_SIZE
from cgan_keras.sampler import sample_noise


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


def evaluate_generator(sampler, judge, real_images=None, real_labels=None, *, per_class=1000, seed=0):
    """Scores a generator against real digits the judge did not train on.

    The real digits are split class by class into equal halves A and B. The
    FID floor compares A with B; the generator's FID compares A with as many
    generated digits as B, asked for B's labels: same sample sizes, same mix.

    Args:
        sampler: a `sampler.DigitSampler`; its `from_noise` is given at most
            `BATCH_SIZE` digits a call.
        judge: a `judge.Judge`.
        real_images: float32 `(M, H, W, C)` in [0, 1], M >= 4; `None` means
            the digits the judge held out (`judge.held_out_images`).
        real_labels: int `(M,)`; `None` with `real_images` `None`.
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
    if real_images is None:
        real_images, real_labels = judge.held_out_images, judge.held_out_labels
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
    noise = sample_noise(len(digits), sampler.latent_dim, seed)
    features, probabilities = _generate_and_judge(sampler, judge, digits, noise)
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


def _generate_and_judge(sampler, judge, digits, noise):
    # Batch by batch, keeping only the judge's outputs, so memory stays bounded.
    image_shape = judge.classifier.input_shape[1:]
    features, probabilities = [], []
    for start in range(0, len(digits), BATCH_SIZE):
        stop = min(start + BATCH_SIZE, len(digits))
        images = np.asarray(sampler.from_noise(digits[start:stop], noise[start:stop]))
        if images.shape != (stop - start, *image_shape):
            raise ValueError(
                f"`sampler.from_noise` must return images of shape (n, {', '.join(map(str, image_shape))}) "
                f"for n={stop - start} digits. Received: shape={images.shape}"
            )
        if not (images.min() >= 0 and images.max() <= 1):
            raise ValueError(
                "`sampler.from_noise` must return images in [0, 1]: map a tanh output with (x + 1) / 2. "
                f"Received: min={images.min()}, max={images.max()}"
            )
        batch_features, batch_probabilities = judge.predict(images)
        features.append(batch_features)
        probabilities.append(batch_probabilities)
    return np.concatenate(features), np.concatenate(probabilities)


def evaluate_and_save(sampler, judge, path, per_class=1000, seed=0, **context):
    """Runs `evaluate_generator` on the judge's held-out digits and writes the results as JSON.

    Args:
        sampler: a `sampler.DigitSampler` (e.g. `DigitSampler.from_gan(gan)`).
        judge: a `judge.Judge`.
        path: the JSON file (e.g. `eval.json`), written atomically.
        per_class, seed: as in `evaluate_generator`.
        **context: more JSON-ready fields to record (model path, data source).

    Returns:
        The results dict of `evaluate_generator`.
    """
    results = evaluate_generator(sampler, judge, per_class=per_class, seed=seed)
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
