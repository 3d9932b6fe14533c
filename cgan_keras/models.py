"""The generator and discriminator networks, as functional Keras models.

Both take the digit as an int32 index and one-hot encode it inside the graph,
so every caller (training, the sampler, the exports) feeds the same `digit`
input and none can get the encoding wrong; `with_condition_input` opens the
generator at that point for a weighted one-hot (interpolation).

Why these sizes: a narrow generator (two stride-2 stages, 80 -> 40 channels)
and a deeper discriminator (four stride-2 convolutions, 32 -> 64 -> 64 -> 64,
28x28 down to 2x2), chosen at equal training FLOPs on full MNIST by
`benchmarks/recipe.py` (docs/quality.md, "What made the difference"): narrow networks
trained for more steps beat wide ones trained for fewer, and the deeper
discriminator, with the R1 penalty (`gan.r1_penalty`) keeping it smooth,
holds the generator to digits that are both cleaner and more varied than
the two-convolution one did.
"""

import contextlib
import warnings

import keras
from keras import layers

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@contextlib.contextmanager
def policy_scope(policy):
    """Layers built inside take the dtype `policy` (a name or `keras.DTypePolicy`); the global one comes back after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _one_hot(digit, num_classes, name):
    # A built-in layer rather than a Lambda, so `.keras` files load in safe mode.
    return layers.CategoryEncoding(num_tokens=num_classes, output_mode="one_hot", name=name)(digit)


def build_generator(
    latent_dim,
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    filters=(80, 40),
    batch_norm_scale=True,
    synchronized_batch_norm=False,
    digit_at_every_scale=True,
    name="generator",
):
    """Builds the generator: noise + one-hot digit -> image.

    The concatenated vector is a 1x1 map that `Conv2DTranspose` layers grow
    to the image size: one valid transposed conv to `H/4 - 3*(len(filters)-2)`,
    stride-1 valid kernel-4 layers (+3 pixels each) up to `H/4`, then two
    stride-2 layers to `H/2` and `H`. Hidden layers use BatchNorm + ReLU and
    no bias (BatchNorm's offset replaces it); the output is `tanh`, in float32
    whatever the dtype policy.

    Args:
        latent_dim: length of the noise vector.
        num_classes: number of digit classes.
        image_shape: `(H, W, C)` of the images, `H == W`, divisible by 4.
        filters: channels of the hidden maps, smallest map first; at least 2.
        batch_norm_scale: whether BatchNorm learns a scale (the seed fixes it).
        synchronized_batch_norm: share BatchNorm statistics across replicas.
        digit_at_every_scale: also give every hidden map the one-hot digit,
            broadcast to its size, as extra channels.
        name: model name.

    Returns:
        A `keras.Model` with inputs `{"digit": int32 (N,), "noise": float32
        (N, latent_dim)}` and output float32 `(N, H, W, C)` in [-1, 1].
    """
    height, width, channels = image_shape
    base_size = height // 4
    stem_size = base_size - 3 * (len(filters) - 2)
    if height != width or height % 4 or len(filters) < 2 or stem_size < 1:
        raise ValueError(
            "Expected a square image_shape with a side divisible by 4 and at least 2 filters "
            f"that fit it. Received: image_shape={image_shape}, filters={filters}"
        )
    digit = keras.Input(shape=(), dtype="int32", name="digit")
    noise = keras.Input(shape=(latent_dim,), name="noise")
    one_hot = _one_hot(digit, num_classes, "digit_one_hot")
    x = layers.Concatenate(name="noise_and_digit")([noise, one_hot])
    x = layers.Reshape((1, 1, latent_dim + num_classes))(x)
    kernel_sizes = [stem_size] + [4] * (len(filters) - 2)
    for index, (kernel_size, width_channels) in enumerate(zip(kernel_sizes, filters[:-1], strict=True)):
        x = layers.Conv2DTranspose(width_channels, kernel_size, use_bias=False, name=f"upsample_{index}")(x)
        x = _batch_norm_relu(x, batch_norm_scale, synchronized_batch_norm, index)
        if digit_at_every_scale:
            x = _with_digit_map(x, one_hot, f"digit_map_{index}")
    x = layers.Conv2DTranspose(
        filters[-1], 4, strides=2, padding="same", use_bias=False, name=f"upsample_{len(filters) - 1}"
    )(x)
    x = _batch_norm_relu(x, batch_norm_scale, synchronized_batch_norm, len(filters) - 1)
    if digit_at_every_scale:
        x = _with_digit_map(x, one_hot, f"digit_map_{len(filters) - 1}")
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name="to_image")(x)
    image = layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model({"digit": digit, "noise": noise}, image, name=name)


def check_networks(generator, discriminator, latent_dim, num_classes, image_shape):
    """Raises `ValueError` naming what does not fit unless the two networks make a GAN of these settings.

    Each must be a functional model with dict inputs (the generator `digit` and
    `noise` `(None, latent_dim)`, output `(None, *image_shape)`; the
    discriminator `image` `(None, *image_shape)` and `digit`, output
    `(None, 1)`), and every one-hot layer must encode `num_classes` digits: a
    digit the layer lacks would encode as zeros and train without its label,
    silently.
    """
    for role, network, names in (
        ("generator", generator, ("digit", "noise")),
        ("discriminator", discriminator, ("digit", "image")),
    ):
        inputs = getattr(network, "input", None)  # a subclassed model that was never called has none
        if not (isinstance(inputs, dict) and set(names) <= set(inputs)):
            received = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                f"The {role} must be a functional model with dict inputs {names}. Received: inputs={received}"
            )
        for layer in network.layers:
            if isinstance(layer, layers.CategoryEncoding) and layer.num_tokens != num_classes:
                raise ValueError(
                    f"The {role}'s one-hot layer `{layer.name}` encodes {layer.num_tokens} digits; "
                    f"the GAN has num_classes={num_classes}"
                )
    shapes = {
        "generator's `noise` input": (generator.input["noise"].shape, (None, latent_dim)),
        "generator's output": (generator.output.shape, (None, *image_shape)),
        "discriminator's `image` input": (discriminator.input["image"].shape, (None, *image_shape)),
        "discriminator's output": (discriminator.output.shape, (None, 1)),
    }
    for what, (shape, expected) in shapes.items():
        if tuple(shape) != tuple(expected):
            raise ValueError(f"The {what} must have shape {tuple(expected)}. Received: {tuple(shape)}")


def has_condition_layer(generator):
    """Whether `generator` one-hot encodes its digit in a layer named `digit_one_hot` (`build_generator`'s do),
    which `with_condition_input` feeds a weighted one-hot instead."""
    return any(layer.name == "digit_one_hot" for layer in generator.layers)


def with_condition_input(generator):
    """The same generator, fed a condition vector where it one-hot encodes the digit.

    The returned model shares `generator`'s layers and weights (training one
    trains the other). A one-hot row gives the digit's images exactly; a
    weighted one, e.g. `0.7 * one_hot(3) + 0.3 * one_hot(8)`, an image between
    two digits, which is how `infer.py --interpolate` morphs one into another.

    Args:
        generator: a model from `build_generator` (it has the `digit_one_hot` layer).

    Returns:
        A `keras.Model` with inputs `[condition float32 (N, num_classes),
        noise float32 (N, latent_dim)]` and `generator`'s output.

    Raises:
        ValueError: `generator` has no `noise` input or no `digit_one_hot` layer.
    """
    if not has_condition_layer(generator) or "noise" not in {layer.name for layer in generator.layers}:
        raise ValueError(
            "Expected a generator from `build_generator`, with a `noise` input and a `digit_one_hot` layer. "
            f"Received: {generator.name!r}"
        )
    condition = keras.Input(shape=(generator.get_layer("digit_one_hot").num_tokens,), name="condition")
    noise = keras.Input(shape=generator.input["noise"].shape[1:], name="noise")

    def share_layer(layer):
        # The generator's own layers, called on the new inputs (shared, as layers of two models are);
        # the one-hot encoding gives way to the condition. Cutting the generator's graph at the
        # one-hot tensor instead would leave it unable to save.
        return layers.Identity(name="condition_as_one_hot") if layer.name == "digit_one_hot" else layer

    with warnings.catch_warnings():
        # clone_model keeps the input dict's key `digit` for the tensor named `condition`, and says so.
        warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
        rewired = keras.models.clone_model(
            generator, input_tensors={"digit": condition, "noise": noise}, clone_function=share_layer
        )
    return keras.Model([condition, noise], rewired.output, name=f"{generator.name}_on_condition")


def _with_digit_map(x, one_hot, name):
    """Concatenates the one-hot digit, broadcast to `x`'s height and width, to `x`'s channels."""
    height, width, _ = x.shape[1:]
    digit_map = layers.Reshape((1, 1, one_hot.shape[-1]), name=f"{name}_reshape")(one_hot)
    digit_map = layers.UpSampling2D(size=(height, width), name=name)(digit_map)
    return layers.Concatenate(name=f"{name}_concatenate")([x, digit_map])


def _batch_norm_relu(x, scale, synchronized, index):
    x = layers.BatchNormalization(scale=scale, synchronized=synchronized, name=f"batch_norm_{index}")(x)
    return layers.ReLU(name=f"relu_{index}")(x)


def build_discriminator(
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    filters=(32, 64, 64, 64),
    projection=True,
    name="discriminator",
):
    """Builds the default discriminator: image + broadcast one-hot digit -> logit.

    The one-hot digit is tiled to `(H, W, num_classes)` and concatenated with
    the image, then stride-2 4x4 convolutions with LeakyReLU take the
    map from H to ceil(H / 2) per filter (28 -> 14 -> 7 -> 4 -> 2 with the
    default four), and a dense layer gives one logit. No BatchNorm: batch
    statistics would mix the all-real and all-fake batches the seed's
    algorithm feeds separately.

    With `projection`, the logit also gets the inner product of the final
    features with a learned embedding of the digit (Miyato & Koyama, 2018,
    "cGANs with Projection Discriminator"): the digit then shapes the verdict
    at the top of the network too, not only through the first convolution,
    which makes the generator learn the asked-for class much sooner.

    Args:
        num_classes: number of digit classes.
        image_shape: `(H, W, C)` of the images.
        filters: channels of the stride-2 convolutions.
        projection: add the projection term to the logit.
        name: model name.

    Returns:
        A `keras.Model` with inputs `{"image": float32 (N, H, W, C) in
        [-1, 1], "digit": int32 (N,)}` and output float32 logits `(N, 1)`.
    """

    image, digit, x = _discriminator_inputs(num_classes, image_shape)
    for index, width_channels in enumerate(filters):
        x = layers.Conv2D(width_channels, 4, strides=2, padding="same", name=f"conv_{index}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"leaky_relu_{index}")(x)
    features = layers.Flatten(name="features")(x)
    logit = layers.Dense(1, dtype="float32", name="logit")(features)
    if projection:
        digit_embedding = layers.Dense(features.shape[-1], use_bias=False, name="digit_embedding")(
            _one_hot(digit, num_classes, "projection_one_hot")
        )
        agreement = layers.Dot(axes=1, dtype="float32", name="projection")([features, digit_embedding])
        logit = layers.Add(dtype="float32", name="logit_with_projection")([logit, agreement])
    return keras.Model({"image": image, "digit": digit}, logit, name=name)


def build_seed_discriminator(
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    filters=(24, 32, 64),
    synchronized_batch_norm=False,
    name="discriminator",
):
    """Builds the MXNet-R tutorial's discriminator.

    conv 3x3/`filters[0]` -> max-pool 2 -> conv 3x3 stride 2/`filters[1]` ->
    conv 4x4/`filters[2]` -> dense logit; each conv without bias, followed by
    BatchNorm and ELU(alpha=0.25).

    Args:
        num_classes: number of digit classes.
        image_shape: `(H, W, C)` of the images.
        filters: the three conv widths.
        synchronized_batch_norm: share BatchNorm statistics across replicas.
        name: model name.

    Returns:
        A `keras.Model` like `build_discriminator`'s.
    """
    image, digit, x = _discriminator_inputs(num_classes, image_shape)
    convolutions = [(3, 1, "same"), (3, 2, "same"), (4, 1, "valid")]
    for index, (width_channels, (kernel_size, strides, padding)) in enumerate(zip(filters, convolutions, strict=True)):
        x = layers.Conv2D(
            width_channels, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"conv_{index}"
        )(x)
        x = layers.BatchNormalization(synchronized=synchronized_batch_norm, name=f"batch_norm_{index}")(x)
        x = layers.ELU(alpha=0.25, name=f"elu_{index}")(x)
        if index == 0:
            x = layers.MaxPooling2D(name="max_pool")(x)
    x = layers.Flatten()(x)
    logit = layers.Dense(1, use_bias=False, dtype="float32", name="logit")(x)
    return keras.Model({"image": image, "digit": digit}, logit, name=name)


def _discriminator_inputs(num_classes, image_shape):
    image = keras.Input(shape=image_shape, name="image")
    digit = keras.Input(shape=(), dtype="int32", name="digit")
    height, width, _ = image_shape
    one_hot = _one_hot(digit, num_classes, "digit_one_hot")
    digit_map = layers.Reshape((1, 1, num_classes))(one_hot)
    digit_map = layers.UpSampling2D(size=(height, width), name="digit_map")(digit_map)
    return image, digit, layers.Concatenate(name="image_and_digit")([image, digit_map])
