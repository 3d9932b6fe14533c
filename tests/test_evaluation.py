import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from conftest import LATENT_DIM, tiny_gan

from cgan_keras import evaluate, evaluation
from cgan_keras import judge as judges
from cgan_keras.data import load_data
from cgan_keras.export import export_generator
from cgan_keras.sampler import DigitSampler


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("judge")


@pytest.fixture(scope="module")
def real_digits():
    """600 builtin MNIST digits, 60 per class: float32 (600, 28, 28, 1) in [-1, 1], int32 (600,)."""
    images, labels = load_data("builtin")
    keep = np.concatenate([np.flatnonzero(labels == digit)[:60] for digit in range(10)])
    return images[keep], labels[keep]


@pytest.fixture(scope="module")
def judge(real_digits, judge_dir):
    """A judge trained for 2 epochs on 540 digits: weak (~57% held out), but a real trained classifier."""
    return judges.load_or_train_judge(*real_digits, "builtin", directory=judge_dir, epochs=2)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    gan = tiny_gan(compile=False)
    return gan, export_generator(gan, tmp_path_factory.mktemp("run") / "generator")


def test_frechet_distance_of_a_distribution_with_itself_is_about_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8))
    assert abs(evaluation.frechet_distance(features, features)) < 1e-6
    other_sample = rng.normal(size=(20_000, 8))
    assert evaluation.frechet_distance(rng.normal(size=(20_000, 8)), other_sample) < 0.02


def test_frechet_distance_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference, sample = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    distances = [evaluation.frechet_distance(reference, sample + shift) for shift in (0, 0.25, 0.5, 1, 2)]
    assert np.all(np.diff(distances) > 0)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # Orthogonal, zero-mean +-1 columns give an exactly diagonal sample covariance.
    basis = scipy.linalg.hadamard(64)[:, 1:4].astype(np.float64)
    mean_a, std_a = np.array([0.0, 1.0, -2.0]), np.array([1.0, 2.0, 0.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0]), np.array([3.0, 0.5, 0.5])
    features_a, features_b = mean_a + basis * std_a, mean_b + basis * std_b
    var_a, var_b = std_a**2 * 64 / 63, std_b**2 * 64 / 63  # np.cov's unbiased estimate
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert evaluation.frechet_distance(features_a, features_b) == pytest.approx(expected, rel=1e-9)
    one_d = evaluation.frechet_distance(features_a[:, :1], features_b[:, :1])
    assert one_d == pytest.approx(1 + var_a[0] + var_b[0] - 2 * np.sqrt(var_a[0] * var_b[0]), rel=1e-9)


def test_frechet_distance_handles_dead_features_quietly():
    rng = np.random.default_rng(0)
    features_a, features_b = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    features_a[:, 0] = features_b[:, 0] = 0  # a ReLU unit that never fires: singular covariances
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distance = evaluation.frechet_distance(features_a, features_b)
    assert np.isfinite(distance) and distance > 0


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="Received: features_a.shape=\\(5, 3\\), features_b.shape=\\(5, 4\\)"):
        evaluation.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_frechet_distance_retries_with_an_offset_then_fails_loudly(monkeypatch):
    features = np.random.default_rng(0).normal(size=(50, 3))
    sqrtm, products = scipy.linalg.sqrtm, []

    def nan_once(product):
        products.append(product)
        return np.full_like(product, np.nan) if len(products) == 1 else sqrtm(product)

    monkeypatch.setattr(scipy.linalg, "sqrtm", nan_once)
    assert abs(evaluation.frechet_distance(features, features)) < 1e-4
    offset_diagonal = 2e-6 * np.diagonal(np.cov(features.T)) + 1e-12  # of (S + eI)(S + eI) - S S
    np.testing.assert_allclose(np.diagonal(products[1] - products[0]), offset_diagonal)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda product: product * (1 + 1j))
    with pytest.raises(ValueError, match="large imaginary part"):
        evaluation.frechet_distance(features, features)


def test_classifier_score_spans_one_to_the_number_of_classes():
    confident_spread = np.eye(10)[np.arange(1000) % 10]
    assert evaluation.classifier_score(confident_spread) == pytest.approx(10)
    one_class = np.tile([0.05, 0.8, 0.15], (100, 1))
    assert evaluation.classifier_score(one_class) == pytest.approx(1)


def test_label_accuracy_is_overall_and_per_class():
    probabilities = np.eye(3)[[0, 0, 1, 0]]
    accuracy, per_class = evaluation.label_accuracy(probabilities, np.array([0, 0, 1, 1]))
    assert accuracy == 0.75
    np.testing.assert_array_equal(per_class, [1.0, 0.5, np.nan])


