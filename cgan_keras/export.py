"""Writing trained models: the generator as a SavedModel (with a TF Serving copy) and as ONNX; `.keras` files."""

import re
import shutil
from pathlib import Path
from typing import NamedTuple

import keras
import tensorflow as tf

from cgan_keras import models
from cgan_keras.artifacts import atomic_path, first_line
from cgan_keras.sampler import to_unit_range

# Opset 17 (2022) runs on every onnxruntime since 1.13 and on most other runtimes.
ONNX_OPSET = 17


def _serving_function(gan, generator=None):
    """`serve(digit int32 [N], noise float32 [N, latent_dim]) -> {"images": float32 [N, H, W, C] in [0, 1]}`.

    `generator` replaces the GAN's network (e.g. a float32 copy of it).
    """
    generator = generator or gan.inference_generator

    def serve(digit, noise):
        images = generator({"digit": digit, "noise": noise}, training=False)
        return {"images": to_unit_range(tf.cast(images, tf.float32))}

    return serve


def _condition_function(generator):
    """`on_condition(condition float32 [N, num_classes], noise) -> {"images": ...}`: a weighted one-hot in."""
    on_condition = models.with_condition_input(generator)

    def serve(condition, noise):
        images = on_condition([condition, noise], training=False)
        return {"images": to_unit_range(tf.cast(images, tf.float32))}

    return serve


def _serving_signature(gan):
    return [
        tf.TensorSpec([None], tf.int32, name="digit"),
        tf.TensorSpec([None, gan.latent_dim], tf.float32, name="noise"),
    ]


def _condition_signature(gan):
    return [
        tf.TensorSpec([None, gan.num_classes], tf.float32, name="condition"),
        tf.TensorSpec([None, gan.latent_dim], tf.float32, name="noise"),
    ]


def export_generator(gan, path):
    """Writes `gan.inference_generator` (the EMA generator, if any) as a SavedModel needing no Keras or cgan_keras.

    Three signatures, each returning `images` float32 `[None, H, W, C]` in [0, 1]:

    - `serving_default`: `digit` int32 `[None]` and `noise` float32
      `[None, latent_dim]`.
    - `generate`: `digit` int32 `[None]` and `seed` int64 scalar; the noise is
      drawn inside the graph with `tf.random.stateless_normal(seed=[seed, 0])`,
      so a client (e.g. TF Serving over REST) sends only digits and a seed.
      These are not the images of `infer.py --seed` (numpy draws that noise).
    - `condition`: `condition` float32 `[None, num_classes]` (a one-hot, or a
      weighted one between digits) and `noise`; see `models.with_condition_input`.
      Only for a generator with a `digit_one_hot` layer (`build_generator`'s).

    BatchNorm runs in inference mode, in float32 whatever the training's
    dtype policy (as `export_onnx`). No device is baked in, so the
    SavedModel loads with `tf.saved_model.load(path)` on a machine with or
    without a GPU. `num_classes` is recorded as a variable collection. The
    directory is written under a temporary name and renamed into place.

    Args:
        gan: a `ConditionalGAN` (anything with `.inference_generator`, `.latent_dim` and `.num_classes`).
        path: destination directory.

    Returns:
        `pathlib.Path` of the SavedModel.

    Example:

    >>> export_generator(gan, "saved_models/cgan/generator")
    >>> loaded = tf.saved_model.load("saved_models/cgan/generator")
    >>> loaded.signatures["generate"](digit=tf.constant([7, 7]), seed=tf.constant(0, tf.int64))["images"]
    """
    # float32 whatever the training's dtype policy: bfloat16 is slow on CPUs without it, and
    # float32 everywhere gives the same images as the ONNX file.
    generator = _float32_copy(gan.inference_generator)
    serve = _serving_function(gan, generator)

    def generate(digit, seed):
        noise_seed = tf.stack([seed, tf.zeros_like(seed)])
        noise = tf.random.stateless_normal((tf.shape(digit)[0], gan.latent_dim), seed=noise_seed)
        return serve(digit, noise)

    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=_serving_signature(gan))
    archive.add_endpoint(
        name="generate",
        fn=generate,
        input_signature=[tf.TensorSpec([None], tf.int32, name="digit"), tf.TensorSpec([], tf.int64, name="seed")],
    )
    if models.has_condition_layer(generator):
        condition = _condition_function(generator)
        archive.add_endpoint(name="condition", fn=condition, input_signature=_condition_signature(gan))
    archive.add_variable_collection("num_classes", [tf.Variable(gan.num_classes, trainable=False, name="num_classes")])
    with atomic_path(path, directory=True) as temporary:
        try:
            archive.write_out(str(temporary), verbose=False)
        except tf.errors.OpError as error:
            # TensorFlow's file errors are no OSErrors; its message ends with the system's reason.
            raise OSError(re.sub(r"\s*\[Op:\w+\]$", "", error.message).rsplit("; ", 1)[-1]) from error
    return Path(path)


