"""pgps_train.comparison.statistics against small tables worked out by hand.

Every expected number is a literal with its arithmetic beside it, so a test fails when the
statistic changes, not only when it crashes; every result must also survive a strict JSON
round trip (no numpy scalars, no NaN), since pgps-compare writes them out as JSON.
"""

from __future__ import annotations

import json

import pytest

from pgps_train.comparison.statistics import (
    holm,
    mode_table,
    paired_tests,
    reach_times,
    seed_spread,
    time_to_reach,
)


def run(mode, seed, dice=None, curve=None):
    return {"mode": mode, "seed": seed, "dice": dice or {}, "curve": curve or []}


def same_after_json(obj):
    """True when ``obj`` is plain JSON data: a strict round trip gives it back unchanged."""
    return json.loads(json.dumps(obj, allow_nan=False)) == obj


# --- holm ------------------------------------------------------------------------------


def test_holm_adjusts_step_down_and_keeps_order():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_skips_none_in_m_and_caps_at_one():
    # m = 2 (the None does not count): 0.02 * 2 = 0.04; 0.5 * 1 = 0.5
    assert holm([None, 0.5, 0.02]) == [None, pytest.approx(0.5), pytest.approx(0.04)]
    # 0.6 * 2 = 1.2 -> capped at 1; 0.7 * 1 = 0.7 -> running max 1
    assert holm([0.7, 0.6]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


def test_holm_rejects_a_value_that_is_not_a_p_value():
    with pytest.raises(ValueError, match=r"holm: p-value must be a number in \[0, 1\]"):
        holm([0.2, 1.5])


# --- mode_table ------------------------------------------------------------------------


def three_seed_constant():
    return [
        # liver: seed means (0.6 + 0.8) / 2 = 0.7, (0.8 + 0.8) / 2 = 0.8, (1.0 + 0.8) / 2 = 0.9
        # tumor: seed 0 = 0.5 (the None is skipped, not a zero), seed 1 = (0.2 + 0.4) / 2 = 0.3,
        #        seed 2 has no defined tumor Dice at all -> None
        run("constant", 2, {"a": {"liver": 1.0, "tumor": None},
                            "b": {"liver": 0.8, "tumor": None}}),
        run("constant", 0, {"a": {"liver": 0.6, "tumor": None}, "b": {"liver": 0.8, "tumor": 0.5}}),
        run("constant", 1, {"a": {"liver": 0.8, "tumor": 0.2}, "b": {"liver": 0.8, "tumor": 0.4}}),
    ]


def test_mode_table_mean_and_sample_std_over_seeds():
    table = mode_table(three_seed_constant() + [run("performance", 0, {"a": {"liver": 0.9}})],
                       ["liver", "tumor"])
    liver = table["constant"]["liver"]
    # mean (0.7 + 0.8 + 0.9) / 3 = 0.8; std sqrt((0.1^2 + 0 + 0.1^2) / (3 - 1)) = 0.1
    assert liver["mean"] == pytest.approx(0.8) and liver["std"] == pytest.approx(0.1)
    assert liver["n_seeds"] == 3
    assert liver["per_seed"] == pytest.approx({"0": 0.7, "1": 0.8, "2": 0.9})
    tumor = table["constant"]["tumor"]
    # defined seeds 0.5 and 0.3: mean 0.4, std sqrt((0.1^2 + 0.1^2) / 1) = sqrt(0.02)
    assert tumor["mean"] == pytest.approx(0.4) and tumor["std"] == pytest.approx(0.1414213562)
    assert tumor["n_seeds"] == 2
    assert tumor["per_seed"] == {"0": pytest.approx(0.5), "1": pytest.approx(0.3), "2": None}
    # one seed: a mean, but no spread; a class the run never scored: nothing at all
    assert table["performance"]["liver"] == {"mean": 0.9, "std": None, "n_seeds": 1,
                                             "per_seed": {"0": 0.9}}
    assert table["performance"]["tumor"] == {"mean": None, "std": None, "n_seeds": 0,
                                             "per_seed": {"0": None}}
    assert same_after_json(table)


# --- paired_tests ----------------------------------------------------------------------


def eight_case_runs():
    """Baseline liver 0.49 / 0.51 over two seeds (mean 0.50) on every case; performance
    liver 0.50 + 0.02k and 0.52 + 0.02k (mean 0.51 + 0.02k): better on all 8 cases by
    0.01, 0.03, ..., 0.15. Tumor only on cases 0-3 of the baseline, by +0.05, -0.10,
    +0.15, -0.20."""
    tumor_diff = [0.05, -0.10, 0.15, -0.20]
    runs = []
    for seed, base_liver, offset in ((0, 0.49, 0.50), (1, 0.51, 0.52)):
        base = {f"c{k}": {"liver": base_liver, "tumor": 0.5 if k < 4 else None} for k in range(8)}
        perf = {f"c{k}": {"liver": offset + 0.02 * k,
                          "tumor": 0.5 + tumor_diff[k] if k < 4 else 0.9} for k in range(8)}
        runs += [run("constant", seed, base), run("performance", seed, perf)]
    return runs


def test_paired_tests_better_on_every_case():
    tests = paired_tests(eight_case_runs(), ["liver", "tumor"])
    assert list(tests) == ["performance"]  # the baseline is not tested against itself
    liver = tests["performance"]["liver"]
    assert liver["n_cases"] == 8
    # diffs 0.01, 0.03, ..., 0.15: median (0.07 + 0.09) / 2 = 0.08, mean 0.64 / 8 = 0.08
    assert liver["median_diff"] == pytest.approx(0.08) and liver["mean_diff"] == pytest.approx(0.08)
    # no negative ranks: W = min(W+, W-) = 0; exact two-sided p = 2 / 2^8 = 0.0078125
    assert liver["statistic"] == 0.0 and liver["p"] == pytest.approx(0.0078125)
    tumor = tests["performance"]["tumor"]
    # cases 4-7 dropped (baseline None); ranks of |diff|: 1, 2, 3, 4, W+ = 1 + 3 = 4, W- = 6
    # P(W <= 4) for n = 4: {}, {1}, {2}, {3}, {4}, {1,2}, {1,3} = 7 / 16; p = 2 * 7 / 16
    assert tumor["n_cases"] == 4 and tumor["statistic"] == 4.0
    assert tumor["p"] == pytest.approx(0.875)
    assert tumor["mean_diff"] == pytest.approx(-0.025)  # (0.05 - 0.10 + 0.15 - 0.20) / 4
    # Holm over the 2 classes: 0.0078125 * 2 = 0.015625 < 0.05; 0.875 * 1 = 0.875
    assert liver["p_holm"] == pytest.approx(0.015625) and liver["significant"] is True
    assert tumor["p_holm"] == pytest.approx(0.875) and tumor["significant"] is False
    assert same_after_json(tests)


def test_paired_tests_passes_alternative_and_alpha_through():
    tests = paired_tests(eight_case_runs(), ["liver"], alternative="greater", alpha=0.001)
    liver = tests["performance"]["liver"]
    # one-sided: W+ = 1 + ... + 8 = 36 and p = 1 / 2^8 = 0.00390625 (one class: Holm = p)
    assert liver["statistic"] == 36.0 and liver["p"] == pytest.approx(0.00390625)
    assert liver["p_holm"] == pytest.approx(0.00390625) and liver["significant"] is False


def pair(base, mode, cls="liver"):
    return [run("constant", 0, {f"c{k}": {cls: v} for k, v in enumerate(base)}),
            run("efficiency", 0, {f"c{k}": {cls: v} for k, v in enumerate(mode)})]


def test_paired_tests_drops_zeros_and_sees_float_ties_as_ties():
    # diffs 0.7-0.6, 0.4-0.3, 0.3-0.4, 0.55-0.35, 0.5-0.5, 0.2-0.2 = +0.1, +0.1, -0.1, +0.2, 0, 0
    # (in floats 0.0999..98, 0.1000..03, -0.1000..03: rounding makes them one tie).
    # Zeros dropped: n = 4, ranks of |diff| 2, 2, 2, 4 -> W- = 2 (unrounded it would be 2.5).
    # Sign flips of ranks {2, 2, 2, 4}: W- <= 2 in 4 of 16, so p = 2 * 4 / 16 = 0.5
    tests = paired_tests(pair([0.6, 0.3, 0.4, 0.35, 0.5, 0.2], [0.7, 0.4, 0.3, 0.55, 0.5, 0.2]),
                         ["liver"])
    liver = tests["efficiency"]["liver"]
    assert liver["n_cases"] == 6 and liver["statistic"] == 2.0
    assert liver["p"] == pytest.approx(0.5)
    assert liver["median_diff"] == pytest.approx(0.05)  # sorted: -0.1, 0, 0, 0.1, 0.1, 0.2
    assert liver["mean_diff"] == pytest.approx(0.3 / 6)


def test_paired_tests_without_two_nonzero_differences_has_no_p():
    same = paired_tests(pair([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]), ["liver"])["efficiency"]["liver"]
    assert same == {"n_cases": 3, "median_diff": 0.0, "mean_diff": 0.0, "statistic": None,
                    "p": None, "p_holm": None, "significant": False}
    one = paired_tests(pair([0.5, 0.6, 0.7], [0.5, 0.6, 0.9]), ["liver"])["efficiency"]["liver"]
    assert one["p"] is None and one["mean_diff"] == pytest.approx(0.2 / 3)


# --- seed_spread -----------------------------------------------------------------------


CASE_BASE = [0.5, 0.6, 0.7, 0.8, 0.55, 0.65]


def spread_runs(weights):
    """3 seeds; seed s scores case k as CASE_BASE[k] + 0.05 * s * weights[k]. With weights
    averaging 1 the seed means are m, m + 0.05, m + 0.10: point std 0.05."""
    return [run("performance", s,
                {f"c{k}": {"liver": b + 0.05 * s * w}
                 for k, (b, w) in enumerate(zip(CASE_BASE, weights))})
            for s in range(3)]


def test_seed_spread_is_deterministic_given_the_seed():
    runs = spread_runs([0.0, 0.5, 1.0, 1.0, 1.5, 2.0])
    first = seed_spread(runs, ["liver"], n_boot=300, seed=7)
    assert first == seed_spread(runs, ["liver"], n_boot=300, seed=7)
    other = seed_spread(runs, ["liver"], n_boot=300, seed=8)
    assert first["performance"]["liver"]["ci"] != other["performance"]["liver"]["ci"]
    assert same_after_json(first)


def test_seed_spread_ci_brackets_the_std_and_widens_with_heterogeneous_cases():
    # Equal weights: every seed is the previous plus 0.05 on every case, so whichever cases
    # are drawn the seed means stay 0.05 apart: the CI collapses onto the std, 0.05.
    even = seed_spread(spread_runs([1.0] * 6), ["liver"], n_boot=500)["performance"]["liver"]
    assert even["std"] == pytest.approx(0.05)
    assert even["ci"] == pytest.approx([0.05, 0.05])
    # Unequal weights (mean 1, so the same point std): how far apart the seeds are depends
    # on which cases are drawn, so the CI opens up around the std.
    uneven = seed_spread(spread_runs([0.0, 0.5, 1.0, 1.0, 1.5, 2.0]), ["liver"], n_boot=500)
    lo, hi = uneven["performance"]["liver"]["ci"]
    assert uneven["performance"]["liver"]["std"] == pytest.approx(0.05)
    assert lo < 0.05 < hi
    assert hi - lo > 0.02  # 0.05 * the spread of a 6-case mean of the weights


def test_seed_spread_needs_two_seeds():
    spread = seed_spread([run("constant", 0, {"a": {"liver": 0.8}})], ["liver"], n_boot=10)
    assert spread == {"constant": {"liver": {"std": None, "ci": None}}}


# --- time_to_reach / reach_times -------------------------------------------------------


CURVE = [[0, 0.1], [10, 0.3], [20, 0.7]]


def test_time_to_reach_interpolates_between_the_points_around_the_target():
    assert time_to_reach(CURVE, 0.5) == pytest.approx(15.0)  # 10 + (0.5-0.3)/(0.7-0.3) * 10
    assert time_to_reach(CURVE, 0.7) == pytest.approx(20.0)  # reached exactly at a point
    assert time_to_reach(CURVE, 0.05) == 0.0  # the first point already reaches it
    assert time_to_reach(CURVE, 0.8) is None and time_to_reach(CURVE, None) is None
    assert time_to_reach([], 0.5) is None
    # an undefined value is skipped: 0 + (0.3 - 0.1) / (0.5 - 0.1) * 10 = 5
    assert time_to_reach([[0, 0.1], [5, None], [10, 0.5]], 0.3) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="curve is not sorted by seconds"):
        time_to_reach([[10, 0.1], [5, 0.9]], 0.5)


