import csv
import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import keras
import matplotlib.figure
import numpy as np
import pytest
from support import tiny_config

from cgan_keras import distribute, export, timing_process, training
from cgan_keras.artifacts import ArtifactWriteError
from cgan_keras.callbacks import CheckpointError, RunCheckpoint, TrainingDiverged
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN
from cgan_keras.run_lock import RunDirectoryBusy, RunLock


def eight_steps(**overrides):
    """`TINY` over 8 steps, logged every 4, a grid every 3 (not a divisor: grids fall inside epochs)."""
    return tiny_config(**{"steps": 8, "log_every": 4, "sample_every": 3, **overrides})


class AtStep(keras.callbacks.Callback):
    """Calls `act(model)` once the run reaches global step `step`."""

    def __init__(self, step, act):
        super().__init__()
        self.step, self.act = step, act

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            self.act(self.model)


def interrupt(model):
    raise KeyboardInterrupt


def send_signal(signum):
    return lambda model: os.kill(os.getpid(), signum)


def stop_training(model):
    model.stop_training = True


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, digits):
    config = eight_steps(out=str(tmp_path / "run"))
    training.prepare_directory(config)
    # Interrupted mid-epoch at step 6, two steps after the checkpoint of step 4.
    with pytest.raises(KeyboardInterrupt):
        training.run(config, *digits, callbacks=[AtStep(6, interrupt)], verbose=0)
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


def test_a_resumed_run_ends_with_the_weights_of_a_run_never_interrupted(tmp_path, digits):
    # 10 steps logged every 4: stopped at step 5 (saved there, mid-epoch), the resumed run finishes that
    # epoch in one `fit` and the short last one (steps 9-10) in another, as the straight run does.
    straight = eight_steps(out=str(tmp_path / "straight"), steps=10)
    training.prepare_directory(straight)
    expected, _ = training.run(straight, *digits, verbose=0)

    resumed = dataclasses.replace(straight, out=str(tmp_path / "resumed"))
    training.prepare_directory(resumed)
    with pytest.raises(training.Interrupted):
        training.run(resumed, *digits, callbacks=[AtStep(5, send_signal(signal.SIGINT))], verbose=0)
    training.prepare_directory(resumed, resume=True)
    actual, _ = training.run(resumed, *digits, resume=True, verbose=0)

    # The same batches, the same noise, so the same weights: a restart drew step 1's noise and batches again.
    for network in ("generator", "discriminator", "ema_generator"):
        for want, got in zip(getattr(expected, network).weights, getattr(actual, network).weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=f"{network}: {got.path}")


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path):
    config = eight_steps(out=str(tmp_path))
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(training.RunDirectoryError, match="--resume .* --overwrite"):
        training.prepare_directory(config)
    training.prepare_directory(config, overwrite=True)
    assert not (tmp_path / "keep.txt").exists()
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_resume_refuses_different_settings(tmp_path):
    training.prepare_directory(eight_steps(out=str(tmp_path)))
    with pytest.raises(training.RunDirectoryError, match="batch_size: saved 16, now 32"):
        training.prepare_directory(eight_steps(out=str(tmp_path), batch_size=32), resume=True)


def test_a_run_directory_moved_elsewhere_resumes(tmp_path):
    training.prepare_directory(eight_steps(out=str(tmp_path / "run")))
    (tmp_path / "run").rename(tmp_path / "moved")
    training.prepare_directory(eight_steps(out=str(tmp_path / "moved")), resume=True)  # `out` is not a setting
    assert TrainConfig.load(tmp_path / "moved" / "config.json").out == str(tmp_path / "run")


