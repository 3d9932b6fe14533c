import csv
import json
import os
import signal

import keras
import numpy as np
import pytest

from cgan_keras import speed, training
from cgan_keras.callbacks import TrainingDiverged
from cgan_keras.config import TrainConfig

TINY = dict(
    latent_dim=8,
    generator_filters=(8, 4),
    discriminator_filters=(4, 8),
    batch_size=16,
    steps=8,
    log_every=4,
    sample_every=3,
)


class InterruptAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, digits):
    config = TrainConfig(out=str(tmp_path / "run"), **TINY)
    training.prepare_directory(config)
    # Interrupted mid-epoch at step 6, two steps after the checkpoint of step 4.
    with pytest.raises(KeyboardInterrupt):
        training.run(config, *digits, callbacks=[InterruptAtStep(6)], verbose=0)
    assert not (tmp_path / "run" / "generator").exists()
    with open(tmp_path / "run" / "history.csv") as rows:
        assert [row["step"] for row in csv.DictReader(rows)] == ["4"]

    training.prepare_directory(config, resume=True)
    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 8  # continued from 4, not from 0 and not past 8
    assert int(gan.discriminator_optimizer.iterations) == 16
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "progress.png",
        "step_000001.png",
        "step_000003.png",
        "step_000006.png",
    ]
    assert (run / "history.png").exists()
    with open(run / "history.csv") as rows:
        assert [(row["epoch"], row["step"]) for row in csv.DictReader(rows)] == [("0", "4"), ("1", "8")]
    assert (run / "generator" / "saved_model.pb").exists()
    assert (run / "generator.keras").exists() and (run / "gan.keras").exists()


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path):
    config = TrainConfig(out=str(tmp_path), **TINY)
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(training.RunDirectoryError, match="--resume .* --overwrite"):
        training.prepare_directory(config)
    training.prepare_directory(config, overwrite=True)
    assert not (tmp_path / "keep.txt").exists()
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_resume_refuses_different_settings(tmp_path):
    training.prepare_directory(TrainConfig(out=str(tmp_path), **TINY))
    with pytest.raises(training.RunDirectoryError, match="batch_size: saved 16, now 32"):
        training.prepare_directory(TrainConfig(out=str(tmp_path), **{**TINY, "batch_size": 32}), resume=True)


def test_seed_preset_builds_the_tutorial_networks():
    gan = training.build_gan(TrainConfig.from_preset("seed"))
    assert gan.latent_dim == 96
    assert [layer.filters for layer in gan.generator.layers if hasattr(layer, "filters")] == [384, 192, 96, 1]
    assert isinstance(gan.discriminator_optimizer, keras.optimizers.Adadelta)
    assert np.isclose(gan.discriminator_optimizer.rho, 0.92) and gan.discriminator_optimizer.clipvalue == 1.0


class SignalAtStep(keras.callbacks.Callback):
    def __init__(self, step, signum):
        super().__init__()
        self.step, self.signum = step, signum

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_step_saves_everything_and_resume_finishes_exactly(tmp_path, digits, signum):
    config = TrainConfig(out=str(tmp_path), **TINY)
    training.prepare_directory(config)
    # Whatever was installed before (a background job inherits SIGINT ignored) is what must be back.
    handlers_before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(training.Interrupted) as stopped:
        training.run(config, *digits, callbacks=[SignalAtStep(5, signum)], verbose=0)
    assert stopped.value.signum == signum
    assert {number: signal.getsignal(number) for number in handlers_before} == handlers_before
    generator = keras.models.load_model(tmp_path / "generator.keras")  # the generator after 5 steps
    assert generator.name == "generator"

    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 8  # 5 done, then the 3 left: 6, 7, 8
    with open(tmp_path / "history.csv") as rows:
        assert [row["step"] for row in csv.DictReader(rows)] == ["4", "5", "8"]


def test_steps_that_log_every_does_not_divide_end_with_a_shorter_row_and_resume(tmp_path, digits):
    config = TrainConfig(out=str(tmp_path), **{**TINY, "steps": 10})  # rows at 4, 8, then 10
    training.prepare_directory(config)
    with pytest.raises(training.Interrupted):
        training.run(config, *digits, callbacks=[SignalAtStep(9, signal.SIGINT)], verbose=0)
    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 10
    with open(tmp_path / "history.csv") as rows:
        assert [(row["epoch"], row["step"]) for row in csv.DictReader(rows)] == [
            ("0", "4"), ("1", "8"), ("2", "9"), ("2", "10")
        ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "samples").glob("step_*.png")) == [
        "step_000001.png", "step_000003.png", "step_000006.png", "step_000009.png"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "done, steps, expected",
    [
        (0, 150, [(0, 1, 100), (1, 2, 50)]),
        (120, 150, [(1, 2, 30)]),
        (50, 250, [(0, 1, 50), (1, 2, 100), (2, 3, 50)]),
        (0, 101, [(0, 1, 100), (1, 2, 1)]),
        (0, 30, [(0, 1, 30)]),
        (150, 150, []),
    ],
)
def test_epochs_to_run_covers_exactly_the_steps_left(done, steps, expected):
    assert list(training._epochs_to_run(done, steps, 100)) == expected


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    config = TrainConfig(out=str(tmp_path), **{**TINY, "generator_learning_rate": 1e30, "optimizer": "adam"})
    training.prepare_directory(config)
    with pytest.raises(TrainingDiverged, match="the loss became nan"):
        training.run(config, *digits, verbose=0)
    assert not (tmp_path / "generator").exists()


def test_the_same_seed_trains_bit_identical_generators(tmp_path, digits):
    def train(name):
        config = TrainConfig(out=str(tmp_path / name), **TINY)
        training.prepare_directory(config)
        gan, _ = training.run(config, *digits, verbose=0)
        return [weight.numpy() for weight in gan.generator.weights]

    for first, second in zip(train("a"), train("b"), strict=True):
        np.testing.assert_array_equal(first, second)


def test_timing_xla_first_leaves_the_run_exactly_as_without_timing(tmp_path, digits, monkeypatch):
    for name, value in (("MEASURE_MIN_STEPS", 1), ("WARMUP_STEPS", 1), ("TIMED_STEPS", 2)):
        monkeypatch.setattr(speed, name, value)
    auto = TrainConfig(out=str(tmp_path / "auto"), **TINY)
    training.prepare_directory(auto)
    timed, _ = training.run(auto, *digits, verbose=0)
    choice = json.loads((tmp_path / "auto" / "speed.json").read_text())
    assert choice["reason"] == "measured" and choice["xla_seconds"] > 0 and choice["plain_seconds"] > 0
    assert timed.jit_compile is choice["jit_compile"]

    forced = TrainConfig(
        out=str(tmp_path / "forced"), **{**TINY, "jit_compile": "on" if choice["jit_compile"] else "off"}
    )
    training.prepare_directory(forced)
    untimed, _ = training.run(forced, *digits, verbose=0)
    for first, second in zip(timed.generator.weights, untimed.generator.weights, strict=True):
        np.testing.assert_array_equal(first.numpy(), second.numpy())
