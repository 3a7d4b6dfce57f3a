"""WiSE-FT: interpolate a run's start and end weights, evaluate every mixture, keep one.

``θ(α) = (1 − α)·θ_start + α·θ_end``. ``θ_end`` is the run's final ``model.safetensors``;
``θ_start`` is the run's ``start.safetensors`` (see :mod:`layerlock.finetune.retention`):
the model after its head-only stage when the schedule began with one (a fitted head on the
pretrained body, as WiSE-FT prescribes: interpolating towards a random head is useless),
else the model before training (for an OpenCLIP classifier, the zero-shot head). Tensors
that are equal in both endpoints (groups never unlocked) are kept bit for bit, so
``α = 0`` and ``α = 1`` reproduce the endpoints exactly.

Every evaluation set of the run (``eval.sets``, or those given) is evaluated for each α.
When the lowest groups are equal in both endpoints, their output is computed once per
image and reused for every α (the prefix of :mod:`layerlock.split`).

Example:
    >>> import torch
    >>> a, b = {"w": torch.zeros(2), "n": torch.tensor(3)}, {"w": torch.ones(2), "n": torch.tensor(3)}
    >>> interpolate(a, b, 0.25)["w"].tolist()
    [0.25, 0.25]
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import load_config
from .errors import ConfigError, LayerlockError
from .finetune.retention import START_FILE
from .runs import CONFIG_FILE, MODEL_FILE, atomic_write, load_weights, save_weights
from .split import SuffixModule

__all__ = ["WiseResult", "interpolate", "parse_alphas", "wise"]

WISE_FILE = "wise.json"
WISE_CHART = "wise.png"


def parse_alphas(spec: str) -> list[float]:
    """``"0:1:0.1"`` (start:stop:step, stop included) or ``"0,0.5,1"`` -> the α values.

    Raises:
        ConfigError: Malformed text, a step <= 0, or an α outside [0, 1].

    Example:
        >>> parse_alphas("0:1:0.25")
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if not step > 0:
                raise ConfigError(f"alphas: the step must be > 0, got {spec!r}")
            n = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 10) for i in range(max(n, 0))]
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"alphas: {spec!r} is neither START:STOP:STEP (e.g. 0:1:0.1) nor a list like 0,0.5,1"
        ) from None
    bad = [a for a in values if not 0.0 <= a <= 1.0]
    if not values or bad:
        raise ConfigError(f"alphas: every α must be in [0, 1], got {spec!r}")
    return values


def interpolate(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - α)·start + α·end`` for floating tensors; equal tensors and others kept as they are.

    Raises:
        LayerlockError: The endpoints have different keys or shapes.
    """
    if start.keys() != end.keys():
        extra = sorted(set(start) ^ set(end))[:3]
        raise LayerlockError(f"start and end weights differ in their tensors (e.g. {extra})")
    out: dict[str, torch.Tensor] = {}
    for k, s in start.items():
        e = end[k]
        if s.shape != e.shape:
            raise LayerlockError(f"tensor {k}: start {tuple(s.shape)} vs end {tuple(e.shape)}")
        if alpha == 0.0 or torch.equal(s, e):
            out[k] = s.clone()
        elif alpha == 1.0 or not s.is_floating_point():
            out[k] = e.clone()
        else:
            out[k] = (1.0 - alpha) * s + alpha * e
    return out


@dataclass
class WiseResult:
    """What :func:`wise` measured.

    Attributes:
        alphas: The α values, in order.
        rows: One row per α: ``alpha`` and every set's metrics (``val_acc``, ``<set>/val_acc``).
        best_alpha: The α best on the first set (the validation split).
        start_epoch: The epoch the start weights are from (0: before training).
        reused_groups: Groups equal in both endpoints whose output was computed once.
        saved: The weights file written, if any.
    """

    alphas: list[float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_alpha: float = 1.0
    start_epoch: int = 0
    reused_groups: int = 0
    saved: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON safe)."""
        return {
            "alphas": self.alphas,
            "rows": self.rows,
            "best_alpha": self.best_alpha,
            "start_epoch": self.start_epoch,
            "reused_groups": self.reused_groups,
            "saved": str(self.saved) if self.saved else None,
        }


