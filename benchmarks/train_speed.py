"""Training speed of `ConditionalGAN`: seconds per step, digits/s, model FLOPs, MFU, peak memory.

Examples:

    python benchmarks/train_speed.py                    # every variant at batch 32, 64 and 256 (a few minutes)
    python benchmarks/train_speed.py --quick            # smoke test: batch 64, 2 short repeats
    python benchmarks/train_speed.py --batch-sizes 64 --variants default xla --repeats 7
    python benchmarks/train_speed.py --batch-sizes 64 --variants default xla train.py --json speed.json

Every variant is built by `cgan_keras.training.build_gan` and timed through the real
`fit` path: a warm-up `fit` (tracing, XLA compilation, pipeline start-up), then
`--repeats` timed `fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)` calls.
A callback times every step; the table gives their mean (a run pays for its slow
steps too, and the `train.py` row is a mean) and their median (the typical step: what
the work done every 100 or 500 steps and a shared machine's short slow spells leave
out, so mean minus median estimates their cost), and apart from them the time each `fit`
call spends outside its steps. Variants, each against `default`
(float32, no XLA, `make_dataset` on the 5,000 builtin digits, default networks):

    xla        compile the step with XLA (`--jit-compile on`)
    synthetic  one fixed in-memory batch repeated (the input pipeline's cost, by difference)
    bf16       `--mixed-precision on`, which on a CPU means the `mixed_bfloat16` policy (checked)
    float32    `--mixed-precision off`: the same as `default` (only `bf16`, `fit` and `train.py` differ)
    seed       the seed preset's networks and AdaDelta (`TrainConfig.from_preset("seed")`)
    fit        a bare `fit` with `train.py`'s settings (`TrainConfig()`, so `auto` precision, timed; no XLA) in
               epochs of `--log-every`-like 100 steps, timed like the `train.py` row: its callbacks' cost, by difference
    train.py   `training.run` as `python train.py` runs it: default flags (so `--jit-compile auto` and
               `--mixed-precision auto` choose, timing them first), its callbacks, grids every 100
               steps, a checkpoint every 500, its progress line as on a terminal; s/step is the mean after the
               warm-up over `--run-steps` (500, so one checkpoint falls inside), so the work done
               every 100 and 500 steps counts; stopped after them (no final evaluation)

FLOPs per step are counted from the layer shapes (conv, transposed conv, dense;
see `step_flops`) and MFU divides their rate by a float32 matmul's, measured in
the same run. Every row runs in a process of its own (this script, started again for
that row), so no row inherits another's state: a process that has trained an XLA model
stays 5-10% slower afterwards. Peak memory is that process's `ru_maxrss`.
`--rounds N` runs every row N times, interleaved (all variants, then all again), and
shows the round with the median s/step, the others in its note: the way to compare rows
on a shared machine whose speed drifts. Each round starts by measuring the float32 matmul
peak, and a row's MFU is over its own round's peak, which drifts with the machine too.
`--json PATH` also writes the rows as a JSON list of objects (`variant`, `batch`,
`s_per_step`, `median_s_per_step`, `mfu`, `peak_gflops` of the row's median round,
`vs_fastest_in_round`, ...; `null` figures for a skipped variant). "vs round's fastest"
is each row's s/step over the fastest row's of the same round (median over rounds):
rows of one round ran minutes apart, so the paired ratio drifts less than the medians.
Every row runs with the threads per op that `python train.py` would use here
(`--intra-op-threads 0`, its `auto`), or with `--intra-op-threads N`: TensorFlow
fixes them when it starts, so comparing thread counts takes one run of this
script for each.
"""

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from cgan_keras import cli, distribute, speed, timing_process, training  # noqa: E402
from cgan_keras.artifacts import atomic_path  # noqa: E402
from cgan_keras.config import TrainConfig  # noqa: E402
from cgan_keras.data import load_data, make_dataset  # noqa: E402
from cgan_keras.progress import RunProgress  # noqa: E402
from cgan_keras.speed import SpeedChoice  # noqa: E402
from cgan_keras.training import build_gan  # noqa: E402

