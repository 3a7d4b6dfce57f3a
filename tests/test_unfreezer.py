"""The Unfreezer: locked parameters never move, optimizer state on re-lock, cheap steps."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import nn

import layerlock.unfreezer as unfreezer_module
from conftest import ConvBNNet
from layerlock.audit import audit, fingerprint
from layerlock.unfreezer import Unfreezer


def batch(t: int, shape: tuple[int, ...] = (4, 3, 32, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randn(*shape, generator=g), torch.randint(0, 3, (shape[0],), generator=g)


def train(
    u: Unfreezer, steps: int, on_step: Any = None, shape: tuple[int, ...] = (4, 3, 32, 32)
) -> None:
    for _ in range(steps):
        if on_step is not None:
            on_step(u)
        x, y = batch(u.global_step, shape)
        nn.functional.cross_entropy(u.model(x), y).backward()
        u.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        None,  # AdamW with weight decay
        lambda pgs: torch.optim.SGD(pgs, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
    ids=["adamw", "sgd-momentum"],
)
def test_locked_parameters_are_bit_identical_through_chain_thaw(make_opt: Any) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    u = Unfreezer(
        model,
        "chain-thaw:every=s3",
        epochs=1,
        steps_per_epoch=30,
        lr=0.05,
        weight_decay=0.1,
        optimizer=make_opt,
    )
    state: dict[str, Any] = {
        "fp": fingerprint(model),
        "set": u.trainable,
        "checks": 0,
        "moved": set(),
    }
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def check(u: Unfreezer) -> None:
        # a change happened in the previous step(): audit the interval that just ended
        if u.trainable != state["set"]:
            report = audit(model, state["fp"])
            assert report.ok, str(report)
            assert report.checked_params > 0
            state["checks"] += 1
            state["fp"], state["set"] = fingerprint(model), u.trainable
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n

    train(u, 30, on_step=check)
    assert audit(model, state["fp"]).ok
    assert state["checks"] == 8  # head, 7 single groups, then all
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert {n.split(".")[0] for n in moved} >= {"blocks", "head", "patch_embed"}


def test_zero_grad_instead_of_none_would_drift() -> None:
    """The failure the Unfreezer prevents: AdamW moves a parameter whose grad is zeros."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    lin(torch.randn(2, 3)).sum().backward()
    opt.step()
    before = lin.weight.detach().clone()
    lin.weight.requires_grad_(False)
    lin.weight.grad = torch.zeros_like(lin.weight)  # what zero_grad(set_to_none=False) leaves
    opt.step()
    assert not torch.equal(before, lin.weight)


def test_relocked_group_keeps_its_state_frozen_and_resumes_it() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    u = Unfreezer(model, "s0:blocks.5; s2:head; s4:blocks.5", epochs=1, steps_per_epoch=6, lr=0.01)
    w = model.blocks[5].mlp.fc1.weight
    train(u, 2)
    assert u.trainable_groups() == ["head"]
    saved = {k: v.clone() for k, v in u.optimizer.state[w].items()}
    assert int(saved["step"]) == 2
    train(u, 2)
    assert all(torch.equal(saved[k], u.optimizer.state[w][k]) for k in saved), (
        "state moved while locked"
    )
    assert u.trainable_groups() == ["blocks.5"]
    train(u, 1)
    assert int(u.optimizer.state[w]["step"]) == 3  # resumed from the kept state


def test_reset_state_on_unlock_drops_the_state() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    u = Unfreezer(
        model,
        "s0:blocks.5; s2:head; s4:blocks.5",
        epochs=1,
        steps_per_epoch=6,
        lr=0.01,
        reset_state_on_unlock=True,
    )
    w = model.blocks[5].mlp.fc1.weight
    train(u, 4)
    assert w not in u.optimizer.state
    train(u, 1)
    assert int(u.optimizer.state[w]["step"]) == 1


def test_lock_runs_only_when_the_trainable_set_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = unfreezer_module.lock

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("groups"))
        return real(*args, **kwargs)

    monkeypatch.setattr(unfreezer_module, "lock", counting)
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    u = Unfreezer(model, "gradual:every=s5", epochs=1, steps_per_epoch=16, lr=0.01)
    train(u, 16)
    assert calls == [
        ["head"],
        ["blocks.5", "head"],
        ["blocks.4", "blocks.5", "head"],
        ["blocks.3", "blocks.4", "blocks.5", "head"],
    ]


def test_frozen_bn_statistics_and_train_norm() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    u = Unfreezer(
        model,
        "lp-ft:at=s3",
        epochs=1,
        steps_per_epoch=6,
        lr=0.05,
        freeze_bn_stats=True,
        train_norm=True,
    )
    fp_buffers = fingerprint(model)
    assert fp_buffers.buffers, "locked groups' BatchNorm buffers are fingerprinted"
    lrs = {pg["name"]: pg["lr"] for pg in u.optimizer.param_groups}
    assert lrs["stem"] == 0.0 and lrs["stem/no_decay"] > 0
    bn_w = model.stem[1].weight.detach().clone()
    conv_w = model.stem[0].weight.detach().clone()
    train(u, 3, shape=(4, 3, 8, 8))
    report = audit(model, fp_buffers)
    assert report.changed_buffers == () and report.checked_buffers == 12
    assert not torch.equal(bn_w, model.stem[1].weight), (
        "train_norm keeps norms of locked groups training"
    )
    assert torch.equal(conv_w, model.stem[0].weight)
    assert u.trainable_groups() == u.groups.names  # step 3: everything unlocked
    train(u, 1, shape=(4, 3, 8, 8))  # BN stats update again
    assert not audit(model, fp_buffers).ok


