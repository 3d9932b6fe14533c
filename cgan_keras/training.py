"""One training run from a `TrainConfig`: model, callbacks, `fit`, artifacts.

`train.py` is a thin CLI over `run`; the same function serves notebooks and
tests. Layout of a run directory:

    config.json       every hyperparameter (written first)
    samples/          step_000001.png, step_000100.png, ...
    history.csv       one row per `log_every` steps (Keras epoch)
    logs/             TensorBoard: the same scalars, and the sample grids as images
    checkpoints/      step_000400.keras, ...: the last two resumable states, saved every
                      `log_every` steps and on SIGINT/SIGTERM
    generator/        SavedModel (serving_default: digit, noise -> images)
    generator.keras   the generator as a Keras file
    gan.keras         the whole ConditionalGAN, optimizers included
    eval.json         the judge's scores of the final generator (with a judge)
    .lock             `run_lock.RunLock`'s file: one run at a time in the directory
"""

import dataclasses
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from cgan_keras import artifacts, data, distribute, evaluation, export, models, run_lock
from cgan_keras.callbacks import (
    DivergenceGuard,
    EvaluationCallback,
    GracefulStop,
    HistoryCSV,
    RunCheckpoint,
    SampleGridCallback,
    global_step,
)
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked (exists, or differs on resume)."""


def build_gan(config, strategy=None):
    """Builds and compiles the `ConditionalGAN` that `config` describes.

    Args:
        config: a `TrainConfig`.
        strategy: the `tf.distribute` strategy to build under (its scope
            holds the weights, optimizers and metrics); `None` is the default.
    """
    strategy = strategy or tf.distribute.get_strategy()
    # With several replicas, BatchNorm shares its batch statistics so that N
    # replicas of batch B/N train as one device of batch B would.
    synchronized = strategy.num_replicas_in_sync > 1
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(
        distribute.mixed_precision_policy() if config.mixed_precision else "float32"
    )
    try:
        with strategy.scope():
            if config.preset == "seed":
                generator = models.build_generator(
                    config.latent_dim,
                    filters=config.generator_filters,
                    batch_norm_scale=False,
                    synchronized_batch_norm=synchronized,
                )
                discriminator = models.build_seed_discriminator(
                    filters=config.discriminator_filters, synchronized_batch_norm=synchronized
                )
            else:
                generator = models.build_generator(
                    config.latent_dim, filters=config.generator_filters, synchronized_batch_norm=synchronized
                )
                discriminator = models.build_discriminator(
                    filters=config.discriminator_filters, projection=config.projection
                )
            gan = ConditionalGAN(config.latent_dim, generator=generator, discriminator=discriminator, seed=config.seed)
            gan.compile(
                generator_optimizer=_optimizer(config, config.generator_learning_rate),
                discriminator_optimizer=_optimizer(config, config.discriminator_learning_rate),
                label_smoothing=config.label_smoothing,
                jit_compile=config.jit_compile,
            )
    finally:
        # Only the GAN's layers take the policy; a judge built later stays float32.
        keras.mixed_precision.set_global_policy(previous_policy)
    return gan


def _optimizer(config, learning_rate):
    if config.optimizer == "adadelta":
        # The seed's AdaDelta: rho 0.92, epsilon 1e-6, each gradient element clipped to [-1, 1].
        return keras.optimizers.Adadelta(learning_rate, rho=0.92, epsilon=1e-6, clipvalue=1.0)
    return keras.optimizers.Adam(learning_rate, beta_1=config.beta_1)


def prepare_directory(config, resume=False, overwrite=False):
    """Makes `config.out` ready for the run, refusing to lose earlier work.

    An existing non-empty directory is an error unless `resume` (the saved
    `config.json` must then match `config`; what killed writes left behind is
    removed) or `overwrite` (its contents are deleted, except the lock file of
    a `run_lock.RunLock`, which must stay the file its holder locked).

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
        artifacts.remove_partial(out)
        return
    entries = [entry for entry in out.iterdir() if entry.name != run_lock.LOCK_NAME] if out.is_dir() else []
    if entries:
        if not overwrite:
            raise RunDirectoryError(
                f"--out {out} is not empty; pass --resume to continue that run or --overwrite to replace it."
            )
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")


