import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import LATENT_DIM, TINY, own_generator, tiny_gan

from cgan_keras import models
from cgan_keras.config import TrainConfig
from cgan_keras.gan import ConditionalGAN, _update_discriminator, r1_penalty
from cgan_keras.losses import LinearLoss
from cgan_keras.sampler import DigitSampler


def weights_of(model):
    return [weight.numpy() for weight in model.trainable_weights]


def parameter_count(weights):
    return sum(int(np.prod(weight.shape)) for weight in weights)


def changed(before, after):
    return any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))


def test_one_train_step_updates_both_networks_and_counts_one_step(digits):
    gan = tiny_gan()
    generator_before, discriminator_before = weights_of(gan.generator), weights_of(gan.discriminator)
    logs = gan.train_on_batch(*digits, return_dict=True)
    assert changed(generator_before, weights_of(gan.generator))
    assert changed(discriminator_before, weights_of(gan.discriminator))
    assert int(gan.optimizer.iterations) == 1  # the generator's optimizer counts steps
    assert int(gan.discriminator_optimizer.iterations) == 2  # fake batch, then real batch
    assert set(logs) == {"loss", "d_loss", "g_loss", "d_real_accuracy", "d_fake_accuracy"}
    assert all(np.isfinite(value) for value in logs.values())


def test_generator_update_goes_through_the_discriminator_with_flipped_labels(digits):
    gan = tiny_gan()
    gan.generator_optimizer.learning_rate.assign(0.05)
    gan.discriminator_optimizer.learning_rate.assign(0.0)
    digit = tf.constant(np.repeat(np.arange(10, dtype="int32"), 20))
    noise = tf.random.stateless_normal((200, LATENT_DIM), seed=(1, 2))

    def fooled():
        fakes = gan.generator({"digit": digit, "noise": noise}, training=False)
        return float(np.mean(gan.discriminator({"image": fakes, "digit": digit}, training=False)))

    before = fooled()
    for _ in range(5):
        gan.train_on_batch(*digits)
    assert fooled() > before  # the generator learned to make the frozen critic say "real"


def test_compile_defaults_to_the_recipes_adam_for_both_networks():
    gan, recipe = tiny_gan(), TrainConfig()
    for optimizer, learning_rate in [
        (gan.generator_optimizer, recipe.generator_learning_rate),
        (gan.discriminator_optimizer, recipe.discriminator_learning_rate),
    ]:
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert (optimizer.beta_1, optimizer.beta_2) == (recipe.beta_1, recipe.beta_2)
        np.testing.assert_allclose(float(optimizer.learning_rate), learning_rate)
    assert (gan.r1_gamma, gan.r1_every) == (recipe.r1_gamma, recipe.r1_every)


