"""train.py and infer.py as a user runs them: subprocesses, exit codes, files."""

import dataclasses
import importlib.util
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
from support import TINY, hold_lock, mount_tmpfs

from cgan_keras import cli, export
from cgan_keras.config import TrainConfig
from cgan_keras.progress import RunProgress
from cgan_keras.sampler import DigitSampler

ROOT = Path(__file__).resolve().parents[1]
# A forced thread count (auto gives 1 on a 2-core AMX machine, TensorFlow's default elsewhere) must reach
# TensorFlow: speed.json records the threads in effect.
TINY_TRAIN = dataclasses.replace(TINY, intra_op_threads=1).to_argv()  # --data builtin --steps 4 ...


def run(script, *args, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd, env=env)


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
    # TensorFlow's log level as a user has it: not set.
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    result = run("train.py", *TINY_TRAIN, "--out", "run", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    return work, result


def test_train_writes_every_artifact(trained_run):
    work, result = trained_run
    out = work / "run"
    assert result.stdout.startswith("data: builtin (5,000 digits); 1 replica(s)\n")
    for noise in ("absl::InitializeLog", "cudart_stub", "cuInit", "oneDNN", "remapper failed"):
        assert noise not in result.stderr  # printed by TensorFlow on a machine without a GPU
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoints", "config.json", "eval.json", "gan.keras", "generator", "generator.keras",
        "generator.onnx", "history.csv", "history.png", "logs", "samples", "serving", "speed.json",
    ]  # fmt: skip
    assert (out / "serving" / "cgan" / "1" / "saved_model.pb").is_file()
    report = json.loads((out / "eval.json").read_text())
    assert report["generated"] == 10 * 10 and report["fid_samples"] == 5000  # --eval-per-class 10
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002.keras", "step_000004.keras"]
    assert "% of 100 generated digits" in result.stdout and "judge:" in result.stdout
    progress = [line.split("  ")[0] for line in result.stdout.splitlines() if line.startswith("step ")]
    assert progress[-2:] == ["step 2/4", "step 4/4"] and "Epoch" not in result.stdout  # one line per --log-every
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["progress.png", "step_000001.png",
                                                                   "step_000002.png", "step_000004.png"]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["data"] == "builtin" and config["generator_filters"] == [8, 4]
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + one row per 2 steps
    assert json.loads((out / "speed.json").read_text())["intra_op_threads"] == 1


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


def test_infer_with_onnx_never_imports_tensorflow_and_matches_the_saved_model(trained_run):
    work, _ = trained_run
    # A `tensorflow` that raises on import, first on the path: the ONNX path must not touch it.
    fake = work / "no_tensorflow" / "tensorflow"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    flags = ["--digit", "all", "--count", "3", "--seed", "11"]
    onnx_run = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), "--model", str(work / "run" / "generator.onnx"), *flags,
         "--out", "onnx.png", "--npy", "onnx.npy"],
        capture_output=True, text=True, cwd=work, env=environment,
    )  # fmt: skip
    assert onnx_run.returncode == 0, onnx_run.stderr
    saved_model_run = run("infer.py", "--model", str(work / "run" / "generator"), *flags, "--out", "tf.png",
                          "--npy", "tf.npy", cwd=work)  # fmt: skip
    assert saved_model_run.returncode == 0, saved_model_run.stderr
    from_onnx, from_saved_model = np.load(work / "onnx.npy"), np.load(work / "tf.npy")
    assert from_onnx.shape == (30, 28, 28, 1) and from_onnx.dtype == np.float32
    assert np.abs(from_onnx - from_saved_model).max() <= 1e-4
    assert (work / "onnx.png").stat().st_size > 0
    # Interpolation too runs without TensorFlow, and draws what the SavedModel draws.
    morph = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), "--model", str(work / "run" / "generator.onnx"),
         "--interpolate", "3", "8", "--frames", "6", "--count", "2", "--truncation", "0.8", "--npy", "morph.npy"],
        capture_output=True, text=True, cwd=work, env=environment,
    )  # fmt: skip
    assert morph.returncode == 0, morph.stderr
    assert "wrote morph_3_8.png (2 rows of 6 frames) and morph.npy" in morph.stdout
    expected = DigitSampler.from_saved_model(work / "run" / "generator").interpolate(3, 8, 6, 2, 0, 0.8)
    assert np.abs(np.load(work / "morph.npy") - expected.reshape(12, 28, 28, 1)).max() <= 1e-4


