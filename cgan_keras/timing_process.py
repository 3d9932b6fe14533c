"""The child process in which `--jit-compile auto` times XLA steps on a CPU, and how a run takes turns with it.

    python -m cgan_keras.timing_process DIRECTORY

A process that has trained an XLA model on a CPU stays 5-10% slower per step
for good, so a run's own process never trains one it does not keep: a child
does. `TimingProcess` starts it as early as possible (`train.py` starts it
before importing TensorFlow itself), and the child imports TensorFlow, builds
the model and compiles its step while the run starts and builds its own plain
model. Then the two take turns (`pass_turn`): the run times a few plain
steps while the child waits, then the child a few XLA steps while the run
waits, `TURNS` times. So they never train at the same time, and a shared
machine's drifting speed hits both alike.

`DIRECTORY` holds `config.json` (the run's `TrainConfig`) and `request.json`
(the steps and turns; the dtype policy and threads per op, or `null` for what
`train.py` would choose). The child trains on random digits of the run's
shapes (a step's time does not depend on the pixels). It writes one JSON
object a line to its stdout: `{"policy": ..., "intra_op_threads": ...}` when
ready, `{"turns_left": n}` after each turn but the last, `{"seconds": median
seconds per timed step}` at the end, or `{"error": "UnimplementedError"}`
where TensorFlow cannot run the step (e.g. an op XLA cannot compile here). It
starts each turn on a line `go` on its stdin, and exits at the end of its stdin.

Importing this module does not import TensorFlow.
"""

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cgan_keras.config import TrainConfig

# `auto` times runs of at least this many steps (the seed preset's 2,400 and the default
# 5,650 included): the timing cost ~13 s on machine A (the child's start, two model builds,
# tracing, XLA compilation, 2 x 12 steps), the time of ~300 of the run's steps, and ~25 s
# on machine D with the precision timed too (a third model): a few percent of such a run,
# but most of a short test run.
MEASURE_MIN_STEPS = 2000
WARMUP_STEPS = 2  # untimed: the first step traces (and with XLA compiles) the step function
TIMED_STEPS = 10
# The timed steps come in turns, the child's alternating with the run's own, so that a shared machine's
# drifting speed hits both alike (it moved 15% from one stretch of 10 steps to the next on machine A).
TURNS = 5
# A child that has not answered by then is stuck (a whole timing took 15-20 s on 2 cores).
TIMEOUT_SECONDS = 600


class TimingFailed(RuntimeError):
    """The XLA model could not be timed (in the child, or on a GPU in the run's process); the message says why.

    E.g. `UnimplementedError` (an op XLA cannot compile here) or the child's
    exit code and last line.
    """


def wanted(config, resume):
    """Whether a run of `config` will time XLA in a child, as far as can be told before TensorFlow starts.

    A guess on the safe side of the cost: a run that needs a child and was
    given none starts one itself, and a run closes one it does not use (on
    a GPU, XLA is timed in the run's process).
    """
    return (
        config.jit_compile == "auto"
        and config.steps >= MEASURE_MIN_STEPS
        and config.strategy != "multiworker"  # there `auto` means off
        and not resume  # a resumed run reuses its recorded choice
    )


def start_early(config, resume):
    """A `TimingProcess` for a run of `config`, started before its TensorFlow starts, if `wanted`; else `None`.

    `None` too where the child cannot be started: the run then tries again
    when it times, and says why XLA was left out.
    """
    if not wanted(config, resume):
        return None
    try:
        return TimingProcess(config)
    except TimingFailed:
        return None