def test_judge_is_cached_and_reused(real_digits, judge, judge_dir):
    assert judge.path.parent == judge_dir and judge.path.suffix == ".keras"
    info = json.loads(judge.path.with_suffix(".json").read_text())
    assert info["held_out_accuracy"] == judge.accuracy and info["held_out"] == len(judge.held_out_labels) == 60
    modified = judge.path.stat().st_mtime_ns
    again = judges.load_or_train_judge(*real_digits, "builtin", directory=judge_dir, epochs=2)
    assert judge.path.stat().st_mtime_ns == modified
    assert again.classifier is not judge.classifier and again.accuracy == judge.accuracy
    np.testing.assert_allclose(again.predict(judge.held_out_images)[1], judge.predict(judge.held_out_images)[1])
    np.testing.assert_array_equal(again.held_out_labels, judge.held_out_labels)


def test_judge_held_out_digits_are_in_the_unit_range(judge):
    assert judge.held_out_images.dtype == np.float32
    assert judge.held_out_images.min() >= 0 and judge.held_out_images.max() <= 1
    features, probabilities = judge.predict(judge.held_out_images)
    assert features.shape == (60, 128) and probabilities.shape == (60, 10)


def test_label_accuracy_of_real_digits_is_the_judges_accuracy_on_them(judge):
    images, labels = judge.held_out_images, judge.held_out_labels
    per_class = int(np.bincount(labels, minlength=10).max()) + 3  # some classes wrap around
    by_class = [images[labels == digit] for digit in range(10)]
    served = np.zeros(10, dtype=int)

    def real_generate(digits, noise):
        batch = []
        for digit in digits:
            batch.append(by_class[digit][served[digit] % len(by_class[digit])])
            served[digit] += 1
        return np.stack(batch)

    sampler = DigitSampler(real_generate, LATENT_DIM, images.shape[1:], num_classes=10)
    results = evaluation.evaluate_generator(sampler, judge, images, labels, per_class=per_class)
    shown = np.concatenate([by_class[digit][np.arange(per_class) % len(by_class[digit])] for digit in range(10)])
    expected, expected_per_class = evaluation.label_accuracy(
        judge.predict(shown)[1], np.repeat(np.arange(10), per_class)
    )
    assert results["label_accuracy"] == pytest.approx(expected)
    np.testing.assert_allclose(results["per_class_accuracy"], expected_per_class)
    assert results["worst_class_accuracy"] == pytest.approx(min(expected_per_class))
    assert results["judge_accuracy"] == pytest.approx(judge.accuracy)
    assert results["generated"] == 10 * per_class and results["fid_samples"] == 30
    assert 0 < results["fid_floor"] and np.isfinite(results["fid"])
    assert 1 <= results["classifier_score"] <= 10 and 1 <= results["real_classifier_score"] <= 10
    json.dumps(results)
    assert "label accuracy" in evaluation.format_table(results)


def test_evaluate_generator_rejects_bad_arguments_and_outputs(judge):
    images, labels = judge.held_out_images, judge.held_out_labels
    with pytest.raises(ValueError, match="Received: per_class=0"):
        evaluation.evaluate_generator(None, judge, images, labels, per_class=0)

    def tanh_range(digits, noise):
        return np.full((len(digits), 28, 28, 1), -1, np.float32)

    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        sampler = DigitSampler(tanh_range, LATENT_DIM, images.shape[1:], num_classes=10)
        evaluation.evaluate_generator(sampler, judge, images, labels, per_class=1)


def test_cli_writes_eval_json_beside_the_model(saved_model, judge, monkeypatch, capsys):
    _, path = saved_model
    monkeypatch.setattr(judges, "load_or_train_judge", lambda *args, **kwargs: judge)
    evaluate.main(["--model", str(path), "--data", "builtin", "--per-class", "5"])
    printed = capsys.readouterr().out
    assert "data: builtin (5,000 digits)" in printed and "FID floor" in printed
    record = json.loads((path.parent / "eval.json").read_text())
    assert record["model"] == str(path) and record["generated"] == 50 and record["data"] == "builtin"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--per-class", "0"], "--per-class must be a positive integer. Received: --per-class 0"),
        ([], "Expected a SavedModel directory (with saved_model.pb)"),
        (["--data", "digits.txt"], "Unknown data source."),
    ],
)
def test_cli_reports_user_mistakes_in_one_line(saved_model, tmp_path, capsys, arguments, message):
    model = saved_model[1] if arguments else tmp_path  # an empty directory is no SavedModel
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--model", str(model), *arguments])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m cgan_keras.evaluate: error: ") and message in line


def test_cli_exits_2_with_one_line_for_a_missing_model(tmp_path):
    command = [sys.executable, "-m", "cgan_keras.evaluate", "--model", str(tmp_path / "missing")]
    repo = Path(__file__).parents[1]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=repo)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--model" in result.stderr
    assert "Traceback" not in result.stderr
