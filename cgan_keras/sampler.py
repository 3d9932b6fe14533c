"""`DigitSampler`: a trained generator, from wherever it was loaded, as digits -> images in [0, 1].

One home for what every user of a generator needs: the noise (seeded, optionally
truncated), the tanh -> [0, 1] mapping and the batching. The same class wraps a
`ConditionalGAN`, an exported SavedModel and an exported ONNX file, so the same
digits and seed give the same images from each.

Importing this module is cheap: TensorFlow is imported only by the constructors
that need it (`from_gan`, `from_saved_model`); `from_onnx` runs on onnxruntime
alone.
"""

from pathlib import Path

import numpy as np

from cgan_keras.artifacts import first_line
from cgan_keras.labels import check_labels

BATCH_SIZE = 1024  # digits per forward pass: bounds memory for any count
# The tightest truncation: at +-0.01 already 99% of the normal's values are redrawn, and the
# redraws grow as 1/t below it (at 1e-30 they never end).
MIN_TRUNCATION = 0.01


def to_unit_range(images):
    """Maps a tanh output in [-1, 1] to [0, 1]; works on numpy arrays and TensorFlow tensors alike."""
    return (images + 1.0) / 2.0


def noise_batches(count, latent_dim, seed=None, truncation=None, batch_size=BATCH_SIZE):
    """Yields the noise of `count` digits, `batch_size` rows at a time, from one seeded stream.

    Without truncation, the concatenated batches equal
    `np.random.default_rng(seed).standard_normal((count, latent_dim), dtype=np.float32)`
    whatever the batch size. With `truncation=t`, values outside `[-t, t]` are
    redrawn from the same stream, batch by batch, until none is left (a
    standard normal truncated at +-t); the result depends only on `seed`, `t`
    and `batch_size`.

    Yields:
        float32 `(n, latent_dim)`, `n <= batch_size`.

    Raises:
        ValueError: `truncation` is not None and below `MIN_TRUNCATION`.
    """
    if truncation is not None and not truncation >= MIN_TRUNCATION:  # `not >=` also catches nan
        raise ValueError(
            f"`truncation` must be None or a number >= {MIN_TRUNCATION}. Received: truncation={truncation}"
        )
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch_size):
        noise = rng.standard_normal((min(batch_size, count - start), latent_dim), dtype=np.float32)
        if truncation is not None:
            outside = np.abs(noise) > truncation
            while outside.any():
                noise[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
                outside = np.abs(noise) > truncation
        yield noise


def sample_noise(count, latent_dim, seed=None, truncation=None):
    """Draws generator noise reproducibly: the batches of `noise_batches`, concatenated.

    Returns:
        float32 `(count, latent_dim)`: a standard normal, truncated at
        `+-truncation` if given.
    """
    return np.concatenate([*noise_batches(count, latent_dim, seed, truncation), np.zeros((0, latent_dim), np.float32)])


class OnnxModelError(ValueError):
    """A file is not a generator ONNX model as written by `export.export_onnx`."""


class DigitSampler:
    """Draws digits from a generator: `sampler(digits, seed)` -> float32 images in [0, 1].

    Build it with `from_gan`, `from_saved_model` or `from_onnx`; the
    constructor takes any forward function.

    Args:
        forward: `forward(digits int32 (n,), noise float32 (n, latent_dim))`
            -> float32 `(n, H, W, C)` in [0, 1], called with at most
            `BATCH_SIZE` digits.
        latent_dim: length of the noise vector.
        image_shape: `(H, W, C)` of the images.
        num_classes: digits are ints in `[0, num_classes)`.
        on_condition: optional `on_condition(condition float32 (n, num_classes),
            noise)` -> images like `forward`'s, for a weighted one-hot
            condition (`interpolate`); `None` where the model has no such input.

    Example:

    >>> sampler = DigitSampler.from_onnx("saved_models/cgan/generator.onnx")
    >>> sevens = sampler([7] * 9, seed=0)  # float32 (9, 28, 28, 1) in [0, 1]
    """

    def __init__(self, forward, latent_dim, image_shape, num_classes, on_condition=None):
        self.forward = forward
        self.on_condition = on_condition
        self.latent_dim = int(latent_dim)
        self.image_shape = tuple(int(size) for size in image_shape)
        self.num_classes = int(num_classes)

    def __call__(self, digits, seed=None, truncation=None):
        """Generates one image per digit, with noise from `np.random.default_rng(seed)`.

        Args:
            digits: class indices `(N,)` or `(N, 1)` in `[0, num_classes)`, or one-hot
                `(N, num_classes)` (`labels.check_labels`).
            seed: seed of the noise; the same seed gives the same images from
                every constructor.
            truncation: `None`, or a float `t >= MIN_TRUNCATION`: noise from a standard
                normal truncated at +-t (less variety, more typical digits).

        Returns:
            numpy float32 `(N, H, W, C)` in [0, 1].
        """
        batches = [images for _, images in self.batches(digits, seed, truncation)]
        return np.concatenate([*batches, np.zeros((0, *self.image_shape), np.float32)])

    def batches(self, digits, seed=None, truncation=None):
        """Like `__call__`, but yields `(start, images)` for `digits[start:start + n]`, n <= `BATCH_SIZE`.

        Memory stays bounded for any count, and the images are those `__call__` returns.
        """
        digits = check_labels(digits, self.num_classes, name="digits")
        noise = noise_batches(len(digits), self.latent_dim, seed, truncation)
        for start, batch_noise in zip(range(0, len(digits), BATCH_SIZE), noise, strict=True):
            yield start, self.forward(digits[start : start + len(batch_noise)], batch_noise)

    def from_noise(self, digits, noise):
        """Generates one image per digit from given noise.

        Args:
            digits: class indices `(N,)` or `(N, 1)` in `[0, num_classes)`, or one-hot
                `(N, num_classes)` (`labels.check_labels`).
            noise: float `(N, latent_dim)`.

        Returns:
            numpy float32 `(N, H, W, C)` in [0, 1].
        """
        digits = check_labels(digits, self.num_classes, name="digits")
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != (len(digits), self.latent_dim):
            raise ValueError(
                f"Expected noise of shape ({len(digits)}, {self.latent_dim}), one row per digit. "
                f"Received: noise.shape={noise.shape}"
            )
        return self._in_batches(self.forward, digits, noise)

    def interpolate(self, start, end, frames, count, seed=None, truncation=None):
        """Morphs digit `start` into digit `end`, for `count` fixed noise vectors.

        Frame `j` of row `i` is generated from noise `i` (the rows of
        `sample_noise(count, latent_dim, seed, truncation)`) and the condition
        `(1 - t) * one_hot(start) + t * one_hot(end)`, `t = j / (frames - 1)`:
        the first frame is `start` as `__call__` draws it, the last `end`.

        Returns:
            numpy float32 `(count, frames, H, W, C)` in [0, 1].

        Raises:
            ValueError: a digit out of range, `frames < 2`, `count < 1`, or a
                model without a condition input (`on_condition` is None).
        """
        start, end = check_labels([start, end], self.num_classes, name="digits")
        if frames < 2 or count < 1:
            raise ValueError(f"Expected frames >= 2 and count >= 1. Received: frames={frames}, count={count}")
        if self.on_condition is None:
            raise ValueError(
                "This generator has no condition input to interpolate with: a `digit_one_hot` layer, as "
                "`build_generator` makes (an export from before it existed: export it again)."
            )
        weights = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None]
        one_hot = np.eye(self.num_classes, dtype=np.float32)
        conditions = np.tile((1 - weights) * one_hot[start] + weights * one_hot[end], (count, 1))
        noise = np.repeat(sample_noise(count, self.latent_dim, seed, truncation), frames, axis=0)
        return self._in_batches(self.on_condition, conditions, noise).reshape(count, frames, *self.image_shape)

    def _in_batches(self, forward, conditions, noise):
        """`forward(conditions, noise)` on at most `BATCH_SIZE` rows at a time, concatenated."""
        batches = [
            forward(conditions[start : start + BATCH_SIZE], noise[start : start + BATCH_SIZE])
            for start in range(0, len(noise), BATCH_SIZE)
        ]
        return np.concatenate([*batches, np.zeros((0, *self.image_shape), np.float32)])

    @classmethod
    def from_gan(cls, gan):
        """Wraps a `ConditionalGAN`'s `inference_generator` (the EMA generator where there is one)."""
        return cls.from_network(gan.inference_generator, gan.num_classes)

    @classmethod
    def from_network(cls, network, num_classes):
        """Wraps a generator network (inputs `digit`, `noise`; tanh output), run in inference mode."""
        import tensorflow as tf

        from cgan_keras import models

        latent_dim = network.input["noise"].shape[-1]

        def compiled(network_call, first_input):
            # A compiled call with a fixed signature, traced once: eager calls cost
            # ~7 ms per batch. Not predict_on_batch, which under tf.distribute
            # splits and pads the batch.
            inference = tf.function(
                lambda first, noise: to_unit_range(tf.cast(network_call(first, noise), tf.float32)),
                input_signature=[first_input, tf.TensorSpec([None, latent_dim], tf.float32, name="noise")],
            )
            return lambda first, noise: inference(tf.constant(first), tf.constant(noise)).numpy()

        def condition_forward():  # only interpolation needs the rewired network: not built for every sampler
            on_condition = models.with_condition_input(network)
            return compiled(
                lambda condition, noise: on_condition([condition, noise], training=False),
                tf.TensorSpec([None, num_classes], tf.float32, name="condition"),
            )

        return cls(
            compiled(
                lambda digits, noise: network({"digit": digits, "noise": noise}, training=False),
                tf.TensorSpec([None], tf.int32, name="digit"),
            ),
            latent_dim,
            network.output.shape[1:],
            num_classes,
            _built_on_first_call(condition_forward) if models.has_condition_layer(network) else None,
        )

    @classmethod
    def from_saved_model(cls, path):
        """Loads a SavedModel written by `export.export_generator` (its `serving_default`), with TensorFlow.

        Raises:
            export.SavedModelError: the path is not a generator SavedModel.
        """
        import tensorflow as tf

        from cgan_keras import export

        loaded = export.load_generator(path)

        def forward(digits, noise):
            return loaded.serve(digit=tf.constant(digits), noise=tf.constant(noise))["images"].numpy()

        def on_condition(condition, noise):
            return loaded.condition(condition=tf.constant(condition), noise=tf.constant(noise))["images"].numpy()

        image_shape = loaded.serve.structured_outputs["images"].shape[1:]
        return cls(
            forward, loaded.latent_dim, image_shape, loaded.num_classes, on_condition if loaded.condition else None
        )

    @classmethod
    def from_onnx(cls, path):
        """Loads an ONNX file written by `export.export_onnx`, with onnxruntime (no TensorFlow).

        Raises:
            OnnxModelError: the file is missing, not ONNX, or not a generator
                with inputs `digit` int32 `[N]`, `noise` float32 `[N, latent_dim]`
                and output `images` float32 `[N, H, W, C]`.
        """
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as errors

        if not Path(path).is_file():
            raise OnnxModelError(f"Expected an ONNX file as written by `export_onnx`. Received: path={str(path)!r}")
        try:
            session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
        except (errors.Fail, errors.InvalidArgument, errors.InvalidGraph, errors.InvalidProtobuf) as error:
            problem = first_line(error)
            raise OnnxModelError(f"onnxruntime cannot load it ({problem}). Received: path={str(path)!r}") from None
        inputs = {tensor.name: tensor for tensor in session.get_inputs()}
        outputs = {tensor.name: tensor for tensor in session.get_outputs()}
        images = outputs.get("images")
        expected = (
            set(inputs) == {"digit", "noise"}
            and inputs["digit"].type == "tensor(int32)"
            and len(inputs["digit"].shape) == 1
            and inputs["noise"].type == "tensor(float)"
            and len(inputs["noise"].shape) == 2
            and isinstance(inputs["noise"].shape[1], int)
            and images is not None
            and images.type == "tensor(float)"
            and len(images.shape) == 4
            and all(isinstance(size, int) for size in images.shape[1:])
        )
        metadata = session.get_modelmeta().custom_metadata_map
        if not expected or "num_classes" not in metadata:
            signature = {name: (tensor.type, tensor.shape) for name, tensor in {**inputs, **outputs}.items()}
            raise OnnxModelError(
                "Expected inputs digit int32 [N], noise float [N, latent_dim], output images float [N, H, W, C] "
                f"and `num_classes` metadata. Received: {signature}, metadata keys={sorted(metadata)}, "
                f"path={str(path)!r}"
            )

        def forward(digits, noise):
            return session.run(["images"], {"digit": digits, "noise": noise})[0]

        def condition_forward():  # only interpolation needs it, and `onnx` costs an import
            cut = _condition_session(path, session.get_providers())
            return lambda condition, noise: cut.run(["images"], {"condition": condition, "noise": noise})[0]

        return cls(
            forward,
            inputs["noise"].shape[1],
            images.shape[1:],
            int(metadata["num_classes"]),
            _built_on_first_call(condition_forward),
        )


def _built_on_first_call(build):
    """A forward function that calls `build()` once, on its first call, and then what `build` returned."""
    built = []

    def forward(first, noise):
        if not built:
            built.append(build())
        return built[0](first, noise)

    return forward


def _condition_session(path, providers):
    """An onnxruntime session of the generator ONNX file at `path`, cut at its `condition` tensor.

    Raises:
        ValueError: the file has no `condition` tensor (no `digit_one_hot` layer, or exported before it had one).
    """
    import onnx
    import onnxruntime

    try:
        model = onnx.utils.Extractor(onnx.load(str(path))).extract_model(["condition", "noise"], ["images"])
    except (KeyError, ValueError):  # which one depends on where the name is missing
        raise ValueError(
            "This generator has no condition input to interpolate with: its ONNX file has no `condition` "
            "tensor (a generator without a `digit_one_hot` layer, or an export from before it existed). "
            f"Received: path={str(path)!r}"
        ) from None
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=providers)
