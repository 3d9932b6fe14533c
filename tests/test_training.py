import csv

import keras
import numpy as np
import pytest

from cgan_keras import training
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

    training.prepare_directory(config, resume=True)
    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 8  # continued from 4, not from 0 and not past 8
    assert int(gan.discriminator_optimizer.iterations) == 16
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "step_000001.png",
        "step_000003.png",
        "step_000006.png",
    ]
    with open(run / "history.csv") as rows:
        assert [row["epoch"] for row in csv.DictReader(rows)] == ["0", "1"]
    assert (run / "generator" / "saved_model.pb").exists()
    assert (run / "generator.keras").exists() and (run / "gan.keras").exists()
    assert not (run / "checkpoint").exists()


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
