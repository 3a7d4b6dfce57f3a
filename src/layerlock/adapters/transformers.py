"""Hugging Face ``transformers`` models: embeddings, one group per layer, head.

Groups, input side first:

- ``embeddings``: every parameter registered before the first encoder layer - the
  embeddings module (patch / token / position embeddings, class, mask and register
  tokens) and pre-norms such as CLIP's ``pre_layrnorm``.
- ``layer.{i}``: one group per entry of the encoder's layer list (``encoder.layer``,
  ``encoder.layers``, or ``layers`` directly on the base model).
- ``head``: everything on the output side that is not the final norm - BERT's and
  ViT's ``pooler``, ``classifier``, CLIP's ``visual_projection`` / ``text_projection``.

The final norm (``layernorm``, ``post_layernorm``, ``final_layer_norm``) joins the last
layer's group rather than forming a ``norm`` group of its own. That is what OpenCLIP
(last block + ``ln_post``) and timm (``norm`` merged into the last block) do, so
``unlocked_groups=k`` unlocks the same part of a ViT-B whichever library built it, and
unlocking one more group never yields a group that holds only a few hundred norm
weights. A norm counts as final when it sits beside the layer list (its parent is an
ancestor of the list); a norm inside the head (a pooler's or LM head's own norm) stays
in ``head``. ``coarse=True`` gives the same groups: a plain transformer has no stages.

Dual-tower models (``CLIPModel``, ``SiglipModel``: children ``vision_model`` and
``text_model``) give each tower its own groups, prefixed ``visual.`` and ``text.``
(towers ``"visual"`` and ``"text"``); the projection of each tower is its ``head``, and
``logit_scale`` (and ``logit_bias``) form a last group with tower
:data:`~layerlock.adapters.MODEL_LEVEL`.

The parts are found structurally - the one layer list named ``layer``, ``layers``,
``block``, ``blocks`` or ``h`` that is not nested in another list - so architectures
beyond CLIP, ViT, DINOv2, BERT and RoBERTa work as well. A model where no such list is
found, or where several are (encoder-decoder models), falls back to the generic adapter
and says so in ``notes``. The adapter never imports ``transformers``: a model can only
be a ``PreTrainedModel`` if the library is already in ``sys.modules``.

Example:
    >>> import transformers, layerlock
    >>> cfg = transformers.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                              num_attention_heads=2, image_size=32, patch_size=8)
    >>> layerlock.layer_groups(transformers.ViTForImageClassification(cfg)).names
    ['embeddings', 'layer.0', 'layer.1', 'head']
"""

from __future__ import annotations

import sys

from torch import nn

from .base import MODEL_LEVEL, Adapter, GroupSpec
from .generic import GenericAdapter

__all__ = ["TransformersAdapter"]

#: Last path component of a module list that holds the encoder layers.
LAYER_LIST_NAMES = ("layer", "layers", "block", "blocks", "h")

#: Child name of a dual-tower model -> tower name and group-name prefix.
TOWERS = {"vision_model": "visual", "text_model": "text"}


