"""How a run trains fastest on the machine at hand: XLA or not, and the precision policy, by timing.

`training.run` calls `choose` before it seeds and builds its model. With
`--jit-compile auto`, `choose` times a few steps of throwaway models built from
the same config, with XLA and without, and keeps the faster; with
`--mixed-precision auto` on a CPU that computes in bfloat16 natively it times
the plain step in `float32` and in `mixed_bfloat16` too (bfloat16 paid 1.1-1.5x
on two such CPUs and cost 1.3x on a third). The run's own weights, noise and
batches are the same as if it had not measured. On a CPU the XLA model trains
in a child process, taking turns with the plain ones (`timing_process`):
having trained one leaves a process 5-10% slower per step for good.
The choice goes to `speed.json` in the run directory, and a resumed run reuses
it rather than deciding again (its checkpoint was trained under that choice).

Example:

>>> choice = choose(config, timer)  # timer(policies, xla_policy) -> Timings
>>> choice.jit_compile, choice.policy, choice.precision_seconds
(False, 'float32', {'float32': 0.063, 'mixed_bfloat16': 0.08})
"""

import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path

import keras
import tensorflow as tf

from cgan_keras import distribute, timing_process
from cgan_keras.artifacts import atomic_path

# One thread per op on a 2-core CPU with AMX, in mixed_bfloat16: train.py's mean step there took 0.0346 s
# against 0.0413 s with TensorFlow's two (1.19x). AMX runs this model's small convolutions too fast to gain
# from splitting each over both cores; TensorFlow's two inter-op threads run independent ops side by side
# instead. In float32 the two settings tied there (0.0501 vs 0.0494 s), and with XLA one thread was 1.5x
# slower (XLA loses there either way). Not measured on more cores or on CPUs without AMX: they keep the default.
SINGLE_THREAD_MAX_CORES = 2


@dataclasses.dataclass(frozen=True)
class SpeedChoice:
    """The speed settings a run trains with, and the figures behind them.

    Attributes:
        jit_compile: whether the training step is compiled with XLA.
        policy: the Keras dtype policy of the GAN's layers: `float32`,
            `mixed_float16` or `mixed_bfloat16`.
        xla_seconds: median seconds per step with XLA, when timed (else `None`).
        plain_seconds: median seconds per step without XLA, when timed: the
            fastest policy's where several were timed (`precision_seconds`).
        measure_seconds: wall time spent timing, model builds and warm-ups included.
        reason: why `jit_compile` is what it is: `measured`, the forcing flag,
            or why `auto` did not measure.
        native_bfloat16: whether the CPU has bfloat16 instructions that TensorFlow
            may use (`distribute.native_bfloat16`), where `auto` trains in
            `mixed_bfloat16` unless timed slower.
        intra_op_threads: TensorFlow's threads per op during the run (`0`:
            its default, one per core); set by `train.py` before TensorFlow
            starts (`set_intra_op_threads`), not re-decided here.
        precision_seconds: median seconds per plain step in each policy timed,
            e.g. `{"float32": 0.063, "mixed_bfloat16": 0.080}`, when the
            precision was timed (else `None`).
        recorded: read back from `speed.json` (a resumed run), not decided now;
            not saved.
    """

    jit_compile: bool
    policy: str
    xla_seconds: float | None = None
    plain_seconds: float | None = None
    measure_seconds: float = 0.0
    reason: str = "measured"
    native_bfloat16: bool = False
    intra_op_threads: int = 0
    precision_seconds: dict | None = None
    recorded: bool = dataclasses.field(default=False, compare=False)

    def summary(self):
        """One line for the console, e.g. `XLA: 0.154 s/step vs 0.196 s/step without; using XLA. Precision: float32`."""
        verdict = "using XLA" if self.jit_compile else "not using XLA"
        if self.xla_seconds is not None:
            xla = f"XLA: {self.xla_seconds:.3f} s/step vs {self.plain_seconds:.3f} s/step without; {verdict}"
        else:
            xla = f"XLA: {verdict} ({self.reason})"
        line = f"{xla}. Precision: {self.policy}"
        if self.precision_seconds and not self.jit_compile:
            others = ", ".join(
                f"{seconds:.3f} s/step in {policy}"
                for policy, seconds in self.precision_seconds.items()
                if policy != self.policy
            )
            line += f" (timed: {self.precision_seconds[self.policy]:.3f} s/step vs {others})"
        elif self.policy == "mixed_bfloat16" and self.native_bfloat16:
            line += " (this CPU computes in bfloat16 natively)"
        line += f". Threads per op: {self.intra_op_threads or 'TensorFlow default'}"
        return line + (" -- as recorded in speed.json when the run started" if self.recorded else "")

    def save(self, path):
        """Writes the choice as JSON to `path` (atomically)."""
        record = dataclasses.asdict(self)
        del record["recorded"]
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, path):
        """Reads a choice written by `save` (older ones lack `precision_seconds`); it comes back `recorded`."""
        return cls(**json.loads(Path(path).read_text()), recorded=True)