@pytest.mark.parametrize("text", ["{not json", '{"steps": 8, "no_such_field": 1}'])
def test_resume_with_an_unreadable_config_names_it_and_the_way_out(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(training.RunDirectoryError, match=r"config.json cannot be read .*pass --overwrite"):
        training.prepare_directory(eight_steps(out=str(tmp_path)), resume=True)


def test_seed_preset_builds_the_tutorial_networks():
    gan = training.build_gan(TrainConfig.from_preset("seed"))
    assert gan.latent_dim == 96 and gan.r1_gamma == 0  # the tutorial has no R1 penalty
    assert [layer.filters for layer in gan.generator.layers if hasattr(layer, "filters")] == [384, 192, 96, 1]
    assert isinstance(gan.discriminator_optimizer, keras.optimizers.Adadelta)
    assert np.isclose(gan.discriminator_optimizer.rho, 0.92) and gan.discriminator_optimizer.clipvalue == 1.0


def test_r1_settings_reach_the_model_and_bad_ones_are_refused():
    gan = training.build_gan(TrainConfig(r1_gamma=0.5, r1_every=2, r1_interval=3))
    assert (gan.r1_gamma, gan.r1_every, gan.r1_interval) == (0.5, 2, 3)
    with pytest.raises(ValueError, match="`r1_gamma` must be a finite number >= 0. Received: r1_gamma=-1"):
        TrainConfig(r1_gamma=-1)
    with pytest.raises(ValueError, match="`r1_interval` must be a positive integer. Received: r1_interval=0"):
        TrainConfig(r1_interval=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(r1_gamma=float("nan")), "`r1_gamma` must be a finite number >= 0"),
        (dict(generator_learning_rate=-1.0), "`generator_learning_rate` must be a finite number > 0"),
        (dict(discriminator_learning_rate=float("nan")), "`discriminator_learning_rate` must be a finite number > 0"),
        (dict(beta_1=5.0), "`beta_1` must be in [0, 1). Received: beta_1=5.0"),
        (dict(beta_2=1.0), "`beta_2` must be in [0, 1)"),
        (dict(seed=-1), "`seed` must be an integer in [0, 2**32). Received: seed=-1"),
        (dict(steps=True), "`steps` must be a positive integer. Received: steps=True"),
        (dict(eval_every=200.0), "`eval_every` must be 0 or a multiple of `log_every`"),
        (dict(seed=True), "`seed` must be an integer in [0, 2**32). Received: seed=True"),
        (dict(intra_op_threads=True), "`intra_op_threads` must be 0 (auto) or a positive integer"),
        (dict(generator_filters=(8, True)), "`generator_filters` must be positive integers"),
        (dict(generator_filters=(0, 4)), "`generator_filters` must be positive integers"),
        (dict(generator_filters=(8,)), "`generator_filters` must be 2 to 4 widths"),
        (dict(generator_filters=(8,) * 5), "`generator_filters` must be 2 to 4 widths"),
        (dict(discriminator_filters=(4, -8, 8, 8)), "`discriminator_filters` must be positive integers"),
        (dict(discriminator_filters=()), "`discriminator_filters` must be at least one width"),
        (dict(preset="seed", discriminator_filters=(8, 8)), "three with the seed preset"),
        (dict(intra_op_threads=100_000), "`intra_op_threads` must be 0 (auto) or a positive integer up to 1024"),
        (dict(cpu_replicas=100_000), "`cpu_replicas` must be at most 64"),
        (
            dict(eval_per_class=0),
            "`eval_per_class` must be a positive integer up to 10,000. Received: eval_per_class=0",
        ),
        (dict(eval_per_class=10**12), "`eval_per_class` must be a positive integer up to 10,000"),  # not at the end
        (dict(out=""), "`out` must name a directory. Received: out=''"),  # not the current directory
    ],
)
def test_settings_that_would_fail_later_or_train_nonsense_are_refused_at_once(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_preset(**overrides)


def test_numpy_integers_in_a_config_become_python_integers_and_save(tmp_path):
    config = TrainConfig(steps=np.int64(600), generator_filters=[np.int32(64), np.int32(32)], seed=np.uint32(7))
    assert (config.steps, config.generator_filters, config.seed) == (600, (64, 32), 7)
    assert type(config.steps) is int and all(type(width) is int for width in config.generator_filters)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize("filters", [(16, 8), (16, 8, 8), (16, 8, 8, 8)])
def test_every_generator_depth_the_config_allows_builds(filters):
    assert training.build_gan(tiny_config(generator_filters=filters)).generator.output_shape == (None, 28, 28, 1)


def test_the_ema_statistics_stride_reaches_the_model_and_a_bad_one_is_refused():
    assert training.build_gan(TrainConfig(ema_statistics_every=2)).ema_statistics_every == 2
    with pytest.raises(ValueError, match="Received: ema_statistics_every=0"):
        TrainConfig(ema_statistics_every=0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_step_saves_everything_and_resume_finishes_exactly(tmp_path, digits, signum):
    config = eight_steps(out=str(tmp_path))
    training.prepare_directory(config)
    # Whatever was installed before (a background job inherits SIGINT ignored) is what must be back.
    handlers_before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(training.Interrupted) as stopped:
        training.run(config, *digits, callbacks=[AtStep(5, send_signal(signum))], verbose=0)
    assert stopped.value.signum == signum
    assert stopped.value.saved_here  # a single process is its own chief
    assert {number: signal.getsignal(number) for number in handlers_before} == handlers_before
    generator = keras.models.load_model(tmp_path / "generator.keras")  # the generator after 5 steps
    assert generator.name == "generator"

    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 8  # 5 done, then the 3 left: 6, 7, 8
    with open(tmp_path / "history.csv") as rows:
        assert [row["step"] for row in csv.DictReader(rows)] == ["4", "5", "8"]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        "step_000005.keras",  # step 4's is rotated out: the newest two stay
        "step_000008.keras",
    ]


def test_steps_that_log_every_does_not_divide_end_with_a_shorter_row_and_resume(tmp_path, digits):
    config = eight_steps(out=str(tmp_path), steps=10)  # rows at 4, 8, then 10
    training.prepare_directory(config)
    with pytest.raises(training.Interrupted):
        training.run(config, *digits, callbacks=[AtStep(9, send_signal(signal.SIGINT))], verbose=0)
    gan, _ = training.run(config, *digits, resume=True, verbose=0)
    assert int(gan.optimizer.iterations) == 10
    with open(tmp_path / "history.csv") as rows:
        assert [(row["epoch"], row["step"]) for row in csv.DictReader(rows)] == [
            ("0", "4"), ("1", "8"), ("2", "9"), ("2", "10")
        ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "samples").glob("step_*.png")) == [
        "step_000001.png", "step_000003.png", "step_000006.png", "step_000009.png"
    ]  # fmt: skip


