"""Partition invariants, naming, selection and errors of layer_groups."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import layerlock
from layerlock.adapters import GroupSpec
from layerlock.adapters.generic import GenericAdapter
from layerlock.groups import check_partition


def _assert_partition(model: nn.Module, groups: layerlock.LayerGroups) -> None:
    names = [n for n, _ in model.named_parameters()]
    flat = [n for g in groups for n in g.param_names]
    assert sorted(flat) == sorted(names)  # complete and disjoint
    assert len(set(groups.names)) == len(groups)
    assert [g.index for g in groups] == list(range(len(groups)))
    assert groups.num_params == sum(p.numel() for p in model.parameters())
    for g in groups:
        assert g.num_params == sum(p.numel() for p in g.params)
        assert all(p is dict(model.named_parameters())[n] for n, p in zip(g.param_names, g.params))


def test_generic_adapter_on_pure_torch_cnn(cnn: nn.Module) -> None:
    groups = layerlock.layer_groups(cnn)
    assert groups.adapter == "generic"
    assert groups.names == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    _assert_partition(cnn, groups)
    assert "blocks.1" in groups[2].modules


def test_generic_adapter_on_tiny_vit(tiny_vit: nn.Module) -> None:
    groups = layerlock.layer_groups(tiny_vit)
    assert groups.names == ["stem", "blocks.0", "blocks.1", "head"]
    assert set(groups["stem"].param_names) >= {"cls_token", "pos_embed", "patch_embed.weight"}
    assert set(groups["head"].param_names) == {
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    _assert_partition(tiny_vit, groups)


def test_generic_adapter_without_block_list() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)

    groups = layerlock.layer_groups(Flat())
    assert groups.names == ["stem", "a", "b"]


def test_tied_parameters_are_counted_once() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, nn.Linear(4, 4), nn.Linear(4, 4), head)
    groups = layerlock.layer_groups(model)
    _assert_partition(model, groups)
    assert groups.num_params == 10 * 4 + 2 * (16 + 4)


def test_timm_vit_groups_and_names() -> None:
    model = timm.create_model("vit_tiny_patch16_224", depth=3, num_classes=4)
    groups = layerlock.layer_groups(model)
    assert groups.names == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    # the final norm shares the last block's group (timm's (99999,) suffix)
    assert "norm.weight" in groups["blocks.2"].param_names
    assert groups.first_unlocked_by(0) == 5 and groups.first_unlocked_by(4) == 1
    _assert_partition(model, groups)


def test_timm_coarse_and_module_ownership() -> None:
    model = timm.create_model("resnet18", num_classes=4)
    coarse = layerlock.layer_groups(model, coarse=True)
    assert coarse.names == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert coarse.module_group["layer3.0.bn1"] == 3
    assert coarse.module_group["act1"] == 0  # parameter-less module takes its neighbours' group


def test_selection_forms(cnn: nn.Module) -> None:
    groups = layerlock.layer_groups(cnn)
    assert groups.select(0) == [0]
    assert groups.select(-1) == [4]
    assert groups.select("head") == [4]
    assert groups.select("blocks.*") == [1, 2, 3]
    assert groups.select(slice(1, 3)) == [1, 2]
    assert groups.select("1:3") == [1, 2]
    assert groups.select("-2:") == [3, 4]
    assert groups.select("0, blocks.2, -1") == [0, 3, 4]
    assert groups.select(["stem", 2, slice(-1, None)]) == [0, 2, 4]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("block.1", r"unknown group 'block.1'; did you mean 'blocks.1'"),
        ("nothing*", r"pattern 'nothing\*' matches no group"),
        (7, r"group index 7 out of range; valid: 0..4"),
        ("-9", r"group index -9 out of range"),
        ("3:1", r"slice '3:1' selects no group"),
        ([], r"the selection \[\] is empty"),
        (2.5, r"cannot select groups with 2.5"),
        (True, r"cannot be a bool"),
    ],
)
def test_selection_errors(cnn: nn.Module, spec: object, message: str) -> None:
    groups = layerlock.layer_groups(cnn)
    with pytest.raises(layerlock.UnknownGroupError, match=message):
        groups.select(spec)  # type: ignore[arg-type]


def test_lookup_by_unknown_name_suggests(cnn: nn.Module) -> None:
    groups = layerlock.layer_groups(cnn)
    with pytest.raises(KeyError, match="did you mean 'head'"):
        groups["haed"]


def test_model_without_parameters_is_an_error() -> None:
    with pytest.raises(layerlock.LayerlockError, match="ReLU has no parameters"):
        layerlock.layer_groups(nn.ReLU())


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([GroupSpec("a", ("0.weight",))], r"puts no group on 3 parameter"),
        (
            [
                GroupSpec("a", ("0.weight", "0.bias", "1.weight")),
                GroupSpec("b", ("1.weight", "1.bias")),
            ],
            r"parameter '1.weight' is in groups 'a' and 'b'",
        ),
        (
            [GroupSpec("a", ("0.weight", "0.bias", "1.weight", "1.bias", "x"))],
            r"unknown parameter 'x'",
        ),
        (
            [GroupSpec("a", ()), GroupSpec("b", ("0.weight", "0.bias", "1.weight", "1.bias"))],
            r"group 'a' is empty",
        ),
        (
            [GroupSpec("a", ("0.weight", "0.bias")), GroupSpec("a", ("1.weight", "1.bias"))],
            r"group name 'a' used twice",
        ),
    ],
)
def test_partition_check_catches_adapter_bugs(specs: list[GroupSpec], message: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(layerlock.PartitionError, match=message):
        check_partition(specs, dict(model.named_parameters()))


def test_buggy_adapter_is_caught_by_layer_groups(
    monkeypatch: pytest.MonkeyPatch, cnn: nn.Module
) -> None:
    original = GenericAdapter.groups

    def drop_head(self: GenericAdapter, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        return original(self, model, coarse)[:-1]

    monkeypatch.setattr(GenericAdapter, "groups", drop_head)
    with pytest.raises(layerlock.PartitionError, match="generic puts no group on 2 parameter"):
        layerlock.layer_groups(cnn)


def test_user_matcher_in_timm_format(tiny_vit: nn.Module) -> None:
    matcher = {
        "stem": r"^cls_token|^pos_embed|^patch_embed",
        "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
    }
    groups = layerlock.layer_groups(tiny_vit, matcher=matcher)
    assert groups.adapter == "matcher"
    assert groups.names == ["stem", "blocks.0", "blocks.1", "head"]
    assert "norm.weight" in groups["blocks.1"].param_names
    with pytest.raises(layerlock.ConfigError, match="bad regex"):
        layerlock.layer_groups(tiny_vit, matcher={"stem": "([unclosed"})


def test_unknown_adapter_name(cnn: nn.Module) -> None:
    with pytest.raises(
        layerlock.LayerlockError, match="unknown adapter 'timmm'; did you mean 'timm'"
    ):
        layerlock.layer_groups(cnn, adapter="timmm")


def test_wrappers_are_looked_through(cnn: nn.Module) -> None:
    assert layerlock.layer_groups(nn.DataParallel(cnn)).names == layerlock.layer_groups(cnn).names


def test_choosing_an_adapter_imports_no_optional_library() -> None:
    code = (
        "import sys, torch, layerlock\n"
        "layerlock.layer_groups(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))\n"
        "bad = [m for m in ('open_clip', 'transformers', 'lightning') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_names_resolve() -> None:
    missing = [name for name in layerlock.__all__ if not hasattr(layerlock, name)]
    assert not missing
    assert callable(layerlock.Unfreezer) and callable(layerlock.parse_schedule)


# -- models that name their own groups (the "own" adapter) ------------------------------------


class _Grouped(nn.Module):
    """stem -> 3 blocks -> head, grouped by its own layer_groups()."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def layer_groups(self) -> list[tuple[str, list]]:
        return [
            ("low", [self.stem, self.blocks[0]]),
            ("high", [self.blocks[1], self.blocks[2].weight, "blocks.2.bias"]),
            ("head", [self.head, None]),
        ]


