"""The OpenCLIP adapter: partition invariants and conformance with open_clip_torch 3.3.0.

Each conformance test compares the trainable parameter names after ``layerlock.lock`` with
those after OpenCLIP's own ``lock_image_tower`` / ``lock_text_tower`` on a deep copy. Where
3.3.0 departs from OpenCLIP main's convention (which layerlock follows), the test asserts the
exact difference.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import layerlock
from layerlock.adapters import MODEL_LEVEL, select_adapter
from layerlock.errors import ConfigError

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from open_clip.hf_model import HFTextEncoder  # noqa: E402

EMBED = 16
VISION = dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16)
TEXT = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2)
POOL = dict(attn_pooler_queries=4, attn_pooler_heads=2)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def ll_lock(model: nn.Module, k: int, **kwargs) -> set[str]:
    c = copy.deepcopy(model)
    layerlock.lock(c, k, **kwargs)
    return trainable(c)


def oc_lock(model: nn.Module, fn: Callable[[nn.Module], None]) -> set[str]:
    c = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(c)
    return trainable(c)


def params_of(groups: layerlock.LayerGroups, name: str) -> set[str]:
    return set(groups[name].param_names)


def _clip(vision: dict, text: dict = TEXT) -> nn.Module:
    torch.manual_seed(0)
    return open_clip.CLIP(EMBED, vision, text)


def _hf_text(config: transformers.PretrainedConfig) -> HFTextEncoder:
    torch.manual_seed(0)
    return HFTextEncoder(
        "tiny", output_dim=EMBED, config=config, proj_type="linear", pretrained=False
    )


def _tiny_hf_config(kind: str) -> transformers.PretrainedConfig:
    cls = transformers.RobertaConfig if kind == "roberta" else transformers.BertConfig
    return cls(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )


@pytest.fixture(scope="module")
def vit_clip() -> nn.Module:
    return _clip(VISION)


@pytest.fixture(scope="module")
def timm_clip() -> nn.Module:
    return _clip(dict(timm_model_name="test_vit", image_size=32))


@pytest.fixture(scope="module")
def resnet_clip() -> nn.Module:
    return _clip(dict(layers=(1, 1, 1, 1), width=16, image_size=64, head_width=8))


@pytest.fixture(scope="module")
def custom_text_clip() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.CustomTextCLIP(EMBED, VISION, TEXT)


@pytest.fixture(scope="module")
def roberta_text() -> HFTextEncoder:
    return _hf_text(_tiny_hf_config("roberta"))


@pytest.fixture(scope="module")
def bert_text() -> HFTextEncoder:
    return _hf_text(_tiny_hf_config("bert"))


def _towers() -> dict[str, Callable[[], nn.Module]]:
    def coca() -> nn.Module:
        torch.manual_seed(0)
        return open_clip.CoCa(
            EMBED,
            multimodal_cfg=dict(TEXT, layers=2),
            text_cfg=dict(TEXT, embed_cls=True),
            vision_cfg=dict(VISION, attentional_pool=True, **POOL),
        )

    def hf_clip() -> nn.Module:
        torch.manual_seed(0)
        model = open_clip.CustomTextCLIP(EMBED, VISION, TEXT, init_logit_bias=-10.0)
        model.text = _hf_text(_tiny_hf_config("roberta"))
        return model

    return {
        "clip_vit": lambda: _clip(VISION),
        "vit": lambda: _clip(VISION).visual,
        "vit_attn_pool": lambda: _clip(dict(VISION, attentional_pool=True, **POOL)).visual,
        "vit_parallel_pools": lambda: (
            _clip(dict(VISION, attentional_pool="parallel", **POOL)).visual
        ),
        "vit_sincos_no_ln_pre": lambda: (
            _clip(dict(VISION, pos_embed_type="sin_cos_2d", no_ln_pre=True)).visual
        ),
        "timm": lambda: _clip(dict(timm_model_name="test_vit", image_size=32)).visual,
        "timm_cnn": lambda: _clip(dict(timm_model_name="test_convnext", image_size=32)).visual,
        "clip_timm": lambda: _clip(dict(timm_model_name="test_vit", image_size=32)),
        "resnet": lambda: (
            _clip(dict(layers=(1, 1, 1, 1), width=16, image_size=64, head_width=8)).visual
        ),
        "clip_resnet": lambda: _clip(
            dict(layers=(1, 1, 1, 1), width=16, image_size=64, head_width=8)
        ),
        "text": lambda: open_clip.CustomTextCLIP(EMBED, VISION, TEXT).text,
        "text_cls_linear_proj": lambda: (
            open_clip.CustomTextCLIP(EMBED, VISION, dict(TEXT, embed_cls=True, proj_bias=True)).text
        ),
        "hf_roberta": lambda: _hf_text(_tiny_hf_config("roberta")),
        "hf_bert": lambda: _hf_text(_tiny_hf_config("bert")),
        "custom_text_clip_hf": hf_clip,
        "coca": coca,
    }


def _expected_tower_names(names: list[str]) -> None:
    """Within one tower: [embeddings], layer.0 .. layer.{n-1}, [proj], in that order."""
    rest = names[1:] if names[0] == "embeddings" else names
    rest = rest[:-1] if rest and rest[-1] == "proj" else rest
    assert rest == [f"layer.{i}" for i in range(len(rest))], names
    assert rest, names


# -- 1. partition invariants ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(_towers()))
def test_partition_invariants(kind: str) -> None:
    model = _towers()[kind]()
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "open_clip"
    named = dict(model.named_parameters())
    seen: list[str] = [n for g in groups for n in g.param_names]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == set(named), "groups do not cover every parameter"
    assert len(set(groups.names)) == len(groups.names)
    assert all(g.num_params > 0 for g in groups)
    assert groups.notes == ()  # every parameter is placed by a rule, not by the fallback
    towers = groups.towers
    if towers == [None]:
        _expected_tower_names(groups.names)
    else:
        assert towers[:2] == ["visual", "text"] and towers[-1] == MODEL_LEVEL
        for t in towers:
            names = [groups[i].name for i in groups.tower_indices(t)]
            if t == MODEL_LEVEL:
                assert names == ["logit_scale"]
            else:
                _expected_tower_names([n.removeprefix(f"{t}.") for n in names])
    # input -> output: group layer.i holds block i of the tower's block list, and only it
    for g in groups:
        if g.name.rsplit(".", 2)[-2:-1] == ["layer"]:
            i = g.name.rsplit(".", 1)[-1]
            blocks = {
                re.search(r"(?:resblocks|cross_attn|layer)\.(\d+)\.", n) for n in g.param_names
            }
            assert {m.group(1) for m in blocks if m} <= {i}, g.name


def test_model_level_group_holds_logit_scale_and_bias() -> None:
    model = _towers()["custom_text_clip_hf"]()
    groups = layerlock.layer_groups(model)
    assert groups["logit_scale"].param_names == ("logit_scale", "logit_bias")
    assert groups["logit_scale"].tower == MODEL_LEVEL


def test_tied_parameter_counted_once(vit_clip: nn.Module) -> None:
    model = copy.deepcopy(vit_clip)
    model.text_projection = model.visual.proj  # same shape (width x embed_dim)
    groups = layerlock.layer_groups(model)
    assert "text.proj" not in groups.names
    # the name is the one named_parameters() keeps (root parameters come first); the group
    # is the first tower's that claims the tensor
    assert groups["visual.proj"].param_names == ("text_projection",)
    total = sum(p.numel() for p in model.parameters())
    assert groups.num_params == total


def test_vit_group_members(vit_clip: nn.Module) -> None:
    groups = layerlock.layer_groups(vit_clip.visual)
    assert groups.names == ["embeddings", "layer.0", "layer.1", "layer.2", "proj"]
    assert params_of(groups, "embeddings") == {
        "conv1.weight",
        "class_embedding",
        "positional_embedding",
        "ln_pre.weight",
        "ln_pre.bias",
    }
    assert {"ln_post.weight", "ln_post.bias"} <= params_of(groups, "layer.2")
    assert params_of(groups, "proj") == {"proj"}


def test_attention_pools_join_proj() -> None:
    towers = _towers()
    coca_style = layerlock.layer_groups(towers["vit_attn_pool"]())
    proj = params_of(coca_style, "proj")
    assert "proj" in proj and any(n.startswith("attn_pool.") for n in proj)
    # main's convention: ln_post joins the last block even where it runs after the pool
    assert {"ln_post.weight", "ln_post.bias"} <= params_of(coca_style, "layer.2")
    assert not {"ln_post.weight", "ln_post.bias"} & proj
    parallel = layerlock.layer_groups(towers["vit_parallel_pools"]())
    proj = params_of(parallel, "proj")
    assert any(n.startswith("attn_pool_contrastive.") for n in proj)
    assert "ln_post.weight" in params_of(parallel, "layer.2")  # ln_post runs before the pools


def test_resnet_groups_follow_main(resnet_clip: nn.Module) -> None:
    groups = layerlock.layer_groups(resnet_clip.visual)
    assert groups.names == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "proj"]
    stem = params_of(groups, "embeddings")
    assert {f"bn{i}.{t}" for i in (1, 2, 3) for t in ("weight", "bias")} <= stem
    assert all(n.startswith("layer4.") for n in params_of(groups, "layer.3"))
    assert all(n.startswith("attnpool.") for n in params_of(groups, "proj"))


def test_timm_tower_groups_and_coarse() -> None:
    from timm.models import group_parameters

    tower = _towers()["timm_cnn"]()
    fine = layerlock.layer_groups(tower)
    coarse = layerlock.layer_groups(tower, coarse=True)
    for flag, groups in ((False, fine), (True, coarse)):
        timm_groups = group_parameters(tower.trunk, tower.trunk.group_matcher(coarse=flag))
        assert len(groups) == len(timm_groups) + 1
        for i in sorted(timm_groups):
            assert set(groups[f"layer.{i}"].param_names) == {f"trunk.{n}" for n in timm_groups[i]}
        assert groups[-1].name == "proj"
        assert all(n.startswith("head.") for n in groups[-1].param_names)
    assert len(coarse) < len(fine)


def test_hf_groups(roberta_text: HFTextEncoder) -> None:
    groups = layerlock.layer_groups(roberta_text)
    assert groups.names == ["embeddings", "layer.0", "layer.1", "proj"]
    assert all(n.startswith("transformer.embeddings.") for n in params_of(groups, "embeddings"))
    assert params_of(groups, "proj") == {
        "transformer.pooler.dense.weight",
        "transformer.pooler.dense.bias",
        "proj.weight",
    }


def test_unknown_parameter_is_placed_and_noted(vit_clip: nn.Module) -> None:
    model = copy.deepcopy(vit_clip)
    model.visual.extra_head = nn.Linear(2, 2)  # registered after the blocks
    model.extra_scalar = nn.Parameter(torch.zeros(()))  # a root parameter of no tower
    groups = layerlock.layer_groups(model)
    assert {"visual.extra_head.weight", "visual.extra_head.bias"} <= params_of(
        groups, "visual.proj"
    )
    assert "extra_scalar" in params_of(groups, "logit_scale")
    assert any("visual.extra_head.weight -> visual.proj" in n for n in groups.notes)
    assert any("extra_scalar" in n for n in groups.notes)


def test_tower_layer_groups_method_is_reused(vit_clip: nn.Module) -> None:
    class WithGroups(type(vit_clip.visual)):  # type: ignore[misc]
        def layer_groups(self):
            return [
                ("embeddings", [self.conv1]),
                ("rest", [self.transformer]),
                ("top", [self.proj]),
            ]

    tower = copy.deepcopy(vit_clip.visual)
    tower.__class__ = WithGroups
    groups = layerlock.layer_groups(tower)
    assert groups.names == ["embeddings", "rest", "top"]
    # unnamed parameters of submodules registered before the blocks join the first group;
    # later ones and those registered directly on the tower join the top group
    assert {"ln_pre.weight", "ln_pre.bias"} <= params_of(groups, "embeddings")
    assert {"ln_post.weight", "class_embedding", "positional_embedding"} <= params_of(groups, "top")
    assert len(groups.notes) == 1


# -- 2. conformance with open_clip_torch 3.3.0 ---------------------------------------------


def test_conformance_vit_image_tower(vit_clip: nn.Module) -> None:
    groups = layerlock.layer_groups(vit_clip)
    n = len(groups.tower_indices("visual"))
    for k in range(n + 2):
        ours = ll_lock(vit_clip, k, tower="visual")
        theirs = oc_lock(vit_clip, lambda m, k=k: m.lock_image_tower(k))
        assert ours == theirs, k


@pytest.mark.parametrize("kind", ["clip", "custom_text_clip"])
def test_conformance_native_text_tower(
    kind: str, vit_clip: nn.Module, custom_text_clip: nn.Module
) -> None:
    model = vit_clip if kind == "clip" else custom_text_clip
    n = len(layerlock.layer_groups(model).tower_indices("text"))
    for k in range(n + 2):
        ours = ll_lock(model, k, tower="text")
        theirs = oc_lock(model, lambda m, k=k: m.lock_text_tower(k))
        assert ours == theirs, k


def test_difference_vit_attention_pool() -> None:
    """3.3.0 always freezes attn_pool; layerlock puts it in proj (ln_post: last block, as both)."""
    towers = _towers()
    for kind in ("vit_attn_pool", "vit_parallel_pools"):
        tower = towers[kind]()
        pools = {n for n, _ in tower.named_parameters() if n.startswith("attn_pool")}
        ln_post = {"ln_post.weight", "ln_post.bias"}
        n = len(layerlock.layer_groups(tower))
        for k in range(n + 2):
            ours = ll_lock(tower, k)
            theirs = oc_lock(tower, lambda m, k=k: m.lock(k))
            assert theirs <= ours, (kind, k)
            expected = pools if k else set()
            assert ours - theirs == expected, (kind, k)
            # ln_post is in the last block's group for both: trainable from k=2 on
            assert (ln_post <= ours and ln_post <= theirs) == (k >= 2), (kind, k)


def test_difference_timm_head_and_offset(timm_clip: nn.Module) -> None:
    """3.3.0 counts only trunk groups and never locks the adapter head.

    So 3.3.0's k=0 leaves ``head.*`` trainable, and its k >= 1 trains one trunk group more
    than layerlock's k (3.3.0's k equals layerlock's k + 1).
    """
    groups = layerlock.layer_groups(timm_clip.visual)
    head = params_of(groups, "proj")
    trunk = [g for g in groups if g.name != "proj"]
    for k in range(len(groups) + 2):
        ours = ll_lock(timm_clip.visual, k)
        theirs = oc_lock(timm_clip.visual, lambda m, k=k: m.lock(k))
        assert ours <= theirs, k
        if k == 0:
            expected = head
        elif k <= len(trunk):
            expected = set(trunk[len(trunk) - k].param_names)
        else:
            expected = set()
        assert theirs - ours == expected, k
        if k >= 1:
            assert theirs == ll_lock(timm_clip.visual, k + 1), k
    # and the same through the whole model
    ours = ll_lock(timm_clip, 2, tower="visual")
    theirs = oc_lock(timm_clip, lambda m: m.lock_image_tower(2))
    assert theirs - ours == {f"visual.{n}" for n in trunk[-2].param_names}


def test_difference_resnet_partial_lock(resnet_clip: nn.Module) -> None:
    assert ll_lock(resnet_clip, 0, tower="visual") == oc_lock(
        resnet_clip, lambda m: m.lock_image_tower(0)
    )
    with pytest.raises(AssertionError, match="partial locking not currently supported"):
        oc_lock(resnet_clip, lambda m: m.lock_image_tower(1))
    groups = layerlock.layer_groups(resnet_clip.visual)
    assert ll_lock(resnet_clip.visual, 2) == params_of(groups, "layer.3") | params_of(
        groups, "proj"
    )


def test_difference_hf_text_tower(roberta_text: HFTextEncoder, bert_text: HFTextEncoder) -> None:
    """3.3.0 counts [embeddings, *layers] only: pooler and proj always train for k >= 1,
    and k=0 freezes the transformer (pooler included) but not proj."""
    groups = layerlock.layer_groups(roberta_text)
    for k in range(len(groups) + 2):
        ours = ll_lock(roberta_text, k)
        theirs = oc_lock(roberta_text, lambda m, k=k: m.lock(k, freeze_layer_norm=True))
        if k == 0:
            assert theirs - ours == {"proj.weight"} and not ours - theirs
        else:
            assert theirs == ll_lock(roberta_text, k + 1), k
    # BERT-type configs: 3.3.0 raises KeyError for k > 0; layerlock locks them
    with pytest.raises(KeyError, match="layer_attr"):
        oc_lock(bert_text, lambda m: m.lock(1, freeze_layer_norm=True))
    assert ll_lock(bert_text, 1) == params_of(layerlock.layer_groups(bert_text), "proj")


def test_difference_freeze_layer_norm(vit_clip: nn.Module, roberta_text: HFTextEncoder) -> None:
    """OpenCLIP's freeze_layer_norm=False is layerlock's train_norm=True."""
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm is not supported"):
        oc_lock(vit_clip, lambda m: m.lock_text_tower(1, freeze_layer_norm=False))
    ours = ll_lock(vit_clip, 1, tower="text", train_norm=True)
    text_norms = {
        n
        for n, _ in vit_clip.named_parameters()
        if not n.startswith("visual.") and (".ln_" in n or n.startswith("ln_final"))
    }
    assert text_norms <= ours
    # HF tower: the same LayerNorms stay trainable; only 3.3.0's k=0 proj difference remains
    ours = ll_lock(roberta_text, 0, train_norm=True)
    theirs = oc_lock(roberta_text, lambda m: m.lock(0, freeze_layer_norm=False))
    assert theirs - ours == {"proj.weight"} and not ours - theirs


def test_difference_negative_k(vit_clip: nn.Module) -> None:
    theirs = oc_lock(vit_clip.visual, lambda m: m.lock(-1))
    groups = layerlock.layer_groups(vit_clip.visual)
    assert theirs == {n for n, _ in vit_clip.visual.named_parameters()} - params_of(
        groups, "embeddings"
    )
    with pytest.raises(ConfigError, match="unlocked_groups must be >= 0, got -1"):
        layerlock.lock(copy.deepcopy(vit_clip.visual), -1)


# -- 3. towers are independent; tower="both" -----------------------------------------------


def test_lock_one_tower_leaves_the_other(vit_clip: nn.Module) -> None:
    model = copy.deepcopy(vit_clip)
    groups = layerlock.layer_groups(model)
    layerlock.lock(model, 1, tower="text", partition=groups)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for k in (0, 2, 10):
        layerlock.lock(model, k, tower="visual", partition=groups)
        after = {n: p.requires_grad for n, p in model.named_parameters()}
        assert {n: v for n, v in after.items() if not n.startswith("visual.")} == {
            n: v for n, v in before.items() if not n.startswith("visual.")
        }, k
    visual_state = {n: v for n, v in after.items() if n.startswith("visual.")}
    layerlock.lock(model, 0, tower="text", partition=groups)
    assert {n: p.requires_grad for n, p in model.named_parameters() if n.startswith("visual.")} == (
        visual_state
    )
    assert model.logit_scale.requires_grad  # neither single-tower call touched it


def test_lock_both_towers(vit_clip: nn.Module) -> None:
    for k in range(6):
        ours = ll_lock(vit_clip, k, tower="both")
        theirs = oc_lock(vit_clip, lambda m, k=k: (m.lock_image_tower(k), m.lock_text_tower(k)))
        theirs = theirs - {"logit_scale"} | ({"logit_scale"} if k >= 1 else set())
        assert ours == theirs, k
        assert ll_lock(vit_clip, k) == ours  # tower=None means both


# -- 4. freeze_bn_stats on the ModifiedResNet tower ----------------------------------------


def test_freeze_bn_stats_resnet_stem(resnet_clip: nn.Module) -> None:
    tower = copy.deepcopy(resnet_clip.visual)
    modules_before = list(tower.named_modules())
    keys_before = list(tower.state_dict())
    report = layerlock.lock(tower, 1, freeze_bn_stats=True)
    bns = [n for n, m in tower.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert {"bn1", "bn2", "bn3"} <= set(report.frozen_bn)
    assert set(report.frozen_bn) == set(bns)  # every BN lies in a frozen group at k=1
    assert [(n, id(m)) for n, m in tower.named_modules()] == [(n, id(m)) for n, m in modules_before]
    assert list(tower.state_dict()) == keys_before
    tower.train()
    stats = tower.bn1.running_mean.clone()
    with torch.no_grad():
        tower(torch.randn(2, 3, 64, 64))
    assert torch.equal(tower.bn1.running_mean, stats)
    # all groups unlocked: no BN frozen (OpenCLIP freezes all of them at k >= #groups)
    assert layerlock.lock(tower, 6, freeze_bn_stats=True).frozen_bn == ()
    with torch.no_grad():
        tower(torch.randn(2, 3, 64, 64))
    assert not torch.equal(tower.bn1.running_mean, stats)


def test_openclip_freeze_bn_stats_replaces_modules(resnet_clip: nn.Module) -> None:
    """The documented contrast: 3.3.0 swaps BatchNorm2d for FrozenBatchNorm2d."""
    c = copy.deepcopy(resnet_clip.visual)
    c.lock(0, freeze_bn_stats=True)
    assert type(c.bn1).__name__ == "FrozenBatchNorm2d"


# -- 5. adapter selection ------------------------------------------------------------------


def test_plain_module_never_imports_open_clip() -> None:
    code = (
        "import layerlock, torch; "
        "g = layerlock.layer_groups(torch.nn.Sequential(torch.nn.Linear(2, 2))); "
        "import sys; assert 'open_clip' not in sys.modules, 'open_clip imported'; "
        "assert g.adapter != 'open_clip'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_selection(vit_clip: nn.Module) -> None:
    assert select_adapter(nn.Sequential(nn.Linear(2, 2))).name != "open_clip"
    assert (
        select_adapter(vit_clip.transformer).name != "open_clip"
    )  # a bare Transformer block stack
    for module in (vit_clip, vit_clip.visual):
        assert select_adapter(module).name == "open_clip"

    class Mine(type(vit_clip.visual)):  # type: ignore[misc]
        pass

    sub = copy.deepcopy(vit_clip.visual)
    sub.__class__ = Mine
    assert select_adapter(sub).name == "open_clip"


def test_tower_method_may_return_layerlock_groups(vit_clip: nn.Module) -> None:
    """A tower's layer_groups() may return LayerGroups, even ones it asks layerlock for."""

    class Regrouped(type(vit_clip.visual)):  # type: ignore[misc]
        def layer_groups(self):
            return layerlock.layer_groups(self)  # re-entrant: the method is not asked again

    tower = copy.deepcopy(vit_clip.visual)
    expected = layerlock.layer_groups(tower)
    tower.__class__ = Regrouped
    groups = layerlock.layer_groups(tower)
    assert groups.adapter == "open_clip" and groups.names == expected.names
    assert [g.param_names for g in groups] == [g.param_names for g in expected]
