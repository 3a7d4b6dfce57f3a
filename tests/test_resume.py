"""Exact resume: a run stopped at any step and resumed equals the uninterrupted run bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

from layerlock.errors import ConfigError
from layerlock.unfreezer import Unfreezer

EPOCHS, SPE = 3, 4  # 12 steps
SCHEDULE = "s0:1, s4:3, s7:all"  # unfreezes at steps 4 and 7
KW: dict[str, Any] = dict(
    epochs=EPOCHS,
    steps_per_epoch=SPE,
    lr=0.01,
    weight_decay=0.05,
    layer_decay=0.8,
    warmup_steps=3,
    unlock_warmup_steps=3,
    unlock_warmup_start=0.25,
)


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def make(seed: int, schedule: str = SCHEDULE, **kw: Any) -> tuple[nn.Module, Unfreezer]:
    torch.manual_seed(seed)
    model = timm.create_model("test_vit", num_classes=3, drop_rate=0.0)
    return model, Unfreezer(model, schedule, **(KW | kw))


def run(model: nn.Module, u: Unfreezer, until: int) -> None:
    while u.global_step < until:
        g = torch.Generator().manual_seed(u.global_step)
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)
        nn.functional.cross_entropy(u.model(x), y).backward()
        u.step()


def snapshot(model: nn.Module, u: Unfreezer) -> dict[str, torch.Tensor]:
    out = {f"p:{k}": v.detach().clone() for k, v in model.state_dict().items()}
    by_id = {id(p): n for n, p in model.named_parameters()}
    for p, st in u.optimizer.state.items():
        for k, v in st.items():
            out[f"o:{by_id[id(p)]}:{k}"] = v.clone()
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    torch.use_deterministic_algorithms(True)
    model, u = make(0)
    run(model, u, EPOCHS * SPE)
    torch.use_deterministic_algorithms(False)
    return {"snap": snapshot(model, u), "lrs": [pg["lr"] for pg in u.optimizer.param_groups]}


@pytest.mark.parametrize(
    "stop",
    [2, 4, 5, 6, 7],
    ids=["mid-warmup", "right-after-unfreeze", "mid-unlock-ramp", "mid-epoch", "second-unfreeze"],
)
def test_resume_is_bit_identical(stop: int, reference: dict[str, Any], tmp_path: Path) -> None:
    model, u = make(0)
    run(model, u, stop)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "unfreezer": u.state_dict()}, ckpt)
    del model, u

    model2, u2 = make(123)  # other initial weights: everything must come from the checkpoint
    state = torch.load(ckpt, weights_only=True)
    model2.load_state_dict(state["model"])
    u2.load_state_dict(state["unfreezer"])
    assert u2.global_step == stop
    assert u2.trainable_groups() == state["unfreezer"]["trainable"]
    assert {n for n, p in model2.named_parameters() if p.requires_grad} == {
        n for g in u2.trainable_groups() for n in u2.groups[g].param_names
    }
    run(model2, u2, EPOCHS * SPE)
    snap = snapshot(model2, u2)
    ref = reference["snap"]
    assert snap.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(ref[k], snap[k])]
    assert different == []
    assert [pg["lr"] for pg in u2.optimizer.param_groups] == reference["lrs"]


def test_resume_without_loading_differs(reference: dict[str, Any]) -> None:
    """The check above can fail: skipping the optimizer state breaks bit-identity."""
    model, u = make(0)
    run(model, u, 5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model2, u2 = make(0)
    model2.load_state_dict(state)
    u2.sync(5)  # position restored, optimizer moments lost
    run(model2, u2, EPOCHS * SPE)
    snap = snapshot(model2, u2)
    assert any(
        not torch.equal(reference["snap"][k], snap[k])
        for k in reference["snap"]
        if k.startswith("p:")
    )


def test_chain_thaw_resume_with_relocked_groups(tmp_path: Path) -> None:
    kw = {"epochs": 1, "steps_per_epoch": 10}
    model, u = make(0, "chain-thaw:every=s1", **kw)
    run(model, u, 10)
    ref = snapshot(model, u)
    model, u = make(0, "chain-thaw:every=s1", **kw)
    run(model, u, 4)  # blocks.1 alone; stem and blocks.0 trained before, now locked with state
    torch.save({"model": model.state_dict(), "unfreezer": u.state_dict()}, tmp_path / "c.pt")
    model2, u2 = make(7, "chain-thaw:every=s1", **kw)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    model2.load_state_dict(state["model"])
    u2.load_state_dict(state["unfreezer"])
    run(model2, u2, 10)
    snap = snapshot(model2, u2)
    assert [k for k in ref if not torch.equal(ref[k], snap[k])] == []


def test_optimizer_groups_are_matched_by_name_on_load(tmp_path: Path) -> None:
    model, u = make(0)
    run(model, u, 5)
    sd = u.state_dict()
    model2, u2 = make(0, optimizer=lambda pgs: torch.optim.AdamW(list(reversed(pgs))))
    model2.load_state_dict(model.state_dict())
    u2.load_state_dict(sd)
    w2 = model2.blocks[5].attn.qkv.weight
    w = model.blocks[5].attn.qkv.weight
    assert torch.equal(u2.optimizer.state[w2]["exp_avg"], u.optimizer.state[w]["exp_avg"])


def test_load_rejects_a_checkpoint_of_other_groups() -> None:
    _, u = make(0)
    sd = u.state_dict()
    torch.manual_seed(0)
    other = timm.create_model("test_resnet", num_classes=3)
    u2 = Unfreezer(other, "full", epochs=1, steps_per_epoch=1)
    with pytest.raises(ConfigError, match="layer groups differ"):
        u2.load_state_dict(sd)
    sd["optimizer_groups"] = [*sd["optimizer_groups"][:-1], "bogus"]
    with pytest.raises(ConfigError, match="only in the checkpoint: \\['bogus'\\]"):
        u.load_state_dict(sd)
