"""split_model: suffix(prefix(x)) == model(x) at every boundary, or a one-line reason."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from layerlock import layer_groups
from layerlock.split import split_model, split_reason


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _check_all_boundaries(model: nn.Module, x: torch.Tensor) -> list[str]:
    model.eval()
    groups = layer_groups(model)
    with torch.no_grad():
        ref = _logits(model(x))
        suffixes = []
        for b in range(1, len(groups)):
            split = split_model(model, groups, b)
            assert split is not None, split_reason(model, groups, b)
            feats = split.prefix(x)
            torch.testing.assert_close(split.suffix(feats), ref, atol=1e-5, rtol=1e-4)
            suffixes.append(split.suffix_steps[0])
    return suffixes


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("test_vit", {}, 32),
        ("test_resnet", {}, 32),
        ("test_convnext", {}, 32),
        ("test_efficientnet", {}, 32),
        ("regnetx_002", {}, 32),
        ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 2}, 32),
        (
            "beit_base_patch16_224",
            {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2},
            32,
        ),
        ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28),
    ],
)
def test_timm_split_matches_forward(name, kwargs, size):
    model = timm.create_model(name, num_classes=3, **kwargs)
    _check_all_boundaries(model, torch.randn(2, 3, size, size))


def test_vit_head_only_prefix_includes_pooling():
    model = timm.create_model("test_vit", num_classes=3)
    groups = layer_groups(model)
    split = split_model(model, groups, len(groups) - 1)
    assert split is not None
    # Deterministic parameter-free steps move into the prefix: features are pooled.
    assert split.suffix_steps == ["head"]
    assert split.prefix(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


def test_random_param_free_step_stays_in_suffix():
    model = timm.create_model("test_vit", num_classes=3, drop_rate=0.5)
    groups = layer_groups(model)
    split = split_model(model, groups, len(groups) - 1)
    assert split is not None and split.suffix_steps == ["head_drop", "head"]


def test_resnet_boundary_names_the_prefix_end():
    model = timm.create_model("resnet18", num_classes=3)
    groups = layer_groups(model)
    b = groups.names.index("layer4.1")
    split = split_model(model, groups, b)
    assert split is not None
    assert split.prefix_steps[-1] == "layer4.0" and split.suffix_steps[0] == "layer4.1"
    assert "layer4.0" in split_reason(model, groups, b)


def test_torchvision_models():
    tv = pytest.importorskip("torchvision")
    _check_all_boundaries(tv.models.resnet18(num_classes=3), torch.randn(2, 3, 32, 32))
    vit = tv.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
    )
    _check_all_boundaries(vit, torch.randn(2, 3, 32, 32))


def test_open_clip_visual_tower():
    open_clip = pytest.importorskip("open_clip")
    visual = open_clip.transformer.VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2, output_dim=16
    )
    assert _check_all_boundaries(visual, torch.randn(2, 3, 32, 32))[-1] == "proj"


def test_open_clip_whole_clip_is_refused_with_reason():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
    )
    groups = layer_groups(model)
    assert split_model(model, groups, 1) is None
    assert "several towers" in split_reason(model, groups, 1)


def test_transformers_vit():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    _check_all_boundaries(transformers.ViTForImageClassification(cfg), torch.randn(2, 3, 32, 32))


def test_unsupported_model_gives_one_line_reason():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    groups = layer_groups(model)
    assert split_model(model, groups, 1) is None
    reason = split_reason(model, groups, 1)
    assert "no split recipe" in reason and "Sequential" in reason and "\n" not in reason


@pytest.mark.parametrize("boundary, text", [(0, "nothing is locked"), (8, "no trainable group")])
def test_boundary_out_of_range(boundary, text):
    model = timm.create_model("test_vit", num_classes=3)
    groups = layer_groups(model)
    assert split_model(model, groups, boundary) is None
    assert text in split_reason(model, groups, boundary)


def test_groups_not_a_prefix_of_forward_order():
    model = timm.create_model("test_vit", num_classes=3)
    # The head first, then everything else: no cut puts only the head before the blocks.
    groups = layer_groups(
        model, matcher={"a": r"^head", "b": r"^(?:cls_token|pos_embed|patch_embed|blocks|norm)"}
    )
    assert len(groups) == 2 and all(n.startswith("head") for n in groups[0].param_names)
    assert split_model(model, groups, 1) is None
    assert "not a prefix" in split_reason(model, groups, 1)


def test_step_spanning_two_groups():
    model = timm.create_model("test_vit", num_classes=3)
    # blocks.0's attention in one group, its MLP in the next: the block step spans both.
    groups = layer_groups(
        model,
        matcher={
            "stem": r"^(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^blocks\.(\d+)\.(?:norm1|attn)", None), (r"^blocks\.(\d+)\.", (1000,))],
            "rest": r"^norm$|^norm\.",
        },
    )
    b = next(i for i in range(1, len(groups)) if split_model(model, groups, i) is None)
    assert "uses both frozen and trainable groups" in split_reason(model, groups, b)


def test_no_optional_library_imported():
    code = (
        "import sys, timm, torch\n"
        "from layerlock import layer_groups\n"
        "from layerlock.split import split_model\n"
        "before = set(sys.modules)\n"
        "m = timm.create_model('test_vit', num_classes=2)\n"
        "split_model(m, layer_groups(m), 3)\n"
        "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "print(sorted(new & {'open_clip', 'transformers', 'torchvision'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