@pytest.mark.parametrize("damage", ["truncated", "wrong inputs"])
def test_infer_rejects_a_bad_onnx_file(trained_run, damage):
    work, _ = trained_run
    model = work / f"{damage.replace(' ', '_')}.onnx"
    if damage == "truncated":
        model.write_bytes((work / "run" / "generator.onnx").read_bytes()[:2000])
        message = "onnxruntime cannot load it"
    else:
        import onnx

        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["noise"], ["images"])],
            "identity",
            [onnx.helper.make_tensor_value_info("noise", onnx.TensorProto.FLOAT, ["N", 8])],
            [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 8])],
        )
        opset = [onnx.helper.make_opsetid("", 17)]
        onnx.save(onnx.helper.make_model(graph, opset_imports=opset, ir_version=8), model)
        message = "Expected inputs digit int32 [N], noise float [N, latent_dim]"
    result = run("infer.py", "--model", str(model), "--digit", "1", cwd=work)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"--model {model} is not a generator ONNX file" in result.stderr and message in result.stderr


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("infer.py", ["--digit", "10"], "--digit must be 0-9 or `all`. Received: --digit 10"),
        ("infer.py", ["--digit", "x"], "--digit must be 0-9 or `all`"),
        ("infer.py", ["--digit", "3", "--count", "0"], "--count must be a positive integer"),
        ("infer.py", ["--digit", "3", "--model", "missing"], "--model missing is not a directory"),
        ("infer.py", ["--interpolate", "3"], "argument --interpolate: expected 2 arguments"),
        ("train.py", ["--steps", "0"], "--steps must be a positive integer. Received: --steps 0"),
        ("train.py", ["--batch-size", "0"], "--batch-size must be a positive integer"),
        ("train.py", ["--beta-1", "5"], "--beta-1 must be in [0, 1). Received: --beta-1 5.0"),
        ("train.py", ["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    ],
)
def test_user_mistakes_exit_2_with_one_clear_line(tmp_path, script, args, message):
    result = run(script, *args, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # argparse's 20-line usage block is not printed
    assert message in line


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("KERAS_BACKEND", "jax", "cgan-keras runs on Keras' TensorFlow backend; unset KERAS_BACKEND."),
        ("TF_CONFIG", "{bad", "TF_CONFIG is not TensorFlow's cluster JSON"),
    ],
)
def test_train_refuses_an_environment_it_cannot_run_in_before_importing_tensorflow(tmp_path, variable, value, message):
    env = {**os.environ, variable: value}
    result = run("train.py", "--strategy", "multiworker", "--out", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert message in line


def test_a_batch_that_does_not_split_over_the_replicas_exits_2_before_writing(tmp_path):
    out = tmp_path / "run"
    flags = ["--strategy", "mirrored", "--cpu-replicas", "3", "--batch-size", "8", "--jit-compile", "off"]
    result = run("train.py", *flags, "--data", "builtin", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--batch-size 8 does not split evenly over 3 replicas; use a multiple of 3" in line
    assert not out.exists()  # made for the lock, and removed with it: the run wrote nothing


def test_forced_bfloat16_where_onednn_has_no_bfloat16_kernels_exits_2_before_writing(tmp_path):
    # TensorFlow would abort at the first step (machine A, 2026-12-07); oneDNN forced on makes it so on any x86 CPU.
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    out = tmp_path / "run"
    flags = ["--mixed-precision", "on", "--jit-compile", "off", "--data", "builtin", "--out", str(out)]
    result = run("train.py", *flags, cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--mixed-precision on: `mixed_bfloat16` cannot run here: ONEDNN_MAX_CPU_ISA=AVX2" in result.stderr
    assert not out.exists()  # made for the lock, and removed with it: the run wrote nothing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--interpolate", "3", "11"], "--interpolate must be two digits 0-9. Received: --interpolate 3 11"),
        (["--interpolate", "3", "8", "--frames", "0"], "--frames must be an integer >= 2. Received: --frames 0"),
        (["--digit", "3", "--frames", "5"], "--frames goes with --interpolate A B"),
        (["--digit", "3", "--truncation", "0"], "--truncation must be a number >= 0.01. Received: --truncation 0"),
        (["--digit", "3", "--truncation", "-1"], "--truncation must be a number >= 0.01"),
        (["--digit", "3", "--truncation", "1e-30"], "--truncation must be a number >= 0.01"),  # its redraws never end
        (["--digit", "3", "--interpolate", "1", "2"], "argument --interpolate: not allowed with argument --digit"),
        (["--digit", "²"], "--digit must be 0-9 or `all`. Received: --digit ²"),  # str.isdigit() says yes
        (["--digit", "3", "--seed", "-1"], "--seed must be a non-negative integer. Received: --seed -1"),
        (["--digit", "3", "--out", "sevens.jpg"], "--out must be a .png file. Received: --out sevens.jpg"),
        (["--digit", "3", "--out", "missing/x.png"], "--out missing/x.png: cannot write to the directory missing"),
        (["--digit", "3", "--npy", "missing/x.npy"], "--npy missing/x.npy: cannot write to the directory missing"),
        (["--digit", "3", "--npy", "tests"], "--npy tests is a directory; expected a file name"),  # written first
        (["--digit", "3", "--out", "x.png", "--npy", "./x.png"], "--npy and --out must be two files. Received: both"),
    ],
)
def test_infer_rejects_bad_interpolation_and_truncation_values(capsys, args, message):
    infer = import_script("infer.py")
    with pytest.raises(SystemExit) as exit_info:
        infer.parse_args(args)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # argparse's usage block is not printed
    assert message in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", ""], "--out must name a directory. Received: --out ''"),
        (
            ["--eval-per-class", "0"],
            "--eval-per-class must be a positive integer up to 10,000. Received: --eval-per-class 0",
        ),
    ],
)
def test_train_names_its_flags_in_setting_errors(capsys, args, message):
    train = import_script("train.py")
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(args)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line