def test_a_callback_that_stops_training_ends_the_run_before_its_shorter_last_epoch(tmp_path, digits):
    config = eight_steps(out=str(tmp_path), steps=10)  # fit calls: epochs 0-1 of 4 steps, then epoch 2 of 2
    training.prepare_directory(config)
    gan, _ = training.run(config, *digits, callbacks=[AtStep(5, stop_training)], verbose=0)
    assert int(gan.optimizer.iterations) == 5
    assert (tmp_path / "generator" / "saved_model.pb").exists()


def test_checkpoints_fall_every_checkpoint_every_steps_and_where_a_run_stops_or_ends(tmp_path, digits):
    config = eight_steps(out=str(tmp_path), steps=10, log_every=2, checkpoint_every=4)

    def checkpoint_names():
        return sorted(path.name for path in (tmp_path / "checkpoints").iterdir())

    training.prepare_directory(config)
    training.run(config, *digits, callbacks=[AtStep(7, stop_training)], verbose=0)
    assert checkpoint_names() == ["step_000004.keras", "step_000007.keras"]  # none at 2 or 6
    gan, _ = training.run(config, *digits, resume=True, verbose=0)  # fit calls: step 8, then 9-10
    assert int(gan.optimizer.iterations) == 10
    assert checkpoint_names() == ["step_000008.keras", "step_000010.keras"]
    with pytest.raises(ValueError, match="`checkpoint_every` must be a positive integer. Received: checkpoint_every=0"):
        TrainConfig(checkpoint_every=0)


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
    config = eight_steps(out=str(tmp_path), generator_learning_rate=1e30, optimizer="adam")
    training.prepare_directory(config)
    with pytest.raises(TrainingDiverged, match="the loss became nan"):
        training.run(config, *digits, verbose=0)
    assert not (tmp_path / "generator").exists()


def test_the_same_seed_trains_bit_identical_generators(tmp_path, digits):
    def train(name):
        config = eight_steps(out=str(tmp_path / name))
        training.prepare_directory(config)
        gan, _ = training.run(config, *digits, verbose=0)
        return [weight.numpy() for weight in gan.generator.weights]

    for first, second in zip(train("a"), train("b"), strict=True):
        np.testing.assert_array_equal(first, second)


