"""One training run from a `TrainConfig`: model, callbacks, `fit`, artifacts.

`train.py` is a thin CLI over `run`; the same function serves notebooks and
tests. Layout of a run directory:

    config.json       every hyperparameter (written first)
    samples/          step_000001.png, step_000100.png, ...
    history.csv       one row per `log_every` steps (Keras epoch)
    checkpoint/       resumable state, saved every `log_every` steps, while the run is unfinished
    generator/        SavedModel (serving_default: digit, noise -> images)
    generator.keras   the generator as a Keras file
    gan.keras         the whole ConditionalGAN, optimizers included
"""

import dataclasses
import shutil
from pathlib import Path

import keras

from cgan_keras import data, export, models
from cgan_keras.callbacks import SampleGridCallback
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked (exists, or differs on resume)."""


def build_gan(config):
    """Builds and compiles the `ConditionalGAN` that `config` describes."""
    if config.preset == "seed":
        generator = models.build_generator(config.latent_dim, filters=config.generator_filters, batch_norm_scale=False)
        discriminator = models.build_seed_discriminator(filters=config.discriminator_filters)
    else:
        generator = models.build_generator(config.latent_dim, filters=config.generator_filters)
        discriminator = models.build_discriminator(filters=config.discriminator_filters)
    gan = ConditionalGAN(config.latent_dim, generator=generator, discriminator=discriminator, seed=config.seed)
    gan.compile(
        generator_optimizer=_optimizer(config, config.generator_learning_rate),
        discriminator_optimizer=_optimizer(config, config.discriminator_learning_rate),
        label_smoothing=config.label_smoothing,
        jit_compile=config.jit_compile,
    )
    return gan


def _optimizer(config, learning_rate):
    if config.optimizer == "adadelta":
        # The seed's AdaDelta: rho 0.92, epsilon 1e-6, each gradient element clipped to [-1, 1].
        return keras.optimizers.Adadelta(learning_rate, rho=0.92, epsilon=1e-6, clipvalue=1.0)
    return keras.optimizers.Adam(learning_rate, beta_1=config.beta_1)


def prepare_directory(config, resume=False, overwrite=False):
    """Makes `config.out` ready for the run, refusing to lose earlier work.

    An existing non-empty directory is an error unless `resume` (the saved
    `config.json` must then match `config`) or `overwrite` (it is deleted).

    Raises:
        RunDirectoryError: with a message that says which flag to use.
    """
    out = Path(config.out)
    saved_config = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} exists and is not a directory.")
    if resume and saved_config.exists():
        saved = TrainConfig.load(saved_config)
        differing = [
            f"{field.name}: saved {getattr(saved, field.name)!r}, now {getattr(config, field.name)!r}"
            for field in dataclasses.fields(TrainConfig)
            if getattr(saved, field.name) != getattr(config, field.name)
        ]
        if differing:
            raise RunDirectoryError(f"--resume needs the same settings as the run in {out}; " + "; ".join(differing))
        return
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"--out {out} is not empty; pass --resume to continue that run or --overwrite to replace it."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")


def run(config, images, labels, resume=False, callbacks=(), verbose=1):
    """Trains a `ConditionalGAN` on `images`/`labels` and writes the run's artifacts.

    Call `prepare_directory` first. With `resume`, training continues from the
    last checkpoint in `config.out/checkpoint` (weights, both optimizers, the
    step counter and the noise generator's state).

    Args:
        config: the run's `TrainConfig`.
        images: float32 `(N, 28, 28, 1)` in [-1, 1].
        labels: int32 `(N,)` in 0..9.
        resume: continue from the checkpoint if one exists.
        callbacks: more Keras callbacks, run after the run's own.
        verbose: Keras `fit` verbosity (1: progress bar).

    Returns:
        `(gan, history)`: the trained model and `fit`'s `History`.
    """
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out)
    gan = build_gan(config)
    dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
    callbacks = [
        # First, so that the callbacks after it see the restored step counter.
        # Saved at epoch ends only: Keras 3 restarts an epoch from its first
        # batch on restore, so only an epoch-end checkpoint resumes exactly.
        keras.callbacks.BackupAndRestore(
            out / "checkpoint", save_freq="epoch", double_checkpoint=True, delete_checkpoint=False
        ),
        SampleGridCallback(out / "samples", every=config.sample_every, seed=config.seed),
        keras.callbacks.CSVLogger(out / "history.csv", append=resume),
        keras.callbacks.TerminateOnNaN(),
        *callbacks,
    ]
    history = gan.fit(
        dataset,
        epochs=config.steps // config.log_every,
        steps_per_epoch=config.log_every,
        callbacks=callbacks,
        shuffle=False,  # make_dataset shuffles with the run's seed
        verbose=verbose,
    )
    export.export_generator(gan, out / "generator")
    export.save_model(gan.generator, out / "generator.keras")
    export.save_model(gan, out / "gan.keras")
    # Kept until every artifact is complete, so a kill during export still resumes.
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return gan, history
