"""Callbacks for a training GAN: sample grids, judge scores, checkpoints, history, safe stops."""

import csv
import re
import signal
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cgan_keras import artifacts, grids
from cgan_keras.config import check_positive_integers
from cgan_keras.labels import check_labels
from cgan_keras.metrics import report
from cgan_keras.sampler import DigitSampler


def global_step(model):
    """Training steps taken so far: the generator optimizer's `iterations`, as an int.

    Read through numpy because under `tf.distribute` the counter is a
    mirrored variable, which `int()` does not accept.
    """
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations.value))


class SampleGridCallback(keras.callbacks.Callback):
    """Writes a grid of generated digits after step 1 and every `every` steps.

    Steps are global training steps (the generator optimizer's `iterations`),
    so numbering continues across epochs and resumed runs, and a multiple of
    `every` crossed inside one `steps_per_execution` call is still written
    (named after the step actually reached). The noise and digits are fixed,
    so successive grids show the same samples improving.

    Args:
        directory: folder that receives `step_000100.png`, ...
        every: steps between grids.
        digits: the digit of each tile, row by row; the default, `None`, is
            `0..8` (a 3x3 grid), or every class of a model with fewer.
        columns: tiles per row.
        seed: seed of the fixed noise.
        log_dir: optional TensorBoard log directory (the one given to
            `keras.callbacks.TensorBoard`); each grid is also written there
            as an image summary `samples` under `log_dir/train`.

    Example:

    >>> gan.fit(dataset, steps_per_epoch=100, epochs=10,
    ...         callbacks=[SampleGridCallback("run/samples", every=100)])
    """

    def __init__(self, directory, every=100, digits=None, columns=3, seed=0, log_dir=None):
        super().__init__()
        check_positive_integers(every=every, columns=columns)
        self.directory = Path(directory)
        self.every = every
        self.digits = digits  # checked against the model's classes in `set_model`
        self.columns = columns
        self.seed = seed
        self.log_dir = log_dir
        self._last_step = None
        self._epoch_start = None
        self._writer = None
        self._sampler = None

    def set_model(self, model):
        super().set_model(model)
        digits = range(min(9, model.num_classes)) if self.digits is None else self.digits
        self._digits = check_labels(digits, model.num_classes, name="SampleGridCallback digits")
        self._sampler = DigitSampler.from_gan(model)

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "train"))

    def on_epoch_begin(self, epoch, logs=None):
        # The step counter is read once an epoch and when a grid is due: reading it
        # costs ~0.15 ms, and `batch` (the epoch's last step index so far, which
        # advances by `steps_per_execution`) says where the steps are in between.
        self._epoch_start = self._last_step = global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_start + batch + 1
        if self._due(step):
            # `batch` may overshoot: Keras numbers an epoch's short last execution as if it were whole.
            step = global_step(self.model)
            if self._due(step):
                self.write_grid(step)
        self._last_step = step

    def _due(self, step):
        return self._last_step < 1 <= step or step // self.every > self._last_step // self.every

    def write_grid(self, step):
        """Renders the fixed samples at the current weights; returns the PNG's path."""
        images = self._sampler(self._digits, seed=self.seed)
        path = self.directory / f"step_{step:06d}.png"
        grids.save_grid(path, images, self._digits, columns=self.columns, title=f"step {step}")
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.image("samples", grids.tile(images, self.columns)[np.newaxis], step=step)
            self._writer.flush()
        return path