def test_train_names_what_did_not_fit_in_memory():
    train = import_script("train.py")
    # TensorFlow's message for `--latent-dim 1000000000` (2026-12-07); it comes after 10 s of allocator retries.
    message = (
        "{{function_node __wrapped__StatelessRandomUniformV2_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
        "OOM when allocating tensor with shape[7,7,80,1000000010] and type float on "
        "/job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu [Op:StatelessRandomUniformV2] name: "
    )
    oom = tf.errors.ResourceExhaustedError(None, None, message)
    assert train._oom_detail(oom) == "OOM when allocating tensor with shape[7,7,80,1000000010]"
    assert train._oom_detail(MemoryError()) == "MemoryError"


def test_infer_truncation_reaches_the_noise(trained_run, capsys):
    infer = import_script("infer.py")
    work, _ = trained_run
    model = work / "run" / "generator"
    infer.main(["--model", str(model), "--digit", "4", "--count", "3", "--truncation", "0.5",
                "--out", str(work / "t.png"), "--npy", str(work / "t.npy")])  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    sampler = DigitSampler.from_saved_model(model)
    np.testing.assert_allclose(np.load(work / "t.npy"), sampler([4, 4, 4], seed=0, truncation=0.5), atol=1e-6)
    assert not np.allclose(np.load(work / "t.npy"), sampler([4, 4, 4], seed=0), atol=1e-3)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        TrainConfig.from_preset(
            "seed", steps=10, digit_at_every_scale=True, projection=False, ema_decay=0.5, r1_interval=4
        ),
    ],
    ids=["tiny", "seed preset"],
)
def test_train_flags_built_from_a_config_give_that_config_back(config):
    train = import_script("train.py")
    parsed, resume, overwrite = train.parse_args(config.to_argv())
    assert parsed == config and not resume and not overwrite
    assert "--no-projection" in config.to_argv() or config is TINY


