import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from support import LATENT_DIM, own_generator, tiny_config, tiny_gan

from cgan_keras import training
from cgan_keras.export import (
    OnnxExportError,
    SavedModelError,
    export_generator,
    export_onnx,
    export_serving,
    load_generator,
    save_model,
)
from cgan_keras.gan import ConditionalGAN
from cgan_keras.sampler import DigitSampler

# Runs in a fresh interpreter that never imports cgan_keras (asserted), as a user's server would.
LOAD_AND_RUN = """
import json, sys
import numpy as np, tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
noise = np.load(sys.argv[2])
images = signature(digit=tf.constant([0, 3, 9], tf.int32), noise=tf.constant(noise))["images"].numpy()
np.save(sys.argv[3], images)
print(json.dumps({
    "inputs": {name: [spec.dtype.name, spec.shape.as_list()]
               for name, spec in signature.structured_input_signature[1].items()},
    "outputs": list(signature.structured_outputs),
    "cgan_keras_imported": any(name.startswith("cgan_keras") for name in sys.modules),
}))
"""


def test_saved_model_loads_and_runs_without_this_package(tmp_path):
    gan = tiny_gan()
    export_generator(gan, tmp_path / "generator")
    noise = np.random.default_rng(5).standard_normal((3, LATENT_DIM)).astype("float32")
    np.save(tmp_path / "noise.npy", noise)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_RUN,
            str(tmp_path / "generator"),
            str(tmp_path / "noise.npy"),
            str(tmp_path / "images.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "inputs": {"digit": ["int32", [None]], "noise": ["float32", [None, LATENT_DIM]]},
        "outputs": ["images"],
        "cgan_keras_imported": False,
    }
    images = np.load(tmp_path / "images.npy")
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    expected = (np.asarray(gan((np.array([0, 3, 9], "int32"), noise), training=False)) + 1) / 2
    np.testing.assert_allclose(images, expected, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncated graph", "no variables"])
def test_a_damaged_saved_model_is_a_saved_model_error(tmp_path, damage):
    export_generator(tiny_gan(), tmp_path / "generator")
    if damage == "truncated graph":
        graph = tmp_path / "generator" / "saved_model.pb"
        graph.write_bytes(graph.read_bytes()[:1000])
    else:
        shutil.rmtree(tmp_path / "generator" / "variables")
    with pytest.raises(SavedModelError, match="The SavedModel cannot be read whole"):
        load_generator(tmp_path / "generator")


def test_export_replaces_an_existing_saved_model_whole(tmp_path):
    first, second = tiny_gan(seed=0), tiny_gan(seed=1)
    export_generator(first, tmp_path / "generator")
    export_generator(second, tmp_path / "generator")
    signature = tf.saved_model.load(str(tmp_path / "generator")).signatures["serving_default"]
    noise = np.zeros((1, LATENT_DIM), "float32")
    images = signature(digit=tf.constant([4]), noise=tf.constant(noise))["images"].numpy()
    np.testing.assert_allclose(images, (np.asarray(second((np.array([4], "int32"), noise))) + 1) / 2, atol=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generator"]


def test_generator_keras_file_reloads_with_the_same_outputs(tmp_path):
    gan = tiny_gan()
    save_model(gan.generator, tmp_path / "generator.keras")
    reloaded = keras.models.load_model(tmp_path / "generator.keras")
    inputs = {"digit": np.array([2], "int32"), "noise": np.ones((1, LATENT_DIM), "float32")}
    np.testing.assert_allclose(reloaded(inputs), gan.generator(inputs), atol=1e-6)


def test_generate_signature_draws_the_noise_from_the_seed_in_the_graph(tmp_path):
    gan = tiny_gan()
    loaded = tf.saved_model.load(str(export_generator(gan, tmp_path / "generator")))
    generate = loaded.signatures["generate"]
    assert {name: spec.dtype for name, spec in generate.structured_input_signature[1].items()} == {
        "digit": tf.int32,
        "seed": tf.int64,
    }
    digits = tf.constant([3, 3, 8])
    images = generate(digit=digits, seed=tf.constant(7, tf.int64))["images"].numpy()
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, generate(digit=digits, seed=tf.constant(7, tf.int64))["images"].numpy())
    assert not np.array_equal(images, generate(digit=digits, seed=tf.constant(8, tf.int64))["images"].numpy())
    noise = tf.random.stateless_normal((3, LATENT_DIM), seed=[7, 0])
    served = loaded.signatures["serving_default"](digit=digits, noise=noise)["images"].numpy()
    np.testing.assert_allclose(images, served, atol=1e-6)


def test_saved_model_cli_runs_the_generate_signature_the_same_twice(tmp_path):
    # TensorFlow's own tool, as a TF Serving user would check an export.
    path = export_generator(tiny_gan(), tmp_path / "generator")
    outputs = []
    for run in ("a", "b"):
        command = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir", str(path)]
        command += ["--tag_set", "serve", "--signature_def", "generate", "--input_exprs", "digit=[3,3];seed=7"]
        subprocess.run([*command, "--outdir", str(tmp_path / run)], capture_output=True, text=True, check=True)
        outputs.append(np.load(tmp_path / run / "images.npy"))
    assert outputs[0].shape == (2, 28, 28, 1) and outputs[0].dtype == np.float32
    assert outputs[0].min() >= 0 and outputs[0].max() <= 1
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_keras_export_of_the_gan_takes_digits_and_returns_its_images(tmp_path):
    gan = tiny_gan()
    gan.export(tmp_path / "keras_export", verbose=False)  # Keras saw no call's input to trace: the digits are it
    exported = tf.saved_model.load(str(tmp_path / "keras_export"))
    images = exported.serve(tf.constant([1, 2, 3], tf.int32)).numpy()
    assert images.shape == (3, 28, 28, 1) and -1 <= images.min() and images.max() <= 1
    # tf2onnx would log the in-graph noise op as unsupported and write a file onnxruntime refuses.
    with pytest.raises(ValueError, match=r"for ONNX use cgan_keras.export_onnx\(gan, path\).*format='onnx'"):
        gan.export(tmp_path / "gan.onnx", format="onnx")
    assert not (tmp_path / "gan.onnx").exists()


def test_serving_layout_is_a_numbered_version_of_the_saved_model(tmp_path):
    path = export_generator(tiny_gan(), tmp_path / "generator")
    version = export_serving(path, tmp_path / "serving" / "cgan")
    assert version == tmp_path / "serving" / "cgan" / "1" and (version / "saved_model.pb").is_file()
    assert set(tf.saved_model.load(str(version)).signatures) == {"serving_default", "generate", "condition"}
    export_serving(path, tmp_path / "serving" / "cgan")  # a rerun replaces version 1 whole
    assert [child.name for child in (tmp_path / "serving" / "cgan").iterdir()] == ["1"]


def test_onnx_export_has_the_saved_models_signature_and_outputs(tmp_path):
    gan = tiny_gan()
    session = onnxruntime.InferenceSession(str(export_onnx(gan, tmp_path / "generator.onnx")))
    onnx.checker.check_model(onnx.load(tmp_path / "generator.onnx"), full_check=True)  # a valid graph, shapes too
    inputs = {tensor.name: (tensor.type, tensor.shape[1:]) for tensor in session.get_inputs()}
    assert inputs == {"digit": ("tensor(int32)", []), "noise": ("tensor(float)", [LATENT_DIM])}
    assert [(tensor.name, tensor.shape[1:]) for tensor in session.get_outputs()] == [("images", [28, 28, 1])]
    assert session.get_modelmeta().custom_metadata_map == {"latent_dim": str(LATENT_DIM), "num_classes": "10"}
    digits = np.array([0, 3, 9], np.int32)
    noise = np.random.default_rng(5).standard_normal((3, LATENT_DIM)).astype("float32")
    images = session.run(["images"], {"digit": digits, "noise": noise})[0]
    expected = (np.asarray(gan((digits, noise), training=False)) + 1) / 2
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generator.onnx"]


def test_a_generator_of_the_users_own_exports_without_the_condition_input(tmp_path):
    generator = own_generator()  # no `digit_one_hot` layer to feed a condition
    gan = ConditionalGAN(LATENT_DIM, generator=generator, discriminator=tiny_gan(compile=False).discriminator)
    samplers = [
        DigitSampler.from_gan(gan),
        DigitSampler.from_saved_model(export_generator(gan, tmp_path / "generator")),  # refused it before
        DigitSampler.from_onnx(export_onnx(gan, tmp_path / "generator.onnx")),  # and this
    ]
    images = [sampler([0, 4, 9], seed=3) for sampler in samplers]
    for other in images[1:]:
        np.testing.assert_allclose(other, images[0], atol=1e-5)
    for sampler in samplers:
        with pytest.raises(ValueError, match="This generator has no condition input to interpolate with"):
            sampler.interpolate(3, 8, frames=3, count=1)


def test_an_invalid_onnx_graph_is_an_error_and_no_file(tmp_path, monkeypatch):
    from cgan_keras import export

    # Without the float32 copy, bfloat16 layers reach tf2onnx, which logs them and goes on.
    monkeypatch.setattr(export, "_float32_copy", lambda network: network)
    gan = training.build_gan(tiny_config(mixed_precision="on"))
    with pytest.raises(OnnxExportError, match=r"generator.onnx not written: tf2onnx made an invalid graph: .*bfloat16"):
        export_onnx(gan, tmp_path / "generator.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("loaded", [False, True], ids=["built", "loaded"])
def test_a_mixed_precision_generator_exports_to_a_float32_onnx_and_saved_model(tmp_path, loaded):
    gan = training.build_gan(tiny_config(mixed_precision="on"))
    if loaded:  # its networks then report the global policy (float32), whatever their layers compute in
        gan = keras.models.load_model(save_model(gan, tmp_path / "gan.keras"))
    session = onnxruntime.InferenceSession(str(export_onnx(gan, tmp_path / "generator.onnx")))
    digits = np.arange(4, dtype=np.int32)
    noise = np.random.default_rng(1).standard_normal((4, LATENT_DIM)).astype("float32")
    images = session.run(["images"], {"digit": digits, "noise": noise})[0]
    # bfloat16 keeps 8 bits of mantissa: the mixed-precision network is close, not equal.
    expected = (np.asarray(gan((digits, noise), training=False), np.float32) + 1) / 2
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, expected, atol=0.02)
    # The SavedModel computes in float32 too: the same images as the ONNX file, not bfloat16's.
    serve = tf.saved_model.load(str(export_generator(gan, tmp_path / "generator"))).signatures["serving_default"]
    from_saved_model = serve(digit=tf.constant(digits), noise=tf.constant(noise))["images"].numpy()
    np.testing.assert_allclose(from_saved_model, images, atol=1e-5)
