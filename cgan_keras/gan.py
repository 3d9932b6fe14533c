"""`ConditionalGAN`: a `keras.Model` that trains a generator against a discriminator.

Each training step follows the MXNet-R tutorial: generate fakes for random
digits, update the discriminator on the fake batch (target fake), then on the
real batch (target real; with the R1 gradient penalty, `r1_penalty`, on part
of it), then update the generator through the discriminator with
flipped labels (its fakes labelled real).
"""

import contextlib
import functools
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cgan_keras import data, ema, losses, models
from cgan_keras.callbacks import global_step
from cgan_keras.config import TrainConfig, check_positive_integers, is_integer
from cgan_keras.labels import check_labels

_STEP_SEED_STATE = "step_seed_state"  # its key among the model's own saved variables


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
        ema_decay: decay of the exponential moving average of the
            generator's weights that `ema_generator` holds, in [0, 1); 0
            keeps no average. The decay ramps up from 0.1 as `(1 + t) / (10 + t)`
            at step t, so early steps are not averaged with the random
            initialization.
        ema_statistics_every: the average's BatchNorm statistics follow
            its own activations on every `ema_statistics_every`-th fake
            digit of each step (1: all). A forward pass over the whole
            batch took ~8% of a step, and the moving statistics (momentum
            0.99) average over ~100 steps anyway. A stride rather than the
            first digits, so that N replicas use the digits one device
            would (when each replica's share of the batch is a multiple).
        seed: seed of the noise and digits drawn in each step; `None` draws
            a random one.
        **kwargs: `keras.Model`'s; its `dtype` (e.g. `"mixed_float16"`) is
            also the policy of the networks built here (networks given keep
            their own).

    Example:

    >>> images, labels = cgan_keras.load_data("builtin")
    >>> gan = ConditionalGAN(latent_dim=64)
    >>> gan.compile()
    >>> gan.fit(images, labels, batch_size=64, epochs=1)
    >>> nines = cgan_keras.DigitSampler.from_gan(gan)([9] * 16, seed=0)  # float32 (16, 28, 28, 1) in [0, 1]
    """

    def __init__(
        self,
        latent_dim=64,
        num_classes=models.NUM_CLASSES,
        image_shape=models.IMAGE_SHAPE,
        generator=None,
        discriminator=None,
        ema_decay=0.999,
        ema_statistics_every=4,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        latent_dim, num_classes, ema_statistics_every = check_positive_integers(
            latent_dim=latent_dim, num_classes=num_classes, ema_statistics_every=ema_statistics_every
        )
        if not 0 <= ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
        if seed is not None and not (is_integer(seed) and seed >= 0):
            raise ValueError(f"`seed` must be None or an integer >= 0. Received: seed={seed!r}")
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.seed = None if seed is None else int(seed)  # numpy's too, and saved as JSON
        self.ema_decay = ema_decay
        self.ema_statistics_every = ema_statistics_every
        with models.policy_scope(self.dtype_policy):  # `dtype=` reaches the networks built here
            self.generator = generator or models.build_generator(latent_dim, num_classes, self.image_shape)
            self.discriminator = discriminator or models.build_discriminator(num_classes, self.image_shape)
            models.check_networks(self.generator, self.discriminator, latent_dim, num_classes, self.image_shape)
            # Same architecture and name: its exports are "the generator".
            self.ema_generator = ema.averaged_copy(self.generator) if ema_decay else None
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="step_seed")
        # `call` and `evaluate` draw from their own stream: drawing from the steps' would
        # change the training that follows (`validation_data` would change the weights).
        # Seeded apart, so that they do not replay the steps' noise and digits either.
        sample_seed = None if self.seed is None else self.seed + 1
        self.sample_seed_generator = keras.random.SeedGenerator(sample_seed, name="sample_seed")
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

    @property
    def metrics(self):
        return [self.loss_tracker, self.d_loss_tracker, self.g_loss_tracker, self.d_real_accuracy, self.d_fake_accuracy]

    @property
    def trainable_weights(self):
        """Both networks' trainable weights; not the EMA copy's, which follow the generator's by assignment."""
        average = getattr(self, "ema_generator", None)  # read by Keras before `__init__` sets it, too
        averaged = {id(weight) for weight in average.weights} if average is not None else set()
        return [weight for weight in super().trainable_weights if id(weight) not in averaged]

    trainable_variables = trainable_weights  # as in Keras: the same list

    @property
    def non_trainable_weights(self):
        """BatchNorm's statistics and the EMA copy's weights."""
        trainable = {id(weight) for weight in self.trainable_weights}
        return [weight for weight in self.weights if id(weight) not in trainable]

    @property
    def non_trainable_variables(self):
        """`non_trainable_weights` and the noise generator's state (the metrics' is in `metrics_variables`)."""
        trainable = {id(weight) for weight in self.trainable_weights}
        return [variable for variable in self.variables if id(variable) not in trainable]

    def get_state_tree(self, value_format="backend_tensor"):
        """Keras' state tree, with both optimizers' variables in `optimizer_variables` (Keras: `model.optimizer`'s).

        `optimizer_variables` is `{"generator_optimizer": {...}, "discriminator_optimizer": {...}}`
        (empty before `compile`), each keyed by the variables' paths inside that
        optimizer (`iteration`, `conv_0_kernel_momentum`; a `LossScaleOptimizer`'s
        own under `loss_scale/`), so a tree restores into any `ConditionalGAN` of the
        same networks, whatever its optimizers are named.
        """
        tree = {
            "trainable_variables": self._create_nested_dict(self.trainable_variables, value_format),
            "non_trainable_variables": self._create_nested_dict(self.non_trainable_variables, value_format),
            "metrics_variables": self._create_nested_dict(self.metrics_variables, value_format),
        }

        def leaf(variable):
            return variable.numpy() if value_format == "numpy_array" else variable.value

        optimizers = self._optimizer_variables_by_role()
        tree["optimizer_variables"] = {
            role: {key: leaf(variable) for key, variable in variables.items()} for role, variables in optimizers.items()
        }
        return tree

    def set_state_tree(self, state_tree):
        """Assigns a `get_state_tree` back; optimizer variables only once compiled, as Keras does.

        Raises:
            ValueError: an optimizer variable of the tree that this model's
                optimizers do not have (nothing of that optimizer is assigned).
        """
        state_tree = dict(state_tree)
        optimizers_tree = state_tree.pop("optimizer_variables", {})
        super().set_state_tree(state_tree)
        by_role = self._optimizer_variables_by_role()
        if not by_role:  # not compiled: no optimizer to restore into
            return
        for role, values in optimizers_tree.items():  # all checked before any is assigned
            missing = sorted(set(values) - set(by_role.get(role, {})))
            if missing:
                raise ValueError(
                    f"The state tree's optimizer_variables[{role!r}] does not fit this model's optimizers: "
                    f"{role} has no {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
                )
        for role, values in optimizers_tree.items():
            for key, value in values.items():
                by_role[role][key].assign(value)

    def _optimizer_variables_by_role(self):
        """`{"generator_optimizer": {path inside it: variable}, "discriminator_optimizer": ...}`; `{}` uncompiled."""
        if getattr(self, "generator_optimizer", None) is None:
            return {}
        return {role: _keyed_inside(getattr(self, role)) for role in ("generator_optimizer", "discriminator_optimizer")}

    def compile(
        self,
        generator_optimizer=None,
        discriminator_optimizer=None,
        label_smoothing=0.0,
        loss=None,
        generator_loss=None,
        r1_gamma=None,
        r1_every=None,
        r1_interval=None,
        **kwargs,
    ):
        """Configures training.

        Args:
            generator_optimizer: optimizer of the generator; `None` means
                `Adam(1e-3, beta_1=0.5, beta_2=0.99)`. It is also
                `model.optimizer`, whose `iterations` count training steps
                (what callbacks read).
            discriminator_optimizer: optimizer of the discriminator; `None`
                means `Adam(1e-3, beta_1=0.5, beta_2=0.99)`. It steps twice
                per training step (fake batch, then real batch).
            label_smoothing: one-sided smoothing: the discriminator's target
                for real digits is `1 - label_smoothing`.
            loss: the discriminator's loss on logits, with targets 0 (fake)
                and 1 (real); `None` means `keras.losses.Hinge()` (targets 0/1
                become -1/1); `BinaryCrossentropy(from_logits=True)` is the
                non-saturating GAN loss.
            generator_loss: the generator's loss on the logits of its fakes,
                all with target 1 (real); `None` means `losses.LinearLoss()`
                (the hinge GAN's, `-logit`) when `loss` is a `Hinge`, else `loss`.
            r1_gamma: weight of the R1 penalty (Mescheder et al. 2018), added
                to the discriminator's loss on real digits: `r1_gamma / 2`
                times the mean squared norm of the logit's gradient with
                respect to the image; 0 turns it off. It is not part of the
                logged `d_loss`. `None` means the recipe's, 1.
            r1_every: the penalty is computed on every `r1_every`-th real
                digit of each batch (its cost shrinks with it; a stride, not
                the first digits, so that N replicas penalize the digits one
                device would); on every digit (1) it reuses the real batch's
                forward pass. `None` means the recipe's, 4.
            r1_interval: the penalty is computed at every `r1_interval`-th
                training step only (where `optimizer.iterations` is a
                multiple), weighted by `r1_interval` to keep its average
                strength (StyleGAN2's lazy regularization, Karras et al.
                2020): fewer, larger R1 batches run closer to the machine's
                peak. Under `mixed_float16` a step that the loss scale skips
                does not advance the counter, so a skipped due step is due
                again. `None` means the recipe's, 1.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`).
        """
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing}")
        not_taken = sorted({"optimizer", "metrics", "weighted_metrics", "loss_weights"} & kwargs.keys())
        if not_taken:
            raise ValueError(
                "ConditionalGAN.compile takes `generator_optimizer` and `discriminator_optimizer`, and its "
                f"metrics are fixed (`model.metrics`). Received: {', '.join(not_taken)}"
            )
        recipe = TrainConfig()
        r1_gamma = recipe.r1_gamma if r1_gamma is None else r1_gamma
        r1_every = recipe.r1_every if r1_every is None else r1_every
        r1_interval = recipe.r1_interval if r1_interval is None else r1_interval
        if not 0 <= r1_gamma < math.inf:
            raise ValueError(f"`r1_gamma` must be a finite number >= 0. Received: r1_gamma={r1_gamma}")
        r1_every, r1_interval = check_positive_integers(r1_every=r1_every, r1_interval=r1_interval)
        generator_optimizer = keras.optimizers.get(generator_optimizer or recipe_optimizer(recipe, "generator"))
        discriminator_optimizer = keras.optimizers.get(
            discriminator_optimizer or recipe_optimizer(recipe, "discriminator")
        )
        if generator_optimizer is discriminator_optimizer:
            raise ValueError(
                "`generator_optimizer` and `discriminator_optimizer` must be two optimizers: each keeps the "
                f"state of its own network's variables. Received: discriminator_optimizer={generator_optimizer}"
            )
        # Checked before anything is set: a refused compile leaves the model as it was.
        loss_fn = _logit_loss("loss", loss or keras.losses.Hinge())
        if generator_loss is None:
            generator_loss = losses.LinearLoss() if isinstance(loss_fn, keras.losses.Hinge) else loss_fn
        generator_loss_fn = _logit_loss("generator_loss", generator_loss)
        # Under mixed_float16, Keras wraps `optimizer` in a LossScaleOptimizer;
        # the discriminator's needs the same, by hand.
        super().compile(optimizer=generator_optimizer, **kwargs)
        self.generator_optimizer = self.optimizer
        self.discriminator_optimizer = discriminator_optimizer
        if self.dtype_policy.name == "mixed_float16":
            self.discriminator_optimizer = keras.optimizers.LossScaleOptimizer(discriminator_optimizer)
        self.label_smoothing = label_smoothing
        self.r1_gamma, self.r1_every, self.r1_interval = r1_gamma, r1_every, r1_interval
        self.loss_fn, self.generator_loss_fn = loss_fn, generator_loss_fn
        # Built now, not lazily in the first step, so that load_weights and
        # BackupAndRestore find every optimizer variable to restore.
        self.generator_optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self._compile_arguments = dict(
            generator_optimizer=generator_optimizer,
            discriminator_optimizer=discriminator_optimizer,
            label_smoothing=label_smoothing,
            r1_gamma=r1_gamma,
            r1_every=r1_every,
            r1_interval=r1_interval,
            loss=self.loss_fn,
            generator_loss=self.generator_loss_fn,
            **kwargs,
        )

    def get_compile_config(self):
        if not self.compiled:  # saved before `compile`, or loaded with `compile=False`
            return None
        return {name: keras.saving.serialize_keras_object(value) for name, value in self._compile_arguments.items()}

    def compile_from_config(self, config):
        self.compile(**{name: keras.saving.deserialize_keras_object(value) for name, value in config.items()})

    def call(self, inputs, training=False):
        """Generates images.

        Args:
            inputs: digits, int `(N,)` or `(N, 1)`, or one-hot `(N, num_classes)`, or a
                tuple `(digits, noise)` with noise float32 `(N, latent_dim)`.
            training: run BatchNorm in training mode.

        Returns:
            float32 `(N, H, W, C)` in [-1, 1].

        Raises:
            ValueError: called eagerly (not inside `predict` or a `tf.function`,
                where the values are not at hand) with digits out of
                0..num_classes-1, not integers, or not one-hot rows.
        """
        digits, noise = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        generator = self.generator if training else self.inference_generator
        if tf.executing_eagerly():  # values at hand: a digit out of range would one-hot to zeros, silently
            digits = check_labels(ops.convert_to_numpy(digits), self.num_classes, name="digits")
        digits = ops.convert_to_tensor(digits)
        if digits.ndim != 1:  # one-hot rows or indices (N, 1); `predict` retraces with the rank unknown
            rows = tf.reshape(digits, [tf.shape(digits)[0], -1])  # `ops.shape` needs the rank
            is_index_column = ops.shape(rows)[1] == 1
            digits = ops.where(is_index_column, ops.cast(rows[:, 0], "int32"), ops.cast(ops.argmax(rows, -1), "int32"))
        digits = ops.cast(digits, "int32")
        if noise is None:
            noise = keras.random.normal((ops.shape(digits)[0], self.latent_dim), seed=self.sample_seed_generator)
        return generator({"digit": digits, "noise": noise}, training=training)

    def fit(self, x=None, y=None, batch_size=None, shuffle=True, validation_data=None, **kwargs):
        """`keras.Model.fit` on `(images, labels)`, checked once here (`data.as_batches`).

        Images float `(N, H, W, C)` in [-1, 1], labels int `(N,)` or one-hot
        `(N, num_classes)`, as arrays or a `tf.data.Dataset` of batches.

        Raises:
            ValueError: the data are not digits of the expected shape, range and classes,
                or an argument that `fit` would ignore here (`sample_weight`,
                `class_weight`, `validation_split`) is given.
        """
        # Keras would ignore these, or misread them as about a dataset: every digit counts alike in a GAN's losses.
        given = [name for name in ("sample_weight", "class_weight") if kwargs.get(name) is not None]
        if kwargs.get("validation_split"):
            given.append("validation_split")
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 3 and validation_data[2] is not None:
            given.append("validation_data weights")
        if given:
            raise ValueError(
                "ConditionalGAN.fit weighs every digit alike and takes held-out digits as "
                f"validation_data=(images, labels). Received: {', '.join(given)}"
            )
        repeat = kwargs.get("steps_per_epoch") is not None  # an epoch may span more than one pass
        x = self._as_batches(x, y, batch_size, shuffle, repeat)
        if validation_data is not None:
            pair = validation_data[:2] if isinstance(validation_data, (tuple, list)) else (validation_data, None)
            validation_data = self._as_batches(*pair, batch_size, shuffle=False, repeat=False, scoring=True)
        # The batches shuffle themselves; Keras would only warn.
        return super().fit(x, validation_data=validation_data, shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """Reports `test_step`'s losses and accuracies on `(images, labels)` (as `fit` takes them); updates nothing.

        Every digit counts: a short last batch is scored too, and the losses are means over the digits.
        """
        batches = self._as_batches(x, y, batch_size, shuffle=False, repeat=False, scoring=True)
        return super().evaluate(batches, **kwargs)

    def _as_batches(self, x, y, batch_size, shuffle, repeat, scoring=False):
        if isinstance(x, tf.data.Dataset) and y is not None:
            raise ValueError(f"A dataset gives its (images, labels) batches itself. Received: y={type(y).__name__}")
        if isinstance(x, (np.ndarray, list, tf.Tensor)) and y is None:
            raise ValueError("Expected labels `y` with the images `x` (a digit per image). Received: y=None")
        return data.as_batches(
            x, y, batch_size, self._shuffle_seed(), shuffle, repeat, self.image_shape, self.num_classes, scoring=scoring
        )

    def _shuffle_seed(self):
        """The seed that arrays are shuffled with now: `seed` and the steps trained so far, or `None` without a seed.

        The same seed on every `fit` call would restart the same order each time,
        so a loop of short `fit` calls would train on its first batches only.
        """
        if self.seed is None:
            return None
        steps = global_step(self) if self.optimizer is not None else 0
        return int(np.random.SeedSequence([self.seed, steps]).generate_state(1)[0])

    def train_step(self, batch):
        real_images, real_digits, _ = keras.utils.unpack_x_y_sample_weight(batch)
        fakes_and_targets = self._fakes_and_targets(real_images, self.seed_generator)
        noise, fake_digits, fake_target, real_target, fooled_target = fakes_and_targets
        # The fakes are generated once: the discriminator learns from them with
        # the generator's tape paused, then the same forward pass is
        # differentiated for the generator's update.
        with tf.GradientTape() as generator_tape:
            fake_images = self.generator({"digit": fake_digits, "noise": noise}, training=True)
            with generator_tape.stop_recording():
                update_discriminator = functools.partial(
                    _update_discriminator, self.discriminator, self.discriminator_optimizer, self.loss_fn
                )
                d_loss_fake, fake_logits = update_discriminator(fake_images, fake_digits, fake_target)
                d_loss_real, real_logits = update_discriminator(
                    real_images, real_digits, real_target, *self._r1_settings()
                )
            fooled_logits = self.discriminator({"image": fake_images, "digit": fake_digits}, training=True)
            g_loss = self.generator_loss_fn(fooled_target, fooled_logits)
            scaled_g_loss = self.generator_optimizer.scale_loss(g_loss)
        generator_weights = self.generator.trainable_variables
        self.generator_optimizer.apply(generator_tape.gradient(scaled_g_loss, generator_weights), generator_weights)
        if self.ema_generator is not None:
            ema.update(self.ema_generator, self.generator, self.generator_optimizer.iterations, self.ema_decay)
            # BatchNorm's statistics follow the averaged network's own activations, on part of the fakes.
            every = self.ema_statistics_every
            self.ema_generator({"digit": fake_digits[::every], "noise": noise[::every]}, training=True)
        return self._update_metrics(d_loss_fake + d_loss_real, g_loss, real_logits, fake_logits)

    def _r1_settings(self):
        """This step's R1 for `_update_discriminator`: `(weight, every, due)`.

        `due` is a scalar bool tensor, true where the step counter is a
        multiple of `r1_interval`, or `None` for R1 at every step (no
        condition in the traced step).
        """
        if self.r1_interval == 1:
            return self.r1_gamma, self.r1_every, None
        due = ops.equal(self.generator_optimizer.iterations % self.r1_interval, 0)
        return self.r1_gamma * self.r1_interval, self.r1_every, due

    def test_step(self, batch):
        real_images, real_digits, _ = keras.utils.unpack_x_y_sample_weight(batch)
        fakes_and_targets = self._fakes_and_targets(real_images, self.sample_seed_generator)
        noise, fake_digits, fake_target, real_target, fooled_target = fakes_and_targets
        fake_images = self.generator({"digit": fake_digits, "noise": noise}, training=False)
        fake_logits = self.discriminator({"image": fake_images, "digit": fake_digits}, training=False)
        real_logits = self.discriminator({"image": real_images, "digit": real_digits}, training=False)
        d_loss = self.loss_fn(fake_target, fake_logits) + self.loss_fn(real_target, real_logits)
        g_loss = self.generator_loss_fn(fooled_target, fake_logits)
        return self._update_metrics(d_loss, g_loss, real_logits, fake_logits)

    def _fakes_and_targets(self, real_images, seed_generator):
        """This replica's fake noise and digits, and the step's targets: see `_fake_batch` and `_targets`."""
        batch_size = ops.shape(real_images)[0]
        noise_and_digits = _fake_batch(seed_generator, batch_size, self.latent_dim, self.num_classes)
        return *noise_and_digits, *_targets(batch_size, self.label_smoothing)

    def _update_metrics(self, d_loss, g_loss, real_logits, fake_logits):
        # Keras losses are divided by the replica count so that summed
        # gradients average over the global batch; the trackers log the true loss.
        replicas, _ = _replica_context()
        d_loss, g_loss = d_loss * replicas, g_loss * replicas
        digits = ops.shape(real_logits)[0]  # weighs a short last batch of an evaluation by its size
        self.loss_tracker.update_state(d_loss + g_loss, sample_weight=digits)
        self.d_loss_tracker.update_state(d_loss, sample_weight=digits)
        self.g_loss_tracker.update_state(g_loss, sample_weight=digits)
        self.d_real_accuracy.update_state(ops.ones_like(real_logits), real_logits)
        self.d_fake_accuracy.update_state(ops.zeros_like(fake_logits), fake_logits)
        return {metric.name: metric.result() for metric in self.metrics}

    @property
    def inference_generator(self):
        """The network that generates, exports and is evaluated: `ema_generator` if there is one, else `generator`."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def get_config(self):
        config = super().get_config()
        for name in ("latent_dim", "num_classes", "image_shape", "seed", "ema_decay", "ema_statistics_every"):
            config[name] = getattr(self, name)
        for network in ("generator", "discriminator"):
            config[network] = keras.saving.serialize_keras_object(getattr(self, network))
        return config

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """`keras.Model.export` of `call`: int32 digits `(N,)` in, images in [-1, 1] out, the noise drawn inside.

        `export.export_generator` writes what `train.py` exports instead (images
        in [0, 1], a `noise` or `seed` input, and the `condition` signature).
        """
        if format != "tf_saved_model":  # the call draws its noise in the graph: ONNX has no such op
            raise ValueError(
                "ConditionalGAN.export writes a TensorFlow SavedModel; for ONNX use "
                f"cgan_keras.export_onnx(gan, path) (noise as an input). Received: format={format!r}"
            )
        # `built` is set in `__init__`, so Keras never saw a call's inputs to trace from.
        input_signature = input_signature or [tf.TensorSpec([None], tf.int32, name="digit")]
        return super().export(filepath, format, verbose, input_signature, **kwargs)

    def save_own_variables(self, store):
        # Keras saves a layer's seed generators nowhere: without this, a model loaded
        # from a checkpoint would draw step 1's noise and digits again.
        super().save_own_variables(store)
        store[_STEP_SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        own = {key: store[key] for key in store.keys() if key != _STEP_SEED_STATE}
        super().load_own_variables(own)
        if _STEP_SEED_STATE in store.keys():  # absent from files saved before it was saved
            self.seed_generator.state.assign(store[_STEP_SEED_STATE])

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for network in ("generator", "discriminator"):
            config[network] = keras.saving.deserialize_keras_object(config[network])
        return cls(**config)


def _logit_loss(name, loss):
    """`keras.losses.get(loss)`, if it is a `keras.losses.Loss` object that reads logits; else a `ValueError`."""
    resolved = keras.losses.get(loss)
    if not isinstance(resolved, keras.losses.Loss):
        # A function such as `keras.losses.hinge` (what the string "hinge" gives) returns one loss per digit.
        raise ValueError(
            f"`{name}` must be a keras.losses.Loss object, e.g. keras.losses.Hinge(): a loss function is not "
            f"averaged over the batch. Received: {name}={loss!r}"
        )
    if getattr(resolved, "from_logits", True) is False:
        raise ValueError(
            f"`{name}` reads the discriminator's logits, so it needs from_logits=True. "
            f"Received: {name}={type(resolved).__name__}(from_logits=False)"
        )
    return resolved


def _update_discriminator(
    discriminator, optimizer, loss_fn, images, digits, targets, r1_weight=0.0, r1_every=1, r1_due=None
):
    """One optimizer step of the discriminator on one batch; returns `(loss, logits)`.

    Args:
        discriminator: a model with inputs `{"image", "digit"}` and logits `(N, 1)`.
        optimizer: its optimizer (a `LossScaleOptimizer` under `mixed_float16`).
        loss_fn: the loss of `(targets, logits)`.
        images: float32 `(N, H, W, C)` in [-1, 1].
        digits: int32 `(N,)`.
        targets: float32 `(N, 1)`.
        r1_weight: the optimized loss gains `r1_weight / 2` times R1
            (`r1_penalty`), divided by the replica count as Keras divides
            the loss; 0: no penalty.
        r1_every: R1 on every `r1_every`-th digit.
        r1_due: a scalar bool tensor: R1 only where it is true; `None`: always.

    Returns:
        The scalar loss without R1, and the logits `(N, 1)`.
    """
    reuse_forward = bool(r1_weight) and r1_every == 1  # R1 on every digit: the loss's forward pass serves it
    with tf.GradientTape() as tape:
        image_tape = tf.GradientTape(watch_accessed_variables=False) if reuse_forward else contextlib.nullcontext()
        with image_tape:
            if reuse_forward:
                image_tape.watch(images)
            logits = discriminator({"image": images, "digit": digits}, training=True)
            summed_logits = ops.sum(ops.cast(logits, "float32")) if reuse_forward else None
        loss = loss_fn(targets, logits)
        penalized = loss
        if r1_weight:

            def penalty():
                if reuse_forward:  # R1 adds only backward passes
                    return _mean_squared_norm(image_tape.gradient(summed_logits, images))
                return r1_penalty(discriminator, images[::r1_every], digits[::r1_every])

            r1 = penalty() if r1_due is None else tf.cond(r1_due, penalty, lambda: tf.constant(0.0))
            replicas, _ = _replica_context()  # scaled like the Keras loss, so summed gradients average
            penalized = loss + r1_weight / 2 * r1 / replicas
        # Identity unless the optimizer is a LossScaleOptimizer (mixed_float16).
        scaled_loss = optimizer.scale_loss(penalized)
    weights = discriminator.trainable_variables
    optimizer.apply(tape.gradient(scaled_loss, weights), weights)
    return loss, logits


def r1_penalty(discriminator, images, digits):
    """R1's mean squared gradient norm: the mean over the batch of `|d logit / d image|^2`.

    Args:
        discriminator: a model with inputs `{"image", "digit"}` and logits `(N, 1)`.
        images: float32 `(N, H, W, C)` in [-1, 1].
        digits: int32 `(N,)`.

    Returns:
        A float32 scalar >= 0, differentiable with respect to the discriminator's weights.
    """
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = discriminator({"image": images, "digit": digits}, training=True)
        # Summed inside the tape: each logit depends on its own image only, so one gradient holds them all.
        total = ops.sum(ops.cast(logits, "float32"))
    return _mean_squared_norm(tape.gradient(total, images))


def _keyed_inside(optimizer):
    """`optimizer`'s variables by their path, its name left out; a `LossScaleOptimizer`'s own under `loss_scale/`."""
    inner = getattr(optimizer, "inner_optimizer", None)
    prefixes = {optimizer.name: "loss_scale/" if inner is not None else ""}
    if inner is not None:
        prefixes[inner.name] = ""
    keyed = {}
    for variable in optimizer.variables:
        owner, _, inside = variable.path.partition("/")
        keyed[prefixes[owner] + inside if owner in prefixes else variable.path] = variable
    return keyed


def _mean_squared_norm(gradients):
    """The mean over the batch of each `(H, W, C)` gradient's squared norm, in float32."""
    return ops.mean(ops.sum(ops.square(ops.cast(gradients, "float32")), axis=(1, 2, 3)))


def _fake_batch(seed_generator, batch_size, latent_dim, num_classes):
    """This replica's share of a step's fake batch: noise float32 `(B, latent_dim)`, digits int32 `(B,)`."""
    # Under tf.distribute every replica's seed generator is in the same state,
    # so each draws the noise and digits of the whole global batch and keeps its
    # own slice: replicas make different fakes, and N replicas of batch B/N make
    # exactly the fakes one device of batch B would.
    replicas, replica_id = _replica_context()
    noise = keras.random.normal((batch_size * replicas, latent_dim), seed=seed_generator)
    digits = keras.random.randint((batch_size * replicas,), 0, num_classes, seed=seed_generator, dtype="int32")
    start = replica_id * batch_size
    return noise[start : start + batch_size], digits[start : start + batch_size]


def _targets(batch_size, label_smoothing):
    """The discriminator's targets for fakes (0) and reals (`1 - label_smoothing`), and the generator's (1).

    Returns:
        Three float32 `(B, 1)` tensors: `(fake, real, fooled)`.
    """
    ones = ops.ones((batch_size, 1), dtype="float32")
    return ops.zeros_like(ones), ones * (1.0 - label_smoothing), ones


def _replica_context():
    """Returns `(number of replicas in sync, this replica's index)`; `(1, 0)` outside tf.distribute."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context, e.g. building the model
        return tf.distribute.get_strategy().num_replicas_in_sync, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def recipe_optimizer(config, network):
    """A new optimizer for `network` (`"generator"` or `"discriminator"`) as `config` (a `TrainConfig`) describes it.

    Named `<network>_optimizer`, which its variables' paths start with. A
    cosine decay reaches 0 at the run's last step: the discriminator updates
    twice a step (fake batch, then real).
    """
    learning_rate = getattr(config, f"{network}_learning_rate")
    if config.cosine_decay:
        updates_per_step = {"generator": 1, "discriminator": 2}[network]
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, config.steps * updates_per_step)
    name = f"{network}_optimizer"
    if config.optimizer == "adadelta":
        # The seed's AdaDelta: rho 0.92, epsilon 1e-6, each gradient element clipped to [-1, 1].
        return keras.optimizers.Adadelta(learning_rate, rho=0.92, epsilon=1e-6, clipvalue=1.0, name=name)
    return keras.optimizers.Adam(learning_rate, beta_1=config.beta_1, beta_2=config.beta_2, name=name)
