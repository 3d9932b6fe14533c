import keras
import numpy as np
import pytest

from cgan_keras import models


@pytest.mark.parametrize(
    "filters, batch_norm_scale", [((8, 4), True), ((384, 192, 96), False)], ids=["default", "seed"]
)
def test_generator_maps_noise_and_digit_to_an_image_in_tanh_range(filters, batch_norm_scale):
    generator = models.build_generator(latent_dim=6, filters=filters, batch_norm_scale=batch_norm_scale)
    noise = np.random.default_rng(0).standard_normal((5, 6)).astype("float32") * 10
    images = generator({"digit": np.arange(5, dtype="int32"), "noise": noise}, training=False)
    assert images.shape == (5, 28, 28, 1)
    assert images.dtype == "float32"
    assert np.all(np.abs(images) <= 1)
    assert [layer.__class__.__name__ for layer in generator.layers].count("Conv2DTranspose") == len(filters) + 1


def test_generator_output_depends_on_the_digit():
    generator = models.build_generator(latent_dim=6, filters=(8, 4))
    noise = np.ones((2, 6), "float32")
    images = np.asarray(generator({"digit": np.array([3, 7], "int32"), "noise": noise}, training=False))
    assert not np.allclose(images[0], images[1])


@pytest.mark.parametrize(
    "build", [models.build_discriminator, models.build_seed_discriminator], ids=["default", "seed"]
)
def test_discriminator_sees_the_image_with_the_broadcast_digit_and_outputs_one_logit(build):
    discriminator = build()
    digit_map = discriminator.get_layer("image_and_digit")
    assert tuple(digit_map.output.shape) == (None, 28, 28, 11)
    image = np.zeros((3, 28, 28, 1), "float32")
    logits = np.asarray(discriminator({"image": image, "digit": np.array([0, 5, 9], "int32")}, training=False))
    assert logits.shape == (3, 1)
    assert len(set(np.round(logits[:, 0], 6))) == 3  # the digit alone changes the verdict


def test_generator_rejects_filters_that_do_not_fit_the_image():
    with pytest.raises(ValueError, match="Received: image_shape=.*filters="):
        models.build_generator(latent_dim=4, filters=(8, 8, 8, 8, 8))


def test_the_condition_input_shares_the_generators_weights_and_matches_it_on_one_hot_rows(tmp_path):
    generator = models.build_generator(latent_dim=6, filters=(8, 4))
    on_condition = models.with_condition_input(generator)
    assert len(on_condition.weights) == len(generator.weights)
    assert all(a is b for a, b in zip(on_condition.weights, generator.weights, strict=True))
    digits = np.array([3, 7], "int32")
    noise = np.random.default_rng(1).standard_normal((2, 6)).astype("float32")
    from_digits = np.asarray(generator({"digit": digits, "noise": noise}, training=False))
    one_hot = np.eye(10, dtype="float32")[digits]
    np.testing.assert_allclose(np.asarray(on_condition([one_hot, noise], training=False)), from_digits, atol=1e-6)
    halfway = np.asarray(on_condition([one_hot.mean(0, keepdims=True).repeat(2, 0), noise], training=False))
    assert not np.allclose(halfway, from_digits, atol=1e-3)  # a weighted one-hot is a condition of its own
    generator.save(tmp_path / "generator.keras")  # the generator's own graph is untouched: it still saves
    reloaded = keras.models.load_model(tmp_path / "generator.keras")
    np.testing.assert_allclose(reloaded({"digit": digits, "noise": noise}, training=False), from_digits, atol=1e-6)


def test_the_condition_input_needs_a_generator_that_one_hot_encodes_its_digit():
    with pytest.raises(ValueError, match="`digit_one_hot` layer. Received: 'discriminator'"):
        models.with_condition_input(models.build_discriminator())  # one-hot encodes, but has no noise
