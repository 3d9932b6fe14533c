"""Training speed of `ConditionalGAN`: seconds per step, digits/s, model FLOPs, MFU, peak memory.

Examples:

    python benchmarks/train_speed.py                    # every variant at batch 32, 64 and 256 (a few minutes)
    python benchmarks/train_speed.py --quick            # smoke test: batch 64, 2 short repeats
    python benchmarks/train_speed.py --batch-sizes 64 --variants default xla --repeats 7

Every variant is built by `cgan_keras.training.build_gan` and timed through the real
`fit` path: a warm-up `fit` (tracing, XLA compilation, pipeline start-up), then
`--repeats` timed `fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)` calls.
A callback times every step; the table gives their median, and apart from it the
time each `fit` call spends outside its steps. Variants, each against `default`
(float32, no XLA, `make_dataset` on the 5,000 builtin digits, default networks):

    xla        compile the step with XLA (`--jit-compile on`)
    synthetic  one fixed in-memory batch repeated (the input pipeline's cost, by difference)
    bf16       `--mixed-precision on`, which on a CPU means the `mixed_bfloat16` policy (checked)
    seed       the seed preset's networks and AdaDelta (`TrainConfig.from_preset("seed")`)

FLOPs per step are counted from the layer shapes (conv, transposed conv, dense;
see `step_flops`) and MFU divides their rate by a float32 matmul's, measured in
the same run. Peak memory is the process's `ru_maxrss` after each row, so it only grows.
"""

import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from cgan_keras import cli  # noqa: E402
from cgan_keras.config import TrainConfig  # noqa: E402
from cgan_keras.data import load_data, make_dataset  # noqa: E402
from cgan_keras.training import build_gan  # noqa: E402

VARIANTS = {
    "default": {},
    "xla": {"jit_compile": "on"},
    "synthetic": {"synthetic": True},
    "bf16": {"mixed_precision": "on"},
    "seed": {"preset": "seed"},
}


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 256], help="real digits per step")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS), help="what to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed fit calls per row (the median is reported)")
    parser.add_argument("--steps", type=int, help="steps per timed fit (default: enough for about --seconds)")
    parser.add_argument("--seconds", type=float, default=1.0, help="target length of one timed fit")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed first fit")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 64, 2 repeats of 3 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.steps, args.warmup_steps = [64], 2, 3, 2
    if min(args.batch_sizes + [args.repeats, args.steps or 1, args.warmup_steps]) < 1:
        parser.error("--batch-sizes, --repeats, --steps and --warmup-steps must be positive integers.")
    return args


def step_flops(gan):
    """FLOPs per real digit of one `train_step`, by part; multiply by the batch size.

    The step runs: 1 generator forward; 3 discriminator forwards (fake batch,
    real batch, the generator's pass); 2 discriminator backwards to its weights
    (no gradient for its image input); 1 backward through the discriminator to
    its image input (not to its weights) and on through the generator to its
    weights. The fake batch has as many digits as the real one.
    """
    generator, discriminator = gan.generator, gan.discriminator
    return {
        "generator forward": common.forward_flops(generator),
        "3 discriminator forwards": 3 * common.forward_flops(discriminator),
        "2 discriminator updates": 2 * common.backward_flops(discriminator, weights_need_grad=True),
        "generator update": common.backward_flops(discriminator, False, differentiable_inputs=("image",))
        + common.backward_flops(generator, weights_need_grad=True),
    }


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of each step of a `fit`: from the previous step's end (or the epoch's start)."""

    def __init__(self):
        super().__init__()
        self.step_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now


def time_fit(gan, dataset, args):
    """Times `args.repeats` `fit` calls after a warm-up one.

    Returns:
        `(median s/step over every timed step, steps per fit, warm-up s,
        median s per fit spent outside the steps)`.
    """

    def fit(steps):
        timer = StepTimer()
        start = time.perf_counter()
        gan.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
        return time.perf_counter() - start, timer.step_seconds

    warmup_seconds, _ = fit(args.warmup_steps)
    steps = args.steps or max(3, math.ceil(args.seconds / statistics.median(fit(3)[1])))
    fits = [fit(steps) for _ in range(args.repeats)]
    step_seconds = statistics.median(seconds for _, times in fits for seconds in times)
    overhead = statistics.median(total - sum(times) for total, times in fits)
    return step_seconds, steps, warmup_seconds, overhead


def run_variant(name, batch_size, images, labels, args):
    """Builds and times one variant; returns `time_fit`'s results and the FLOPs per step."""
    overrides = dict(VARIANTS[name])
    synthetic = overrides.pop("synthetic", False)
    keras.backend.clear_session()
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
    flops = sum(step_flops(gan).values()) * batch_size
    return (*time_fit(gan, dataset, args), flops)


def main(argv=None):
    args = parse_args(argv)
    print("\n".join(common.environment_lines()))
    peak = common.matmul_peak_flops()
    print(f"float32 matmul peak (fastest of 20 2048x2048 matmuls): {peak / 1e9:.1f} GFLOP/s")
    images, labels = load_data("builtin")
    for preset in sorted({VARIANTS[name].get("preset", "default") for name in args.variants}):
        parts = step_flops(build_gan(TrainConfig.from_preset(preset)))
        listed = ", ".join(f"{part} {flops / 1e6:.2f}" for part, flops in parts.items())
        print(f"{preset} preset, MFLOP per real digit per step: {listed}; total {sum(parts.values()) / 1e6:.2f}")
    headers = ["batch", "variant", "s/step", "steps x fits", "digits/s", "GFLOP/step", "GFLOP/s", "MFU"]
    headers += ["speedup vs default", "warm-up s", "fit overhead s", "max RSS MiB", "note"]
    rows = []
    for batch_size in args.batch_sizes:
        baseline = None
        for name in args.variants:
            try:
                seconds, steps, warmup_seconds, overhead, flops = run_variant(name, batch_size, images, labels, args)
            except Exception as error:  # a variant that cannot run is reported, not fatal
                rows.append([str(batch_size), name] + ["-"] * 10 + [f"skipped: {common.one_line(error)}"])
                continue
            baseline = seconds if name == "default" else baseline
            max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(
                [
                    str(batch_size),
                    name,
                    f"{seconds:.4f}",
                    f"{steps} x {args.repeats}",
                    f"{batch_size / seconds:.0f}",
                    f"{flops / 1e9:.2f}",
                    f"{flops / seconds / 1e9:.1f}",
                    f"{flops / seconds / peak:.1%}",
                    f"{baseline / seconds:.2f}x" if baseline else "-",
                    f"{warmup_seconds:.1f}",
                    f"{overhead:.3f}",
                    f"{max_rss:.0f}",
                    "",
                ]
            )
            print(f"  done: batch {batch_size} {name} {seconds:.4f} s/step", file=sys.stderr, flush=True)
    print()
    common.print_table(headers, rows)
    print("\ns/step: median over the timed steps of all fits (end of one step to end of the next);")
    print(
        "fit overhead: the rest of a fit call (setup, iterator, callbacks). digits/s: real digits, plus as many fakes."
    )
    print("MFU: model FLOPs/s over the float32 matmul peak, for bf16 too.")


if __name__ == "__main__":
    main()
