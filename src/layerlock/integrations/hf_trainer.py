"""Hugging Face ``Trainer`` callback: parameters unlocked mid-run actually train.

``Trainer`` builds its optimizer from the parameters that require grad at that moment,
so anything unfrozen later is never optimised - silently. Two ways to fix it:

- **Recommended:** give Trainer an optimizer over *all* layer groups,
  ``optimizers=(layerlock_optimizer(model, lr=...), None)``. Trainer then builds its LR
  scheduler over every group; nothing is added later, so schedulers and checkpoints
  (``resume_from_checkpoint``) keep working. Locked parameters have ``.grad`` None and
  the optimizer skips them (no weight decay, no momentum).
- Otherwise :class:`LayerlockTrainerCallback` adds the parameters Trainer's optimizer
  lacks (it was built from a locked model) as named param groups in ``on_train_begin``
  and extends Trainer's LR scheduler so they follow the same schedule. Resuming such a
  run cannot load the optimizer state (Trainer rebuilds the smaller optimizer first): a
  warning says so.

The callback applies the schedule in ``on_epoch_begin`` and ``on_step_begin`` at
``state.global_step`` (optimizer steps), which also makes ``resume_from_checkpoint``
unlock the right groups. With ``lr`` set and an optimizer from
:func:`layerlock_optimizer`, it sets every group's LR each step by layerlock's formula
(Trainer's ``lr_scheduler_type`` is then overridden).

Multi-process runs (``torchrun`` / ``accelerate launch``): Trainer's DDP wrapper is
built once by accelerate and would not average newly unlocked gradients, so a schedule
that changes the trainable set raises :class:`~layerlock.errors.ConfigError` there;
use the plain loop (:mod:`layerlock.integrations.loop`) or the Lightning callback.

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(
    ...     vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=32, max_position_embeddings=16))
    >>> opt = layerlock_optimizer(model, lr=1e-3)
    >>> [pg["name"] for pg in opt.param_groups][:3]
    ['embeddings', 'embeddings/no_decay', 'layer.0']
    >>> cb = LayerlockTrainerCallback("lp-ft")  # Trainer(..., optimizers=(opt, None), callbacks=[cb])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MissingDependencyError

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise MissingDependencyError(
        "the Hugging Face Trainer integration needs transformers: "
        "pip install 'layerlock[transformers]'"
    ) from exc

from ..groups import LayerGroups, layer_groups
from ..optim import param_groups
from ..schedule import Schedule, parse_schedule
from ..unfreezer import Unfreezer
from ._schedulers import extend_scheduler

__all__ = ["LayerlockTrainerCallback", "layerlock_optimizer"]


def layerlock_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    layer_decay: float = 1.0,
    discriminative: float = 1.0,
    no_weight_decay: Iterable[str] = (),
    groups: LayerGroups | None = None,
    coarse: bool = False,
    **adamw_kwargs: Any,
) -> torch.optim.AdamW:
    """AdamW over every layer group of ``model`` (locked or not), as named param groups.

    Pass it to Trainer as ``optimizers=(layerlock_optimizer(model, lr=...), None)`` so
    groups unlocked later are optimised.

    Args:
        model: The model (Trainer's ``model``).
        lr: Base LR (the head's); lower groups get ``layer_decay`` / ``discriminative``
            multipliers.
        weight_decay: Weight decay (not for biases, norms, 1-D parameters and
            ``no_weight_decay()`` names).
        layer_decay: Layer-wise LR decay per group from the top (1 = off).
        discriminative: ULMFiT factor per group (1 = off).
        no_weight_decay: Extra parameter names or globs without weight decay.
        groups: Layer groups computed earlier (else :func:`layerlock.layer_groups`).
        coarse: Use the coarse grouping when computing groups here.
        **adamw_kwargs: Passed to ``torch.optim.AdamW`` (``betas``, ``eps`` ...).

    Returns:
        The optimizer; param group names are the layer group names (plus
        ``/no_decay`` groups).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> len(layerlock_optimizer(model, lr=1e-3).param_groups)
        4
    """
    groups = groups if groups is not None else layer_groups(model, coarse)
    pgs = param_groups(
        groups,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        discriminative=discriminative,
        no_weight_decay=list(no_weight_decay),
    )
    return torch.optim.AdamW(pgs, lr=lr, weight_decay=weight_decay, **adamw_kwargs)


class LayerlockTrainerCallback(TrainerCallback):
    """Run a layerlock schedule inside ``transformers.Trainer``.

    Args:
        schedule: A Schedule or its text (``"lp-ft"``, ``"gradual"``, ``"0:1, 2:all"``,
            ``"s0:1, s100:all"`` ...); steps are optimizer steps
            (``state.global_step``), epochs Trainer's epochs.
        lr: None: Trainer's scheduler owns the LRs. A float: base (head) LR of
            layerlock's per-group formula, set every step (needs the optimizer from
            :func:`layerlock_optimizer`).
        weight_decay: Weight decay of param groups added to Trainer's optimizer (default:
            ``args.weight_decay``).
        layer_decay: Layer-wise LR decay (with ``lr``).
        discriminative: ULMFiT factor (with ``lr``).
        warmup_steps: Warm-up of the main LR schedule (with ``lr``).
        lr_schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` (with ``lr``).
        min_lr_ratio: Floor of the main LR schedule (with ``lr``).
        unlock_warmup_steps: LR ramp for a group unlocked after step 0 (with ``lr``).
        unlock_warmup_start: Fraction of its LR such a group starts at (with ``lr``).
        freeze_bn_stats: BatchNorm in locked groups keeps its running statistics.
        train_norm: Normalisation parameters of locked groups keep training.
        train_bias: Bias terms of locked groups keep training.
        tower: Apply the schedule to one tower of a multi-tower model.
        coarse: Use the coarse grouping.
        reset_state_on_unlock: Drop a group's optimizer state when it is unlocked.

    Raises:
        ScheduleError: The schedule text does not parse (here) or does not fit the
            model (at ``on_train_begin``).
        ConfigError: Bad values; a changing schedule in a multi-process run.
    """

    def __init__(
        self,
        schedule: str | Schedule,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        layer_decay: float = 1.0,
        discriminative: float = 1.0,
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.0,
        unlock_warmup_steps: int = 0,
        unlock_warmup_start: float = 0.1,
        freeze_bn_stats: bool = False,
        train_norm: bool = False,
        train_bias: bool = False,
        tower: str | None = None,
        coarse: bool = False,
        reset_state_on_unlock: bool = False,
    ) -> None:
        self.schedule = parse_schedule(schedule)
        if lr is not None and (isinstance(lr, bool) or not lr > 0):
            raise ConfigError(f"lr must be None or a number > 0, got {lr!r}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.coarse = coarse
        self._options: dict[str, Any] = dict(
            layer_decay=layer_decay,
            discriminative=discriminative,
            warmup_steps=warmup_steps,
            lr_schedule=lr_schedule,
            min_lr_ratio=min_lr_ratio,
            unlock_warmup_steps=unlock_warmup_steps,
            unlock_warmup_start=unlock_warmup_start,
            freeze_bn_stats=freeze_bn_stats,
            train_norm=train_norm,
            train_bias=train_bias,
            tower=tower,
            reset_state_on_unlock=reset_state_on_unlock,
        )
        #: The Unfreezer driving the run (set in ``on_train_begin``).
        self.unfreezer: Unfreezer | None = None

    def trainable_groups(self) -> list[str]:
        """Names of the groups trainable now (empty before ``on_train_begin``)."""
        return self.unfreezer.trainable_groups() if self.unfreezer is not None else []

    @staticmethod
    def _lengths(args: Any, state: Any, train_dataloader: Any) -> tuple[int, int]:
        epochs = max(1, math.ceil(float(state.num_train_epochs or args.num_train_epochs)))
        try:
            batches = len(train_dataloader)
        except TypeError:
            batches = 0
        if batches:
            spe = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        elif state.max_steps and state.max_steps > 0:
            spe = max(1, math.ceil(state.max_steps / epochs))
        else:
            raise ConfigError(
                "LayerlockTrainerCallback needs the length of training: a train dataset "
                "with len() or TrainingArguments(max_steps=...)"
            )
        return epochs, spe

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        train_dataloader: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        """Resolve the schedule, complete the optimizer and lock for the current step."""
        if model is None or optimizer is None:
            raise ConfigError("LayerlockTrainerCallback needs Trainer's model and optimizer")
        epochs, spe = self._lengths(args, state, train_dataloader)
        before = len(optimizer.param_groups)
        lrs = [pg["lr"] for pg in optimizer.param_groups]
        base_lr = self.lr if self.lr is not None else float(args.learning_rate)
        wd = self.weight_decay if self.weight_decay is not None else float(args.weight_decay)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*do not carry layerlock group names.*")
            unfreezer = Unfreezer(
                model,
                self.schedule,
                epochs=epochs,
                steps_per_epoch=spe,
                optimizer=optimizer,
                lr=base_lr,
                weight_decay=wd,
                groups=layer_groups(model, self.coarse),
                ddp=False,
                **self._options,
            )
        if getattr(args, "world_size", 1) > 1 and len(unfreezer.plan.events) > 1:
            raise ConfigError(
                f"schedule {str(self.schedule)!r} changes the trainable set, which Trainer's "
                f"DDP wrapper cannot follow in a {args.world_size}-process run; use "
                "layerlock.integrations.loop or the Lightning callback"
            )
        added = optimizer.param_groups[before:]
        if added:
            if lr_scheduler is not None:
                extend_scheduler(lr_scheduler, added, before)
            warnings.warn(
                f"LayerlockTrainerCallback added param groups {[pg.get('name') for pg in added]} "
                "that Trainer's optimizer lacked (they follow Trainer's LR schedule); resuming "
                "this run from a checkpoint cannot load the optimizer state. Pass "
                "optimizers=(layerlock_optimizer(model, lr=...), None) instead",
                stacklevel=2,
            )
        if self.lr is None:
            # the Unfreezer set LRs by its formula when it was built: give them back
            unfreezer.manage_lr = False
            for pg, lr in zip(optimizer.param_groups, lrs):
                pg["lr"] = lr
            for pg in optimizer.param_groups[before:]:
                pg["lr"] = base_lr * float(pg.get("lr_scale", 1.0))
        elif not unfreezer.manage_lr:
            warnings.warn(
                "lr is set but the optimizer's param groups do not carry layerlock names: "
                "LRs are left to Trainer (pass optimizers=(layerlock_optimizer(...), None))",
                stacklevel=2,
            )
        self.unfreezer = unfreezer
        unfreezer.sync(int(state.global_step))

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Apply the schedule at the epoch's first step."""
        if self.unfreezer is not None:
            self.unfreezer.sync(int(state.global_step))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Apply the schedule (and LRs, with ``lr``) for this optimizer step."""
        if self.unfreezer is not None:
            self.unfreezer.sync(int(state.global_step))
