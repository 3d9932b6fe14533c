"""Quality per training step: the recipe's choices scored by the fixed judge at equal compute.

Examples:

    python benchmarks/recipe.py --data ../shared/mnist/mnist_train.npz            # default recipe, 5,650 steps
    python benchmarks/recipe.py --data builtin --steps 1000 --eval-every 500
    python benchmarks/recipe.py --variant lr1e-3 generator_learning_rate=1e-3 discriminator_learning_rate=1e-3

Each variant is a `TrainConfig` (the default recipe with `field=value` overrides)
trained through `training.build_gan` and `fit` with the run's own seed. Every
`--eval-every` steps both the raw generator and its moving average (EMA) are
scored (the EMA never feeds back into training, so one run gives both rows).
Each row says the step, the training FLOPs so far (counted from the layer
shapes, see `train_speed.step_flops`) and the training seconds, with the
machine's float32 matmul peak measured at the start, so that other machines
can compare.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.train_speed import step_flops  # noqa: E402
from cgan_keras import cli, data, training  # noqa: E402
from cgan_keras.config import TrainConfig  # noqa: E402
from cgan_keras.metrics import judge as judges  # noqa: E402
from cgan_keras.metrics import report  # noqa: E402
from cgan_keras.sampler import DigitSampler  # noqa: E402


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--data", default="builtin", help="data source, as train.py --data")
    parser.add_argument("--steps", type=int, default=TrainConfig().steps, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits per class for label accuracy")
    parser.add_argument("--judge", default=str(judges.FILES), help="judge directory (default: the shipped judge)")
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar="NAME [FIELD=VALUE ...]",
        help="a named variant of the default recipe; repeatable (default: one variant, `default`)",
    )  # fmt: skip
    return parser.parse_args(argv)


def parse_override(text):
    name, value = text.split("=", 1)
    default = getattr(TrainConfig(), name)
    if isinstance(default, tuple):
        return name, tuple(int(part) for part in value.split(","))
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    return name, type(default)(value)


class Scores(keras.callbacks.Callback):
    """Scores the raw and the EMA generator every `every` steps; keeps training seconds apart."""

    def __init__(self, judge, every, per_class, seed, flops_per_step, label):
        super().__init__()
        self.judge, self.every, self.per_class, self.seed = judge, every, per_class, seed
        self.flops_per_step, self.label = flops_per_step, label
        self.train_seconds, self.rows = 0.0, []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.train_seconds += time.perf_counter() - self._started
        step = int(self.model.optimizer.iterations)
        if step % self.every:
            return
        networks = {"raw": self.model.generator, "ema": self.model.ema_generator}
        if self.model.ema_generator is not None:
            networks["ema, BN recomputed"] = with_recomputed_batch_norm(self.model.ema_generator, self.model.latent_dim)
        for kind, network in networks.items():
            if network is None:
                continue
            sampler = DigitSampler.from_network(network, self.model.num_classes)
            results = report.evaluate_generator(sampler, self.judge, self.per_class, self.seed)
            row = [self.label, kind, f"{step:,}", f"{step * self.flops_per_step:.2e}", f"{self.train_seconds:.0f}",
                   *score_cells(results)]  # fmt: skip
            self.rows.append(row)
            print("| " + " | ".join(row) + " |", flush=True)


def with_recomputed_batch_norm(network, latent_dim, count=4096):
    """A copy of a generator whose BatchNorm statistics are those of its own activations on `count` fakes.

    The EMA generator copies the raw generator's statistics; this measures what that costs.
    """
    copy = network.__class__.from_config(network.get_config())
    copy.set_weights(network.get_weights())
    batch_norms = [layer for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        layer.momentum = 0.0  # the statistics of this one batch, not a running mean
    rng = np.random.default_rng(0)
    digits = np.arange(count, dtype=np.int32) % 10
    copy({"digit": digits, "noise": rng.standard_normal((count, latent_dim), dtype=np.float32)}, training=True)
    return copy


def score_cells(results):
    """The table's cells for one evaluation: label accuracy, worst class, FID, intra-class FID, precision, recall."""
    return [
        f"{results['label_accuracy']:.2%}",
        f"{results['worst_class']}: {results['worst_class_accuracy']:.1%}",
        f"{results['fid']:.2f} ({results['fid_ratio']:.2f}x)",
        f"{results['intra_fid']:.2f} ({results['intra_fid'] / results['intra_fid_floor']:.2f}x)",
        f"{results['precision']:.3f}",
        f"{results['recall']:.3f}",
    ]


def main(argv=None):
    args = parse_args(argv)
    variants = args.variant or [["default"]]
    for line in common.environment_lines():
        print(line)
    peak = common.matmul_peak_flops()
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    images, labels = data.load_data(data.resolve_source(args.data))
    judge = judges.load_judge(args.judge)
    floors = judge.floors
    print(f"data: {args.data} ({len(images):,} digits); judge {judge.accuracy:.2%}")
    print(f"real-vs-real floors: FID {floors['fid_floor']:.3f}, intra-class FID {floors['intra_fid_floor']:.3f}, "
          f"precision {floors['precision_floor']:.3f}, recall {floors['recall_floor']:.3f}")  # fmt: skip
    headers = ["variant", "G", "step", "train FLOP", "train s", "label acc", "worst", "FID (/floor)",
               "intra FID (/floor)", "precision", "recall"]  # fmt: skip
    print("| " + " | ".join(headers) + " |", flush=True)
    rows = []
    for name, *overrides in variants:
        # A variant may set its own steps and eval_every, e.g. to compare batch sizes at equal FLOPs.
        fields = {"steps": args.steps, "eval_every": args.eval_every, **dict(map(parse_override, overrides))}
        if fields["steps"] % fields["eval_every"]:
            raise SystemExit(f"recipe.py: error: {name}: steps {fields['steps']} is no multiple of eval_every "
                             f"{fields['eval_every']}")  # fmt: skip
        config = TrainConfig(**fields, log_every=fields["eval_every"], out="unused")
        keras.utils.set_random_seed(config.seed)
        gan = training.build_gan(config)
        flops_per_step = sum(step_flops(gan, config.batch_size).values()) * config.batch_size
        scores = Scores(judge, config.eval_every, args.per_class, config.seed, flops_per_step, name)
        dataset = data.make_dataset(images, labels, config.batch_size, seed=config.seed)
        gan.fit(dataset, epochs=config.steps // config.eval_every, steps_per_epoch=config.eval_every,
                callbacks=[scores], verbose=0)  # fmt: skip
        rows += scores.rows
    print()
    common.print_table(headers, rows)


if __name__ == "__main__":
    main()
