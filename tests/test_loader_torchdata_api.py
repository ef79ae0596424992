"""No private attribute of torchdata is touched anywhere in the package.

The private names are read from the installed torchdata.nodes sources (every ``self._x``
it uses, every ``_x`` function, method or class it defines), so a torchdata upgrade that
adds one is covered. In our sources a violation is any of: an attribute with such a name
reached on anything but ``self`` / ``cls`` (``mapper._it._it._workers``,
``node._it._shutdown()``), such a name as a string (``getattr(it, "_stop", None)``), or a
private name imported from torchdata. Our own attributes (``self._it``) stay ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torchdata.nodes

ROOT = Path(__file__).resolve().parents[1]


def torchdata_private_names() -> set[str]:
    names: set[str] = set()
    for path in Path(torchdata.nodes.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def violations(path: Path, private: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr in private and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value in private:
            out.append(f"{where} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchdata"):
            parts = (node.module or "").split(".") + [a.name for a in node.names]
            out += [f"{where} import {p}" for p in parts if p.startswith("_")]
    return out


def test_the_package_touches_no_private_torchdata_attribute() -> None:
    private = torchdata_private_names()
    assert {"_it", "_shutdown", "_workers", "_stop", "_mp_stop"} <= private
    found = [v for pkg in ("pgps_data", "pgps_train") for p in sorted((ROOT / pkg).rglob("*.py"))
             for v in violations(p, private)]
    assert found == []


def test_the_check_catches_the_old_loader_and_spares_our_own_names(tmp_path: Path) -> None:
    """The patterns of the loader before our worker node (watchdog and close), and ours."""
    old = tmp_path / "old.py"
    old.write_text(
        "def workers(self):\n"
        "    impl = getattr(self.mapper, '_it', None)\n"
        "    return [w for w in getattr(impl._it, '_workers', [])]\n"
        "def halt(it):\n"
        "    for name in ('_stop', '_mp_stop'):\n"
        "        getattr(it, name).set()\n"
        "def close(node):\n"
        "    node._it._shutdown()\n"
        "from torchdata.nodes.map import _SingleThreadedMapper\n")
    found = violations(old, torchdata_private_names())
    assert len(found) == 8, found
    ours = tmp_path / "ours.py"
    ours.write_text("class A:\n    def close(self):\n        self._it = None\n"
                    "        self._workers.close()\n")
    assert violations(ours, torchdata_private_names()) == []
