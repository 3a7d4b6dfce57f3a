"""Schedules: text form, presets on a timm ViT and a CNN, validation of malformed input."""

from __future__ import annotations

from typing import Any

import pytest
import timm
from torch import nn

from layerlock import layer_groups
from layerlock.errors import ConfigError, ScheduleError
from layerlock.groups import LayerGroups
from layerlock.optim import LRSchedule, group_multipliers, param_groups
from layerlock.schedule import PRESETS, Schedule, Stage, parse_schedule
from layerlock.unfreezer import Unfreezer

VIT = ["stem", *(f"blocks.{i}" for i in range(6)), "head"]
RESNET = ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"]


@pytest.fixture(scope="module")
def vit_groups() -> LayerGroups:
    groups = layer_groups(timm.create_model("test_vit", num_classes=3))
    assert groups.names == VIT
    return groups


@pytest.fixture(scope="module")
def resnet_groups() -> LayerGroups:
    groups = layer_groups(timm.create_model("test_resnet", num_classes=3))
    assert groups.names == RESNET
    return groups


def names(groups: LayerGroups, indices: frozenset[int]) -> list[str]:
    return [groups[i].name for i in sorted(indices)]


# -- parsing ---------------------------------------------------------------------------
def test_parse_epoch_stages_round_trip() -> None:
    s = parse_schedule("0:1, 2:3, 4:all")
    assert s.unit == "epoch" and s.preset is None
    assert s.stages == (Stage(0, 1), Stage(2, 3), Stage(4, "all"))
    assert parse_schedule(str(s)) == s


def test_parse_step_stages_and_dict() -> None:
    s = parse_schedule("s0:1, s500:all")
    assert s.unit == "step" and s.stages == (Stage(0, 1), Stage(500, "all"))
    assert parse_schedule({0: 1, 3: "all"}) == parse_schedule("0:1, 3:all")
    assert parse_schedule(s) is s


def test_selection_entries_with_commas_continue_the_previous_entry() -> None:
    s = parse_schedule("0:head, 3:blocks.1*,blocks.2")
    assert s.stages == (Stage(0, "head"), Stage(3, "blocks.1*,blocks.2"))
    # ';' separates entries when selections contain ':' (slices)
    s2 = parse_schedule("0:head; 2:1:3")
    assert s2.stages == (Stage(0, "head"), Stage(2, "1:3"))
    assert parse_schedule(str(s2)) == s2


def test_presets_parse_with_parameters() -> None:
    assert parse_schedule("gradual:every=2").params == (("every", "2"),)
    assert parse_schedule("lp-ft:3") == parse_schedule("lp-ft:at=3")
    assert parse_schedule("surgical:blocks.0,head").params == (("groups", "blocks.0,head"),)
    assert set(PRESETS) == {"full", "lp", "lp-ft", "gradual", "chain-thaw", "surgical"}


