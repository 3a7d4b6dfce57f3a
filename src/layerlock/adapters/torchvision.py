"""torchvision classification models: stem, one group per block, head.

Group names are module paths wherever one module is the group:

==================  =====================================================================
family              groups, input side first (``coarse=True``: one group per stage)
==================  =====================================================================
ResNet (+ ResNeXt,  ``stem`` (conv1, bn1), ``layer{i}.{j}`` per block, ``fc``
Wide ResNet)
VisionTransformer   ``embeddings`` (conv_proj, class_token, encoder.pos_embedding),
                    ``encoder.layers.encoder_layer_{i}`` per block - the last one also
                    holds the final ``encoder.ln``, as timm and OpenCLIP do - ``heads``
ConvNeXt            ``features.0`` stem, ``features.{i}.{j}`` per CNBlock, ``classifier``
Swin (v1, v2)       ``features.0`` patch embedding, ``features.{i}.{j}`` per block,
                    ``head`` (the final ``norm`` and ``head``)
EfficientNet (v1,   ``features.0`` stem, ``features.{i}.{j}`` per block, the last conv
v2)                 ``features.N``, ``classifier``
MobileNetV2 / V3    ``features.0`` stem, ``features.{i}`` per block, the last conv
                    ``features.N``, ``classifier``
RegNet              ``stem``, ``trunk_output.block{i}.block{i}-{j}`` per block, ``fc``
==================  =====================================================================

A module between two stages (ConvNeXt's downsample layers, Swin's patch merging) joins
the first block of the following stage, as timm's ``group_matcher`` does. The last conv
of EfficientNet / MobileNet is a group of its own (timm merges it into the last block, so
``efficientnet_b0`` has 19 groups here and 18 in timm). MobileNet's blocks are not
nested in stages; ``coarse=True`` groups consecutive blocks with the same output width
(``features.2-3``). A ViT has no stages: coarse groups equal the fine ones.

Other torchvision models (VGG, DenseNet, detection models, ...) fall back to the generic
adapter with a note. The adapter never imports torchvision: it only reads class names of
models whose class lives in ``torchvision.models``.

Example:
    >>> import torchvision, layerlock
    >>> groups = layerlock.layer_groups(torchvision.models.resnet18())
    >>> groups.names[:3], groups.names[-1], len(groups)
    (['stem', 'layer1.0', 'layer1.1'], 'fc', 10)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from torch import nn

from .base import Adapter, GroupSpec
from .generic import GenericAdapter

__all__ = ["TorchvisionAdapter"]

#: A proposed group: its name and the module paths (or parameter names) it holds.
Plan = list[tuple[str, list[str]]]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_children() if _has_params(m)]


def _family(model: nn.Module) -> str | None:
    """Name of the first torchvision class in the model's MRO that has a plan."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("torchvision.models") and cls.__name__ in _PLANS:
            return cls.__name__
    return None


def _resnet(model: nn.Module, coarse: bool) -> Plan:
    plan: Plan = [("stem", ["conv1", "bn1"])]
    for stage, module in _children(model):
        if not (stage.startswith("layer") and stage[5:].isdigit()):
            continue
        if coarse:
            plan.append((stage, [stage]))
        else:
            plan += [(f"{stage}.{j}", [f"{stage}.{j}"]) for j, _ in _children(module)]
    return [*plan, ("fc", ["fc"])]


def _vit(model: nn.Module, coarse: bool) -> Plan:
    plan: Plan = [("embeddings", ["conv_proj", "class_token", "encoder.pos_embedding"])]
    plan += [
        (f"encoder.layers.{n}", [f"encoder.layers.{n}"])
        for n, _ in _children(model.get_submodule("encoder.layers"))
    ]
    plan[-1][1].append("encoder.ln")
    return [*plan, ("heads", ["heads"])]


def _regnet(model: nn.Module, coarse: bool) -> Plan:
    plan: Plan = [("stem", ["stem"])]
    for stage, module in _children(model.get_submodule("trunk_output")):
        path = f"trunk_output.{stage}"
        if coarse:
            plan.append((path, [path]))
        else:
            plan += [(f"{path}.{b}", [f"{path}.{b}"]) for b, _ in _children(module)]
    return [*plan, ("fc", ["fc"])]


def _is_stage(module: nn.Module) -> bool:
    """A Sequential of blocks that all share one torchvision block class."""
    if not isinstance(module, nn.Sequential):
        return False
    kinds = {type(c) for _, c in _children(module)}
    return len(kinds) == 1 and not next(iter(kinds)).__module__.startswith("torch.nn")