def test_the_hinge_gan_trains_the_generator_on_the_raw_logit_other_losses_on_themselves():
    hinge = tiny_gan()  # the default loss is the hinge
    assert isinstance(hinge.loss_fn, keras.losses.Hinge) and isinstance(hinge.generator_loss_fn, LinearLoss)
    cross_entropy = tiny_gan(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    assert cross_entropy.generator_loss_fn is cross_entropy.loss_fn


def test_fit_accepts_int_and_one_hot_labels_and_datasets(digits):
    images, labels = digits
    one_hot = keras.utils.to_categorical(labels, 10)  # float64 in Keras 3
    for x, y in [(images, labels), (images, one_hot)]:
        history = tiny_gan().fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert len(history.history["d_loss"]) == 2
    trained = []
    for layout in (labels, labels[:, None], one_hot):  # a dataset's labels as (N,), (N, 1) or one-hot: one run
        gan = tiny_gan()
        gan.fit(tf.data.Dataset.from_tensor_slices((images, layout)).batch(16), epochs=1, verbose=0)
        assert int(gan.optimizer.iterations) == 4
        trained.append(gan.get_weights())
    for weights in trained[1:]:
        for first, other in zip(trained[0], weights, strict=True):
            np.testing.assert_array_equal(other, first)


def test_each_fit_call_of_a_seeded_gan_draws_a_new_order_and_a_rerun_the_same(digits):
    class Recording(ConditionalGAN):
        def train_step(self, batch):
            seen.append(tuple(np.asarray(batch[1])))
            return super().train_step(batch)

    def two_short_fits():
        seen.clear()
        gan = Recording.from_config(tiny_gan(compile=False).get_config())  # seed 0
        gan.compile(run_eagerly=True)  # the batches as values
        for _ in range(2):  # the same order each call trained on the first 2 batches only
            gan.fit(*digits, batch_size=16, steps_per_epoch=2, epochs=1, verbose=0)
        return list(seen)

    seen = []
    batches = two_short_fits()
    assert len(set(batches)) == 4
    assert two_short_fits() == batches


def test_fit_drops_the_partial_last_batch_and_honours_steps_per_epoch(digits):
    images, labels = digits
    gan = tiny_gan()
    gan.fit(images[:50], labels[:50], batch_size=16, epochs=2, verbose=0)
    assert int(gan.optimizer.iterations) == 6  # 3 full batches per epoch; the 2 leftovers are dropped
    gan.fit(images, labels, batch_size=16, epochs=3, initial_epoch=1, steps_per_epoch=5, verbose=0)
    assert int(gan.optimizer.iterations) == 16


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((8, 32, 32, 1), "float32"), np.zeros(8, "int32"), r"images of shape \(N, 28, 28, 1\)"),
        (np.full((8, 28, 28, 1), 255.0, "float32"), np.zeros(8, "int32"), r"in \[-1, 1\]"),
        (np.zeros((8, 28, 28, 1), "float32"), np.full(8, 10), r"class indices in 0..9.*labels\[0\]=10"),
        (np.zeros((8, 28, 28, 1), "float32"), np.zeros(7, "int32"), "one label per image"),
    ],
    ids=["shape", "range", "label", "count"],
)
def test_fit_rejects_data_that_are_not_digits(images, labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_gan().fit(images, labels, batch_size=4, verbose=0)


def test_fit_rejects_a_dataset_of_the_wrong_shape():
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((8, 32, 32, 3), "float32"), np.zeros(8))).batch(4)
    with pytest.raises(ValueError, match="element_spec"):
        tiny_gan().fit(dataset, verbose=0)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.full((8, 28, 28, 1), 255, "uint8"), np.zeros(8, "int32"), r"Expected float images in \[-1, 1\]"),
        (np.zeros((8, 28, 28, 1), "float32"), np.zeros(8, "float32"), "integer class indices or one-hot labels"),
    ],
    ids=["uint8-pixels", "float-indices"],
)
def test_fit_rejects_a_dataset_of_the_wrong_dtypes(images, labels, message):
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with pytest.raises(ValueError, match=message):
        tiny_gan().fit(dataset, verbose=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(sample_weight=np.ones(32)), "weighs every digit alike and takes held-out digits as validation_data="),
        (dict(class_weight={0: 2.0}), "Received: class_weight"),
        (dict(validation_split=0.2), "Received: validation_split"),
        (dict(validation_data=(np.zeros((4, 28, 28, 1)), np.zeros(4), np.ones(4))), "validation_data weights"),
        (dict(y=None), "Expected labels `y` with the images `x`"),
    ],
)
def test_fit_refuses_arguments_it_would_ignore_or_misread(digits, arguments, message):
    images, labels = digits
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_gan().fit(images, **{"y": labels, **arguments}, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="A dataset gives its"):
        tiny_gan().fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), labels, verbose=0)


def test_evaluate_and_validation_data_report_losses_without_updating(digits):
    gan = tiny_gan()
    before = gan.get_weights()
    results = gan.evaluate(*digits, batch_size=16, return_dict=True, verbose=0)
    assert set(results) == {"loss", "d_loss", "g_loss", "d_real_accuracy", "d_fake_accuracy"}
    assert not changed(before, gan.get_weights())
    assert int(gan.optimizer.iterations) == 0
    history = gan.fit(*digits, batch_size=16, validation_data=digits, epochs=1, verbose=0)
    assert np.isfinite(history.history["val_d_loss"][0])


