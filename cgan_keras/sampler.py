"""`DigitSampler`: one way to ask any generator for digits (a model, a SavedModel)."""

import numpy as np

BATCH_SIZE = 1024


def sample_noise(count, latent_dim, seed=None):
    """Draws generator noise reproducibly: float32 `(count, latent_dim)` from a standard normal."""
    return np.random.default_rng(seed).standard_normal((count, latent_dim), dtype=np.float32)


class DigitSampler:
    """A generator seen from outside: digits (and a seed) in, images in [0, 1] out.

    Args:
        generate: `generate(digits int32 (n,), noise float32 (n, latent_dim))` ->
            float32 `(n, H, W, C)` in [0, 1], for at most `BATCH_SIZE` digits.
        latent_dim: length of the noise vector.
    """

    def __init__(self, generate, latent_dim):
        self._generate = generate
        self.latent_dim = latent_dim

    @classmethod
    def from_gan(cls, gan):
        """Samples `gan.inference_generator` (the EMA generator where there is one), in inference mode."""
        return cls.from_network(gan.inference_generator, gan.latent_dim)

    @classmethod
    def from_network(cls, network, latent_dim):
        """Samples a generator network (tanh output in [-1, 1]) in inference mode."""
        import keras

        def generate(digits, noise):
            return (keras.ops.convert_to_numpy(network({"digit": digits, "noise": noise}, training=False)) + 1) / 2

        return cls(generate, latent_dim)

    @classmethod
    def from_saved_model(cls, path):
        """Samples a SavedModel written by `export.export_generator`.

        Raises:
            export.SavedModelError: the path is not a generator SavedModel.
        """
        import tensorflow as tf

        from cgan_keras import export

        serve, latent_dim = export.load_generator(path)

        def generate(digits, noise):
            return serve(digit=tf.constant(digits, tf.int32), noise=tf.constant(noise, tf.float32))["images"].numpy()

        return cls(generate, latent_dim)

    def from_noise(self, digits, noise):
        """Images float32 `(N, H, W, C)` in [0, 1] for digits int `(N,)` and noise float32 `(N, latent_dim)`."""
        digits = np.asarray(digits, np.int32)
        batches = [
            self._generate(digits[start : start + BATCH_SIZE], noise[start : start + BATCH_SIZE])
            for start in range(0, len(digits), BATCH_SIZE)
        ]
        return np.concatenate(batches)

    def __call__(self, digits, seed=None):
        """Images float32 `(N, H, W, C)` in [0, 1] for digits int `(N,)`, with noise `sample_noise(N, ..., seed)`."""
        return self.from_noise(digits, sample_noise(len(digits), self.latent_dim, seed))
