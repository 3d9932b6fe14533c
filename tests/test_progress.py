import io
import re
import types

import keras
import numpy as np
import pytest
from support import tiny_gan

from cgan_keras import progress as progress_module
from cgan_keras.progress import RunProgress


class LogAccuracyOnce(keras.callbacks.Callback):
    """Adds `label_accuracy` to the epoch logs as an evaluation would: a figure at epoch 0, NaN after."""

    def on_epoch_end(self, epoch, logs=None):
        logs["label_accuracy"] = 0.5 if epoch == 0 else float("nan")


def test_a_log_file_gets_one_line_per_epoch_with_the_run_s_step_and_figures(digits):
    stream = io.StringIO()
    progress = RunProgress(6, interactive=False, stream=stream)
    tiny_gan().fit(*digits, batch_size=16, steps_per_epoch=3, epochs=2, verbose=0,
                   callbacks=[LogAccuracyOnce(), progress])  # fmt: skip
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 3/6", "step 6/6"]
    assert all(re.search(r"%  \d+\.\d (steps/s|s/step)  ETA ", line) for line in lines)
    assert "ETA 0:00" in lines[1]
    assert lines[0].endswith("label_accuracy 0.5000") and lines[1].endswith("label_accuracy 0.5000")  # NaN: the last
    assert all(re.search(r"  d_loss -?\d+\.\d{4}  g_loss -?\d+\.\d{4}  ", line) for line in lines)  # 0.64 as 0.6400


def test_a_resumed_run_continues_from_its_step_across_fit_calls(digits):
    gan = tiny_gan(steps_per_execution=2)
    gan.fit(*digits, batch_size=16, steps_per_epoch=2, epochs=2, verbose=0)  # steps 1..4, before the resume
    stream = io.StringIO()
    progress = RunProgress(10, interactive=False, stream=stream)
    gan.fit(*digits, batch_size=16, steps_per_epoch=2, epochs=3, initial_epoch=2, verbose=0, callbacks=[progress])
    gan.fit(*digits, batch_size=16, steps_per_epoch=4, epochs=4, initial_epoch=3, verbose=0, callbacks=[progress])
    assert [line.split("  ")[0] for line in stream.getvalue().splitlines()] == ["step 6/10", "step 10/10"]


def test_a_terminal_gets_one_line_redrawn_in_place_and_ended_at_the_last_step(digits):
    stream = io.StringIO()
    progress = RunProgress(4, interactive=True, interval=0, stream=stream)
    tiny_gan().fit(*digits, batch_size=16, steps_per_epoch=4, epochs=1, verbose=0, callbacks=[progress])
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\x1b[K\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert [frame.split(" [")[0] for frame in frames] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4", "step 4/4"]
    assert "[====================] 100%" in frames[-1] and "[=====>..............] 25%" in frames[0]


def test_the_rate_and_eta_come_from_the_steps_after_the_first_with_one_decimal(monkeypatch):
    clock = types.SimpleNamespace(monotonic=lambda: 100.0)
    monkeypatch.setattr(progress_module, "time", clock)
    progress = RunProgress(1000, interactive=False, stream=io.StringIO())
    progress.on_epoch_begin(0)
    progress.on_train_batch_end(0)  # step 1 at t=100 s: the tracing step, the rate's origin
    assert progress.line(now=100.0).split("  ")[2:4] == ["- steps/s", "ETA -"]
    progress.on_train_batch_end(200)  # step 201
    assert progress.line(now=110.0).split("  ")[2:4] == ["20.0 steps/s", "ETA 0:40"]  # 799 steps at 20 a second
    assert progress.line(now=500.0).split("  ")[2:4] == ["2.0 s/step", "ETA 26:38"]  # 799 steps at 2 s each


def test_the_total_takes_numpy_integers_and_refuses_what_is_not_a_positive_integer():
    assert RunProgress(np.int64(100)).total_steps == 100
    for total in (0, True, 10.0):
        with pytest.raises(ValueError, match=f"must be a positive integer. Received: total_steps={total}"):
            RunProgress(total)
