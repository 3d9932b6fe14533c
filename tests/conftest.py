"""Tiny models and data shared by the tests: every test builds in well under a second."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the tf.distribute tests; this must happen before
# TensorFlow starts its runtime, and costs the other tests nothing (they run on
# the first device, on the same cores).
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cgan_keras import models  # noqa: E402
from cgan_keras.gan import ConditionalGAN  # noqa: E402

LATENT_DIM = 8


def tiny_gan(seed=0, compile=True, ema_decay=0.999, **compile_kwargs):
    """A ConditionalGAN with a few hundred weights, compiled with the defaults."""
    keras.utils.set_random_seed(seed)
    gan = ConditionalGAN(
        LATENT_DIM,
        generator=models.build_generator(LATENT_DIM, filters=(8, 4)),
        discriminator=models.build_discriminator(filters=(4, 8)),
        ema_decay=ema_decay,
        seed=seed,
    )
    if compile:
        gan.compile(**compile_kwargs)
    return gan


@pytest.fixture
def digits():
    """64 fake 'digits': float32 (64, 28, 28, 1) in [-1, 1] and int32 labels (64,) covering 0..9."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 28, 28, 1)).astype("float32")
    labels = (np.arange(64) % 10).astype("int32")
    return images, labels
