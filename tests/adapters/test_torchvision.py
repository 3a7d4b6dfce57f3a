"""The torchvision adapter: partitions, group counts, lock, BatchNorm stats, no imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import layerlock
from layerlock.adapters.torchvision import TorchvisionAdapter

tvm = pytest.importorskip("torchvision.models")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def tiny_vit() -> nn.Module:
    return tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )


def build(name: str) -> nn.Module:
    """Random-init model; big ones on the meta device (names and shapes are all we need)."""
    torch.manual_seed(0)
    if name == "tiny_vit":
        return tiny_vit()
    if name in ("resnet18", "regnet_x_400mf"):  # RegNet's builder cannot run on meta
        return getattr(tvm, name)(weights=None)
    with torch.device("meta"):
        return getattr(tvm, name)(weights=None)


# name -> (fine count, coarse count, first group, last group)
EXPECTED = {
    "resnet18": (10, 6, "stem", "fc"),
    "resnet50": (18, 6, "stem", "fc"),
    "mobilenet_v2": (20, 10, "features.0", "classifier"),
    "mobilenet_v3_small": (14, 8, "features.0", "classifier"),
    "efficientnet_b0": (19, 10, "features.0", "classifier"),
    "efficientnet_v2_s": (43, 9, "features.0", "classifier"),
    "convnext_tiny": (20, 6, "features.0", "classifier"),
    "swin_t": (14, 6, "features.0", "head"),
    "swin_v2_t": (14, 6, "features.0", "head"),
    "regnet_x_400mf": (24, 6, "stem", "fc"),
    "vit_b_16": (14, 14, "embeddings", "heads"),
    "tiny_vit": (4, 4, "embeddings", "heads"),
}

#: Group names that are not one module's path.
NOT_PATHS = {"stem", "embeddings"}


def check_partition(model: nn.Module, groups: layerlock.LayerGroups, paths: bool = True) -> None:
    """Complete, disjoint, unique names, each group a contiguous run in model order.

    With ``paths``, a group named like a module holds all of that module's parameters.
    """
    order = [n for n, _ in model.named_parameters()]
    position = {n: i for i, n in enumerate(order)}
    flat = [n for g in groups for n in g.param_names]
    assert sorted(flat) == sorted(order)
    assert len(flat) == len(set(flat))
    assert len(set(groups.names)) == len(groups)
    assert [position[n] for n in flat] == list(range(len(order))), "groups not in model order"
    assert groups.num_params == sum(p.numel() for p in model.parameters())
    for g in groups:
        if not paths or g.name in NOT_PATHS or "-" in g.name:
            continue
        inside = {f"{g.name}.{n}" for n, _ in model.get_submodule(g.name).named_parameters()}
        assert inside and inside <= set(g.param_names), g.name


@pytest.mark.parametrize("name", list(EXPECTED))
def test_partition_counts_and_ends(name: str) -> None:
    fine, coarse, first, last = EXPECTED[name]
    model = build(name)
    for is_coarse, count in ((False, fine), (True, coarse)):
        groups = layerlock.layer_groups(model, coarse=is_coarse)
        assert groups.adapter == "torchvision"
        assert groups.notes == ()
        check_partition(model, groups)
        assert len(groups) == count
        assert (groups.names[0], groups.names[-1]) == (first, last)


def test_resnet_groups_are_module_paths() -> None:
    groups = layerlock.layer_groups(build("resnet18"))
    assert groups.names == [
        "stem",
        *[f"layer{i}.{j}" for i in range(1, 5) for j in range(2)],
        "fc",
    ]
    assert groups["stem"].param_names == (
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
    )
    coarse = layerlock.layer_groups(build("resnet18"), coarse=True)
    assert coarse.names == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_vit_embeddings_and_final_norm_in_last_block() -> None:
    model = tiny_vit()
    groups = layerlock.layer_groups(model)
    assert groups.names == [
        "embeddings",
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
        "heads",
    ]
    assert set(groups["embeddings"].param_names) == {
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
        "encoder.pos_embedding",
    }
    assert groups.group_of("encoder.ln.weight").name == "encoder.layers.encoder_layer_1"


@pytest.mark.parametrize(
    ("name", "transition", "joins"),
    [
        ("convnext_tiny", "features.2.1.weight", "features.3.0"),
        ("swin_t", "features.2.reduction.weight", "features.3.0"),
        ("swin_t", "norm.weight", "head"),
        ("efficientnet_b0", "features.8.0.weight", "features.8"),
        ("mobilenet_v2", "features.18.0.weight", "features.18"),
    ],
)
def test_transitions(name: str, transition: str, joins: str) -> None:
    groups = layerlock.layer_groups(build(name))
    assert groups.group_of(transition).name == joins


def test_mobilenet_coarse_groups_follow_output_width() -> None:
    model = build("mobilenet_v2")
    groups = layerlock.layer_groups(model, coarse=True)
    assert groups.names[:4] == ["features.0", "features.1", "features.2-3", "features.4-6"]
    for g in groups:
        if "-" in g.name:
            first, last = g.name.removeprefix("features.").split("-")
            widths = {model.features[i].out_channels for i in range(int(first), int(last) + 1)}
            assert len(widths) == 1


@pytest.mark.parametrize("name", ["resnet18", "tiny_vit", "convnext_tiny", "mobilenet_v3_small"])
def test_lock_unlocks_exactly_last_k_groups(name: str) -> None:
    model = build(name)
    groups = layerlock.layer_groups(model)
    total = len(groups)
    for k in range(total + 2):
        report = layerlock.lock(model, k, partition=groups)
        for g in groups:
            want = g.index >= total - k
            assert all(p.requires_grad == want for p in g.params), (k, g.name)
        assert report.trainable_groups == groups.names[max(total - k, 0) :]


def test_lock_coarse_resnet() -> None:
    model = build("resnet18")
    report = layerlock.lock(model, 2, coarse=True)
    assert report.trainable_groups == ["layer4", "fc"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("layer4.", "fc."))}


def test_freeze_bn_stats_on_resnet() -> None:
    model = build("resnet18")
    layerlock.lock(model, 3, freeze_bn_stats=True)  # layer4.0, layer4.1, fc train
    model.train()
    before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    after = model.state_dict()
    frozen = [k for k in before if not k.startswith("layer4.")]
    live = [k for k in before if k.startswith("layer4.") and "running_mean" in k]
    assert frozen and live
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    for k in live:
        assert not torch.equal(before[k], after[k]), k
    assert all(not n.startswith("layer4.") for n in layerlock.frozen_bn_modules(model))


def test_unsupported_torchvision_model_falls_back_with_note() -> None:
    model = build("vgg11")
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "torchvision"
    assert any("no torchvision layout for VGG" in n for n in groups.notes)
    check_partition(model, groups, paths=False)


def test_parameter_outside_layout_joins_previous_group_with_note() -> None:
    model = build("resnet18")
    model.extra_scale = nn.Parameter(torch.ones(1))  # own parameters come first in order
    model.extra = nn.Linear(2, 2)  # registered after fc
    groups = layerlock.layer_groups(model)
    check_partition(model, groups)
    assert groups.group_of("extra_scale").name == "stem"
    assert groups.group_of("extra.weight").name == "fc"
    assert any(
        "3 parameter(s) outside the ResNet layout" in n and "extra_scale" in n for n in groups.notes
    )


def test_matches_only_torchvision_models() -> None:
    adapter = TorchvisionAdapter()
    assert adapter.matches(build("resnet18"))
    assert not adapter.matches(nn.Sequential(nn.Linear(2, 2)))
    timm = pytest.importorskip("timm")
    assert not adapter.matches(timm.create_model("test_resnet", pretrained=False))


def test_adapter_never_imports_torchvision() -> None:
    code = textwrap.dedent(
        """
        import sys
        import torch.nn as nn
        import layerlock
        m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        layerlock.layer_groups(m)
        g = layerlock.layer_groups(m, adapter="torchvision")
        assert g.adapter == "torchvision" and "generic" in g.notes[0], g.notes
        leaked = [n for n in ("torchvision", "transformers", "timm") if n in sys.modules]
        assert not leaked, leaked
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
