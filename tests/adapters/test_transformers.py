"""The transformers adapter: partitions of tiny HF models, CLIP towers, lock, no imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch
from torch import nn

import layerlock
from layerlock.adapters import MODEL_LEVEL
from layerlock.adapters.transformers import TransformersAdapter

T = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))


VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
DINO = {k: v for k, v in VISION.items() if k != "intermediate_size"}
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=100,
    max_position_embeddings=20,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "CLIPVisionModel": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**VISION)),
    "CLIPVisionModelWithProjection": lambda: T.CLIPVisionModelWithProjection(
        T.CLIPVisionConfig(**VISION, projection_dim=16)
    ),
    "CLIPTextModel": lambda: T.CLIPTextModel(T.CLIPTextConfig(**TEXT)),
    "CLIPTextModelWithProjection": lambda: T.CLIPTextModelWithProjection(
        T.CLIPTextConfig(**TEXT, projection_dim=16)
    ),
    "ViTModel": lambda: T.ViTModel(T.ViTConfig(**VISION)),
    "ViTForImageClassification": lambda: T.ViTForImageClassification(
        T.ViTConfig(**VISION, num_labels=3)
    ),
    "Dinov2Model": lambda: T.Dinov2Model(T.Dinov2Config(**DINO)),
    "Dinov2ForImageClassification": lambda: T.Dinov2ForImageClassification(
        T.Dinov2Config(**DINO, num_labels=3)
    ),
    "Dinov2WithRegistersModel": lambda: T.Dinov2WithRegistersModel(
        T.Dinov2WithRegistersConfig(**DINO, num_register_tokens=2)
    ),
    "BertModel": lambda: T.BertModel(T.BertConfig(**TEXT)),
    "BertForSequenceClassification": lambda: T.BertForSequenceClassification(
        T.BertConfig(**TEXT, num_labels=3)
    ),
    "RobertaModel": lambda: T.RobertaModel(T.RobertaConfig(**TEXT)),
    "RobertaForSequenceClassification": lambda: T.RobertaForSequenceClassification(
        T.RobertaConfig(**TEXT, num_labels=3)
    ),
}

#: Module (path suffix) holding the final norm that joins the last layer; None: no final norm.
FINAL_NORM = {
    "CLIPVisionModel": "post_layernorm",
    "CLIPVisionModelWithProjection": "post_layernorm",
    "CLIPTextModel": "final_layer_norm",
    "CLIPTextModelWithProjection": "final_layer_norm",
    "ViTModel": "layernorm",
    "ViTForImageClassification": "layernorm",
    "Dinov2Model": "layernorm",
    "Dinov2ForImageClassification": "layernorm",
    "Dinov2WithRegistersModel": "layernorm",
}

#: Models without a head group (no pooler, projection or classifier).
NO_HEAD = {"CLIPVisionModel", "CLIPTextModel", "Dinov2Model", "Dinov2WithRegistersModel"}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name]()


def check_partition(model: nn.Module, groups: layerlock.LayerGroups) -> None:
    """Complete, disjoint, unique names, each group a contiguous run in model order."""
    order = [n for n, _ in model.named_parameters()]
    position = {n: i for i, n in enumerate(order)}
    flat = [n for g in groups for n in g.param_names]
    assert sorted(flat) == sorted(order)
    assert len(flat) == len(set(flat))
    assert len(set(groups.names)) == len(groups)
    assert [position[n] for n in flat] == list(range(len(order))), "groups not in model order"
    assert groups.num_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_single_tower_partition(name: str) -> None:
    model = build(name)
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "transformers"
    assert groups.notes == ()
    check_partition(model, groups)
    expected = ["embeddings", "layer.0", "layer.1"] + ([] if name in NO_HEAD else ["head"])
    assert groups.names == expected
    assert layerlock.layer_groups(model, coarse=True).names == expected
    # Every parameter of the embeddings module is in the first group.
    embeddings = [n for n, _ in model.named_parameters() if ".embeddings." in f".{n}"]
    assert embeddings and set(embeddings) <= set(groups["embeddings"].param_names)
    # The last layer's group holds the final norm (and nothing of the head).
    if name in FINAL_NORM:
        norm = [n for n in groups["layer.1"].param_names if n.split(".")[-2] == FINAL_NORM[name]]
        assert len(norm) == 2, groups["layer.1"].param_names


@pytest.mark.parametrize(
    ("name", "head_params"),
    [
        ("CLIPVisionModelWithProjection", {"visual_projection.weight"}),
        ("CLIPTextModelWithProjection", {"text_projection.weight"}),
        ("ViTModel", {"pooler.dense.weight", "pooler.dense.bias"}),
        ("ViTForImageClassification", {"classifier.weight", "classifier.bias"}),
        ("Dinov2ForImageClassification", {"classifier.weight", "classifier.bias"}),
        ("BertModel", {"pooler.dense.weight", "pooler.dense.bias"}),
        (
            "BertForSequenceClassification",
            {
                "bert.pooler.dense.weight",
                "bert.pooler.dense.bias",
                "classifier.weight",
                "classifier.bias",
            },
        ),
        (
            "RobertaForSequenceClassification",
            {
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias",
            },
        ),
    ],
)
def test_head_group(name: str, head_params: set[str]) -> None:
    groups = layerlock.layer_groups(build(name))
    assert set(groups["head"].param_names) == head_params


def test_clip_vision_pre_norm_in_embeddings() -> None:
    groups = layerlock.layer_groups(build("CLIPVisionModel"))
    assert groups.group_of("pre_layrnorm.weight").name == "embeddings"


def test_dinov2_tokens_in_embeddings() -> None:
    groups = layerlock.layer_groups(build("Dinov2WithRegistersModel"))
    for token in ("cls_token", "mask_token", "register_tokens", "position_embeddings"):
        assert groups.group_of(f"embeddings.{token}").name == "embeddings"
    groups = layerlock.layer_groups(build("Dinov2ForImageClassification"))
    assert groups.group_of("dinov2.embeddings.mask_token").name == "embeddings"


def clip_model() -> nn.Module:
    torch.manual_seed(0)
    config = T.CLIPConfig(
        vision_config=VISION, text_config={**TEXT, "max_position_embeddings": 16}, projection_dim=16
    )
    return T.CLIPModel(config)


def test_clip_model_towers() -> None:
    model = clip_model()
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "transformers"
    tower_names = ["embeddings", "layer.0", "layer.1", "head"]
    assert groups.names == [
        *[f"visual.{n}" for n in tower_names],
        *[f"text.{n}" for n in tower_names],
        "logit_scale",
    ]
    assert groups.towers == ["visual", "text", MODEL_LEVEL]
    assert groups["logit_scale"].param_names == ("logit_scale",)
    assert groups["visual.head"].param_names == ("visual_projection.weight",)
    assert groups["text.head"].param_names == ("text_projection.weight",)
    assert groups.group_of("vision_model.post_layernorm.weight").name == "visual.layer.1"
    assert groups.group_of("text_model.final_layer_norm.bias").name == "text.layer.1"
    flat = [n for g in groups for n in g.param_names]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    for tower, prefix in (("visual", "vision_model."), ("text", "text_model.")):
        members = [groups[i] for i in groups.tower_indices(tower)]
        inside = [n for g in members[:-1] for n in g.param_names]
        assert all(n.startswith(prefix) for n in inside)
        order = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
        assert inside == order, "tower groups not in model order"


def test_clip_model_lock_per_tower() -> None:
    model = clip_model()
    report = layerlock.lock(model, 1)
    assert report.trainable_groups == ["visual.head", "text.head", "logit_scale"]
    report = layerlock.lock(model, 0, tower="visual")
    assert report.trainable_groups == ["text.head", "logit_scale"]
    report = layerlock.lock(model, 2, tower="text")
    assert report.trainable_groups == ["text.layer.1", "text.head", "logit_scale"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("vision_model.", "visual_")) for n in trainable)


@pytest.mark.parametrize(
    "name", ["ViTForImageClassification", "BertForSequenceClassification", "CLIPVisionModel"]
)
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


def test_tied_embeddings_counted_once() -> None:
    torch.manual_seed(0)
    model = T.BertForMaskedLM(T.BertConfig(**TEXT))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    groups = layerlock.layer_groups(model)
    check_partition(model, groups)
    assert groups.group_of("bert.embeddings.word_embeddings.weight").name == "embeddings"
    assert "cls.predictions.decoder.weight" not in {n for g in groups for n in g.param_names}
    assert groups.names[-1] == "head"


def test_model_without_layer_list_falls_back_with_note() -> None:
    torch.manual_seed(0)
    config = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=3)
    model = T.ConvNextForImageClassification(config)
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "transformers"
    assert any("no encoder layer list" in n and "generic adapter" in n for n in groups.notes)
    flat = [n for g in groups for n in g.param_names]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())


def test_encoder_decoder_falls_back_with_note() -> None:
    torch.manual_seed(0)
    config = T.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, vocab_size=50)
    groups = layerlock.layer_groups(T.T5ForConditionalGeneration(config))
    assert any("several layer lists (encoder.block, decoder.block)" in n for n in groups.notes)


def test_matches_only_pretrained_models() -> None:
    adapter = TransformersAdapter()
    assert adapter.matches(build("BertModel"))
    assert not adapter.matches(nn.Sequential(nn.Linear(2, 2)))
    timm = pytest.importorskip("timm")
    assert not adapter.matches(timm.create_model("test_vit", pretrained=False))


def test_adapter_never_imports_transformers() -> None:
    code = textwrap.dedent(
        """
        import sys
        import torch.nn as nn
        import layerlock
        from layerlock.adapters.transformers import is_pretrained_model
        m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        assert layerlock.layer_groups(m).adapter == "generic"
        assert not is_pretrained_model(m)
        g = layerlock.layer_groups(m, adapter="transformers")
        assert any("generic adapter" in n for n in g.notes), g.notes
        assert "transformers" not in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
