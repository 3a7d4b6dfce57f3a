"""task=clip: OpenCLIP's loss and gradients, open_clip_train's metrics, tower schedules,
the tower cache, exact resume and the embedded demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from layerlock import layer_groups
from layerlock.config import load_config
from layerlock.finetune import finetune
from layerlock.finetune.contrastive import (
    ContrastiveTask,
    combined_schedule,
    retrieval_metrics,
    tower_plans,
    tower_schedules,
    tower_unfreezer,
    zero_shot_classifier,
)
from layerlock.runs import load_weights, read_jsonl

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**TINY)


def clip_config(tmp_path: Path, *overrides: str) -> object:
    return load_config(
        overrides=[
            "task=clip",
            "data.shots_per_class=4",
            "run.batch_size=8",
            "run.epochs=2",
            "run.precision=fp32",
            "run.device=cpu",
            "data.workers=0",
            "eval.at_start=false",
            f"run.out_dir={tmp_path / 'run'}",
            *overrides,
        ]
    )


# -- loss ----------------------------------------------------------------------------------
def test_loss_and_gradients_equal_open_clip(tmp_path: Path) -> None:
    task = ContrastiveTask(clip_config(tmp_path))
    task.loss_kind = "clip"
    model = tiny_clip()
    ref = tiny_clip()
    x = torch.randn(4, 3, 32, 32)
    t = torch.randint(1, 400, (4, 16))
    stats = task.forward(model, x, t)
    stats.loss.backward()
    img, txt, scale = ref(x, t)
    expected = ClipLoss()(img, txt, scale)
    expected.backward()
    assert torch.equal(stats.loss, expected)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    assert stats.counts["seen"] == 4.0


# -- metrics -------------------------------------------------------------------------------
def test_retrieval_by_hand() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    m = retrieval_metrics(image, text)
    # scores image i . text j: image 0 -> 1.0, 0.6, 0.0 (its text first: rank 1);
    # image 1 -> 0.0, 0.8, 1.0 (rank 2); image 2 -> 0.6, 1.0, 0.8 (rank 2)
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_mean_rank"] == pytest.approx(5 / 3)
    assert m["image_to_text_median_rank"] == 2.0
    assert m["image_to_text_R@5"] == 1.0
    # identical captions are one caption: any of them is a hit
    same = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    assert retrieval_metrics(image, text, same)["image_to_text_R@1"] == 1.0


def test_retrieval_equals_open_clip_train_on_unique_captions() -> None:
    from open_clip_train.train import get_clip_metrics

    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    ours = retrieval_metrics(image, text)
    theirs = get_clip_metrics(image, text, torch.tensor(10.0))
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(float(v)), k


def test_zero_shot_classifier_by_hand() -> None:
    # "text embeddings": the first token id picks a row of this table
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])

    def encode_text(tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.nn.functional.normalize(table[tokens[:, 0]], dim=-1)

    ids = {"a cat": 0, "the cat": 2, "a dog": 1, "the dog": 3}

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[ids[t]] for t in texts])

    w = zero_shot_classifier(
        encode_text,
        tokenizer,
        ["cat", "dog"],
        ["a {}".format, "the {}".format],
        torch.device("cpu"),
    )
    cat = (torch.tensor([1.0, 0.0]) + torch.tensor([1.0, 1.0]) / 2**0.5) / 2
    assert torch.allclose(w[:, 0], cat / cat.norm())
    assert w.shape == (2, 2)


# -- towers --------------------------------------------------------------------------------
def test_lit_locks_the_image_tower(tmp_path: Path) -> None:
    model = tiny_clip()
    cfg = clip_config(tmp_path, "unfreeze=lit", "towers.text_lr=1e-4")
    u = tower_unfreezer(model, cfg, epochs=2, steps_per_epoch=3)
    names = u.trainable_groups()
    assert all(not n.startswith("visual.") for n in names)
    assert {"text.embeddings", "text.proj", "logit_scale"} <= set(names)
    assert not any(p.requires_grad for p in model.visual.parameters())
    lrs = {pg["name"]: pg["lr"] for pg in u.optimizer.param_groups}
    assert lrs["text.proj"] == pytest.approx(1e-4)
    assert lrs["logit_scale/no_decay"] == pytest.approx(1e-3)
    assert lrs["visual.proj"] == 0.0


def test_per_tower_schedules_merge(tmp_path: Path) -> None:
    model = tiny_clip()
    groups = layer_groups(model)
    cfg = clip_config(tmp_path, "towers.visual=gradual", "towers.text=0:1, 1:all")
    assert tower_schedules(cfg) == {"visual": "gradual", "text": "0:1, 1:all"}
    plans = tower_plans(groups, tower_schedules(cfg), epochs=3, steps_per_epoch=2)
    sched = combined_schedule(groups, plans)
    plan = sched.resolve(groups, epochs=3, steps_per_epoch=2)
    at = lambda s: {groups[i].name for i in plan.trainable_at(s)}  # noqa: E731
    assert at(0) == {"visual.proj", "text.proj", "logit_scale"}
    assert at(2) == {"visual.layer.1", "visual.proj", "logit_scale"} | {
        g.name for g in groups if g.name.startswith("text.")
    }
    with pytest.raises(Exception, match="both towers are locked"):
        tower_plans(groups, {"visual": "locked", "text": "locked"}, 1, 1)


# -- runs ----------------------------------------------------------------------------------
def test_demo_default_runs(tmp_path: Path) -> None:
    cfg = clip_config(tmp_path, "run.epochs=1", "eval.at_start=true")
    result = finetune(cfg)
    rows = read_jsonl(result.run_dir / "epochs.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1]
    start = rows[0]
    # the shipped model knows 0-4 and not yet 5-9
    assert start["digits0-4/zeroshot-val-top1"] > 0.9
    assert start["digits5-9/zeroshot-val-top1"] < 0.5
    for key in ("image_to_text_R@1", "text_to_image_median_rank", "clip_val_loss"):
        assert key in rows[-1]


@pytest.mark.slow
def test_cached_lit_equals_uncached(tmp_path: Path) -> None:
    common = ("unfreeze=lit", "data.deterministic_train_transform=true", "cache.dtype=float32")
    losses = {}
    for mode in ("off", "on"):
        seen: list[float] = []
        cfg = clip_config(tmp_path / mode, *common, f"cache.mode={mode}")
        finetune(cfg, on_step=lambda step, loss, seen=seen: seen.append(loss))
        losses[mode] = seen
        records = [
            json.loads(x)
            for x in (tmp_path / mode / "run" / "cache.jsonl").read_text().splitlines()
        ]
        assert records[0]["train_cached"] == (mode == "on"), records[0]["line"]
    assert np.allclose(losses["off"], losses["on"], atol=1e-4), (losses["off"], losses["on"])


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path: Path) -> None:
    base = ("towers.visual=0:0, 1:1", "towers.text=gradual", "run.epochs=2")
    full = finetune(clip_config(tmp_path / "full", *base))
    expected = load_weights(full.run_dir / "model.safetensors")
    for stop in (2, 4):  # steps: 3 per epoch
        cfg = clip_config(tmp_path / f"stop{stop}", *base)
        first = finetune(cfg, stop_after=stop)
        assert first.interrupted
        again = finetune(cfg.with_overrides({"run.resume": str(first.run_dir)}))
        got = load_weights(again.run_dir / "model.safetensors")
        for k, v in expected.items():
            assert torch.equal(v, got[k]), (stop, k)
