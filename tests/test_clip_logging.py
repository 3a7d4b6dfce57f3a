"""run.report_to: rows reach TensorBoard and W&B (offline) besides the run's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerlock.logging_backends import ReportingLogger, report_to
from layerlock.runs import RunDir


def test_no_targets_is_the_logger_itself(tmp_path: Path) -> None:
    logger = RunDir(tmp_path).metrics()
    assert report_to(logger, (), tmp_path) is logger
    assert report_to(logger, ("tensorboard",), tmp_path, rank=1) is logger


def test_tensorboard_and_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "run")
    logger = report_to(run.metrics(), ("tensorboard", "wandb"), run.path, {"task": "clip"})
    assert isinstance(logger, ReportingLogger)
    logger.log_step({"step": 1, "epoch": 0.5, "loss": 2.0, "cached": False})
    logger.log_epoch({"epoch": 1, "step": 2, "image_to_text_R@1": 0.5, "note": "x"})
    logger.close()
    assert [r["loss"] for r in logger.rows("steps")] == [2.0]  # the files, as before
    assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/image_to_text_R@1"} <= set(events.Tags()["scalars"])
    assert list((run.path / "wandb").glob("offline-run-*"))
