"""finetune end to end on generated image folders and CSVs, for four model families."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from layerlock.cli import main
from layerlock.finetune import finetune
from layerlock.models import build_classifier
from layerlock.runs import read_jsonl
from test_finetune import CLASSES, make_csv, make_folder, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.set_num_threads(1)


def _check_run_dir(run: Path, classes: int = 3) -> None:
    for name in (
        "config.yaml",
        "steps.csv",
        "steps.jsonl",
        "epochs.csv",
        "epochs.jsonl",
        "events.jsonl",
        "loss_accuracy.png",
        "trainable_params.png",
        "model.safetensors",
        "checkpoint.pt",
        "summary.json",
        "per_class.csv",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp")), "temporary files left behind"
    epochs = read_jsonl(run / "epochs.jsonl")
    for row in epochs:
        assert 0.0 <= row["val_acc"] <= 1.0
        assert ("val_top5" in row) == (classes > 5)
        assert row["trainable_params"] > 0 and any(k.startswith("lr/") for k in row)
    steps = read_jsonl(run / "steps.jsonl")
    assert [r["step"] for r in steps] == sorted({r["step"] for r in steps})
    assert {"loss", "accuracy", "trainable_params", "images_per_s"} <= set(steps[0])
    header = (run / "steps.csv").read_text().splitlines()[0].split(",")
    assert "lr/head" in header or any(h.startswith("lr/") for h in header)


def test_timm_cnn_with_batchnorm_on_folder(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, model="timm:test_resnet", schedule="gradual", epochs=2)
    result = finetune(cfg)
    _check_run_dir(result.run_dir)
    assert result.steps == 2 * 3 and not result.interrupted
    assert set(result.per_class) == set(CLASSES)
    # gradual: the trainable set grows; events are logged with their step
    events = read_jsonl(result.run_dir / "events.jsonl")
    assert [e["step"] for e in events] == [0, 3]
    rows = result.epochs
    assert rows[1]["trainable_params"] > rows[0]["trainable_params"]
    # the saved weights are the trained model's, BatchNorm statistics included
    saved = load_file(str(result.run_dir / "model.safetensors"))
    state = result.model.state_dict()
    assert any("running_mean" in k for k in saved)
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_timm_vit_on_csv_with_corrupt_file(tmp_path: Path) -> None:
    train, val = make_csv(tmp_path / "csv", corrupt=True)
    cfg = tiny_config(
        tmp_path, data="csv", data_path=None, train_csv=str(train), val_csv=str(val), epochs=2
    )
    result = finetune(cfg)
    _check_run_dir(result.run_dir)
    assert result.skipped_images == 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["final_top1"] == result.final_top1 and summary["steps"] == 2 * 3


def _register_tiny_clip(tmp_path: Path) -> str:
    import open_clip

    name = "layerlock-test-clip"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "width": 32,
            "layers": 2,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def test_open_clip_zero_shot_head(tmp_path: Path) -> None:
    import open_clip

    name = _register_tiny_clip(tmp_path)
    torch.manual_seed(0)
    model, notes, groups = build_classifier(f"open_clip:{name}", list(CLASSES))
    torch.manual_seed(0)
    clip = open_clip.create_model(name)  # same seed: same weights as the one wrapped
    tokens = open_clip.get_tokenizer(name)([f"a photo of a {c}." for c in CLASSES])
    with torch.no_grad():
        text = clip.encode_text(tokens, normalize=True)
        expected = text * clip.logit_scale.exp()
    assert torch.allclose(model.head.weight, expected, atol=1e-6)
    assert torch.all(model.head.bias == 0)
    assert any("zero-shot" in n for n in notes)
    assert groups is not None and groups.names[0] == "embeddings" and groups.names[-1] == "head"
    # the head gives CLIP's zero-shot logits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image = clip.encode_image(x, normalize=True)
        assert torch.allclose(model.eval()(x), image @ expected.T, atol=1e-5)


def test_open_clip_end_to_end(tmp_path: Path) -> None:
    name = _register_tiny_clip(tmp_path)
    result = finetune(tiny_config(tmp_path, model=f"open_clip:{name}", schedule="lp-ft"))
    _check_run_dir(result.run_dir)
    assert result.trainable_params == result.total_params  # lp-ft ends fully unlocked
    events = read_jsonl(result.run_dir / "events.jsonl")
    assert events[0]["label"] == "+head" and events[1]["step"] == 3


def test_hf_vit_from_local_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig

    folder = tmp_path / "tiny-vit"
    ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    ).save_pretrained(folder)
    result = finetune(tiny_config(tmp_path, model=f"hf:{folder}", schedule="lp-ft"))
    _check_run_dir(result.run_dir)
    assert type(result.model).__name__ == "ViTForImageClassification"
    assert result.model.config.num_labels == 3


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_resume_reproduces_uninterrupted_run(tmp_path: Path, workers: int) -> None:
    make_folder(tmp_path / "data", train=5)
    common = dict(schedule="lp-ft", epochs=3, batch_size=4, weight_decay=0.1, workers=workers)
    full = finetune(tiny_config(tmp_path, out_dir=str(tmp_path / "full"), **common))
    part = finetune(tiny_config(tmp_path, out_dir=str(tmp_path / "part"), **common), stop_after=5)
    assert part.interrupted and part.steps == 5
    assert not (part.run_dir / "model.safetensors").exists()
    resumed = finetune(tiny_config(tmp_path, out_dir="ignored", resume=str(part.run_dir), **common))
    assert resumed.run_dir == part.run_dir and resumed.steps == full.steps == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    # metrics continue without duplicates and match the uninterrupted run
    rows_full = read_jsonl(full.run_dir / "epochs.jsonl")
    rows_res = read_jsonl(part.run_dir / "epochs.jsonl")
    assert [r["val_acc"] for r in rows_full] == [r["val_acc"] for r in rows_res]
    assert [r["train_loss"] for r in rows_full] == [r["train_loss"] for r in rows_res]
    steps = [r["step"] for r in read_jsonl(part.run_dir / "steps.jsonl")]
    assert steps == list(range(1, 13))
    events = read_jsonl(part.run_dir / "events.jsonl")
    assert [e["step"] for e in events] == [0, 4]


def test_cli_stop_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "--model",
        "timm:test_vit",
        "--data",
        "folder",
        "--data-path",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out-dir",
        str(run),
        "--quiet",
    ]
    assert main(["finetune", *args, "--stop-after", "1"]) == 130
    err = capsys.readouterr().err
    assert f"layerlock finetune --resume {run}" in err
    assert main(["finetune", "--resume", str(run), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 3 and not out["interrupted"] and out["run_dir"] == str(run)
    # a second fresh run into the same out_dir does not clobber the first
    assert main(["finetune", *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == f"{run}-2"


def test_demo_default_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["finetune", "run.epochs=1", "data.shots_per_class=4", f"run.out_dir={tmp_path / 'demo'}"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "layerlock finetune: finished" in out and "per-class top-1" in out
    cfg = yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text())
    assert cfg["model"]["name"] == "demo" and cfg["unfreeze"]["schedule"] == "lp-ft"


def test_example_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["progressive_timm.py"])
    runpy.run_path(str(ROOT / "examples" / "progressive_timm.py"), run_name="__main__")
    assert (tmp_path / "runs" / "example" / "model.safetensors").is_file()
