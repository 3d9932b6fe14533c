"""Where training runs: a `tf.distribute` strategy and the mixed-precision policy.

Example:

>>> strategy = make_strategy("mirrored", cpu_replicas=2)  # before any other TensorFlow work
>>> strategy.num_replicas_in_sync
2
"""

import os
from pathlib import Path

import tensorflow as tf

from cgan_keras.config import CHOICES

STRATEGIES = CHOICES["strategy"]
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ONEDNN_SETTINGS = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN's ISA caps (`ONEDNN_MAX_CPU_ISA`, its "CPU dispatcher control") that exclude the
# bfloat16 instructions (it emulates bfloat16 at AVX512_CORE and aborts at AVX2), and
# those that exclude AMX.
ISAS_WITHOUT_BFLOAT16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
ISAS_WITHOUT_AMX = ISAS_WITHOUT_BFLOAT16 | {
    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2", "AVX10_2_512"
}  # fmt: skip
# The caps below AVX512_CORE, where oneDNN has no bfloat16 kernels at all: a `mixed_bfloat16` step
# aborted machine A capped at AVX2 ("could not create a primitive descriptor for the matmul primitive").
ISAS_WITHOUT_BFLOAT16_KERNELS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI"})
# The CPU flags for which TensorFlow turns oneDNN on by default on Linux (`DefaultOneDnnPolicy` in
# tensorflow/core/util/port.cc); without them it runs Eigen's kernels unless TF_ENABLE_ONEDNN_OPTS=1.
ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})