def test_sync_to_a_step_and_listeners() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    events: list[Any] = []
    u = Unfreezer(model, "0:1, 2:all", epochs=4, steps_per_epoch=5, lr=0.01)
    u.add_listener(events.append)
    assert u.sync(9) is False and u.epoch == 1
    assert u.sync(10) is True and u.epoch == 2
    assert len(events) == 1 and events[0].step == 10
    assert u.trainable_groups() == u.groups.names
    assert all(p.requires_grad for p in model.parameters())
    assert u.sync(3) is True and u.trainable_groups() == ["head"]


def test_tiny_vit_created_frozen_parameter_stays_frozen(tiny_vit: nn.Module) -> None:
    u = Unfreezer(tiny_vit, "full", epochs=1, steps_per_epoch=2, lr=0.01)
    assert not tiny_vit.pos_embed.requires_grad
    pos = tiny_vit.pos_embed.detach().clone()
    train(u, 2, shape=(2, 3, 16, 16))
    assert torch.equal(pos, tiny_vit.pos_embed)


def test_fit_loop_helper_records_events_lrs_and_checks_loader_length() -> None:
    from layerlock.errors import ConfigError
    from layerlock.integrations.loop import evaluate, fit

    torch.manual_seed(0)
    model = ConvBNNet()
    data = [batch(t, (4, 3, 8, 8)) for t in range(3)]
    u = Unfreezer(model, "gradual", epochs=2, steps_per_epoch=3, lr=0.05)
    hist = fit(
        u,
        data,
        nn.functional.cross_entropy,
        epochs=2,
        grad_clip=1.0,
        eval_fn=lambda m: evaluate(m, data),
    )
    assert len(hist.losses) == 6 and len(hist.eval) == 2 and u.global_step == 6
    assert hist.events == ["step 0 (epoch 0): +head", "step 3 (epoch 1): +blocks.2"]
    assert hist.lrs[0]["blocks.2"] == 0.0 and hist.lrs[3]["blocks.2"] > 0.0
    u2 = Unfreezer(ConvBNNet(), "full", epochs=1, steps_per_epoch=5)
    with pytest.raises(ConfigError, match="epoch 0 had 3 batches.*steps_per_epoch=5"):
        fit(u2, data, nn.functional.cross_entropy, epochs=1)


def test_options_object_schedule_text_and_keyword_overrides_agree() -> None:
    from layerlock.errors import ConfigError
    from layerlock.options import UnfreezeOptions
    from layerlock.schedule import parse_schedule

    opts = UnfreezeOptions(schedule="0:1, 1:all", lr=0.01, weight_decay=0.0, layer_decay=0.5)
    a = Unfreezer(ConvBNNet(), opts, epochs=2, steps_per_epoch=2)
    b = Unfreezer(
        ConvBNNet(),
        "0:1, 1:all",
        epochs=2,
        steps_per_epoch=2,
        lr=0.01,
        weight_decay=0.0,
        layer_decay=0.5,
    )
    c = Unfreezer(
        ConvBNNet(),
        parse_schedule("0:1, 1:all"),
        epochs=2,
        steps_per_epoch=2,
        lr=0.01,
        weight_decay=0.0,
        layer_decay=0.5,
    )
    d = Unfreezer(ConvBNNet(), opts, epochs=2, steps_per_epoch=2, lr=0.02)  # keyword wins
    assert a.options == b.options and str(a.schedule) == str(c.schedule)
    lrs = [{pg["name"]: pg["lr"] for pg in u.optimizer.param_groups} for u in (a, b, c, d)]
    assert lrs[0] == lrs[1] == lrs[2] and lrs[3]["head"] == 2 * lrs[0]["head"]
    assert d.options.lr == 0.02 and opts.lr == 0.01
    default = Unfreezer(ConvBNNet(), epochs=1, steps_per_epoch=1)
    assert default.options == UnfreezeOptions() and default.freeze_bn_stats is True
    with pytest.raises(ConfigError, match="unknown unfreezing option 'lr_sched'; did you mean"):
        Unfreezer(ConvBNNet(), "full", epochs=1, steps_per_epoch=1, lr_sched="linear")
    with pytest.raises(ConfigError, match=r"2 problems in the unfreezing options:\n  lr: "):
        Unfreezer(ConvBNNet(), "full", epochs=1, steps_per_epoch=1, lr=-1, tower="vision")


def test_fit_removes_its_listener_so_calls_do_not_pile_up() -> None:
    from layerlock.integrations.loop import fit

    torch.manual_seed(0)
    data = [batch(t, (4, 3, 8, 8)) for t in range(3)]
    u = Unfreezer(ConvBNNet(), "gradual", epochs=4, steps_per_epoch=3, lr=0.05)
    first = fit(u, data, nn.functional.cross_entropy, epochs=2)
    assert u._listeners == []
    seen = list(first.events)
    second = fit(u, data, nn.functional.cross_entropy, epochs=2, start_epoch=2)
    assert u._listeners == []
    # the first call's history got no events from the second call
    assert first.events == seen and seen[-1] == "step 6 (epoch 2): +blocks.1"
    assert second.events == ["step 9 (epoch 3): +blocks.0"]
    events: list[Any] = []
    u.add_listener(events.append)
    u.remove_listener(events.append)
    u.remove_listener(events.append)  # unknown: ignored
    assert u._listeners == []
