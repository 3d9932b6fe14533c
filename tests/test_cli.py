"""train.py and infer.py as a user runs them: subprocesses, exit codes, files."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
    "--data", "builtin", "--steps", "4", "--log-every", "2", "--sample-every", "2", "--batch-size", "16",
    "--latent-dim", "8", "--generator-filters", "8", "4", "--discriminator-filters", "4", "8",
]  # fmt: skip


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd)


def start(script, *args, cwd):
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def wait_for(path, process, timeout=120):
    """Polls until `path` exists (the training reached that point); fails if the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny real training run on the builtin digits, shared by the infer tests."""
    work = tmp_path_factory.mktemp("cli")
    result = run("train.py", *TINY_TRAIN, "--out", "run", cwd=work)
    assert result.returncode == 0, result.stderr
    return work, result


def test_train_writes_every_artifact(trained_run):
    work, result = trained_run
    out = work / "run"
    assert "data: builtin (5,000 digits); 1 replica(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoints", "config.json", "eval.json", "gan.keras", "generator", "generator.keras",
        "history.csv", "logs", "samples",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002.keras", "step_000004.keras"]
    assert "label accuracy" in result.stdout and "judge:" in result.stdout
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000001.png", "step_000002.png",
                                                                   "step_000004.png"]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["data"] == "builtin" and config["generator_filters"] == [8, 4]
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + one row per 2 steps


def test_infer_writes_a_grid_and_reproducible_arrays(trained_run):
    work, _ = trained_run
    model = str(work / "run" / "generator")
    for name in ("a", "b"):
        result = run("infer.py", "--model", model, "--digit", "7", "--count", "5", "--seed", "3",
                     "--out", f"{name}.png", "--npy", f"{name}.npy", cwd=work)  # fmt: skip
        assert result.returncode == 0, result.stderr
    images = np.load(work / "a.npy")
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(images, np.load(work / "b.npy"))
    assert (work / "a.png").stat().st_size > 0
    result = run("infer.py", "--model", model, "--digit", "all", "--count", "2", "--out", "all.png", cwd=work)
    assert result.returncode == 0 and "20 of 20 digits shown" in result.stdout


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("infer.py", ["--digit", "10"], "--digit must be 0-9 or `all`. Received: --digit 10"),
        ("infer.py", ["--digit", "x"], "--digit must be 0-9 or `all`"),
        ("infer.py", ["--digit", "3", "--count", "0"], "--count must be a positive integer"),
        ("infer.py", ["--digit", "3", "--model", "missing"], "--model missing is not a directory"),
        ("train.py", ["--steps", "0"], "`steps` must be a positive integer. Received: steps=0"),
        ("train.py", ["--batch-size", "0"], "`batch_size` must be a positive integer"),
        ("train.py", ["--steps", "150"], "`steps` must be a multiple of `log_every`"),
    ],
)
def test_user_mistakes_exit_2_with_one_clear_line(tmp_path, script, args, message):
    result = run(script, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_infer_rejects_a_directory_that_is_not_a_generator(trained_run):
    work, _ = trained_run
    result = run("infer.py", "--model", str(work / "run" / "samples"), "--digit", "1", cwd=work)
    assert result.returncode == 2
    assert "is not a generator SavedModel" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_train_refuses_to_overwrite_a_previous_run(trained_run):
    work, _ = trained_run
    result = run("train.py", *TINY_TRAIN, "--out", "run", cwd=work)
    assert result.returncode == 2
    assert "pass --resume to continue that run or --overwrite to replace it" in result.stderr.splitlines()[-1]


def test_ctrl_c_saves_the_checkpoint_and_generator_and_exits_130(trained_run):
    work, _ = trained_run
    long_run = [*TINY_TRAIN, "--steps", "100000", "--out", "interrupted"]
    process = start("train.py", *long_run, cwd=work)
    wait_for(work / "interrupted" / "samples" / "step_000002.png", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGINT" in stdout and "Traceback" not in stderr
    assert (work / "interrupted" / "generator" / "saved_model.pb").exists()
    assert list((work / "interrupted" / "checkpoints").glob("step_*.keras"))


def test_a_run_killed_with_sigkill_resumes_to_complete_artifacts(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "600", "--log-every", "20", "--sample-every", "100", "--out", "killed"]
    process = start("train.py", *args, cwd=work)
    wait_for(work / "killed" / "checkpoints" / "step_000020.keras", process)
    process.kill()
    process.communicate()
    assert not (work / "killed" / "generator").exists()

    result = run("train.py", *args, "--resume", cwd=work)
    assert result.returncode == 0, result.stderr
    history = (work / "killed" / "history.csv").read_text().splitlines()
    assert history[-1].split(",")[1] == "600"  # the step column reaches the configured steps
    assert (work / "killed" / "samples" / "step_000600.png").exists()
    report = json.loads((work / "killed" / "eval.json").read_text())
    assert 0 <= report["label_accuracy"] <= 1


def test_train_on_two_mirrored_cpu_replicas(trained_run):
    work, _ = trained_run
    result = run(
        "train.py", *TINY_TRAIN, "--strategy", "mirrored", "--cpu-replicas", "2", "--out", "mirrored", cwd=work
    )
    assert result.returncode == 0, result.stderr
    assert "2 replica(s)" in result.stdout
    assert (work / "mirrored" / "generator" / "saved_model.pb").exists()


def test_multiworker_is_blocked_upstream(trained_run):
    """Documents keras-team/keras#20585: Keras 3 `fit` under MultiWorkerMirroredStrategy fails.

    Two real workers on loopback. When this starts failing, upstream has fixed the
    breakage: make it assert success and update the README.
    """
    work, _ = trained_run
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, "--strategy", "multiworker", "--out", f"worker{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=work,
            env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=240)
        assert worker.returncode != 0
        assert "Attempt to convert a value (PerReplica" in stderr


def test_infer_streams_a_large_count_and_shows_the_first_hundred(trained_run):
    work, _ = trained_run
    model = str(work / "run" / "generator")
    result = run("infer.py", "--model", model, "--digit", "5", "--count", "2500", "--npy", "many.npy", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "100 of 2500 digits shown" in result.stdout
    images = np.load(work / "many.npy", mmap_mode="r")
    assert images.shape == (2500, 28, 28, 1) and 0 <= images.min() and images.max() <= 1


def test_infer_rejects_a_saved_model_of_something_else(trained_run):
    work, _ = trained_run
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(work / "other"), signatures={"serving_default": module.double})
    result = run("infer.py", "--model", str(work / "other"), "--digit", "1", cwd=work)
    assert result.returncode == 2
    assert "Expected a `serving_default` signature (digit, noise) -> images" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["train.py", "infer.py"])
def test_an_out_path_that_cannot_be_written_exits_2(trained_run, script):
    work, _ = trained_run
    blocker = work / "a_file"
    blocker.write_text("not a directory")
    args = [*TINY_TRAIN, "--out", str(blocker / "run")] if script == "train.py" else [
        "--model", str(work / "run" / "generator"), "--digit", "1", "--out", str(blocker / "grid.png")]  # fmt: skip
    result = run(script, *args, cwd=work)
    assert result.returncode == 2, result.stderr
    assert "cannot write" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr
