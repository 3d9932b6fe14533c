"""`ConditionalGAN`: a `keras.Model` that trains a generator against a discriminator.

Each training step follows the MXNet-R tutorial: generate fakes for random
digits, update the discriminator on the fake batch (target fake), then on the
real batch (target real), then update the generator through the discriminator
with flipped labels (its fakes labelled real).
"""

import keras
import tensorflow as tf
from keras import ops

from cgan_keras import data, models
from cgan_keras.sampler import DigitSampler


@keras.saving.register_keras_serializable(package="cgan_keras")
class ConditionalGAN(keras.Model):
    """A conditional GAN on images of digits.

    Calling the model on digits returns generated images, so it composes with
    other Keras code; `fit` trains it on `(images, labels)`.

    Args:
        latent_dim: length of the noise vector.
        num_classes: number of digit classes.
        image_shape: `(H, W, C)` of the images.
        generator: a model with inputs `{"digit": int32 (N,), "noise":
            float32 (N, latent_dim)}` and output `(N, H, W, C)` in [-1, 1].
            `None` builds `models.build_generator`.
        discriminator: a model with inputs `{"image", "digit"}` and output
            logits `(N, 1)`. `None` builds `models.build_discriminator`.
        seed: seed of the noise and digits drawn in each step; `None` draws
            a random one.

    Example:

    >>> images, labels = cgan_keras.load_data("builtin")
    >>> gan = ConditionalGAN(latent_dim=64)
    >>> gan.compile()
    >>> gan.fit(images, labels, batch_size=64, epochs=1)
    >>> nines = gan.generate([9] * 16, seed=0)  # float32 (16, 28, 28, 1) in [0, 1]
    """

    def __init__(
        self,
        latent_dim=64,
        num_classes=models.NUM_CLASSES,
        image_shape=models.IMAGE_SHAPE,
        generator=None,
        discriminator=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self.generator = generator or models.build_generator(latent_dim, num_classes, self.image_shape)
        self.discriminator = discriminator or models.build_discriminator(num_classes, self.image_shape)
        self._check_networks()
        self.seed_generator = keras.random.SeedGenerator(seed, name="step_seed")
        # `loss` (d_loss + g_loss) is what Keras' stock callbacks watch, e.g.
        # TerminateOnNaN and EarlyStopping: NaN in either network shows there.
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_accuracy = keras.metrics.BinaryAccuracy(name="d_real_accuracy", threshold=0.0)
        self.d_fake_accuracy = keras.metrics.BinaryAccuracy(name="d_fake_accuracy", threshold=0.0)
        # Both networks are functional and built, so the wrapper is too: this is
        # what lets save_weights, checkpoints and tf.distribute see its state.
        self.built = True

    def _check_networks(self):
        noise_shape = tuple(self.generator.input["noise"].shape)
        if noise_shape != (None, self.latent_dim):
            raise ValueError(
                f"The generator's `noise` input must have shape (None, {self.latent_dim}). "
                f"Received: noise shape={noise_shape}"
            )
        if tuple(self.generator.output.shape[1:]) != self.image_shape:
            raise ValueError(
                f"The generator must output images of shape {self.image_shape}. "
                f"Received: output shape={tuple(self.generator.output.shape[1:])}"
            )

    @property
    def metrics(self):
        return [self.loss_tracker, self.d_loss_tracker, self.g_loss_tracker, self.d_real_accuracy, self.d_fake_accuracy]

    def compile(
        self,
        generator_optimizer=None,
        discriminator_optimizer=None,
        label_smoothing=0.0,
        **kwargs,
    ):
        """Configures training.

        Args:
            generator_optimizer: optimizer of the generator; `None` means
                `Adam(2e-4, beta_1=0.5)`. It is also `model.optimizer`, whose
                `iterations` count training steps (what callbacks read).
            discriminator_optimizer: optimizer of the discriminator; `None`
                means `Adam(2e-4, beta_1=0.5)`. It steps twice per training
                step (fake batch, then real batch).
            label_smoothing: one-sided smoothing: the discriminator's target
                for real digits is `1 - label_smoothing`.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`).
        """
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing}")
        generator_optimizer = keras.optimizers.get(generator_optimizer or _default_optimizer())
        discriminator_optimizer = keras.optimizers.get(discriminator_optimizer or _default_optimizer())
        # Under mixed_float16, Keras wraps `optimizer` in a LossScaleOptimizer;
        # the discriminator's needs the same, by hand.
        super().compile(optimizer=generator_optimizer, **kwargs)
        self.generator_optimizer = self.optimizer
        self.discriminator_optimizer = discriminator_optimizer
        if self.dtype_policy.name == "mixed_float16":
            self.discriminator_optimizer = keras.optimizers.LossScaleOptimizer(discriminator_optimizer)
        self.label_smoothing = label_smoothing
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
        # Built now, not lazily in the first step, so that load_weights and
        # BackupAndRestore find every optimizer variable to restore.
        self.generator_optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self._compile_arguments = dict(
            generator_optimizer=generator_optimizer,
            discriminator_optimizer=discriminator_optimizer,
            label_smoothing=label_smoothing,
            **kwargs,
        )

    def get_compile_config(self):
        return {name: keras.saving.serialize_keras_object(value) for name, value in self._compile_arguments.items()}

    def compile_from_config(self, config):
        self.compile(**{name: keras.saving.deserialize_keras_object(value) for name, value in config.items()})

    def call(self, inputs, training=False):
        """Generates images.

        Args:
            inputs: digits, int `(N,)` or one-hot `(N, num_classes)`, or a
                tuple `(digits, noise)` with noise float32 `(N, latent_dim)`.
            training: run BatchNorm in training mode.

        Returns:
            float32 `(N, H, W, C)` in [-1, 1].
        """
        if isinstance(inputs, (tuple, list)):
            digits, noise = inputs
        else:
            digits, noise = inputs, None
        digits = ops.convert_to_tensor(digits)
        if len(digits.shape) == 2:
            digits = ops.argmax(digits, axis=-1)
        digits = ops.cast(digits, "int32")
        if noise is None:
            noise = keras.random.normal((ops.shape(digits)[0], self.latent_dim), seed=self.seed_generator)
        return self.generator({"digit": digits, "noise": noise}, training=training)

    def generate(self, digits, seed=None):
        """Generates one image per requested digit, in inference mode.

        Args:
            digits: ints in `[0, num_classes)`, shape `(N,)`.
            seed: seed of the noise (`np.random.default_rng(seed)`); the same
                seed gives the same images here and through the exported
                SavedModel and ONNX file.

        Returns:
            numpy float32 `(N, H, W, C)` in [0, 1].
        """
        # Built once: its compiled call is traced on the first use.
        if getattr(self, "_sampler", None) is None:
            self._sampler = DigitSampler.from_gan(self)
        return self._sampler(digits, seed=seed)

    def fit(self, x=None, y=None, batch_size=None, shuffle=True, validation_data=None, **kwargs):
        """Trains on `(images, labels)`, checked once here rather than in every step.

        Accepts arrays `x` (images float `(N, 28, 28, 1)` in [-1, 1]) and `y`
        (int `(N,)` or one-hot `(N, 10)`), or a `tf.data.Dataset` of such
        `(images, labels)` batches. Arrays are batched with
        `drop_remainder=True`: a short last batch would skew BatchNorm's
        statistics and the balance of the step. Other arguments are
        `keras.Model.fit`'s.

        Raises:
            ValueError: the data are not digits of the expected shape, range
                and classes.
        """
        if isinstance(x, tf.data.Dataset):
            x = self._standardize_dataset(x)
        elif x is not None:
            if kwargs.get("validation_split"):
                x, y, validation_data = self._split_validation(x, y, kwargs.pop("validation_split"))
            x = self._dataset_from_arrays(
                x, y, batch_size or 32, shuffle, repeat=kwargs.get("steps_per_epoch") is not None
            )
            y = batch_size = None
        if isinstance(validation_data, (tuple, list)):
            validation_data = data.check_digits(*validation_data[:2], self.image_shape, self.num_classes)
        elif isinstance(validation_data, tf.data.Dataset):
            validation_data = self._standardize_dataset(validation_data)
        if isinstance(x, tf.data.Dataset):
            shuffle = False  # datasets shuffle themselves; Keras would only warn
        return super().fit(x, y, batch_size=batch_size, shuffle=shuffle, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """Reports the losses and accuracies of `test_step` on `(images, labels)`; updates nothing."""
        if isinstance(x, tf.data.Dataset):
            x = self._standardize_dataset(x)
        elif x is not None:
            x, y = data.check_digits(x, y, self.image_shape, self.num_classes)
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def _dataset_from_arrays(self, images, labels, batch_size, shuffle, repeat):
        images, labels = data.check_digits(images, labels, self.image_shape, self.num_classes)
        if len(images) < batch_size:
            raise ValueError(
                f"Expected at least one full batch of digits. Received: {len(images)} digits, batch_size={batch_size}"
            )
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            dataset = dataset.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        # steps_per_epoch may span more than one pass over the digits.
        return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)

    @staticmethod
    def _split_validation(images, labels, fraction):
        # Like Keras: the last `fraction` of the arrays, taken before shuffling.
        split = int(len(images) * (1 - fraction))
        return images[:split], labels[:split], (images[split:], labels[split:])

    def _standardize_dataset(self, dataset):
        spec = dataset.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"Expected a dataset of (images, labels) batches. Received: element_spec={spec}")
        image_spec, label_spec = spec
        image_shape = tuple(image_spec.shape[1:])
        one_hot_labels = label_spec.shape.rank == 2 and label_spec.shape[-1] == self.num_classes
        if image_shape != self.image_shape or not (label_spec.shape.rank == 1 or one_hot_labels):
            raise ValueError(
                f"Expected batches of images (N, {', '.join(map(str, self.image_shape))}) and labels (N,) or "
                f"(N, {self.num_classes}). Received: element_spec={spec}"
            )

        def standardize(images, labels):
            if one_hot_labels:
                labels = tf.argmax(labels, axis=-1)
            return tf.cast(images, "float32"), tf.cast(labels, "int32")

        return dataset.map(standardize, num_parallel_calls=tf.data.AUTOTUNE)

    def train_step(self, batch):
        real_images, real_digits, _ = keras.utils.unpack_x_y_sample_weight(batch)
        noise, fake_digits = self._sample_latents(ops.shape(real_images)[0])
        fake_targets = ops.zeros_like(fake_digits, dtype="float32")[:, None]
        real_targets = ops.ones_like(fake_targets)

        # The fakes are generated once: the discriminator learns from them with
        # the generator's tape paused, then the same forward pass is
        # differentiated for the generator's update.
        with tf.GradientTape() as generator_tape:
            fake_images = self.generator({"digit": fake_digits, "noise": noise}, training=True)
            with generator_tape.stop_recording():
                d_loss_fake, fake_logits = self._discriminator_step(fake_images, fake_digits, fake_targets)
                d_loss_real, real_logits = self._discriminator_step(
                    real_images, real_digits, real_targets * (1.0 - self.label_smoothing)
                )
            fooled_logits = self.discriminator({"image": fake_images, "digit": fake_digits}, training=True)
            g_loss = self.loss_fn(real_targets, fooled_logits)
            scaled_g_loss = self.generator_optimizer.scale_loss(g_loss)
        generator_weights = self.generator.trainable_variables
        self.generator_optimizer.apply(generator_tape.gradient(scaled_g_loss, generator_weights), generator_weights)
        return self._update_metrics(d_loss_fake + d_loss_real, g_loss, real_logits, fake_logits)

    def test_step(self, batch):
        real_images, real_digits, _ = keras.utils.unpack_x_y_sample_weight(batch)
        noise, fake_digits = self._sample_latents(ops.shape(real_images)[0])
        fake_targets = ops.zeros_like(fake_digits, dtype="float32")[:, None]
        real_targets = ops.ones_like(fake_targets)
        fake_images = self.generator({"digit": fake_digits, "noise": noise}, training=False)
        fake_logits = self.discriminator({"image": fake_images, "digit": fake_digits}, training=False)
        real_logits = self.discriminator({"image": real_images, "digit": real_digits}, training=False)
        d_loss = self.loss_fn(fake_targets, fake_logits) + self.loss_fn(
            real_targets * (1.0 - self.label_smoothing), real_logits
        )
        g_loss = self.loss_fn(real_targets, fake_logits)
        return self._update_metrics(d_loss, g_loss, real_logits, fake_logits)

    def _sample_latents(self, batch_size):
        # Under tf.distribute every replica's seed generator is in the same
        # state, so each draws the noise and digits of the whole global batch
        # and keeps its own slice: replicas make different fakes, and N
        # replicas of batch B/N make exactly the fakes one device of batch B
        # would.
        replicas, replica_id = _replica_context()
        noise = keras.random.normal((batch_size * replicas, self.latent_dim), seed=self.seed_generator)
        digits = keras.random.randint(
            (batch_size * replicas,), 0, self.num_classes, seed=self.seed_generator, dtype="int32"
        )
        start = replica_id * batch_size
        return noise[start : start + batch_size], digits[start : start + batch_size]

    def _update_metrics(self, d_loss, g_loss, real_logits, fake_logits):
        # Keras losses are divided by the replica count so that summed
        # gradients average over the global batch; the trackers log the true loss.
        replicas, _ = _replica_context()
        d_loss, g_loss = d_loss * replicas, g_loss * replicas
        self.loss_tracker.update_state(d_loss + g_loss)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.d_real_accuracy.update_state(ops.ones_like(real_logits), real_logits)
        self.d_fake_accuracy.update_state(ops.zeros_like(fake_logits), fake_logits)
        return {metric.name: metric.result() for metric in self.metrics}

    def _discriminator_step(self, images, digits, targets):
        with tf.GradientTape() as tape:
            logits = self.discriminator({"image": images, "digit": digits}, training=True)
            loss = self.loss_fn(targets, logits)
            # Identity unless the optimizer is a LossScaleOptimizer (mixed_float16).
            scaled_loss = self.discriminator_optimizer.scale_loss(loss)
        weights = self.discriminator.trainable_variables
        self.discriminator_optimizer.apply(tape.gradient(scaled_loss, weights), weights)
        return loss, logits

    def get_config(self):
        config = super().get_config()
        config.update(
            latent_dim=self.latent_dim,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            seed=self.seed,
            generator=keras.saving.serialize_keras_object(self.generator),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for network in ("generator", "discriminator"):
            config[network] = keras.saving.deserialize_keras_object(config[network])
        return cls(**config)


def _replica_context():
    """Returns `(number of replicas in sync, this replica's index)`; `(1, 0)` outside tf.distribute."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context, e.g. building the model
        return tf.distribute.get_strategy().num_replicas_in_sync, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def _default_optimizer():
    return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5)
