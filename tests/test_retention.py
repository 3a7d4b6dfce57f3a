"""Retention guard, best-per-stage restore and WiSE-FT's start weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from layerlock.config import RetainOptions
from layerlock.finetune import ClassificationTask, finetune
from layerlock.finetune.retention import START_FILE, Retention
from layerlock.runs import load_weights
from layerlock.unfreezer import Unfreezer
from test_finetune import tiny_config


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))


def _retention(schedule: str, epochs: int, **options: Any) -> tuple[Retention, list[str], dict]:
    model = _model()
    unfreezer = Unfreezer(model, schedule, epochs=epochs, steps_per_epoch=2, weight_decay=0.0)
    labels: list[str] = []
    starts: dict[int, dict[str, torch.Tensor]] = {}
    keep = Retention(
        RetainOptions(**options),
        "val_acc",
        model,
        unfreezer,
        steps_per_epoch=2,
        epochs=epochs,
        log=labels.append,
        save_start=lambda w, e: starts.__setitem__(e, w),
    )
    return keep, labels, starts


def _train(keep: Retention, value: float) -> dict[str, torch.Tensor]:
    """Move the weights and the Unfreezer's step (as an epoch would); return the weights."""
    keep.unfreezer.sync(keep.unfreezer.global_step + 2)
    with torch.no_grad():
        for p in keep.model.parameters():
            p.add_(value)
    return {k: v.clone() for k, v in keep.model.state_dict().items()}


def test_guard_restores_the_stage_best_and_stops_unlocking() -> None:
    keep, labels, _ = _retention("0:1, 1:2, 3:all", 4, set="val", max_drop=5, lr_factor=0.5)
    keep.after_evaluation(0, {"val_acc": 0.90})
    _train(keep, 0.1)
    keep.after_evaluation(1, {"val_acc": 0.88})  # within 5 points: kept
    best = _train(keep, 0.2)
    keep.after_evaluation(2, {"val_acc": 0.89})  # stage 2's best so far
    keep.unfreezer.optimizer.state[next(keep.model.parameters())] = {"step": torch.tensor(1.0)}
    _train(keep, 0.3)
    keep.after_evaluation(3, {"val_acc": 0.80})  # 10 points below the start
    assert all(torch.equal(v, best[k]) for k, v in keep.model.state_dict().items())
    assert keep.unfreezer.held_at is not None and keep.unfreezer.lr_scale == 0.5
    assert not keep.unfreezer.optimizer.state
    assert labels[-1].startswith(
        "retention guard: val 80.0% fell more than 5 points below its start 90.0%; restored epoch 2"
    )
    # the stage of epochs 2-3 trains on; `3:all` (applied for step 6) is taken back
    assert keep.unfreezer.trainable_groups() == ["1", "2"]
    keep.unfreezer.sync(7)
    assert keep.unfreezer.trainable_groups() == ["1", "2"]


def test_guard_falls_back_to_the_stage_start() -> None:
    keep, labels, _ = _retention("0:1, 1:all", 3, set="val", max_drop=1)
    keep.after_evaluation(0, {"val_acc": 0.5})
    start = _train(keep, 0.1)
    keep.after_evaluation(1, {"val_acc": 0.6})  # end of the head-only stage
    _train(keep, 0.2)
    keep.after_evaluation(2, {"val_acc": 0.3})  # first epoch of the full stage breaks it
    assert all(torch.equal(v, start[k]) for k, v in keep.model.state_dict().items())
    assert "restored epoch 1" in labels[-1]


def test_best_per_stage_restore_picks_the_best_epoch() -> None:
    keep, labels, _ = _retention("0:1, 3:all", 5, restore_best="stage")
    _train(keep, 0.1)
    keep.after_evaluation(1, {"val_acc": 0.5})
    best = _train(keep, 0.2)
    keep.after_evaluation(2, {"val_acc": 0.7})
    _train(keep, 0.3)
    keep.after_evaluation(3, {"val_acc": 0.6})  # the stage ends: epoch 2 comes back
    assert all(torch.equal(v, best[k]) for k, v in keep.model.state_dict().items())
    assert labels == ["restore_best: epoch 2 (val_acc 70.0%) restored before the next stage"]
    _train(keep, 0.4)
    keep.after_evaluation(4, {"val_acc": 0.65})
    assert keep.unfreezer.held_at is None  # no guard: the schedule goes on