def test_timing_xla_in_a_child_process_leaves_the_run_exactly_as_without_timing(tmp_path, digits, monkeypatch):
    for name, value in (("MEASURE_MIN_STEPS", 1), ("WARMUP_STEPS", 1), ("TIMED_STEPS", 2)):
        monkeypatch.setattr(timing_process, name, value)
    timed_here = []
    time_model_steps = training.time_model_steps

    def time_here(*args, **timing):
        timed_here.append(args[4])  # jit_compile
        return time_model_steps(*args, **timing)

    monkeypatch.setattr(training, "time_model_steps", time_here)
    # Where the CPU computes in bfloat16 natively, `auto` times the plain step in both precisions too.
    auto = eight_steps(out=str(tmp_path / "auto"), mixed_precision="auto")
    training.prepare_directory(auto)
    # Started before the run, as train.py does: the child picks the policy and threads as train.py would.
    early = timing_process.TimingProcess(auto, warmup_steps=1, timed_steps=2, turns=2)
    timed, _ = training.run(auto, *digits, verbose=0, xla_timing=early)
    choice = json.loads((tmp_path / "auto" / "speed.json").read_text())
    assert choice["reason"] == "measured" and choice["xla_seconds"] > 0 and choice["plain_seconds"] > 0
    if distribute.native_bfloat16():
        assert set(choice["precision_seconds"]) == {"float32", "mixed_bfloat16"}
    assert timed_here == [False]  # the XLA model trained in a child process; the second precision beside it
    assert timed.jit_compile is choice["jit_compile"]
    assert timed.generator.dtype_policy.name == choice["policy"]

    forced = eight_steps(
        out=str(tmp_path / "forced"),
        jit_compile="on" if choice["jit_compile"] else "off",
        mixed_precision="off" if choice["policy"] == "float32" else "on",
    )
    training.prepare_directory(forced)
    unused = timing_process.TimingProcess(forced)
    untimed, _ = training.run(forced, *digits, verbose=0, xla_timing=unused)
    assert unused._process.returncode is not None and not unused._directory.exists()  # closed, not left running
    for first, second in zip(timed.generator.weights, untimed.generator.weights, strict=True):
        np.testing.assert_array_equal(first.numpy(), second.numpy())


def snapshot(directory):
    """Every file under `directory` but the append-only TensorBoard logs, with its bytes."""
    return {
        path.relative_to(directory): path.read_bytes()
        for path in directory.rglob("*")
        if path.is_file() and "logs" not in path.relative_to(directory).parts
    }


class FillDiskAfterStep4(keras.callbacks.Callback):
    """Fills the disk once the checkpoint of step 4 is written (or, with `at_train_end`, after training)."""

    def __init__(self, disk, writer, leave=0, at_train_end=False):
        super().__init__()
        self.disk, self.writer, self.leave, self.at_train_end = disk, writer, leave, at_train_end
        self.before = None

    def _fill(self):
        self.before = snapshot(self.disk.path / "run")
        self.disk.fill(self.writer, self.leave)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0 and not self.at_train_end:
            self._fill()

    def on_train_end(self, logs=None):
        if self.at_train_end:
            self._fill()