def make_strategy(name="default", cpu_replicas=1):
    """Creates the `tf.distribute` strategy that training runs under.

    Args:
        name: `default` (one device), `mirrored` (every visible GPU, or
            `cpu_replicas` logical CPU devices where there is none) or
            `multiworker` (`MultiWorkerMirroredStrategy`, configured by the
            `TF_CONFIG` environment variable as TensorFlow documents;
            `training.run` trains under it with `loop.DistributedLoop`).
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


def mixed_precision_policy(setting="on", gpu=None, bfloat16_cpu=None):
    """The Keras dtype policy that a `--mixed-precision` setting means on this machine.

    `on`: `mixed_float16` on GPUs, `mixed_bfloat16` on CPUs. `off`: `float32`.
    `auto`: `mixed_float16` on GPUs; on CPUs, `mixed_bfloat16` where TensorFlow
    computes in bfloat16 natively (the same quality at 3,000 steps on full
    MNIST: label accuracy 98.73% vs 98.79%, FID 3.92x vs 3.96x the floor), else
    `float32`: emulated, bfloat16 was about 5x slower. Natively it was 1.1-1.5x
    faster on two CPUs and 1.3x slower on a third, so a run that times its
    steps (`speed.choose`) times it against `float32` and keeps the faster.

    Args:
        setting: `auto`, `on` or `off`.
        gpu: whether training runs on GPUs; `None` asks TensorFlow.
        bfloat16_cpu: whether TensorFlow computes in bfloat16 natively here;
            `None` asks `native_bfloat16` (`/proc/cpuinfo` and TensorFlow's
            oneDNN settings in the environment).

    Returns:
        `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.

    Raises:
        ValueError: `on` on a CPU where TensorFlow cannot compute in bfloat16 at
            all (`bfloat16_unavailable`), instead of the abort it would be.
    """
    if setting not in CHOICES["mixed_precision"]:
        raise ValueError(f"`setting` must be one of {CHOICES['mixed_precision']}. Received: setting={setting!r}")
    if gpu is None:
        gpu = bool(tf.config.list_physical_devices("GPU"))
    if setting == "auto" and not gpu:
        return "mixed_bfloat16" if (native_bfloat16() if bfloat16_cpu is None else bfloat16_cpu) else "float32"
    if setting == "off":
        return "float32"
    if gpu:
        return "mixed_float16"
    reason = bfloat16_unavailable()
    if reason:
        raise ValueError(f"`mixed_bfloat16` cannot run here: {reason}. Received: setting={setting!r}")
    return "mixed_bfloat16"


def native_bfloat16(cpuinfo=None, environ=None):
    """Whether TensorFlow computes in bfloat16 natively here: `avx512_bf16` or `amx_bf16` among `usable_cpu_flags`.

    Without either, TensorFlow emulates bfloat16 matmuls and convolutions, which
    made `mixed_bfloat16` about 5x slower than float32 on an AVX2 AMD EPYC.

    Args:
        cpuinfo: the text of `/proc/cpuinfo`; `None` reads it (no file: `False`).
        environ: the environment TensorFlow reads; `None` is `os.environ`.
    """
    return bool(usable_cpu_flags(cpuinfo, environ) & BFLOAT16_FLAGS)


def usable_cpu_flags(cpuinfo=None, environ=None):
    """`cpu_flags`, less the bfloat16 and AMX ones where TensorFlow's kernels may not use them.

    TensorFlow computes in bfloat16 natively only through oneDNN. With oneDNN
    off (`TF_ENABLE_ONEDNN_OPTS=0` or `false`, which TensorFlow's start-up note
    suggests) it emulates bfloat16, and so does oneDNN capped to an ISA without
    the bfloat16 instructions (`ONEDNN_MAX_CPU_ISA`, or the older
    `DNNL_MAX_CPU_ISA`; any case), or it fails: on machine A (`avx512_bf16`) a
    `mixed_bfloat16` step took 7.6x as long as a float32 one with oneDNN off,
    2.1x capped to `AVX512_CORE`, and aborted the process capped to `AVX2`. A
    cap to an ISA without AMX likewise leaves AMX unused.

    Args:
        cpuinfo: the text of `/proc/cpuinfo`; `None` reads it (no file: an empty set).
        environ: the environment TensorFlow and oneDNN read; `None` is `os.environ`.
    """
    environ = os.environ if environ is None else environ
    flags = cpu_flags(cpuinfo)
    _, cap = _onednn_cap(environ)
    onednn_off = _onednn_setting(environ) is False
    if onednn_off or cap in ISAS_WITHOUT_BFLOAT16:
        flags = flags - BFLOAT16_FLAGS
    if onednn_off or cap in ISAS_WITHOUT_AMX:
        flags = {flag for flag in flags if not flag.startswith("amx")}
    return flags


def bfloat16_unavailable(cpuinfo=None, environ=None):
    """Why TensorFlow cannot train in `mixed_bfloat16` on this CPU at all, or `None` where it can.

    Where TensorFlow's oneDNN is on (by its default for the CPU's flags, or
    `TF_ENABLE_ONEDNN_OPTS=1`) and capped below AVX512_CORE (`ONEDNN_MAX_CPU_ISA`
    or `DNNL_MAX_CPU_ISA`), oneDNN has no bfloat16 kernels and the first
    `mixed_bfloat16` step aborts the process. Without oneDNN, TensorFlow emulates
    bfloat16 (slowly) and it runs.

    Args:
        cpuinfo: the text of `/proc/cpuinfo`; `None` reads it.
        environ: the environment TensorFlow and oneDNN read; `None` is `os.environ`.

    Returns:
        A clause naming the setting to change, or `None`.
    """
    environ = os.environ if environ is None else environ
    variable, cap = _onednn_cap(environ)
    if cap not in ISAS_WITHOUT_BFLOAT16_KERNELS:
        return None
    onednn_on = _onednn_setting(environ)
    if onednn_on is None:
        onednn_on = bool(cpu_flags(cpuinfo) & ONEDNN_DEFAULT_FLAGS)
    if not onednn_on:
        return None
    return (
        f"{variable}={environ[variable]} caps TensorFlow's oneDNN below AVX512_CORE, where it has no bfloat16 "
        f"kernels; unset {variable}, or set TF_ENABLE_ONEDNN_OPTS=0 to have TensorFlow emulate bfloat16 (slowly)"
    )


def _onednn_cap(environ):
    """`(variable, ISA)` of oneDNN's ISA cap, upper-cased; `(None, "")` without one.

    Read as oneDNN does: `ONEDNN_MAX_CPU_ISA` first, then the older
    `DNNL_MAX_CPU_ISA`, and an empty value is no cap.
    """
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if environ.get(variable):
            return variable, environ[variable].upper()
    return None, ""


def _onednn_setting(environ):
    """`TF_ENABLE_ONEDNN_OPTS` as TensorFlow reads it: `True`, `False`, or `None` (unset or not a boolean)."""
    value = environ.get("TF_ENABLE_ONEDNN_OPTS", "").lower()
    return {"1": True, "true": True, "0": False, "false": False}.get(value)


def cpu_flags(cpuinfo=None):
    """The CPU's feature flags (e.g. `{"avx2", "amx_bf16", ...}`) from `/proc/cpuinfo`.

    Args:
        cpuinfo: the text of `/proc/cpuinfo`; `None` reads it (no file: an empty set).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags
