"""PyTorch Lightning callback: progressive unlocking that stays correct under DDP and resume.

:class:`LayerlockFinetuning` runs the same schedules as the
:class:`~layerlock.unfreezer.Unfreezer` (it drives one internally) on a LightningModule, or
on one attribute of it (``module_attr="backbone"``). Unlike Lightning's
``BackboneFinetuning``:

- **All layer groups live in the optimizer from the start.** Build the optimizer in
  ``configure_optimizers`` from every parameter (``self.parameters()``, or
  :func:`layerlock.create_optimizer` for per-group LRs). Nothing is added on an unlock,
  so LR schedulers keep working. Locked parameters have ``.grad`` None:
  the optimizer skips them (no weight decay, no momentum). Parameters the optimizer lacks
  (one built from ``requires_grad`` parameters only) are added once, as named groups, in
  ``on_fit_start`` - before Lightning restores optimizer state, so checkpoints load - and
  its LR schedulers are extended so the new groups follow them (LambdaLR-style
  schedulers; others raise :class:`~layerlock.errors.ConfigError`).
  Parameters with ``requires_grad=False`` before layerlock first sees the model count as
  created frozen and are never unlocked: lock beforehand with :func:`layerlock.lock`, not
  ``requires_grad_(False)``.
- **Replicas stay identical under DDP.** DDP averages gradients only
  of the parameters that required grad when its wrapper was built. Whenever the trainable
  set changes, the callback removes the old wrapper's autograd hooks and lets the strategy
  build a fresh one (``strategy.model = lightning_module; strategy.configure_ddp()``), in
  ``on_train_batch_start``, before the forward pass. Building a wrapper broadcasts rank 0's
  parameters and buffers; every rank reaches each change at the same global step. We
  rebuild rather than all-reducing untracked gradients ourselves because a rebuild also
  drops newly locked parameters from DDP's buckets (otherwise DDP fails with "Expected to
  have finished reduction" unless ``find_unused_parameters=True``) and keeps DDP's
  bucketing and overlap for the new set. Only ``DDPStrategy`` (``"ddp"``,
  ``"ddp_spawn"``, ...) is supported for multi-process runs; other distributed strategies
  raise :class:`~layerlock.errors.ConfigError`.
- **Resume unlocks the right groups.** The trainable set is a function
  of the global step, re-applied in ``on_train_start`` after Lightning has restored the
  loop state. The callback's ``state_dict`` (saved in checkpoints) records the schedule,
  the layer groups and the trainable set, and is checked on load.

LRs: by default your optimizer and LR scheduler own the learning rates. With an ``lr``
keyword (or ``manage_lr=True``) and an optimizer from :func:`layerlock.create_optimizer`
(``return layerlock.create_optimizer(self, lr=1e-3)`` in ``configure_optimizers``), the
callback sets each group's LR every step by layerlock's formula (layer decay, warm-up,
cosine, per-group unlock warm-up); do not add a Lightning LR scheduler then.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> class Model(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    ...     def training_step(self, batch, _):
    ...         x, y = batch
    ...         return torch.nn.functional.cross_entropy(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.AdamW(self.parameters(), lr=1e-2)
    >>> data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    >>> cb = LayerlockFinetuning("0:1, 1:all", module_attr="net")
    >>> trainer = pl.Trainer(max_epochs=2, callbacks=[cb], logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False,
    ...                      enable_model_summary=False, accelerator="cpu")
    >>> trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=4))
    >>> cb.trainable_groups()
    ['0', '1']
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn

from ..errors import ConfigError, MissingDependencyError, suggest

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise MissingDependencyError(
        "the Lightning integration needs lightning: pip install 'layerlock[lightning]'"
    ) from exc

from ..distributed import is_distributed
from ..options import UnfreezeOptions
from ..schedule import Schedule
from ..unfreezer import Unfreezer
from ._options import callback_options, framework_unfreezer

__all__ = ["LayerlockFinetuning"]

_STATE_VERSION = 1


class LayerlockFinetuning(Callback):
    """Lock, unlock and (optionally) set LRs of layer groups during ``Trainer.fit``.

    Args:
        options: :class:`~layerlock.options.UnfreezeOptions`, or just a schedule (a
            Schedule or its text: ``"lp-ft"``, ``"gradual"``, ``"0:1, 2:all"``,
            ``"s0:1, s500:all"`` ...); epochs and steps are Lightning's epochs and
            optimizer steps (``trainer.global_step``). Its ``weight_decay`` applies to
            param groups the callback adds to the optimizer; the LR fields apply only
            when layerlock sets the LRs (``manage_lr``).
        module_attr: Schedule this attribute of the LightningModule (``"backbone"``);
            parameters outside it are left alone. None: the whole LightningModule.
        optimizer_index: Which of ``trainer.optimizers`` holds the parameters.
        manage_lr: Set every group's LR each step by layerlock's formula (needs param
            groups built by :func:`layerlock.create_optimizer`). Default: when an ``lr``
            keyword is given; otherwise your optimizer and scheduler own the LRs.
        **option_overrides: :class:`~layerlock.options.UnfreezeOptions` fields replacing
            those of ``options`` (``lr=1e-3``, ``layer_decay=0.75``, ``tower="visual"``
            ...). ``lr=None`` means not given.

    Attributes:
        options: The validated options.
        lr: The base LR when the callback sets LRs, else None.

    Raises:
        ScheduleError: The schedule text does not parse (at construction) or does not
            fit the model (at ``on_fit_start``).
        ConfigError: Bad values; ``module_attr`` missing; a distributed strategy other
            than DDP.
    """

    def __init__(
        self,
        options: UnfreezeOptions | str | Schedule | None = None,
        *,
        module_attr: str | None = None,
        optimizer_index: int = 0,
        manage_lr: bool | None = None,
        **option_overrides: Any,
    ) -> None:
        super().__init__()
        self.options, self.schedule, self.manage_lr = callback_options(
            options, option_overrides, manage_lr
        )
        if isinstance(optimizer_index, bool) or not isinstance(optimizer_index, int):
            raise ConfigError(f"optimizer_index must be an int, got {optimizer_index!r}")
        self.lr: float | None = self.options.lr if self.manage_lr else None
        self.module_attr = module_attr
        self.optimizer_index = optimizer_index
        self.coarse = self.options.coarse
        #: The Unfreezer driving the run (set in ``on_fit_start``).
        self.unfreezer: Unfreezer | None = None
        #: Number of times the DDP wrapper was rebuilt (0 in single-process runs).
        self.ddp_rebuilds = 0
        self._resumed: dict[str, Any] | None = None

    # -- helpers -----------------------------------------------------------------------
    def trainable_groups(self) -> list[str]:
        """Names of the groups trainable now (empty before ``on_fit_start``)."""
        return self.unfreezer.trainable_groups() if self.unfreezer is not None else []

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module_attr is None:
            return pl_module
        target: Any = pl_module
        for part in self.module_attr.split("."):
            children = dict(target.named_children()) if isinstance(target, nn.Module) else {}
            if part not in children:
                raise ConfigError(
                    f"module_attr {self.module_attr!r}: {type(target).__name__} has no "
                    f"submodule {part!r}{suggest(part, children)}; "
                    f"submodules: {', '.join(children) or '(none)'}"
                )
            target = children[part]
        return target

    @staticmethod
    def _lengths(trainer: pl.Trainer) -> tuple[int, int]:
        """(epochs, optimizer steps per epoch) of this fit, per rank."""
        trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError(
                "LayerlockFinetuning needs a train dataloader with a length "
                "(schedules are resolved to optimizer steps); got an iterable without len()"
            )
        spe = max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))
        epochs = trainer.max_epochs
        if epochs is None or epochs < 0:
            if trainer.max_steps is None or trainer.max_steps < 0:
                raise ConfigError("set Trainer(max_epochs=...) or Trainer(max_steps=...)")
            epochs = math.ceil(trainer.max_steps / spe)
        return int(epochs), spe

    def _rewrap(self, trainer: pl.Trainer) -> None:
        """Rebuild the strategy's DDP wrapper for the current trainable set."""
        if not is_distributed():
            return
        strategy = trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            raise ConfigError(
                f"LayerlockFinetuning keeps replicas identical under DDPStrategy "
                f"('ddp', 'ddp_spawn', ...); {type(strategy).__name__} is not supported"
            )
        lm = strategy.lightning_module
        old = strategy.model
        if isinstance(old, nn.parallel.DistributedDataParallel) and hasattr(
            old, "_remove_autograd_hooks"
        ):
            old._remove_autograd_hooks()
        strategy.model = lm
        if any(p.requires_grad for p in lm.parameters()):  # type: ignore[union-attr]
            strategy.configure_ddp()
        self.ddp_rebuilds += 1

    def _sync(self, trainer: pl.Trainer) -> None:
        if self.unfreezer is not None and self.unfreezer.sync(trainer.global_step):
            self._rewrap(trainer)

    # -- hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the schedule, complete the optimizer, lock for step 0, rebuild DDP."""
        target = self._target(pl_module)
        lengths = self._lengths(trainer)
        optimizers = trainer.optimizers
        if not 0 <= self.optimizer_index < len(optimizers):
            raise ConfigError(
                f"optimizer_index {self.optimizer_index} is out of range: "
                f"configure_optimizers returned {len(optimizers)} optimizer(s)"
            )
        optimizer = optimizers[self.optimizer_index]
        configs = trainer.lr_scheduler_configs
        schedulers = [
            c.scheduler for c in configs if getattr(c.scheduler, "optimizer", None) is optimizer
        ]
        framework_lr = float(optimizer.defaults.get("lr", 1e-3))
        unfreezer = framework_unfreezer(self, target, optimizer, lengths, framework_lr, schedulers)
        if self.manage_lr and not unfreezer.manage_lr:
            warnings.warn(
                "manage_lr is set but the optimizer's param groups do not carry layerlock "
                "names: LRs are left to your optimizer (build it with layerlock.create_optimizer)",
                stacklevel=2,
            )
        elif self.manage_lr and configs:
            warnings.warn(
                "manage_lr is set, so LayerlockFinetuning sets every LR each step; the LR scheduler "
                "from configure_optimizers is overridden",
                stacklevel=2,
            )
        self.unfreezer = unfreezer
        # Lightning built its DDP wrapper before this hook, for the trainable set of then.
        self._rewrap(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Re-apply the schedule at the restored global step (resume)."""
        self._sync(trainer)
        saved, self._resumed = self._resumed, None
        if saved is None or self.unfreezer is None:
            return
        if list(saved.get("groups", [])) != list(self.unfreezer.groups.names):
            raise ConfigError(
                "cannot resume LayerlockFinetuning: the checkpoint's layer groups "
                f"({len(saved.get('groups', []))}) differ from this model's "
                f"({len(self.unfreezer.groups)})"
            )
        if saved.get("schedule") != str(self.unfreezer.schedule):
            warnings.warn(
                f"resuming schedule {saved.get('schedule')!r} as {str(self.unfreezer.schedule)!r}",
                stacklevel=2,
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Apply the schedule for this optimizer step (rebuilding DDP on a change)."""
        self._sync(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Move to the next step's state, so checkpoints saved now record it."""
        self._sync(trainer)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What Lightning stores in checkpoints: schedule, groups, step, trainable set."""
        u = self.unfreezer
        if u is None:
            return dict(self._resumed or {})
        return {
            "version": _STATE_VERSION,
            "schedule": str(u.schedule),
            "groups": list(u.groups.names),
            "global_step": u.global_step,
            "trainable": u.trainable_groups(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved state; it is checked in ``on_train_start`` after the re-apply."""
        if state_dict.get("version") != _STATE_VERSION:
            raise ConfigError(
                f"unknown LayerlockFinetuning state version {state_dict.get('version')!r} "
                f"(expected {_STATE_VERSION})"
            )
        self._resumed = dict(state_dict)
