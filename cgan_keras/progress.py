"""One progress line for a whole training run: across epochs, `fit` calls and resumes."""

import math
import sys
import time

import keras

from cgan_keras.config import check_positive_integers


class RunProgress(keras.callbacks.Callback):
    """Shows a run's progress over all its steps, with its rate, ETA and latest figures.

    On a terminal, one line redrawn in place at most every `interval` seconds:

        step 1,700/5,000 [=======>.............] 34%  4.2 steps/s  ETA 13:05  d_loss 1.2340  g_loss 0.9871

    Elsewhere (a log file, a pipe), the same fields without the bar, as one
    line at each epoch end (each `log_every` steps in `train.py`).

    Keras' `Progbar` would count from 0 in every `fit` call, so a resumed run
    (or one split into several `fit` calls) would show the wrong step and ETA.
    Here the step is the optimizer's `iterations`, read once per `fit` call
    and then counted from the batch index, so nothing syncs with the device
    per step. The rate leaves out the first step this callback sees (it
    includes tracing the step function). Log values are read only when a
    line is drawn.

    Args:
        total_steps: the step the run ends at.
        keys: log keys to show, in order, where present and finite. A key
            logged only at some epoch ends (e.g. `label_accuracy`, NaN
            between evaluations) keeps its last finite value.
        interactive: redraw one line in place; `None` means whether
            `sys.stdout` is a terminal.
        interval: least seconds between two redraws on a terminal.
        stream: a text file to write to; `None` means `sys.stdout` at each write.

    Example:

    >>> gan.fit(dataset, steps_per_epoch=100, epochs=50, verbose=0,
    ...         callbacks=[RunProgress(5000)])
    """

    def __init__(
        self, total_steps, keys=("d_loss", "g_loss", "label_accuracy"), interactive=None, interval=0.1, stream=None
    ):
        super().__init__()
        (self.total_steps,) = check_positive_integers(total_steps=total_steps)
        self.keys = tuple(keys)
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.interval = interval
        self.stream = stream
        self._step = 0
        self._epoch_start = 0
        self._first = None  # (step, time) after the first step seen: the rate's origin
        self._last_draw = -math.inf
        self._values = {}
        self._drawn = False

    def on_train_begin(self, logs=None):
        # What `callbacks.global_step` reads; importing it would make judge -> progress -> callbacks a cycle.
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the epoch's index of the last step run (several with `steps_per_execution`).
        self._step = self._epoch_start + batch + 1
        now = time.monotonic()
        if self._first is None:
            self._first = (self._step, now)
        if self.interactive and now - self._last_draw >= self.interval:
            self._draw(logs, now)

    def on_epoch_end(self, epoch, logs=None):
        self._draw(logs, time.monotonic())

    def on_train_end(self, logs=None):
        if self.interactive and self._drawn and (self._step >= self.total_steps or self.model.stop_training):
            self._write("\n")
            self._drawn = False

    def line(self, now=None):
        """Returns the progress as one line of text (without the bar)."""
        now = time.monotonic() if now is None else now
        fields = [f"step {self._step:,}/{self.total_steps:,}", f"{self._step / self.total_steps:.0%}"]
        rate = None
        if self._first is not None and self._step > self._first[0] and now > self._first[1]:
            rate = (self._step - self._first[0]) / (now - self._first[1])
        fields.append(_rate(rate) if rate else "- steps/s")
        left = self.total_steps - self._step
        fields.append(f"ETA {_duration(left / rate if left else 0)}" if rate or not left else "ETA -")
        fields += [f"{key} {_figure(self._values[key])}" for key in self.keys if key in self._values]
        return "  ".join(fields)

    def _draw(self, logs, now):
        for key in self.keys:
            value = (logs or {}).get(key)
            if value is not None and math.isfinite(float(value)):
                self._values[key] = float(value)
        text = self.line(now)
        if self.interactive:
            done = 20 * self._step // self.total_steps
            bar = "=" * done + (">" if done < 20 else "") + "." * (19 - done)
            head, _, tail = text.partition("  ")
            # Carriage return, then clear to the end of the line: a shorter line leaves no debris.
            self._write(f"\r{head} [{bar}] {tail}\x1b[K")
        else:
            self._write(text + "\n")
        self._last_draw = now
        self._drawn = True

    def _write(self, text):
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()


def _duration(seconds):
    """`seconds` as `h:mm:ss` or `m:ss`."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _rate(steps_per_second):
    """`14.4 steps/s`, or `2.5 s/step` below one step a second: one decimal either way, so the width holds."""
    if steps_per_second >= 1:
        return f"{steps_per_second:.1f} steps/s"
    return f"{1 / steps_per_second:.1f} s/step"


def _figure(value):
    """A logged figure as Keras' progress bar writes it: 4 decimals, so the columns keep their width."""
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"
