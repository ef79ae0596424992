"""Statistics behind `pgps-compare`: do the PGPS claims hold on these runs?

The PGPS papers make three claims a comparison has to test, not just display:

- efficiency mode reaches the constant-patch Dice in less wall time (`reach_times`);
- performance mode gains Dice, most on lesion classes (`mode_table`, `paired_tests`);
- and with a lower variance across seeds (`seed_spread`).

Everything here is a pure function over plain dicts, so the CLI can feed it from JSON and
write its answers back as JSON: every returned value is a float, int, bool, str, None,
list or dict (no numpy scalars, no NaN; None wherever a number is undefined).

A *run* is ``{"mode": str, "seed": int, "dice": {case_id: {class_name: float | None}},
"curve": [[seconds, pseudo_dice], ...]}``. A None Dice (the class is absent from both the
prediction and the reference) says nothing about the model and is skipped in every mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from scipy import stats

Run = Mapping[str, Any]

_ALTERNATIVES = ("two-sided", "greater", "less")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by (m - i + 1); a running maximum keeps
    the adjusted values in the same order as the raw ones, and they are capped at 1.
    None (a test that could not be run) is passed through and does not count in m.
    """
    for p in pvalues:
        if p is not None and not (_is_number(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"holm: p-value must be a number in [0, 1] or None, got {p!r}")
    present = sorted((float(p), i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    m, running = len(present), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def mode_table(runs: Sequence[Run], classes: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per mode and class: the mean and sample std over seeds of each run's case-mean Dice.

    ``per_seed`` holds every seed's case mean (None when the class has no defined Dice in
    that run); ``n_seeds`` counts the seeds whose case mean is defined, i.e. the n behind
    ``mean`` and ``std``. ``std`` (ddof=1) is None with fewer than 2 such seeds.
    """
    by_mode = _group(runs, "dice")
    _check_classes(runs, classes)
    table: dict[str, dict[str, dict]] = {}
    for mode, seeds in by_mode.items():
        table[mode] = {}
        for cls in classes:
            per_seed = {str(s): _mean(_case_values(run, cls).values()) for s, run in seeds.items()}
            defined = [v for v in per_seed.values() if v is not None]
            table[mode][cls] = {"mean": _mean(defined), "std": _std(defined),
                                "n_seeds": len(defined), "per_seed": per_seed}
    return table


def paired_tests(runs: Sequence[Run], classes: Sequence[str], baseline: str = "constant", *,
                 alpha: float = 0.05, alternative: str = "two-sided") -> dict[str, dict[str, dict]]:
    """Per mode (other than ``baseline``) and class: a paired Wilcoxon test over cases.

    The pairs are the held-out cases: each side is the case's Dice averaged over that
    mode's seeds (a case where either side is undefined is dropped), so the test asks
    whether the mode is better *case by case*, not only on average. Differences are mode
    minus baseline; zeros are discarded (``zero_method="wilcox"``), and with fewer than 2
    non-zero differences no test is possible (p None). The p-values of one mode's classes
    are Holm-corrected together; ``significant`` is ``p_holm < alpha``.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(
            f"paired_tests: alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    if not (_is_number(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"paired_tests: alpha must be a number in (0, 1), got {alpha!r}")
    by_mode = _group(runs, "dice")
    _check_baseline(by_mode, baseline)
    _check_classes(runs, classes)
    results: dict[str, dict[str, dict]] = {}
    for mode, seeds in by_mode.items():
        if mode == baseline:
            continue
        tests = {cls: _wilcoxon(_seed_mean_by_case(seeds, cls),
                                _seed_mean_by_case(by_mode[baseline], cls), alternative)
                 for cls in classes}
        adjusted = holm([t["p"] for t in tests.values()])
        for t, p_holm in zip(tests.values(), adjusted):
            t["p_holm"] = p_holm
            t["significant"] = p_holm is not None and p_holm < alpha
        results[mode] = tests
    return results


def seed_spread(runs: Sequence[Run], classes: Sequence[str], n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, dict[str, dict]]:
    """Per mode and class: the std across seeds of the case-mean Dice, with a bootstrap CI.

    The CI is a percentile bootstrap over the held-out *cases*: each replicate draws the
    mode's cases with replacement, uses the same draw for every seed (the seeds were
    evaluated on the same cases, so resampling them independently would add spread that
    is not there), recomputes each seed's case mean and takes their std. Each mode's draws
    come from ``numpy.random.default_rng(seed)``, so the result is deterministic and does
    not change when another mode is added. ``std`` and ``ci`` are None with fewer than 2
    seeds; a replicate in which fewer than 2 seeds have a defined mean is left out.
    """
    if not (isinstance(n_boot, int) and not isinstance(n_boot, bool) and n_boot >= 1):
        raise ValueError(f"seed_spread: n_boot must be a positive int, got {n_boot!r}")
    if not (_is_number(level) and 0.0 < level < 1.0):
        raise ValueError(f"seed_spread: level must be a number in (0, 1), got {level!r}")
    by_mode = _group(runs, "dice")
    _check_classes(runs, classes)
    tail = (1.0 - level) / 2.0
    spread: dict[str, dict[str, dict]] = {}
    for mode, seeds in by_mode.items():
        cases = sorted({c for run in seeds.values() for c in run["dice"]}, key=str)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, max(len(cases), 1), size=(n_boot, len(cases)))
        spread[mode] = {}
        for cls in classes:
            dice = _dice_matrix(seeds, cases, cls)
            point = _std(m for m in _nan_means(dice) if not math.isnan(m))
            if point is None:
                spread[mode][cls] = {"std": None, "ci": None}
                continue
            boot = _nan_std_over_seeds(_nan_means(dice[:, draws]))
            boot = boot[~np.isnan(boot)]
            ci = [float(q) for q in np.quantile(boot, [tail, 1.0 - tail])] if boot.size else None
            spread[mode][cls] = {"std": point, "ci": ci}
    return spread


def time_to_reach(curve: Sequence[Sequence[float | None]], target: float | None) -> float | None:
    """The wall time at which ``curve`` first reaches ``target`` (value >= target).

    Between the last point below the target and the first at or above it the curve is
    taken as a straight line, so coarse validation intervals do not round every reach
    time up to the next validation. A first point already at the target is its own time.
    None when the target is None or never reached; points with an undefined (None)
    value are skipped.
    """
    points = _curve_points(curve)
    if target is None:
        return None
    if not _is_number(target):
        raise ValueError(f"time_to_reach: target must be a number or None, got {target!r}")
    previous = None
    for t, v in points:
        if v is None:
            continue
        if v >= target:
            if previous is None:
                return t
            t0, v0 = previous  # v0 < target <= v, so v - v0 > 0
            return t0 + (target - v0) / (v - v0) * (t - t0)
        previous = (t, v)
    return None


def reach_times(runs: Sequence[Run], baseline: str = "constant") -> dict[str, dict]:
    """Per mode: how long each seed took to reach the baseline's final pseudo-Dice.

    The target is the mean over the baseline's seeds of each curve's final defined value
    (the Dice the constant-patch run ends with). Every mode is timed against it, the
    baseline included (its own seeds may or may not reach the mean). ``mean`` averages
    the seeds that reached the target; it is None when none did.
    """
    by_mode = _group(runs, "curve")
    _check_baseline(by_mode, baseline)
    finals = [_final_value(run["curve"]) for run in by_mode[baseline].values()]
    target = _mean(v for v in finals if v is not None)
    out: dict[str, dict] = {}
    for mode, seeds in by_mode.items():
        seconds = {str(s): time_to_reach(run["curve"], target) for s, run in seeds.items()}
        out[mode] = {"target": target, "seconds": seconds,
                     "mean": _mean(v for v in seconds.values() if v is not None)}
    return out


# --- helpers -------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _std(values) -> float | None:
    values = list(values)
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _group(runs: Sequence[Run], field: str) -> dict[str, dict[int, Run]]:
    """Runs by mode, then by seed (ascending), after checking the fields used here."""
    if not isinstance(runs, Sequence) or isinstance(runs, str) or not runs:
        raise ValueError("runs: no runs to compare (need at least one run dict)")
    by_mode: dict[str, dict[int, Run]] = {}
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise ValueError(f"run {i}: must be a dict, got {type(run).__name__}")
        mode, seed = run.get("mode"), run.get("seed")
        if not isinstance(mode, str) or not mode:
            raise ValueError(f"run {i}: 'mode' must be a non-empty string, got {mode!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"run {i} ({mode}): 'seed' must be an int, got {seed!r}")
        if seed in by_mode.get(mode, {}):
            raise ValueError(f"run {i}: a second run of mode {mode!r} with seed {seed}")
        if field == "dice":
            _check_dice(run.get("dice"), f"run {i} ({mode}, seed {seed})")
        else:
            _curve_points(run.get("curve"), f"run {i} ({mode}, seed {seed})")
        by_mode.setdefault(mode, {})[seed] = run
    return {mode: dict(sorted(seeds.items())) for mode, seeds in by_mode.items()}


def _check_dice(dice: object, where: str) -> None:
    if not isinstance(dice, Mapping):
        raise ValueError(f"{where}: 'dice' must be a dict of case -> {{class: Dice}}, "
                         f"got {type(dice).__name__}")
    for case, per_class in dice.items():
        if not isinstance(per_class, Mapping):
            raise ValueError(f"{where}: dice of case {case!r} must be a dict of class -> Dice")
        for cls, v in per_class.items():
            if v is not None and not (_is_number(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{where}: Dice of case {case!r}, class {cls!r} must be a "
                                 f"number in [0, 1] or None, got {v!r}")


def _check_classes(runs: Sequence[Run], classes: Sequence[str]) -> None:
    if isinstance(classes, str) or not classes:
        raise ValueError(f"classes: need a non-empty list of class names, got {classes!r}")
    seen = {cls for run in runs for per_class in run["dice"].values() for cls in per_class}
    for cls in classes:
        if cls not in seen:
            raise ValueError(
                f"class {cls!r} is in no run's dice (classes seen: {sorted(seen, key=str)})")


def _check_baseline(by_mode: Mapping[str, Any], baseline: str) -> None:
    if baseline not in by_mode:
        raise ValueError(
            f"baseline mode {baseline!r} is not among the runs' modes {sorted(by_mode)}")


def _case_values(run: Run, cls: str) -> dict[str, float]:
    """The run's defined Dice of ``cls`` by case."""
    return {c: float(pc[cls]) for c, pc in run["dice"].items() if pc.get(cls) is not None}


def _seed_mean_by_case(seeds: Mapping[int, Run], cls: str) -> dict[str, float]:
    """Each case's Dice of ``cls`` averaged over the seeds where it is defined."""
    values: dict[str, list[float]] = {}
    for run in seeds.values():
        for case, v in _case_values(run, cls).items():
            values.setdefault(case, []).append(v)
    return {case: float(np.mean(vs)) for case, vs in values.items()}


def _wilcoxon(mode: Mapping[str, float], base: Mapping[str, float], alternative: str) -> dict:
    cases = sorted(set(mode) & set(base), key=str)
    # Dice are averages of a few values: 0.7 - 0.6 and 0.4 - 0.3 differ in the last bits.
    # Rounding restores the ties and zeros the rank test must see as ties and zeros.
    diffs = np.round([mode[c] - base[c] for c in cases], 12)
    result = {"n_cases": len(cases), "median_diff": None, "mean_diff": None,
              "statistic": None, "p": None}
    if len(cases):
        result["median_diff"] = float(np.median(diffs))
        result["mean_diff"] = float(np.mean(diffs))
    if np.count_nonzero(diffs) >= 2:
        test = stats.wilcoxon(diffs, zero_method="wilcox", alternative=alternative)
        statistic, p = float(test.statistic), float(test.pvalue)
        result["statistic"] = statistic if math.isfinite(statistic) else None
        result["p"] = p if math.isfinite(p) else None
    return result


def _dice_matrix(seeds: Mapping[int, Run], cases: Sequence[str], cls: str) -> np.ndarray:
    """seeds x cases Dice of ``cls``; NaN where it is undefined or the case is missing."""
    rows = [[run["dice"].get(c, {}).get(cls) for c in cases] for run in seeds.values()]
    return np.array([[np.nan if v is None else v for v in row] for row in rows],
                    dtype=float).reshape(len(seeds), len(cases))


def _nan_means(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where a row has no value (no warning)."""
    valid = ~np.isnan(x)
    counts = valid.sum(axis=-1)
    sums = np.where(valid, x, 0.0).sum(axis=-1)
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def _nan_std_over_seeds(means: np.ndarray) -> np.ndarray:
    """Sample std over axis 0 (seeds) ignoring NaN; NaN where fewer than 2 are defined."""
    valid = ~np.isnan(means)
    k = valid.sum(axis=0)
    centre = np.divide(np.where(valid, means, 0.0).sum(axis=0), k,
                       out=np.zeros(k.shape), where=k > 0)
    squares = np.where(valid, (means - centre) ** 2, 0.0).sum(axis=0)
    var = np.divide(squares, k - 1, out=np.full(k.shape, np.nan), where=k >= 2)
    return np.sqrt(var)


def _curve_points(curve: object, where: str = "curve") -> list[tuple[float, float | None]]:
    """``curve`` as (seconds, value) pairs, checked: numbers, seconds non-decreasing."""
    if not isinstance(curve, Sequence) or isinstance(curve, str):
        raise ValueError(
            f"{where}: 'curve' must be a list of [seconds, value], got {type(curve).__name__}")
    points: list[tuple[float, float | None]] = []
    for point in curve:
        if not (isinstance(point, Sequence) and len(point) == 2 and _is_number(point[0])
                and (point[1] is None or _is_number(point[1]))):
            raise ValueError(f"{where}: curve point must be [seconds, value], got {point!r}")
        t, v = float(point[0]), None if point[1] is None else float(point[1])
        if points and t < points[-1][0]:
            raise ValueError(f"{where}: curve is not sorted by seconds ({t} after {points[-1][0]})")
        points.append((t, v))
    return points


def _final_value(curve: Sequence[Sequence[float | None]]) -> float | None:
    values = [v for _, v in _curve_points(curve) if v is not None]
    return values[-1] if values else None
