"""The Unfreezer: drives a model, its optimizer and a schedule, step by step.

Design decisions (each one tested):

- **All groups live in the optimizer from the start.** Param groups are named after the
  layer groups (:func:`layerlock.optim.create_optimizer`); nothing is added or removed on an
  unlock, so LR schedulers, checkpoints and param-group positions never shift. A
  handed-in optimizer that lacks some parameters (one built from the trainable
  parameters only, like Hugging Face Trainer's) gets them added once, at construction,
  as named groups.
- **Locked parameters never move.** :func:`layerlock.lock` sets ``requires_grad=False``
  and ``.grad = None``; every torch optimizer skips a parameter whose grad is None: no
  weight decay, no momentum, no change to its optimizer state. The LR of a locked
  group's param groups is also set to 0 (except the ``/no_decay`` groups when
  ``train_norm`` / ``train_bias`` keep norms or biases training).
- **Re-locked groups keep their optimizer state** (chain-thaw locks groups again). While
  locked the state is frozen with the parameter (Adam's step count included); when the
  group is unlocked again, training resumes from those moments. Pass
  ``reset_state_on_unlock=True`` to drop a group's state whenever it is unlocked, so it
  restarts like a fresh parameter.
- **The per-step path is cheap.** :meth:`Unfreezer.sync` compares the schedule's event
  index; only when the trainable set changes does it call ``lock`` (which walks the
  parameters) and rebuild a DDP wrapper. Each step it sets the LR of each param group,
  looked up by name.
- **Resume is exact.** The trainable set and every group's unlock step are functions of
  the global step, so :meth:`Unfreezer.state_dict` stores the step, the optimizer state
  (param groups matched by name on load) and, for checking, the trainable groups.

- **Nothing changes after the run.** Events at or after ``epochs * steps_per_epoch``
  never apply, so the state after the last :meth:`Unfreezer.step` is the state the last
  step trained with.

Learning rates follow :class:`layerlock.optim.LRSchedule` (formula in
:mod:`layerlock.optim`).

Example:
    >>> import torch, timm
    >>> model = timm.create_model("test_vit", num_classes=3)
    >>> u = Unfreezer(model, "0:1, 1:all", epochs=2, steps_per_epoch=2, lr=1e-3)
    >>> x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    >>> for _ in range(4):
    ...     torch.nn.functional.cross_entropy(u.model(x), y).backward()
    ...     u.step()
    >>> u.global_step, u.trainable_groups()[-2:]
    (4, ['blocks.5', 'head'])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .distributed import is_distributed, wrap_ddp
from .errors import ConfigError
from .fsdp import (
    full_optimizer_state,
    is_sharded,
    rebind_groups,
    refuse_fsdp1,
    shard_optimizer_state,
)
from .groups import LayerGroups, layer_groups, unwrap
from .lock import lock
from .optim import (
    NO_DECAY_SUFFIX,
    LRSchedule,
    OptimizerFactory,
    create_optimizer,
    group_multipliers,
    layer_group_of,
    no_weight_decay_names,
)
from .options import UnfreezeOptions, resolve_options
from .schedule import ResolvedSchedule, Schedule, UnlockEvent, resolve_schedule

__all__ = ["Unfreezer"]
_STATE_VERSION = 1


class Unfreezer:
    """Apply a :class:`~layerlock.schedule.Schedule` to a model and its optimizer.

    Call :meth:`step` after each ``loss.backward()`` (it steps the optimizer, clears the
    gradients and moves to the next step), or, when a framework steps the optimizer,
    call :meth:`sync` with the global step before each forward pass. Always call the
    model through :attr:`model` (it is the DDP wrapper under ``torchrun``).

    Args:
        model: The model (unwrapped; a DDP wrapper is built here when ``ddp``).
        options: :class:`~layerlock.options.UnfreezeOptions` (schedule, LRs, weight
            decay, BatchNorm, towers ...), or just a schedule (a Schedule or its text:
            ``"lp-ft"``, ``"0:1, 2:all"`` ...) with the other options at their defaults.
        epochs: Length of the run in epochs.
        steps_per_epoch: Optimizer steps per epoch (``len(loader)`` with gradient
            accumulation accounted for).
        optimizer: None (:func:`~layerlock.optim.create_optimizer`: AdamW over every
            layer group), a factory called with those param groups, or an optimizer built
            elsewhere (its LRs are managed only when its param groups carry layerlock
            names; parameters it lacks are added as named groups).
        groups: Layer groups computed earlier (else :func:`layer_groups` with
            ``options.coarse``).
        ddp: Wrap in DistributedDataParallel and rebuild it on every change (default:
            when a multi-rank process group is initialised).
        ddp_kwargs: Passed to DistributedDataParallel.
        **option_overrides: :class:`~layerlock.options.UnfreezeOptions` fields that
            replace those of ``options`` (``lr=3e-4``, ``weight_decay=0.0`` ...).

    Attributes:
        options: The validated options the Unfreezer runs with.

    Raises:
        ConfigError: Invalid values (listed together) or an unknown option name.
        ScheduleError: A schedule that does not parse or fit the model.
    """

    def __init__(
        self,
        model: nn.Module,
        options: UnfreezeOptions | str | Schedule | None = None,
        *,
        epochs: int,
        steps_per_epoch: int,
        optimizer: torch.optim.Optimizer | OptimizerFactory | None = None,
        groups: LayerGroups | None = None,
        ddp: bool | None = None,
        ddp_kwargs: dict[str, Any] | None = None,
        **option_overrides: Any,
    ) -> None:
        refuse_fsdp1(model)
        self.base = unwrap(model)
        if self.base is not model and isinstance(model, nn.parallel.DistributedDataParallel):
            raise ConfigError(
                "pass the unwrapped model: the Unfreezer builds (and rebuilds) the "
                "DistributedDataParallel wrapper itself; use ddp_kwargs for its options"
            )
        opts = resolve_options(options, **option_overrides)
        self.options = opts
        self.groups = groups if groups is not None else layer_groups(self.base, opts.coarse)
        #: Whether the model is sharded with FSDP2 (no DDP wrapper; full-state checkpoints).
        self.sharded = is_sharded(self.base)
        if self.sharded:  # fully_shard replaced the parameters: look them up by name
            self.groups = rebind_groups(self.groups, self.base)
        self.plan: ResolvedSchedule = resolve_schedule(
            opts.schedule, self.groups, epochs, steps_per_epoch, tower=opts.tower
        )
        self.schedule = self.plan.schedule
        self.lr_schedule = LRSchedule(
            lr=opts.lr,
            total_steps=self.plan.total_steps,
            warmup_steps=opts.warmup_steps,
            kind=opts.lr_schedule,  # type: ignore[arg-type]
            min_lr_ratio=opts.min_lr_ratio,
            unlock_warmup_steps=opts.unlock_warmup_steps,
            unlock_warmup_start=opts.unlock_warmup_start,
        )
        self.multipliers = group_multipliers(
            self.groups, layer_decay=opts.layer_decay, discriminative=opts.discriminative
        )
        self.tower = opts.tower
        self.freeze_bn_stats = opts.freeze_bn_stats
        self.train_norm = opts.train_norm
        self.train_bias = opts.train_bias
        self.reset_state_on_unlock = opts.reset_state_on_unlock
        self._index = {g.name: g.index for g in self.groups}
        self._no_wd = list(opts.no_weight_decay)
        self.weight_decay = opts.weight_decay
        self.optimizer = self._build_optimizer(optimizer)
        names = [pg.get("name") for pg in self.optimizer.param_groups]
        #: Whether the Unfreezer sets the LR of each param group (named groups only).
        self.manage_lr = all(isinstance(n, str) and layer_group_of(n) in self._index for n in names)
        if not self.manage_lr:
            warnings.warn(
                "the optimizer's param groups do not carry layerlock group names "
                "(build it with layerlock.create_optimizer): the Unfreezer will lock and "
                "unlock but leave learning rates to you",
                stacklevel=2,
            )
        if ddp and self.sharded:
            raise ConfigError("ddp=True with an FSDP2 (fully_shard) model: use one or the other")
        self._ddp = (is_distributed() and not self.sharded) if ddp is None else ddp
        self._ddp_kwargs = dict(ddp_kwargs or {})
        self._wrapper: nn.Module = self.base
        self._listeners: list[Callable[[UnlockEvent], None]] = []
        self.global_step = 0
        self._event_index: int | None = None
        self._trainable: frozenset[int] | None = None
        self._since: dict[int, int] = {}
        self.held_at: int | None = None
        self.lr_scale = 1.0
        self._param_ids: dict[int, list[torch.Tensor]] = {
            g.index: list(g.params) for g in self.groups
        }
        self.sync(0)

    # -- construction ------------------------------------------------------------------
    def _build_optimizer(
        self, optimizer: torch.optim.Optimizer | OptimizerFactory | None
    ) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            self._add_missing(optimizer)
            return optimizer
        if optimizer is not None and not callable(optimizer):
            raise ConfigError(
                f"optimizer must be None, a torch.optim.Optimizer or a factory "
                f"taking param groups, got {type(optimizer).__name__}"
            )
        return create_optimizer(self.base, self.options, groups=self.groups, factory=optimizer)

    def _add_missing(self, optimizer: torch.optim.Optimizer) -> None:
        lr, weight_decay = self.options.lr, self.options.weight_decay
        held = {id(p) for pg in optimizer.param_groups for p in pg["params"]}
        taken = {pg.get("name") for pg in optimizer.param_groups}
        skip = no_weight_decay_names(self.base, self._no_wd)
        for g in self.groups:
            missing = [(n, p) for n, p in zip(g.param_names, g.params) if id(p) not in held]
            for suffix, wd in (("", weight_decay), (NO_DECAY_SUFFIX, 0.0)):
                params = [p for n, p in missing if (n in skip) == bool(suffix)]
                if not params:
                    continue
                name = g.name + suffix
                if name in taken:
                    raise ConfigError(
                        f"the optimizer has a param group named {name!r} that lacks some of "
                        "that layer group's parameters; build it with layerlock.create_optimizer"
                    )
                mult = self.multipliers[g.name]
                optimizer.add_param_group(
                    {
                        "params": params,
                        "name": name,
                        "layer_group": g.name,
                        "lr": lr * mult,
                        "lr_scale": mult,
                        "weight_decay": wd,
                    }
                )

    # -- public state ------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The module to call for training: the current DDP wrapper, or the model itself."""
        return self._wrapper

    @property
    def epoch(self) -> int:
        """The epoch of the current global step."""
        return self.global_step // self.plan.steps_per_epoch

    @property
    def trainable(self) -> frozenset[int]:
        """Indices of the groups trainable now."""
        return self._trainable or frozenset()

    def trainable_groups(self) -> list[str]:
        """Names of the groups trainable now, input side first."""
        return [self.groups[i].name for i in sorted(self.trainable)]

    def add_listener(self, fn: Callable[[UnlockEvent], None]) -> None:
        """Call ``fn(event)`` after each change of the trainable set has been applied."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[UnlockEvent], None]) -> None:
        """Stop calling ``fn`` (added with :meth:`add_listener`); unknown ``fn`` is ignored."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def lr_of(self, param_group_name: str, step: int | None = None) -> float:
        """The LR the formula gives a param group at ``step`` (default: now), 0 when locked."""
        step = self.global_step if step is None else step
        gi = self._index[layer_group_of(param_group_name)]
        at = min(step, self.plan.total_steps - 1)
        trainable = self.plan.trainable_at(at)
        if gi not in trainable:
            if param_group_name.endswith(NO_DECAY_SUFFIX) and (self.train_norm or self.train_bias):
                return self.lr_schedule.group_lr(step, self.multipliers[self.groups[gi].name], None)
            return 0.0
        since = self.plan.unlocked_since(at).get(gi)
        return self.lr_schedule.group_lr(step, self.multipliers[self.groups[gi].name], since)

    # -- driving -----------------------------------------------------------------------
    def sync(self, step: int | None = None) -> bool:
        """Bring lock state, DDP wrapper and learning rates to global step ``step``.

        Cheap when nothing changes (no walk over the parameters).

        Args:
            step: The global step about to be trained (default: :attr:`global_step`).

        Returns:
            Whether the trainable set changed.
        """
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ConfigError(f"step must be an int >= 0, got {step!r}")
            self.global_step = step
        changed = False
        at = self._effective_step(self.global_step)
        ei = self.plan.event_index(at)
        if ei != self._event_index:
            event = self.plan.events[ei]
            if event.trainable != self._trainable:
                self._apply(event)
                changed = True
            self._event_index = ei
            self._since = self.plan.unlocked_since(at)
        if self.manage_lr:
            self._set_lrs()
        return changed

    def _effective_step(self, step: int) -> int:
        # past the last step nothing trains any more: keep the last step's state;
        # after hold(), later unlock events do not apply
        at = min(step, self.plan.total_steps - 1)
        return at if self.held_at is None else min(at, self.held_at)

    def event_at(self, step: int) -> int:
        """Index of the plan's event in force at ``step``, as this Unfreezer applies it.

        Equal to ``plan.event_index(step)`` unless :meth:`hold` stopped the schedule.

        Example:
            >>> import torch
            >>> u = Unfreezer(torch.nn.Linear(2, 2), "full", epochs=1, steps_per_epoch=3)
            >>> u.event_at(2)
            0
        """
        return self.plan.event_index(self._effective_step(max(step, 0)))

    def hold(self, lr_factor: float = 1.0, step: int | None = None) -> None:
        """Keep the groups of ``step`` trainable for the rest of the run, and scale the LRs.

        ``step`` defaults to the last step trained (``global_step - 1``): an unlock that
        :meth:`step` already applied for the next step is taken back. Later unlock (or lock)
        events of the schedule no longer apply; the LR formula goes on, multiplied by
        ``lr_factor`` (cumulative over calls). Saved in :meth:`state_dict`. The retention
        guard of ``layerlock finetune`` uses it.

        Example:
            >>> import torch
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
            >>> u = Unfreezer(model, "0:1, 1:all", epochs=2, steps_per_epoch=1)
            >>> u.step()  # step 1 is epoch 1: everything unlocked for it
            >>> u.trainable_groups()
            ['0', '1']
            >>> u.hold(lr_factor=0.5)  # back to what step 0 trained, for good
            >>> u.step(); u.trainable_groups(), u.lr_scale
            (['1'], 0.5)
        """
        if not lr_factor > 0:
            raise ConfigError(f"lr_factor must be > 0, got {lr_factor!r}")
        at = min(max(self.global_step - 1, 0) if step is None else step, self.plan.total_steps - 1)
        # a second hold never moves the held point forward
        self.held_at = at if self.held_at is None else min(self.held_at, at)
        self.lr_scale *= lr_factor
        self.sync()

    def step(self) -> None:
        """``optimizer.step()``, clear gradients (set to None), advance one step, :meth:`sync`."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.sync()

    def _set_lrs(self) -> None:
        t = self.global_step
        keep_nd = self.train_norm or self.train_bias
        for pg in self.optimizer.param_groups:
            name = pg["name"]
            lg = layer_group_of(name)
            gi = self._index[lg]
            if gi in self._since:
                lr = self.lr_schedule.group_lr(t, self.multipliers[lg], self._since[gi])
                pg["lr"] = self.lr_scale * lr
            elif keep_nd and name.endswith(NO_DECAY_SUFFIX):
                pg["lr"] = self.lr_scale * self.lr_schedule.group_lr(t, self.multipliers[lg], None)
            else:
                pg["lr"] = 0.0

    def _apply(self, event: UnlockEvent) -> None:
        before = self._trainable or frozenset()
        names = [self.groups[i].name for i in sorted(event.trainable)]
        common = dict(
            tower=self.tower,
            freeze_bn_stats=self.freeze_bn_stats,
            train_norm=self.train_norm,
            train_bias=self.train_bias,
            partition=self.groups,
        )
        if names:
            lock(self.base, groups=names, **common)  # type: ignore[arg-type]
        else:
            lock(self.base, 0, **common)  # type: ignore[arg-type]
        if self.reset_state_on_unlock and self._trainable is not None:
            for gi in event.trainable - before:
                for p in self._param_ids[gi]:
                    self.optimizer.state.pop(p, None)
        self._trainable = event.trainable
        if self._ddp:
            self._wrapper = wrap_ddp(self.base, old=self._wrapper, **self._ddp_kwargs)
        for fn in self._listeners:
            fn(event)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: plain data and tensors (``torch.save``-able).

        Keys: ``version``, ``global_step``, ``schedule`` (text), ``groups`` (names),
        ``trainable`` and ``unlocked_at`` (for checking), ``optimizer`` (its state
        dict) and ``optimizer_groups`` (param-group names in the optimizer's order).
        Under FSDP2 the optimizer state is gathered in full (a collective: call it on
        every rank), so the checkpoint's layout does not depend on the sharding.
        """
        return {
            "version": _STATE_VERSION,
            "global_step": self.global_step,
            "schedule": str(self.schedule),
            "groups": list(self.groups.names),
            "trainable": self.trainable_groups(),
            "unlocked_at": {self.groups[i].name: s for i, s in sorted(self._since.items())},
            "optimizer": full_optimizer_state(self.optimizer)
            if self.sharded
            else self.optimizer.state_dict(),
            "optimizer_groups": [pg.get("name") for pg in self.optimizer.param_groups],
            "held_at": self.held_at,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the optimizer's param groups are matched by name.

        Load the model's weights separately (``model.load_state_dict``), before or after.

        Raises:
            ConfigError: The checkpoint is from another model's groups or its optimizer
                groups do not match this optimizer's.
        """
        problems: list[str] = []
        if state.get("version") != _STATE_VERSION:
            problems.append(
                f"unknown Unfreezer state version {state.get('version')!r} (expected {_STATE_VERSION})"
            )
        if list(state.get("groups", [])) != list(self.groups.names):
            problems.append("the checkpoint's layer groups differ from this model's")
        if problems:
            raise ConfigError("cannot resume: " + "; ".join(problems))
        if state.get("schedule") != str(self.schedule):
            warnings.warn(
                f"resuming schedule {state.get('schedule')!r} as {str(self.schedule)!r}",
                stacklevel=2,
            )
        self._load_optimizer(state["optimizer"], state.get("optimizer_groups"))
        if self.sharded:
            shard_optimizer_state(self.optimizer)
        self._event_index = None
        self._trainable = None
        held = state.get("held_at")
        self.held_at = None if held is None else int(held)
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.sync(int(state["global_step"]))

    def _load_optimizer(self, saved: dict[str, Any], saved_names: list[Any] | None) -> None:
        current = [pg.get("name") for pg in self.optimizer.param_groups]
        if saved_names is None or None in current or None in saved_names:
            self.optimizer.load_state_dict(saved)
            return
        by_name = dict(zip(saved_names, saved["param_groups"]))
        missing = [n for n in current if n not in by_name]
        extra = [n for n in saved_names if n not in current]
        bad = [
            n
            for n, pg in zip(current, self.optimizer.param_groups)
            if n in by_name and len(by_name[n]["params"]) != len(pg["params"])
        ]
        if missing or extra or bad:
            raise ConfigError(
                "cannot resume the optimizer: "
                + "; ".join(
                    part
                    for part in (
                        f"param groups missing in the checkpoint: {missing}" if missing else "",
                        f"param groups only in the checkpoint: {extra}" if extra else "",
                        f"param groups with another number of parameters: {bad}" if bad else "",
                    )
                    if part
                )
            )
        self.optimizer.load_state_dict(
            {"state": saved["state"], "param_groups": [by_name[n] for n in current]}
        )
