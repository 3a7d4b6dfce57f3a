"""timm conformance: layerlock's groups are timm's ``group_parameters`` numbering, for every k."""

from __future__ import annotations

import pytest
import timm
from timm.models._manipulate import group_parameters

import layerlock
from conftest import trainable_names

# (name, kwargs): small variants or reduced configs so the suite stays fast.
ARCHS: list[tuple[str, dict]] = [
    ("test_vit", {}),
    ("test_vit2", {}),
    ("test_vit3", {}),
    ("test_vit4", {}),
    ("test_vit_relpos", {}),
    ("test_resnet", {}),
    ("test_convnext", {}),
    ("test_convnext2", {}),
    ("test_convnext3", {}),
    ("test_efficientnet", {}),
    ("test_efficientnet_gn", {}),
    ("test_efficientnet_ln", {}),
    ("test_efficientnet_evos", {}),
    ("test_byobnet", {}),
    ("test_nfnet", {}),
    ("test_maxvit", {}),
    ("test_coatnet", {}),
    ("test_mambaout", {}),
    ("vit_tiny_patch16_224", {"depth": 3}),
    (
        "vit_small_patch16_224",
        {"depth": 2, "embed_dim": 48, "num_heads": 2, "reg_tokens": 4, "global_pool": "map"},
    ),
    ("deit_tiny_patch16_224", {"depth": 2}),
    ("deit_tiny_distilled_patch16_224", {"depth": 2}),
    ("eva02_tiny_patch14_224", {"depth": 2}),
    ("beit_base_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    ("cait_xxs24_224", {"depth": 2}),
    ("xcit_nano_12_p16_224", {"depth": 2}),
    (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 1, 1)},
    ),
    ("convnext_atto", {}),
    ("resnet18", {}),
    ("resnet10t", {}),
    ("efficientnet_b0", {}),
    ("mobilenetv3_small_050", {}),
    ("mobilenetv2_050", {}),
    ("regnetx_002", {}),
    ("regnety_002", {}),
    ("fastvit_t8", {}),
    ("levit_128s", {}),
    ("pvt_v2_b0", {}),
    ("mobilevit_xxs", {}),
    ("edgenext_xx_small", {}),
    ("ghostnet_100", {}),
    ("lcnet_050", {}),
    ("rexnet_100", {}),
    ("tinynet_e", {}),
    ("mixer_s32_224", {}),
    ("resmlp_12_224", {}),
    ("efficientformer_l1", {}),
    ("gcvit_xxtiny", {}),
    ("hiera_tiny_224", {}),
    ("densenet121", {}),
]


def _build(name: str, kwargs: dict) -> object:
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def test_enough_architectures() -> None:
    assert len(ARCHS) >= 40
    assert len({n for n, _ in ARCHS}) == len(ARCHS)


@pytest.mark.parametrize("coarse", [False, True], ids=["fine", "coarse"])
@pytest.mark.parametrize(("name", "kwargs"), ARCHS, ids=[n for n, _ in ARCHS])
def test_trainable_set_matches_timm_numbering(name: str, kwargs: dict, coarse: bool) -> None:
    model = _build(name, kwargs)
    timm_ids = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    num = max(timm_ids.values()) + 1
    groups = layerlock.layer_groups(model, coarse=coarse)
    assert groups.adapter == "timm"
    assert len(groups) == num
    for g in groups:  # same numbering, group by group
        assert {timm_ids[n] for n in g.param_names} == {g.index}
    for k in range(num + 2):
        report = layerlock.lock(model, k, partition=groups)
        expected = {n for n, gid in timm_ids.items() if gid >= num - k}
        assert trainable_names(model) == expected, f"k={k}"
        assert report.trainable_params == sum(
            p.numel() for n, p in model.named_parameters() if n in expected
        )


@pytest.mark.parametrize("name", ["poolformer_s12", "pit_ti_224", "convformer_s18"])
def test_models_without_group_matcher_fall_back(name: str) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=5)
    assert not hasattr(model, "group_matcher")
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "timm"
    assert any("generic" in n for n in groups.notes)
    assert groups.names[0] == "stem" and groups.names[-1] == "head"
    assert len(groups) >= 8  # one group per block across all stages, not just one stage
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups for n in g.param_names) == sorted(names)