@pytest.mark.parametrize("disturbance", ["calls", "validation_data"])
def test_evaluating_and_sampling_between_steps_leave_the_training_as_it_was(digits, disturbance):
    def train(disturbed):
        gan = tiny_gan()
        gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
        if disturbed and disturbance == "calls":  # each drew from the steps' noise stream: other fakes after
            gan.evaluate(*digits, batch_size=16, verbose=0)
            gan.predict(np.arange(10), verbose=0)
            gan(np.arange(10))
        validation_data = digits if disturbed and disturbance == "validation_data" else None
        # Validation after epoch 2 comes before epoch 3's steps.
        gan.fit(*digits, batch_size=16, epochs=3, initial_epoch=1, validation_data=validation_data, verbose=0)
        return gan.get_weights()

    for undisturbed, disturbed in zip(train(False), train(True), strict=True):
        np.testing.assert_array_equal(disturbed, undisturbed)


def test_evaluate_scores_every_digit_whatever_the_batch_size(digits):
    images, labels = digits
    gan = tiny_gan()
    # The real digits' accuracy depends on them alone: batches of 40, 32 (and 8 more) or 7 must agree.
    accuracies = [
        gan.evaluate(images[:40], labels[:40], batch_size=size, return_dict=True, verbose=0)["d_real_accuracy"]
        for size in (40, 32, 7)
    ]
    np.testing.assert_allclose(accuracies, accuracies[0], atol=1e-6)
    assert np.isfinite(gan.evaluate(images[:10], labels[:10], return_dict=True, verbose=0)["d_loss"])  # < 32 digits


def test_calling_or_predicting_on_digits_returns_images():
    gan = tiny_gan()
    digits = np.array([1, 2, 3], "int32")
    assert tuple(gan(digits).shape) == (3, 28, 28, 1)
    assert gan.predict(keras.utils.to_categorical(digits, 10), verbose=0).shape == (3, 28, 28, 1)
    noise = np.zeros((3, LATENT_DIM), "float32")
    np.testing.assert_allclose(gan((digits, noise)), gan((digits, noise)))
    indices_in_a_column = gan.predict((digits[:, np.newaxis], noise), verbose=0)  # traced: no eager check there
    np.testing.assert_allclose(indices_in_a_column, gan.predict((digits, noise), verbose=0))
    # Out of range, a digit would one-hot to zeros and draw something that is no digit.
    with pytest.raises(ValueError, match=re.escape("Expected class indices in 0..9. Received: digits[1]=12")):
        gan(np.array([3, 12]))
    with pytest.raises(ValueError, match=re.escape("Expected one-hot rows (a single 1). Received: digits[0]=")):
        gan(np.ones((1, 10), "float32"))
    with pytest.raises(ValueError, match="Received: digits.dtype=float32"):
        gan(np.array([1.5], "float32"))


def test_the_ema_generator_averages_the_weights_and_is_what_is_sampled(digits):
    gan = tiny_gan()
    initial = weights_of(gan.generator)
    gan.fit(*digits, batch_size=16, epochs=2, verbose=0)
    raw, averaged = weights_of(gan.generator), weights_of(gan.ema_generator)
    assert changed(initial, averaged) and changed(raw, averaged)
    # After 8 steps the decay is (1 + 8) / (10 + 8) = 0.5 at most: the average sits between start and now.
    distance_to_raw = sum(np.abs(a - r).sum() for a, r in zip(averaged, raw, strict=True))
    distance_start_to_raw = sum(np.abs(i - r).sum() for i, r in zip(initial, raw, strict=True))
    assert 0 < distance_to_raw < distance_start_to_raw
    # BatchNorm's statistics are the averaged network's own: they moved from the start, and not as the raw ones did.
    initial_statistics = [
        np.zeros_like(w) if "mean" in w.path else np.ones_like(w) for w in gan.generator.non_trainable_weights
    ]
    ema_statistics = [w.numpy() for w in gan.ema_generator.non_trainable_weights]
    assert changed(initial_statistics, ema_statistics)
    assert changed([w.numpy() for w in gan.generator.non_trainable_weights], ema_statistics)
    assert gan.inference_generator is gan.ema_generator


