import numpy as np
import onnx
import pytest
from support import LATENT_DIM, tiny_gan

from cgan_keras import export
from cgan_keras.sampler import BATCH_SIZE, DigitSampler, OnnxModelError, noise_batches, sample_noise


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny GAN with its SavedModel and ONNX exports: `(gan, saved_model_path, onnx_path)`."""
    gan = tiny_gan(compile=False)
    directory = tmp_path_factory.mktemp("exports")
    return gan, export.export_generator(gan, directory / "generator"), export.export_onnx(gan, directory / "g.onnx")


@pytest.fixture(scope="module")
def samplers(exported):
    """The same tiny generator three ways: from the GAN, its SavedModel and its ONNX file."""
    gan, saved_model, onnx_path = exported
    return [DigitSampler.from_gan(gan), DigitSampler.from_saved_model(saved_model), DigitSampler.from_onnx(onnx_path)]


def fake_sampler(forward=None):
    """A sampler over a cheap function: each image is filled with its digit / 10."""

    def fill_with_digit(digits, noise):
        assert len(digits) == len(noise) <= BATCH_SIZE and noise.shape[1] == LATENT_DIM
        return np.broadcast_to(digits[:, None, None, None] / 10, (len(digits), 28, 28, 1)).astype(np.float32)

    return DigitSampler(forward or fill_with_digit, LATENT_DIM, (28, 28, 1), num_classes=10)


def test_noise_is_numpys_standard_normal_for_the_seed_however_it_is_batched():
    expected = np.random.default_rng(7).standard_normal((2500, LATENT_DIM), dtype=np.float32)
    np.testing.assert_array_equal(sample_noise(2500, LATENT_DIM, seed=7), expected)
    batches = list(noise_batches(2500, LATENT_DIM, seed=7, batch_size=1000))
    assert [len(batch) for batch in batches] == [1000, 1000, 500]
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert sample_noise(0, LATENT_DIM, seed=7).shape == (0, LATENT_DIM)


def test_truncated_noise_stays_within_the_bound_and_is_reproducible():
    noise = sample_noise(2000, LATENT_DIM, seed=3, truncation=0.5)
    assert noise.dtype == np.float32 and noise.shape == (2000, LATENT_DIM)
    assert np.abs(noise).max() <= 0.5
    np.testing.assert_array_equal(noise, sample_noise(2000, LATENT_DIM, seed=3, truncation=0.5))
    # In the first batch, values already inside the bound are kept and only the
    # others are redrawn (later batches start where the redraws left the stream).
    untruncated = sample_noise(BATCH_SIZE, LATENT_DIM, seed=3)
    inside = np.abs(untruncated) <= 0.5
    np.testing.assert_array_equal(noise[:BATCH_SIZE][inside], untruncated[inside])
    # Resampled, not clipped: almost no value sits at the bound.
    assert np.mean(np.abs(noise) > 0.499) < 0.01


def test_call_batches_and_from_noise_agree_on_any_count():
    sampler = fake_sampler()
    digits = np.arange(2 * BATCH_SIZE + 5) % 10
    images = sampler(digits, seed=1)
    assert images.shape == (len(digits), 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images[:, 0, 0, 0], digits / 10, atol=1e-7)
    starts = [start for start, _ in sampler.batches(digits, seed=1)]
    assert starts == [0, BATCH_SIZE, 2 * BATCH_SIZE]
    np.testing.assert_array_equal(sampler.from_noise(digits, sample_noise(len(digits), LATENT_DIM, 1)), images)
    assert sampler([], seed=1).shape == (0, 28, 28, 1)


def test_sampler_rejects_bad_digits_noise_and_truncation():
    sampler = fake_sampler()
    with pytest.raises(ValueError, match=r"class indices in 0..9. Received: digits\[1\]=10"):
        sampler([3, 10])
    for digits in ([7.9], [True]):  # would be cut to 7, taken as 1
        with pytest.raises(ValueError, match="Expected integer class indices. Received: digits.dtype="):
            sampler(digits)
    for digits in ([[1, 2], [3, 4]], 7):
        with pytest.raises(ValueError, match=r"Expected digits of shape \(N,\), \(N, 1\) or \(N, 10\)"):
            sampler(digits)
    # The layouts ConditionalGAN takes draw the same images.
    np.testing.assert_array_equal(sampler([[3], [8]], seed=2), sampler([3, 8], seed=2))
    np.testing.assert_array_equal(sampler(np.eye(10, dtype=np.int32)[[3, 8]], seed=2), sampler([3, 8], seed=2))
    with pytest.raises(ValueError, match="Received: noise.shape=\\(2, 3\\)"):
        sampler.from_noise([1, 2], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Received: truncation=0"):
        sampler([1], truncation=0)


def test_from_gan_is_seeded_and_maps_the_generator_to_unit_range(exported):
    gan, _, _ = exported
    sampler = DigitSampler.from_gan(gan)
    assert (sampler.latent_dim, sampler.image_shape, sampler.num_classes) == (LATENT_DIM, (28, 28, 1), 10)
    images = sampler([0, 4, 9], seed=3)
    np.testing.assert_array_equal(images, sampler([0, 4, 9], seed=3))
    assert not np.array_equal(images, sampler([0, 4, 9], seed=4))
    noise = sample_noise(3, LATENT_DIM, seed=3)
    tanh = gan.inference_generator({"digit": np.array([0, 4, 9], "int32"), "noise": noise}, training=False)
    np.testing.assert_allclose(images, (np.asarray(tanh) + 1) / 2, atol=1e-6)
    assert not np.array_equal(sampler([0, 4, 9], seed=3, truncation=0.5), images)


def test_gan_saved_model_and_onnx_samplers_agree(samplers):
    for sampler in samplers:
        assert (sampler.latent_dim, sampler.image_shape, sampler.num_classes) == (LATENT_DIM, (28, 28, 1), 10)
    digits = np.arange(20) % 10
    images = [sampler(digits, seed=5, truncation=1.5) for sampler in samplers]
    assert images[0].min() >= 0 and images[0].max() <= 1
    for other in images[1:]:
        assert other.dtype == np.float32 and other.shape == (20, 28, 28, 1)
        np.testing.assert_allclose(other, images[0], atol=1e-5)


def test_from_saved_model_rejects_a_directory_without_one(tmp_path):
    with pytest.raises(export.SavedModelError, match="Received: path="):
        DigitSampler.from_saved_model(tmp_path)


def test_from_onnx_rejects_a_missing_truncated_or_foreign_file(exported, tmp_path):
    _, _, onnx_path = exported
    with pytest.raises(OnnxModelError, match="Received: path="):
        DigitSampler.from_onnx(tmp_path / "missing.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(OnnxModelError, match="onnxruntime cannot load it"):
        DigitSampler.from_onnx(truncated)
    foreign = tmp_path / "identity.onnx"
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["images"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 28, 28, 1])],
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 28, 28, 1])],
    )
    model = onnx.helper.make_model(identity, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, foreign)
    with pytest.raises(OnnxModelError, match="Expected inputs digit int32"):
        DigitSampler.from_onnx(foreign)


def test_interpolation_goes_from_the_first_digit_to_the_second_and_agrees_across_exports(samplers):
    frames = [sampler.interpolate(3, 8, frames=5, count=2, seed=4, truncation=1.0) for sampler in samplers]
    assert frames[0].shape == (2, 5, 28, 28, 1) and frames[0].dtype == np.float32
    for other in frames[1:]:
        np.testing.assert_allclose(other, frames[0], atol=1e-5)
    # Row i keeps noise i: the first frame is digit 3 as the sampler draws it, the last digit 8.
    np.testing.assert_allclose(frames[0][:, 0], samplers[0]([3, 3], seed=4, truncation=1.0), atol=1e-6)
    noise = sample_noise(2, LATENT_DIM, seed=4, truncation=1.0)
    np.testing.assert_allclose(frames[0][:, -1], samplers[0].from_noise([8, 8], noise), atol=1e-6)
    assert np.abs(frames[0][:, 2] - frames[0][:, 0]).max() > 1e-3  # the middle differs from both ends


def test_interpolation_rejects_bad_arguments_and_models_without_a_condition_input():
    sampler = fake_sampler()
    with pytest.raises(ValueError, match=r"class indices in 0..9. Received: digits\[1\]=11"):
        sampler.interpolate(3, 11, frames=4, count=1)
    with pytest.raises(ValueError, match="frames >= 2 and count >= 1. Received: frames=1"):
        sampler.interpolate(3, 8, frames=1, count=1)
    with pytest.raises(ValueError, match="no condition input"):
        sampler.interpolate(3, 8, frames=4, count=1)
    with_condition = DigitSampler(sampler.forward, LATENT_DIM, (28, 28, 1), 10, on_condition=sampler.forward)
    with pytest.raises(ValueError, match="Received: truncation=0"):  # no value lies within +-0: never drawn
        with_condition.interpolate(3, 8, frames=4, count=1, truncation=0)