@dataclasses.dataclass(frozen=True)
class Timings:
    """What a run's timer measured: median seconds per step of throwaway models.

    Attributes:
        plain_seconds: `{policy: seconds}` without XLA, for each policy asked
            for (empty where XLA failed on a GPU: nothing is left to decide).
        xla_seconds: seconds with XLA, or `None` where it was not asked for or failed.
        xla_failure: why XLA could not be timed (e.g. `UnimplementedError`), or `None`.
    """

    plain_seconds: dict
    xla_seconds: float | None = None
    xla_failure: str | None = None


def intra_op_threads(setting, policy, cpuinfo=None, cores=None):
    """The threads per op a run asks TensorFlow for: `setting` if positive, else the `auto` rule.

    `auto` is 1 where it was measured faster (a CPU with AMX that oneDNN may
    use, `distribute.usable_cpu_flags`; at most
    `SINGLE_THREAD_MAX_CORES` usable cores, `policy` `mixed_bfloat16`),
    else 0; a `TF_NUM_INTRAOP_THREADS` in the environment is the user's own
    choice, which TensorFlow reads itself, so `auto` is then 0 too. Decided
    before TensorFlow starts, so from the untimed policy: where `choose` then
    times float32 faster, the run trains in it with these threads (float32
    tied at one and two threads on the CPU with AMX measured).

    Args:
        setting: `--intra-op-threads`: 0 (auto) or the threads to use.
        policy: the untimed policy (`distribute.mixed_precision_policy`).
        cpuinfo: the text of `/proc/cpuinfo`; `None` reads it (oneDNN's settings
            come from the environment).
        cores: usable cores; `None` counts this process's.

    Returns:
        The threads per op, or 0 for TensorFlow's default (one per core).
    """
    if setting or os.environ.get("TF_NUM_INTRAOP_THREADS"):
        return setting
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    amx = "amx_bf16" in distribute.usable_cpu_flags(cpuinfo)
    return 1 if amx and policy == "mixed_bfloat16" and cores <= SINGLE_THREAD_MAX_CORES else 0


def set_intra_op_threads(threads):
    """Gives TensorFlow `threads` per op (0: leave its default); call before TensorFlow runs anything.

    Raises:
        RuntimeError: TensorFlow has started (it fixes its thread pools then)
            and runs with a different number.
    """
    if threads and threads != tf.config.threading.get_intra_op_parallelism_threads():
        tf.config.threading.set_intra_op_parallelism_threads(threads)