class EvaluationCallback(keras.callbacks.Callback):
    """Scores the generator with a judge every `every` steps and adds the figures to the epoch's logs.

    Runs at epoch ends (so `every` should be a multiple of `steps_per_epoch`);
    epochs without an evaluation log NaN, so `CSVLogger` keeps a fixed set of
    columns. `train_seconds` is the wall time spent training, evaluations
    excluded, which gives time-to-quality figures.

    Args:
        judge: a `metrics.judge.Judge`.
        every: steps between evaluations.
        per_class: generated digits of each class per evaluation.
        seed: seed of the generated digits' noise.
    """

    KEYS = report.KEYS

    def __init__(self, judge, every, per_class=1000, seed=0):
        super().__init__()
        check_positive_integers(every=every, per_class=per_class)
        self.judge = judge
        self.every = every
        self.per_class = per_class
        self.seed = seed
        self._train_seconds = 0.0  # summed over every fit call this callback serves
        self._sampler = None

    def set_model(self, model):
        super().set_model(model)
        self._sampler = DigitSampler.from_gan(model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self._train_seconds += time.perf_counter() - self._epoch_started
        logs["train_seconds"] = self._train_seconds
        results = dict.fromkeys(self.KEYS, float("nan"))
        if global_step(self.model) % self.every == 0:
            results = report.evaluate_generator(self._sampler, self.judge, per_class=self.per_class, seed=self.seed)
        logs.update({key: results[key] for key in self.KEYS})


class CheckpointError(ValueError):
    """A run has checkpoints, but none of them can be read."""


class RunCheckpoint(keras.callbacks.Callback):
    """Saves the model's whole training state every `every` steps and when `fit` ends, keeping the newest `keep`.

    The state holds both networks, both optimizers (with their step counters)
    and the step noise generator's seed, so `restore` continues training
    exactly where a save left it, mid-epoch included: the restored step
    counter says where. Each save is a `.keras` file named after its global
    step, written atomically; then the older ones beyond `keep` go, and so do
    those past the current step (the abandoned future of a run resumed from
    an older checkpoint). A checkpoint damaged after it was written then costs
    `every` steps, not the run.

    Saves happen at epoch ends (steps are only known there without waiting
    for them): at the end of each epoch that reaches a multiple of `every`
    steps, and when `fit` ends (its last step, a signal's or a callback's
    stop) unless that step is saved already. A save costs ~0.1 s on a 2-core
    CPU, about 3 steps of the default run, so `train.py` saves every 500 steps.

    Args:
        directory: folder of `step_000400.keras`, ...
        keep: how many checkpoints to keep (at least 1).
        every: steps between saves; 1 saves at every epoch end.

    Attributes:
        skipped: `(path, problem)` of each unreadable checkpoint the last
            `restore` passed over, newest first.
    """

    def __init__(self, directory, keep=2, every=1):
        super().__init__()
        check_positive_integers(keep=keep, every=every)
        self.directory = Path(directory)
        self.keep = keep
        self.every = every
        self.skipped = []
        self._saved_step = None

    def checkpoints(self):
        """`(step, path)` of every checkpoint in `directory`, newest first."""
        found = []
        for path in self.directory.glob("step_*.keras"):
            match = re.fullmatch(r"step_(\d+)\.keras", path.name)
            if match:
                found.append((int(match[1]), path))
        return sorted(found, reverse=True)

    def restore(self, model):
        """Loads the newest checkpoint that reads completely into `model`.

        Unreadable newer ones are listed in `skipped`. HDF5 stores no
        checksums, so each file's zip CRCs are verified first: a damaged
        file is skipped before any of it reaches the model.

        Returns:
            The path loaded, or `None` when there is no checkpoint at all.

        Raises:
            CheckpointError: there are checkpoints, but none can be read.
        """
        self.skipped = []
        for _, path in self.checkpoints():
            try:
                with zipfile.ZipFile(path) as archive:
                    damaged = archive.testzip()
                if damaged is not None:
                    raise zipfile.BadZipFile(f"{damaged} fails its CRC check")
                model.load_weights(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                self.skipped.append((path, artifacts.first_line(error)))
                continue
            return path
        if self.skipped:
            problems = "; ".join(f"{path}: {problem}" for path, problem in self.skipped)
            raise CheckpointError(f"no checkpoint can be read ({problems}); pass --overwrite to start again")
        return None

    def on_train_begin(self, logs=None):
        self._saved_step = global_step(self.model)  # restored from a checkpoint, or 0

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        if step // self.every > self._saved_step // self.every:
            self.save(step)

    def on_train_end(self, logs=None):
        step = global_step(self.model)
        if step != self._saved_step:
            self.save(step)

    def save(self, step):
        """Writes the state at global `step` as `step_{step:06d}.keras`, then drops the checkpoints beyond `keep`."""
        # A `.keras` file rather than `save_weights`: Keras builds its HDF5 part in memory, so a full
        # disk fails in Python's zip writer with a plain OSError. HDF5 writing to a full disk itself
        # cannot close the file, and the process then crashes at exit (in HDF5's H5_term_library).
        with artifacts.atomic_path(self.directory / f"step_{step:06d}.keras") as temporary:
            self.model.save(temporary)
        kept = [path for saved_step, path in self.checkpoints() if saved_step <= step][: self.keep]
        for _, path in self.checkpoints():
            if path not in kept:
                path.unlink(missing_ok=True)
        self._saved_step = step


class HistoryCSV(keras.callbacks.Callback):
    """Appends each epoch's logs, with the global step, as a row of a CSV file rewritten atomically.

    Unlike `keras.callbacks.CSVLogger`, a kill never leaves a half-written
    row, and rows from a resumed run's future (steps past the restored
    checkpoint) are dropped when training starts again.

    Args:
        path: the CSV file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self._rows = []

    def on_train_begin(self, logs=None):
        step = global_step(self.model)
        self._rows = []
        if self.path.exists():
            with open(self.path, newline="") as file:
                self._rows = [row for row in csv.DictReader(file) if int(row["step"]) <= step]

    def on_epoch_end(self, epoch, logs=None):
        self._rows.append({"epoch": epoch, "step": global_step(self.model), **(logs or {})})
        columns = list(dict.fromkeys(key for row in self._rows for key in row))
        with artifacts.atomic_path(self.path) as temporary, open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, columns, restval="")
            writer.writeheader()
            writer.writerows(self._rows)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` without its per-step cost when it logs per epoch (`update_freq="epoch"`).

    Keras 3.15's `TensorBoard.on_train_batch_end` calls `tf.summary.scalar` for
    every log at every step even when no writer records them (epoch mode):
    ~0.6 ms a step on a 2-core CPU, for nothing. Here the step's logs are
    withheld in epoch mode; the graph, profiling and epoch scalars are unchanged.

    Args:
        log_dir, **kwargs: as for `keras.callbacks.TensorBoard`.
    """

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, None if self.update_freq == "epoch" else logs)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged` at the first step whose logged `loss` is NaN or infinite.

    Raising (rather than `TerminateOnNaN`'s stop) ends `fit` before any epoch-end
    callback runs, so no checkpoint or artifact of the diverged weights is written.
    Checking every step costs nothing measurable (~1 us): TensorFlow's `fit` has
    already turned the step's logs into Python floats, whatever the callbacks.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            step = global_step(self.model)
            raise TrainingDiverged(f"the loss became {float(loss)} by step {step}")


class GracefulStop(keras.callbacks.Callback):
    """Turns SIGINT and SIGTERM into a stop at the next step boundary.

    Use it as a context manager around training (and whatever must finish
    after it, such as exporting): inside, the signals only set `received`
    and ask `fit` to stop; outside, their previous handlers are back.

    Example:

    >>> with GracefulStop() as stop:
    ...     gan.fit(dataset, epochs=10, steps_per_epoch=100, callbacks=[stop])
    >>> stop.received  # None, signal.SIGINT or signal.SIGTERM
    """

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        super().__init__()
        self.signals = signals
        self.received = None
        self._previous_handlers = {}

    def __enter__(self):
        self._previous_handlers = {signum: signal.signal(signum, self._handle) for signum in self.signals}
        return self

    def __exit__(self, *exception):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum)
        if self.model is not None:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        # `fit` clears stop_training when it starts; a signal from before must still stop it.
        if self.received is not None:
            self.model.stop_training = True
