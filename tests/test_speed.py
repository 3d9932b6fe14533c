import dataclasses
import json
import tempfile
import types

import pytest
import tensorflow as tf
from support import tiny_config, tiny_gan

from cgan_keras import distribute, speed, timing_process, training
from cgan_keras.config import TrainConfig
from cgan_keras.data import make_dataset

TINY = tiny_config(steps=5000, log_every=100)
# Long enough to be timed, `auto` everywhere, on a CPU that computes in bfloat16 natively (`native` fixture).
AUTO = dataclasses.replace(TINY, mixed_precision="auto")


@pytest.fixture
def native(monkeypatch):
    """Makes `distribute.native_bfloat16` answer `native.value` (default `True`) and hides any GPU."""
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    answer = types.SimpleNamespace(value=True)
    monkeypatch.setattr(distribute, "native_bfloat16", lambda *args, **kwargs: answer.value)
    return answer


def fake_timer(xla_seconds, plain_seconds, xla_failure=None):
    """A timer that answers `Timings(plain_seconds, xla_seconds, xla_failure)` and records what it was asked."""
    calls = []

    def timer(policies, xla_policy):
        calls.append((policies, xla_policy))
        return speed.Timings(plain_seconds, xla_seconds, xla_failure)

    return timer, calls


def never_timed(policies, xla_policy):
    raise AssertionError("timed a setting that was forced or reused")


@pytest.mark.parametrize("xla_seconds, plain_seconds, expected", [(0.154, 0.196, True), (0.094, 0.070, False)])
def test_auto_keeps_the_faster_step(xla_seconds, plain_seconds, expected):
    timer, calls = fake_timer(xla_seconds, {"float32": plain_seconds})
    choice = speed.choose(TINY, timer)
    assert (choice.jit_compile, choice.xla_seconds, choice.plain_seconds) == (expected, xla_seconds, plain_seconds)
    assert choice.reason == "measured" and choice.precision_seconds is None
    assert calls == [(("float32",), "float32")]


@pytest.mark.parametrize("setting, expected", [("on", True), ("off", False)])
def test_a_forced_setting_is_obeyed_without_timing(setting, expected):
    assert speed.choose(dataclasses.replace(TINY, jit_compile=setting), never_timed).jit_compile is expected
    gan = training.build_gan(dataclasses.replace(TINY, jit_compile=setting))
    assert gan.jit_compile is expected


def test_auto_does_not_time_a_short_run_and_means_off():
    choice = speed.choose(dataclasses.replace(TINY, steps=200), never_timed)
    assert not choice.jit_compile and choice.xla_seconds is None
    assert f"runs of {timing_process.MEASURE_MIN_STEPS:,} steps or more" in choice.summary()


def test_several_workers_do_not_time_and_train_untimed_auto(native):
    choice = speed.choose(AUTO, never_timed, can_time=False)
    assert (choice.jit_compile, choice.policy) == (False, "mixed_bfloat16")
    assert "does not time runs of several workers" in choice.summary()


@pytest.mark.parametrize(
    "float32_seconds, bfloat16_seconds, expected",
    [(0.063, 0.080, "float32"), (0.050, 0.041, "mixed_bfloat16")],  # as on two CPUs with avx512_bf16
)
def test_auto_precision_keeps_the_faster_policy_where_the_cpu_computes_in_bfloat16(
    native, float32_seconds, bfloat16_seconds, expected
):
    plain = {"float32": float32_seconds, "mixed_bfloat16": bfloat16_seconds}
    timer, calls = fake_timer(0.098, plain)
    choice = speed.choose(AUTO, timer)
    assert calls == [(("float32", "mixed_bfloat16"), "mixed_bfloat16")]  # XLA in the policy untimed auto gives
    assert (choice.jit_compile, choice.policy, choice.plain_seconds) == (False, expected, plain[expected])
    assert choice.precision_seconds == plain
    other = "mixed_bfloat16" if expected == "float32" else "float32"
    assert f"Precision: {expected} (timed: {plain[expected]:.3f} s/step vs {plain[other]:.3f} s/step in {other})" in (
        choice.summary()
    )


def test_xla_faster_than_both_precisions_trains_in_the_policy_it_was_timed_in(native):
    timer, _ = fake_timer(0.030, {"float32": 0.063, "mixed_bfloat16": 0.080})
    choice = speed.choose(AUTO, timer)
    assert (choice.jit_compile, choice.policy, choice.plain_seconds) == (True, "mixed_bfloat16", 0.063)


@pytest.mark.parametrize(
    "overrides, native_bfloat16, asked",
    [
        ({"jit_compile": "off"}, True, (("float32", "mixed_bfloat16"), None)),  # the precision alone
        ({}, False, (("float32",), "float32")),  # no bfloat16 here: XLA alone
        ({"mixed_precision": "on"}, True, (("mixed_bfloat16",), "mixed_bfloat16")),  # forced: XLA alone
        ({"jit_compile": "on"}, True, None),  # XLA forced: the precision is auto's untimed choice
        ({"jit_compile": "off"}, False, None),  # nothing to decide
    ],
)
def test_auto_precision_is_timed_only_where_it_decides_something(native, overrides, native_bfloat16, asked):
    native.value = native_bfloat16
    timer, calls = fake_timer(0.1, {"float32": 0.05, "mixed_bfloat16": 0.06})
    choice = speed.choose(dataclasses.replace(AUTO, **overrides), timer if asked else never_timed)
    assert calls == ([asked] if asked else [])
    if not asked:
        assert choice.policy == ("mixed_bfloat16" if native_bfloat16 else "float32")


def test_xla_that_fails_to_compile_falls_back_to_the_fastest_plain_step(native):
    timer, _ = fake_timer(None, {"float32": 0.063, "mixed_bfloat16": 0.080}, xla_failure="UnimplementedError")
    choice = speed.choose(AUTO, timer)
    assert (choice.jit_compile, choice.policy, choice.xla_seconds) == (False, "float32", None)
    assert choice.reason == "XLA failed here: UnimplementedError"


def test_a_plain_step_that_fails_is_not_reported_as_xla_failing():
    def timer(policies, xla_policy):
        raise tf.errors.ResourceExhaustedError(None, None, "out of memory in the plain step")

    with pytest.raises(tf.errors.ResourceExhaustedError, match="plain step"):
        speed.choose(TINY, timer)


def test_on_a_gpu_an_xla_step_that_fails_is_a_timing_failure_and_the_plain_step_is_not_timed(monkeypatch, digits):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["a GPU"] if kind == "GPU" else [])
    timed = []

    def time_model_steps(config, images, labels, strategy, jit_compile, policy):
        timed.append(jit_compile)
        raise tf.errors.UnimplementedError(None, None, "no XLA kernel for an op")

    monkeypatch.setattr(training, "time_model_steps", time_model_steps)
    timings = training.time_candidates(tiny_config(), *digits, None, None, ("float32",), "float32")
    assert timings == speed.Timings({}, None, "UnimplementedError")
    assert timed == [True]


def test_a_timing_process_that_fails_says_why_and_the_plain_steps_are_still_timed(digits):
    # The child builds its model with a policy Keras does not know.
    child = timing_process.TimingProcess(tiny_config(), "no_such_policy", 0, warmup_steps=1, timed_steps=2)
    timings = training.time_candidates(tiny_config(), *digits, None, child, ("float32",), "no_such_policy")
    assert timings.xla_seconds is None and child._process.returncode is not None
    assert timings.xla_failure.startswith("the timing process exited with code 1: ValueError")
    assert "no_such_policy" in timings.xla_failure
    assert list(timings.plain_seconds) == ["float32"] and timings.plain_seconds["float32"] > 0

    choice = speed.choose(TINY, lambda policies, xla_policy: timings)
    assert not choice.jit_compile and choice.reason.startswith("XLA failed here: the timing process exited")


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