def test_reach_times_against_the_baselines_final_dice():
    runs = [
        run("constant", 0, curve=[[0, 0.0], [100, 0.8]]),
        run("constant", 1, curve=[[0, 0.0], [50, 0.7], [100, 0.6]]),  # peaks, then ends lower
        run("efficiency", 0, curve=[[0, 0.0], [40, 0.7], [60, 0.9]]),
        run("efficiency", 1, curve=[[0, 0.1], [30, 0.9]]),
    ]
    times = reach_times(runs)
    # target: the FINAL values, not the best ones: (0.8 + 0.6) / 2 = 0.7
    assert times["constant"]["target"] == pytest.approx(0.7)
    assert times["efficiency"]["target"] == pytest.approx(0.7)
    # constant seed 0: 0.7 / 0.8 * 100 = 87.5; seed 1 first reaches it at its 50 s peak
    assert times["constant"]["seconds"] == {"0": pytest.approx(87.5), "1": pytest.approx(50.0)}
    assert times["constant"]["mean"] == pytest.approx(68.75)  # (87.5 + 50) / 2
    # efficiency seed 0: at the 40 s point; seed 1: (0.7 - 0.1) / 0.8 * 30 = 22.5
    assert times["efficiency"]["seconds"] == {"0": pytest.approx(40.0), "1": pytest.approx(22.5)}
    assert times["efficiency"]["mean"] == pytest.approx(31.25)  # (40 + 22.5) / 2
    assert same_after_json(times)


