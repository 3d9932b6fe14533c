"""What the tests share: one tiny configuration, the models and `train.py` arguments made from it, helpers.

Every test that trains uses `TINY` (or `tiny_config` with a few fields
changed), so "tiny" means one thing: networks of a few hundred weights that
build in well under a second.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import keras

from cgan_keras import models
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(
    data="builtin",
    steps=4,
    batch_size=16,
    latent_dim=8,
    generator_filters=(8, 4),
    discriminator_filters=(4, 8),
    log_every=2,
    checkpoint_every=1,  # at every epoch end: the tests' runs are a few epochs long
    sample_every=2,
    eval_per_class=10,  # 100 digits for the label accuracy: the end of a run scores in ~1 s less than with 10,000
    # float32 on every machine (`auto` is bfloat16 on CPUs with it): the tests compare numbers at float32 precision.
    mixed_precision="off",
)
LATENT_DIM = TINY.latent_dim
HOLD_LOCK = (
    "import sys; from cgan_keras.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); sys.stdin.read()"
)


def tiny_config(**overrides):
    """`TINY` with some fields changed, e.g. `tiny_config(steps=8, out=str(tmp_path))`."""
    return dataclasses.replace(TINY, **overrides)


def tiny_gan(seed=0, compile=True, ema_decay=0.999, ema_statistics_every=4, **compile_kwargs):
    """A ConditionalGAN with `TINY`'s networks, compiled with the defaults."""
    keras.utils.set_random_seed(seed)
    gan = ConditionalGAN(
        TINY.latent_dim,
        generator=models.build_generator(TINY.latent_dim, filters=TINY.generator_filters),
        discriminator=models.build_discriminator(filters=TINY.discriminator_filters),
        ema_decay=ema_decay,
        ema_statistics_every=ema_statistics_every,
        seed=seed,
    )
    if compile:
        gan.compile(**compile_kwargs)
    return gan


def own_generator(*extra_layers):
    """A generator of a user's own, not `build_generator`'s: one dense layer, and no `digit_one_hot` layer.

    `extra_layers` are applied to its tanh output before the reshape to `(28, 28, 1)`.
    """
    digit, noise = keras.Input((), dtype="int32", name="digit"), keras.Input((TINY.latent_dim,), name="noise")
    features = keras.layers.Concatenate()([noise, keras.layers.CategoryEncoding(10, output_mode="one_hot")(digit)])
    pixels = keras.layers.Dense(784, activation="tanh")(features)
    for layer in extra_layers:
        pixels = layer(pixels)
    return keras.Model({"digit": digit, "noise": noise}, keras.layers.Reshape((28, 28, 1))(pixels))


def mount_tmpfs(directory, size):
    """Mounts a tmpfs of `size` (e.g. "3m") on the new `directory`; returns whether that was allowed."""
    directory.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                                 capture_output=True).returncode == 0  # fmt: skip
    except FileNotFoundError:
        mounted = False
    return mounted


def hold_lock(directory):
    """Starts a process that holds the `run_lock.RunLock` of `directory` until it is killed; returns it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder
