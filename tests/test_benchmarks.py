"""The benchmark scripts' own arithmetic (their timings are never asserted)."""

import pytest
from support import tiny_gan

from benchmarks import common
from benchmarks.train_speed import ratios_to_fastest, step_flops, step_seconds_after_warmup


def test_ratios_to_fastest_pair_rows_of_the_same_round():
    # Round 2 runs 2x slower throughout: the paired ratios do not see it.
    results = {(64, "fit"): [(0.05,), (0.10,)], (64, "train.py"): [(0.055,), (0.11,)], (32, "fit"): [(1.0,)]}
    ratios = ratios_to_fastest(results, 64, ["fit", "train.py", "xla"])
    assert ratios["fit"] == [1.0, 1.0]
    assert ratios["train.py"] == pytest.approx([1.1, 1.1])
    assert "xla" not in ratios  # skipped at this batch size


def test_ratios_to_fastest_use_only_rounds_every_row_has():
    results = {(64, "a"): [(2.0,), (1.0,)], (64, "b"): [(1.0,)]}
    assert ratios_to_fastest(results, 64, ["a", "b"]) == {"a": [2.0], "b": [1.0]}


def test_step_seconds_after_warmup_give_the_mean_and_the_median_of_the_timed_steps():
    # Steps end at these times; the first two are the warm-up, so the timed steps take 1, 0.5, 0.5 and 2 s.
    mean, median = step_seconds_after_warmup([0.0, 1.0, 2.0, 2.5, 3.0, 5.0], warmup_steps=2)
    assert mean == pytest.approx(1.0)
    assert median == pytest.approx(0.75)


def test_r1_flops_follow_its_interval_and_count_no_forward_pass_of_their_own_on_every_digit():
    def r1_flops(**r1):
        return step_flops(tiny_gan(r1_gamma=1.0, **r1), 16)["R1 penalty"]

    on_every_4th_digit = r1_flops(r1_every=4)
    assert r1_flops(r1_every=4, r1_interval=4) == pytest.approx(on_every_4th_digit / 4)
    forward = common.forward_flops(tiny_gan().discriminator)
    assert r1_flops(r1_every=1) == pytest.approx(4 * on_every_4th_digit - 3 * forward)