def choose(config, timer, record=None, resume=False, can_time=True):
    """The run's `SpeedChoice`: the one in `record` when resuming, else decided now and saved there.

    What is timed (runs of `timing_process.MEASURE_MIN_STEPS` steps or more):
    with `--jit-compile auto`, XLA in the policy `--mixed-precision` gives
    (`distribute.mixed_precision_policy`) against the plain step; with
    `--mixed-precision auto` where that policy is `mixed_bfloat16` (a CPU that
    computes in bfloat16 natively) and XLA is not forced on, the plain step in
    `float32` too. The fastest of them is kept. Untimed, `auto` means no XLA
    and that policy.

    Args:
        config: the run's `TrainConfig` (`jit_compile`, `mixed_precision`, `steps`).
        timer: `timer(policies, xla_policy) -> Timings`: the plain step in each of
            `policies`, and XLA in `xla_policy` unless it is `None`
            (`training.time_candidates`); called only if there is something to decide.
        record: the run's `speed.json`, or `None` to keep no record.
        resume: reuse `record` if it exists.
        can_time: `False` where training steps cannot be timed before the run
            (several workers): `auto` then decides untimed.
    """
    if resume and record is not None and Path(record).exists():
        # Threads do not change what the checkpoint means: the ones in effect now are reported.
        threads = tf.config.threading.get_intra_op_parallelism_threads()
        return dataclasses.replace(SpeedChoice.load(record), intra_op_threads=threads)
    started = time.perf_counter()
    policy = distribute.mixed_precision_policy(config.mixed_precision)
    measure = can_time and config.steps >= timing_process.MEASURE_MIN_STEPS
    time_xla = measure and config.jit_compile == "auto"
    time_precision = (
        measure and config.mixed_precision == "auto" and policy == "mixed_bfloat16" and config.jit_compile != "on"
    )
    policies = ("float32", policy) if time_precision else (policy,)
    timings = timer(policies, policy if time_xla else None) if time_xla or time_precision else None
    plain = timings.plain_seconds if timings else {}
    fastest_plain = min(plain, key=plain.get) if plain else policy
    jit_compile = config.jit_compile == "on"
    if config.jit_compile in ("on", "off"):
        reason = f"--jit-compile {config.jit_compile}"
    elif not measure:
        reason = (
            f"--jit-compile auto times runs of {timing_process.MEASURE_MIN_STEPS:,} steps or more"
            if can_time
            else "--jit-compile auto does not time runs of several workers"
        )
    elif timings.xla_failure:
        reason = f"XLA failed here: {timings.xla_failure}"
    else:
        jit_compile, reason = timings.xla_seconds < plain[fastest_plain], "measured"
    choice = SpeedChoice(
        jit_compile,
        policy if jit_compile else fastest_plain,
        timings.xla_seconds if timings else None,
        plain.get(fastest_plain),
        round(time.perf_counter() - started, 1),
        reason,
        distribute.native_bfloat16(),
        tf.config.threading.get_intra_op_parallelism_threads(),
        plain if time_precision else None,
    )
    if record is not None:
        choice.save(record)
    return choice


def time_steps(gan, dataset, warmup_steps=None, timed_steps=None, turns=1, between_turns=None):
    """Trains `gan` for a few steps of `dataset`; returns the median seconds per step after the warm-up.

    With lazy R1 (`gan.r1_interval` > 1) one step in each `r1_interval` is
    dearer, so the timed steps come in whole periods of `r1_interval` steps
    and the median is over each period's mean. The timed steps come in up
    to `turns` turns of whole periods (at least `timed_steps` in all; fewer
    turns where `timed_steps` holds fewer periods), and
    `between_turns(turns_left)`, if given, is called before the first turn
    and after each, down to `turns_left=0` after the last (e.g. to let another
    process train meanwhile): its time is not counted, nor is the first step
    of each turn, which follows it (so each turn trains one step more).

    Args:
        gan: a compiled `ConditionalGAN`, used up (it trains).
        dataset: batches `(images, labels)`, enough for the steps (`data.make_dataset` repeats).
        warmup_steps: untimed first steps, at least 1 with `between_turns`;
            `None` is `timing_process.WARMUP_STEPS`.
        timed_steps: steps timed; `None` is `timing_process.TIMED_STEPS`.
        turns: how many turns the timed steps come in, at most.
        between_turns: a function of the turns left, or `None`.
    """
    warmup_steps = timing_process.WARMUP_STEPS if warmup_steps is None else warmup_steps
    timed_steps = timing_process.TIMED_STEPS if timed_steps is None else timed_steps
    if between_turns is not None and warmup_steps < 1:
        raise ValueError(f"Taking turns needs a warm-up step to wait after. Received: warmup_steps={warmup_steps}")
    turns, turn_steps = _turn_plan(gan, timed_steps, turns)
    # Taking turns, each turn starts with an untimed step, as a `TurnTaker`'s turns do (a new `fit`'s
    # start there): a side's first step after another's turn finds the caches the other left.
    lead = 0 if between_turns is None else 1
    turn_length = lead + turn_steps

    def pause(steps_done):
        turns_done, within_turn = divmod(steps_done - warmup_steps, turn_length)
        if between_turns is not None and steps_done >= warmup_steps and not within_turn:
            between_turns(turns - turns_done)

    timer = StepTimer(pause)
    gan.fit(dataset, steps_per_epoch=warmup_steps + turn_length * turns, epochs=1, verbose=0, callbacks=[timer])
    in_turns = timer.step_seconds[warmup_steps:]
    return _median_period(gan, [seconds for step, seconds in enumerate(in_turns) if step % turn_length >= lead])


