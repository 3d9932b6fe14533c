"""`fit` by hand for `MultiWorkerMirroredStrategy`, where Keras 3's `fit` fails (keras-team/keras#20585).

Keras' `fit` reduces each step's logs with `strategy.reduce("MEAN", v, axis=0)`,
which fails on scalars with several workers. This loop is TensorFlow's
multi-worker custom training loop around the same `ConditionalGAN.train_step`:
a `tf.function` runs `strategy.run(gan.train_step, ...)` on a dataset from
`distribute_datasets_from_function` and reduces the logs itself. It calls the
callbacks as `fit` does (`on_train_begin`, epochs of `steps_per_epoch` steps,
the epoch's mean logs at `on_epoch_end`), so the run's callbacks and the
global step numbering are the same as on one machine.

A stop asked for on one worker (a signal, a callback's `stop_training`) must
end every worker's loop at the same step, or the others would wait for it in
their next collective until TensorFlow gives up on it. So each step carries
every worker's vote, reduced with its logs inside the step (one more scalar
all-reduce, launched with theirs: no round trip of its own), and all of
them stop after the first step whose votes are not all 0: on every worker,
one step after the one at which the stop was asked for.

Example:

>>> strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG names the workers
>>> gan = training.build_gan(config, strategy)
>>> loop = DistributedLoop(gan, strategy, images, labels, batch_size=64, seed=0)
>>> loop.fit(initial_epoch=0, epochs=10, steps_per_epoch=100, callbacks=[HistoryCSV("history.csv")])
"""

import contextlib
import hashlib

import keras
import numpy as np
import tensorflow as tf

from cgan_keras import data
from cgan_keras.artifacts import first_line
from cgan_keras.callbacks import global_step

# What a collective op raises when a peer crashed, was killed or became
# unreachable: TensorFlow's coordination service stops receiving its
# heartbeats (after about 10 s) and aborts every pending collective.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)


_STOP_VOTE = "stop_vote"  # the key of the workers' stop vote among a step's logs


class WorkerLost(RuntimeError):
    """Another worker stopped or became unreachable; the message is one line."""


def is_chief(strategy=None):
    """Whether this process writes the run's artifacts: worker 0 (or the `chief` task) of a cluster, else always."""
    return (strategy or tf.distribute.get_strategy()).extended.should_checkpoint


def weights_digest(gan):
    """The first 16 hex digits of a SHA-256 over both networks' weights (the EMA generator's too).

    Workers that trained in sync hold bit-identical weights, so they print the
    same digest; reading these weights needs no other worker.
    """
    digest = hashlib.sha256()
    networks = [gan.generator, gan.discriminator] + ([gan.ema_generator] if gan.ema_generator is not None else [])
    for weight in (weight for network in networks for weight in network.weights):
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value)).tobytes())
    return digest.hexdigest()[:16]


