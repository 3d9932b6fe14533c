"""`loop.DistributedLoop` in one process: the same steps, logs and callback calls as `fit`.

Two workers for real are in tests/test_cli.py; here a MirroredStrategy on the two
logical CPU devices conftest sets up runs the same loop in-process.
"""

import keras
import numpy as np
import tensorflow as tf
from support import tiny_config

from cgan_keras import data, distribute, loop, training
from cgan_keras.callbacks import global_step

TINY = tiny_config(seed=3)


class Recorder(keras.callbacks.Callback):
    """Records `(hook, epoch or batch, global step)` of every call, and the epoch logs."""

    def __init__(self):
        super().__init__()
        self.calls, self.epoch_logs = [], []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", None, global_step(self.model)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch, global_step(self.model)))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, global_step(self.model)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, global_step(self.model)))
        self.epoch_logs.append(logs)


def test_the_loop_trains_and_calls_back_as_fit_does(digits):
    images, labels = digits
    keras.utils.set_random_seed(0)
    reference, by_fit = training.build_gan(TINY), Recorder()
    dataset = data.make_dataset(images, labels, TINY.batch_size, seed=TINY.seed)
    reference.fit(dataset, initial_epoch=1, epochs=3, steps_per_epoch=2, callbacks=[by_fit], shuffle=False, verbose=0)

    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    keras.utils.set_random_seed(0)
    gan, by_loop = training.build_gan(TINY, mirrored), Recorder()
    distributed = loop.DistributedLoop(gan, mirrored, images, labels, TINY.batch_size, TINY.seed)
    distributed.fit(initial_epoch=1, epochs=3, steps_per_epoch=2, callbacks=[by_loop], verbose=0)

    assert by_loop.calls == by_fit.calls
    for expected, actual in zip(by_fit.epoch_logs, by_loop.epoch_logs, strict=True):
        assert actual.keys() == expected.keys()
        for name in ("d_loss", "g_loss", "d_real_accuracy"):  # epoch means over both replicas
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, err_msg=name)
    for expected, actual in zip(reference.weights, gan.weights, strict=True):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=2e-5, err_msg=actual.path)


def test_training_split_into_calls_sees_the_batches_of_one_call(digits):
    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    trained = []
    for calls in ([(0, 2)], [(0, 1), (1, 2)]):  # epochs (initial, end) of 3 steps each
        keras.utils.set_random_seed(0)
        gan = training.build_gan(TINY, mirrored)
        distributed = loop.DistributedLoop(gan, mirrored, *digits, TINY.batch_size, TINY.seed)
        for initial_epoch, epochs in calls:
            distributed.fit(initial_epoch=initial_epoch, epochs=epochs, steps_per_epoch=3, verbose=0)
        trained.append(gan)
    for whole, split in zip(trained[0].weights, trained[1].weights, strict=True):
        np.testing.assert_array_equal(split.numpy(), whole.numpy(), err_msg=split.path)


def test_a_stop_ends_every_replica_one_step_later_with_the_step_that_carries_it(digits):
    class StopAtStep3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = global_step(self.model) == 3  # asked for once, not again at step 4

    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    gan, recorder = training.build_gan(TINY, mirrored), Recorder()
    distributed = loop.DistributedLoop(gan, mirrored, *digits, 16, 0)
    distributed.fit(initial_epoch=0, epochs=5, steps_per_epoch=2, callbacks=[StopAtStep3(), recorder], verbose=0)
    assert recorder.calls[-1] == ("epoch_end", 1, 4) and distributed.stopped


def test_a_stop_asked_for_after_the_last_step_is_agreed_at_the_end(digits):
    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    gan = training.build_gan(TINY)
    distributed = loop.DistributedLoop(gan, tf.distribute.get_strategy(), *digits, 16, 0)
    distributed.fit(initial_epoch=0, epochs=1, steps_per_epoch=2, callbacks=[StopAtEpochEnd()], verbose=0)
    assert distributed.stopped and global_step(gan) == 2
    distributed.fit(initial_epoch=1, epochs=2, steps_per_epoch=2, verbose=0)
    assert not distributed.stopped and global_step(gan) == 4
    assert distributed.any_worker([False, True, False]) == [False, True, False]


def test_workers_in_sync_have_the_same_digest():
    keras.utils.set_random_seed(0)
    first = training.build_gan(TINY)
    keras.utils.set_random_seed(0)
    second = training.build_gan(TINY)
    assert loop.weights_digest(first) == loop.weights_digest(second)
    second.generator.weights[0].assign(second.generator.weights[0] + 1e-6)
    assert loop.weights_digest(first) != loop.weights_digest(second)