def is_pretrained_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel``, without importing transformers.

    Example:
        >>> import torch.nn as nn
        >>> is_pretrained_model(nn.Linear(2, 2))
        False
    """
    if "transformers" not in sys.modules:
        return False
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(model).__mro__
    )


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        return True
    return "Norm" in type(module).__name__ and not any(True for _ in module.children())


def find_layer_lists(module: nn.Module) -> list[str]:
    """Paths of the encoder layer lists in ``module`` (lists nested in a list are skipped).

    Example:
        >>> import torch.nn as nn
        >>> enc = nn.Module()
        >>> enc.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        >>> find_layer_lists(nn.ModuleDict({"encoder": enc}))
        ['encoder.layers']
    """
    found = []
    for name, m in module.named_modules():
        if not isinstance(m, nn.ModuleList) or not name:
            continue
        parts = name.split(".")
        if parts[-1] not in LAYER_LIST_NAMES or any(p.isdigit() for p in parts):
            continue
        if any(_has_params(c) for c in m.children()):
            found.append(name)
    return found


class TransformersAdapter(Adapter):
    """``transformers.PreTrainedModel`` subclasses (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(name="transformers")

    def matches(self, model: nn.Module) -> bool:
        return is_pretrained_model(model)

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        self.notes = []
        names = [n for n, _ in model.named_parameters()]
        towers = {
            child: tower
            for child, tower in TOWERS.items()
            if isinstance(getattr(model, child, None), nn.Module)
            and _has_params(getattr(model, child))
        }
        if len(towers) == 2:
            specs = self._dual(model, names, towers)
            if specs is not None:
                return specs
        else:
            lists = find_layer_lists(model)
            if len(lists) == 1:
                return _tower(model, names, lists[0])
            self.notes.append(
                f"{type(model).__name__}: "
                + (
                    "no encoder layer list (a ModuleList named "
                    + "/".join(LAYER_LIST_NAMES)
                    + ") found"
                    if not lists
                    else f"several layer lists ({', '.join(lists)})"
                )
                + "; using the generic adapter"
            )
        fallback = GenericAdapter()
        specs = fallback.groups(model, coarse)
        self.notes.extend(fallback.notes)
        return specs

    def _dual(
        self, model: nn.Module, names: list[str], towers: dict[str, str]
    ) -> list[GroupSpec] | None:
        """Groups of a two-tower model, or ``None`` (with a note) when a tower has no layers."""
        owned: dict[str, list[str]] = {t: [] for t in towers.values()}
        shared: list[str] = []
        for n in names:
            child = n.split(".", 1)[0]
            if child in towers:
                owned[towers[child]].append(n)
            elif n.startswith(("visual", "vision", "image")):
                owned["visual"].append(n)
            elif n.startswith("text"):
                owned["text"].append(n)
            else:
                shared.append(n)
        specs: list[GroupSpec] = []
        for child, tower in towers.items():
            lists = find_layer_lists(getattr(model, child))
            if len(lists) != 1:
                self.notes.append(
                    f"{type(model).__name__}.{child}: expected one encoder layer list, "
                    f"found {len(lists)}; using the generic adapter"
                )
                return None
            for spec in _tower(model, owned[tower], f"{child}.{lists[0]}"):
                specs.append(GroupSpec(f"{tower}.{spec.name}", spec.params, tower))
        if shared:
            name = "logit_scale" if all(n.startswith("logit_") for n in shared) else "shared"
            specs.append(GroupSpec(name, tuple(shared), MODEL_LEVEL))
        return specs


def _tower(model: nn.Module, names: list[str], layers_path: str) -> list[GroupSpec]:
    """Split one tower's parameter ``names`` around the layer list at ``layers_path``."""
    layer_list = model.get_submodule(layers_path)
    index = {
        child: i
        for i, (child, _) in enumerate(
            (c, m) for c, m in layer_list.named_children() if _has_params(m)
        )
    }
    per_layer: list[list[str]] = [[] for _ in index]
    embeddings: list[str] = []
    head: list[str] = []
    last = len(index) - 1
    prefix = layers_path + "."
    for n in names:
        if n.startswith(prefix):
            per_layer[index[n[len(prefix) :].split(".", 1)[0]]].append(n)
        elif not any(per_layer) or _is_embedding(n):
            embeddings.append(n)
        elif _is_final_norm(model, n, layers_path):
            per_layer[last].append(n)
        else:
            head.append(n)
    specs = [GroupSpec("embeddings", tuple(embeddings))] if embeddings else []
    specs += [GroupSpec(f"layer.{i}", tuple(p)) for i, p in enumerate(per_layer)]
    if head:
        specs.append(GroupSpec("head", tuple(head)))
    return specs


def _is_embedding(param_name: str) -> bool:
    parts = param_name.split(".")[:-1]
    return any(p == "embeddings" or p.startswith("embed") for p in parts)


def _is_final_norm(model: nn.Module, param_name: str, layers_path: str) -> bool:
    module_path = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    if not module_path or not _is_norm(model.get_submodule(module_path)):
        return False
    parent = module_path.rsplit(".", 1)[0] if "." in module_path else ""
    return parent == "" or layers_path.startswith(parent + ".")


ADAPTER = TransformersAdapter
