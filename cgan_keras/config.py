"""Every hyperparameter of a training run, in one frozen dataclass.

`train.py` maps its flags 1:1 onto `TrainConfig` fields (`flag`: `batch_size`
-> `--batch-size`; `TrainConfig.to_argv` goes back) and saves the config as
`config.json` beside the run's artifacts, so a run can be reproduced or
resumed from its directory alone.
"""

import dataclasses
import json
import math
import numbers
from pathlib import Path

from cgan_keras.artifacts import atomic_path

# The seed preset is the MXNet-R tutorial: its networks, AdaDelta, 2,400 steps.
PRESETS = {
    "default": {},
    "seed": dict(
        steps=2400,
        latent_dim=96,
        generator_filters=(384, 192, 96),
        discriminator_filters=(24, 32, 64),
        optimizer="adadelta",
        generator_learning_rate=1.0,
        discriminator_learning_rate=1.0,
        label_smoothing=0.0,
        r1_gamma=0.0,
        ema_decay=0.0,
        loss="non_saturating",
        digit_at_every_scale=False,
    ),
}
CHOICES = {
    "preset": tuple(PRESETS),
    "optimizer": ("adam", "adadelta"),
    "strategy": ("default", "mirrored", "multiworker"),
    "loss": ("non_saturating", "hinge"),
    "jit_compile": ("auto", "on", "off"),
    "mixed_precision": ("auto", "on", "off"),
}
MAX_THREADS = 1024  # --intra-op-threads
MAX_CPU_REPLICAS = 64  # --cpu-replicas
# --eval-per-class: 100,000 digits (~300 MB as float32) at most, refused before training rather than
# failing the run's final evaluation for want of memory.
MAX_EVAL_PER_CLASS = 10_000