def wise(
    run_dir: str | Path,
    *,
    alphas: Sequence[float] | str = "0:1:0.1",
    eval_sets: str | None = None,
    save: float | str | None = None,
    device: str | None = None,
) -> WiseResult:
    """Evaluate WiSE-FT mixtures of a finished run (see the module doc).

    Args:
        run_dir: A finished ``layerlock finetune`` run directory.
        alphas: The α values, or their text (:func:`parse_alphas`).
        eval_sets: Evaluation sets instead of the run's ``eval.sets`` (same syntax).
        save: Write ``wise-<α>.safetensors`` for this α (``"best"``: the best one).
        device: Override the run's device.

    Returns:
        A :class:`WiseResult`; ``wise.json`` and ``wise.png`` are written to ``run_dir``.

    Raises:
        LayerlockError: Not a finished run, or a run without start weights.
        ConfigError: Bad alphas, evaluation sets or ``save``.

    Example:
        >>> wise("runs/finetune", alphas="0:1:0.5").best_alpha  # doctest: +SKIP
        0.5
    """
    from .finetune.recipe import FinetuneRecipe

    run = Path(run_dir)
    values = parse_alphas(alphas) if isinstance(alphas, str) else [float(a) for a in alphas]
    for name in (CONFIG_FILE, MODEL_FILE, START_FILE):
        if not (run / name).is_file():
            why = {
                MODEL_FILE: "; the run stopped early: resume it first",
                START_FILE: "; it was made by an older layerlock: run it again",
            }.get(name, "")
            raise LayerlockError(f"{run} has no {name}: wise needs a finished finetune run{why}")
    overrides: dict[str, Any] = {"run.resume": None}
    if eval_sets is not None:
        overrides["eval.sets"] = eval_sets
    if device is not None:
        overrides["run.device"] = device
    config = load_config(run / CONFIG_FILE, overrides)
    recipe = FinetuneRecipe(config)
    recipe.setup_evaluation()
    model = recipe.model
    start, end = load_weights(run / START_FILE), load_weights(run / MODEL_FILE)
    result = WiseResult(values, start_epoch=_start_epoch(run))
    boundary, prefix = _shared_prefix(model, recipe.groups, start, end)
    result.reused_groups = boundary
    loaders = _feature_loaders(recipe, prefix, start, model)
    for alpha in values:
        model.load_state_dict(interpolate(start, end, alpha))
        row: dict[str, Any] = {"alpha": alpha}
        net = model if prefix is None else SuffixModule(prefix)
        for name, (kind, batches) in loaders.items():
            metrics = recipe.task.evaluate(net, batches, recipe.device, recipe.dtype, kind)
            key = "" if name == "val" else f"{name}/"
            row.update(
                {f"{key}{k}": v for k, v in metrics.items() if v is not None and k[0] != "_"}
            )
        result.rows.append(row)
    metric = recipe.task.best_metric
    result.best_alpha = max(result.rows, key=lambda r: (r[metric], -abs(r["alpha"] - 1)))["alpha"]
    if save is not None:
        alpha = result.best_alpha if save == "best" else float(save)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"save: α must be in [0, 1] or 'best', got {save!r}")
        result.saved = run / f"wise-{alpha:g}.safetensors"
        save_weights(result.saved, interpolate(start, end, alpha), metadata={"alpha": alpha})
    atomic_write(run / WISE_FILE, json.dumps(result.to_dict(), indent=2) + "\n")
    _chart(run / WISE_CHART, result, metric)
    return result


def _start_epoch(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / START_FILE), framework="pt") as f:
        meta = f.metadata() or {}
    return int(json.loads(meta.get("epoch", "0")))


def _shared_prefix(
    model: nn.Module,
    groups: Any,
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
) -> tuple[int, Any]:
    """The number of lowest groups equal in both endpoints, and a split there (or None)."""
    from .groups import layer_groups
    from .split import split_model

    groups = groups if groups is not None else layer_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    boundary = 0
    for group in groups:
        keys = [names[id(p)] for p in group.params if id(p) in names]
        if not all(k in start and torch.equal(start[k], end[k]) for k in keys):
            break
        boundary += 1
    if boundary == 0 or boundary >= len(groups):
        return 0, None
    split = split_model(model, groups, boundary)
    return (boundary, split) if split is not None else (0, None)


def _feature_loaders(
    recipe: Any, split: Any, start: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, tuple[str, Any]]:
    """Each set's batches; with a shared prefix, its output computed once per image."""
    from .cache import prefix_output

    loaders = recipe.evaluation_loaders()
    if split is None:
        return loaders
    model.load_state_dict(dict(start))
    out: dict[str, tuple[str, Any]] = {}
    for name, (kind, loader) in loaders.items():
        batches = []
        for x, y in loader:
            batches.append((prefix_output(split, x.to(recipe.device)), y))
        out[name] = (kind, batches)
    return out


def _chart(path: Path, result: WiseResult, metric: str) -> None:
    """In-distribution accuracy against the mean of the other sets', one point per α."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    others = sorted({k for r in result.rows for k in r if k.endswith(f"/{metric}")})
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    xs = [r[metric] for r in result.rows]
    if others:
        ys = [sum(r[k] for k in others) / len(others) for r in result.rows]
        ax.set_ylabel(f"mean {metric} of {len(others)} other set(s)")
    else:
        ys = xs
        ax.set_ylabel(metric)
    ax.plot(xs, ys, marker="o")
    for r, x, y in zip(result.rows, xs, ys):
        ax.annotate(
            f"{r['alpha']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel(f"{metric} (validation split)")
    ax.set_title(f"WiSE-FT: one point per α (best α {result.best_alpha:g})")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())