def test_the_choice_and_its_figures_are_recorded_and_reused_on_resume(tmp_path, native):
    record = tmp_path / "speed.json"
    timer, _ = fake_timer(0.154, {"float32": 0.196, "mixed_bfloat16": 0.201})
    choice = speed.choose(AUTO, timer, record)
    expected = "XLA: 0.154 s/step vs 0.196 s/step without; using XLA. Precision: mixed_bfloat16"
    assert choice.summary().startswith(expected)
    saved = json.loads(record.read_text())
    assert saved["jit_compile"] is True and saved["xla_seconds"] == 0.154 and saved["policy"] == "mixed_bfloat16"
    assert saved["precision_seconds"] == {"float32": 0.196, "mixed_bfloat16": 0.201}

    resumed = speed.choose(AUTO, never_timed, record, resume=True)
    assert resumed == choice and resumed.recorded
    assert resumed.summary().endswith("as recorded in speed.json when the run started")


def test_a_record_from_before_the_precision_was_timed_is_reused(tmp_path):
    record = tmp_path / "speed.json"
    speed.choose(TINY, fake_timer(0.154, {"float32": 0.196})[0], record)
    saved = json.loads(record.read_text())
    del saved["precision_seconds"]
    record.write_text(json.dumps(saved))
    resumed = speed.choose(TINY, never_timed, record, resume=True)
    assert (resumed.jit_compile, resumed.policy, resumed.precision_seconds) == (True, "float32", None)


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

    # 4 timed steps in 2 turns, each rounded up to a period of 3 after an untimed first step; called before
    # each turn and after the last.
    assert timed(tiny_gan(r1_every=1, r1_interval=3), timed_steps=4, turns=2) == (1 + 2 * (1 + 3), [2, 1, 0])
    # 10 steps hold 3 periods of 4: 3 turns of one period, not 5 of one each.
    assert timed(tiny_gan(r1_every=1, r1_interval=4), timed_steps=10, turns=5) == (1 + 3 * (1 + 4), [3, 2, 1, 0])
    every_step = tiny_gan()
    assert speed.time_steps(every_step, dataset, warmup_steps=1, timed_steps=4) > 0
    assert int(every_step.optimizer.iterations) == 1 + 4
    with pytest.raises(ValueError, match="needs a warm-up step"):
        speed.time_steps(every_step, dataset, warmup_steps=0, between_turns=print)


def test_a_turn_taker_trains_whole_turns_in_between_anothers(digits):
    dataset = make_dataset(*digits, batch_size=16, seed=0)
    outer, inner = tiny_gan(r1_every=1, r1_interval=3), tiny_gan(r1_every=1, r1_interval=3)
    other = speed.TurnTaker(inner, dataset, warmup_steps=1, timed_steps=4, turns=2)
    order = []

    def between_turns(turns_left):
        order.append((turns_left, int(outer.optimizer.iterations), int(inner.optimizer.iterations)))
        other(turns_left)

    assert speed.time_steps(outer, dataset, warmup_steps=1, timed_steps=4, turns=2, between_turns=between_turns) > 0
    # Warmed up before the outer's first turn, then a turn after each of the outer's; on both sides a turn is
    # an untimed step and a period of 3.
    assert order == [(2, 1, 0), (1, 5, 1), (0, 9, 5)]
    assert int(inner.optimizer.iterations) == 1 + 2 * (1 + 3)
    assert len(other.step_seconds) == 2 * 3 and other.seconds() > 0


def test_each_policy_timed_is_the_policy_its_model_was_built_in(monkeypatch, digits):
    built = {}

    class RecordingTurnTaker(speed.TurnTaker):
        def __init__(self, gan, *args, **kwargs):
            super().__init__(gan, *args, **kwargs)
            built["turn taker"] = gan.generator.dtype_policy.name

    time_model_steps = training.time_model_steps

    def recording_time_model_steps(config, images, labels, strategy, jit_compile, policy, **timing):
        seconds = time_model_steps(config, images, labels, strategy, jit_compile, policy, **timing)
        built["outer"] = policy
        return seconds

    monkeypatch.setattr(speed, "TurnTaker", RecordingTurnTaker)
    monkeypatch.setattr(training, "time_model_steps", recording_time_model_steps)
    timings = training.time_candidates(tiny_config(), *digits, None, None, ("float32", "mixed_bfloat16"), None)
    assert built == {"outer": "float32", "turn taker": "mixed_bfloat16"}
    assert set(timings.plain_seconds) == {"float32", "mixed_bfloat16"} and timings.xla_seconds is None
