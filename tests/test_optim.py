"""Named param groups, layer-wise LR, weight-decay exclusions and the LR formula at every step."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from layerlock import layer_groups
from layerlock.optim import (
    LRSchedule,
    group_multipliers,
    layer_group_of,
    no_weight_decay_names,
    param_groups,
)
from layerlock.unfreezer import Unfreezer


@pytest.fixture
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", num_classes=3)


def test_multipliers_decay_from_the_top(vit: nn.Module) -> None:
    groups = layer_groups(vit)
    m = group_multipliers(groups, layer_decay=0.5, discriminative=2.0)
    assert list(m) == groups.names
    for depth, name in enumerate(reversed(groups.names)):
        assert m[name] == pytest.approx(0.5**depth / 2.0**depth, rel=1e-15)
    assert m["head"] == 1.0


def test_every_parameter_once_with_weight_decay_exclusions(vit: nn.Module) -> None:
    groups = layer_groups(vit)
    pgs = param_groups(groups, lr=0.1, weight_decay=0.05, layer_decay=0.8)
    seen = [id(p) for pg in pgs for p in pg["params"]]
    assert len(seen) == len(set(seen)) == len(list(vit.parameters()))
    by_id = {id(p): n for n, p in vit.named_parameters()}
    norm_ids = {id(p) for m in vit.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    for pg in pgs:
        assert layer_group_of(pg["name"]) == pg["layer_group"]
        for p in pg["params"]:
            name = by_id[id(p)]
            excluded = (
                p.ndim <= 1
                or name.endswith("bias")
                or id(p) in norm_ids
                or name in vit.no_weight_decay()
            )
            assert (pg["weight_decay"] == 0.0) == excluded, name
            assert pg["name"].endswith("/no_decay") == excluded, name
    nd = no_weight_decay_names(vit)
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= nd
    assert "blocks.0.attn.qkv.weight" not in nd
    assert no_weight_decay_names(vit, extra=["blocks.0.attn.*"]) >= {"blocks.0.attn.qkv.weight"}


def expected_lr(
    t: int, name: str, *, base: float, mult: dict[str, float], unlocked: dict[str, int | None]
) -> float:
    """The documented formula, written out independently of layerlock.optim."""
    total, warm, r, uw, us = 16, 3, 0.1, 4, 0.2
    group = name.removesuffix("/no_decay")
    u = unlocked.get(group)
    if u is None:
        return 0.0
    if t < warm:
        main = (t + 1) / warm
    else:
        p = min(1.0, (t - warm) / (total - warm))
        main = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))
    ramp = 1.0 if u == 0 else us + (1 - us) * min(1.0, (t - u) / uw)
    return base * mult[group] * main * ramp


def test_lr_of_every_group_at_every_step_matches_the_formula(vit: nn.Module) -> None:
    names = layer_groups(vit).names
    u = Unfreezer(
        vit,
        "s0:1, s5:3, s9:all",
        epochs=2,
        steps_per_epoch=8,
        lr=0.01,
        weight_decay=0.05,
        layer_decay=0.7,
        discriminative=1.3,
        warmup_steps=3,
        min_lr_ratio=0.1,
        unlock_warmup_steps=4,
        unlock_warmup_start=0.2,
    )
    mult = {n: 0.7**d / 1.3**d for d, n in enumerate(reversed(names))}
    # shuffle param-group order: lookups are by name, so nothing may change
    u.optimizer.param_groups.reverse()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    checked = 0
    for t in range(16):
        unlocked: dict[str, int | None] = {"head": 0}
        if t >= 5:
            unlocked |= {"blocks.5": 5, "blocks.4": 5}
        if t >= 9:
            unlocked |= {n: 9 for n in names if n not in unlocked}
        for pg in u.optimizer.param_groups:
            want = expected_lr(t, pg["name"], base=0.01, mult=mult, unlocked=unlocked)
            assert math.isclose(pg["lr"], want, rel_tol=1e-12, abs_tol=0.0), (
                t,
                pg["name"],
                pg["lr"],
                want,
            )
            assert math.isclose(u.lr_of(pg["name"], t), want, rel_tol=1e-12, abs_tol=0.0)
            checked += 1
        if t in (0, 5, 9):  # a real step at the boundaries; the LRs do not depend on it
            nn.functional.cross_entropy(u.model(x), y).backward()
        u.step()
    assert checked == 16 * len(u.optimizer.param_groups)


def test_lr_schedule_kinds_and_floor() -> None:
    lin = LRSchedule(lr=2.0, total_steps=10, kind="linear", min_lr_ratio=0.5)
    assert [lin.main(t) for t in (0, 5, 10, 20)] == [1.0, 0.75, 0.5, 0.5]
    const = LRSchedule(lr=1.0, total_steps=5, kind="constant", warmup_steps=2)
    assert [const.main(t) for t in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    cos = LRSchedule(lr=1.0, total_steps=5)
    assert cos.main(0) == 1.0 and cos.main(5) == pytest.approx(0.0, abs=1e-15)
    assert cos.unlock(3, None) == cos.unlock(3, 0) == 1.0


def test_handed_in_optimizer_from_trainable_params_gets_the_rest_added(vit: nn.Module) -> None:
    from layerlock import lock

    lock(vit, 1)
    # what Hugging Face Trainer does: an optimizer over what requires grad right now
    opt = torch.optim.AdamW([p for p in vit.parameters() if p.requires_grad], lr=1e-3)
    with pytest.warns(UserWarning, match="do not carry layerlock group names"):
        u = Unfreezer(vit, "s0:1, s1:all", epochs=1, steps_per_epoch=3, optimizer=opt)
    held = {id(p) for pg in opt.param_groups for p in pg["params"]}
    assert held == {id(p) for p in vit.parameters()}
    before = vit.blocks[0].mlp.fc1.weight.detach().clone()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    for _ in range(3):
        nn.functional.cross_entropy(u.model(x), y).backward()
        u.step()
    assert not torch.equal(before, vit.blocks[0].mlp.fc1.weight), "later-unlocked params must train"


def test_factory_optimizer_keeps_names_and_is_managed(vit: nn.Module) -> None:
    u = Unfreezer(
        vit,
        "lp",
        epochs=1,
        steps_per_epoch=2,
        lr=0.1,
        optimizer=lambda pgs: torch.optim.SGD(list(reversed(pgs)), lr=0.1, momentum=0.9),
    )
    assert u.manage_lr and isinstance(u.optimizer, torch.optim.SGD)
    lrs = {pg["name"]: pg["lr"] for pg in u.optimizer.param_groups}
    assert lrs["head"] > 0 and lrs["head/no_decay"] > 0
    assert all(v == 0.0 for k, v in lrs.items() if not k.startswith("head"))


def test_create_optimizer_covers_every_group_with_the_unfreezers_rules(vit: nn.Module) -> None:
    from layerlock import UnfreezeOptions, create_optimizer, lock

    lock(vit, 1)  # locked groups are in the optimizer too
    opts = UnfreezeOptions(lr=0.1, weight_decay=0.02, layer_decay=0.5, discriminative=2.0)
    opt = create_optimizer(vit, opts, no_weight_decay=("blocks.0.attn.*",))
    assert isinstance(opt, torch.optim.AdamW)
    held = [id(p) for pg in opt.param_groups for p in pg["params"]]
    assert sorted(held) == sorted(id(p) for p in vit.parameters())  # each exactly once
    expected = param_groups(
        layer_groups(vit),
        lr=0.1,
        weight_decay=0.02,
        layer_decay=0.5,
        discriminative=2.0,
        no_weight_decay=["blocks.0.attn.*"],
    )
    got = [(pg["name"], pg["lr"], pg["weight_decay"]) for pg in opt.param_groups]
    assert got == [(pg["name"], pg["lr"], pg["weight_decay"]) for pg in expected]
    u = Unfreezer(vit, opts, epochs=1, steps_per_epoch=1, lr_schedule="constant")
    assert [pg["name"] for pg in u.optimizer.param_groups] == [g[0] for g in got]
    assert opts.lr == 0.1 and opts.lr_schedule == "cosine", "options are never modified"


def test_create_optimizer_factory_defaults_and_errors(vit: nn.Module) -> None:
    from layerlock import ConfigError, create_optimizer

    sgd = create_optimizer(vit, factory=lambda pgs: torch.optim.SGD(pgs, lr=1.0), lr=0.2)
    assert isinstance(sgd, torch.optim.SGD)
    assert {pg["lr"] for pg in sgd.param_groups} == {0.2}
    decayed = {pg["weight_decay"] for pg in create_optimizer(vit).param_groups}
    assert decayed == {0.0, 0.05}  # the one weight-decay default, none for norms/biases
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
        create_optimizer(vit, factory=lambda pgs: pgs)
    with pytest.raises(ConfigError, match="unknown unfreezing option 'layer_dacay'; did you"):
        create_optimizer(vit, layer_dacay=0.5)
    with pytest.raises(ConfigError, match=r"2 problems .*\n  lr: .*\n  weight_decay: must be"):
        create_optimizer(vit, lr=0.0, weight_decay=-1.0)