class Interrupted(Exception):
    """Training stopped on a signal; the checkpoint and the artifacts so far are written."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signum.name}")
        self.signum = signum


def run(config, images, labels, judge=None, strategy=None, resume=False, callbacks=(), verbose=1):
    """Trains a `ConditionalGAN` on `images`/`labels` and writes the run's artifacts.

    Call `prepare_directory` first. With `resume`, training continues from
    the newest readable checkpoint in `config.out/checkpoints/` (both
    networks, both optimizers, the step counter and the noise generator's
    state), saved every `config.log_every` steps and on SIGINT/SIGTERM. A run stopped by a
    signal finishes its step, saves the checkpoint, exports the generator
    trained so far, then raises `Interrupted`.

    Args:
        config: the run's `TrainConfig`.
        images: float32 `(N, 28, 28, 1)` in [-1, 1].
        labels: int32 `(N,)` in 0..9.
        judge: a `judge.Judge`; with one, the run is scored every
            `config.eval_every` steps (into `history.csv`) and at the end
            (into `eval.json`).
        strategy: the `tf.distribute` strategy (`distribute.make_strategy`);
            `config.batch_size` is the global batch, split across replicas.
        resume: continue from the checkpoint if one exists.
        callbacks: more Keras callbacks, run after the run's own.
        verbose: Keras `fit` verbosity (1: progress bar).

    Returns:
        `(gan, results)`: the trained model and the final evaluation (`None`
        without a judge).

    Raises:
        Interrupted: SIGINT or SIGTERM arrived.
        TrainingDiverged: the loss became NaN or infinite; the last
            checkpoint (from before) is kept and nothing is exported.
        CheckpointError: `resume`, and no checkpoint can be read.
        ArtifactWriteError: an artifact could not be written (e.g. a full
            disk); the complete artifacts from before are kept.
    """
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out)
    gan = build_gan(config, strategy)
    checkpoint = RunCheckpoint(out / "checkpoints")
    restored = checkpoint.restore(gan) if resume else None
    done = global_step(gan)
    if restored and verbose:
        skipped = "".join(f"; skipped unreadable {path.name} ({problem})" for path, problem in checkpoint.skipped)
        print(f"resuming from {restored} (step {done}){skipped}")
    dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
    with GracefulStop() as stop:
        evaluations = (
            [EvaluationCallback(judge, config.eval_every, seed=config.seed)] if judge and config.eval_every else []
        )
        fit_callbacks = [
            DivergenceGuard(),
            SampleGridCallback(out / "samples", every=config.sample_every, seed=config.seed, log_dir=out / "logs"),
            *evaluations,  # before HistoryCSV and TensorBoard, which write the scores they add to the logs
            HistoryCSV(out / "history.csv"),
            keras.callbacks.TensorBoard(out / "logs"),
            checkpoint,
            stop,
            *callbacks,
        ]
        for initial_epoch, epochs, steps_per_epoch in _epochs_to_run(done, config.steps, config.log_every):
            if stop.received:
                break
            gan.fit(
                dataset,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=fit_callbacks,
                shuffle=False,  # make_dataset shuffles with the run's seed
                verbose=verbose,
            )
        export.export_generator(gan, out / "generator")
        export.save_model(gan.generator, out / "generator.keras")
        export.save_model(gan, out / "gan.keras")
        if stop.received:
            raise Interrupted(stop.received)
        results = None
        if judge is not None:
            generate, latent_dim = evaluation.generator_from_model(gan)
            results = evaluation.evaluate_and_save(
                generate, latent_dim, judge, out / "eval.json", seed=config.seed, data=config.data
            )
    return gan, results


def _epochs_to_run(done, steps, log_every):
    """Splits the steps left into `fit` calls: `(initial_epoch, epochs, steps_per_epoch)`.

    Epoch `e` covers steps `(e * log_every, (e + 1) * log_every]`. A run
    resumed mid-epoch first finishes that epoch with a shorter `fit`.
    """
    if done % log_every and done < steps:
        yield done // log_every, done // log_every + 1, log_every - done % log_every
    first_full_epoch = -(-done // log_every)
    if first_full_epoch < steps // log_every:
        yield first_full_epoch, steps // log_every, log_every
