"""Keep what the model knew: the retention guard, best-epoch restore, WiSE-FT's start weights.

After every evaluation the recipe calls :meth:`Retention.after_evaluation`:

- **Retention guard** (``retain.set``, ``retain.max_drop``): the reference set's accuracy is
  compared with its value before training (the epoch-0 row). When it falls more than
  ``max_drop`` points below, the weights of the best epoch of the current stage that kept
  within the limit (or the stage's start) are restored, the optimizer's state is cleared
  (its moments belong to other weights), the Unfreezer is held (:meth:`Unfreezer.hold`: no
  deeper group is unlocked any more) and the learning rates are multiplied by
  ``retain.lr_factor``. Logged as an event (``events.jsonl``, the charts, the summary).
- **Best-per-stage restore** (``retain.restore_best=stage``): when the next epoch starts a new
  stage of the schedule, the weights of the stage's best epoch (first evaluation set) are
  restored first, so the next stage unlocks more from the best point. ``run``: the run ends
  with the weights of its best epoch.
- **WiSE-FT's start** (``start.safetensors``): the weights interpolation starts from. When the
  schedule's first stage trains the top group alone (``lp-ft``, ``gradual``, ``chain-thaw``)
  it is the model at the end of that stage (a fitted head on the pretrained body), else the
  model before training.

The kept weights (CPU copies) and the decisions are part of the checkpoint, so a resumed
run restores exactly what the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import fsdp
from ..config import RetainOptions
from ..unfreezer import Unfreezer

__all__ = ["START_FILE", "Retention"]

START_FILE = "start.safetensors"


@dataclass
class _Kept:
    epoch: int
    value: float
    weights: dict[str, torch.Tensor]


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on the CPU (sharded: a collective, the full copy on rank 0)."""
    if fsdp.is_sharded(model):
        return fsdp.full_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Retention:
    """The retention policies of one run (see the module doc).

    Args:
        options: The run's ``retain`` section.
        metric: The column that decides "best" (the first evaluation set's accuracy).
        model: The unwrapped model.
        unfreezer: The run's Unfreezer (its plan tells where stages end; hold()).
        steps_per_epoch: Optimizer steps of one epoch.
        epochs: Epochs of the run.
        log: ``log(label)`` records an event at the current step.
        save_start: ``save_start(weights, epoch)`` writes WiSE-FT's start weights.
        set_metric: The accuracy column of the guarded extra set (default: ``metric``).
    """

    def __init__(
        self,
        options: RetainOptions,
        metric: str,
        model: nn.Module,
        unfreezer: Unfreezer,
        *,
        steps_per_epoch: int,
        epochs: int,
        log: Callable[[str], None],
        save_start: Callable[[dict[str, torch.Tensor], int], None],
        set_metric: str | None = None,
    ) -> None:
        self.options, self.metric = options, metric
        self.model, self.unfreezer = model, unfreezer
        self.spe, self.epochs = steps_per_epoch, epochs
        self.log, self.save_start = log, save_start
        guarded = options.set
        #: the watched column: the validation split's ``metric``, else ``<set>/<set_metric>``
        self.guard_key = (
            None
            if guarded is None
            else (metric if guarded == "val" else f"{guarded}/{set_metric or metric}")
        )
        self.keep = guarded is not None or options.restore_best != "off"
        self.baseline: float | None = None
        self.stage: int | None = None
        self.stage_best: _Kept | None = None
        self.run_best: _Kept | None = None
        self.triggers: list[dict[str, Any]] = []
        self.start_saved = False
        plan = unfreezer.plan
        first = plan.events[0].trainable
        top = len(unfreezer.groups) - 1
        #: epoch (1-based) after which WiSE-FT's start is taken; 0: before training
        self.start_epoch = 0
        if first == frozenset({top}) and len(plan.events) > 1:
            self.start_epoch = math.ceil(plan.events[1].step / steps_per_epoch)

    # -- the schedule's stages ---------------------------------------------------------------
    def _stage_at(self, step: int) -> int:
        return self.unfreezer.event_at(step)

    def _stage_of_epoch(self, epoch: int) -> int:
        """The stage epoch ``epoch`` (1-based; 0 = before training) trained in."""
        return self._stage_at(epoch * self.spe - 1 if epoch else 0)

    # -- the hooks -----------------------------------------------------------------------------
    def before_training(self) -> None:
        """WiSE-FT's start when it is the model before training."""
        if self.start_epoch == 0 and not self.start_saved:
            self.save_start(_copy(self.model), 0)
            self.start_saved = True

    def after_evaluation(self, epoch: int, row: dict[str, Any]) -> None:
        """Apply the policies after epoch ``epoch`` (1-based; 0 = before training) was evaluated."""
        value = float(row.get(self.metric, -math.inf))
        if epoch == 0 and self.guard_key is not None:
            self.baseline = float(row[self.guard_key])
        stage = self._stage_of_epoch(epoch)
        if self.stage != stage:  # the first evaluation of a stage (or of the run)
            self.stage = stage
            self.stage_best = None
        passed = self._guard(epoch, row)
        if passed and self.keep:
            if self.stage_best is None or value > self.stage_best.value:
                self.stage_best = _Kept(epoch, value, _copy(self.model))
            if self.options.restore_best == "run" and (
                self.run_best is None or value > self.run_best.value
            ):
                self.run_best = _Kept(epoch, value, _copy(self.model))
        if epoch == self.start_epoch and epoch > 0 and not self.start_saved:
            self.save_start(_copy(self.model), epoch)
            self.start_saved = True
        if epoch < self.epochs and self.unfreezer.held_at is None:
            following = self._stage_at(epoch * self.spe)
            if following != stage:
                self._stage_ends(epoch, value, following)

    def _guard(self, epoch: int, row: dict[str, Any]) -> bool:
        """Whether epoch ``epoch`` keeps within the limit; restore and hold when it does not."""
        if self.guard_key is None or self.baseline is None or epoch == 0:
            return True
        now = float(row[self.guard_key])
        floor = self.baseline - self.options.max_drop / 100.0
        if now >= floor:
            return True
        kept = self.stage_best
        if kept is not None:
            self._restore(kept)
        self.unfreezer.optimizer.state.clear()
        self.unfreezer.hold(self.options.lr_factor)
        what = f"epoch {kept.epoch}" if kept is not None else "nothing (no epoch within the limit)"
        label = (
            f"retention guard: {self.options.set} {now:.1%} fell more than "
            f"{self.options.max_drop:g} points below its start {self.baseline:.1%}; restored "
            f"{what}, no further unlocking"
            + (f", LR x{self.options.lr_factor:g}" if self.options.lr_factor != 1 else "")
        )
        self.triggers.append(
            {"epoch": epoch, "value": now, "restored": kept.epoch if kept else None}
        )
        self.log(label)
        return False

    def _stage_ends(self, epoch: int, value: float, following: int) -> None:
        """The next epoch starts a new stage: restore the stage's best if asked.

        The weights the next stage starts from are its first candidate (what the guard
        falls back to if the stage's first epoch already breaks the limit).
        """
        kept = self.stage_best
        seed = _Kept(epoch, value, _copy(self.model)) if self.keep else None
        if self.options.restore_best == "stage" and kept is not None and kept.epoch != epoch:
            self._restore(kept)
            self.unfreezer.optimizer.state.clear()
            self.log(
                f"restore_best: epoch {kept.epoch} ({self.metric} {kept.value:.1%}) restored "
                "before the next stage"
            )
            seed = kept
        self.stage, self.stage_best = following, seed

    def finish(self) -> None:
        """``restore_best=run``: end with the best epoch's weights."""
        kept = self.run_best
        if kept is not None and kept.epoch != self.epochs:
            self._restore(kept)
            self.log(
                f"restore_best: the run ends with epoch {kept.epoch} ({self.metric} {kept.value:.1%})"
            )

    def _restore(self, kept: _Kept) -> None:
        self.model.load_state_dict(kept.weights)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors, for the checkpoint."""

        def kept(k: _Kept | None) -> dict[str, Any] | None:
            return None if k is None else {"epoch": k.epoch, "value": k.value, "weights": k.weights}

        return {
            "baseline": self.baseline,
            "stage": self.stage,
            "stage_best": kept(self.stage_best),
            "run_best": kept(self.run_best),
            "triggers": list(self.triggers),
            "start_saved": self.start_saved,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

        def kept(d: dict[str, Any] | None) -> _Kept | None:
            return (
                None if d is None else _Kept(int(d["epoch"]), float(d["value"]), dict(d["weights"]))
            )

        self.baseline = state.get("baseline")
        self.stage = state.get("stage")
        self.stage_best = kept(state.get("stage_best"))
        self.run_best = kept(state.get("run_best"))
        self.triggers = list(state.get("triggers", []))
        self.start_saved = bool(state.get("start_saved", False))