def import_script(name):
    """Imports a top-level script (`infer.py`) as a module, for in-process calls."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / name)
    module = importlib.util.module_from_spec(spec)
    before = os.environ.copy()
    spec.loader.exec_module(module)
    os.environ.clear()  # the script sets CGAN_KERAS_DEFER_TENSORFLOW for its own process; not for later tests'
    os.environ.update(before)
    return module


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


def test_a_run_killed_with_sigkill_resumes_to_complete_artifacts(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "40", "--log-every", "20", "--sample-every", "20", "--out", "killed"]
    process = stopped_at("step_000020.keras:renamed", args, work)  # its first checkpoint is in place
    second = run("train.py", *args, "--resume", cwd=work)
    assert second.returncode == 2 and f"is in use by another run (pid {process.pid})" in second.stderr.splitlines()[-1]
    process.kill()
    process.wait()
    assert not (work / "killed" / "generator").exists()

    result = run("train.py", *args, "--resume", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "resuming from killed/checkpoints/step_000020.keras (step 20)" in result.stdout
    history = (work / "killed" / "history.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in history[1:]] == ["20", "40"]  # the step column, each step once
    assert (work / "killed" / "samples" / "step_000040.png").exists()
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


def start_workers(*args, cwd, count=2, stopping=None):
    """Starts `count` train.py workers of one cluster on free loopback ports.

    Each worker has its own TMPDIR under `cwd`, and writes its output to files
    there: a full pipe would block it, and with it every other worker. With
    `stopping=(index, moment)`, that worker stops itself at `moment` of a
    write (`CGAN_KERAS_STOP_AT`).
    """
    probes = [socket.socket() for _ in range(count)]
    for probe in probes:  # all bound at once, so the ports differ
        probe.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]}
    for probe in probes:
        probe.close()
    workers = []
    for index in range(count):
        temporary = cwd / f"tmp_worker{index}"
        temporary.mkdir(exist_ok=True)
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(task), "TMPDIR": str(temporary)}
        if stopping and stopping[0] == index:
            env["CGAN_KERAS_STOP_AT"] = stopping[1]
        with open(temporary / "stdout", "w") as stdout, open(temporary / "stderr", "w") as stderr:
            worker = subprocess.Popen(
                [sys.executable, str(ROOT / "train.py"), *args, "--strategy", "multiworker"],
                stdout=stdout,
                stderr=stderr,
                text=True,
                cwd=cwd,
                env=env,
            )
        worker.temporary = temporary
        workers.append(worker)
    return workers


def finish(workers, timeout=600):
    """Waits for every worker; returns `(worker, stdout, stderr)` of each, killing them all on a timeout."""
    try:
        for worker in workers:
            worker.wait(timeout=timeout)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return [(worker, (worker.temporary / "stdout").read_text(), (worker.temporary / "stderr").read_text())
            for worker in workers]  # fmt: skip


def checkpoint_weights(path):
    """Every array of a checkpoint (a `.keras` zip whose `model.weights.h5` holds the state), by its path."""
    arrays = {}
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as file:
        file.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_two_workers_train_like_one_process(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "20", "--log-every", "10", "--sample-every", "10"]
    workers = start_workers(*args, "--out", "workers", cwd=work)
    single = run("train.py", *args, "--out", "single", cwd=work)
    assert single.returncode == 0, single.stderr
    digests = []
    for worker, stdout, stderr in finish(workers):
        assert worker.returncode == 0, stderr
        assert "2 replica(s)" in stdout
        digests.append(next(line for line in stdout.splitlines() if line.startswith("weights sha256")))
    assert digests[0] == digests[1] and digests[0].endswith("at step 20")
    assert sorted(p.name for p in (work / "workers").iterdir()) == sorted(p.name for p in (work / "single").iterdir())
    samples = sorted(p.name for p in (work / "workers" / "samples").iterdir())
    assert samples == sorted(p.name for p in (work / "single" / "samples").iterdir()) and "step_000020.png" in samples
    assert [line.split(",")[1] for line in (work / "workers" / "history.csv").read_text().splitlines()] == [
        "step", "10", "20"]  # fmt: skip
    assert sorted(p.name for p in (work / "tmp_worker1").iterdir()) == ["stderr", "stdout"]  # its saves are gone
    expected = checkpoint_weights(work / "single" / "checkpoints" / "step_000020.keras")
    actual = checkpoint_weights(work / "workers" / "checkpoints" / "step_000020.keras")
    assert actual.keys() == expected.keys()
    differences = {name: np.abs(actual[name] - value) for name, value in expected.items()}
    # Every array's gap and both runs' settings in effect: this failed once in CI and never by hand (max 5.3e-6).
    report = "\n".join(
        [f"{name}: max {gap.max():.1e}, {np.count_nonzero(gap > 1e-4)} over 1e-4" for name, gap in differences.items()]
        + [f"{run} speed.json: {(work / run / 'speed.json').read_text()}" for run in ("single", "workers")]
    )
    for name, difference in differences.items():
        # The workers sum gradients in another order, and Adam turns a gradient near zero into a full step of
        # either sign (1e-3), so a rare weight may differ by a step or two (seen: 2.7e-4); the rest agree closely.
        assert np.count_nonzero(difference > 1e-4) <= max(1, difference.size // 1000), f"{name}\n{report}"
        assert difference.max() < 2e-3, f"{name}\n{report}"


def test_a_killed_worker_stops_its_peer_and_both_resume(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "40", "--log-every", "20", "--sample-every", "20", "--out", "killed_workers"]
    # The other worker stops itself once it has saved step 20 (in its TMPDIR), then is killed there.
    chief, other = start_workers(*args, cwd=work, stopping=(1, "step_000020.keras:renamed"))
    _, status = os.waitpid(other.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), (other.temporary / "stderr").read_text()
    wait_for(work / "killed_workers" / "checkpoints" / "step_000020.keras", chief, timeout=300)
    other.kill()
    (_, _, stderr), _ = finish([chief, other], timeout=120)
    assert chief.returncode == 1
    assert "lost contact with another worker" in stderr.splitlines()[-1] and "Traceback" not in stderr
    assert not (work / "killed_workers" / "generator").exists()

    for worker, stdout, stderr in finish(start_workers(*args, "--resume", cwd=work)):
        assert worker.returncode == 0, stderr
        assert "resuming from killed_workers/checkpoints/step_000020.keras (step 20)" in stdout
    steps = [line.split(",")[1] for line in (work / "killed_workers" / "history.csv").read_text().splitlines()[1:]]
    assert steps == ["20", "40"]
    assert (work / "killed_workers" / "samples" / "step_000040.png").exists()


def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "5000", "--log-every", "10", "--sample-every", "10", "--out", "stopped_workers"]
    chief, other = start_workers(*args, cwd=work)
    wait_for(work / "stopped_workers" / "samples" / "step_000010.png", chief, timeout=300)
    other.send_signal(signal.SIGTERM)
    (_, chief_out, chief_err), (_, other_out, other_err) = finish([chief, other], timeout=120)
    assert (chief.returncode, other.returncode) == (143, 143), chief_err + other_err
    assert "train.py: stopped by SIGTERM (sent to another worker); checkpoint and generator saved in" in chief_err
    assert "train.py: stopped by SIGTERM; checkpoint and generator saved by the chief (worker 0)" in other_err
    assert "lost contact" not in chief_err + other_err
    newest = max((work / "stopped_workers" / "checkpoints").glob("step_*.keras"))  # the step they stopped at
    assert 10 <= int(newest.stem.removeprefix("step_")) < 5000
    assert (work / "stopped_workers" / "generator" / "saved_model.pb").exists()


def test_infer_streams_a_large_count_and_shows_the_first_hundred(trained_run):
    work, _ = trained_run
    model = str(work / "run" / "generator")
    result = run("infer.py", "--model", model, "--digit", "5", "--count", "2500", "--npy", "many.npy", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "100 of 2500 digits shown" in result.stdout
    images = np.load(work / "many.npy", mmap_mode="r")
    assert images.shape == (2500, 28, 28, 1) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("what", [["--digit", "5"], ["--interpolate", "3", "8"]])
def test_infer_refuses_a_count_beyond_the_machine_in_one_line_and_writes_nothing(trained_run, capsys, what):
    work, _ = trained_run
    infer = import_script("infer.py")
    count = str(10**15)  # more than a 64-bit address space holds, whatever the machine's overcommit
    flags = ["--model", str(work / "run" / "generator.onnx"), *what, "--count", count, "--out", str(work / "huge.png")]
    with pytest.raises(SystemExit) as exit_info:
        infer.main(flags)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    asked = f"--count {count}" + (" with --frames 10" if what[0] == "--interpolate" else "")
    assert line.startswith(f"infer.py: error: {asked} is more than this machine holds: Unable to allocate")
    assert not (work / "huge.png").exists()


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


def test_output_whose_reader_has_gone_swallows_the_writes_instead_of_raising(monkeypatch):
    pipes = {name: os.pipe() for name in ("stdout", "stderr")}  # (read end, write end)
    streams = {name: os.fdopen(write_end, "w") for name, (_, write_end) in pipes.items()}
    for name, stream in streams.items():
        monkeypatch.setattr(sys, name, stream)
    cli.survive_closed_output()
    print("read", flush=True)
    assert os.read(pipes["stdout"][0], 100) == b"read\n"
    for read_end, _ in pipes.values():
        os.close(read_end)
    print("lost", flush=True)  # BrokenPipeError without the guard
    RunProgress(10, interactive=False).on_epoch_end(0)
    print("train.py: stopped by SIGINT", file=sys.stderr, flush=True)
    for name, (_, write_end) in pipes.items():
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull)), name
    for stream in streams.values():
        stream.close()


def test_import_tensorflow_drops_the_start_up_noise_and_passes_everything_else(tmp_path):
    """A stand-in `tensorflow` package writes TensorFlow 2.21's start-up lines, and one real error, to fd 2."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1796116443.894239    4910 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "os.write(2, b'E0000 00:00:1796116448.043389    4910 cuda_platform.cc:52] failed call to cuInit: UNKNOWN\\n')\n"
        "os.write(2, b'E0000 00:00:1796116448.043389    4910 other.cc:7] a real problem\\n')\n"
        "config = types.SimpleNamespace(list_physical_devices=lambda: [])\n"
        "if os.environ.get('FAIL'):\n"
        "    raise ImportError('broken install')\n"
    )
    command = [sys.executable, "-c", "from cgan_keras import cli; cli.import_tensorflow('test'); print('ours')"]
    # As the tools import the package: without its TensorFlow import (`cgan_keras/__init__.py`).
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "CGAN_KERAS_DEFER_TENSORFLOW": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ours\n"
    assert result.stderr == "E0000 00:00:1796116448.043389    4910 other.cc:7] a real problem\n"

    failed = subprocess.run(command, capture_output=True, text=True, env={**env, "FAIL": "1"})
    assert failed.returncode == 1
    assert failed.stderr.startswith("E0000 00:00:1796116448.043389    4910 other.cc:7] a real problem\n")
    assert "ImportError: broken install" in failed.stderr and "cuInit" not in failed.stderr

    verbose = subprocess.run(command, capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert len(verbose.stderr.splitlines()) == 4  # the user asked for TensorFlow's logs


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_a_second_train_on_an_out_in_use_exits_2_and_touches_nothing(tmp_path, flags):
    holder = hold_lock(tmp_path / "run")
    (tmp_path / "run" / "history.csv").write_text("the other run's")
    result = run("train.py", *TINY_TRAIN, "--out", "run", *flags, cwd=tmp_path)
    holder.kill()
    holder.wait()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"train.py: error: --out run is in use by another run (pid {holder.pid})" in result.stderr.splitlines()[-1]
    assert (tmp_path / "run" / "history.csv").read_text() == "the other run's"


def test_a_full_disk_stops_train_with_one_line_and_exit_1(trained_run, tmp_path):
    """The issue's report: the default networks on a 3 MB tmpfs (or, where mounting is not allowed,
    a 1 MB limit on the size of any file the process writes) fill up at the checkpoint of step 100."""
    work, _ = trained_run
    mounted = mount_tmpfs(tmp_path / "disk", "3m")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "disk" / "run"
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "--data", "builtin", "--steps", "100", "--batch-size", "16",
             "--out", str(out)],
            capture_output=True, text=True, cwd=work, preexec_fn=None if mounted else limit_file_size,
        )  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(tmp_path / "disk")], check=True)
    reason = "No space left on device" if mounted else "File too large"
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"train.py: error: cannot write {out}/checkpoints/step_000100.keras: {reason}; "
        "the complete artifacts from before are kept"
    )
    assert "Traceback" not in result.stderr


