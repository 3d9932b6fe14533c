"""One training run from a `TrainConfig`: model, callbacks, `fit`, artifacts.

`train.py` is a thin CLI over `run`; the same function serves notebooks and
tests. Layout of a run directory:

    config.json       every hyperparameter (written first)
    speed.json        XLA or not and the precision policy, with the timings behind them (`speed.py`)
    samples/          step_000001.png, step_000100.png, ..., and progress.png (a few of them side by side)
    history.csv       one row per `log_every` steps (Keras epoch)
    history.png       history.csv's losses and evaluations against the step
    logs/             TensorBoard: the same scalars, and the sample grids as images
    checkpoints/      step_000500.keras, ...: the last two resumable states, saved every
                      `checkpoint_every` steps, at the end and on SIGINT/SIGTERM
    generator/        SavedModel (serving_default: digit, noise -> images; generate: digit, seed -> images)
    serving/cgan/1/   the same SavedModel, laid out for TF Serving (model base path serving/cgan)
    generator.onnx    the generator as ONNX (digit, noise -> images), for onnxruntime
    generator.keras   the generator as a Keras file
    gan.keras         the whole ConditionalGAN, optimizers included
    eval.json         the judge's scores of the final generator (with a judge)
    .lock             `run_lock.RunLock`'s file: one run at a time in the directory
"""

import contextlib
import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from cgan_keras import artifacts, data, distribute, export, loop, models, plot, run_lock, speed, timing_process
from cgan_keras.callbacks import (
    DivergenceGuard,
    EpochTensorBoard,
    EvaluationCallback,
    GracefulStop,
    HistoryCSV,
    RunCheckpoint,
    SampleGridCallback,
    global_step,
)
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN, recipe_optimizer
from cgan_keras.metrics import report
from cgan_keras.sampler import DigitSampler


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked (exists, or differs on resume)."""


def build_gan(config, strategy=None, jit_compile=None, policy=None):
    """Builds and compiles the `ConditionalGAN` that `config` describes.

    Args:
        config: a `TrainConfig`.
        strategy: the `tf.distribute` strategy to build under (its scope
            holds the weights, optimizers and metrics); `None` is the default.
        jit_compile: compile the step with XLA; `None` follows
            `config.jit_compile`, where `auto` means off (only `run` times it).
        policy: the layers' dtype policy; `None` follows `config.mixed_precision`
            (`distribute.mixed_precision_policy`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    # With several replicas, BatchNorm shares its batch statistics so that N
    # replicas of batch B/N train as one device of batch B would.
    synchronized = strategy.num_replicas_in_sync > 1
    # Only the GAN's layers take the policy; a judge built later stays float32.
    with models.policy_scope(policy or distribute.mixed_precision_policy(config.mixed_precision)), strategy.scope():
        if config.preset == "seed":
            generator = models.build_generator(
                config.latent_dim,
                filters=config.generator_filters,
                batch_norm_scale=False,
                synchronized_batch_norm=synchronized,
                digit_at_every_scale=config.digit_at_every_scale,
            )
            discriminator = models.build_seed_discriminator(
                filters=config.discriminator_filters, synchronized_batch_norm=synchronized
            )
        else:
            generator = models.build_generator(
                config.latent_dim,
                filters=config.generator_filters,
                synchronized_batch_norm=synchronized,
                digit_at_every_scale=config.digit_at_every_scale,
            )
            discriminator = models.build_discriminator(
                filters=config.discriminator_filters, projection=config.projection
            )
        gan = ConditionalGAN(
            config.latent_dim,
            generator=generator,
            discriminator=discriminator,
            ema_decay=config.ema_decay,
            ema_statistics_every=config.ema_statistics_every,
            seed=config.seed,
        )
        gan.compile(
            generator_optimizer=recipe_optimizer(config, "generator"),
            discriminator_optimizer=recipe_optimizer(config, "discriminator"),
            label_smoothing=config.label_smoothing,
            r1_gamma=config.r1_gamma,
            r1_every=config.r1_every,
            r1_interval=config.r1_interval,
            loss=keras.losses.Hinge() if config.loss == "hinge" else keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=config.jit_compile == "on" if jit_compile is None else jit_compile,
        )
    return gan


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
        try:
            saved = TrainConfig.load(saved_config)
        except (OSError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError; unknown keys a TypeError
            raise RunDirectoryError(
                f"--resume: {saved_config} cannot be read ({artifacts.first_line(error)}); "
                "pass --overwrite to start again"
            ) from error
        # `out` is where the run lives, not how it trains: a run directory moved or copied resumes.
        differing = [
            f"{field.name}: saved {getattr(saved, field.name)!r}, now {getattr(config, field.name)!r}"
            for field in dataclasses.fields(TrainConfig)
            if field.name != "out" and getattr(saved, field.name) != getattr(config, field.name)
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
    """Training stopped on a signal; the checkpoint and the artifacts so far are written.

    `saved_here` says whether this process wrote them to `config.out`: false on
    the workers of a multi-worker run other than the chief, which writes them.
    On the workers of a multi-worker run that the signal did not reach (they
    stopped with the one it did), the message says it was sent to another worker.
    """

    def __init__(self, signum, saved_here=True, here=True):
        super().__init__(f"stopped by {signum.name}" + ("" if here else " (sent to another worker)"))
        self.signum = signum
        self.saved_here = saved_here


def run(
    config, images, labels, judge=None, strategy=None, resume=False, callbacks=(), verbose=1, log=None, xla_timing=None
):
    """Trains a `ConditionalGAN` on `images`/`labels` and writes the run's artifacts.

    Call `prepare_directory` first. With `resume`, training continues from
    the newest readable checkpoint in `config.out/checkpoints/` (both
    networks, both optimizers, the step counter and the noise generator's
    state), saved every `config.checkpoint_every` steps, at the end and on SIGINT/SIGTERM. A run stopped by a
    signal finishes its step, saves the checkpoint, exports the generator
    trained so far, then raises `Interrupted`.

    Under a `MultiWorkerMirroredStrategy` every worker calls `run` with the
    same arguments and trains through `loop.DistributedLoop` (Keras' `fit`
    fails there). Only the chief (worker 0) writes to `config.out`; the other
    workers resume from the chief's checkpoint (so `config.out` must be
    readable by all) and save to a temporary directory deleted at the end.

    First the run settles XLA and the precision policy (`speed.choose`;
    with `--jit-compile auto` and at least `timing_process.MEASURE_MIN_STEPS` steps it
    times both ways on throwaway models, on a CPU the XLA one in a child
    process, and with `--mixed-precision auto` on a CPU that computes in
    bfloat16 natively the plain step in both precisions) and records them in
    `config.out/speed.json`; a resumed run reuses that record.

    Args:
        config: the run's `TrainConfig`.
        images: float32 `(N, 28, 28, 1)` in [-1, 1].
        labels: int32 `(N,)` in 0..9.
        judge: a `metrics.judge.Judge`; with one, the run is scored every
            `config.eval_every` steps (into `history.csv`) and at the end
            (into `eval.json`).
        strategy: the `tf.distribute` strategy (`distribute.make_strategy`);
            `config.batch_size` is the global batch, split across replicas.
        resume: continue from the checkpoint if one exists.
        callbacks: more Keras callbacks, run after the run's own.
        verbose: Keras `fit` verbosity (1: progress bar).
        log: a function given the run's one-line notices (the XLA and
            precision choice, the checkpoint resumed from), e.g. `print`;
            `None` says nothing.
        xla_timing: a `timing_process.TimingProcess` started earlier for
            `config` (`train.py` starts one before importing TensorFlow, so
            that its start overlaps the run's); `run` has it time XLA if it
            times XLA on a CPU, else starts one then, and closes it either way.

    Returns:
        `(gan, results)`: the trained model and the final evaluation (`None`
        without a judge).

    Raises:
        Interrupted: SIGINT or SIGTERM arrived, here or at another worker.
        loop.WorkerLost: another worker stopped (multi-worker training only).
        TrainingDiverged: the loss became NaN or infinite; the last
            checkpoint (from before) is kept and nothing is exported.
        CheckpointError: `resume`, and no checkpoint can be read.
        ArtifactWriteError: an artifact could not be written (e.g. a full
            disk); the complete artifacts from before are kept.
    """
    out = Path(config.out)
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    chief = loop.is_chief(strategy)
    # Timed before the seed is set: the throwaway models' draws do not shift the run's.
    try:
        choice = speed.choose(
            config,
            functools.partial(time_candidates, config, images, labels, strategy, xla_timing),
            out / "speed.json" if chief else None,
            resume,
            # Timing runs `fit`, which fails with several workers, and each worker would
            # time for itself: there `auto` decides untimed, the same on every worker.
            can_time=not multiworker,
        )
    finally:
        if xla_timing is not None:
            xla_timing.close()
    log = log or (lambda line: None)
    log(choice.summary())
    keras.utils.set_random_seed(config.seed)
    gan = build_gan(config, strategy, jit_compile=choice.jit_compile, policy=choice.policy)
    # Every worker resumes from the chief's checkpoints (the run directory must be shared storage).
    resumed_from = RunCheckpoint(out / "checkpoints")
    restored = resumed_from.restore(gan) if resume else None
    done = global_step(gan)
    if restored:
        skipped = "".join(f"; skipped unreadable {path.name} ({problem})" for path, problem in resumed_from.skipped)
        log(f"resuming from {restored} (step {done}){skipped}")
    elif resume:  # e.g. a run killed before its first checkpoint, or a mistyped --out
        log(f"--resume: no checkpoint in {out / 'checkpoints'}; training from step 0")
    distributed = (
        loop.DistributedLoop(gan, strategy, images, labels, config.batch_size, config.seed) if multiworker else None
    )

    def fit(**arguments):
        if multiworker:
            return distributed.fit(**arguments)
        # Each `fit` starts a new iterator: the batches go on from the step reached, as if it had never stopped.
        dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed, skip_batches=global_step(gan))
        return gan.fit(dataset, shuffle=False, **arguments)  # make_dataset shuffles with the run's seed

    with GracefulStop() as stop, _writable_directory(out, chief) as out:
        checkpoint = RunCheckpoint(out / "checkpoints", every=config.checkpoint_every)
        evaluations = (
            [EvaluationCallback(judge, config.eval_every, config.eval_per_class, config.seed)]
            if judge and config.eval_every
            else []
        )
        fit_callbacks = [
            DivergenceGuard(),
            SampleGridCallback(out / "samples", every=config.sample_every, seed=config.seed, log_dir=out / "logs"),
            *evaluations,  # before HistoryCSV and TensorBoard, which write the scores they add to the logs
            HistoryCSV(out / "history.csv"),
            EpochTensorBoard(out / "logs"),
            checkpoint,
            stop,
            *callbacks,
        ]
        if not chief:  # the same steps and saves; the run's other artifacts are the chief's
            fit_callbacks = [DivergenceGuard(), checkpoint, stop]
        for initial_epoch, epochs, steps_per_epoch in _epochs_to_run(done, config.steps, config.log_every):
            # `fit` clears `stop_training` when it starts: a callback's stop must end the run here too.
            # With several workers, only a stop they all agreed to: a signal may reach one in between.
            stopped = distributed.stopped if multiworker else (stop.received or gan.stop_training)
            if stopped:
                break
            fit(
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=fit_callbacks,
                verbose=verbose if chief else 0,
            )
        sent_to_any = None  # the signal that stopped every worker, if one did
        if multiworker:  # a signal to one worker stopped them all: each says so, and exits as that one does
            sent = distributed.any_worker([stop.received == signum for signum in stop.signals])
            sent_to_any = stop.signals[sent.index(True)] if any(sent) else None
        export.export_generator(gan, out / "generator")
        export.export_serving(out / "generator", out / "serving" / "cgan")
        try:
            export.export_onnx(gan, out / "generator.onnx")
        except export.OnnxExportError as error:  # the other artifacts and the evaluation still count
            log(str(error))
        export.save_model(gan.inference_generator, out / "generator.keras")
        export.save_model(gan, out / "gan.keras")
        if (out / "history.csv").exists():  # not before the first --log-every steps
            try:
                plot.save_run_pictures(out)
            except plot.HistoryError as error:  # the pictures show the run; they are not worth its evaluation
                log(f"pictures not drawn: {error}")
        if stop.received or sent_to_any:
            raise Interrupted(stop.received or sent_to_any, saved_here=chief, here=stop.received is not None)
        results = None
        if judge is not None and chief:
            results = report.evaluate_and_save(
                DigitSampler.from_gan(gan),
                judge,
                out / "eval.json",
                per_class=config.eval_per_class,
                seed=config.seed,
                data=config.data,
            )
    return gan, results


@contextlib.contextmanager
def _writable_directory(out, chief):
    """Yields where this process writes: `out` on the chief; elsewhere a temporary directory, deleted after.

    As in TensorFlow's multi-worker guide, every worker saves (a save may
    need them all), the others away from the chief's files.
    """
    if chief:
        yield out
        return
    temporary = Path(tempfile.mkdtemp(prefix="cgan-worker-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def time_candidates(config, images, labels, strategy, xla_timing, policies, xla_policy):
    """Seconds per step of throwaway models built like the run's, on its first batches (`speed.choose`'s timer).

    On a CPU the plain models take turns here (`speed.TurnTaker`) and the XLA
    one trains in a child process (`xla_timing` if given), taking turns with
    them: a CPU process that has trained an XLA model stays slower. On a GPU,
    whose memory is this process's already, each trains here after the other.

    Args:
        config, images, labels, strategy: as `run` is given them.
        xla_timing: a started `timing_process.TimingProcess`, or `None`; closed here.
        policies: the policies to time the plain step in (one on a GPU).
        xla_policy: the policy to time XLA in, or `None` not to time it.

    Returns:
        A `speed.Timings`. Where XLA fails, the plain models are still timed on
        a CPU, and not at all on a GPU (only its one policy is left).
    """
    digits = config.batch_size * (timing_process.WARMUP_STEPS + timing_process.TIMED_STEPS)
    images, labels = images[:digits], labels[:digits]
    if tf.config.list_physical_devices("GPU"):
        if xla_timing is not None:  # started before the GPU was seen: its CPU work would slow these timings
            xla_timing.close()
        xla_seconds = None
        if xla_policy is not None:
            try:
                xla_seconds = time_model_steps(config, images, labels, strategy, True, xla_policy)
            except tf.errors.OpError as error:  # an op XLA cannot compile here: the plain step still works
                return speed.Timings({}, xla_failure=type(error).__name__)
        plain = {policy: time_model_steps(config, images, labels, strategy, False, policy) for policy in policies}
        return speed.Timings(plain, xla_seconds)
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    child, failure = xla_timing, None
    if xla_policy is None and child is not None:  # started early for a run that times no XLA after all
        child.close()
        child = None
    elif xla_policy is not None and child is None:
        try:
            child = timing_process.TimingProcess(config, xla_policy, threads)
        except timing_process.TimingFailed as error:
            failure = str(error)
    plan = {"timed_steps": timing_process.TIMED_STEPS, "turns": timing_process.TURNS}
    if child is not None:
        plan = {"timed_steps": child.timed_steps, "turns": child.turns}
    others = {}

    def between_turns(turns_left):
        nonlocal child, failure
        for other in others.values():
            other(turns_left)
        if child is not None:
            try:
                child.pass_turn()
            except timing_process.TimingFailed as error:  # the plain models go on without it
                child.close()
                child, failure = None, str(error)

    try:
        dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
        for policy in policies[1:]:
            gan = build_gan(config, strategy, jit_compile=False, policy=policy)
            others[policy] = speed.TurnTaker(gan, dataset, **plan)
        timing = {**plan, "between_turns": between_turns}
        first = time_model_steps(config, images, labels, strategy, False, policies[0], **timing)
        xla_seconds = None
        if child is not None:
            try:
                xla_seconds = child.seconds(xla_policy, threads)
            except timing_process.TimingFailed as error:
                failure = str(error)
        plain = {policies[0]: first, **{policy: other.seconds() for policy, other in others.items()}}
        return speed.Timings(plain, xla_seconds, failure)
    finally:
        if child is not None:
            child.close()


def time_model_steps(config, images, labels, strategy, jit_compile, policy, **timing):
    """Median seconds per step of a new model built from `config`, trained on `images`/`labels` (`speed.time_steps`).

    Args:
        config: a `TrainConfig`.
        images: float32 `(N, 28, 28, 1)` in [-1, 1]; repeated if fewer than the steps need.
        labels: int32 `(N,)` in 0..9.
        strategy: the `tf.distribute` strategy to build under, or `None`.
        jit_compile: whether the model compiles its step with XLA.
        policy: the Keras dtype policy name.
        **timing: `speed.time_steps`'s steps, turns and `between_turns`.
    """
    dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
    gan = build_gan(config, strategy, jit_compile=jit_compile, policy=policy)
    return speed.time_steps(gan, dataset, **timing)


def _epochs_to_run(done, steps, log_every):
    """Splits the steps left into `fit` calls: `(initial_epoch, epochs, steps_per_epoch)`.

    Epoch `e` covers steps `(e * log_every, min((e + 1) * log_every, steps)]`,
    so when `log_every` does not divide `steps` the last epoch is shorter. A
    run resumed mid-epoch first finishes that epoch with a shorter `fit`.
    """
    if done % log_every and done < steps:
        epoch = done // log_every
        yield epoch, epoch + 1, min(log_every - done % log_every, steps - done)
        done = min((epoch + 1) * log_every, steps)
    full_epochs = steps // log_every
    if done // log_every < full_epochs:
        yield done // log_every, full_epochs, log_every
        done = full_epochs * log_every
    if done < steps:
        yield full_epochs, full_epochs + 1, steps - done
