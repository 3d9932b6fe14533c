"""Where training runs: a `tf.distribute` strategy and the mixed-precision policy.

Example:

>>> strategy = make_strategy("mirrored", cpu_replicas=2)  # before any other TensorFlow work
>>> strategy.num_replicas_in_sync
2
"""

import tensorflow as tf

from cgan_keras.config import CHOICES

STRATEGIES = CHOICES["strategy"]


def make_strategy(name="default", cpu_replicas=1):
    """Creates the `tf.distribute` strategy that training runs under.

    Args:
        name: `default` (one device), `mirrored` (every visible GPU, or
            `cpu_replicas` logical CPU devices where there is none) or
            `multiworker` (`MultiWorkerMirroredStrategy`, configured by the
            `TF_CONFIG` environment variable as TensorFlow documents).
        cpu_replicas: logical CPU devices for `mirrored` without GPUs. They
            share the same cores: this makes the multi-replica path run and
            testable anywhere, not faster.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        RuntimeError: `cpu_replicas > 1` after TensorFlow has initialized its
            devices; call this first.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Read the configuration, not list_logical_devices(): listing starts the runtime, after which it is fixed.
    if len(tf.config.get_logical_device_configuration(cpu) or [None]) < cpu_replicas:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    devices = [device.name for device in tf.config.list_logical_devices("CPU")[:cpu_replicas]]
    return tf.distribute.MirroredStrategy(devices)


def mixed_precision_policy():
    """The mixed policy for this machine: `mixed_float16` on GPUs, `mixed_bfloat16` on CPUs."""
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
