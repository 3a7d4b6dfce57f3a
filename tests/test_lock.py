"""lock / unlock: explicit, idempotent, reversible; BatchNorm statistics frozen without module swaps."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import layerlock
from conftest import trainable_names
from layerlock.lock import frozen_bn_modules, group_trainable


def _group_sets(model: nn.Module) -> list[set[str]]:
    return [set(g.param_names) for g in layerlock.layer_groups(model)]


@pytest.mark.parametrize("k", range(0, 7))
def test_last_k_groups_train(cnn: nn.Module, k: int) -> None:
    sets = _group_sets(cnn)
    report = layerlock.lock(cnn, k)
    first = max(len(sets) - k, 0)
    expected = set().union(*sets[first:]) if k else set()
    assert trainable_names(cnn) == expected
    assert report.trainable_groups == (layerlock.layer_groups(cnn).names[first:] if k else [])
    assert report.total_params == sum(p.numel() for p in cnn.parameters())


def test_lock_is_idempotent_and_reentrant(cnn: nn.Module) -> None:
    layerlock.lock(cnn, 2)
    first = trainable_names(cnn)
    layerlock.lock(cnn, 2)
    assert trainable_names(cnn) == first
    layerlock.lock(cnn, 4)  # moves the boundary down ...
    layerlock.lock(cnn, 1)  # ... and back up: every group is set explicitly
    assert trainable_names(cnn) == set(_group_sets(cnn)[-1])


def test_negative_k_is_an_error(cnn: nn.Module) -> None:
    with pytest.raises(layerlock.ConfigError, match="unlocked_groups must be >= 0, got -1"):
        layerlock.lock(cnn, -1)
    with pytest.raises(layerlock.ConfigError, match="must be an int >= 0, got 1.5"):
        layerlock.lock(cnn, 1.5)  # type: ignore[arg-type]
    with pytest.raises(layerlock.ConfigError, match="not both"):
        layerlock.lock(cnn, 1, groups="head")


def test_surgical_selection(cnn: nn.Module) -> None:
    report = layerlock.lock(cnn, groups="blocks.0")
    assert report.trainable_groups == ["blocks.0"]
    assert trainable_names(cnn) == {
        n for n, _ in cnn.named_parameters() if n.startswith("blocks.0.")
    }
    assert layerlock.lock(cnn, groups=[0, -1]).trainable_groups == ["stem", "head"]
    with pytest.raises(layerlock.UnknownGroupError, match="did you mean 'blocks.1'"):
        layerlock.lock(cnn, groups="block.1")
    with pytest.raises(layerlock.UnknownGroupError, match="is empty"):
        layerlock.lock(cnn, groups=[])


def test_unlock_trains_everything_and_report_prints(cnn: nn.Module) -> None:
    layerlock.lock(cnn, 0)
    report = layerlock.unlock(cnn)
    assert trainable_names(cnn) == {n for n, _ in cnn.named_parameters()}
    text = str(report)
    assert text.startswith(f"trainable {report.total_params:,} / {report.total_params:,} (100.0%)")
    assert "unlocked groups (5/5)" in text
    assert group_trainable(cnn) == dict.fromkeys(layerlock.layer_groups(cnn).names, True)


def test_newly_frozen_parameters_lose_their_grad(cnn: nn.Module) -> None:
    cnn(torch.randn(2, 3, 8, 8)).sum().backward()
    layerlock.lock(cnn, 1)
    for name, p in cnn.named_parameters():
        if name.startswith("head."):
            assert p.grad is not None
        else:
            assert p.grad is None, name


def test_parameters_created_frozen_stay_frozen(tiny_vit: nn.Module) -> None:
    assert not tiny_vit.pos_embed.requires_grad
    layerlock.lock(tiny_vit, 0)
    layerlock.unlock(tiny_vit)
    assert not tiny_vit.pos_embed.requires_grad
    layerlock.lock(tiny_vit, groups="stem")
    assert not tiny_vit.pos_embed.requires_grad and tiny_vit.cls_token.requires_grad


def test_train_norm_and_train_bias(tiny_vit: nn.Module) -> None:
    layerlock.lock(tiny_vit, 1, train_norm=True)
    norm_names = {n for n in trainable_names(tiny_vit) if not n.startswith(("head.", "norm."))}
    assert norm_names and all(".norm" in n for n in norm_names)
    layerlock.lock(tiny_vit, 0, train_bias=True)
    assert trainable_names(tiny_vit) and all(n.endswith("bias") for n in trainable_names(tiny_vit))
    layerlock.lock(tiny_vit, 0)  # options are not sticky: each call sets everything
    assert trainable_names(tiny_vit) == set()


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


def test_freeze_bn_stats_survives_train_and_is_reversible(cnn: nn.Module) -> None:
    modules_before = {n: id(m) for n, m in cnn.named_modules()}
    keys_before = list(cnn.state_dict())
    layerlock.lock(cnn, 2, freeze_bn_stats=True)  # blocks.2 and head train
    assert frozen_bn_modules(cnn) == ["stem.1", "blocks.0.1", "blocks.1.1"]
    before = _bn_buffers(cnn)
    cnn.train()  # would normally switch every BatchNorm back to updating statistics
    for _ in range(3):
        cnn(torch.randn(4, 3, 8, 8) * 3 + 1)
    after = _bn_buffers(cnn)
    for name in before:
        frozen = name.startswith(("stem.1.", "blocks.0.1.", "blocks.1.1."))
        assert torch.equal(before[name], after[name]) == frozen, name
    # frozen BN normalises with its running statistics: same output as in eval mode
    x = torch.randn(4, 3, 8, 8)
    cnn.train()
    out_train = cnn.stem(x)
    cnn.eval()
    assert torch.equal(out_train, cnn.stem(x))  # the same computation, bit for bit
    # reversible: unlocking restores ordinary BatchNorm, no module was replaced
    cnn.train()
    layerlock.unlock(cnn)
    assert frozen_bn_modules(cnn) == []
    assert cnn.stem[1].training
    snap = _bn_buffers(cnn)
    cnn(torch.randn(4, 3, 8, 8))
    assert not torch.equal(snap["stem.1.running_mean"], cnn.stem[1].running_mean)
    assert {n: id(m) for n, m in cnn.named_modules()} == modules_before
    assert list(cnn.state_dict()) == keys_before


def test_freeze_bn_stats_with_everything_unlocked_freezes_nothing(cnn: nn.Module) -> None:
    report = layerlock.lock(cnn, 99, freeze_bn_stats=True)
    assert report.frozen_bn == () and frozen_bn_modules(cnn) == []


def test_state_dict_round_trip_unchanged(cnn: nn.Module) -> None:
    layerlock.lock(cnn, 1, freeze_bn_stats=True)
    state = copy.deepcopy(cnn.state_dict())
    fresh = type(cnn)()
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k])
    clone = copy.deepcopy(cnn)  # the flag travels with a deep copy and still works
    assert frozen_bn_modules(clone) == frozen_bn_modules(cnn)


def test_batchnorm_act_keeps_its_activation() -> None:
    model = timm.create_model("efficientnet_b0", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        layerlock.lock(model, 0, freeze_bn_stats=True)
        model.train()
        model.drop_rate = 0.0
        for m in model.modules():
            if hasattr(m, "drop_path") and isinstance(m.drop_path, nn.Module):
                m.drop_path.eval()
        out = model.eval()(x)
    assert torch.equal(ref, out)  # the same eval-mode computation before and after lock
    names = frozen_bn_modules(model)
    assert "bn1" in names and type(model.bn1).__name__ == "BatchNormAct2d"


def test_sync_batchnorm_is_frozen_too() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    layerlock.lock(model, 1, freeze_bn_stats=True)
    before = model[1].running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 4, 4))  # would need a process group if it were in training mode
    assert torch.equal(before, model[1].running_mean)


def test_lock_through_ddp_style_wrapper(cnn: nn.Module) -> None:
    wrapper = nn.DataParallel(cnn)
    layerlock.lock(wrapper, 1)
    assert trainable_names(cnn) == {"head.weight", "head.bias"}


def test_report_renders_with_rich(cnn: nn.Module) -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(layerlock.lock(cnn, 2))
    text = console.export_text()
    assert "blocks.2" in text and "yes" in text