def test_resume_with_only_damaged_checkpoints_exits_2_naming_them(trained_run):
    work, _ = trained_run
    shutil.copytree(work / "run", work / "damaged")
    config = json.loads((work / "damaged" / "config.json").read_text())
    (work / "damaged" / "config.json").write_text(json.dumps({**config, "out": "damaged"}))
    for checkpoint in (work / "damaged" / "checkpoints").iterdir():
        checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    result = run("train.py", *TINY_TRAIN, "--out", "damaged", "--resume", cwd=work)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        "train.py: error: --resume: no checkpoint can be read (damaged/checkpoints/step_000004.keras: "
    )
    assert "damaged/checkpoints/step_000002.keras: " in last and last.endswith("pass --overwrite to start again")


def stopped_at(moment, args, cwd, stdout=None):
    """Runs train.py until it stops itself at `moment` of a write (CGAN_KERAS_STOP_AT); returns the process.

    Its stderr, and its stdout unless `stdout` is given, go to `cwd / "stopped.log"`.
    """
    with open(cwd / "stopped.log", "w") as log:  # a file, not a pipe: a full pipe would block it before the moment
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            stdout=log if stdout is None else stdout,
            stderr=log,
            cwd=cwd,
            env={**os.environ, "CGAN_KERAS_STOP_AT": moment},
        )
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), (cwd / "stopped.log").read_text()
    return process


