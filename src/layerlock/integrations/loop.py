"""A plain PyTorch training loop around an :class:`~layerlock.unfreezer.Unfreezer`.

Example:
    >>> import torch, timm
    >>> from layerlock.unfreezer import Unfreezer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = timm.create_model("test_vit", num_classes=2)
    >>> data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])) for _ in range(3)]
    >>> u = Unfreezer(model, "lp-ft", epochs=2, steps_per_epoch=len(data), lr=1e-3)
    >>> history = fit(u, data, torch.nn.functional.cross_entropy, epochs=2)
    >>> len(history.losses), history.events
    (6, ['step 0 (epoch 0): +head', 'step 3 (epoch 1): +stem +blocks.0 +blocks.1 +blocks.2 +blocks.3 +blocks.4 +blocks.5'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..schedule import UnlockEvent
from ..unfreezer import Unfreezer

__all__ = ["FitHistory", "evaluate", "fit"]

Batch = Any
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitHistory:
    """What :func:`fit` recorded.

    Attributes:
        losses: Training loss of every step.
        lrs: Learning rate of every param group (by name) at every step.
        events: One line per change of the trainable set that happened.
        eval: Result of ``eval_fn`` after each epoch (when given).
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[dict[str, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    eval: list[Any] = field(default_factory=list)


def _split(batch: Batch) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        return batch["input"] if "input" in batch else batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"a batch must be (inputs, targets) or a dict with 'input'/'image' and 'label', got {type(batch).__name__}"
    )


def fit(
    unfreezer: Unfreezer,
    loader: Iterable[Batch],
    loss_fn: LossFn,
    epochs: int,
    *,
    device: torch.device | str | None = None,
    start_epoch: int = 0,
    grad_clip: float | None = None,
    eval_fn: Callable[[torch.nn.Module], Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    max_steps: int | None = None,
) -> FitHistory:
    """Train for ``epochs`` epochs, letting ``unfreezer`` lock, unlock and set LRs.

    Each step: forward through ``unfreezer.model`` (the DDP wrapper when distributed),
    ``loss.backward()``, optional gradient clipping, ``unfreezer.step()``. The loader must
    yield ``unfreezer.plan.steps_per_epoch`` batches per epoch (a mismatch is reported).

    Args:
        unfreezer: The Unfreezer (it holds the model and the optimizer).
        loader: Batches ``(inputs, targets)`` or dicts; re-iterated every epoch.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        epochs: Epochs to train, counted from ``start_epoch``.
        device: Move batches there.
        start_epoch: First epoch (resuming); the unfreezer's step is set to its start.
        grad_clip: Clip the gradient norm of the trainable parameters.
        eval_fn: Called with the unwrapped model after each epoch.
        on_step: Called with ``(global_step, loss)`` after each step.
        max_steps: Stop after this many steps in total (global step), for resuming tests.

    Returns:
        A :class:`FitHistory`.

    Raises:
        ConfigError: A non-finite loss, a loader of the wrong length, bad arguments.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an int >= 0, got {epochs!r}")
    history = FitHistory()

    def listener(event: UnlockEvent) -> None:
        history.events.append(_describe(unfreezer, event))

    # one listener per call, removed again: a second fit must not log into this history
    unfreezer.add_listener(listener)
    try:
        _fit_epochs(
            unfreezer,
            loader,
            loss_fn,
            epochs,
            history,
            device,
            start_epoch,
            grad_clip,
            eval_fn,
            on_step,
            max_steps,
        )
    finally:
        unfreezer.remove_listener(listener)
    return history


def _fit_epochs(
    unfreezer: Unfreezer,
    loader: Iterable[Batch],
    loss_fn: LossFn,
    epochs: int,
    history: FitHistory,
    device: torch.device | str | None,
    start_epoch: int,
    grad_clip: float | None,
    eval_fn: Callable[[torch.nn.Module], Any] | None,
    on_step: Callable[[int, float], None] | None,
    max_steps: int | None,
) -> None:
    spe = unfreezer.plan.steps_per_epoch
    if start_epoch:
        unfreezer.sync(start_epoch * spe)
    elif unfreezer.global_step == 0:
        history.events.extend(unfreezer.plan.describe()[:1])
    for epoch in range(start_epoch, start_epoch + epochs):
        n = 0
        unfreezer.model.train()
        for batch in loader:
            if max_steps is not None and unfreezer.global_step >= max_steps:
                return
            x, y = _split(batch)
            if device is not None:
                x, y = x.to(device), y.to(device)
            loss = loss_fn(unfreezer.model(x), y)
            if not math.isfinite(float(loss)):
                raise ConfigError(
                    f"loss is {float(loss)} at step {unfreezer.global_step}; lower the LR"
                )
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in unfreezer.base.parameters() if p.grad is not None], grad_clip
                )
            history.lrs.append(
                {
                    pg.get("name", str(i)): pg["lr"]
                    for i, pg in enumerate(unfreezer.optimizer.param_groups)
                }
            )
            unfreezer.step()
            history.losses.append(float(loss))
            if on_step is not None:
                on_step(unfreezer.global_step, float(loss))
            n += 1
        if n != spe:
            raise ConfigError(
                f"epoch {epoch} had {n} batches but the Unfreezer was built with "
                f"steps_per_epoch={spe}; pass steps_per_epoch=len(loader)"
            )
        if eval_fn is not None:
            history.eval.append(eval_fn(unfreezer.base))


def _describe(unfreezer: Unfreezer, event: UnlockEvent) -> str:
    lines = unfreezer.plan.describe()
    return lines[unfreezer.plan.events.index(event)]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: Iterable[Batch], *, device: torch.device | str | None = None
) -> float:
    """Top-1 accuracy of a classifier over ``loader`` (model put in eval mode, then back).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> 0.0 <= evaluate(m, [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]) <= 1.0
        True
    """
    was = model.training
    model.eval()
    right = total = 0
    for batch in loader:
        x, y = _split(batch)
        if device is not None:
            x, y = x.to(device), y.to(device)
        right += int((model(x).argmax(-1) == y).sum())
        total += int(y.numel())
    model.train(was)
    return right / max(total, 1)
