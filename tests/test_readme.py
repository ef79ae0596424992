"""The README's loader example runs as written and trains a MONAI network."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_loader_example_runs(capsys) -> None:
    text = README.read_text()
    section = text.split("## Use the loader in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:1].isdigit()]
    cur = namespace["cur"]
    assert len(lines) == cur.total_iterations
    assert namespace["state"]["next_step"] == cur.total_iterations
    first, last = lines[0].split(), lines[-1].split()
    assert first[0] == "0" and last[0] == str(cur.total_iterations - 1)
    assert float(last[-1]) < float(first[-1])  # the loss went down
