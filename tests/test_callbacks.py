import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from support import LATENT_DIM, TINY, tiny_gan

from cgan_keras import models
from cgan_keras.callbacks import SampleGridCallback
from cgan_keras.gan import ConditionalGAN


def test_grids_are_written_after_step_one_and_every_hundred_global_steps(tmp_path, digits):
    gan = tiny_gan()
    callback = SampleGridCallback(tmp_path, every=100)
    # 3 epochs of 70 steps: multiples of 100 fall inside epochs, which must not matter.
    gan.fit(*digits, batch_size=16, steps_per_epoch=70, epochs=3, callbacks=[callback], verbose=0)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "step_000001.png",
        "step_000100.png",
        "step_000200.png",
    ]
    with Image.open(tmp_path / "step_000100.png") as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_steps_per_execution_does_not_skip_a_multiple(tmp_path, digits):
    gan = tiny_gan(steps_per_execution=3)
    callback = SampleGridCallback(tmp_path, every=5)
    gan.fit(*digits, batch_size=16, steps_per_epoch=12, epochs=1, callbacks=[callback], verbose=0)
    # Callbacks run after steps 3, 6, 9 and 12: step 1 is passed at 3, step 5 at 6, step 10 at 12.
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "step_000003.png",
        "step_000006.png",
        "step_000012.png",
    ]


def test_an_epochs_short_last_execution_adds_no_grid(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(-1, 1, (160, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 160)
    gan = tiny_gan(steps_per_execution=3)
    callback = SampleGridCallback(tmp_path, every=4)
    # 10 batches an epoch: Keras reports its last execution (step 10 alone) as batch 11, as if step 12 were done.
    gan.fit(images, labels, batch_size=16, epochs=2, callbacks=[callback], verbose=0)
    assert int(gan.optimizer.iterations) == 20
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "step_000003.png", "step_000006.png", "step_000009.png", "step_000013.png", "step_000016.png",
        "step_000020.png"]  # fmt: skip


def test_the_default_grid_takes_a_model_of_five_classes_and_digits_it_lacks_are_refused_before_a_step(tmp_path, digits):
    images, labels = (array[digits[1] < 5] for array in digits)
    gan = ConditionalGAN(
        LATENT_DIM,
        num_classes=5,
        generator=models.build_generator(LATENT_DIM, 5, filters=TINY.generator_filters),
        discriminator=models.build_discriminator(5, filters=TINY.discriminator_filters),
    )
    gan.compile()
    grids = SampleGridCallback(tmp_path, every=100)  # 0..8 by default: after step 1, digit 5 failed the run
    gan.fit(images, labels, batch_size=16, steps_per_epoch=1, epochs=1, callbacks=[grids], verbose=0)
    assert (tmp_path / "step_000001.png").exists()
    with pytest.raises(ValueError, match=r"class indices in 0..4. Received: SampleGridCallback digits\[1\]=7"):
        gan.fit(images, labels, batch_size=16, callbacks=[SampleGridCallback(tmp_path, digits=[1, 7])], verbose=0)
    assert int(gan.optimizer.iterations) == 1


@pytest.mark.parametrize("arguments", [dict(every=0), dict(every=2.5), dict(columns=0), dict(every=True)])
def test_grid_settings_that_cannot_work_are_refused(tmp_path, arguments):
    name, value = next(iter(arguments.items()))
    with pytest.raises(ValueError, match=rf"`{name}` must be a positive integer. Received: {name}={value}"):
        SampleGridCallback(tmp_path, **arguments)
    assert SampleGridCallback(tmp_path, every=np.int64(2)).every == 2  # numpy's integers are integers


def test_the_grid_shows_the_same_fixed_samples_each_time(tmp_path):
    gan = tiny_gan()
    callback = SampleGridCallback(tmp_path, every=1)
    callback.set_model(gan)
    first = np.asarray(Image.open(callback.write_grid(1)))
    second = np.asarray(Image.open(callback.write_grid(2)))
    caption_free = slice(40, None)  # the title row holds the step number
    np.testing.assert_array_equal(first[caption_free], second[caption_free])


def test_standard_keras_callbacks_work_with_the_gan(tmp_path, digits):
    gan = tiny_gan()
    initial_rate = float(gan.optimizer.learning_rate)
    log_dir = tmp_path / "logs"
    history = gan.fit(
        *digits,
        batch_size=16,
        epochs=3,
        verbose=0,
        validation_data=digits,
        callbacks=[
            keras.callbacks.ModelCheckpoint(tmp_path / "best.keras", monitor="val_g_loss", mode="min"),
            keras.callbacks.CSVLogger(tmp_path / "log.csv"),
            keras.callbacks.TensorBoard(log_dir),
            SampleGridCallback(tmp_path / "samples", every=4, log_dir=log_dir),
            keras.callbacks.EarlyStopping(monitor="d_loss", mode="min", patience=0, min_delta=100),
            keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate * 0.5),
        ],
    )
    assert len(history.history["loss"]) == 2  # EarlyStopping: no d_loss improvement of 100
    assert isinstance(keras.models.load_model(tmp_path / "best.keras"), type(gan))
    with open(tmp_path / "log.csv") as rows:
        assert set(next(csv.DictReader(rows))) >= {"epoch", "d_loss", "g_loss", "val_d_loss"}
    np.testing.assert_allclose(float(gan.optimizer.learning_rate), initial_rate * 0.25, rtol=1e-6)
    tags = {
        value.tag
        for event_file in (log_dir / "train").glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(event_file))
        for value in event.summary.value
    }
    assert {"samples", "epoch_d_loss"} <= tags