def test_run_best_ends_with_the_best_epoch() -> None:
    keep, labels, _ = _retention("full", 3, restore_best="run")
    _train(keep, 0.1)
    keep.after_evaluation(1, {"val_acc": 0.5})
    best = _train(keep, 0.2)
    keep.after_evaluation(2, {"val_acc": 0.9})
    _train(keep, 0.3)
    keep.after_evaluation(3, {"val_acc": 0.6})
    keep.finish()
    assert all(torch.equal(v, best[k]) for k, v in keep.model.state_dict().items())
    assert labels == ["restore_best: the run ends with epoch 2 (val_acc 90.0%)"]


@pytest.mark.parametrize(("schedule", "epoch"), [("lp-ft:at=2", 2), ("full", 0), ("gradual", 1)])
def test_wise_start_is_the_fitted_head_when_the_first_stage_trains_it(
    schedule: str, epoch: int
) -> None:
    keep, _, starts = _retention(schedule, 4)
    keep.before_training()
    for e in range(1, 5):
        _train(keep, 0.1)
        keep.after_evaluation(e, {"val_acc": 0.5})
    assert list(starts) == [epoch]


def test_state_round_trip_keeps_the_guard() -> None:
    keep, _, _ = _retention("0:1, 1:all", 3, set="val", max_drop=1)
    keep.after_evaluation(0, {"val_acc": 0.5})
    state = keep.state_dict()
    other, _, _ = _retention("0:1, 1:all", 3, set="val", max_drop=1)
    other.load_state_dict(state)
    assert other.baseline == 0.5 and other.stage_best is not None
    assert all(
        torch.equal(v, keep.stage_best.weights[k]) for k, v in other.stage_best.weights.items()
    )  # type: ignore[union-attr]


def _scripted(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """The extra set 'ref' reports these accuracies, in order (a constructed drop)."""
    original = ClassificationTask.evaluate
    seen: list[int] = []

    def evaluate(self, model, batches, device, dtype, kind="main"):  # type: ignore[no-untyped-def]
        out = original(self, model, batches, device, dtype, kind)
        if kind == "classify":
            out["val_acc"] = values[min(len(seen), len(values) - 1)]
            seen.append(1)
        return out

    monkeypatch.setattr(ClassificationTask, "evaluate", evaluate)


def test_guard_in_a_run_logs_resumes_exactly_and_writes_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_finetune import make_folder

    make_folder(tmp_path / "data")
    ref = f"ref=folder:{tmp_path / 'data' / 'val'}"
    drops = [0.9, 0.9, 0.5, 0.5, 0.5]  # epochs 0..4: the guard triggers after epoch 2

    def cfg(**kw: Any):  # type: ignore[no-untyped-def]
        return tiny_config(
            tmp_path,
            epochs=4,
            schedule="0:1, 1:2, 3:all",
            **{"eval.sets": ref, "retain": "ref"},
            **kw,
        )

    _scripted(monkeypatch, drops)
    full = finetune(cfg(out_dir=str(tmp_path / "full")))
    events = [json.loads(x) for x in (full.run_dir / "events.jsonl").read_text().splitlines()]
    guard = [e for e in events if e["label"].startswith("retention guard")]
    # the guard checks every epoch: each time the set is below the limit it goes back
    assert [e["epoch"] for e in guard] == [2.0, 3.0, 4.0]
    for e in guard:
        assert (
            "ref 50.0% fell more than 5 points below its start 90.0%; restored epoch 1"
            in e["label"]
        )
    assert [
        e["label"] for e in events if e["label"].startswith("unlock")
    ] == []  # 3:all never applied
    assert (full.run_dir / START_FILE).is_file()
    assert any(
        "retention guard" in n
        for n in json.loads((full.run_dir / "summary.json").read_text())["notes"]
    )

    _scripted(monkeypatch, drops)
    part = finetune(cfg(), stop_after=7)  # interrupted after the trigger, mid-epoch 4
    _scripted(monkeypatch, drops[4:])
    resumed = finetune(cfg(resume=str(part.run_dir)))
    a, b = (
        load_weights(full.run_dir / "model.safetensors"),
        load_weights(resumed.run_dir / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
