"""Writing trained models: the generator as a SavedModel, any model as a `.keras` file."""

import re
from pathlib import Path

import keras
import tensorflow as tf

from cgan_keras.artifacts import atomic_path


def export_generator(gan, path):
    """Writes `gan.generator` as a SavedModel that needs neither Keras nor this package.

    The `serving_default` signature maps `digit` int32 `[None]` and `noise`
    float32 `[None, latent_dim]` to `images` float32 `[None, H, W, C]` in
    [0, 1]. BatchNorm runs in inference mode. No device is baked in, so the
    SavedModel loads with `tf.saved_model.load(path)` on a machine with or
    without a GPU. The directory is written under a temporary name and renamed
    into place.

    Args:
        gan: a `ConditionalGAN` (anything with `.generator` and `.latent_dim`).
        path: destination directory.

    Returns:
        `pathlib.Path` of the SavedModel.

    Example:

    >>> export_generator(gan, "saved_models/cgan/generator")
    >>> loaded = tf.saved_model.load("saved_models/cgan/generator")
    >>> loaded.signatures["serving_default"](digit=tf.constant([7]),
    ...     noise=tf.random.normal([1, gan.latent_dim]))["images"]
    """
    generator = gan.generator

    def serve(digit, noise):
        images = generator({"digit": digit, "noise": noise}, training=False)
        return {"images": (tf.cast(images, tf.float32) + 1.0) / 2.0}

    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="digit"),
            tf.TensorSpec([None, gan.latent_dim], tf.float32, name="noise"),
        ],
    )
    with atomic_path(path, directory=True) as temporary:
        try:
            archive.write_out(str(temporary), verbose=False)
        except tf.errors.OpError as error:
            # TensorFlow's file errors are no OSErrors; its message ends with the system's reason.
            raise OSError(re.sub(r"\s*\[Op:\w+\]$", "", error.message).rsplit("; ", 1)[-1]) from error
    return Path(path)


def save_model(model, path):
    """Writes a Keras model to the `.keras` file `path`, atomically; returns its path."""
    with atomic_path(path) as temporary:
        model.save(temporary)
    return Path(path)


class SavedModelError(ValueError):
    """A path is not a generator SavedModel with the `serving_default` signature of `export_generator`."""


def load_generator(path):
    """Loads a SavedModel written by `export_generator`, with plain TensorFlow.

    Args:
        path: the SavedModel directory.

    Returns:
        `(serve, latent_dim)`: the `serving_default` concrete function
        (`serve(digit=int32 [N], noise=float32 [N, latent_dim])["images"]`)
        and the noise length it expects.

    Raises:
        SavedModelError: the path is not a SavedModel, or lacks that signature.
    """
    if not tf.saved_model.contains_saved_model(str(path)):
        raise SavedModelError(
            f"Expected a SavedModel directory (with saved_model.pb) as written by `export_generator`. "
            f"Received: path={str(path)!r}"
        )
    serve = tf.saved_model.load(str(path)).signatures.get("serving_default")
    inputs = serve.structured_input_signature[1] if serve is not None else {}
    outputs = serve.structured_outputs if serve is not None else {}
    if set(inputs) != {"digit", "noise"} or inputs["noise"].shape.rank != 2 or "images" not in outputs:
        raise SavedModelError(
            "Expected a `serving_default` signature (digit, noise) -> images. "
            f"Received: inputs={sorted(inputs)}, outputs={sorted(outputs)}, path={str(path)!r}"
        )
    return serve, int(inputs["noise"].shape[-1])