VARIANTS = {
    "default": {},
    "xla": {"jit_compile": "on"},
    "synthetic": {"synthetic": True},
    "bf16": {"mixed_precision": "on"},
    "float32": {"mixed_precision": "off"},
    "seed": {"preset": "seed"},
    "fit": {},
    "train.py": {},
}


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 256], help="real digits per step")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS), help="what to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed fit calls per row (their mean and median step)")
    parser.add_argument("--steps", type=int, help="steps per timed fit (default: enough for about --seconds)")
    parser.add_argument("--seconds", type=float, default=1.0, help="target length of one timed fit")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed first fit")
    parser.add_argument("--run-steps", type=int, default=500, help="steps timed in the train.py and fit rows")
    parser.add_argument("--rounds", type=int, default=1, help="times every row is run, interleaved (median shown)")
    parser.add_argument(
        "--intra-op-threads", type=int, default=0, help="TensorFlow threads per op (default 0: train.py's auto)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows to PATH as JSON")
    # How main runs each row in a process of its own: the one row of --variants and --batch-sizes, its result to PATH.
    parser.add_argument("--row-result", type=Path, metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 64, 2 repeats of 3 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.steps, args.warmup_steps, args.run_steps = [64], 2, 3, 2, 3
    if args.intra_op_threads < 0:
        parser.error("--intra-op-threads must be 0 (auto) or a positive integer.")
    if min(args.batch_sizes + [args.repeats, args.rounds, args.steps or 1, args.warmup_steps, args.run_steps]) < 1:
        parser.error(
            "--batch-sizes, --repeats, --rounds, --steps, --warmup-steps and --run-steps must be positive integers."
        )
    return args


def step_flops(gan, batch_size):
    """FLOPs per real digit of one `train_step` at `batch_size`, by part; multiply by the batch size.

    The step runs: 1 generator forward; 3 discriminator forwards (fake batch,
    real batch, the generator's pass); 2 discriminator backwards to its weights
    (no gradient for its image input); 1 backward through the discriminator to
    its image input (not to its weights) and on through the generator to its
    weights. The fake batch has as many digits as the real one. With R1
    (`gan.r1_gamma`), at every `gan.r1_interval`-th step, every
    `gan.r1_every`-th real digit also costs a forward and a backward to the
    image, and the penalty's gradient to the weights runs back through both:
    counted as twice their FLOPs (backward ~ 2x forward), so 3x (forward +
    backward to the image) in all; on every digit the forward pass is the real
    batch's own, and only the backward to the image counts (3x).
    """
    generator, discriminator = gan.generator, gan.discriminator
    discriminator_forward = common.forward_flops(discriminator)
    backward_to_image = common.backward_flops(discriminator, False, differentiable_inputs=("image",))
    parts = {
        "generator forward": common.forward_flops(generator),
        "3 discriminator forwards": 3 * discriminator_forward,
        "2 discriminator updates": 2 * common.backward_flops(discriminator, weights_need_grad=True),
        "generator update": backward_to_image + common.backward_flops(generator, weights_need_grad=True),
    }
    if gan.r1_gamma:
        share = math.ceil(batch_size / gan.r1_every) / batch_size / gan.r1_interval
        own_forward = 0 if gan.r1_every == 1 else discriminator_forward
        parts["R1 penalty"] = share * 3 * (own_forward + backward_to_image)
    return parts


def time_fit(gan, dataset, args):
    """Times `args.repeats` `fit` calls after a warm-up one.

    Returns:
        `(mean s/step over every timed step, their median, steps per fit,
        warm-up s, median s per fit spent outside the steps)`.
    """

    def fit(steps):
        timer = speed.StepTimer()
        start = time.perf_counter()
        gan.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
        return time.perf_counter() - start, timer.step_seconds

    warmup_seconds, _ = fit(args.warmup_steps)
    steps = args.steps or max(3, math.ceil(args.seconds / statistics.median(fit(3)[1])))
    fits = [fit(steps) for _ in range(args.repeats)]
    step_seconds = [seconds for _, times in fits for seconds in times]
    overhead = statistics.median(total - sum(times) for total, times in fits)
    return statistics.fmean(step_seconds), statistics.median(step_seconds), steps, warmup_seconds, overhead


class RunTimer(keras.callbacks.Callback):
    """Times `training.run`'s steps after `warmup_steps`, epoch ends included, then stops its `fit`."""

    def __init__(self, warmup_steps, timed_steps):
        super().__init__()
        self.warmup_steps, self.timed_steps = warmup_steps, timed_steps
        self.batch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())
        if len(self.batch_ends) == self.warmup_steps + self.timed_steps:
            self.model.stop_training = True