class TimingProcess:
    """A child process that builds `config`'s model with XLA, compiles its step and times it in turns.

    Args:
        config: the run's `TrainConfig`.
        policy: the Keras dtype policy; `None`: the child decides as `train.py`
            does (`distribute.mixed_precision_policy`).
        intra_op_threads: TensorFlow's threads per op (0: its default); `None`:
            as `train.py` decides (`speed.intra_op_threads`).
        warmup_steps: untimed first steps (the first compiles).
        timed_steps: steps timed, in `turns` turns of whole lazy-R1 periods
            (`speed.time_steps`); the run's own timing must take as many.
        turns: how many turns the timed steps come in, at most (`speed.time_steps`).

    Raises:
        TimingFailed: the child process cannot be started (e.g. no space for its directory).
    """

    def __init__(
        self,
        config,
        policy=None,
        intra_op_threads=None,
        warmup_steps=WARMUP_STEPS,
        timed_steps=TIMED_STEPS,
        turns=TURNS,
    ):
        self.timed_steps, self.turns = timed_steps, turns
        self._ready = None  # the child's first message: its policy and threads
        self._seconds = None
        request = {
            "policy": policy,
            "intra_op_threads": intra_op_threads,
            "warmup_steps": warmup_steps,
            "timed_steps": timed_steps,
            "turns": turns,
        }
        # The child imports this copy of the package, wherever the parent was started from. It sees no GPU
        # (a GPU's memory is the run's, which times XLA in its own process there), and TensorFlow's C++ logs
        # stay out of its stderr, whose last line is the reason given when it fails.
        package_root = str(Path(__file__).resolve().parents[1])
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        env = {"TF_CPP_MIN_LOG_LEVEL": "3", **os.environ, "PYTHONPATH": python_path, "CUDA_VISIBLE_DEVICES": ""}
        directory = None
        try:
            directory = Path(tempfile.mkdtemp(prefix="cgan-timing-"))
            config.save(directory / "config.json")
            (directory / "request.json").write_text(json.dumps(request))
            # A file, not a pipe: nobody reads the child's stderr until it ends, and a full pipe would block it.
            with open(directory / "stderr", "w") as stderr:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "cgan_keras.timing_process", str(directory)],
                    bufsize=0,  # every message goes through at once
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                )
        except OSError as error:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            raise TimingFailed(f"cannot start the timing process: {error}") from error
        self._directory = directory

    def pass_turn(self):
        """Lets the child train its next turn of timed steps, and waits until it has.

        The first call waits until the child is ready (its step compiled) and
        lets it train nothing. The run's own timing calls this before its
        first turn and after each (`speed.time_steps`' `between_turns`).

        Raises:
            TimingFailed: the child reported an error, ended, or did not
                answer within `TIMEOUT_SECONDS`.
        """
        if self._ready is not None:
            with contextlib.suppress(BrokenPipeError):  # it has ended: `_receive` says why
                self._process.stdin.write(b"go\n")
        message = self._receive()
        if self._ready is None:
            self._ready = message
        self._seconds = message.get("seconds")

    def seconds(self, policy, intra_op_threads):
        """The child's median seconds per timed step, once its last turn is over; closes it.

        Args:
            policy: the run's dtype policy, which the child's must be.
            intra_op_threads: the run's threads per op, which the child's must be.

        Raises:
            TimingFailed: the child has not finished its turns, or trained
                otherwise than the run (another policy or other threads per op).
        """
        self.close()
        if self._seconds is None:
            raise TimingFailed("the timing process has not finished its turns")
        if (self._ready["policy"], self._ready["intra_op_threads"]) != (policy, intra_op_threads):
            raise TimingFailed(
                f"the timing process trained in {self._ready['policy']} with {self._ready['intra_op_threads']} "
                f"threads per op, the run in {policy} with {intra_op_threads}"
            )
        return self._seconds

    def close(self):
        """Stops the child if it still runs and deletes its directory; closing again does nothing."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdin.close()
        self._process.stdout.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _receive(self):
        """The child's next message (a JSON object on one line of its stdout)."""
        answered, _, _ = select.select([self._process.stdout], [], [], TIMEOUT_SECONDS)
        if not answered:
            raise TimingFailed(f"the timing process did not answer within {TIMEOUT_SECONDS} s")
        line = self._process.stdout.readline()
        if not line:  # it has ended, or is ending: its stderr says why
            with contextlib.suppress(subprocess.TimeoutExpired):  # a stuck exit is reported, not waited for
                self._process.wait(timeout=10)
            stderr = (self._directory / "stderr").read_text(errors="replace")
            raise TimingFailed(f"the timing process exited with code {self._process.returncode}: {last_line(stderr)}")
        try:
            message = json.loads(line)
        except ValueError:
            raise TimingFailed(f"the timing process wrote {line[:80]!r}, not a message") from None
        if "error" in message:
            raise TimingFailed(message["error"])
        return message


def main(directory):
    # Messages to the parent go to the real stdout; anything else written there (a library's print) to stderr.
    messages = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    # Imported here: the parent imports this module before TensorFlow, to start this child early.
    import tensorflow as tf

    from cgan_keras import data, distribute, speed, training
    from cgan_keras.models import IMAGE_SHAPE, NUM_CLASSES

    def send(**message):
        messages.write(json.dumps(message) + "\n")

    directory = Path(directory)
    request = json.loads((directory / "request.json").read_text())
    config = TrainConfig.load(directory / "config.json")
    policy = request["policy"] or distribute.mixed_precision_policy(config.mixed_precision)
    threads = request["intra_op_threads"]
    # Before anything runs: TensorFlow fixes its thread pools when it starts.
    speed.set_intra_op_threads(speed.intra_op_threads(config.intra_op_threads, policy) if threads is None else threads)
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    ready = False

    def between_turns(turns_left):
        nonlocal ready
        if not turns_left:  # the last turn is over: the result follows
            return
        if ready:
            send(turns_left=turns_left)
        else:
            send(policy=policy, intra_op_threads=threads)
            ready = True
        if sys.stdin.readline() != "go\n":  # the run needs no timing after all, or has ended
            sys.exit(0)

    try:
        gan = training.build_gan(config, strategy, jit_compile=True, policy=policy)
        # Random digits of the run's shapes: a step's time does not depend on the pixels' values.
        digits = config.batch_size * 2
        rng = np.random.default_rng(config.seed)
        images = rng.uniform(-1, 1, (digits, *IMAGE_SHAPE)).astype(np.float32)
        labels = rng.integers(0, NUM_CLASSES, digits, dtype=np.int32)
        dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
        arguments = (request["warmup_steps"], request["timed_steps"], request["turns"], between_turns)
        send(seconds=speed.time_steps(gan, dataset, *arguments))
    except tf.errors.OpError as error:
        send(error=type(error).__name__)


def last_line(output):
    """The last line of a process's output that is not blank, stripped (its error, usually), or "no output"."""
    return next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")


if __name__ == "__main__":
    main(sys.argv[1])
