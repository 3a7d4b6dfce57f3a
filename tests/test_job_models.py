"""Every model family the job accepts: ``layer_groups(model)`` equals the groups the job locks.

``build_classifier`` builds the model as ``layerlock finetune`` does; the job hands the
``groups`` it returns (or, when that is None, nothing) to the Unfreezer. Whatever
``layerlock.layer_groups``, ``layerlock.lock`` and ``layerlock groups`` compute for the
same model must be that grouping: same names, same parameter partition.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import layerlock
from layerlock.errors import LayerlockError
from layerlock.models import (
    OpenCLIPClassifier,
    _embed_dim,
    build_classifier,
    classifier_logits,
)

CLASSES = ["red", "green", "blue"]
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VIT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}
POOL = {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}

#: Tiny OpenCLIP configs, one per image-tower class the job can wrap.
OPEN_CLIP_CONFIGS: dict[str, dict] = {
    "vit": {"embed_dim": 16, "vision_cfg": VIT, "text_cfg": TEXT},
    "timm": {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "image_size": 32},
        "text_cfg": TEXT,
    },
    "resnet": {
        "embed_dim": 16,
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "head_width": 8},
        "text_cfg": TEXT,
    },
    "coca": {
        "embed_dim": 16,
        "custom_text": True,
        "vision_cfg": {**VIT, **POOL, "output_tokens": True},
        "text_cfg": {**TEXT, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {**TEXT, "layers": 1},
    },
}

USER_MODULE = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()) for _ in range(3)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class Grouped(Net):
    def layer_groups(self):
        return [("input", [self.stem, self.blocks[0]]), ("middle", list(self.blocks[1:])),
                ("output", [self.head])]


def build(num_classes=2):
    return Net(num_classes)


def build_grouped(num_classes=2):
    return Grouped(num_classes)
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Spec string per family, with the local files they need (no network)."""
    root = tmp_path_factory.mktemp("job-models")
    out = {
        "demo": "demo",
        "timm_vit": "timm:test_vit",
        "timm_resnet": "timm:test_resnet",
        "torchvision_resnet": "torchvision:resnet18",
    }
    open_clip = pytest.importorskip("open_clip")
    for kind, cfg in OPEN_CLIP_CONFIGS.items():
        name = f"layerlock-job-{kind}"
        path = root / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        out[f"open_clip_{kind}"] = f"open_clip:{name}"
    transformers = pytest.importorskip("transformers")
    for kind, config in {
        "vit": transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        "convnext": transformers.ConvNextConfig(
            num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2
        ),
    }.items():
        folder = root / f"hf-{kind}"
        config.save_pretrained(folder)
        out[f"hf_{kind}"] = f"hf:{folder}"
    user = root / "user_models.py"
    user.write_text(USER_MODULE)
    out["module"] = f"module:{user}:build"
    out["module_own_groups"] = f"module:{user}:build_grouped"
    return out


FAMILIES = [
    "demo",
    "timm_vit",
    "timm_resnet",
    "torchvision_resnet",
    "open_clip_vit",
    "open_clip_timm",
    "open_clip_resnet",
    "open_clip_coca",
    "hf_vit",
    "hf_convnext",
    "module",
    "module_own_groups",
]


def _partition(groups: layerlock.LayerGroups) -> dict[str, str]:
    return {p: g.name for g in groups for p in g.param_names}


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_groups_equal_the_groups_the_job_locks(family: str, specs: dict[str, str]) -> None:
    torch.manual_seed(0)
    model, _, groups = build_classifier(specs[family], CLASSES)
    # what the job locks: the groups it hands the Unfreezer (which fills in None)
    job = layerlock.Unfreezer(model, "full", epochs=1, steps_per_epoch=1, groups=groups).groups
    ours = layerlock.layer_groups(model)
    assert ours.names == job.names
    assert _partition(ours) == _partition(job)
    assert set(_partition(ours)) == {n for n, _ in model.named_parameters()}
    if isinstance(model, OpenCLIPClassifier):
        assert ours.adapter == "own" and ours.names[0] != "stem" and ours.names[-1] == "head"
        assert ours.names[-2] == "proj"
    # lock() without a partition unlocks exactly the job's top groups
    for k in (1, 2):
        locked = copy.deepcopy(model)
        layerlock.lock(locked, k)
        assert _trainable(locked) == {n for g in job[-k:] for n in g.param_names}, k


def test_own_layer_groups_method_reaches_the_job(specs: dict[str, str]) -> None:
    model, _, groups = build_classifier(specs["module_own_groups"], CLASSES)
    assert groups is None
    assert layerlock.layer_groups(model).names == ["input", "middle", "output"]


def test_open_clip_classifier_groups_are_the_towers_then_head(specs: dict[str, str]) -> None:
    torch.manual_seed(0)
    model, _, groups = build_classifier(specs["open_clip_coca"], CLASSES)
    assert isinstance(model, OpenCLIPClassifier) and groups is not None
    tower = layerlock.layer_groups(model.visual)
    assert groups.names == [*tower.names, "head"]
    for g in tower:
        assert groups[g.name].param_names == tuple(f"visual.{n}" for n in g.param_names)
    # main's convention: ln_post joins the last block, the attention pool joins proj
    assert "visual.ln_post.weight" in groups["layer.1"].param_names
    assert "visual.attn_pool.query" in groups["proj"].param_names


def test_build_classifier_is_reproducible(specs: dict[str, str]) -> None:
    built = []
    for _ in range(2):
        torch.manual_seed(0)
        built.append(build_classifier(specs["open_clip_timm"], CLASSES)[0].state_dict())
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])


# -- helpers --------------------------------------------------------------------------------


class _Tower(nn.Module):
    """A tower without ``output_dim``: its width is found by a probe forward."""

    image_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x).flatten(1))


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_embed_dim_probe_keeps_the_towers_mode(mode: str) -> None:
    tower = _Tower().train(mode != "eval")
    if mode == "mixed":
        tower.drop.eval()
    before = [m.training for m in tower.modules()]
    assert _embed_dim(tower) == 5
    assert [m.training for m in tower.modules()] == before


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t,
        lambda t: type("Out", (), {"logits": t})(),
        lambda t: (t, torch.zeros(1)),
    ],
)
def test_classifier_logits_forms(make: Callable[[torch.Tensor], object]) -> None:
    t = torch.randn(2, 3)
    assert classifier_logits(make(t)) is t


def test_classifier_logits_names_the_bad_output() -> None:
    with pytest.raises(LayerlockError, match=r"returned dict; expected logits"):
        classifier_logits({"x": torch.zeros(1)})


def test_unknown_model_family_in_build_classifier() -> None:
    with pytest.raises(layerlock.ConfigError, match=r"unknown model family 'tim'.*did you mean"):
        build_classifier("tim:test_vit", CLASSES)


def test_checkpoint_keeps_the_trunk_and_leaves_a_new_head(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_vit", num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, notes, _ = build_classifier("timm:test_vit", CLASSES, checkpoint=str(path))
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    assert model.num_classes == 3 and notes[-1] == f"weights loaded from {path} (new head)"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(layerlock.ConfigError, match=r"has none of the model's tensor names"):
        build_classifier("timm:test_vit", CLASSES, checkpoint=str(path))