def _is_transition(module: nn.Module) -> bool:
    """Downsample / patch merging / last conv: not a block, not a stage."""
    name = type(module).__name__
    return (
        name == "Conv2dNormActivation"
        or name.startswith("PatchMerging")
        or (isinstance(module, nn.Sequential) and not _is_stage(module))
    )


def _features(model: nn.Module, coarse: bool) -> Plan:
    """ConvNeXt, Swin, EfficientNet, MobileNet: everything lives in ``features``."""
    feats = _children(model.get_submodule("features"))
    plan: Plan = [(f"features.{feats[0][0]}", [f"features.{feats[0][0]}"])]
    pending: list[str] = []  # transitions waiting for the next block
    flat: list[tuple[str, nn.Module]] = []  # blocks directly in features (MobileNet)

    def flush_flat() -> None:
        if coarse:
            for run in _runs(flat):
                first, last = run[0][0], run[-1][0]
                name = f"features.{first}" if first == last else f"features.{first}-{last}"
                add(name, [f"features.{n}" for n, _ in run])
        else:
            for n, _ in flat:
                add(f"features.{n}", [f"features.{n}"])
        flat.clear()

    def add(name: str, members: list[str]) -> None:
        plan.append((name, [*pending, *members]))
        pending.clear()

    for name, child in feats[1:]:
        path = f"features.{name}"
        if _is_stage(child):
            flush_flat()
            if coarse:
                add(path, [path])
            else:
                for j, _ in _children(child):
                    add(f"{path}.{j}", [f"{path}.{j}"])
        elif _is_transition(child):
            flush_flat()
            pending.append(path)
        else:
            flat.append((name, child))
    flush_flat()
    plan += [(p, [p]) for p in pending]  # trailing transition: the last conv
    tail = [n for n, _ in _children(model) if n != "features"]
    if tail:
        plan.append((tail[0] if len(tail) == 1 else "head", tail))
    return plan


def _runs(blocks: Sequence[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """Consecutive blocks with the same output width (MobileNet stages)."""
    runs: list[list[tuple[str, nn.Module]]] = []
    width: object = object()
    for item in blocks:
        w = getattr(item[1], "out_channels", None)
        if runs and w is not None and w == width:
            runs[-1].append(item)
        else:
            runs.append([item])
        width = w
    return runs


_PLANS: dict[str, Callable[[nn.Module, bool], Plan]] = {
    "ResNet": _resnet,
    "VisionTransformer": _vit,
    "RegNet": _regnet,
    "ConvNeXt": _features,
    "SwinTransformer": _features,
    "EfficientNet": _features,
    "MobileNetV2": _features,
    "MobileNetV3": _features,
}


def _specs(names: list[str], plan: Plan) -> tuple[list[GroupSpec], list[str]]:
    """Assign each parameter to the plan entry with the longest matching path.

    Returns the specs and the parameters no entry claimed (each then joins the group of
    the parameter before it, or the first group).
    """
    owner: dict[str, int] = {}
    for i, (_, members) in enumerate(plan):
        for path in members:
            owner[path] = i
    assigned: list[list[str]] = [[] for _ in plan]
    stray: list[str] = []
    previous = 0
    for n in names:
        parts = n.split(".")
        hit = next(
            (
                owner[".".join(parts[:k])]
                for k in range(len(parts), 0, -1)
                if ".".join(parts[:k]) in owner
            ),
            None,
        )
        if hit is None:
            stray.append(n)
            hit = previous
        assigned[hit].append(n)
        previous = hit
    specs = [GroupSpec(name, tuple(p)) for (name, _), p in zip(plan, assigned) if p]
    return specs, stray


class TorchvisionAdapter(Adapter):
    """torchvision classification models (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(name="torchvision")

    def matches(self, model: nn.Module) -> bool:
        return "torchvision" in sys.modules and type(model).__module__.startswith(
            "torchvision.models"
        )

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        self.notes = []
        family = _family(model)
        if family is not None:
            try:
                plan = _PLANS[family](model, coarse)
            except (AttributeError, IndexError) as exc:
                self.notes.append(
                    f"{type(model).__name__} does not have the layout of torchvision's "
                    f"{family} ({exc}); using the generic adapter"
                )
            else:
                specs, stray = _specs([n for n, _ in model.named_parameters()], plan)
                if stray:
                    self.notes.append(
                        f"{len(stray)} parameter(s) outside the {family} layout joined the "
                        f"group before them: {', '.join(stray[:5])}"
                    )
                return specs
        else:
            self.notes.append(
                f"no torchvision layout for {type(model).__name__}; using the generic adapter"
            )
        fallback = GenericAdapter()
        specs = fallback.groups(model, coarse)
        self.notes.extend(fallback.notes)
        return specs


ADAPTER = TorchvisionAdapter