def export_serving(saved_model, base_path, version=1):
    """Copies a SavedModel to `base_path/<version>/`, the layout TensorFlow Serving watches.

    Point the server's model base path at `base_path` (e.g. `serving/cgan`,
    model name `cgan`); it serves the highest numeric version it finds. The
    version directory is replaced atomically.

    Returns:
        `pathlib.Path` of the version directory.
    """
    version_path = Path(base_path) / str(int(version))
    with atomic_path(version_path, directory=True) as temporary:
        shutil.copytree(saved_model, temporary)
    return version_path


def export_onnx(gan, path):
    """Writes `gan.inference_generator` as an ONNX model (through tf2onnx), runnable with onnxruntime alone.

    Inputs `digit` int32 `[N]` and `noise` float32 `[N, latent_dim]`; output
    `images` float32 `[N, H, W, C]` in [0, 1], as the SavedModel's
    `serving_default`, with BatchNorm in inference mode, computed in float32
    whatever the training's dtype policy. For a generator with a
    `digit_one_hot` layer (`build_generator`'s), the graph's first node one-hot
    encodes `digit` into the tensor `condition` float32 `[N, num_classes]`;
    cut there (`sampler.DigitSampler.from_onnx` does), the rest of the graph
    is the SavedModel's `condition` signature. Metadata `latent_dim` and
    `num_classes` are recorded. Written atomically.

    Args:
        gan: a `ConditionalGAN` (anything with `.inference_generator`, `.latent_dim` and `.num_classes`).
        path: destination `.onnx` file.

    Returns:
        `pathlib.Path` of the file.

    Raises:
        OnnxExportError: the converted graph is not valid ONNX (nothing is written).

    Example:

    >>> export_onnx(gan, "saved_models/cgan/generator.onnx")
    >>> DigitSampler.from_onnx("saved_models/cgan/generator.onnx")([7] * 9, seed=0)
    """
    # Imported here: tf2onnx takes a second to import and only exporting needs it.
    import onnx
    import tf2onnx

    generator = _float32_copy(gan.inference_generator)
    conditioned = models.has_condition_layer(generator)
    signature = _condition_signature(gan) if conditioned else _serving_signature(gan)
    serve = _condition_function(generator) if conditioned else _serving_function(gan, generator)
    model, _ = tf2onnx.convert.from_function(tf.function(serve, input_signature=signature), signature, opset=ONNX_OPSET)
    if conditioned:
        _feed_condition_from_digit(model.graph, gan.num_classes)
    for key, value in {"latent_dim": gan.latent_dim, "num_classes": gan.num_classes}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    # tf2onnx logs a node it cannot convert and goes on; onnxruntime would refuse the file only when loading it.
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise OnnxExportError(f"{path} not written: tf2onnx made an invalid graph: {first_line(error)}") from None
    with atomic_path(path) as temporary:
        temporary.write_bytes(model.SerializeToString())
    return Path(path)