def test_keras_counts_the_ema_copy_as_not_trainable():
    gan = tiny_gan()
    networks = (gan.generator, gan.discriminator)
    assert parameter_count(gan.trainable_weights) == sum(parameter_count(n.trainable_weights) for n in networks)
    statistics = sum(parameter_count(network.non_trainable_weights) for network in networks)
    assert parameter_count(gan.non_trainable_weights) == statistics + parameter_count(gan.ema_generator.weights)
    lines = []
    gan.summary(print_fn=lambda line, **_: lines.append(line))
    assert f"Trainable params: {parameter_count(gan.trainable_weights):,} " in "\n".join(lines)
    split = sorted(map(id, gan.trainable_variables + gan.non_trainable_variables))
    assert split == sorted(map(id, gan.variables))  # each variable exactly once
    assert list(map(id, gan.trainable_variables)) == list(map(id, gan.trainable_weights))


def test_the_state_tree_names_every_variable_once_and_restores_a_trained_gan(digits):
    # The other GAN's optimizers have other names: the tree keys them by role, and by path inside each.
    gan = tiny_gan()
    other = tiny_gan(seed=1, generator_optimizer=keras.optimizers.Adam(name="a"), discriminator_optimizer="adam")
    for model in (gan, other):
        model.fit(*digits, batch_size=16, epochs=1, verbose=0)
    tree = gan.get_state_tree()  # raised "variable path found twice" while the EMA copy shared the generator's paths
    weighted_layers = [layer.name for layer in gan.ema_generator.layers if layer.weights]
    assert list(tree["non_trainable_variables"]["ema"]) == weighted_layers
    optimizers = tree["optimizer_variables"]  # Keras: only `model.optimizer`'s
    assert list(optimizers) == ["generator_optimizer", "discriminator_optimizer"]
    assert {"iteration", "conv_0_kernel_momentum"} <= set(optimizers["discriminator_optimizer"])

    def state(model):
        optimizers = model.generator_optimizer.variables + model.discriminator_optimizer.variables
        return [variable.numpy() for variable in model.variables + optimizers]

    assert changed(state(gan), state(other))
    other.set_state_tree(tree)
    for mine, theirs in zip(state(gan), state(other), strict=True):
        np.testing.assert_array_equal(theirs, mine)
    uncompiled = tiny_gan(compile=False)
    assert uncompiled.get_state_tree()["optimizer_variables"] == {}
    uncompiled.set_state_tree(tree)  # the weights; no optimizer to restore, as in Keras
    np.testing.assert_array_equal(uncompiled.get_weights()[0], gan.get_weights()[0])
    keras_layout = {**tree, "optimizer_variables": {"adam": optimizers["generator_optimizer"]}}
    with pytest.raises(ValueError, match=r"optimizer_variables\['adam'\] does not fit this model's optimizers"):
        other.set_state_tree(keras_layout)


def test_the_state_tree_of_a_loss_scaled_gan_keeps_each_scale_apart():
    # Both LossScaleOptimizers are named loss_scale_optimizer: their variables' paths collided.
    gan, other = (ConditionalGAN(LATENT_DIM, dtype="mixed_float16", seed=seed) for seed in (0, 1))
    for model, scale in ((gan, 2.0**10), (other, 2.0**15)):
        model.compile()
        model.discriminator_optimizer.dynamic_scale.assign(scale)
    tree = gan.get_state_tree()
    assert {"loss_scale/dynamic_scale", "iteration"} <= set(tree["optimizer_variables"]["discriminator_optimizer"])
    other.set_state_tree(tree)
    assert float(other.discriminator_optimizer.dynamic_scale) == 2.0**10


