"""Run directory: atomic writes, metrics logs with resume, charts, safe weights and checkpoints."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from layerlock.charts import plot_run
from layerlock.errors import LayerlockError
from layerlock.runs import (
    MetricsLogger,
    RunDir,
    atomic_write,
    atomic_writer,
    is_main_process,
    load_checkpoint,
    load_weights,
    read_jsonl,
    save_checkpoint,
    save_weights,
)


class Custom:
    pass


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_atomic_write_replaces_and_failure_keeps_old_file(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write("half-written")
        raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp files left
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"


def test_is_main_process():
    assert is_main_process() and is_main_process(0) and not is_main_process(2)


def test_weights_round_trip_with_tied_tensors_and_metadata(tmp_path):
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight  # tied
    path = save_weights(tmp_path / "m.safetensors", model, {"classes": ["a", "b"], "note": "x"})
    state = load_weights(path)
    assert set(state) == {"0.weight", "1.weight"}
    assert torch.equal(state["0.weight"], model[0].weight) and torch.equal(
        state["1.weight"], model[0].weight
    )
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"]) == ["a", "b"] and meta["note"] == "x"
    fresh = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    fresh.load_state_dict(state)
    assert torch.equal(fresh[1].weight, model[1].weight)


def test_load_weights_torch_files_safely(tmp_path):
    lin = nn.Linear(3, 2)
    torch.save(lin.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": lin.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        assert torch.equal(load_weights(tmp_path / name)["weight"], lin.weight)
    torch.save({"weights": Custom()}, tmp_path / "evil.pt")
    with pytest.raises(
        LayerlockError,
        match=r"evil\.pt is not a safetensors file and cannot be loaded with torch\.load\(weights_only=True\)",
    ):
        load_weights(tmp_path / "evil.pt")
    (tmp_path / "junk.bin").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(LayerlockError, match=r"junk\.bin is not a safetensors file"):
        load_weights(tmp_path / "junk.bin")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": Custom()}))
    with pytest.raises(LayerlockError, match=r"raw\.pkl is not a safetensors file"):
        load_weights(tmp_path / "raw.pkl")
    torch.save({"step": 1}, tmp_path / "nostate.pt")
    with pytest.raises(LayerlockError, match=r"does not hold a state dict of tensors"):
        load_weights(tmp_path / "nostate.pt")
    with pytest.raises(LayerlockError, match=r"weights file .*missing\.safetensors does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def test_truncated_safetensors_is_reported(tmp_path):
    path = save_weights(tmp_path / "m.safetensors", nn.Linear(8, 8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(LayerlockError, match=r"corrupt safetensors file"):
        load_weights(path)


def test_checkpoint_round_trip_and_unsafe_content_refused(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 7,
        "rng": torch.get_rng_state(),
        "names": ["head"],
    }
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    back = load_checkpoint(path)
    assert back["step"] == 7 and back["names"] == ["head"]
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    with pytest.raises(
        LayerlockError,
        match=r"checkpoint entry state\['extra'\]\['obj'\] \(.*Custom\) cannot be restored",
    ):
        save_checkpoint(tmp_path / "bad.pt", {"extra": {"obj": Custom()}})
    assert not (tmp_path / "bad.pt").exists()
    torch.save({"obj": Custom()}, tmp_path / "evil.pt")
    with pytest.raises(
        LayerlockError,
        match=r"checkpoint .*evil\.pt is not a safetensors file and cannot be loaded",
    ):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(LayerlockError, match=r"checkpoint .*none\.pt does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def _log_run(log: MetricsLogger, steps: range, steps_per_epoch: int = 2) -> None:
    for s in steps:
        row = {"step": s, "epoch": s / steps_per_epoch, "loss": 1.0 / s, "trainable_params": 10}
        if s >= 3:  # a group unlocks: new columns appear
            row.update({"lr/blocks.1": 0.001, "trainable_params": 50})
        log.log_step(row)
        if s == 3:
            log.log_event(s, s / steps_per_epoch, "unlock blocks.1")
        if s % steps_per_epoch == 0:
            log.log_epoch(
                {"epoch": s // steps_per_epoch, "step": s, "val_acc": s / 10, "val_loss": 2.0 / s}
            )


def test_metrics_new_columns_widen_the_csv(tmp_path):
    log = MetricsLogger(tmp_path)
    _log_run(log, range(1, 5))
    header, rows = _csv_rows(tmp_path / "steps.csv")
    assert header == ["step", "epoch", "loss", "trainable_params", "lr/blocks.1"]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[0]["lr/blocks.1"] == "" and rows[3]["lr/blocks.1"] == "0.001"
    assert [r["step"] for r in read_jsonl(tmp_path / "steps.jsonl")] == [1, 2, 3, 4]
    header, rows = _csv_rows(tmp_path / "epochs.csv")
    assert header[:2] == ["step", "epoch"] and len(rows) == 2
    assert log.rows("events") == [{"step": 3, "epoch": 1.5, "label": "unlock blocks.1"}]


def test_metrics_resume_drops_rows_past_the_resume_point(tmp_path):
    _log_run(MetricsLogger(tmp_path), range(1, 7))  # ran to step 6, checkpoint was at step 2
    resumed = MetricsLogger(tmp_path, resume_step=2)
    assert [r["step"] for r in resumed.rows("steps")] == [1, 2]
    assert [r["epoch"] for r in resumed.rows("epochs")] == [1]
    assert resumed.rows("events") == []
    _log_run(resumed, range(3, 7))
    uninterrupted = tmp_path / "u"
    _log_run(MetricsLogger(uninterrupted), range(1, 7))
    for name in ("steps.csv", "epochs.csv", "steps.jsonl", "epochs.jsonl", "events.jsonl"):
        assert (tmp_path / name).read_text() == (uninterrupted / name).read_text(), name


def test_torn_jsonl_line_is_ignored_on_resume(tmp_path):
    _log_run(MetricsLogger(tmp_path), range(1, 3))
    with (tmp_path / "steps.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    log = MetricsLogger(tmp_path, resume_step=10)
    assert [r["step"] for r in log.rows("steps")] == [1, 2]
    _, rows = _csv_rows(tmp_path / "steps.csv")
    assert len(rows) == 2


def test_metrics_values_are_json_safe(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log_step({"step": 1, "loss": torch.tensor(0.5), "acc": float("nan")})
    assert log.rows("steps") == [{"step": 1, "loss": 0.5, "acc": "nan"}]
    with pytest.raises(LayerlockError, match="step row needs a 'step' value"):
        log.log_step({"loss": 1.0})
    with pytest.raises(LayerlockError, match="epoch row needs an 'epoch' value"):
        log.log_epoch({"step": 1})


def test_other_ranks_write_nothing(tmp_path):
    run = RunDir(tmp_path / "r1", rank=1)
    assert run.write_yaml("config.yaml", {"a": 1}) is None
    assert run.save_weights(nn.Linear(2, 2)) is None
    assert run.save_checkpoint({"step": 1}) is None
    log = run.metrics()
    log.log_step({"step": 1, "loss": 1.0})
    log.log_event(1, 0.5, "unlock")
    assert plot_run(tmp_path / "r1", epochs=[{"epoch": 1, "val_acc": 0.5}], rank=1) == []
    assert not (tmp_path / "r1").exists()


def test_run_dir_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_yaml("config.yaml", {"lr": 0.001, "schedule": "lp-ft"})
    assert run.read_yaml("config.yaml") == {"lr": 0.001, "schedule": "lp-ft"}
    run.write_json("summary.json", {"acc": torch.tensor(0.25)})
    assert json.loads(run.file("summary.json").read_text()) == {"acc": 0.25}
    run.write_csv("per_class.csv", [{"class": "a", "acc": 1.0}, {"class": "b", "acc": 0.5, "n": 3}])
    header, rows = _csv_rows(run.file("per_class.csv"))
    assert header == ["class", "acc", "n"] and rows[1]["n"] == "3"
    assert not run.has_checkpoint()
    run.save_checkpoint({"step": 2})
    assert run.has_checkpoint() and run.load_checkpoint()["step"] == 2
    run.save_weights(nn.Linear(2, 2))
    assert set(load_weights(run.file("model.safetensors"))) == {"weight", "bias"}
    with pytest.raises(LayerlockError, match=r"nothing\.yaml does not exist"):
        run.read_yaml("nothing.yaml")


def test_charts_are_png_with_events(tmp_path):
    run = RunDir(tmp_path)
    _log_run(run.metrics(), range(1, 7))
    paths = run.plot()
    assert sorted(p.name for p in paths) == ["loss_accuracy.png", "trainable_params.png"]
    for p in paths:
        with Image.open(io.BytesIO(p.read_bytes())) as img:
            assert img.format == "PNG" and img.size[0] > 300
    assert plot_run(tmp_path / "empty") == []