def flag(name):
    """The `train.py` flag of a `TrainConfig` field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def _field(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one `train.py` run; each field's `help` says what it means.

    Example:

    >>> config = TrainConfig.from_preset("seed", steps=600)
    >>> config.latent_dim
    96
    """

    data: str = _field("auto", "data source: auto, builtin, mnist, PATH.csv or PATH.npz")
    preset: str = _field("default", "recipe whose defaults the other fields override: default or seed")
    steps: int = _field(5650, "training steps (discriminator on fakes, on reals, then generator)")
    batch_size: int = _field(64, "real digits per step; the fake batch has the same size")
    latent_dim: int = _field(64, "length of the noise vector fed to the generator")
    generator_filters: tuple[int, ...] = _field((80, 40), "channels of the generator's hidden maps, smallest map first")
    discriminator_filters: tuple[int, ...] = _field(
        (32, 64, 64, 64), "channels of the discriminator's stride-2 convolutions"
    )
    digit_at_every_scale: bool = _field(True, "give every hidden map of the generator the one-hot digit too")
    projection: bool = _field(True, "add a projection term (digit embedding . features) to the discriminator's logit")
    optimizer: str = _field("adam", "optimizer of both networks: adam or adadelta (the seed's)")
    generator_learning_rate: float = _field(1e-3, "learning rate of the generator's optimizer")
    discriminator_learning_rate: float = _field(1e-3, "learning rate of the discriminator's optimizer")
    cosine_decay: bool = _field(False, "decay both learning rates to 0 along a cosine over the run's steps")
    beta_1: float = _field(0.5, "Adam's first-moment decay")
    beta_2: float = _field(0.99, "Adam's second-moment decay")
    loss: str = _field(
        "hinge", "non_saturating (binary cross-entropy for both networks) or hinge (the generator's loss: -logit)"
    )
    label_smoothing: float = _field(0.0, "one-sided smoothing: the real target is 1 - label_smoothing")
    r1_gamma: float = _field(1.0, "weight gamma of the R1 penalty, gamma/2 |d logit / d image|^2 on reals; 0: none")
    r1_every: int = _field(4, "the R1 penalty is computed on every r1_every-th real digit of each batch (1: all)")
    r1_interval: int = _field(
        1, "the R1 penalty is computed at every r1_interval-th step only, weighted by r1_interval (lazy R1)"
    )
    ema_decay: float = _field(
        0.999, "decay of the moving average of the generator's weights that is sampled and exported; 0: none"
    )
    ema_statistics_every: int = _field(
        4, "the moving average's BatchNorm statistics come from every N-th fake digit of each step (1: all)"
    )
    sample_every: int = _field(100, "steps between sample grids (one is also written after step 1)")
    log_every: int = _field(100, "steps per history.csv row (one Keras epoch; the last may be shorter)")
    checkpoint_every: int = _field(
        500, "steps between checkpoints (at the first epoch end there or after); one more when the run ends or stops"
    )
    eval_every: int = _field(0, "steps between judge evaluations logged to history.csv; 0: only at the end")
    eval_per_class: int = _field(
        1000, "generated digits of each class whose label accuracy an evaluation scores (fewer: faster, noisier)"
    )
    seed: int = _field(0, "seed of every random choice: weights, noise, digits, shuffling")
    jit_compile: str = _field(
        "auto", "compile the training step with XLA: on, off, or auto (time both, keep the faster)"
    )
    mixed_precision: str = _field(
        "auto",
        "mixed precision: on (float16 on GPUs, bfloat16 on CPUs), off, or auto (float16 on GPUs; on CPUs where "
        "TensorFlow computes in bfloat16 natively, bfloat16 or float32, whichever is timed faster; bfloat16 "
        "where nothing is timed: runs under 2,000 steps, --jit-compile on, several workers)",
    )
    intra_op_threads: int = _field(
        0,
        "TensorFlow threads per op: 0 = auto (1 on 2-core CPUs whose AMX oneDNN uses, where untimed "
        "--mixed-precision auto gives bfloat16; else TensorFlow's)",
    )
    strategy: str = _field("default", "tf.distribute strategy: default, mirrored or multiworker (TF_CONFIG)")
    cpu_replicas: int = _field(1, "logical CPU devices for --strategy mirrored on a machine without GPUs")
    out: str = _field("saved_models/cgan", "directory that receives every artifact of the run")

    @classmethod
    def from_preset(cls, preset="default", **overrides):
        """Returns the preset's config with `overrides` (field=value) applied."""
        if preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {tuple(PRESETS)}. Received: preset={preset!r}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})

    def __post_init__(self):
        # numpy's integers become Python's, for the checks and for JSON; JSON's lists become the frozen config's tuples.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple | list):
                object.__setattr__(self, field.name, tuple(map(_python_int, value)))
            else:
                object.__setattr__(self, field.name, _python_int(value))
        for name in ("jit_compile", "mixed_precision"):
            # These were booleans before they had `auto`: old config.json files and callers pass True/False.
            if isinstance(getattr(self, name), bool):
                object.__setattr__(self, name, "on" if getattr(self, name) else "off")
        positive = (
            "steps", "batch_size", "latent_dim", "sample_every", "log_every", "checkpoint_every",
            "cpu_replicas", "r1_every", "r1_interval", "ema_statistics_every",
        )  # fmt: skip
        check_positive_integers(**{name: getattr(self, name) for name in positive})
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={getattr(self, name)!r}")
        if not is_integer(self.eval_every) or self.eval_every < 0 or self.eval_every % self.log_every:
            raise ValueError(
                "`eval_every` must be 0 or a multiple of `log_every` (evaluations run at logged steps). "
                f"Received: eval_every={self.eval_every}"
            )
        # Bounds far above any use, below what crashes: 100,000 threads per op aborted TensorFlow
        # (pthread_create failed) and 100,000 logical CPU devices never finished starting.
        if not is_integer(self.intra_op_threads) or not 0 <= self.intra_op_threads <= MAX_THREADS:
            raise ValueError(
                f"`intra_op_threads` must be 0 (auto) or a positive integer up to {MAX_THREADS}. "
                f"Received: intra_op_threads={self.intra_op_threads!r}"
            )
        if not is_integer(self.eval_per_class) or not 1 <= self.eval_per_class <= MAX_EVAL_PER_CLASS:
            raise ValueError(
                f"`eval_per_class` must be a positive integer up to {MAX_EVAL_PER_CLASS:,}. "
                f"Received: eval_per_class={self.eval_per_class!r}"
            )
        if self.cpu_replicas > MAX_CPU_REPLICAS:
            raise ValueError(
                f"`cpu_replicas` must be at most {MAX_CPU_REPLICAS}. Received: cpu_replicas={self.cpu_replicas}"
            )
        if not isinstance(self.out, str) or not self.out.strip():
            raise ValueError(f"`out` must name a directory. Received: out={self.out!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={self.label_smoothing}")
        if not 0 <= self.r1_gamma < math.inf:
            raise ValueError(f"`r1_gamma` must be a finite number >= 0. Received: r1_gamma={self.r1_gamma}")
        for name in ("generator_learning_rate", "discriminator_learning_rate"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={getattr(self, name)}")
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={getattr(self, name)}")
        if not is_integer(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"`seed` must be an integer in [0, 2**32). Received: seed={self.seed!r}")
        for name in ("generator_filters", "discriminator_filters"):
            if not all(is_integer(width) and width > 0 for width in getattr(self, name)):
                raise ValueError(f"`{name}` must be positive integers. Received: {name}={getattr(self, name)}")
        # 28x28 digits: the generator grows a 1x1 map in 2 to 4 stages; the seed's discriminator has 3 convolutions.
        if not 2 <= len(self.generator_filters) <= 4:
            raise ValueError(
                "`generator_filters` must be 2 to 4 widths (the generator's stages up to 28x28). "
                f"Received: generator_filters={self.generator_filters}"
            )
        if not self.discriminator_filters or self.preset == "seed" and len(self.discriminator_filters) != 3:
            raise ValueError(
                "`discriminator_filters` must be at least one width (three with the seed preset). "
                f"Received: discriminator_filters={self.discriminator_filters}"
            )

    def to_argv(self):
        """The `train.py` arguments that give this config: `--preset` and each field that differs from it.

        Example:

        >>> TrainConfig(steps=600, generator_filters=(64, 32)).to_argv()
        ['--steps', '600', '--generator-filters', '64', '32']
        """
        preset = TrainConfig.from_preset(self.preset)
        argv = [] if self.preset == "default" else [flag("preset"), self.preset]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "preset" or value == getattr(preset, field.name):
                continue
            if isinstance(value, bool):
                argv.append(flag(field.name) if value else flag(field.name).replace("--", "--no-", 1))
            else:
                argv += [flag(field.name), *map(str, value if isinstance(value, tuple) else (value,))]
        return argv

    def save(self, path):
        """Writes the config as JSON to `path` (atomically)."""
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path):
        """Reads a config written by `save`."""
        return cls(**json.loads(Path(path).read_text()))


def check_positive_integers(**arguments):
    """Returns the arguments' values as Python `int`s, in order (JSON-ready, numpy's converted).

    Raises `ValueError` naming the first argument that is not a positive integer
    (numpy's count; `bool` does not).
    """
    for name, value in arguments.items():
        if not is_integer(value) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return tuple(int(value) for value in arguments.values())


def is_integer(value):
    """Whether `value` is an integer, Python's or numpy's; `True` is not (`steps=True` is a mistake, not one step)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _python_int(value):
    """`int(value)` for numpy's integers (not `bool`); anything else as it is."""
    return int(value) if is_integer(value) else value
