"""Schedules: at which epoch or step which layer groups are trainable.

A :class:`Schedule` is pure data; :meth:`Schedule.resolve` fits it to a model's
:class:`~layerlock.groups.LayerGroups` and a training length and returns a
:class:`ResolvedSchedule` that answers "which groups train at global step t".

Text form (CLI, configs)::

    "0:1, 2:3, 4:all"        epoch -> unlocked groups: the last k (per tower), all, none
    "0:head; 3:blocks.1*"    epoch -> a selection (names, globs, indices, slices: see
                             LayerGroups.select); separate entries with ';' when a
                             selection itself contains ',' or ':'
    "s0:1, s500:all"         the same by global optimizer step: every time carries an 's'

Entries are separated by ``,`` (or only by ``;`` when the text contains a ``;``). A piece
without a leading ``TIME:`` continues the previous entry's selection, so
``"0:head, 3:blocks.1*,blocks.2"`` unlocks two groups at epoch 3. The first entry must be
at time 0 and times must increase strictly; times are whole numbers (``inf``, ``1.5`` and
the like are refused as times, not read as group names).

Every stage must train something: a schedule under which no group trains from some time
on (``"0:0"``, ``"0:all, 1:none"``) is refused when it is resolved, naming that time, since
such a stage only burns compute (and a training step with nothing to train fails). Stages
that begin after the last step never happen and are not checked. With ``tower=...`` the
schedule steers one tower of a multi-tower model and the other tower is left as it is, so
``k=0`` (that tower stays locked throughout) is allowed there.

Presets (``name`` or ``name:k=v,k=v``; times may carry an ``s`` for steps):

==================  ================================================================
``full``            everything trains from the start
``lp``              linear probe: the head (last group of each tower) only, throughout
``lp-ft``           head only, then everything from ``at`` (default: half the epochs)
``gradual``         ULMFiT: the head, then one more group from the top every ``every``
                    epochs (default 1; ``every=s100`` for steps), ``start`` groups first
``chain-thaw``      Felbo et al.: the head alone, then each group alone from the input
                    side up (the head excluded), then all; each stage lasts ``every``
                    (default ``auto``: the training split into G + 1 equal stages)
``surgical:SEL``    a fixed selection throughout, e.g. ``surgical:blocks.0,head``
==================  ================================================================

Example:
    >>> import timm
    >>> from layerlock import layer_groups
    >>> groups = layer_groups(timm.create_model("test_vit", num_classes=3))
    >>> plan = parse_schedule("gradual").resolve(groups, epochs=3, steps_per_epoch=10)
    >>> [groups[i].name for i in sorted(plan.trainable_at(10))]
    ['blocks.5', 'head']
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .adapters import MODEL_LEVEL
from .errors import ScheduleError, UnknownGroupError, suggest
from .groups import LayerGroups

__all__ = [
    "PRESETS",
    "ResolvedSchedule",
    "Schedule",
    "Stage",
    "UnlockEvent",
    "parse_schedule",
    "resolve_schedule",
]

Unit = Literal["epoch", "step"]

#: Preset name -> (parameters it accepts, one-line description).
PRESETS: dict[str, tuple[tuple[str, ...], str]] = {
    "full": ((), "everything trains from the start"),
    "lp": ((), "linear probe: only the head trains"),
    "lp-ft": (("at",), "head only, then everything from epoch `at` (default half)"),
    "gradual": (("every", "start"), "ULMFiT: one more group from the top every `every` epochs"),
    "chain-thaw": (("every",), "head, then each group alone from the input side, then all"),
    "surgical": (("groups",), "a fixed selection of groups throughout"),
}

_TIME = re.compile(r"\s*(s?)(-?\d+)\s*:(.*)", re.S)


@dataclass(frozen=True)
class Stage:
    """One entry of an explicit schedule.

    Attributes:
        at: Epoch (or global step when ``unit == "step"``) the stage starts at.
        unlocked: k (the last k groups of each tower train), ``"all"``, ``"none"`` or a
            group selection string for :meth:`LayerGroups.select`.
    """

    at: int
    unlocked: int | str


@dataclass(frozen=True)
class UnlockEvent:
    """A change of the trainable set.

    Attributes:
        step: Global optimizer step from which the new set applies.
        trainable: Indices of the trainable groups from ``step`` on.
        unlocked: Indices that became trainable here.
        locked: Indices that stopped being trainable here.
    """

    step: int
    trainable: frozenset[int]
    unlocked: frozenset[int]
    locked: frozenset[int]


@dataclass(frozen=True)
class Schedule:
    """Which groups train when: explicit stages or a named preset. Pure data.

    Build it with :func:`parse_schedule` (or :meth:`parse`), or directly from stages.

    Attributes:
        stages: Explicit stages, time-ordered (empty for a preset).
        unit: ``"epoch"`` or ``"step"`` for ``stages``.
        preset: Preset name, or None.
        params: Preset parameters as ``(key, value)`` string pairs.

    Example:
        >>> s = Schedule.parse("0:1, 2:3, 4:all")
        >>> s.stages[1], str(s)
        (Stage(at=2, unlocked=3), '0:1, 2:3, 4:all')
    """

    stages: tuple[Stage, ...] = ()
    unit: Unit = "epoch"
    preset: str | None = None
    params: tuple[tuple[str, str], ...] = field(default=())

    @staticmethod
    def parse(text: str | Schedule) -> Schedule:
        """Same as :func:`parse_schedule`."""
        return parse_schedule(text)

    def __str__(self) -> str:
        if self.preset is not None:
            if self.preset == "surgical":
                return f"surgical:{dict(self.params)['groups']}"
            args = ",".join(f"{k}={v}" for k, v in self.params)
            return self.preset + (f":{args}" if args else "")
        prefix = "s" if self.unit == "step" else ""
        sep = (
            "; "
            if any(
                isinstance(s.unlocked, str) and ("," in s.unlocked or ":" in s.unlocked)
                for s in self.stages
            )
            else ", "
        )
        return sep.join(f"{prefix}{s.at}:{s.unlocked}" for s in self.stages)

    def resolve(
        self,
        groups: LayerGroups,
        epochs: int,
        steps_per_epoch: int = 1,
        *,
        tower: str | None = None,
    ) -> ResolvedSchedule:
        """Fit the schedule to a model's groups and a training length.

        Args:
            groups: The model's layer groups.
            epochs: Number of epochs of the run.
            steps_per_epoch: Optimizer steps per epoch (epoch times become
                ``epoch * steps_per_epoch``).
            tower: Restrict k, ``all`` and the presets to one tower of a multi-tower
                model (the other tower is left as it is).

        Returns:
            The resolved schedule.

        Raises:
            ScheduleError: Listing every problem (k out of range, unknown group names,
                bad lengths), one per line.

        Example:
            >>> import torch.nn as nn
            >>> from layerlock import layer_groups
            >>> groups = layer_groups(nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)]))
            >>> r = parse_schedule("0:1, 2:all").resolve(groups, epochs=4, steps_per_epoch=5)
            >>> sorted(r.trainable_at(9)), sorted(r.trainable_at(10))
            ([3], [0, 1, 2, 3])
        """
        problems: list[str] = []
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            problems.append(f"epochs must be an int >= 1, got {epochs!r}")
            epochs = 1
        if (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, int)
            or steps_per_epoch < 1
        ):
            problems.append(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
            steps_per_epoch = 1
        pool = _pool(groups, tower, problems)
        stages: list[tuple[int, frozenset[int]]] = []
        if pool:
            spe = steps_per_epoch
            if self.preset is None:
                for st in self.stages:
                    sel = _resolve_value(st.unlocked, groups, pool, tower, problems)
                    stages.append((st.at * (spe if self.unit == "epoch" else 1), sel))
            else:
                stages = _preset_stages(self, groups, pool, tower, epochs, spe, problems)
        if tower is None and not problems:
            _check_something_trains(stages, epochs * steps_per_epoch, steps_per_epoch, problems)
        if problems:
            raise ScheduleError(_join(f"schedule {str(self)!r} does not fit this model", problems))
        return ResolvedSchedule.from_stages(self, groups, stages, epochs, steps_per_epoch)


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule fitted to a model: the trainable set at every global step.

    Attributes:
        schedule: The schedule it came from.
        group_names: Names of the model's groups, index order.
        epochs: Number of epochs.
        steps_per_epoch: Optimizer steps per epoch.
        events: Changes of the trainable set in step order; the first is at step 0.
        notes: Remarks (events after the end of training that never happen).
    """

    schedule: Schedule
    group_names: tuple[str, ...]
    epochs: int
    steps_per_epoch: int
    events: tuple[UnlockEvent, ...]
    notes: tuple[str, ...] = ()

    @classmethod
    def from_stages(
        cls,
        schedule: Schedule,
        groups: LayerGroups,
        stages: Sequence[tuple[int, frozenset[int]]],
        epochs: int,
        steps_per_epoch: int,
    ) -> ResolvedSchedule:
        """Build from ``(step, trainable indices)`` pairs (steps strictly increasing)."""
        events: list[UnlockEvent] = []
        prev: frozenset[int] = frozenset()
        for step, sel in stages:
            if events and sel == prev:
                continue
            events.append(UnlockEvent(step, sel, sel - prev, prev - sel))
            prev = sel
        total = epochs * steps_per_epoch
        late = [e.step for e in events if e.step >= total]
        notes = (
            (
                f"{len(late)} change(s) at step(s) {late} come after the last step ({total - 1}) and never happen",
            )
            if late
            else ()
        )
        return cls(schedule, tuple(groups.names), epochs, steps_per_epoch, tuple(events), notes)

    @property
    def total_steps(self) -> int:
        """``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch

    def event_index(self, step: int) -> int:
        """Index into :attr:`events` of the event in force at ``step``."""
        return max(0, bisect.bisect_right([e.step for e in self.events], step) - 1)

    def trainable_at(self, step: int) -> frozenset[int]:
        """Indices of the groups that train at global step ``step``."""
        return self.events[self.event_index(step)].trainable

    def trainable_in_epoch(self, epoch: int) -> frozenset[int]:
        """Indices of the groups that train at the first step of ``epoch``."""
        return self.trainable_at(epoch * self.steps_per_epoch)

    def unlocked_since(self, step: int) -> dict[int, int]:
        """For each group trainable at ``step``: the step it was last unlocked at."""
        since: dict[int, int] = {}
        for e in self.events[: self.event_index(step) + 1]:
            for i in e.locked:
                since.pop(i, None)
            for i in e.unlocked:
                since[i] = e.step
        return since

    def describe(self) -> list[str]:
        """One line per event: ``"step 20 (epoch 2): +blocks.4 -head"``."""
        lines = []
        for e in self.events:
            where = f"step {e.step}"
            if e.step % self.steps_per_epoch == 0:
                where += f" (epoch {e.step // self.steps_per_epoch})"
            changes = [f"+{self.group_names[i]}" for i in sorted(e.unlocked)]
            changes += [f"-{self.group_names[i]}" for i in sorted(e.locked)]
            lines.append(f"{where}: {' '.join(changes) if changes else 'nothing trains'}")
        return lines


# -- parsing ---------------------------------------------------------------------------
def parse_schedule(text: str | Schedule | Mapping[int, int | str]) -> Schedule:
    """Parse a schedule's text form (see the module docstring) or a ``{epoch: k}`` dict.

    Every problem is reported at once.

    Args:
        text: The text, a dict ``{epoch: k | "all" | selection}``, or a Schedule (returned).

    Returns:
        The :class:`Schedule`.

    Raises:
        ScheduleError: Listing every problem, one per line.

    Example:
        >>> parse_schedule("s0:1, s500:all").unit
        'step'
        >>> parse_schedule("gradual:every=2").params
        (('every', '2'),)
        >>> parse_schedule("0:2, 0:1")
        Traceback (most recent call last):
        ...
        layerlock.errors.ScheduleError: schedule '0:2, 0:1' is not valid: times must increase strictly: epoch 0 follows epoch 0
    """
    if isinstance(text, Schedule):
        return text
    problems: list[str] = []
    sched, raw = _parse(text, problems)
    if problems:
        raise ScheduleError(_join(f"schedule {raw!r} is not valid", problems))
    return sched


def resolve_schedule(
    text: str | Schedule | Mapping[int, int | str],
    groups: LayerGroups,
    epochs: int,
    steps_per_epoch: int = 1,
    *,
    tower: str | None = None,
) -> ResolvedSchedule:
    """Parse and fit a schedule to a model in one go, reporting every problem at once.

    Unlike ``parse_schedule(text).resolve(...)``, syntax problems (times out of order, bad
    entries, unknown presets) and problems with this model (k out of range, unknown group
    names) come back together in one :class:`ScheduleError`.

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> groups = layer_groups(nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)]))
        >>> resolve_schedule("0:1, 0:9, 2:x*", groups, epochs=4)
        Traceback (most recent call last):
        ...
        layerlock.errors.ScheduleError: schedule '0:1, 0:9, 2:x*' is not valid for this model:
          times must increase strictly: epoch 0 follows epoch 0
          k=9 is out of range: this model has 4 groups (k = 0..4, or 'all')
          pattern 'x*' matches no group; groups: 0, 1, 2, 3
    """
    if isinstance(text, Schedule):
        return text.resolve(groups, epochs, steps_per_epoch, tower=tower)
    problems: list[str] = []
    sched, raw = _parse(text, problems)
    if problems:
        if sched.preset is None:
            pool = _pool(groups, tower, problems)
            if pool:
                for st in sched.stages:
                    _resolve_value(st.unlocked, groups, pool, tower, problems)
        raise ScheduleError(_join(f"schedule {raw!r} is not valid for this model", problems))
    return sched.resolve(groups, epochs, steps_per_epoch, tower=tower)


def _parse(text: str | Mapping[int, int | str], problems: list[str]) -> tuple[Schedule, str]:
    """Parse leniently: append problems, return what could be read."""
    if isinstance(text, Mapping):
        items = sorted(text.items())
        text = ", ".join(f"{k}:{v}" for k, v in items)
    if not isinstance(text, str):
        raise ScheduleError(
            f"a schedule must be a string such as '0:1, 2:all' or a preset "
            f"({', '.join(PRESETS)}), got {text!r}"
        )
    raw = text
    text = text.strip()
    if not text:
        raise ScheduleError(
            "the schedule is empty; give stages such as '0:1, 2:all' or a preset: "
            + ", ".join(PRESETS)
        )
    looks_timed = text[0].isdigit() or text[0] == "-" or (text[0] == "s" and text[1:2].isdigit())
    if not looks_timed and _non_integer_time(text) is None:
        return _parse_preset(text, problems), raw
    return _parse_stages(text, problems), raw


def _join(head: str, problems: list[str]) -> str:
    """One problem: one line; more: one per line under ``head``."""
    if len(problems) == 1:
        return f"{head}: {problems[0]}"
    return head + ":\n" + "\n".join(f"  {p}" for p in problems)


def _parse_preset(text: str, problems: list[str]) -> Schedule:
    name, _, arg = text.partition(":")
    name = name.strip().lower()
    if name not in PRESETS:
        problems.append(
            f"unknown preset {name!r}{suggest(name, PRESETS)} Presets: {', '.join(PRESETS)}; "
            "or stages such as '0:1, 2:all'"
        )
        return Schedule(preset=name)
    accepted = PRESETS[name][0]
    if name == "surgical":
        sel = arg.strip()
        if not sel:
            problems.append("surgical needs a selection: 'surgical:blocks.0,head'")
        return Schedule(preset=name, params=(("groups", sel),))
    params: list[tuple[str, str]] = []
    for piece in [p.strip() for p in arg.split(",")] if arg.strip() else []:
        if not piece:
            problems.append(f"empty parameter in {text!r}")
            continue
        key, eq, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            if not accepted:
                problems.append(f"preset {name!r} takes no parameters, got {piece!r}")
                continue
            key, value = accepted[0], piece
        if key not in accepted:
            valid = ", ".join(accepted) if accepted else "none"
            problems.append(
                f"preset {name!r} has no parameter {key!r}{suggest(key, accepted)} Parameters: {valid}"
            )
            continue
        if any(k == key for k, _ in params):
            problems.append(f"parameter {key!r} of {name!r} given twice")
            continue
        if not (key == "every" and value == "auto") and not re.fullmatch(r"s?\d+", value):
            problems.append(
                f"{name} parameter {key}={value!r} must be a non-negative integer "
                f"(an epoch, or s<N> for a step){', or auto' if key == 'every' else ''}"
            )
            continue
        if key in ("every", "start") and value.lstrip("s") == "0":
            problems.append(f"{name} parameter {key} must be >= 1, got {value!r}")
            continue
        if key == "start" and value.startswith("s"):
            problems.append(f"{name} parameter start is a number of groups, not a step: {value!r}")
            continue
        params.append((key, value))
    return Schedule(preset=name, params=tuple(params))


def _parse_stages(text: str, problems: list[str]) -> Schedule:
    sep = ";" if ";" in text else ","
    entries: list[list[str]] = []  # [prefix, time, value]
    for n, piece in enumerate(text.split(sep)):
        if not piece.strip():
            problems.append(f"empty entry (position {n + 1}); separate entries with one '{sep}'")
            continue
        m = _TIME.fullmatch(piece)
        bad_time = _non_integer_time(piece) if m is None else None
        if bad_time is not None:
            problems.append(
                f"time {bad_time!r} in entry {piece.strip()!r} is not a whole number "
                "(an epoch, or s<N> for a step)"
            )
            continue
        if m is None:
            if sep == "," and entries:
                entries[-1][2] += "," + piece.strip()
            else:
                problems.append(
                    f"entry {piece.strip()!r} is not TIME:GROUPS (like '2:3', '4:all', 's500:head')"
                )
            continue
        entries.append([m.group(1), m.group(2), m.group(3).strip()])
    units = {"step" if p else "epoch" for p, _, _ in entries}
    if len(units) > 1:
        problems.append("mixes epochs and steps ('s' times); use one kind of time throughout")
    unit: Unit = "step" if units == {"step"} else "epoch"
    stages: list[Stage] = []
    for prefix, t, value in entries:
        at = int(t)
        label = f"{'step' if prefix else 'epoch'} {at}"
        if at < 0:
            problems.append(f"{label}: times must be >= 0")
        if not value:
            problems.append(f"{label}: nothing after ':'; give k, 'all', 'none' or group names")
            continue
        unlocked: int | str
        if re.fullmatch(r"-?\d+", value):
            unlocked = int(value)
            if unlocked < 0:
                problems.append(
                    f"{label}: k must be >= 0, got {unlocked} (0 locks everything; "
                    "select groups from the top by name, e.g. 'head')"
                )
        else:
            unlocked = value.lower() if value.lower() in ("all", "none") else value
        stages.append(Stage(at, unlocked))
    for a, b in itertools.pairwise(stages):
        if b.at <= a.at:
            problems.append(f"times must increase strictly: {unit} {b.at} follows {unit} {a.at}")
    if stages and stages[0].at != 0:
        problems.append(
            f"the first entry is at {unit} {stages[0].at}; start at 0 (e.g. '0:1, {stages[0].at}:...') "
            "so that it is clear what trains before"
        )
    return Schedule(stages=tuple(stages), unit=unit)


_MAYBE_TIME = re.compile(r"\s*s?([^\s:,;]+)\s*:")


def _non_integer_time(piece: str) -> str | None:
    """The time of ``'inf:all'`` or ``'1.5:3'``: a number, but not a whole one; else None."""
    m = _MAYBE_TIME.match(piece)
    if m is None:
        return None
    try:
        float(m.group(1))
    except ValueError:
        return None
    return m.group(1)


# -- resolution ------------------------------------------------------------------------
def _pool(groups: LayerGroups, tower: str | None, problems: list[str]) -> list[int]:
    if tower is None:
        return list(range(len(groups)))
    towers = [t for t in groups.towers if t not in (None, MODEL_LEVEL)]
    if tower not in towers:
        problems.append(
            f"unknown tower {tower!r}{suggest(str(tower), [str(t) for t in towers])} "
            + (
                f"Towers: {', '.join(str(t) for t in towers)}"
                if towers
                else "this model has one tower"
            )
        )
        return []
    return groups.tower_indices(tower)


def _towers(groups: LayerGroups, tower: str | None) -> list[list[int]]:
    if tower is not None:
        return [groups.tower_indices(tower)]
    return [groups.tower_indices(t) for t in groups.towers if t != MODEL_LEVEL]


def _last_k(groups: LayerGroups, k: int, tower: str | None) -> frozenset[int]:
    chosen: set[int] = set()
    if k <= 0:
        return frozenset()
    for members in _towers(groups, tower):
        chosen.update(members[-k:])
    if tower is None:
        chosen.update(groups.tower_indices(MODEL_LEVEL))
    return frozenset(chosen)


def _max_k(groups: LayerGroups, tower: str | None) -> int:
    return max((len(m) for m in _towers(groups, tower)), default=0)


def _resolve_value(
    value: int | str, groups: LayerGroups, pool: list[int], tower: str | None, problems: list[str]
) -> frozenset[int]:
    if isinstance(value, int):
        top = _max_k(groups, tower)
        if value > top:
            problems.append(
                f"k={value} is out of range: this model has {top} groups"
                + (" per tower" if len(_towers(groups, tower)) > 1 else "")
                + f" (k = 0..{top}, or 'all')"
            )
        return _last_k(groups, value, tower)
    if value == "all":
        return frozenset(pool)
    if value == "none":
        return frozenset()
    try:
        return frozenset(groups.select(value, within=pool))
    except UnknownGroupError as exc:
        problems.append(str(exc))
        return frozenset()


def _check_something_trains(
    stages: Sequence[tuple[int, frozenset[int]]], total: int, spe: int, problems: list[str]
) -> None:
    """Report the first stage, before the end of training, under which no group trains."""
    for step, sel in stages:
        if step < total and not sel:
            where = f"epoch {step // spe}" if step % spe == 0 else f"step {step}"
            problems.append(
                f"nothing trains from {where} on (no group is unlocked there); "
                "unlock at least one group in every stage, e.g. the head with k=1"
            )
            return


def _time(value: str, spe: int) -> int:
    return int(value[1:]) if value.startswith("s") else int(value) * spe


def _preset_stages(
    sched: Schedule,
    groups: LayerGroups,
    pool: list[int],
    tower: str | None,
    epochs: int,
    spe: int,
    problems: list[str],
) -> list[tuple[int, frozenset[int]]]:
    p = dict(sched.params)
    name = sched.preset
    head = _last_k(groups, 1, tower)
    everything = frozenset(pool)
    if name == "full":
        return [(0, everything)]
    if name == "lp":
        return [(0, head)]
    if name == "lp-ft":
        at = _time(p["at"], spe) if "at" in p else max(1, epochs // 2) * spe
        if at == 0:
            problems.append("lp-ft:at=0 never trains the head alone; use 'full' instead")
        return [(0, head), (at, everything)] if at > 0 else [(0, everything)]
    if name == "gradual":
        every = _time(p.get("every", "1"), spe)
        start = int(p.get("start", "1"))
        top = _max_k(groups, tower)
        if start > top:
            problems.append(f"gradual start={start} is out of range: this model has {top} groups")
        out = []
        k, t = start, 0
        while True:
            out.append((t, _last_k(groups, k, tower)))
            if k >= top:
                break
            k, t = k + 1, t + every
        return out
    if name == "chain-thaw":
        order = sorted(pool)
        singles = [i for i in order if i not in head]
        stages_n = 1 + len(singles) + 1
        if p.get("every", "auto") == "auto":
            every = max(1, (epochs * spe) // stages_n)
        else:
            every = _time(p["every"], spe)
        out = [(0, head)]
        for n, i in enumerate(singles, start=1):
            out.append((n * every, frozenset({i})))
        out.append(((len(singles) + 1) * every, everything))
        return out
    if name == "surgical":
        return [(0, _resolve_value(p["groups"], groups, pool, tower, problems))]
    raise ScheduleError(f"unknown preset {name!r}")  # parse_schedule rejects it earlier
