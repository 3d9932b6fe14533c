"""The metrics: each formula on cases with a known answer, and the shipped judge on real digits."""

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
from support import tiny_gan

from cgan_keras.data import load_data
from cgan_keras.metrics import judge as judges
from cgan_keras.metrics import report, scores
from cgan_keras.sampler import DigitSampler


@pytest.fixture(scope="module")
def judge():
    return judges.load_judge()


def test_frechet_distance_of_a_distribution_with_itself_is_about_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8))
    assert abs(scores.frechet_distance(features, features)) < 1e-6
    other_sample = rng.normal(size=(20_000, 8))
    assert scores.frechet_distance(rng.normal(size=(20_000, 8)), other_sample) < 0.02


def test_frechet_distance_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference, sample = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    distances = [scores.frechet_distance(reference, sample + shift) for shift in (0, 0.25, 0.5, 1, 2)]
    assert np.all(np.diff(distances) > 0)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # Orthogonal, zero-mean +-1 columns give an exactly diagonal sample covariance.
    basis = scipy.linalg.hadamard(64)[:, 1:4].astype(np.float64)
    mean_a, std_a = np.array([0.0, 1.0, -2.0]), np.array([1.0, 2.0, 0.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0]), np.array([3.0, 0.5, 0.5])
    features_a, features_b = mean_a + basis * std_a, mean_b + basis * std_b
    var_a, var_b = std_a**2 * 64 / 63, std_b**2 * 64 / 63  # np.cov's unbiased estimate
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert scores.frechet_distance(features_a, features_b) == pytest.approx(expected, rel=1e-9)
    one_d = scores.frechet_distance(features_a[:, :1], features_b[:, :1])
    assert one_d == pytest.approx(1 + var_a[0] + var_b[0] - 2 * np.sqrt(var_a[0] * var_b[0]), rel=1e-9)


def test_frechet_distance_handles_dead_features_quietly():
    rng = np.random.default_rng(0)
    features_a, features_b = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    features_a[:, 0] = features_b[:, 0] = 0  # a ReLU unit that never fires: singular covariances
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distance = scores.frechet_distance(features_a, features_b)
    assert np.isfinite(distance) and distance > 0


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="Received: features_a.shape=\\(5, 3\\), features_b.shape=\\(5, 4\\)"):
        scores.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_frechet_distance_retries_with_an_offset_then_fails_loudly(monkeypatch):
    features = np.random.default_rng(0).normal(size=(50, 3))
    sqrtm, products = scipy.linalg.sqrtm, []

    def nan_once(product):
        products.append(product)
        return np.full_like(product, np.nan) if len(products) == 1 else sqrtm(product)

    monkeypatch.setattr(scipy.linalg, "sqrtm", nan_once)
    assert abs(scores.frechet_distance(features, features)) < 1e-4
    offset_diagonal = 2e-6 * np.diagonal(np.cov(features.T)) + 1e-12  # of (S + eI)(S + eI) - S S
    np.testing.assert_allclose(np.diagonal(products[1] - products[0]), offset_diagonal)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda product: product * (1 + 1j))
    with pytest.raises(ValueError, match="large imaginary part"):
        scores.frechet_distance(features, features)


def test_classifier_score_spans_one_to_the_number_of_classes():
    confident_spread = np.eye(10)[np.arange(1000) % 10]
    assert scores.classifier_score(confident_spread) == pytest.approx(10)
    one_class = np.tile([0.05, 0.8, 0.15], (100, 1))
    assert scores.classifier_score(one_class) == pytest.approx(1)


def test_label_accuracy_is_overall_and_per_class():
    probabilities = np.eye(3)[[0, 0, 1, 0]]
    accuracy, per_class = scores.label_accuracy(probabilities, np.array([0, 0, 1, 1]))
    assert accuracy == 0.75
    np.testing.assert_array_equal(per_class, [1.0, 0.5, np.nan])


def test_precision_and_recall_of_a_set_with_itself_are_one():
    features = np.random.default_rng(0).normal(size=(300, 4))
    assert scores.precision_recall(features, features) == (1.0, 1.0)


