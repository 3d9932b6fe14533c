import dataclasses
import json
import tempfile

import pytest
import tensorflow as tf
from support import tiny_config, tiny_gan

from cgan_keras import speed, timing_process, training
from cgan_keras.config import TrainConfig
from cgan_keras.data import make_dataset

TINY = tiny_config(steps=5000, log_every=100)


def fake_timer(xla_seconds, plain_seconds):
    calls = []

    def time_both(policy="float32"):
        calls.append(policy)
        return xla_seconds, plain_seconds

    return time_both, calls


def never_timed(policy="float32"):
    raise AssertionError("timed a setting that was forced or reused")


@pytest.mark.parametrize("xla_seconds, plain_seconds, expected", [(0.154, 0.196, True), (0.094, 0.070, False)])
def test_auto_keeps_the_faster_step(xla_seconds, plain_seconds, expected):
    time_both, calls = fake_timer(xla_seconds, plain_seconds)
    assert speed.choose_jit_compile("auto", time_both) == (expected, xla_seconds, plain_seconds, "measured")
    assert len(calls) == 1


@pytest.mark.parametrize("setting, expected", [("on", True), ("off", False)])
def test_a_forced_setting_is_obeyed_without_timing(setting, expected):
    assert speed.choose_jit_compile(setting, never_timed)[0] is expected
    gan = training.build_gan(dataclasses.replace(TINY, jit_compile=setting))
    assert gan.jit_compile is expected


def test_auto_does_not_time_a_short_run_and_means_off():
    choice = speed.choose(dataclasses.replace(TINY, steps=200), never_timed)
    assert not choice.jit_compile and choice.xla_seconds is None
    assert f"runs of {timing_process.MEASURE_MIN_STEPS:,} steps or more" in choice.summary()


def test_xla_that_fails_to_compile_falls_back_to_the_plain_step():
    def time_both():
        raise timing_process.TimingFailed("UnimplementedError")

    assert speed.choose_jit_compile("auto", time_both) == (False, None, None, "XLA failed here: UnimplementedError")


def test_a_plain_step_that_fails_is_not_reported_as_xla_failing():
    def time_both():
        raise tf.errors.ResourceExhaustedError(None, None, "out of memory in the plain step")

    with pytest.raises(tf.errors.ResourceExhaustedError, match="plain step"):
        speed.choose_jit_compile("auto", time_both)


def test_on_a_gpu_an_xla_step_that_fails_is_a_timing_failure_and_the_plain_step_is_not_timed(monkeypatch, digits):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["a GPU"] if kind == "GPU" else [])
    timed = []

    def time_model_steps(config, images, labels, strategy, jit_compile, policy):
        timed.append(jit_compile)
        raise tf.errors.UnimplementedError(None, None, "no XLA kernel for an op")

    monkeypatch.setattr(training, "time_model_steps", time_model_steps)
    with pytest.raises(timing_process.TimingFailed, match="UnimplementedError"):
        training._time_both(tiny_config(), *digits, None, None, "float32")
    assert timed == [True]


def test_a_timing_process_that_fails_says_why_and_the_run_trains_without_xla():
    # The child builds its model with a policy Keras does not know.
    child = timing_process.TimingProcess(tiny_config(), "no_such_policy", 0, warmup_steps=1, timed_steps=2)
    with pytest.raises(timing_process.TimingFailed, match="exited with code 1: ValueError: .*no_such_policy") as failed:
        child.pass_turn()  # the first turn: it never got ready
    child.close()

    def time_both():
        raise failed.value

    jit_compile, xla_seconds, _, reason = speed.choose_jit_compile("auto", time_both)
    assert (jit_compile, xla_seconds) == (False, None)
    assert reason.startswith("XLA failed here: the timing process exited with code 1: ValueError")


def test_a_timing_process_that_cannot_start_fails_as_one_that_crashed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # no directory for its files
    with pytest.raises(timing_process.TimingFailed, match="cannot start the timing process: .*No such file"):
        timing_process.TimingProcess(tiny_config())
    assert timing_process.wanted(TINY, resume=False)
    assert timing_process.start_early(TINY, resume=False) is None  # the run starts one when it times


@pytest.mark.parametrize(
    "overrides, resume, expected",
    [
        ({}, False, True),
        ({"steps": timing_process.MEASURE_MIN_STEPS - 1}, False, False),  # not timed: too short
        ({"jit_compile": "off"}, False, False),
        ({"strategy": "multiworker"}, False, False),  # there `auto` means off
        ({}, True, False),  # the recorded choice is reused
    ],
)
def test_train_py_starts_the_xla_timing_early_only_for_runs_that_time(overrides, resume, expected):
    config = dataclasses.replace(TINY, **overrides)
    assert timing_process.wanted(config, resume) is expected