@pytest.mark.parametrize(
    "failing, settings, fill",
    [
        ("samples/step_000006.png", {}, dict(writer=(matplotlib.figure.Figure, "savefig"))),
        ("history.csv", {"sample_every": 100}, dict(writer=(csv.DictWriter, "writerows"))),
        # 16 KB free: enough for history.csv's new row (written first, and complete), not for the checkpoint.
        ("checkpoints/step_000008.keras", {"sample_every": 100}, dict(writer=(ConditionalGAN, "save"), leave=16384)),
        # ExportArchive() makes an instance of the backend's subclass, whose writer is the one to patch.
        (
            "generator",
            {"sample_every": 100},
            dict(writer=(type(keras.export.ExportArchive()), "write_out"), at_train_end=True),
        ),
    ],
)
def test_a_full_disk_names_the_artifact_and_keeps_the_complete_ones(full_disk, digits, failing, settings, fill):
    out = full_disk.path / "run"
    config = eight_steps(out=str(out), **settings)
    training.prepare_directory(config)
    filler = FillDiskAfterStep4(full_disk, **fill)
    with pytest.raises(ArtifactWriteError) as failed:
        training.run(config, *digits, callbacks=[filler], verbose=0)
    assert str(failed.value) == f"cannot write {out / failing}: No space left on device"
    after = snapshot(out)
    if failing.startswith("checkpoints/"):
        assert after.pop(Path("history.csv")).decode().splitlines()[-1].startswith("1,8,")
        filler.before.pop(Path("history.csv"))
    assert after == filler.before  # nothing complete was touched, and nothing half-written is left
    assert not list(out.rglob("*.partial"))


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":  # as a crashed copy leaves it
        data = data[:3000]
    else:  # one flipped byte in the middle: HDF5 alone would not notice
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, digits, monkeypatch):
    def invalid_graph(gan, path):
        raise export.OnnxExportError(f"{path} not written: tf2onnx made an invalid graph")

    monkeypatch.setattr(export, "export_onnx", invalid_graph)  # the run goes on without it, and says so
    config = eight_steps(out=str(tmp_path / "new"), steps=4, log_every=4)
    training.prepare_directory(config, resume=True)
    lines = []
    gan, _ = training.run(config, *digits, resume=True, verbose=0, log=lines.append)
    assert f"--resume: no checkpoint in {tmp_path / 'new' / 'checkpoints'}; training from step 0" in lines
    assert int(gan.optimizer.iterations) == 4
    assert f"{tmp_path / 'new' / 'generator.onnx'} not written: tf2onnx made an invalid graph" in lines
    assert (tmp_path / "new" / "gan.keras").exists() and (tmp_path / "new" / "history.png").exists()


def test_resume_passes_over_a_damaged_checkpoint_to_the_previous_one(tmp_path, digits, capsys):
    config = eight_steps(out=str(tmp_path))
    training.prepare_directory(config)
    training.run(config, *digits, verbose=0)
    _damage(tmp_path / "checkpoints" / "step_000008.keras", "flip")
    (tmp_path / "samples" / "step_000001.png").write_bytes(b"not a png")  # a damaged grid: the run draws without it

    gan, _ = training.run(config, *digits, resume=True, verbose=0, log=print)
    printed = capsys.readouterr().out.splitlines()
    assert f"pictures not drawn: {tmp_path / 'samples' / 'step_000001.png'} is not a readable PNG image: " in (
        "\n".join(printed)
    )
    (resumed,) = [line for line in printed if line.startswith("resuming from")]
    assert resumed.startswith(f"resuming from {tmp_path / 'checkpoints' / 'step_000004.keras'} (step 4); ")
    assert "skipped unreadable step_000008.keras (" in resumed
    assert int(gan.optimizer.iterations) == 8 and int(gan.discriminator_optimizer.iterations) == 16
    assert RunCheckpoint(tmp_path / "checkpoints").restore(training.build_gan(config)).name == "step_000008.keras"


def test_resume_with_no_readable_checkpoint_names_each_file_and_the_way_out(tmp_path, digits):
    config = eight_steps(out=str(tmp_path))
    training.prepare_directory(config)
    training.run(config, *digits, verbose=0)
    _damage(tmp_path / "checkpoints" / "step_000008.keras", "truncate")
    _damage(tmp_path / "checkpoints" / "step_000004.keras", "flip")
    with pytest.raises(CheckpointError) as failed:
        training.run(config, *digits, resume=True, verbose=0)
    message = str(failed.value)
    assert message.startswith(f"no checkpoint can be read ({tmp_path / 'checkpoints' / 'step_000008.keras'}: ")
    assert f"; {tmp_path / 'checkpoints' / 'step_000004.keras'}: " in message
    assert message.endswith("); pass --overwrite to start again") and "\n" not in message


def test_overwrite_keeps_the_lock_that_the_run_holds(tmp_path):
    config = eight_steps(out=str(tmp_path / "run"))
    with RunLock(config.out) as lock:
        training.prepare_directory(config)
        (tmp_path / "run" / "history.csv").write_text("old run")
        locked_file = lock.path.stat().st_ino
        training.prepare_directory(config, overwrite=True)
        assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [".lock", "config.json"]
        assert lock.path.stat().st_ino == locked_file  # still the file this run locked, so still exclusive
        with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()}"):
            RunLock(config.out).acquire()
