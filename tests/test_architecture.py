"""The layout's rules: the data flows one way, and the CLIs are named after their commands.

DESIGN.md: `pgps_data` never imports `pgps_train`; the schedule imports nothing of the store
or the loader; the store imports nothing above it (raw, schedule, loader, synthetic, cli).
Checked on the import statements of the sources, so a lazy import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in ``path`` (top level or nested)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def sources(package: str) -> list[Path]:
    path = ROOT / package.replace(".", "/")
    return [path.with_suffix(".py")] if path.with_suffix(".py").is_file() else sorted(path.rglob("*.py"))


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sources(package):
        for mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("pgps_data", ("pgps_train",)),
    ("pgps_data.schedule", ("pgps_data.store", "pgps_data.loader", "pgps_data.raw",
                            "pgps_data.synthetic", "pgps_data.cli", "torch")),
    ("pgps_data.store", ("pgps_data.raw", "pgps_data.schedule", "pgps_data.loader",
                         "pgps_data.synthetic", "pgps_data.cli")),
    ("pgps_data.raw", ("pgps_data.loader", "pgps_data.schedule", "pgps_data.cli")),
    ("pgps_data.loader", ("pgps_data.raw", "pgps_data.cli", "pgps_data.synthetic")),
    # the label rules are used by every layer, so they import none of them
    ("pgps_data.labels", ("pgps_data.raw", "pgps_data.store", "pgps_data.loader",
                          "pgps_data.schedule", "pgps_data.synthetic", "pgps_data.cli", "torch")),
    ("pgps_data.dataset_json", ("pgps_data.raw", "pgps_data.store", "pgps_data.loader")),
])
def test_data_flows_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    assert violations(package, forbidden) == []


def test_the_rule_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pgps_train.trainer import train\n    import torch.nn\n")
    assert {"pgps_train.trainer", "pgps_train.trainer.train", "torch.nn"} <= imported_modules(src)


def test_no_module_shadows_the_standard_library() -> None:
    import sys

    top = {p.stem for pkg in ("pgps_data", "pgps_train") for p in (ROOT / pkg).glob("*.py")}
    assert top & set(sys.stdlib_module_names) == set()


def test_no_module_over_the_size_limit() -> None:
    """DESIGN.md: no module over ~400 lines (split by concept)."""
    long = {str(p.relative_to(ROOT)): n for pkg in ("pgps_data", "pgps_train")
            for p in sources(pkg) if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
