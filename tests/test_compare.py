"""compare: the same task under several schedules, one table and one chart."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from layerlock.cli import main
from layerlock.compare import split_schedules
from layerlock.errors import ConfigError, ScheduleError
from test_finetune import make_folder


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def test_compare_cli_table_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "data")
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--schedules",
            "lp,full",
            "--model",
            "timm:test_vit",
            "--data",
            "folder",
            "--data-path",
            str(tmp_path / "data"),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--out-dir",
            str(out),
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    for word in ("schedule", "final top-1", "best top-1", "wall time", "lp", "full"):
        assert word in text
    assert (out / "accuracy_vs_time.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["schedule"] for r in rows] == ["lp", "full"]
    lp, full = rows
    assert int(lp["trainable_params"]) < int(full["trainable_params"]) == int(full["total_params"])
    for r in rows:
        assert 0.0 <= float(r["final_top1"]) <= float(r["best_top1"]) <= 1.0
        assert (Path(r["run_dir"]) / "model.safetensors").is_file()
    assert "| lp |" in (out / "compare.md").read_text()


def test_split_schedules() -> None:
    assert split_schedules("lp, full") == ["lp", "full"]
    assert split_schedules("gradual:every=2,start=1; lp") == ["gradual:every=2,start=1", "lp"]
    with pytest.raises(ConfigError, match=r"given twice: lp"):
        split_schedules("lp,lp")
    with pytest.raises(ConfigError, match=r"no schedule"):
        split_schedules(" , ")
    with pytest.raises(ScheduleError):
        split_schedules("lp,gradaul")