def test_reach_times_mean_is_none_when_no_seed_reaches():
    runs = [run("constant", 0, curve=[[0, 0.2], [10, 0.9]]),
            run("efficiency", 0, curve=[[0, 0.1], [10, 0.5]])]  # target 0.9, tops out at 0.5
    assert reach_times(runs)["efficiency"] == {"target": 0.9, "seconds": {"0": None}, "mean": None}


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: mode_table([], ["liver"]), r"^runs: no runs to compare"),
    (lambda: reach_times([]), r"^runs: no runs to compare"),
    (lambda: paired_tests(eight_case_runs(), ["liver"], baseline="fixed"),
     r"^baseline mode 'fixed' is not among the runs' modes \['constant', 'performance'\]$"),
    (lambda: reach_times(eight_case_runs(), baseline="fixed"), r"^baseline mode 'fixed'"),
    (lambda: mode_table(eight_case_runs(), ["liver", "spleen"]),
     r"^class 'spleen' is in no run's dice"),
    (lambda: seed_spread(eight_case_runs(), ["spleen"]), r"^class 'spleen' is in no run's dice"),
    (lambda: mode_table([run("constant", 0, {"a": {"liver": 1.3}})], ["liver"]),
     r"Dice of case 'a', class 'liver' must be a number in \[0, 1\] or None, got 1.3$"),
    (lambda: mode_table([run("constant", 0), run("constant", 0)], ["liver"]),
     r"^run 1: a second run of mode 'constant' with seed 0$"),
])
def test_invalid_input_is_one_line_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)