def test_the_ema_statistics_stride_changes_only_the_averaged_generators_batchnorm_statistics(digits):
    all_fakes, every_4th = (tiny_gan(ema_statistics_every=every) for every in (1, 4))
    for gan in (all_fakes, every_4th):
        gan.fit(*digits, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # Training, and the averaged weights, do not see which fakes the statistics come from.
    for network in ("generator", "discriminator"):
        for a, b in zip(getattr(all_fakes, network).weights, getattr(every_4th, network).weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(weights_of(all_fakes.ema_generator), weights_of(every_4th.ema_generator), strict=True):
        np.testing.assert_array_equal(a, b)
    statistics = [[w.numpy() for w in gan.ema_generator.non_trainable_weights] for gan in (all_fakes, every_4th)]
    assert changed(*statistics)
    with pytest.raises(ValueError, match="Received: ema_statistics_every=0"):
        ConditionalGAN(latent_dim=LATENT_DIM, ema_statistics_every=0)


def test_a_dtype_policy_reaches_the_networks_the_gan_builds():
    gan = ConditionalGAN(latent_dim=LATENT_DIM, dtype="mixed_float16")
    for network in (gan.generator, gan.discriminator, gan.ema_generator):
        assert "float16" in {layer.compute_dtype for layer in network.layers}, network.name
    gan.compile()
    assert isinstance(gan.discriminator_optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.mixed_precision.global_policy().name == "float32"  # as it was


def test_a_generator_with_an_unregistered_custom_layer_gets_its_ema_copy():
    class Halve(keras.layers.Layer):  # registered nowhere: only saving needs that
        def call(self, x):
            return x * 0.5

    generator = own_generator(Halve())
    gan = ConditionalGAN(LATENT_DIM, generator=generator, discriminator=tiny_gan(compile=False).discriminator)
    assert isinstance(gan.ema_generator.layers[-2], Halve) and list(gan.ema_generator.input) == ["digit", "noise"]
    noise_batch = np.ones((2, LATENT_DIM), "float32")
    expected = generator({"digit": np.array([1, 2]), "noise": noise_batch})
    np.testing.assert_array_equal(gan((np.array([1, 2]), noise_batch)), expected)


def test_networks_that_do_not_fit_the_gan_are_refused_when_it_is_made():
    generator = models.build_generator(LATENT_DIM, filters=TINY.generator_filters)
    discriminator = models.build_discriminator(filters=TINY.discriminator_filters)
    digit, noise = keras.Input((), dtype="int32", name="digit"), keras.Input((LATENT_DIM,), name="noise")
    listed = keras.Model([digit, noise], generator({"digit": digit, "noise": noise}))
    cases = [
        # Digits 10 and 11 would one-hot to zeros: the GAN trained them without their labels.
        (
            dict(num_classes=12),
            "The generator's one-hot layer `digit_one_hot` encodes 10 digits; the GAN has num_classes=12",
        ),
        (
            dict(latent_dim=LATENT_DIM + 1),
            "The generator's `noise` input must have shape (None, 9). Received: (None, 8)",
        ),
        (dict(generator=listed), "The generator must be a functional model with dict inputs ('digit', 'noise')"),
        (
            dict(discriminator=models.build_discriminator(image_shape=(32, 32, 1), filters=TINY.discriminator_filters)),
            "The discriminator's `image` input must have shape (None, 28, 28, 1). Received: (None, 32, 32, 1)",
        ),
    ]
    for arguments, message in cases:
        settings = {"latent_dim": LATENT_DIM, "generator": generator, "discriminator": discriminator, **arguments}
        with pytest.raises(ValueError, match=re.escape(message)):
            ConditionalGAN(**settings)


def test_without_ema_the_generator_itself_is_sampled():
    gan = tiny_gan(ema_decay=0.0)
    assert gan.ema_generator is None and gan.inference_generator is gan.generator
    with pytest.raises(ValueError, match="Received: ema_decay=1"):
        ConditionalGAN(latent_dim=LATENT_DIM, ema_decay=1)
    for arguments in (dict(latent_dim=0), dict(latent_dim=8.0), dict(num_classes=0), dict(ema_statistics_every=True)):
        with pytest.raises(ValueError, match="must be a positive integer"):
            ConditionalGAN(**{"latent_dim": LATENT_DIM, **arguments})
    assert type(ConditionalGAN(latent_dim=np.int64(LATENT_DIM)).get_config()["latent_dim"]) is int  # saves as JSON
    assert type(ConditionalGAN(latent_dim=LATENT_DIM, seed=np.int64(3)).get_config()["seed"]) is int  # Keras refused it
    for seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"`seed` must be None or an integer >= 0. Received: seed={seed}"):
            ConditionalGAN(latent_dim=LATENT_DIM, seed=seed)


def test_keras_file_round_trip_keeps_images_and_optimizer_state(tmp_path, digits):
    gan = tiny_gan(r1_gamma=0.5, r1_every=np.int64(2), r1_interval=3)
    gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    gan.save(tmp_path / "gan.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compile() was not called" and no unbuilt-state warnings
        loaded = keras.models.load_model(tmp_path / "gan.keras")  # safe_mode, no custom_objects
    assert isinstance(loaded, ConditionalGAN) and isinstance(loaded.generator_loss_fn, LinearLoss)
    assert (loaded.r1_gamma, loaded.r1_every, loaded.r1_interval) == (0.5, 2, 3)
    sample = DigitSampler.from_gan(loaded)(range(10), seed=0)
    np.testing.assert_allclose(sample, DigitSampler.from_gan(gan)(range(10), seed=0), atol=1e-6)
    assert int(loaded.optimizer.iterations) == 4
    assert int(loaded.discriminator_optimizer.iterations) == 8
    for original, restored in zip(gan.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(original, restored)
    loaded.fit(*digits, batch_size=16, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 8


def test_a_saved_model_draws_the_noise_it_would_have_drawn_next(tmp_path, digits, monkeypatch):
    gan = tiny_gan()
    gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    gan.save(tmp_path / "gan.keras")
    loaded = keras.models.load_model(tmp_path / "gan.keras")
    np.testing.assert_array_equal(loaded.seed_generator.state, gan.seed_generator.state)
    assert loaded.seed_generator.state.numpy().any()  # moved on from its start

    # A file from before the state was saved still loads; its noise starts again.
    monkeypatch.setattr(ConditionalGAN, "save_own_variables", keras.Model.save_own_variables)
    gan.save(tmp_path / "old.keras")
    monkeypatch.undo()
    assert not keras.models.load_model(tmp_path / "old.keras").seed_generator.state.numpy().any()


def test_an_uncompiled_gan_saves_and_loads(tmp_path):
    tiny_gan(compile=False).save(tmp_path / "uncompiled.keras")
    loaded = keras.models.load_model(tmp_path / "uncompiled.keras")
    assert isinstance(loaded, ConditionalGAN) and not loaded.compiled
    loaded.save(tmp_path / "again.keras")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(optimizer="adam"), "takes `generator_optimizer` and `discriminator_optimizer`, and its metrics"),
        (dict(metrics=["accuracy"]), "its metrics are fixed (`model.metrics`). Received: metrics"),
        (dict(loss="hinge"), "`loss` must be a keras.losses.Loss object, e.g. keras.losses.Hinge()"),
        (dict(generator_loss=keras.losses.hinge), "`generator_loss` must be a keras.losses.Loss object"),
        (dict(loss=keras.losses.BinaryCrossentropy()), "needs from_logits=True. Received: loss=BinaryCrossentropy"),
    ],
)
def test_compile_refuses_what_it_would_ignore_or_misread(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_gan(**arguments)


def test_one_optimizer_for_both_networks_is_refused_and_a_refused_compile_changes_nothing(tmp_path):
    optimizer = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="must be two optimizers"):
        tiny_gan(generator_optimizer=optimizer, discriminator_optimizer=optimizer)
    assert tiny_gan(generator_optimizer="adam", discriminator_optimizer="adam").compiled  # a new one each
    gan = tiny_gan(compile=False)
    with pytest.raises(ValueError, match="`loss` must be a keras.losses.Loss object"):
        gan.compile(loss="hinge")
    assert not gan.compiled
    gan.save(tmp_path / "still_uncompiled.keras")


def test_a_frozen_generator_trains_the_discriminator_alone_and_keeps_its_average(digits):
    gan = tiny_gan()
    gan.generator.trainable = False
    generator, average = gan.generator.get_weights(), weights_of(gan.ema_generator)  # its BatchNorm statistics move
    discriminator = gan.discriminator.get_weights()
    gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    after = gan.generator.get_weights() + weights_of(gan.ema_generator)
    for before_fit, after_fit in zip(generator + average, after, strict=True):
        np.testing.assert_array_equal(after_fit, before_fit)
    assert changed(discriminator, gan.discriminator.get_weights())


def test_weights_round_trip_restores_both_optimizers(tmp_path, digits):
    gan = tiny_gan()
    gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    gan.save_weights(tmp_path / "gan.weights.h5")
    fresh = tiny_gan(seed=1)
    fresh.load_weights(tmp_path / "gan.weights.h5")
    for original, restored in zip(gan.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(original, restored)
    assert int(fresh.discriminator_optimizer.iterations) == 8


def test_config_round_trip_rebuilds_the_same_architecture():
    gan = tiny_gan(ema_statistics_every=2)
    clone = ConditionalGAN.from_config(gan.get_config())
    assert clone.latent_dim == gan.latent_dim and clone.image_shape == gan.image_shape
    assert clone.ema_statistics_every == 2
    assert [w.shape for w in clone.weights] == [w.shape for w in gan.weights]


def test_same_seed_gives_identical_weights_after_training(digits):
    def train():
        gan = tiny_gan(seed=7)
        gan.fit(*digits, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return gan.get_weights()

    for first, second in zip(train(), train(), strict=True):
        np.testing.assert_array_equal(first, second)


def test_mismatched_generator_is_rejected():
    with pytest.raises(ValueError, match="noise"):
        ConditionalGAN(latent_dim=16, generator=tiny_gan(compile=False).generator)


def linear_critic(weight):
    """A discriminator whose logit is `weight * sum(image)`: its R1 penalty is `784 * weight**2` per 28x28 digit."""
    image = keras.Input((28, 28, 1), name="image")
    digit = keras.Input((), dtype="int32", name="digit")
    summed = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(weight))(
        keras.layers.Flatten()(image)
    )
    # The digit joins with weight 0, so that the model takes both inputs as a discriminator does.
    unused = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", trainable=False)(
        keras.layers.CategoryEncoding(10, output_mode="one_hot")(digit)
    )
    return keras.Model({"image": image, "digit": digit}, keras.layers.Add()([summed, unused]))


def test_r1_penalty_is_the_mean_squared_gradient_norm(digits):
    images, labels = digits
    for weight in (0.5, 2.0):
        penalty = r1_penalty(linear_critic(weight), tf.constant(images[:8]), tf.constant(labels[:8], tf.int32))
        np.testing.assert_allclose(float(penalty), 784 * weight**2, rtol=1e-5)


def test_r1_shrinks_the_discriminators_gradient_on_real_digits(digits):
    images, labels = digits
    real, real_digits = tf.constant(images[:16]), tf.constant(labels[:16], tf.int32)

    def gradient_norm_after_training(r1_gamma):
        gan = tiny_gan(r1_gamma=r1_gamma, r1_every=1)
        for _ in range(10):
            gan.train_on_batch(*digits)
        with tf.GradientTape() as tape:
            tape.watch(real)
            total = tf.reduce_sum(gan.discriminator({"image": real, "digit": real_digits}))
        return float(tf.reduce_mean(tf.reduce_sum(tape.gradient(total, real) ** 2, axis=(1, 2, 3))))

    assert gradient_norm_after_training(100.0) < 0.5 * gradient_norm_after_training(0.0)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(r1_gamma=-1.0),
        dict(r1_gamma=float("nan")),
        dict(r1_gamma=float("inf")),
        dict(r1_every=0),
        dict(r1_every=2.5),
        dict(r1_every=True),
        dict(r1_interval=0),
        dict(r1_interval=2.0),
    ],
)
def test_compile_rejects_bad_r1_settings(arguments):
    with pytest.raises(ValueError, match="r1_"):
        tiny_gan().compile(**arguments)