class TurnTaker:
    """Times another model in turns from inside a `time_steps`: pass it as (or call it from) `between_turns`.

    Each call trains one turn of its model, in a short `fit` of its own whose
    first step (the new `fit`'s start) is not timed, as `time_steps` does not
    time the first step of its turns; the call before the first turn warms it
    up instead. So two models in one process take turns as the run's takes
    turns with `timing_process`' child, and their steps are timed alike.

    Args:
        gan: a compiled `ConditionalGAN`, used up.
        dataset: batches `(images, labels)`, repeated.
        warmup_steps, timed_steps, turns: as `time_steps` is given them.
    """

    def __init__(self, gan, dataset, warmup_steps=None, timed_steps=None, turns=1):
        self.gan, self.dataset = gan, dataset
        self.warmup_steps = timing_process.WARMUP_STEPS if warmup_steps is None else warmup_steps
        timed_steps = timing_process.TIMED_STEPS if timed_steps is None else timed_steps
        self.turns, self.turn_steps = _turn_plan(gan, timed_steps, turns)
        self.step_seconds = []

    def __call__(self, turns_left):
        """Warms up before the first turn (`turns_left == turns`), else trains a turn."""
        if turns_left == self.turns:
            self.gan.fit(self.dataset, steps_per_epoch=self.warmup_steps, epochs=1, verbose=0)
            return
        timer = StepTimer()
        self.gan.fit(self.dataset, steps_per_epoch=1 + self.turn_steps, epochs=1, verbose=0, callbacks=[timer])
        self.step_seconds += timer.step_seconds[1:]

    def seconds(self):
        """The median seconds per step over the turns trained, as `time_steps` gives it."""
        return _median_period(self.gan, self.step_seconds)


def _turn_plan(gan, timed_steps, turns):
    """`(turns, steps per turn)`: at most `turns` turns of whole lazy-R1 periods, `timed_steps` or more in all.

    Fewer turns where `timed_steps` holds fewer periods. Both sides of a
    turn-taking timing derive the same plan from the same config.
    """
    period = _r1_period(gan)
    turns = min(turns, math.ceil(timed_steps / period))
    return turns, math.ceil(timed_steps / turns / period) * period


def _median_period(gan, step_seconds):
    """The median over each lazy-R1 period's mean step (over each step without lazy R1)."""
    period = _r1_period(gan)
    return statistics.median(
        statistics.mean(step_seconds[start : start + period]) for start in range(0, len(step_seconds), period)
    )


def _r1_period(gan):
    """Steps per lazy-R1 period: one in each `r1_interval` steps is dearer (1 without R1)."""
    return gan.r1_interval if gan.r1_gamma else 1


class StepTimer(keras.callbacks.Callback):
    """Records `step_seconds`: the wall time of each step of a `fit` epoch, from the previous step's end.

    Args:
        pause: `pause(steps_done)`, called after each step is timed with the
            epoch's steps so far (e.g. to wait for another process); the time
            spent in it is not counted: the next step's time starts when it
            returns. `None`: none.
    """

    def __init__(self, pause=None):
        super().__init__()
        self._pause = pause

    # Batch ends are step boundaries: the TensorFlow trainer turns each step's logs into floats before them.
    def on_epoch_begin(self, epoch, logs=None):
        self.step_seconds = []
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step_seconds.append(time.perf_counter() - self._last)
        if self._pause is not None:
            self._pause(len(self.step_seconds))
        self._last = time.perf_counter()
