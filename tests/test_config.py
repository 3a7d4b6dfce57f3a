"""FinetuneConfig: YAML + overrides, all-at-once validation, fingerprint and resume checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from layerlock.config import RESUME_IGNORED, FinetuneConfig, load_config, parse_overrides
from layerlock.errors import ConfigError


def test_defaults_are_valid_and_run_the_demo():
    cfg = load_config()
    assert (cfg.model, cfg.data, cfg.schedule) == ("demo", "demo", "lp-ft")
    assert cfg.validate() is cfg


def test_overrides_are_typed_by_field(tmp_path):
    cfg = load_config(
        overrides=[
            "lr=1e-3",
            "epochs=3",
            "batch-size=32",
            "layer_decay=none",
            "grad_clip=null",
            "pretrained=true",
            "augmentation={hflip: 0.0, scale: [0.5, 1.0]}",
            "deterministic_train_transform=yes",
            "--seed=7",
        ]
    )
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert (cfg.epochs, cfg.batch_size, cfg.seed) == (3, 32, 7)
    assert cfg.layer_decay is None and cfg.grad_clip is None
    assert cfg.pretrained is True
    assert cfg.augmentation == {"hflip": 0.0, "scale": [0.5, 1.0]}
    assert cfg.deterministic_train_transform is True
    assert load_config(overrides=["pretrained=laion2b_s34b_b79k"]).pretrained == "laion2b_s34b_b79k"


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nepochs: 5\nschedule: gradual\n")  # YAML reads 1e-3 as a string
    cfg = load_config(path, {"epochs": 2})
    assert (cfg.lr, cfg.epochs, cfg.schedule) == (0.001, 2, "gradual")


def test_every_problem_reported_at_once_with_suggestions(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\nbatchsize: 8\nprecision: fp16\nlr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["workers=-1", "grad_clip=0", "nonsense"])
    lines = str(info.value).splitlines()
    assert lines[0] == "7 problems in the configuration:"
    text = str(info.value)
    assert "override 'nonsense' is not key=value" in text
    assert "unknown key 'epoch'; did you mean 'epochs'?" in text
    assert "unknown key 'batchsize'; did you mean 'batch_size'?" in text
    assert "precision: 'fp16' is not one of auto, fp32, bf16" in text
    assert "lr: expected a number, got 'fast'" in text
    assert "workers: must be >= 0, got -1" in text
    assert "grad_clip: must be > 0 or none, got 0.0" in text


def test_single_problem_is_one_line():
    with pytest.raises(
        ConfigError, match=r"^bad configuration: epochs: expected an integer, got '2.5'$"
    ):
        load_config(overrides=["epochs=2.5"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=folder"], "data_path: data=folder needs a folder holding train/ and val/"),
        (
            ["data=folder", "data_path=/no/such/dir"],
            "data_path: folder /no/such/dir does not exist",
        ),
        (["data=csv", "train_csv=/no/t.csv"], "train_csv: file /no/t.csv does not exist"),
        (["data=hf"], "data_path: data=hf needs the Hugging Face dataset name"),
        (
            ["data=folderz"],
            "data: 'folderz' is not one of demo, folder, csv, hf; did you mean 'folder'?",
        ),
        (["checkpoint=/no/w.safetensors"], "checkpoint: file /no/w.safetensors does not exist"),
        (["model=tim:resnet18"], "did you mean 'timm:resnet18'?"),
        (["layer_decay=1.5"], "layer_decay: must be in (0, 1], got 1.5"),
        (["cache=maybe"], "cache: 'maybe' is not one of auto, on, off"),
        (["prompt=a photo"], "prompt: must contain '{}'"),
        (["resume=/no/run"], "resume: run directory /no/run does not exist"),
        (["augmentation=3"], "augmentation: expected a mapping"),
    ],
)
def test_bad_values(overrides, message):
    with pytest.raises(ConfigError, match="configuration") as info:
        load_config(overrides=overrides)
    assert message in str(info.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*missing\.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- lr\n- 1\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of keys, not list"):
        load_config(listing)


def test_yaml_round_trip_is_equal(tmp_path):
    cfg = load_config(
        overrides=["lr=3e-4", "augmentation={hflip: 0.0}", "pretrained=tag", "layer_decay=0.75"]
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()


def test_fingerprint_ignores_only_non_trajectory_fields():
    base = FinetuneConfig()
    fp = base.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    for name, value in [
        ("out_dir", "elsewhere"),
        ("workers", 4),
        ("cache", "off"),
        ("log_every", 1),
    ]:
        assert name in RESUME_IGNORED
        assert dataclasses.replace(base, **{name: value}).fingerprint() == fp
    for name, value in [
        ("lr", 0.01),
        ("seed", 1),
        ("schedule", "full"),
        ("epochs", 9),
        ("model", "timm:test_vit"),
    ]:
        assert dataclasses.replace(base, **{name: value}).fingerprint() != fp


def test_fingerprint_is_stable_across_processes():
    code = (
        "from layerlock.config import FinetuneConfig; print(FinetuneConfig(lr=0.5).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == FinetuneConfig(lr=0.5).fingerprint()


def test_resume_with_different_config_is_refused():
    saved = FinetuneConfig()
    FinetuneConfig(workers=3).check_resume(saved, "runs/a")  # ignored field: fine
    FinetuneConfig().check_resume(saved.to_dict(), "runs/a")
    with pytest.raises(
        ConfigError,
        match=r"cannot resume runs/a: .*different config \(lr: 0.001 -> 0.01; seed: 0 -> 2\)",
    ):
        FinetuneConfig(lr=0.01, seed=2).check_resume(saved, "runs/a")


def test_parse_overrides_accepts_dicts():
    assert parse_overrides({"batch-size": 4}) == ({"batch_size": 4}, [])
    assert parse_overrides(["a=b=c"]) == ({"a": "b=c"}, [])