def test_the_choice_and_its_figures_are_recorded_and_reused_on_resume(tmp_path):
    record = tmp_path / "speed.json"
    time_both, _ = fake_timer(0.154, 0.196)
    choice = speed.choose(TINY, time_both, record)
    assert choice.summary().startswith("XLA: 0.154 s/step vs 0.196 s/step without; using XLA. Precision: float32")
    saved = json.loads(record.read_text())
    assert saved["jit_compile"] is True and saved["xla_seconds"] == 0.154 and saved["policy"] == "float32"

    resumed = speed.choose(TINY, never_timed, record, resume=True)
    assert resumed == choice and resumed.recorded
    assert resumed.summary().endswith("as recorded in speed.json when the run started")


def test_a_config_from_before_auto_reads_its_booleans_as_on_and_off():
    config = TrainConfig(jit_compile=True, mixed_precision=False)
    assert (config.jit_compile, config.mixed_precision) == ("on", "off")
    with pytest.raises(ValueError, match="`jit_compile` must be one of .* Received: jit_compile='fast'"):
        TrainConfig(jit_compile="fast")


AMX = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX512_BF16 = "flags\t\t: avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize(
    "policy, cpuinfo, cores, expected",
    [
        ("mixed_bfloat16", AMX, 2, 1),  # where one thread per op measured faster
        ("float32", AMX, 2, 0),
        ("mixed_bfloat16", AVX512_BF16, 2, 0),  # bfloat16 without AMX: not measured
        ("mixed_bfloat16", AMX, 8, 0),
    ],
)
def test_auto_threads_are_one_only_on_small_amx_machines_in_bfloat16(
    monkeypatch, onednn_defaults, policy, cpuinfo, cores, expected
):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert speed.intra_op_threads(0, policy, cpuinfo, cores) == expected


def test_auto_threads_stay_the_default_where_onednn_may_not_use_amx(monkeypatch, onednn_defaults):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert speed.intra_op_threads(0, "mixed_bfloat16", AMX, 2) == 0
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert speed.intra_op_threads(0, "mixed_bfloat16", AMX, 2) == 1


def test_forced_threads_and_the_users_environment_win_over_auto(monkeypatch, onednn_defaults):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert speed.intra_op_threads(3, "mixed_bfloat16", AMX, 2) == 3
    assert speed.intra_op_threads(2, "float32", AVX512_BF16, 8) == 2
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    assert speed.intra_op_threads(0, "mixed_bfloat16", AMX, 2) == 0


def test_threads_cannot_change_once_tensorflow_runs_and_the_choice_reports_those_in_effect():
    tf.constant(1.0) + 1.0  # TensorFlow has started
    running = tf.config.threading.get_intra_op_parallelism_threads()
    speed.set_intra_op_threads(0)  # auto's "leave the default" changes nothing
    speed.set_intra_op_threads(running or None)
    with pytest.raises(RuntimeError, match="cannot be modified after initialization"):
        speed.set_intra_op_threads(running + 3)
    assert speed.choose(dataclasses.replace(TINY, steps=200), never_timed).intra_op_threads == running
    with pytest.raises(ValueError, match="Received: intra_op_threads=-1"):
        TrainConfig(intra_op_threads=-1)


def test_timed_steps_are_whole_periods_of_lazy_r1_in_turns(digits):
    dataset = make_dataset(*digits, batch_size=16, seed=0)

    def timed(gan, **timing):
        turns_left = []
        speed.time_steps(gan, dataset, warmup_steps=1, between_turns=turns_left.append, **timing)
        return int(gan.optimizer.iterations), turns_left

    # 4 timed steps in 2 turns, each rounded up to a period of 3; called before each turn and after the last.
    assert timed(tiny_gan(r1_every=1, r1_interval=3), timed_steps=4, turns=2) == (1 + 6, [2, 1, 0])
    # 10 steps hold 3 periods of 4: 3 turns of one period, not 5 of one each.
    assert timed(tiny_gan(r1_every=1, r1_interval=4), timed_steps=10, turns=5) == (1 + 12, [3, 2, 1, 0])
    every_step = tiny_gan()
    assert speed.time_steps(every_step, dataset, warmup_steps=1, timed_steps=4) > 0
    assert int(every_step.optimizer.iterations) == 1 + 4
    with pytest.raises(ValueError, match="needs a warm-up step"):
        speed.time_steps(every_step, dataset, warmup_steps=0, between_turns=print)
