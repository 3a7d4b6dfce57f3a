"""finetune with the frozen-prefix feature cache (``cache=auto|on|off``).

Cached and uncached runs must train alike when they see the same inputs (deterministic
train transform; or, with random augmentation, while epoch ``e`` still trains on view
``e``): the same loss at every step and the same metrics. A resumed cached run must equal
the uninterrupted one bit for bit, and every stage logs one line saying whether and why it
is cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from layerlock.finetune import RunResult, finetune
from layerlock.runs import read_jsonl
from test_finetune import tiny_config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # conftest restores the count after the test


def tiny_net(num_classes: int = 3) -> nn.Module:
    """A plain ``nn.Sequential`` CNN: no split recipe exists for it."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )
    model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}  # type: ignore[assignment]
    return model


def _run(tmp_path: Path, name: str, stop_after: int | None = None, **kw: object) -> RunResult:
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / name), **kw)
    return finetune(cfg, progress=False, stop_after=stop_after)


def _run_logged(tmp_path: Path, name: str, **kw: object) -> tuple[RunResult, torch.Tensor]:
    """The run and its training loss at every step."""
    losses: list[float] = []
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / name), **kw)
    result = finetune(cfg, progress=False, on_step=lambda step, loss: losses.append(loss))
    return result, torch.tensor(losses, dtype=torch.float64)


# The runs are compared by their losses, not their weights. AdamW divides each gradient
# by its running RMS, so float noise in a gradient that is ~0 (a key bias, which softmax
# ignores) becomes a step of lr: two runs whose features differ in the last bit (another
# CPU, another thread count, another batch composition of the prefix's matmuls) can end
# lr x steps apart in such weights. The loss does not feel those weights, and it moves at
# once when the features are wrong: features off by 1% change these losses by ~1e-3,
# another sample's features by ~1e-1, float32 rounding by ~1e-7.
FLOAT32_ATOL = 1e-5


def _assert_same_training(
    a: tuple[RunResult, torch.Tensor], b: tuple[RunResult, torch.Tensor], atol: float
) -> None:
    (ra, la), (rb, lb) = a, b
    assert len(la) == len(lb) > 0
    torch.testing.assert_close(lb, la, rtol=0, atol=atol)
    assert len(ra.epochs) == len(rb.epochs)
    for ea, eb in zip(ra.epochs, rb.epochs):
        assert ea["val_acc"] == eb["val_acc"] and ea["train_acc"] == eb["train_acc"]
        assert ea["val_loss"] == pytest.approx(eb["val_loss"], abs=atol)
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], abs=atol)


# -- (a) cached == uncached with the same inputs ------------------------------------------------


@pytest.mark.parametrize(
    ("model", "extra"),
    [("timm:test_vit", {}), ("timm:test_resnet", {"freeze_bn_stats": True})],
)
def test_cached_run_equals_uncached_run(tmp_path: Path, model: str, extra: dict) -> None:
    # float32 storage: the cache holds what the prefix computes, up to the batch
    # composition of the prefix's matmuls (float32 rounding).
    common = dict(
        model=model,
        schedule="0:1, 2:all",
        epochs=3,
        deterministic_train_transform=True,
        cache_dtype="float32",
        **extra,
    )
    off_logged = _run_logged(tmp_path, "off", cache="off", **common)
    on_logged = _run_logged(tmp_path, "on", cache="on", **common)
    _assert_same_training(off_logged, on_logged, atol=FLOAT32_ATOL)
    off, on = off_logged[0], on_logged[0]
    # stage 1 (head only, 2 epochs) trains and evaluates from the cache; stage 2 cannot
    assert [r["cached"] for r in on.epochs] == [True, True, False]
    assert [r["eval_cached"] for r in on.epochs] == [True, True, False]
    assert not any(r["cached"] or r["eval_cached"] for r in off.epochs)
    assert on.epochs[0]["cache_bytes"] > 0 and on.epochs[0]["cache_fill_s"] > 0
    assert on.epochs[1]["cache_fill_s"] == 0.0  # filled once per stage
    # the decisions are in the summary and in cache.jsonl
    summary = json.loads((on.run_dir / "summary.json").read_text())
    assert [d["train_cached"] for d in summary["cache"]] == [True, False]
    assert [d["epoch"] for d in read_jsonl(on.run_dir / "cache.jsonl")] == [1, 3]
    assert any("train cached" in n for n in summary["notes"])


def test_fp16_storage_stays_close(tmp_path: Path) -> None:
    # fp16 rounds each feature by at most 2**-11 (~5e-4) of itself, a twentieth of the
    # 1% error that moves the losses by ~2e-3: ~1e-4 at most.
    common = dict(schedule="lp", epochs=2, deterministic_train_transform=True)
    off = _run_logged(tmp_path, "off", cache="off", **common)
    on = _run_logged(tmp_path, "on", cache="on", cache_dtype="float16", **common)
    assert all(r["cached"] for r in on[0].epochs)
    _assert_same_training(off, on, atol=2e-4)


def test_random_augmentation_views_are_the_uncached_epochs(tmp_path: Path) -> None:
    # View v is drawn exactly like epoch v's augmentation: with 2 views and a 2-epoch
    # stage the cached run sees the uncached run's inputs.
    common = dict(schedule="lp", epochs=2, cache_dtype="float32", cache_views=2)
    off = _run_logged(tmp_path, "off", cache="off", **common)
    on = _run_logged(tmp_path, "on", cache="on", **common)
    assert all(r["cached"] for r in on[0].epochs)
    assert on[0].cache[0]["views"] == 2
    _assert_same_training(off, on, atol=FLOAT32_ATOL)
    # a third epoch reuses view 0: a deliberate difference from the uncached run
    three = dict(common, epochs=3)
    off3 = _run(tmp_path, "off3", cache="off", **three)
    on3 = _run(tmp_path, "on3", cache="on", **three)
    assert off3.epochs[2]["train_loss"] != pytest.approx(on3.epochs[2]["train_loss"], abs=1e-6)


