"""``--device cuda`` without CUDA is one line before any work, for training and prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgps_data.errors import PGPSInputError
from pgps_train.trainer import TrainConfig, train


def test_train_on_missing_cuda_is_one_line_and_makes_no_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    cfg = TrainConfig(store=str(tmp_path / "no.zarr"), out=str(out), device="cuda", quiet=True)
    with pytest.raises(PGPSInputError, match=r"^--device cuda: no CUDA device is available"):
        train(cfg, log=lambda *a: None)
    assert not out.exists()