def test_a_discriminator_schedule_drives_the_other_optimizer(digits):
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=1, decay_rate=0.5)
    gan = tiny_gan(discriminator_optimizer=keras.optimizers.Adam(schedule))
    gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    # Two discriminator updates per step, 4 steps: 8 halvings.
    np.testing.assert_allclose(float(gan.discriminator_optimizer.learning_rate), 1e-3 * 0.5**8, rtol=1e-5)


def test_terminate_on_nan_stops_a_diverged_run(digits):
    images, labels = digits
    gan = tiny_gan(generator_optimizer=keras.optimizers.SGD(1e30))
    gan.fit(images, labels, batch_size=16, epochs=5, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert int(gan.optimizer.iterations) < 20


class CrashAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_backup_and_restore_resumes_weights_and_both_optimizers(tmp_path, digits):
    gan = tiny_gan()
    with pytest.raises(RuntimeError, match="simulated crash"):
        gan.fit(*digits, batch_size=16, epochs=4, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(tmp_path), CrashAtEpoch(2)])  # fmt: skip
    resumed = tiny_gan(seed=1)
    history = resumed.fit(*digits, batch_size=16, epochs=4, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])  # fmt: skip
    assert history.epoch == [2, 3]
    assert int(resumed.optimizer.iterations) == 16  # Adam's count went on from 8
    assert int(resumed.discriminator_optimizer.iterations) == 32


def test_evaluation_callback_logs_judge_scores_at_its_steps(tmp_path, digits):
    from cgan_keras.callbacks import EvaluationCallback
    from cgan_keras.metrics.judge import load_judge

    judge = load_judge()
    gan = tiny_gan()
    callback = EvaluationCallback(judge, every=4, per_class=3)
    history = gan.fit(*digits, batch_size=16, steps_per_epoch=2, epochs=4, verbose=0, callbacks=[callback])
    accuracy = history.history["label_accuracy"]
    assert np.isnan(accuracy[0]) and np.isnan(accuracy[2])  # steps 2 and 6: no evaluation
    assert 0 <= accuracy[1] <= 1 and 0 <= accuracy[3] <= 1  # steps 4 and 8
    assert history.history["fid"][1] > history.history["fid_floor"][1] > 0
    assert 0 <= history.history["recall"][3] <= 1 and history.history["intra_fid"][3] > 0
    assert np.all(np.diff(history.history["train_seconds"]) > 0)


def test_epoch_tensorboard_writes_epoch_scalars_and_skips_per_step_summaries(tmp_path, digits, monkeypatch):
    import tensorflow.summary as summary  # the module keras.callbacks.TensorBoard writes with

    from cgan_keras.callbacks import EpochTensorBoard

    names, scalar = [], summary.scalar
    monkeypatch.setattr(
        summary, "scalar", lambda name, *args, **kwargs: names.append(name) or scalar(name, *args, **kwargs)
    )
    tiny_gan().fit(*digits, batch_size=16, epochs=2, verbose=0, callbacks=[EpochTensorBoard(tmp_path)])
    assert "epoch_d_loss" in names and not [name for name in names if name.startswith("batch_")]
