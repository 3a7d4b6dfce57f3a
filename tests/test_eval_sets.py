"""Several evaluation sets, the demo's shifted sets, and the evaluation before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layerlock.config import load_config
from layerlock.data.evalsets import EvalSource, parse_eval_sets
from layerlock.data.shifts import SHIFTS, shift_images
from layerlock.errors import ConfigError
from layerlock.finetune import finetune
from layerlock.runs import read_jsonl
from test_finetune import make_folder, tiny_config


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("demo-twisted", r"unknown built-in set 'demo-twisted'.*did you mean 'demo-shifted'"),
        ("folder:/x", r"give 'folder:/x' a name: NAME=folder:/x"),
        ("a=zip:/x", r"unknown kind 'zip' in 'zip:/x'; kinds: folder, csv, hf"),
        ("a=folder:", r"a=folder: names no location"),
        ("a=demo-thick,a=demo-noisy", r"the name 'a' is used twice"),
        ({"a/b": "demo"}, r"set name 'a/b' must be non-empty and without '/'"),
    ],
)
def test_eval_set_errors_name_the_value(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_eval_sets(spec)  # type: ignore[arg-type]


def test_eval_sets_parse_builtin_and_named() -> None:
    sets = parse_eval_sets("demo, demo-noisy ,mine=csv:a.csv,h=hf:beans:validation")
    assert sets == {
        "demo": EvalSource("demo", "demo", ""),
        "demo-noisy": EvalSource("demo-noisy", "demo", "noisy"),
        "mine": EvalSource("mine", "csv", "a.csv"),
        "h": EvalSource("h", "hf", "beans", "validation"),
    }


def test_config_reports_eval_and_retain_problems_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"eval.sets": "demo-twisted", "retain.max_drop": 200})
    text = str(info.value)
    assert "eval.sets: unknown built-in set 'demo-twisted'" in text
    assert "retain.max_drop: must be in [0, 100]" in text
    with pytest.raises(ConfigError, match=r"retain.set: 'demo-thick' is not an evaluation set"):
        load_config(overrides={"retain": "demo-thick"})
    assert load_config(overrides={"retain": "val"}).retain.set == "val"
    # eval.sets=auto (the default) gives the demo its shifted sets
    assert load_config(overrides={"retain": "demo-noisy"}).retain.set == "demo-noisy"
    with pytest.raises(ConfigError, match=r"'demo-noisy' is not an evaluation set; sets: val"):
        load_config(overrides={"retain": "demo-noisy", "data": "folder", "data.path": "."})


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shifts_are_deterministic_and_change_the_images(name: str) -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((6, 28, 28), np.uint8)
    images[:, 8:20, 11:17] = rng.integers(150, 256, (6, 12, 6))
    a, b = shift_images(images, name, seed=3), shift_images(images, name, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == images.shape
    assert not np.array_equal(a, images)


def test_extra_sets_are_evaluated_every_epoch_and_before_training(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    make_folder(tmp_path / "shifted", train=1, val=3, seed=5)
    cfg = tiny_config(
        tmp_path,
        epochs=2,
        **{"eval.sets": f"other=folder:{tmp_path / 'shifted' / 'val'}", "eval.at_start": True},
    )
    result = finetune(cfg)
    rows = read_jsonl(result.run_dir / "epochs.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0]["step"] == 0 and rows[0]["train_loss"] is None
    for r in rows:
        assert 0.0 <= r["other/val_acc"] <= 1.0 and r["other/val_loss"] > 0
    # epoch 0 is the untrained model; the first set is the validation split
    assert rows[0]["val_acc"] == result.epochs[0]["val_acc"]


def test_resume_does_not_evaluate_the_start_again(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=2, **{"eval.at_start": True})
    first = finetune(cfg, stop_after=2)
    resumed = finetune(
        tiny_config(tmp_path, epochs=2, resume=str(first.run_dir), **{"eval.at_start": True})
    )
    assert [r["epoch"] for r in resumed.epochs] == [0, 1, 2]
    full = finetune(
        tiny_config(tmp_path, epochs=2, out_dir=str(tmp_path / "full"), **{"eval.at_start": True})
    )
    assert [r["val_loss"] for r in resumed.epochs] == [r["val_loss"] for r in full.epochs]


def test_demo_shift_set_needs_the_demo_classes(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, **{"eval.sets": "demo-noisy"})
    with pytest.raises(ConfigError, match=r"demo-noisy holds the demo digits 5, 6, 7, 8, 9"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_extra_sets_do_not_hide_the_cached_evaluation(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    other = f"other=folder:{tmp_path / 'data' / 'val'}"
    plain = finetune(tiny_config(tmp_path, epochs=3, schedule="lp", out_dir=str(tmp_path / "a")))
    extra = finetune(
        tiny_config(
            tmp_path, epochs=3, schedule="lp", out_dir=str(tmp_path / "b"), **{"eval.sets": other}
        )
    )
    assert [r["eval_cached"] for r in extra.epochs] == [r["eval_cached"] for r in plain.epochs]
    assert any(r["eval_cached"] for r in plain.epochs)
    assert all(0.0 <= r["other/val_acc"] <= 1.0 for r in extra.epochs)