def test_ctrl_c_saves_and_exits_130_and_a_sigkill_during_the_export_leaves_the_old_or_the_new_generator(trained_run):
    work, _ = trained_run
    args = [*TINY_TRAIN, "--steps", "20", "--out", "exported"]
    out = work / "exported"
    noise = np.random.default_rng(0).standard_normal((10, 8), dtype=np.float32)

    def generator_images():
        serve = export.load_generator(out / "generator").serve  # raises unless it is a complete SavedModel
        return serve(digit=tf.range(10), noise=tf.constant(noise))["images"].numpy()

    # A previous complete export: Ctrl-C during step 2's grid stops the run there; it saves and exports step 2,
    # though its stdout's reader has gone (`train.py | tee log`: the same Ctrl-C kills tee).
    read_end, write_end = os.pipe()
    process = stopped_at("step_000002.png:renamed", args, work, stdout=write_end)
    os.close(write_end)
    os.close(read_end)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    returncode = process.wait(timeout=120)
    output = (work / "stopped.log").read_text()
    assert returncode == 130 and "stopped by SIGINT" in output and "Traceback" not in output, output
    assert (out / "checkpoints" / "step_000002.keras").exists()
    old = generator_images()

    seen = {}
    for moment in ("generator:staged", "generator:writing", "generator:renamed", "gan.keras:staged"):
        if moment == "generator:writing":  # mid-write: kill as soon as a new staging of the SavedModel appears
            left_by_kills = set(out.glob(".generator.*.partial"))
            process = start("train.py", *args, "--resume", cwd=work)
            while not set(out.glob(".generator.*.partial")) - left_by_kills:
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.01)
        else:
            process = stopped_at(moment, [*args, "--resume"], work)
        process.kill()
        process.wait()
        seen[moment] = generator_images()

    result = run("train.py", *args, "--resume", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "resuming from exported/checkpoints/step_000020.keras (step 20)" in result.stdout
    new = generator_images()
    assert not np.array_equal(old, new)  # step 3's generator, then step 20's
    np.testing.assert_array_equal(seen["generator:staged"], old)
    assert np.array_equal(seen["generator:writing"], old) or np.array_equal(seen["generator:writing"], new)
    np.testing.assert_array_equal(seen["generator:renamed"], new)
    np.testing.assert_array_equal(seen["gan.keras:staged"], new)
    assert not list(out.rglob("*.partial"))  # what the kills left, the last resume removed
    assert json.loads((out / "eval.json").read_text())["label_accuracy"] >= 0


def test_evaluate_cli_writes_eval_json_beside_the_model(trained_run, capsys):
    from cgan_keras import evaluate

    work, _ = trained_run
    model = work / "run" / "generator"
    out = work / "evaluated.json"
    evaluate.main(["--model", str(model), "--per-class", "5", "--out", str(out)])
    evaluate.main(["--model", str(model), "--per-class", "5", "--out", str(work / "new" / "eval.json")])  # made
    assert (work / "new" / "eval.json").read_text() == out.read_text()
    printed = capsys.readouterr().out
    assert "judge: the fixed MNIST judge" in printed and "real-vs-real floor" in printed
    record = json.loads(out.read_text())
    assert record["model"] == str(model) and record["generated"] == 50 and record["fid_samples"] == 5000
    assert record["fid"] > record["fid_floor"] > 0 and 0 <= record["recall"] <= 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--per-class", "0"], "--per-class must be a positive integer. Received: --per-class 0"),
        (["--truncation", "-0.5"], "--truncation must be a number >= 0.01. Received: --truncation -0.5"),
        (["--seed", "-1"], "--seed must be a non-negative integer. Received: --seed -1"),
        (["--out", "README.md/eval.json"], "cannot write --out README.md/eval.json: expected a file in a writable"),
        (["--out", "tests"], "cannot write --out tests: expected a file in a writable directory"),
        # More bytes than a 64-bit address space holds: refused whatever the machine's overcommit policy.
        (["--per-class", str(10**15)], f"--per-class {10**15} is more than this machine holds"),
        ([], "Expected a SavedModel directory (with saved_model.pb)"),
    ],
)
def test_evaluate_cli_reports_user_mistakes_in_one_line(trained_run, tmp_path, capsys, arguments, message):
    from cgan_keras import evaluate

    work, _ = trained_run
    model = work / "run" / "generator" if arguments else tmp_path  # an empty directory is no SavedModel
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--model", str(model), *arguments])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m cgan_keras.evaluate: error: ") and message in line


def test_evaluate_cli_exits_2_with_one_line_for_a_missing_model(tmp_path):
    command = [sys.executable, "-m", "cgan_keras.evaluate", "--model", str(tmp_path / "missing")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--model" in result.stderr
    assert "Traceback" not in result.stderr