def run_train_py(batch_size, images, labels, args):
    """Times `training.run` with `train.py`'s defaults; returns the same figures as `run_variant`."""
    timer = RunTimer(args.warmup_steps, args.run_steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        config = TrainConfig(data="builtin", batch_size=batch_size, out=out)
        # As train.py starts it, before the run (its TensorFlow import cannot overlap this process's here).
        xla_timing = timing_process.start_early(config, resume=False)
        training.prepare_directory(config)
        # train.py's own progress line as a terminal shows it (redrawn every 0.1 s), not Keras' logger.
        progress = RunProgress(config.steps, interactive=True, stream=devnull)
        gan, _ = training.run(config, images, labels, callbacks=[progress, timer], verbose=0, xla_timing=xla_timing)
        choice = dataclasses.replace(SpeedChoice.load(Path(out) / "speed.json"), recorded=False)  # decided by this run
    return timed_run_row(
        gan, timer, started, batch_size, f"{choice.summary()}; timing took {choice.measure_seconds:.1f} s"
    )


def run_bare_fit(batch_size, images, labels, args):
    """Times a bare `fit` of `TrainConfig()`'s model in 100-step epochs as the `train.py` row is timed.

    In the precision `train.py` chooses (`--mixed-precision auto`, timed where
    it times), without XLA; the timing counts in the warm-up's seconds.
    """
    config = TrainConfig(data="builtin", batch_size=batch_size, jit_compile="off")
    timer = RunTimer(args.warmup_steps, args.run_steps)
    started = time.perf_counter()
    # The precision train.py would train in: where `auto` times it, timed the same way.
    choice = speed.choose(config, functools.partial(training.time_candidates, config, images, labels, None, None))
    keras.utils.set_random_seed(0)
    gan = training.build_gan(config, policy=choice.policy)
    epochs = math.ceil((args.warmup_steps + args.run_steps) / config.log_every) + 1
    dataset = make_dataset(images, labels, batch_size, seed=config.seed)
    gan.fit(dataset, steps_per_epoch=config.log_every, epochs=epochs, callbacks=[timer], verbose=0)
    return timed_run_row(gan, timer, started, batch_size, f"precision {gan.generator.dtype_policy.name}")


def timed_run_row(gan, timer, started, batch_size, note):
    """A `run_variant` result from a `RunTimer`: the mean and median step after its warm-up, the warm-up's seconds."""
    seconds, median = step_seconds_after_warmup(timer.batch_ends, timer.warmup_steps)
    flops = sum(step_flops(gan, batch_size).values()) * batch_size
    warmed_up = timer.batch_ends[timer.warmup_steps - 1]
    return seconds, median, f"{timer.timed_steps} x 1", warmed_up - started, None, flops, note


def step_seconds_after_warmup(batch_ends, warmup_steps):
    """`(mean, median)` seconds of the steps after the first `warmup_steps`, from the times their steps ended."""
    timed = batch_ends[warmup_steps - 1 :]
    durations = [end - start for start, end in itertools.pairwise(timed)]
    return (timed[-1] - timed[0]) / len(durations), statistics.median(durations)


def run_variant(name, batch_size, images, labels, args):
    """Builds and times one variant.

    Returns:
        `(mean s/step, median s/step, "steps x fits", warm-up s, fit overhead s or None, FLOPs per step, note)`.
    """
    if name == "train.py":
        return run_train_py(batch_size, images, labels, args)
    if name == "fit":
        return run_bare_fit(batch_size, images, labels, args)
    # Fixed, not `auto`: each variant changes one thing against float32 without XLA.
    overrides = {"jit_compile": "off", "mixed_precision": "off", **VARIANTS[name]}
    synthetic = overrides.pop("synthetic", False)
    keras.utils.set_random_seed(0)
    config = TrainConfig.from_preset(overrides.pop("preset", "default"), batch_size=batch_size, **overrides)
    gan = build_gan(config)
    policy = next(layer for layer in gan.generator.layers if isinstance(layer, common.COUNTED_LAYERS)).dtype_policy
    if config.mixed_precision == "on" and policy.name != "mixed_bfloat16":
        raise RuntimeError(f"build_gan chose the {policy.name} policy here, not mixed_bfloat16")
    if synthetic:
        batch = (tf.constant(images[:batch_size]), tf.constant(labels[:batch_size]))
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
    else:
        dataset = make_dataset(images, labels, batch_size, seed=config.seed)
    flops = sum(step_flops(gan, batch_size).values()) * batch_size
    seconds, median, steps, warmup_seconds, overhead = time_fit(gan, dataset, args)
    return seconds, median, f"{steps} x {args.repeats}", warmup_seconds, overhead, flops, ""


def run_row_in_child(name, batch_size, args):
    """`run_variant`'s result and the max RSS MiB, from a new process running this script for that row alone.

    Every row starts from a fresh process: none inherits another's leftovers (a process
    that has trained an XLA model stays 5-10% slower; TensorFlow's caches; the memory peak).
    """
    with tempfile.TemporaryDirectory(prefix="train-speed-row-") as directory:
        result_path = Path(directory) / "row.json"
        command = [sys.executable, __file__, "--variants", name, "--batch-sizes", str(batch_size)]
        for flag in ("repeats", "steps", "seconds", "warmup_steps", "run_steps", "intra_op_threads"):
            if getattr(args, flag) is not None:
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        row = subprocess.run([*command, "--row-result", str(result_path)], capture_output=True, text=True)
        if row.returncode or not result_path.exists():
            last_line = timing_process.last_line(row.stderr)
            raise RuntimeError(f"the row's process exited with code {row.returncode}: {last_line}")
        return tuple(json.loads(result_path.read_text()))


def time_row_here(args):
    """The `--row-result` mode: times the one row asked for and writes its result and max RSS MiB as JSON."""
    images, labels = load_data("builtin")
    result = run_variant(args.variants[0], args.batch_sizes[0], images, labels, args)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with atomic_path(args.row_result) as temporary:
        temporary.write_text(json.dumps([*result, max_rss]))


def median_round(rounds):
    """The round (a `run_variant` result, the max RSS after it, the round's peak) with the median s/step.

    The lower middle if the rounds are even.
    """
    seconds = statistics.median_low(result[0] for result in rounds)
    return next(result for result in rounds if result[0] == seconds)


def ratios_to_fastest(results, batch_size, names):
    """Each row's s/step over the fastest row's of the same round, per round: `{name: [ratio, ...]}`.

    Rows of one round ran minutes apart, not hours, so a paired ratio is steadier than
    comparing medians taken from different rounds of a machine whose speed drifts.
    """
    timed = [name for name in names if (batch_size, name) in results]
    rounds = min((len(results[batch_size, name]) for name in timed), default=0)
    ratios = {name: [] for name in timed}
    for index in range(rounds):
        fastest = min(results[batch_size, name][index][0] for name in timed)
        for name in timed:
            ratios[name].append(results[batch_size, name][index][0] / fastest)
    return ratios


def main(argv=None):
    args = parse_args(argv)
    policy = distribute.mixed_precision_policy(TrainConfig().mixed_precision)
    speed.set_intra_op_threads(speed.intra_op_threads(args.intra_op_threads, policy))
    if args.row_result:
        time_row_here(args)
        return
    print("\n".join(common.environment_lines()))
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    print(f"threads per op: {threads or 'TensorFlow default'} ({'forced' if args.intra_op_threads else 'auto'})")
    for preset in sorted({VARIANTS[name].get("preset", "default") for name in args.variants}):
        config = TrainConfig.from_preset(preset)
        parts = step_flops(build_gan(config), config.batch_size)
        listed = ", ".join(f"{part} {flops / 1e6:.2f}" for part, flops in parts.items())
        print(f"{preset} preset, MFLOP per real digit per step: {listed}; total {sum(parts.values()) / 1e6:.2f}")
    headers = ["batch", "variant", "s/step", "median step", "steps x fits", "digits/s", "GFLOP/step", "GFLOP/s", "MFU"]
    headers += ["speedup vs default", "vs round's fastest", "warm-up s", "fit overhead s", "max RSS MiB", "note"]
    # Rounds interleave the variants, so that a slow spell of a shared machine hits all of them alike.
    # Each round measures the peak again: a row's MFU is over the peak of its own round.
    results, skipped, peaks = {}, {}, []
    for _ in range(args.rounds):
        peaks.append(common.matmul_peak_flops())
        for batch_size in args.batch_sizes:
            for name in args.variants:
                if (batch_size, name) in skipped:
                    continue
                try:
                    result = run_row_in_child(name, batch_size, args)
                except Exception as error:  # a variant that cannot run is reported, not fatal
                    skipped[batch_size, name] = f"skipped: {common.one_line(error)}"
                    continue
                results.setdefault((batch_size, name), []).append((*result, peaks[-1]))
                print(f"  done: batch {batch_size} {name} {result[0]:.4f} s/step", file=sys.stderr, flush=True)
    rows, records = [], []
    for batch_size in args.batch_sizes:
        baseline = None
        paired = ratios_to_fastest(results, batch_size, args.variants)
        for name in args.variants:
            record = {"variant": name, "batch": batch_size, "s_per_step": None, "median_s_per_step": None, "mfu": None}
            record["peak_gflops"] = None
            records.append(record)
            if (batch_size, name) in skipped:
                rows.append([str(batch_size), name] + ["-"] * 12 + [skipped[batch_size, name]])
                record["note"] = skipped[batch_size, name]
                continue
            rounds = results[batch_size, name]
            seconds, median, steps, warmup_seconds, overhead, flops, note, max_rss, peak = median_round(rounds)
            ratios = paired.get(name, [])
            if len(rounds) > 1:
                note = "; ".join(filter(None, [note, "rounds: " + " ".join(f"{r[0]:.4f}" for r in rounds)]))
                note += " (vs fastest: " + " ".join(f"{ratio:.2f}x" for ratio in ratios) + ")"
            baseline = seconds if name == "default" else baseline
            record.update(
                s_per_step=round(seconds, 5),
                median_s_per_step=round(median, 5),
                mfu=round(flops / seconds / peak, 4),
                peak_gflops=round(peak / 1e9, 1),
                vs_fastest_in_round=round(statistics.median(ratios), 4) if ratios else None,
                gflop_per_step=round(flops / 1e9, 3),
                warmup_seconds=round(warmup_seconds, 1),
                note=note,
            )
            rows.append(
                [
                    str(batch_size),
                    name,
                    f"{seconds:.4f}",
                    f"{median:.4f}",
                    steps,
                    f"{batch_size / seconds:.0f}",
                    f"{flops / 1e9:.2f}",
                    f"{flops / seconds / 1e9:.1f}",
                    f"{flops / seconds / peak:.1%}",
                    f"{baseline / seconds:.2f}x" if baseline else "-",
                    f"{statistics.median(ratios):.3f}x" if ratios else "-",
                    f"{warmup_seconds:.1f}",
                    "-" if overhead is None else f"{overhead:.3f}",
                    f"{max_rss:.0f}",
                    note,
                ]
            )
    if args.json:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(records, indent=2) + "\n")
    listed = ", ".join(f"{peak / 1e9:.1f}" for peak in peaks)
    print(f"\nfloat32 matmul peak (fastest of 20 2048x2048 matmuls) at the start of each round: {listed} GFLOP/s\n")
    common.print_table(headers, rows)
    print("\ns/step: mean over the timed steps of all fits (end of one step to end of the next);")
    print("median step: their median, which leaves out the work done every 100 or 500 steps and short slow spells;")
    print(
        "fit overhead: the rest of a fit call (setup, iterator, callbacks). digits/s: real digits, plus as many fakes."
    )
    print("MFU: model FLOPs/s over the float32 matmul peak of the same round, for bf16 too.")
    print("vs round's fastest: the median over rounds of s/step over the fastest row's s/step in the same round.")
    print("train.py: mean s/step over --run-steps after the warm-up, epoch-end work included; warm-up s includes")
    print("the --jit-compile auto timing.")


if __name__ == "__main__":
    main()