def _feed_condition_from_digit(graph, num_classes):
    """Replaces the graph input `condition` by an input `digit` int32 `[N]` and a OneHot node that makes it."""
    from onnx import TensorProto, helper

    condition = next(tensor for tensor in graph.input if tensor.name == "condition")
    noise = next(tensor for tensor in graph.input if tensor.name == "noise")
    digit = helper.make_tensor_value_info("digit", TensorProto.INT32, [None])
    digit.type.tensor_type.shape.dim[0].CopyFrom(noise.type.tensor_type.shape.dim[0])  # the same batch size N
    graph.value_info.append(condition)  # kept, so that the cut point stays described
    graph.input.remove(condition)
    graph.input.insert(0, digit)
    graph.initializer.extend(
        [
            helper.make_tensor("one_hot_depth", TensorProto.INT32, [], [num_classes]),
            helper.make_tensor("one_hot_values", TensorProto.FLOAT, [2], [0.0, 1.0]),
        ]
    )
    graph.node.insert(
        0, helper.make_node("OneHot", ["digit", "one_hot_depth", "one_hot_values"], ["condition"], axis=-1)
    )


def _float32_copy(network):
    """`network` itself if it computes in float32, else a float32 clone with the same weights.

    onnxruntime has no bfloat16 or float16 kernels for most of the generator's
    layers (e.g. ConvTranspose), and a bfloat16 SavedModel would be slow on CPUs
    without bfloat16, so a mixed-precision network is exported in float32.
    Decided by its layers: a Functional network loaded from a `.keras` file
    reports the global policy, whatever its layers compute in.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in network.layers):
        return network
    copy = keras.models.clone_model(
        network, clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})
    )
    copy.set_weights(network.get_weights())
    return copy


def save_model(model, path):
    """Writes a Keras model to the `.keras` file `path`, atomically; returns its path."""
    with atomic_path(path) as temporary:
        model.save(temporary)
    return Path(path)


class OnnxExportError(ValueError):
    """tf2onnx converted the generator into a graph that is not valid ONNX."""


class SavedModelError(ValueError):
    """A path is not a generator SavedModel with the `serving_default` signature of `export_generator`."""


class LoadedGenerator(NamedTuple):
    """A SavedModel from `export_generator`, loaded by `load_generator`."""

    serve: object  # `serving_default`: serve(digit=int32 [N], noise=float32 [N, latent_dim])["images"]
    latent_dim: int
    num_classes: int
    condition: object  # the `condition` signature, or None for SavedModels exported before it existed


def load_generator(path):
    """Loads a SavedModel written by `export_generator`, with plain TensorFlow.

    Args:
        path: the SavedModel directory.

    Returns:
        A `LoadedGenerator`: the `serving_default` concrete function, the
        noise length it expects, the number of digit classes
        (`models.NUM_CLASSES` for SavedModels exported before it was recorded)
        and the `condition` concrete function (or None).

    Raises:
        SavedModelError: the path is not a SavedModel, cannot be read whole (e.g.
            a truncated `saved_model.pb`, or no `variables/`), or lacks that signature.
    """
    if not tf.saved_model.contains_saved_model(str(path)):
        raise SavedModelError(
            f"Expected a SavedModel directory (with saved_model.pb) as written by `export_generator`. "
            f"Received: path={str(path)!r}"
        )
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        message = f"The SavedModel cannot be read whole ({first_line(error)}). Received: path={str(path)!r}"
        raise SavedModelError(message) from error
    serve = loaded.signatures.get("serving_default")
    inputs = serve.structured_input_signature[1] if serve is not None else {}
    outputs = serve.structured_outputs if serve is not None else {}
    if set(inputs) != {"digit", "noise"} or inputs["noise"].shape.rank != 2 or "images" not in outputs:
        raise SavedModelError(
            "Expected a `serving_default` signature (digit, noise) -> images. "
            f"Received: inputs={sorted(inputs)}, outputs={sorted(outputs)}, path={str(path)!r}"
        )
    recorded = getattr(loaded, "num_classes", None)
    num_classes = int(recorded[0].numpy()) if recorded else models.NUM_CLASSES
    return LoadedGenerator(serve, int(inputs["noise"].shape[-1]), num_classes, loaded.signatures.get("condition"))