def test_precision_and_recall_of_distant_sets_are_zero():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 100
    assert scores.precision_recall(real, fake) == (0.0, 0.0)


def test_a_collapsed_generator_has_full_precision_and_no_recall():
    real = np.random.default_rng(0).normal(size=(400, 4))
    collapsed = np.repeat(real[:1], 400, axis=0)  # every fake is the same real-looking point
    precision, recall = scores.precision_recall(real, collapsed)
    assert precision == 1.0 and recall == pytest.approx(1 / 400)


def test_precision_falls_and_recall_holds_as_fakes_leave_part_of_the_manifold():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
    fake[:500] += 50  # half the fakes are far off; the other half still covers the reals
    precision, recall = scores.precision_recall(real, fake)
    assert 0.45 < precision < 0.55 and recall > 0.8
    with pytest.raises(ValueError, match="more than k=3"):
        scores.precision_recall(real[:3], fake)


def test_intra_class_fid_sees_styles_swapped_between_digits_that_fid_forgives():
    rng = np.random.default_rng(0)
    digits = np.repeat([0, 1], 500)
    features = rng.normal(size=(1000, 3)) + np.where(digits[:, None] == 0, -3.0, 3.0)
    swapped = 1 - digits  # the same images, each labelled as the other digit
    assert scores.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    assert scores.intra_class_frechet_distance(features, digits, features, digits) == pytest.approx(0, abs=1e-6)
    assert scores.intra_class_frechet_distance(features, digits, features, swapped) > 30


def test_the_shipped_judge_is_accurate_and_has_its_reference(judge):
    assert judge.accuracy >= 0.993 and judge.info["train"] >= 50_000
    reference = judge.reference
    assert reference["features_a"].shape == reference["features_b"].shape == (5000, 128)
    # Alternate digits of each class: the halves' class counts differ by one at most.
    assert np.abs(np.bincount(reference["labels_a"]) - np.bincount(reference["labels_b"])).max() <= 1
    floors = judge.floors
    assert 0 < floors["fid_floor"] < 2 and 0.8 < floors["precision_floor"] <= 1 and 0.8 < floors["recall_floor"] <= 1


def real_digit_sampler():
    """A 'generator' that serves real builtin digits of the asked class, in [0, 1]."""
    images, labels = load_data("builtin")
    by_class = [(images[labels == digit] + 1) / 2 for digit in range(10)]
    served = np.zeros(10, dtype=int)

    def generate(digits, noise):
        batch = []
        for digit in digits:
            batch.append(by_class[digit][served[digit] % len(by_class[digit])])
            served[digit] += 1
        return np.stack(batch)

    return DigitSampler(generate, latent_dim=1, image_shape=(28, 28, 1), num_classes=10)


def test_real_digits_score_like_real_digits(judge):
    results = report.evaluate_generator(real_digit_sampler(), judge, per_class=200)
    assert results["label_accuracy"] > 0.98 and results["worst_class_accuracy"] > 0.95
    assert results["fid_ratio"] < 3 and results["intra_fid"] < 3 * results["intra_fid_floor"]
    assert results["precision"] > 0.7 and results["recall"] > 0.7
    assert results["generated"] == 2000 and results["fid_samples"] == 5000
    json.dumps(results)
    table = report.format_table(results)
    assert "floor" in table and "precision" in table and "recall" in table


def test_an_untrained_generator_scores_far_from_real(judge):
    results = report.evaluate_generator(DigitSampler.from_gan(tiny_gan(compile=False)), judge, per_class=50)
    assert results["label_accuracy"] < 0.5 and results["fid_ratio"] > 20 and results["recall"] < 0.05


def test_evaluate_generator_rejects_bad_arguments_and_outputs(judge):
    with pytest.raises(ValueError, match="Received: per_class=0"):
        report.evaluate_generator(real_digit_sampler(), judge, per_class=0)
    tanh_range = DigitSampler(
        lambda digits, noise: np.full((len(digits), 28, 28, 1), -1, np.float32), 1, (28, 28, 1), 10
    )
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        report.evaluate_generator(tanh_range, judge, per_class=1)
