"""tf.distribute and mixed precision, on the two logical CPU devices conftest sets up."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import tiny_config

from cgan_keras import distribute, training
from cgan_keras.export import export_generator, load_generator
from cgan_keras.sampler import DigitSampler

TINY = tiny_config(seed=3)


def one_step(strategy, images, labels, config=TINY):
    keras.utils.set_random_seed(0)
    gan = training.build_gan(config, strategy)
    logs = gan.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0).history
    return gan, {name: values[0] for name, values in logs.items()}


# R1 penalizes every 4th real digit, and the averaged generator's BatchNorm statistics come from every 4th fake:
# the same digits either way. Lazy R1 (due at the first step) reuses each replica's forward pass.
@pytest.mark.parametrize("r1", [dict(r1_gamma=0.0), dict(r1_gamma=1.0), dict(r1_gamma=1.0, r1_every=1, r1_interval=2)])
def test_two_replicas_take_the_same_step_as_one_device(digits, r1):
    images, labels = digits[0][:16], digits[1][:16]
    config = dataclasses.replace(TINY, **r1)
    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    assert mirrored.num_replicas_in_sync == 2
    single, single_logs = one_step(None, images, labels, config)
    replicated, replicated_logs = one_step(mirrored, images, labels, config)
    for network in ("generator", "discriminator", "ema_generator"):
        for expected, actual in zip(
            getattr(single, network).weights, getattr(replicated, network).weights, strict=True
        ):
            np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=2e-5, err_msg=actual.path)
    for name in ("d_loss", "g_loss"):  # the true loss, not loss / replicas
        np.testing.assert_allclose(replicated_logs[name], single_logs[name], rtol=1e-4)


def test_replicas_generate_different_fakes():
    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    keras.utils.set_random_seed(0)
    gan = training.build_gan(TINY, mirrored)
    per_replica = mirrored.run(lambda: gan._fakes_and_targets(tf.zeros((4, 28, 28, 1)), gan.seed_generator)[0])
    first, second = (tensor.numpy() for tensor in mirrored.experimental_local_results(per_replica))
    assert first.shape == (4, TINY.latent_dim) and not np.allclose(first, second)


def test_bfloat16_training_exports_a_float32_generator(tmp_path, digits):
    config = tiny_config(seed=3, mixed_precision="on")
    gan = training.build_gan(config)
    assert gan.generator.dtype_policy.name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for everything else
    history = gan.fit(*digits, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    export_generator(gan, tmp_path / "generator")
    serve, latent_dim, *_ = load_generator(tmp_path / "generator")
    images = serve(digit=tf.constant([1, 2]), noise=tf.zeros([2, latent_dim]))["images"]
    assert images.dtype == tf.float32 and images.shape == (2, 28, 28, 1)


def test_generate_under_a_mirrored_strategy_returns_one_image_per_digit():
    gan = training.build_gan(TINY, distribute.make_strategy("mirrored", cpu_replicas=2))
    assert DigitSampler.from_gan(gan)(range(9), seed=0).shape == (9, 28, 28, 1)


AMD_ZEN3_FLAGS = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
SAPPHIRE_RAPIDS_FLAGS = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert not distribute.native_bfloat16(AMD_ZEN3_FLAGS, {})
    assert distribute.native_bfloat16(SAPPHIRE_RAPIDS_FLAGS, {})
    assert distribute.native_bfloat16("flags\t: avx2 avx512_bf16\n", {})
    assert not distribute.native_bfloat16("model name\t: avx512_bf16 in a name is not a flag\n", {})


def test_mixed_precision_settings_map_to_policies():
    policy = distribute.mixed_precision_policy
    assert [policy("auto", gpu=True), policy("on", gpu=True), policy("off", gpu=True)] == [
        "mixed_float16", "mixed_float16", "float32"
    ]  # fmt: skip
    # On CPUs, auto means bfloat16 only where the CPU computes in it natively.
    assert [policy("auto", gpu=False, bfloat16_cpu=True), policy("auto", gpu=False, bfloat16_cpu=False)] == [
        "mixed_bfloat16", "float32"
    ]  # fmt: skip
    assert [policy("on", gpu=False, bfloat16_cpu=False), policy("off", gpu=False, bfloat16_cpu=True)] == [
        "mixed_bfloat16", "float32"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "environ, bfloat16, amx",
    [
        ({}, True, True),
        ({"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "ALL"}, True, True),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False, False),  # TensorFlow emulates bfloat16 without oneDNN
        ({"TF_ENABLE_ONEDNN_OPTS": "False"}, False, False),
        ({"ONEDNN_MAX_CPU_ISA": "avx2"}, False, False),  # oneDNN caps are case-insensitive
        ({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, False, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX10_2_512"}, True, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "DNNL_MAX_CPU_ISA": "AVX2"}, True, True),  # oneDNN's name wins
        ({"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "AVX2"}, False, False),  # an empty one is unset
        ({"TF_ENABLE_ONEDNN_OPTS": "no"}, True, True),  # TensorFlow ignores it and keeps oneDNN on
    ],
)
def test_bfloat16_and_amx_count_only_where_tensorflows_onednn_may_use_them(environ, bfloat16, amx):
    assert distribute.native_bfloat16(SAPPHIRE_RAPIDS_FLAGS, environ) is bfloat16
    usable = distribute.usable_cpu_flags(SAPPHIRE_RAPIDS_FLAGS, environ)
    assert ("amx_bf16" in usable, "amx_tile" in usable, "avx2" in usable) == (amx, amx, True)


def test_auto_precision_is_float32_on_a_bfloat16_cpu_whose_onednn_is_off(monkeypatch, onednn_defaults):
    flags = distribute.cpu_flags(SAPPHIRE_RAPIDS_FLAGS)
    monkeypatch.setattr(distribute, "cpu_flags", lambda cpuinfo=None: set(flags))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert distribute.mixed_precision_policy("auto", gpu=False) == "mixed_bfloat16"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert distribute.mixed_precision_policy("auto", gpu=False) == "float32"
    assert distribute.mixed_precision_policy("on", gpu=False) == "mixed_bfloat16"  # forced stays forced


ZEN4_FLAGS = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n"  # TensorFlow's oneDNN on by default


@pytest.mark.parametrize(
    "cpuinfo, environ, unavailable",
    [
        (ZEN4_FLAGS, {}, False),
        (ZEN4_FLAGS, {"ONEDNN_MAX_CPU_ISA": "avx2"}, True),  # aborted machine A
        (ZEN4_FLAGS, {"DNNL_MAX_CPU_ISA": "AVX2_VNNI"}, True),
        (ZEN4_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),  # bfloat16 emulated by oneDNN: slow, runs
        (ZEN4_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "0"}, False),  # Eigen emulates it
        (AMD_ZEN3_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # oneDNN off by TensorFlow's default there
        (AMD_ZEN3_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "true"}, True),
    ],
)
def test_bfloat16_is_unavailable_only_where_onednn_runs_without_its_kernels(cpuinfo, environ, unavailable):
    reason = distribute.bfloat16_unavailable(cpuinfo, environ)
    assert (reason is not None) is unavailable
    if unavailable:
        assert next(name for name in environ if name.endswith("MAX_CPU_ISA")) in reason


def test_forced_bfloat16_where_it_cannot_run_is_a_clear_error(monkeypatch, onednn_defaults):
    flags = distribute.cpu_flags(ZEN4_FLAGS)
    monkeypatch.setattr(distribute, "cpu_flags", lambda cpuinfo=None: set(flags))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA=AVX2 caps TensorFlow's oneDNN below AVX512_CORE"):
        distribute.mixed_precision_policy("on", gpu=False)
    assert distribute.mixed_precision_policy("auto", gpu=False) == "float32"
    assert distribute.mixed_precision_policy("on", gpu=True) == "mixed_float16"