def test_own_layer_groups_are_used(tiny_vit: nn.Module) -> None:
    model = _Grouped()
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "own"
    assert groups.names == ["low", "high", "head"]
    assert groups["high"].param_names == (
        "blocks.1.weight",
        "blocks.1.bias",
        "blocks.2.weight",
        "blocks.2.bias",
    )
    _assert_partition(model, groups)
    report = layerlock.lock(model, 1)  # lock agrees with the method
    assert report.trainable_groups == ["head"]
    # a model without the method keeps its family's adapter
    assert layerlock.layer_groups(tiny_vit).adapter == "generic"


def test_own_layer_groups_may_return_layer_groups_and_take_coarse() -> None:
    class Coarse(_Grouped):
        def layer_groups(self, coarse: bool = False):  # type: ignore[override]
            if coarse:
                return layerlock.layer_groups(self, adapter="generic", coarse=True)
            return [("all", [self])]

    model = Coarse()
    assert layerlock.layer_groups(model).names == ["all"]
    coarse = layerlock.layer_groups(model, coarse=True)
    assert coarse.adapter == "own"
    assert coarse.names == layerlock.layer_groups(model, adapter="generic").names


def test_own_layer_groups_may_ask_layerlock_for_its_groups() -> None:
    class Renamed(_Grouped):
        def layer_groups(self):  # type: ignore[override]
            # re-entrant: the model is not offered to its own method again (no recursion)
            return [(f"g{g.index}", list(g.params)) for g in layerlock.layer_groups(self)]

    groups = layerlock.layer_groups(Renamed())
    assert groups.adapter == "own"
    assert groups.names == ["g0", "g1", "g2", "g3", "g4"]  # the generic groups, renamed


