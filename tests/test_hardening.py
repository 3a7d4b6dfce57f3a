"""Hardening that is not a CLI error: CSV formulas, unwritable folders, odd arguments, skipped files."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import pytest
import torch

import layerlock
from layerlock.errors import ConfigError, OutputError, output_errors
from layerlock.finetune import finetune
from layerlock.runs import RunDir, atomic_write
from test_finetune import make_folder, tiny_config


def test_formula_like_text_is_escaped_in_csv_outputs(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    labels = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "cat", "-1"]
    run.write_csv("per_class.csv", [{"class": c, "accuracy": -0.5} for c in labels])
    with (tmp_path / "per_class.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["'" + c for c in labels[:5]] + ["cat", "-1"]
    assert {r["accuracy"] for r in rows} == {"-0.5"}  # numbers stay numbers


def test_unwritable_folder_is_one_output_error(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("x")
    # a file where the folder should be: refused whoever runs the test (root too)
    with pytest.raises(OutputError, match=rf"cannot write in {target}: .*\((EEXIST|ENOTDIR)\)"):
        atomic_write(target / "a.json", "{}")
    # still an OSError for callers that catch those
    with pytest.raises(OSError, match=r"No space left on device \(ENOSPC\)") as info:  # noqa: SIM117
        with output_errors(tmp_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert isinstance(info.value, OutputError)


@pytest.mark.parametrize("thing", ["timm:resnet18", 3, None, torch.zeros(2)])
def test_lock_and_layer_groups_refuse_what_is_not_a_module(thing: object) -> None:
    with pytest.raises(
        ConfigError, match=rf"expected a torch.nn.Module, got {type(thing).__name__}"
    ):
        layerlock.lock(thing, unlocked_groups=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a torch.nn.Module"):
        layerlock.layer_groups(thing)  # type: ignore[arg-type]


def test_skipped_files_are_listed_in_the_summary(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", train=2, val=1)
    red = data / "train" / "red"
    (red / "loop").symlink_to(".")
    (red / "togreen").symlink_to("../green")
    os.mkfifo(red / "pipe.png")
    result = finetune(tiny_config(tmp_path, epochs=1))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    reasons = {Path(p).name: why for p, why in summary["skipped_files"]["train"]}
    assert reasons["loop"].startswith("link to a folder already read")
    assert "class folder 'green'" in reasons["togreen"]
    assert reasons["pipe.png"] == "not a regular file (a FIFO)"
    assert summary["skipped_files"]["val"] == [] and result.skipped_images == 3