# -- (b) one decision line per stage, with the reason -----------------------------------------


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            dict(schedule="full", cache="on"),
            r"cache=on is not possible, training uncached: nothing is locked below the "
            r"lowest trainable group \(boundary 0\)",
        ),
        (
            dict(model="module:{here}:tiny_net", schedule="lp", cache="auto"),
            r"uncached: no split recipe for torch\.nn\.modules\.container\.Sequential",
        ),
        (
            dict(model="timm:test_resnet", schedule="lp", freeze_bn_stats=False, cache="auto"),
            r"uncached: BatchNorm \S+ in the locked groups updates its statistics in training "
            r"\(set freeze_bn_stats=true to cache\)",
        ),
        (
            dict(schedule="lp", cache="auto", cache_budget_mb=0, epochs=4),
            r"train uncached \(cache off: the features need .* over the 0 B budget\)",
        ),
        (
            dict(schedule="0:1, 1:all", cache="auto", deterministic_train_transform=True),
            r"train uncached \(cache off: a 1-epoch stage does not repay the 1-view fill",
        ),
        (
            dict(schedule="lp", cache="off"),
            r"uncached: cache=off",
        ),
        (
            dict(schedule="lp", cache="auto", epochs=4, deterministic_train_transform=True),
            r"train cached \(cache on: 4 epoch\(s\) repay the 1-view fill",
        ),
    ],
    ids=["nothing-locked", "no-split", "bn-stats", "over-budget", "short-stage", "off", "auto"],
)
def test_decision_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kw: dict, expected: str
) -> None:
    kw = {k: v.format(here=__file__) if isinstance(v, str) else v for k, v in kw.items()}
    result = _run(tmp_path, "run", **{"epochs": 2, **kw}, stop_after=1)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " cache (epoch " in ln]
    assert len(lines) == 1, lines  # one line for the (first) stage
    assert lines[0].startswith("layerlock finetune: cache (epoch 1, ")
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert result.cache[0]["line"] in lines[0]
    logged = read_jsonl(result.run_dir / "cache.jsonl")
    assert logged[0]["line"] == result.cache[0]["line"]


# -- (c) exact resume with the cache on --------------------------------------------------------


def test_resume_mid_stage_with_cache_is_exact(tmp_path: Path) -> None:
    # random augmentation, 2 views, fp16 storage: the resumed session refills the cache
    # from the same seeds and continues bit for bit.
    common = dict(schedule="lp-ft", epochs=4, cache="on", cache_views=2)
    full = _run(tmp_path, "full", **common)
    part = _run(tmp_path, "part", **common, stop_after=4)  # step 4: inside epoch 2 of stage 1
    assert part.interrupted and part.steps == 4
    resumed = finetune(
        tiny_config(tmp_path, out_dir="ignored", resume=str(part.run_dir), **common),
        progress=False,
    )
    assert resumed.steps == full.steps == 12
    assert [r["cached"] for r in full.epochs] == [True, True, False, False]
    assert [r["cached"] for r in resumed.epochs] == [True, True, False, False]
    assert full.model is not None and resumed.model is not None
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert [r["val_loss"] for r in resumed.epochs] == [r["val_loss"] for r in full.epochs]
    # the resumed session decided again (same decision), logged in the same file
    decisions = read_jsonl(part.run_dir / "cache.jsonl")
    assert [(d["epoch"], d["train_cached"]) for d in decisions] == [
        (1, True),
        (2, True),
        (3, False),
    ]


def test_kept_evaluation_images_give_identical_metrics(tmp_path: Path) -> None:
    # nothing locked: no prefix to cache, but the preprocessed evaluation images are kept
    common = dict(schedule="full", epochs=2)
    off = _run(tmp_path, "off", cache="off", **common)
    auto = _run(tmp_path, "auto", cache="auto", **common)
    assert [r["eval_images_kept"] for r in auto.epochs] == [True, True]
    assert not any(r["cached"] or r["eval_cached"] for r in auto.epochs)
    assert [r["val_loss"] for r in auto.epochs] == [r["val_loss"] for r in off.epochs]
    assert "eval from preprocessed images kept in memory" in auto.cache[0]["line"]
    assert auto.epochs[0]["cache_bytes"] > 0 and off.epochs[0]["cache_bytes"] == 0


def test_changed_locked_weights_refill_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import layerlock.finetune.task as ft

    built: list[nn.Module] = []
    original = ft.build_classifier

    def capture(*args: object, **kw: object) -> object:
        out = original(*args, **kw)  # type: ignore[arg-type]
        built.append(out[0])
        return out

    monkeypatch.setattr(ft, "build_classifier", capture)

    def poke(step: int, loss: float) -> None:
        if step == 3:  # end of epoch 1: change a locked weight behind the run's back
            with torch.no_grad():
                built[0].patch_embed.proj.weight.add_(0.5)  # type: ignore[union-attr]

    cfg = tiny_config(tmp_path, schedule="lp", epochs=3, cache="on", out_dir=str(tmp_path / "r"))
    result = finetune(cfg, progress=False, on_step=poke)
    assert [r["cached"] for r in result.epochs] == [True, True, True]
    assert [r["cache_fill_s"] > 0 for r in result.epochs] == [True, True, False]
    assert [d["epoch"] for d in result.cache] == [1, 2]
    assert result.cache[1]["note"] == (
        "refilled: the frozen prefix's weights or BatchNorm statistics changed"
    )
