"""FinetuneConfig: nested sections, YAML + dotted overrides, all-at-once validation,
fingerprint and resume checks, and the previous release's flat keys."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from layerlock.config import (
    LEGACY_KEYS,
    RESUME_IGNORED,
    SECTIONS,
    DataOptions,
    FinetuneConfig,
    RunOptions,
    dotted_keys,
    load_config,
    parse_overrides,
)
from layerlock.errors import ConfigError
from layerlock.options import UnfreezeOptions

# config.yaml as the previous (flat) release wrote it, and the fingerprint it stored
OLD_FLAT_YAML = """\
model: demo
pretrained: false
checkpoint: null
data: demo
data_path: null
train_csv: null
val_csv: null
csv_img_key: path
csv_label_key: label
csv_separator: ','
hf_image_key: image
hf_label_key: label
train_split: train
val_split: validation
bad_images: skip
shots_per_class: 30
augmentation: null
deterministic_train_transform: false
schedule: gradual
epochs: 3
batch_size: 16
lr: 0.01
weight_decay: 0.05
layer_decay: null
warmup_steps: 0
unlock_warmup_steps: 0
grad_clip: 1.0
label_smoothing: 0.0
freeze_bn_stats: true
precision: auto
device: auto
seed: 0
workers: 2
out_dir: runs/finetune
resume: null
cache: auto
cache_budget_mb: 1024
cache_views: 2
cache_dtype: auto
log_every: 10
zero_shot_head: true
prompt: a photo of a {}.
"""
OLD_FLAT_FINGERPRINT = "b0c7d275094fbb31"


def quiet_load(*args, **kwargs) -> FinetuneConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return load_config(*args, **kwargs)


def test_defaults_are_valid_and_run_the_demo():
    cfg = load_config()
    assert (cfg.model.name, cfg.data.source, cfg.unfreeze.schedule) == ("demo", "demo", "lp-ft")
    assert cfg.task == "classify" and cfg.data.workers == "auto"
    assert cfg.validate() is cfg and cfg.deprecations == []
    assert cfg.unfreeze == UnfreezeOptions(), "the unfreeze section is the Unfreezer's options"


def test_overrides_are_typed_by_field(tmp_path):
    cfg = load_config(
        overrides=[
            "unfreeze.lr=1e-3",
            "run.epochs=3",
            "run.batch-size=32",
            "unfreeze.layer_decay=none",
            "run.grad_clip=null",
            "model.pretrained=true",
            "data.augmentation={hflip: 0.0, scale: [0.5, 1.0]}",
            "data.deterministic_train_transform=yes",
            "--run.seed=7",
            "unfreeze.no_weight_decay=pos_embed,cls_token",
            "data.workers=3",
        ]
    )
    assert cfg.unfreeze.lr == 1e-3 and isinstance(cfg.unfreeze.lr, float)
    assert (cfg.run.epochs, cfg.run.batch_size, cfg.run.seed) == (3, 32, 7)
    assert cfg.unfreeze.layer_decay == 1.0 and cfg.run.grad_clip is None  # none: decay off
    assert cfg.model.pretrained is True
    assert cfg.data.augmentation == {"hflip": 0.0, "scale": [0.5, 1.0]}
    assert cfg.data.deterministic_train_transform is True
    assert cfg.unfreeze.no_weight_decay == ("pos_embed", "cls_token")
    assert cfg.data.workers == 3
    tagged = load_config(overrides=["model.pretrained=laion2b_s34b_b79k"])
    assert tagged.model.pretrained == "laion2b_s34b_b79k"


def test_dotted_overrides_reach_every_unfreeze_option():
    cfg = load_config(
        overrides={
            "unfreeze.discriminative": "2.6",
            "unfreeze.train_norm": "true",
            "unfreeze.tower": "visual",
            "unfreeze.unlock_warmup_start": "0.2",
            "unfreeze.reset_state_on_unlock": "yes",
            "unfreeze.lr_schedule": "linear",
        }
    )
    u = cfg.unfreeze
    assert (u.discriminative, u.train_norm, u.tower) == (2.6, True, "visual")
    assert (u.unlock_warmup_start, u.reset_state_on_unlock, u.lr_schedule) == (0.2, True, "linear")


def test_nested_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {name: timm:test_vit, pretrained: false}\n"
        "unfreeze:\n  lr: 1e-3\n  schedule: gradual\n"  # YAML reads 1e-3 as a string
        "run:\n  epochs: 5\n"
    )
    cfg = load_config(path, {"run.epochs": 2})
    assert (cfg.unfreeze.lr, cfg.run.epochs, cfg.unfreeze.schedule) == (0.001, 2, "gradual")
    assert cfg.model.name == "timm:test_vit"


def test_a_scalar_section_sets_its_primary_field_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(
            overrides=["model=timm:test_vit", "data=demo", "cache=off", "unfreeze=full"]
        )
    assert (cfg.model.name, cfg.data.source) == ("timm:test_vit", "demo")
    assert (cfg.cache.mode, cfg.unfreeze.schedule) == ("off", "full")
    assert cfg.deprecations == []
    with pytest.raises(ConfigError, match=r"run: expected a mapping of run\.\* keys, got '3'"):
        load_config(overrides=["run=3"])


def test_legacy_flat_keys_map_to_dotted_keys_with_a_deprecation():
    with pytest.warns(FutureWarning, match=r"config key 'lr' is deprecated: use 'unfreeze\.lr'"):
        cfg = load_config(
            overrides={"lr": "0.01", "epochs": 2, "data_path": None, "cache_budget_mb": 64}
        )
    assert (cfg.unfreeze.lr, cfg.run.epochs, cfg.cache.budget_mb) == (0.01, 2, 64)
    assert cfg.deprecations == [
        f"config key {old!r} is deprecated: use {LEGACY_KEYS[old]!r} "
        "(the flat name stops working in the next release)"
        for old in ("lr", "epochs", "data_path", "cache_budget_mb")
    ]
    assert LEGACY_KEYS["data_path"] == "data.path" and LEGACY_KEYS["workers"] == "data.workers"
    # every legacy key names a real field
    every = {f"{s}.{n}" for s, cls in SECTIONS.items() for n in cls.__dataclass_fields__}
    assert set(LEGACY_KEYS.values()) <= every


def test_old_flat_config_yaml_loads_and_its_checkpoint_still_matches(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_FLAT_YAML)
    cfg = quiet_load(path)
    assert (cfg.unfreeze.schedule, cfg.unfreeze.lr, cfg.run.epochs) == ("gradual", 0.01, 3)
    assert cfg.unfreeze.layer_decay == 1.0 and cfg.data.workers == 2
    assert len(cfg.deprecations) == len(OLD_FLAT_YAML.splitlines()) - 3  # model, data, cache
    assert cfg.fingerprint_matches(OLD_FLAT_FINGERPRINT)
    assert cfg.fingerprint_matches(cfg.fingerprint())
    cfg.check_resume({**__import__("yaml").safe_load(OLD_FLAT_YAML)}, "runs/old")
    changed = cfg.with_overrides({"unfreeze.discriminative": 2.0})
    assert not changed.fingerprint_matches(OLD_FLAT_FINGERPRINT)


def test_every_problem_reported_at_once_with_dotted_keys_and_suggestions(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\nrun: {batchsize: 8, precision: fp16}\nunfreeze: {lr: fast}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.workers=-1", "run.grad_clip=0", "nonsense"])
    lines = str(info.value).splitlines()
    assert lines[0] == "7 problems in the configuration:"
    text = str(info.value)
    assert "override 'nonsense' is not key=value" in text
    assert "unknown key 'epoch'; did you mean 'run.epochs'?" in text
    assert "unknown key 'run.batchsize'; did you mean 'run.batch_size'?" in text
    assert "run.precision: 'fp16' is not one of auto, fp32, bf16" in text
    assert "unfreeze.lr: expected a number, got 'fast'" in text
    assert "data.workers: must be >= 0, got -1" in text
    assert "run.grad_clip: must be > 0 or none, got 0.0" in text


def test_single_problem_is_one_line():
    with pytest.raises(
        ConfigError, match=r"^bad configuration: run.epochs: expected an integer, got '2.5'$"
    ):
        load_config(overrides=["run.epochs=2.5"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=folder"], "data.path: source=folder needs a folder holding train/ and val/"),
        (
            ["data=folder", "data.path=/no/such/dir"],
            "data.path: folder /no/such/dir does not exist",
        ),
        (["data=csv", "data.train_csv=/no/t.csv"], "data.train_csv: file /no/t.csv does not exist"),
        (["data=hf"], "data.path: source=hf needs the Hugging Face dataset name"),
        (
            ["data=folderz"],
            "data.source: 'folderz' is not one of demo, folder, csv, hf; did you mean 'folder'?",
        ),
        (
            ["model.checkpoint=/no/w.safetensors"],
            "model.checkpoint: file /no/w.safetensors does not exist",
        ),
        (["model=tim:resnet18"], "did you mean 'timm:resnet18'?"),
        (["unfreeze.layer_decay=1.5"], "unfreeze.layer_decay: must be in (0, 1], got 1.5"),
        (["cache=maybe"], "cache.mode: 'maybe' is not one of auto, on, off"),
        (["model.prompt=a photo"], "model.prompt: must contain '{}'"),
        (["run.resume=/no/run"], "run.resume: run directory /no/run does not exist"),
        (["data.augmentation=3"], "data.augmentation: expected a mapping"),
        (["unfreeze.tower=visul"], "unfreeze.tower: 'visul' is not one of visual, text, both"),
        (["unfreeze.weight_decay=-1"], "unfreeze.weight_decay: must be a finite number >= 0"),
        (["unfreeze.lr=inf"], "unfreeze.lr: must be a finite number > 0, got inf"),
        (["task=contrastive"], "task: 'contrastive' is not one of classify"),
        (["data.workers=many"], "data.workers: expected an integer, got 'many'"),
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


def test_yaml_round_trip_is_equal_and_nested(tmp_path):
    cfg = load_config(
        overrides=[
            "unfreeze.lr=3e-4",
            "data.augmentation={hflip: 0.0}",
            "model.pretrained=tag",
            "unfreeze.layer_decay=0.75",
            "unfreeze.no_weight_decay=[pos_embed]",
        ]
    )
    assert list(cfg.to_dict()) == [
        "task",
        "model",
        "data",
        "unfreeze",
        "cache",
        "eval",
        "retain",
        "towers",
        "run",
    ]
    assert cfg.to_dict()["unfreeze"]["lr"] == 3e-4
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.deprecations == []
    assert again.fingerprint() == cfg.fingerprint()
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg


def test_fingerprint_ignores_only_non_trajectory_fields():
    base = FinetuneConfig()
    fp = base.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    for name, value in [
        ("run.out_dir", "elsewhere"),
        ("data.workers", 4),
        ("cache.mode", "off"),
        ("run.log_every", 1),
    ]:
        assert name in RESUME_IGNORED
        assert base.with_overrides({name: value}).fingerprint() == fp
    for name, value in [
        ("unfreeze.lr", 0.01),
        ("run.seed", 1),
        ("unfreeze.schedule", "full"),
        ("run.epochs", 9),
        ("model.name", "timm:test_vit"),
        ("unfreeze.discriminative", 2.6),
    ]:
        assert base.with_overrides({name: value}).fingerprint() != fp


def test_fingerprint_is_stable_across_processes():
    code = (
        "from layerlock.config import FinetuneConfig; "
        "print(FinetuneConfig.from_dict({'unfreeze.lr': 0.5}).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == FinetuneConfig.from_dict({"unfreeze.lr": 0.5}).fingerprint()


def test_resume_with_different_config_is_refused():
    saved = FinetuneConfig()
    FinetuneConfig(data=DataOptions(workers=3)).check_resume(saved, "runs/a")  # ignored field
    FinetuneConfig().check_resume(saved.to_dict(), "runs/a")
    with pytest.raises(
        ConfigError,
        match=(
            r"cannot resume runs/a: .*different config "
            r"\(unfreeze.lr: 0.001 -> 0.01; run.seed: 0 -> 2\)"
        ),
    ):
        FinetuneConfig(unfreeze=UnfreezeOptions(lr=0.01), run=RunOptions(seed=2)).check_resume(
            saved, "runs/a"
        )


def test_with_overrides_returns_a_validated_copy():
    base = FinetuneConfig()
    new = base.with_overrides({"unfreeze.schedule": "full", "run.resume": None})
    assert new.unfreeze.schedule == "full" and base.unfreeze.schedule == "lp-ft"
    with pytest.raises(ConfigError, match=r"run.epochs: must be >= 1, got 0"):
        base.with_overrides(["run.epochs=0"])


def test_workers_auto_is_a_policy(monkeypatch):
    import torch

    from layerlock.data import loading

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(loading, "available_cores", lambda: 16)
    assert loading.resolve_workers("auto", gpu, in_memory=True) == 0  # demo images in memory
    assert loading.resolve_workers("auto", gpu) == 8
    monkeypatch.setattr(loading, "available_cores", lambda: 1)
    assert loading.resolve_workers("auto", gpu) == 0
    assert loading.resolve_workers(DataOptions(workers=5).workers, cpu) == 5


def test_parse_overrides_accepts_dicts():
    assert parse_overrides({"batch-size": 4}) == ({"batch_size": 4}, [])
    assert parse_overrides(["a=b=c"]) == ({"a": "b=c"}, [])
    assert dotted_keys({"run": {"batch-size": 4}})[0] == {"run.batch_size": 4}


def test_cli_flags_map_to_dotted_keys_and_old_keys_print_one_line_each(capsys):
    import argparse

    from layerlock.cli.finetune import FLAGS, add_arguments, config_from_args

    assert all("." in key for key, _, _ in FLAGS.values())
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        ["--lr", "0.01", "--epochs", "2", "--cache", "off", "--data-path", "x", "--workers", "3"]
    )
    cfg = config_from_args(args)
    assert (cfg.unfreeze.lr, cfg.run.epochs, cfg.cache.mode) == (0.01, 2, "off")
    assert (cfg.data.path, cfg.data.workers) == ("x", 3)
    assert capsys.readouterr().err == ""  # flags are not deprecated
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # printed once on stderr, not warned again
        cfg = config_from_args(p.parse_args(["lr=0.02", "seed=3", "unfreeze.layer_decay=0.5"]))
    assert (cfg.unfreeze.lr, cfg.run.seed, cfg.unfreeze.layer_decay) == (0.02, 3, 0.5)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "layerlock finetune: warning: config key 'lr' is deprecated: use 'unfreeze.lr' "
        "(the flat name stops working in the next release)",
        "layerlock finetune: warning: config key 'seed' is deprecated: use 'run.seed' "
        "(the flat name stops working in the next release)",
    ]
