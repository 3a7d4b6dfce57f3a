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
unlock the right groups. With an ``lr`` keyword (or ``manage_lr=True``) and an optimizer
from :func:`layerlock_optimizer`, it sets every group's LR each step by layerlock's formula
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

import functools
import math
import warnings
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

from ..groups import LayerGroups
from ..optim import create_optimizer
from ..options import UnfreezeOptions, resolve_options
from ..schedule import Schedule
from ..unfreezer import Unfreezer
from ._options import callback_options, framework_unfreezer

__all__ = ["LayerlockTrainerCallback", "layerlock_optimizer"]


def layerlock_optimizer(
    model: nn.Module,
    options: UnfreezeOptions | None = None,
    *,
    groups: LayerGroups | None = None,
    **kwargs: Any,
) -> torch.optim.AdamW:
    """AdamW over every layer group of ``model`` (locked or not), for Trainer.

    A thin wrapper of :func:`layerlock.create_optimizer` that also passes AdamW's own
    keywords through. Give it to Trainer as
    ``optimizers=(layerlock_optimizer(model, lr=...), None)`` so groups unlocked later are
    optimised.

    Args:
        model: The model (Trainer's ``model``).
        options: Unfreezing options (defaults when None); the optimizer fields are used.
        groups: Layer groups computed earlier (else :func:`layerlock.layer_groups`).
        **kwargs: :class:`~layerlock.options.UnfreezeOptions` fields (``lr``,
            ``weight_decay``, ``layer_decay``, ``discriminative``, ``no_weight_decay``,
            ``coarse`` ...), and anything else for ``torch.optim.AdamW`` (``betas``,
            ``eps`` ...).

    Returns:
        The optimizer; param group names are the layer group names (plus
        ``/no_decay`` groups).

    Raises:
        ConfigError: Invalid option values.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> len(layerlock_optimizer(model, lr=1e-3).param_groups)
        4
    """
    names = UnfreezeOptions.field_names()
    overrides = {k: v for k, v in kwargs.items() if k in names}
    adamw = {k: v for k, v in kwargs.items() if k not in names}
    opts = resolve_options(options, **overrides)
    built = create_optimizer(
        model,
        opts,
        groups=groups,
        factory=functools.partial(
            torch.optim.AdamW, lr=opts.lr, weight_decay=opts.weight_decay, **adamw
        ),
    )
    return built  # type: ignore[return-value]


class LayerlockTrainerCallback(TrainerCallback):
    """Run a layerlock schedule inside ``transformers.Trainer``.

    Args:
        options: :class:`~layerlock.options.UnfreezeOptions`, or just a schedule (a
            Schedule or its text: ``"lp-ft"``, ``"gradual"``, ``"0:1, 2:all"``,
            ``"s0:1, s100:all"`` ...); steps are optimizer steps (``state.global_step``),
            epochs Trainer's epochs. Its ``weight_decay`` applies to param groups added to
            Trainer's optimizer (pass ``weight_decay=args.weight_decay`` to match
            Trainer's own groups); the LR fields apply only when layerlock sets the LRs.
        manage_lr: Set every group's LR each step by layerlock's formula (needs the
            optimizer from :func:`layerlock_optimizer`; Trainer's ``lr_scheduler_type``
            is then overridden). Default: when an ``lr`` keyword is given; otherwise
            Trainer's scheduler owns the LRs.
        **option_overrides: :class:`~layerlock.options.UnfreezeOptions` fields replacing
            those of ``options`` (``lr=1e-3``, ``layer_decay=0.75`` ...). ``lr=None``
            means not given.

    Attributes:
        options: The validated options.
        lr: The base LR when the callback sets LRs, else None.

    Raises:
        ScheduleError: The schedule text does not parse (here) or does not fit the
            model (at ``on_train_begin``).
        ConfigError: Bad values; a changing schedule in a multi-process run.
    """

    def __init__(
        self,
        options: UnfreezeOptions | str | Schedule | None = None,
        *,
        manage_lr: bool | None = None,
        **option_overrides: Any,
    ) -> None:
        self.options, self.schedule, self.manage_lr = callback_options(
            options, option_overrides, manage_lr
        )
        self.lr: float | None = self.options.lr if self.manage_lr else None
        self.coarse = self.options.coarse
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
        lengths = self._lengths(args, state, train_dataloader)
        before = len(optimizer.param_groups)
        schedulers = [] if lr_scheduler is None else [lr_scheduler]
        unfreezer = framework_unfreezer(
            self, model, optimizer, lengths, float(args.learning_rate), schedulers
        )
        if getattr(args, "world_size", 1) > 1 and len(unfreezer.plan.events) > 1:
            raise ConfigError(
                f"schedule {str(self.schedule)!r} changes the trainable set, which Trainer's "
                f"DDP wrapper cannot follow in a {args.world_size}-process run; use "
                "layerlock.integrations.loop or the Lightning callback"
            )
        added = optimizer.param_groups[before:]
        if added:
            warnings.warn(
                f"LayerlockTrainerCallback added param groups {[pg.get('name') for pg in added]} "
                "that Trainer's optimizer lacked (they follow Trainer's LR schedule); resuming "
                "this run from a checkpoint cannot load the optimizer state. Pass "
                "optimizers=(layerlock_optimizer(model, lr=...), None) instead",
                stacklevel=2,
            )
        if self.manage_lr and not unfreezer.manage_lr:
            warnings.warn(
                "manage_lr is set but the optimizer's param groups do not carry layerlock names: "
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