# -- presets on a ViT and a CNN --------------------------------------------------------
def expected_per_epoch(preset: str, order: list[str], epochs: int) -> list[list[str]]:
    g = len(order)
    table: dict[str, list[list[str]]] = {
        "full": [order] * epochs,
        "lp": [[order[-1]]] * epochs,
        "lp-ft": [[order[-1]] if e < epochs // 2 else order for e in range(epochs)],
        "gradual": [order[max(0, g - 1 - e) :] for e in range(epochs)],
        "gradual:every=2": [order[max(0, g - 1 - e // 2) :] for e in range(epochs)],
        "lp-ft:at=1": [[order[-1]]] + [order] * (epochs - 1),
        "surgical:stem,-1": [[order[0], order[-1]]] * epochs,
        "0:1, 2:3, 4:all": [order[-1:], order[-1:], order[-3:], order[-3:]]
        + [order] * (epochs - 4),
        "chain-thaw:every=1": [[order[-1]]] + [[n] for n in order[:-1]] + [order],
    }
    return table[preset]


PRESET_CASES = [
    "full",
    "lp",
    "lp-ft",
    "lp-ft:at=1",
    "gradual",
    "gradual:every=2",
    "surgical:stem,-1",
    "0:1, 2:3, 4:all",
    "chain-thaw:every=1",
]


@pytest.mark.parametrize("which", ["vit", "resnet"])
@pytest.mark.parametrize("spec", PRESET_CASES)
def test_presets_trainable_sets_per_epoch(
    spec: str, which: str, vit_groups: LayerGroups, resnet_groups: LayerGroups
) -> None:
    groups = vit_groups if which == "vit" else resnet_groups
    epochs = len(groups) + 1 if spec.startswith("chain-thaw") else 6
    plan = parse_schedule(spec).resolve(groups, epochs=epochs, steps_per_epoch=3)
    got = [names(groups, plan.trainable_in_epoch(e)) for e in range(epochs)]
    assert got == expected_per_epoch(spec, groups.names, epochs)
    # within an epoch nothing changes for epoch-based schedules
    for e in range(epochs):
        assert all(plan.trainable_at(e * 3 + i) == plan.trainable_in_epoch(e) for i in range(3))


def test_chain_thaw_auto_splits_the_run_into_equal_stages(vit_groups: LayerGroups) -> None:
    plan = parse_schedule("chain-thaw").resolve(vit_groups, epochs=3, steps_per_epoch=9)
    steps = [e.step for e in plan.events]
    assert steps == [0, 3, 6, 9, 12, 15, 18, 21, 24]  # 27 steps / 9 stages
    assert names(vit_groups, plan.events[0].trainable) == ["head"]
    assert [names(vit_groups, e.trainable) for e in plan.events[1:-1]] == [[n] for n in VIT[:-1]]
    assert names(vit_groups, plan.events[-1].trainable) == VIT
    # re-locking: each single stage locks the previous group
    assert names(vit_groups, plan.events[2].locked) == ["stem"]
    # blocks.5 trained alone from step 21 and stays unlocked into "all": no new ramp
    assert plan.unlocked_since(25) == {i: 24 for i in range(len(VIT)) if i != 6} | {6: 21}


def test_step_schedule_and_unlocked_since(resnet_groups: LayerGroups) -> None:
    plan = parse_schedule("s0:1, s7:2, s9:all").resolve(resnet_groups, epochs=2, steps_per_epoch=5)
    assert names(resnet_groups, plan.trainable_at(6)) == ["fc"]
    assert names(resnet_groups, plan.trainable_at(7)) == ["layer4.0", "fc"]
    assert plan.unlocked_since(8) == {5: 0, 4: 7}
    assert plan.unlocked_since(9)[0] == 9
    assert plan.describe()[1] == "step 7: +layer4.0"


def test_gradual_in_steps_and_late_events_are_noted(vit_groups: LayerGroups) -> None:
    plan = parse_schedule("gradual:every=s4").resolve(vit_groups, epochs=2, steps_per_epoch=10)
    assert [e.step for e in plan.events] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert plan.notes and "never happen" in plan.notes[0] and "[20, 24, 28]" in plan.notes[0]


def test_k_counts_per_tower_and_tower_restriction() -> None:
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(
        embed_dim=8,
        vision_cfg={"image_size": 16, "patch_size": 8, "width": 16, "layers": 2, "head_width": 8},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 2},
    )
    groups = layer_groups(model)
    plan = parse_schedule("0:1").resolve(groups, epochs=1)
    towers = {groups[i].tower for i in plan.trainable_at(0)}
    assert {"visual", "text"} <= towers  # the last group of each tower
    visual = parse_schedule("full").resolve(groups, epochs=1, tower="visual")
    assert {groups[i].tower for i in visual.trainable_at(0)} == {"visual"}


# -- malformed input: every message names the bad value and the choices ----------------
def _resolve(spec: str, **kw: Any) -> Any:
    groups = layer_groups(timm.create_model("test_vit", num_classes=3))
    args: dict[str, Any] = {"epochs": 4, "steps_per_epoch": 2} | kw
    return parse_schedule(spec).resolve(groups, **args)


def _lin() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))


MALFORMED: list[tuple[str, Any, type[Exception], str]] = [
    ("empty", lambda: parse_schedule(""), ScheduleError, "the schedule is empty"),
    ("blank", lambda: parse_schedule("   "), ScheduleError, "the schedule is empty"),
    ("not a string", lambda: parse_schedule(3.5), ScheduleError, "must be a string.*got 3.5"),
    (
        "preset typo",
        lambda: parse_schedule("gradul"),
        ScheduleError,
        "unknown preset 'gradul'; did you mean 'gradual'",
    ),
    (
        "preset underscore",
        lambda: parse_schedule("chain_thaw"),
        ScheduleError,
        "did you mean 'chain-thaw'",
    ),
    (
        "param typo",
        lambda: parse_schedule("gradual:evry=2"),
        ScheduleError,
        "no parameter 'evry'; did you mean 'every'",
    ),
    ("every=0", lambda: parse_schedule("gradual:every=0"), ScheduleError, "every must be >= 1"),
    (
        "every=x",
        lambda: parse_schedule("gradual:every=x"),
        ScheduleError,
        "every='x' must be a non-negative integer",
    ),
    (
        "full takes none",
        lambda: parse_schedule("full:3"),
        ScheduleError,
        "'full' takes no parameters",
    ),
    (
        "param twice",
        lambda: parse_schedule("lp-ft:at=2,at=3"),
        ScheduleError,
        "'at' of 'lp-ft' given twice",
    ),
    (
        "start as step",
        lambda: parse_schedule("gradual:start=s2"),
        ScheduleError,
        "start is a number of groups",
    ),
    (
        "surgical empty",
        lambda: parse_schedule("surgical:"),
        ScheduleError,
        "surgical needs a selection",
    ),
    (
        "same epoch",
        lambda: parse_schedule("0:1, 0:2"),
        ScheduleError,
        "increase strictly: epoch 0 follows epoch 0",
    ),
    (
        "decreasing",
        lambda: parse_schedule("0:1, 3:2, 2:all"),
        ScheduleError,
        "epoch 2 follows epoch 3",
    ),
    (
        "late start",
        lambda: parse_schedule("1:1, 2:all"),
        ScheduleError,
        "the first entry is at epoch 1; start at 0",
    ),
    ("negative k", lambda: parse_schedule("0:-1"), ScheduleError, "k must be >= 0, got -1"),
    (
        "empty entry",
        lambda: parse_schedule("0:1,, 2:all"),
        ScheduleError,
        "empty entry \\(position 2\\)",
    ),
    ("mixed units", lambda: parse_schedule("0:1, s5:all"), ScheduleError, "mixes epochs and steps"),
    (
        "nothing after colon",
        lambda: parse_schedule("0:1, 2:"),
        ScheduleError,
        "epoch 2: nothing after ':'",
    ),
    (
        "no time",
        lambda: parse_schedule("0:1; head"),
        ScheduleError,
        "entry 'head' is not TIME:GROUPS",
    ),
    (
        "k too big",
        lambda: _resolve("0:1, 2:9"),
        ScheduleError,
        "k=9 is out of range: this model has 8 groups",
    ),
    (
        "group typo",
        lambda: _resolve("0:1, 2:blokcs.1"),
        ScheduleError,
        "unknown group 'blokcs.1'; did you mean 'blocks.1'",
    ),
    (
        "glob matches none",
        lambda: _resolve("0:zz*"),
        ScheduleError,
        "pattern 'zz\\*' matches no group",
    ),
    (
        "start too big",
        lambda: _resolve("gradual:start=9"),
        ScheduleError,
        "start=9 is out of range",
    ),
    ("lp-ft at 0", lambda: _resolve("lp-ft:at=0"), ScheduleError, "never trains the head alone"),
    (
        "epochs 0",
        lambda: _resolve("full", epochs=0),
        ScheduleError,
        "epochs must be an int >= 1, got 0",
    ),
    (
        "steps 0",
        lambda: _resolve("full", steps_per_epoch=0),
        ScheduleError,
        "steps_per_epoch must be an int >= 1, got 0",
    ),
    (
        "unknown tower",
        lambda: _resolve("full", tower="visual"),
        ScheduleError,
        "unknown tower 'visual'",
    ),
    (
        "lr 0",
        lambda: LRSchedule(lr=0, total_steps=5),
        ConfigError,
        "lr must be a number > 0, got 0",
    ),
    (
        "lr kind",
        lambda: LRSchedule(lr=1, total_steps=5, kind="cosin"),
        ConfigError,
        "unknown LR schedule 'cosin'",
    ),
    (
        "total steps",
        lambda: LRSchedule(lr=1, total_steps=0),
        ConfigError,
        "total_steps must be an int >= 1",
    ),
    (
        "warmup start",
        lambda: LRSchedule(lr=1, total_steps=5, unlock_warmup_start=2),
        ConfigError,
        "unlock_warmup_start must be a number in \\[0, 1\\]",
    ),
    (
        "layer decay",
        lambda: group_multipliers(layer_groups(_lin()), layer_decay=1.5),
        ConfigError,
        "layer_decay must be <= 1.0, got 1.5",
    ),
    (
        "discriminative",
        lambda: group_multipliers(layer_groups(_lin()), discriminative=0),
        ConfigError,
        "discriminative must be a number > 0",
    ),
    (
        "weight decay",
        lambda: param_groups(layer_groups(_lin()), lr=0.1, weight_decay=-1),
        ConfigError,
        "weight_decay must be a number >= 0, got -1",
    ),
    (
        "bad optimizer",
        lambda: Unfreezer(_lin(), "full", epochs=1, steps_per_epoch=1, optimizer=3),
        ConfigError,
        "optimizer must be None",
    ),  # type: ignore[arg-type]
    (
        "ddp given",
        lambda: Unfreezer(_ddp_like(), "full", epochs=1, steps_per_epoch=1),
        ConfigError,
        "pass the unwrapped model",
    ),
]


def _ddp_like() -> nn.Module:
    class DistributedDataParallel(nn.parallel.DistributedDataParallel):
        def __init__(self, module: nn.Module) -> None:
            nn.Module.__init__(self)
            self.module = module

    return DistributedDataParallel(_lin())


@pytest.mark.parametrize("label,call,exc,match", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_inputs_have_clear_messages(
    label: str, call: Any, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule("2:1, 1:-1, s3:all")
    lines = str(info.value).splitlines()
    assert lines[0] == "schedule '2:1, 1:-1, s3:all' is not valid:"
    assert len(lines) == 5, lines  # mixed units, negative k, order twice... one per line
    assert any("mixes epochs and steps" in x for x in lines)
    assert any("k must be >= 0" in x for x in lines)
    assert any("first entry is at epoch 2" in x for x in lines)
    with pytest.raises(ScheduleError) as info2:
        _resolve("0:1, 2:9, 3:blokcs.1")
    assert len(str(info2.value).splitlines()) == 3


def test_schedule_is_frozen_data() -> None:
    s = Schedule.parse("lp-ft")
    with pytest.raises(AttributeError):
        s.preset = "full"  # type: ignore[misc]
    assert hash(s) == hash(Schedule.parse("lp-ft"))


def test_syntax_and_fit_problems_are_reported_together() -> None:
    import timm

    from layerlock import layer_groups
    from layerlock.errors import ScheduleError
    from layerlock.schedule import resolve_schedule
    from layerlock.unfreezer import Unfreezer

    model = timm.create_model("test_resnet", num_classes=3)
    groups = layer_groups(model)
    for call in (
        lambda: resolve_schedule("0:1, 0:99, 2:blok.*", groups, epochs=4),
        lambda: Unfreezer(model, "0:1, 0:99, 2:blok.*", epochs=4, steps_per_epoch=1),
    ):
        with pytest.raises(ScheduleError) as exc:
            call()
        lines = str(exc.value).splitlines()[1:]
        assert len(lines) == 3
        assert "times must increase strictly" in lines[0]
        assert "k=99 is out of range" in lines[1]
        assert "'blok.*' matches no group" in lines[2]


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ("0:0", "epoch 0"),
        ("0:none", "epoch 0"),
        ("0:all, 1:0", "epoch 1"),
        ("0:1, 2:none, 3:all", "epoch 2"),
        ("s0:1, s3:0", "step 3"),
    ],
)
def test_a_stage_where_nothing_trains_is_refused_naming_its_time(
    vit_groups: LayerGroups, spec: str, where: str
) -> None:
    from layerlock.schedule import resolve_schedule

    with pytest.raises(ScheduleError, match=rf"nothing trains from {where} on") as info:
        resolve_schedule(spec, vit_groups, epochs=4, steps_per_epoch=2)
    assert "\n" not in str(info.value)  # one problem, one line
    with pytest.raises(ScheduleError, match=rf"nothing trains from {where} on"):
        parse_schedule(spec).resolve(vit_groups, epochs=4, steps_per_epoch=2)


def test_nothing_training_only_after_the_end_is_allowed(
    vit_groups: LayerGroups,
) -> None:
    from layerlock.schedule import resolve_schedule

    plan = resolve_schedule("0:1, 9:0", vit_groups, epochs=2)
    assert "never happen" in plan.notes[0]


@pytest.mark.parametrize("time", ["inf", "nan", "1.5", "1e3", "-inf"])
def test_non_integer_times_are_named_not_taken_for_group_names(
    vit_groups: LayerGroups, time: str
) -> None:
    from layerlock.schedule import resolve_schedule

    for spec in (f"0:1, {time}:all", f"{time}:all"):
        with pytest.raises(ScheduleError, match=rf"time '{time}' .* is not a whole number") as info:
            resolve_schedule(spec, vit_groups, epochs=4)
        assert "unknown group" not in str(info.value) and "preset" not in str(info.value)
