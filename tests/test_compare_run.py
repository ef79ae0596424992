"""`pgps-compare run` end to end on the tiny session store: two modes × two seeds, the
report, skipping finished runs, and the legacy table form."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgps_data import open_store
from pgps_data.errors import PGPSInputError
from pgps_train.cli.compare import main as compare_main
from pgps_train.comparison.run import ComparePlan, collect, compare, run_folder
from pgps_train.networks import tiny_kwargs
from tests.torch_threads import one_thread

PATCH = [8, 16, 16]


@pytest.fixture(scope="module")
def plan(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> ComparePlan:
    ids = open_store(tiny_store).case_ids
    splits = tmp_path_factory.mktemp("splits") / "splits_final.json"
    splits.write_text(json.dumps([{"train": ids[:3], "val": ids[3:]}]))
    out = tmp_path_factory.mktemp("compare") / "cmp"
    return ComparePlan(
        store=str(tiny_store), out=str(out), modes=("efficiency", "constant"), seeds=(0, 1),
        preset=None, device="cpu", fold="0",
        train_args=["--splits", str(splits), "--quiet"],
        overrides={"patch": PATCH, "epochs": 0, "iterations_per_epoch": 2, "batch": 2,
                   "workers": 1, "eval_every": 3, "eval_batches": 1, "save_every": 10**9,
                   "net_kwargs": tiny_kwargs("unet")},
        command="pgps-compare run (test)")


@pytest.fixture(scope="module")
def compared(plan: ComparePlan) -> dict:
    lines: list[str] = []
    t0 = time.perf_counter()
    with one_thread():
        paths = compare(plan, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return {"paths": paths, "lines": lines, "seconds": time.perf_counter() - t0}


def test_every_mode_and_seed_trained_alike_and_reported(plan, compared):
    out = Path(plan.out)
    assert compared["seconds"] < 90
    report = json.loads((out / "report.json").read_text())
    runs = report["runs"]
    assert sorted((r["mode"], r["seed"]) for r in runs) == [
        ("constant", 0), ("constant", 1), ("efficiency", 0), ("efficiency", 1)]
    # constant first for every seed (the baseline a seconds budget would be planned from)
    order = [line for line in compared["lines"] if line.startswith("pgps-compare:")]
    assert order[0].startswith("pgps-compare: constant seed 0: training")
    for r in runs:
        assert set(r["dice"]) == {open_store(plan.store).case_ids[3]}  # the held-out case
        assert r["seconds_train"] > 0 and r["voxels"] > 0 and r["iterations"] > 0
        assert r["schedule"][0]["iteration"] == 0
        assert set(r["nsd"]) == set(r["lesion_f1"]) == set(r["dice"])
        assert len(r["foreground"]) == len(r["schedule"])  # measured per stage
        assert all(0 <= f <= 1 for st in r["foreground"] for f in st["fraction"].values())
        assert r["curve"] and r["peak_memory_bytes"] > 10 << 20
    eff = next(r for r in runs if r["mode"] == "efficiency")
    con = next(r for r in runs if r["mode"] == "constant")
    assert len(eff["schedule"]) > 1 and len(con["schedule"]) == 1  # growing vs one patch
    assert eff["voxels"] < con["voxels"]  # smaller patches, same batch: fewer voxels
    assert report["classes"] == ["organ", "lesion"]  # the store's foreground, in its order
    assert list(open_store(plan.store).labels) == ["background", "organ", "lesion"]
    assert len(report["claims"]) == 4
    assert report["lesion_classes"] == [c for c in report["classes"] if "lesion" in c]
    for name in ("html", "markdown", "json", "schedule", "dice_vs_time"):
        assert Path(compared["paths"][name]).stat().st_size > 0
    stats = report["statistics"]
    assert set(stats["mode_table"]) == {"constant", "efficiency"}
    assert set(stats["paired_tests"]) == {"efficiency"}


def test_a_second_run_skips_finished_runs(plan, compared):
    summaries = [run_folder(plan, m, s) / "summary.json" for m in plan.modes for s in plan.seeds]
    before = [p.stat().st_mtime_ns for p in summaries]
    lines: list[str] = []
    compare(plan, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert [p.stat().st_mtime_ns for p in summaries] == before
    assert sum("finished, skipped" in line for line in lines) == 4
    assert not any("training" in line for line in lines)


def test_a_finished_run_trained_otherwise_is_refused_not_mixed_in(plan, compared):
    """Another iteration budget (a changed preset, say) must not reuse the finished runs."""
    longer = ComparePlan(**{**plan.__dict__,
                            "overrides": {**plan.overrides, "iterations_per_epoch": 3}})
    summary = run_folder(plan, "constant", 0) / "summary.json"
    before = summary.read_bytes()
    with pytest.raises(PGPSInputError, match=r"constant-seed0/config.json: this finished run "
                       r"has --iterations-per-epoch 2, the comparison asks for 3"):
        compare(longer)
    assert summary.read_bytes() == before


def test_a_run_left_without_a_checkpoint_is_restarted_only_when_it_is_ours(plan, compared):
    folder = run_folder(plan, "constant", 0)
    config = json.loads((folder / "config.json").read_text())
    other = {**config, "mode": "performance"}
    stranger = Path(plan.out) / "runs" / "constant-seed7"
    stranger.mkdir()
    (stranger / "config.json").write_text(json.dumps(other))
    seven = ComparePlan(**{**plan.__dict__, "seeds": (7,), "modes": ("constant",)})
    with pytest.raises(PGPSInputError, match="holds a performance seed 0 run, not constant seed 7"):
        compare(seven)
    assert json.loads((stranger / "config.json").read_text()) == other  # left as it was


def test_the_cli_report_and_legacy_forms_tabulate_the_runs(plan, compared, capsys):
    runs = [str(run_folder(plan, m, 0)) for m in plan.modes]
    assert compare_main(["report", *runs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["efficiency", "constant"]
    assert compare_main([*runs, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert compare_main(["report", str(Path(plan.out) / "nope")]) == 2
    assert "not a finished pgps-train run" in capsys.readouterr().err


def test_collect_refuses_an_unknown_lesion_class(plan, compared):
    folders = [run_folder(plan, m, s) for m in plan.modes for s in plan.seeds]
    bad = ComparePlan(**{**plan.__dict__, "lesion_classes": ["nodule"]})
    with pytest.raises(PGPSInputError, match="--lesion-classes nodule: not among the classes"):
        collect(bad, folders)


def test_report_files_someone_else_wrote_are_never_replaced(plan, compared, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>my own report</p>")
    other = ComparePlan(**{**plan.__dict__, "out": str(mine)})
    with pytest.raises(PGPSInputError, match="pgps-compare did not write"):
        compare(other)
    assert (mine / "report.html").read_text() == "<p>my own report</p>"
    assert sorted(p.name for p in mine.iterdir()) == ["report.html"]  # no runs/ made either


def test_an_out_inside_the_store_is_refused(plan, compared):
    before = sorted(p.name for p in Path(plan.store).iterdir())
    for out in (plan.store, str(Path(plan.store) / "cmp")):
        inside = ComparePlan(**{**plan.__dict__, "out": out})
        with pytest.raises(PGPSInputError, match="is inside the store"):
            compare(inside)
    assert sorted(p.name for p in Path(plan.store).iterdir()) == before


def test_a_seconds_budget_plans_each_mode_from_its_seeds_constant(plan, compared):
    iterations_report = Path(plan.out) / "report.json"
    before = iterations_report.stat().st_mtime_ns
    timed = ComparePlan(**{**plan.__dict__, "budget": "seconds", "seeds": (0,)})
    lines: list[str] = []
    with one_thread():
        paths = compare(timed, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert [line for line in lines if "finished, skipped" in line] == [
        f"pgps-compare: constant seed 0: finished, skipped ({run_folder(plan, 'constant', 0)})"]
    (planned,) = [line for line in lines if "planned to fit constant's" in line]
    assert "step times measured" in planned  # from efficiency-seed0 at equal iterations
    folder = run_folder(timed, "efficiency", 0)
    assert folder.name == "efficiency-seconds-seed0" and (folder / "summary.json").is_file()
    plans = json.loads((Path(plan.out) / "equal-seconds" / "plans.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert config["iterations_per_epoch"] == plans[folder.name]["iterations_per_epoch"]
    report = json.loads(Path(paths["json"]).read_text())
    assert Path(paths["json"]).parent.name == "equal-seconds" and report["budget"] == "seconds"
    eff = next(r for r in report["runs"] if r["mode"] == "efficiency")
    assert eff["planned_seconds"] == plans[folder.name]["planned_seconds"]
    assert report["claims"][0]["holds"] is None  # the time claim is not tested at equal time
    assert "equal time by design" in report["claims"][0]["ours"]
    assert iterations_report.stat().st_mtime_ns == before  # the other budget's report stays
    no_constant = ComparePlan(**{**timed.__dict__, "modes": ("efficiency",)})
    with pytest.raises(PGPSInputError, match="include constant in --modes"):
        compare(no_constant)