def test_own_layer_groups_must_cover_every_parameter() -> None:
    class Partial(_Grouped):
        def layer_groups(self):  # type: ignore[override]
            return [("low", [self.stem]), ("head", [self.head])]

    with pytest.raises(
        layerlock.PartitionError,
        match=r"Partial.layer_groups\(\) puts no group on 6 parameter\(s\): blocks.0.weight",
    ):
        layerlock.layer_groups(Partial())

    class Stranger(_Grouped):
        def layer_groups(self):  # type: ignore[override]
            return [("all", [self]), ("other", [nn.Linear(1, 1)])]

    with pytest.raises(layerlock.PartitionError, match=r"not a parameter of the model"):
        layerlock.layer_groups(Stranger())

    class Typo(_Grouped):
        def layer_groups(self):  # type: ignore[override]
            return [("all", [self, "blocks.9.weight"])]

    with pytest.raises(layerlock.PartitionError, match=r"names parameter 'blocks.9.weight'"):
        layerlock.layer_groups(Typo())


def test_unrelated_layer_groups_method_falls_back(cnn: nn.Module) -> None:
    class Other(type(cnn)):  # type: ignore[misc]
        def layer_groups(self):
            return [self.stem, self.blocks]  # another library's meaning of the name

    model = copy.deepcopy(cnn)
    model.__class__ = Other
    groups = layerlock.layer_groups(model)
    assert groups.adapter == "own"
    assert groups.names == layerlock.layer_groups(cnn).names
    assert any("does not return layer groups" in n and "generic" in n for n in groups.notes)


def test_layer_groups_property_is_not_the_protocol(cnn: nn.Module) -> None:
    class WithProperty(type(cnn)):  # type: ignore[misc]
        @property
        def layer_groups(self):  # another library's attribute of that name: never called
            raise RuntimeError("must not be evaluated")

    model = copy.deepcopy(cnn)
    model.__class__ = WithProperty
    assert layerlock.layer_groups(model).adapter == "generic"
