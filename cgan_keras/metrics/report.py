"""Scoring a generator with the judge: one dict of figures, a JSON record, a printed table.

Every score compares generated digits with the judge's held-out real digits
(half A, 5,000 digits) and is printed beside its floor: the same score of
real half B against A, at the same sample sizes. FID is biased by sample size
and precision/recall depend on it, so a score means something only beside
its floor.
"""

import json

import numpy as np

from cgan_keras.artifacts import atomic_path
from cgan_keras.metrics import scores

KEYS = (
    "label_accuracy",
    "worst_class_accuracy",
    "fid",
    "fid_floor",
    "intra_fid",
    "intra_fid_floor",
    "precision",
    "recall",
    "classifier_score",
)


def evaluate_generator(sampler, judge, per_class=1000, seed=0, truncation=None):
    """Scores a generator against the real digits the judge never trained on.

    Generates `per_class` digits of each class for the label accuracy and the
    classifier score, and one digit per real digit of half B (same labels, so
    the same class mix) for FID, intra-class FID and precision/recall against
    half A.

    Args:
        sampler: a `sampler.DigitSampler` (`sampler(digits, seed)` -> float32
            `(N, 28, 28, 1)` in [0, 1]).
        judge: a `judge.Judge`.
        per_class: generated digits of each class for the label accuracy.
        seed: seed of the generator's noise.
        truncation: None, or `t >= sampler.MIN_TRUNCATION`: noise from a normal truncated at +-t
            (the truncation trick: typically higher precision, lower recall).

    Returns:
        A JSON-ready dict: every name of `KEYS`, `fid_ratio` (FID / floor),
        `precision_floor`, `recall_floor`, `per_class_accuracy` (list),
        `worst_class`, `real_classifier_score`, `judge_accuracy`,
        `generated`, `fid_samples` (digits per side), `seed`, `truncation`.
    """
    if per_class < 1:
        raise ValueError(f"`per_class` must be a positive integer. Received: per_class={per_class!r}")
    reference = judge.reference
    asked = np.repeat(np.arange(judge.classifier.output_shape[-1], dtype=np.int32), per_class)
    matched = reference["labels_b"]
    images = np.asarray(sampler(np.concatenate([asked, matched]), seed=seed, truncation=truncation))
    expected_shape = (len(asked) + len(matched), *judge.classifier.input_shape[1:])
    if images.shape != expected_shape:
        raise ValueError(f"The sampler must return images of shape {expected_shape}. Received: shape={images.shape}")
    if not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"The sampler must return images in [0, 1]. Received: min={images.min()}, max={images.max()}")
    features, probabilities = judge.predict(images)
    accuracy, per_class_accuracy = scores.label_accuracy(probabilities[: len(asked)], asked)
    fake_features = features[len(asked) :]
    worst_class = int(np.argmin(per_class_accuracy))
    precision, recall = scores.precision_recall(reference["features_a"], fake_features)
    floors = judge.floors
    fid = scores.frechet_distance(reference["features_a"], fake_features)
    return {
        "label_accuracy": accuracy,
        "per_class_accuracy": per_class_accuracy.tolist(),
        "worst_class": worst_class,
        "worst_class_accuracy": float(per_class_accuracy[worst_class]),
        "fid": fid,
        "fid_ratio": fid / floors["fid_floor"],
        "intra_fid": scores.intra_class_frechet_distance(
            reference["features_a"], reference["labels_a"], fake_features, matched
        ),  # fmt: skip
        "precision": precision,
        "recall": recall,
        **floors,
        "classifier_score": scores.classifier_score(probabilities[: len(asked)]),
        "real_classifier_score": judge.info["real_classifier_score"],
        "judge_accuracy": judge.accuracy,
        "generated": len(asked),
        "fid_samples": len(matched),
        "seed": seed,
        "truncation": truncation,
    }


def evaluate_and_save(sampler, judge, path, per_class=1000, seed=0, truncation=None, **context):
    """Runs `evaluate_generator` and writes its results, with `context`, as JSON to `path` (atomically).

    Args:
        sampler, judge, per_class, seed, truncation: as in `evaluate_generator`.
        path: the JSON file (e.g. `eval.json`).
        **context: more JSON-ready fields to record (model path, data source).

    Returns:
        The results dict of `evaluate_generator`.
    """
    results = evaluate_generator(sampler, judge, per_class=per_class, seed=seed, truncation=truncation)
    record = {**context, "judge": judge.info, **results}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
    return results


def format_table(results):
    """Formats `evaluate_generator`'s results as an aligned table: each score beside its real-vs-real floor."""
    per_class = enumerate(results["per_class_accuracy"])
    samples = f"{results['fid_samples']:,} vs {results['fid_samples']:,} digits"
    rows = [
        (
            "label accuracy",
            f"{results['label_accuracy']:.2%} of {results['generated']:,} generated digits "
            f"(judge on real digits: {results['judge_accuracy']:.2%})",
        ),  # fmt: skip
        ("per class", " ".join(f"{digit}:{accuracy:.1%}" for digit, accuracy in per_class)),
        ("worst class", f"{results['worst_class']} ({results['worst_class_accuracy']:.2%})"),
        (
            "FID",
            f"{results['fid']:.3f}, {results['fid_ratio']:.2f}x the real-vs-real floor "
            f"{results['fid_floor']:.3f} ({samples})",
        ),  # fmt: skip
        ("intra-class FID", f"{results['intra_fid']:.3f} (floor {results['intra_fid_floor']:.3f})"),
        ("precision", f"{results['precision']:.3f} (real: {results['precision_floor']:.3f})"),
        ("recall", f"{results['recall']:.3f} (real: {results['recall_floor']:.3f})"),
        ("classifier score", f"{results['classifier_score']:.3f} (real: {results['real_classifier_score']:.3f})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