def discriminator_after_one_update(digits, **r1):
    """The weights of `tiny_gan`'s discriminator after one SGD `_update_discriminator` on 16 real digits."""
    images, labels = digits
    discriminator = tiny_gan(compile=False).discriminator
    optimizer = keras.optimizers.SGD(0.1)
    real, targets = tf.constant(images[:16]), tf.ones((16, 1))
    _update_discriminator(discriminator, optimizer, keras.losses.Hinge(), real, tf.constant(labels[:16]), targets, **r1)
    return weights_of(discriminator)


def test_r1_on_all_digits_reusing_the_forward_pass_matches_the_penalty_computed_apart(digits):
    images, labels = digits
    discriminator = tiny_gan(compile=False).discriminator
    real, real_digits, targets = tf.constant(images[:16]), tf.constant(labels[:16]), tf.ones((16, 1))
    with tf.GradientTape() as tape:
        logits = discriminator({"image": real, "digit": real_digits}, training=True)
        loss = keras.losses.Hinge()(targets, logits) + 2.0 / 2 * r1_penalty(discriminator, real, real_digits)
    weights = discriminator.trainable_variables
    keras.optimizers.SGD(0.1).apply(tape.gradient(loss, weights), weights)
    shared = discriminator_after_one_update(digits, r1_weight=2.0, r1_every=1)
    for expected, actual in zip(weights_of(discriminator), shared, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    plain = discriminator_after_one_update(digits)
    assert changed(plain, shared)  # the penalty moved the weights


def test_lazy_r1_is_due_every_r1_interval_steps_at_r1_interval_times_the_weight():
    gan = tiny_gan(r1_gamma=0.5, r1_every=1, r1_interval=3)
    due = []
    for step in range(7):
        gan.optimizer.iterations.assign(step)
        weight, every, now = gan._r1_settings()
        due.append(bool(now))
    assert (weight, every) == (1.5, 1)
    assert due == [True, False, False, True, False, False, True]
    assert tiny_gan(r1_gamma=0.5)._r1_settings()[2] is None  # every step: no condition in the graph


LAZY_R1 = dict(r1_every=1, r1_interval=2)


def discriminator_after_a_step(digits, at_step, jit_compile=False, **r1):
    """The discriminator's weights after one traced `train_on_batch` of `tiny_gan(**r1)` at global step `at_step`."""
    gan = tiny_gan(jit_compile=jit_compile, **r1)
    gan.optimizer.iterations.assign(at_step)
    gan.train_on_batch(*digits)
    return weights_of(gan.discriminator)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_traced_step_applies_lazy_r1_at_r1_interval_times_its_weight_when_due(digits, jit_compile):
    due = discriminator_after_a_step(digits, 0, jit_compile, r1_gamma=1.0, **LAZY_R1)
    every_step = discriminator_after_a_step(digits, 0, jit_compile, r1_gamma=2.0, r1_every=1)
    for expected, actual in zip(every_step, due, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_a_traced_step_leaves_lazy_r1_out_when_not_due(digits):
    not_due = discriminator_after_a_step(digits, 1, r1_gamma=1.0, **LAZY_R1)
    for expected, actual in zip(discriminator_after_a_step(digits, 1, r1_gamma=0.0), not_due, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert changed(not_due, discriminator_after_a_step(digits, 1, r1_gamma=2.0, r1_every=1))  # R1 would move them