class DistributedLoop:
    """Trains `gan` under `strategy`, each worker reading its own shard of the digits.

    Each worker streams `data.make_dataset` with the per-replica batch and keeps
    every `num_input_pipelines`-th batch, so the replicas of one step together
    see the global batch one device would (the same digits, with the same seed).

    Args:
        gan: a `ConditionalGAN` built and compiled under `strategy`.
        strategy: a `tf.distribute` strategy (made for `MultiWorkerMirroredStrategy`).
        images: float32 `(N, 28, 28, 1)` in [-1, 1].
        labels: int32 `(N,)` in 0..9.
        batch_size: the global batch, split across all replicas of all workers.
        seed: seed of the shuffle.
    """

    def __init__(self, gan, strategy, images, labels, batch_size, seed):
        self.gan = gan
        self.strategy = strategy
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self._step = tf.function(self._distributed_step)
        self._steps_of_every_replica = tf.function(self._gather_steps)
        self._mean_of_every_replica = tf.function(self._mean)
        self.stopped = False

    def _distributed_step(self, iterator, stop_vote):
        # Each replica's logs are its own epoch means; the replicas see equal
        # batches, so their mean is the global epoch mean. Metric variables are
        # never read outside a step: that read is a collective op of its own.
        def step(batch):
            # Each replica's own tensor: one object for them all would come back unwrapped, which
            # the collective reduce of several devices a worker cannot take.
            return {**self.gan.train_step(batch), _STOP_VOTE: tf.identity(stop_vote)}

        logs = self.strategy.run(step, (next(iterator),))
        return {name: self.strategy.reduce("MEAN", value, axis=None) for name, value in logs.items()}

    def _dataset(self):
        """The distributed batches from the global step reached on: every step uses one per replica."""
        steps_done = global_step(self.gan)

        def shard(context):
            per_replica = context.get_per_replica_batch_size(self.batch_size)
            skipped = steps_done * context.num_replicas_in_sync
            batches = data.make_dataset(self.images, self.labels, per_replica, seed=self.seed, skip_batches=skipped)
            return batches.shard(context.num_input_pipelines, context.input_pipeline_id)

        return self.strategy.distribute_datasets_from_function(shard)

    def _mean(self, values):
        return self.strategy.reduce("MEAN", self.strategy.run(lambda: tf.identity(values)), axis=None)

    def _gather_steps(self):
        iterations = self.gan.optimizer.iterations
        return self.strategy.gather(self.strategy.run(lambda: tf.reshape(iterations, [1])), axis=0)

    def fit(self, initial_epoch, epochs, steps_per_epoch, callbacks=(), verbose=1):
        """Runs epochs `initial_epoch..epochs-1` of `steps_per_epoch` steps, calling `callbacks` as `fit` does.

        Every worker must call it with the same arguments. Each call goes on
        with the batches from the global step reached, so the digits seen do
        not depend on how training was split into calls or resumed.

        Args:
            initial_epoch, epochs, steps_per_epoch: as `keras.Model.fit` takes them.
            callbacks: Keras callbacks; `model.stop_training` ends the epoch early.
            verbose: 0 is silent, 1 a progress bar, 2 one line per epoch.

        Afterwards `stopped` says whether a worker asked to stop, the same on every worker.

        Raises:
            WorkerLost: another worker stopped, or the workers restored different steps.
        """
        callbacks = keras.callbacks.CallbackList(
            list(callbacks),
            add_progbar=verbose != 0,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
            model=self.gan,
        )
        with self._peers_lost_as_worker_lost():
            # Only where there are workers: in one process, a gather of this
            # strategy can collide with the collective keys of another strategy's.
            if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
                self._check_workers_agree()
            self._fit(initial_epoch, epochs, steps_per_epoch, callbacks)

    def any_worker(self, flags):
        """Whether any worker raised each of `flags` (booleans, the same number on every worker); a collective.

        Raises:
            WorkerLost: another worker stopped.
        """
        with self._peers_lost_as_worker_lost():
            means = self._mean_of_every_replica(tf.constant([float(flag) for flag in flags]))
        return [bool(mean > 0) for mean in means.numpy()]

    @contextlib.contextmanager
    def _peers_lost_as_worker_lost(self):
        try:
            yield
        except _PEER_ERRORS as error:
            # Resetting the metrics is a collective op too, so any of them can be where it shows.
            raise WorkerLost(
                f"lost contact with another worker after step {global_step(self.gan)} ({first_line(error)})"
            ) from error

    def _fit(self, initial_epoch, epochs, steps_per_epoch, callbacks):
        self.gan.stop_training = self.stopped = False
        asked = False  # whether this worker asked to stop, by a signal or a callback
        iterator = iter(self._dataset())
        callbacks.on_train_begin()
        epoch_logs = None
        for epoch in range(initial_epoch, epochs):
            self.gan.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            logs = {}
            for batch in range(steps_per_epoch):
                callbacks.on_train_batch_begin(batch)
                logs = {name: float(value) for name, value in self._step(iterator, tf.constant(float(asked))).items()}
                self.stopped = logs.pop(_STOP_VOTE) > 0
                callbacks.on_train_batch_end(batch, logs)
                asked = asked or self.gan.stop_training
                if self.stopped:
                    break
            epoch_logs = dict(logs)
            callbacks.on_epoch_end(epoch, epoch_logs)
            asked = asked or self.gan.stop_training
            if self.stopped:
                break
        callbacks.on_train_end(logs=epoch_logs)
        # A stop asked for after the call's last step (its checkpoint's save included) had no step to carry it.
        (self.stopped,) = self.any_worker([asked or self.gan.stop_training or self.stopped])

    def _check_workers_agree(self):
        # A worker that could not read the chief's checkpoint would start from
        # its own step and train different weights in silence.
        steps = self._steps_of_every_replica().numpy().tolist()
        if min(steps) != max(steps):
            raise WorkerLost(
                "the workers restored different checkpoints (every worker must read the chief's --out). "
                f"Received: steps={steps}"
            )
