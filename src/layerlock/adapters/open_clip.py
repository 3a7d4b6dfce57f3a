"""OpenCLIP models: groups that follow OpenCLIP main's ``layer_groups()`` convention.

Every tower is split, input side first, into ``embeddings``, ``layer.{i}`` (the final
norm joins the last block) and ``proj`` (the projection head). A whole model gets each
tower's groups with its tower name as prefix (``visual.layer.3``, ``text.proj``) and
``tower="visual"`` / ``"text"``; the model-level scalars close the list.

Per tower (when the tower has its own ``layer_groups()`` method, as on OpenCLIP main,
layerlock reuses it, except for ``TimmModel``: see below):

- ``VisionTransformer``: ``embeddings`` = conv1, class / position embeddings, ln_pre;
  ``layer.{i}`` = ``transformer.resblocks[i]`` (``ln_post`` in the last, with or without
  an attention pool, as main has it); ``proj`` = ``proj`` plus the attention pools
  (``attn_pool``, ``attn_pool_contrastive``), which main leaves out of every group and
  3.3.0 always freezes. In the original CoCa pooling (``attn_pool`` without
  ``attn_pool_contrastive``) ``ln_post`` runs after the pool, so there a locked ``ln_post``
  sits between the trainable pool and ``proj``: the groups are then not a prefix of the
  forward order, and :func:`layerlock.split.split_model` does not cache that boundary.
- ``TimmModel``: ``layer.{i}`` = the trunk's timm groups, numbered as timm numbers them
  (``layer.0`` is the stem; main names them the same way), then ``proj`` = the adapter head
  (``head.*``) when it has parameters. ``coarse`` is passed to the trunk's
  ``group_matcher``; main's own ``TimmModel.layer_groups`` is not reused because it ignores
  ``coarse``. A trunk without ``group_matcher`` falls back to the generic adapter.
- ``ModifiedResNet``: ``embeddings`` = the 3-conv stem with its BatchNorms, ``layer.0`` ..
  ``layer.3`` = ``layer1`` .. ``layer4``, ``proj`` = ``attnpool``. Unlike main's lock, the
  stem BatchNorms are in a group, so ``freeze_bn_stats`` reaches them.
- ``TextTransformer`` and the text tower that ``CLIP`` unpacks onto its root:
  ``embeddings`` = token / position embeddings and ``cls_emb``; ``layer.{i}`` (``ln_final`` in
  the last); ``proj`` = ``text_projection``.
- ``HFTextEncoder``: ``embeddings`` = the transformer's embeddings, ``layer.{i}`` = its
  encoder layers, ``proj`` = the transformer's pooler (when it has parameters) and ``proj``.
- ``CoCa``: ``visual``, ``text`` as above and a third tower ``text_decoder``:
  ``layer.{i}`` = self-attention block i with cross-attention block i (``ln_final`` in the
  last), ``proj`` = its ``text_projection``.

A parameter that none of these names (a newer OpenCLIP's extra module) is still placed:
in a submodule registered before the first block it joins the tower's first group;
otherwise (later submodules, and parameters registered directly on the tower) the tower's
top group. The adapter's ``notes`` list each one. At model level, ``logit_scale`` and ``logit_bias`` form the
group ``logit_scale`` (``tower="model"``: trainable under ``tower="both"`` iff k >= 1); any
other root parameter joins that group too, with a note.

Transformer towers have no coarse grouping: ``coarse`` only reaches timm trunks. OpenCLIP
is never imported here: a model can only be an OpenCLIP model if ``open_clip`` is already
in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch import nn

from .base import MODEL_LEVEL, Adapter, GroupSpec
from .own import own_groups

__all__ = ["OpenCLIPAdapter"]

#: kind -> (module, class) of the OpenCLIP classes this adapter knows.
_CLASSES: dict[str, tuple[str, str]] = {
    "clip": ("open_clip.model", "CLIP"),
    "custom_text_clip": ("open_clip.model", "CustomTextCLIP"),
    "coca": ("open_clip.coca_model", "CoCa"),
    "vit": ("open_clip.transformer", "VisionTransformer"),
    "text": ("open_clip.transformer", "TextTransformer"),
    "timm": ("open_clip.timm_model", "TimmModel"),
    "resnet": ("open_clip.modified_resnet", "ModifiedResNet"),
    "hf_text": ("open_clip.hf_model", "HFTextEncoder"),
}
_WHOLE = ("clip", "custom_text_clip", "coca")
_LOGIT_PARAMS = ("logit_scale", "logit_bias")

# A raw group as OpenCLIP main's layer_groups() returns it: (name, [module | parameter]).
RawGroup = tuple[str, Sequence[Any]]


def _kind(model: nn.Module) -> str | None:
    """Which OpenCLIP class ``model`` is (subclasses included), or None."""
    if "open_clip" not in sys.modules:
        return None
    from_open_clip = type(model).__module__.startswith("open_clip")
    for kind, (module_name, class_name) in _CLASSES.items():
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(model, cls):
            return kind
        if from_open_clip and type(model).__name__ == class_name:
            return kind
    return None


def _member_params(members: Iterable[Any]) -> Iterator[nn.Parameter]:
    for m in members:
        if isinstance(m, nn.Parameter):
            yield m
        elif isinstance(m, nn.Module):
            yield from m.parameters()


def _ids(members: Iterable[Any]) -> list[int]:
    return [id(p) for p in _member_params(members)]


def _child(module: nn.Module, name: str) -> nn.Module | None:
    found = getattr(module, name, None)
    return found if isinstance(found, nn.Module) else None


def _blocks(module: nn.Module | None) -> list[nn.Module]:
    blocks = getattr(module, "resblocks", None) if module is not None else None
    return list(blocks) if blocks is not None else []


# -- per-tower enumerations (main's layer_groups, for towers that lack the method) ---------


def _transformer_groups(
    tower: nn.Module, embeddings: tuple[str, ...], final_norm: str, proj: str
) -> list[RawGroup]:
    """``embeddings``, ``layer.{i}`` (the last with ``final_norm``) and ``proj`` of a tower.

    Args:
        tower: A tower whose blocks are ``tower.transformer.resblocks``.
        embeddings: Attribute names of the members before the first block.
        final_norm: Attribute name of the norm after the last block.
        proj: Attribute name of the output projection.
    """
    blocks = _blocks(getattr(tower, "transformer", None))
    groups: list[RawGroup] = [("embeddings", [getattr(tower, a, None) for a in embeddings])]
    for i, block in enumerate(blocks):
        members = [block, getattr(tower, final_norm, None)] if i == len(blocks) - 1 else [block]
        groups.append((f"layer.{i}", members))
    groups.append(("proj", [getattr(tower, proj, None)]))
    return groups


def _vit_groups(v: nn.Module) -> list[RawGroup]:
    embeddings = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
    return _transformer_groups(v, embeddings, "ln_post", "proj")


def _vit_head_extras(v: nn.Module) -> list[Any]:
    """ViT members that belong in ``proj``: the attention pools (main groups neither)."""
    return [getattr(v, "attn_pool", None), getattr(v, "attn_pool_contrastive", None)]


def _text_groups(t: nn.Module) -> list[RawGroup]:
    """Native text tower; ``t`` is a TextTransformer or a CLIP root that unpacks one."""
    embeddings = ("token_embedding", "positional_embedding", "cls_emb")
    return _transformer_groups(t, embeddings, "ln_final", "text_projection")


def _decoder_groups(d: nn.Module) -> list[RawGroup]:
    """CoCa's multimodal text decoder: self- and cross-attention block i together."""
    blocks = _blocks(d)
    cross = list(getattr(d, "cross_attn", None) or [])
    groups: list[RawGroup] = []
    for i, block in enumerate(blocks):
        members: list[Any] = [block, cross[i] if i < len(cross) else None]
        if i == len(blocks) - 1:
            members.append(getattr(d, "ln_final", None))
        groups.append((f"layer.{i}", members))
    groups.append(("proj", [getattr(d, "text_projection", None)]))
    return groups


def _resnet_groups(r: nn.Module) -> list[RawGroup]:
    stem = [getattr(r, a, None) for a in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
    groups: list[RawGroup] = [("embeddings", stem)]
    groups += [(f"layer.{i}", [getattr(r, f"layer{i + 1}", None)]) for i in range(4)]
    groups.append(("proj", [getattr(r, "attnpool", None)]))
    return groups


def _hf_layers(encoder: nn.Module, attr: str | None) -> list[nn.Module]:
    for name in (attr, "layer", "layers", "block"):
        found = getattr(encoder, name, None) if name else None
        if isinstance(found, (nn.ModuleList, nn.Sequential)):
            return list(found)
    from .generic import find_block_list

    hit = find_block_list(encoder)
    return list(hit[1].children()) if hit else []


def _hf_groups(h: nn.Module) -> list[RawGroup]:
    tr: Any = h.transformer
    arch = getattr(sys.modules.get("open_clip.hf_configs"), "arch_dict", {})
    model_type = getattr(getattr(h, "config", None), "model_type", None)
    names = arch.get(model_type, {}).get("config_names", {})
    embeddings = getattr(tr, names.get("token_embeddings_attr", "embeddings"), None)
    encoder = getattr(tr, "encoder", tr)
    layers = _hf_layers(encoder, names.get("layer_attr"))
    groups: list[RawGroup] = [("embeddings", [embeddings])]
    groups += [(f"layer.{i}", [layer]) for i, layer in enumerate(layers)]
    groups.append(("proj", [getattr(tr, "pooler", None), getattr(h, "proj", None)]))
    return groups


def _timm_groups(t: nn.Module, coarse: bool) -> list[RawGroup]:
    trunk: Any = t.trunk
    params = dict(trunk.named_parameters())
    fn = getattr(trunk, "group_matcher", None)
    if callable(fn):
        from .matcher import matcher_groups

        specs = matcher_groups(trunk, fn(coarse=coarse))
    else:
        from .generic import GenericAdapter

        specs = GenericAdapter().groups(trunk, coarse)
    groups: list[RawGroup] = [
        (f"layer.{i}", [params[n] for n in spec.params]) for i, spec in enumerate(specs)
    ]
    groups.append(("proj", [getattr(t, "head", None)]))
    return groups


def _fallback_groups(module: nn.Module, coarse: bool) -> list[RawGroup]:
    """An unknown tower: its own ``layer_groups()``, else the timm / generic adapter."""
    own = own_groups(module, coarse)
    if own is not None:
        return [(name, members) for name, members, _ in own]
    from . import select_adapter

    adapter = select_adapter(module)
    params = dict(module.named_parameters())
    return [(s.name, [params[n] for n in s.params]) for s in adapter.groups(module, coarse)]


class OpenCLIPAdapter(Adapter):
    """OpenCLIP models and towers (see the module docstring for the groups).

    Example:
        >>> import open_clip, layerlock
        >>> vision = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
        >>> text = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2)
        >>> model = open_clip.CLIP(16, vision, text)
        >>> groups = layerlock.layer_groups(model)
        >>> groups.names[:2], groups.names[-1], groups.adapter
        (['visual.embeddings', 'visual.layer.0'], 'logit_scale', 'open_clip')
    """

    def __init__(self) -> None:
        super().__init__(name="open_clip")

    def matches(self, model: nn.Module) -> bool:
        return _kind(model) is not None

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        self.notes = []
        kind = _kind(model)
        if kind is None:
            from .generic import GenericAdapter

            self.notes.append(f"{type(model).__name__} is not an OpenCLIP model; generic groups")
            return GenericAdapter().groups(model, coarse)
        named = dict(model.named_parameters())
        self._name = {id(p): n for n, p in named.items()}
        self._order = {n: i for i, n in enumerate(named)}
        self._taken: set[int] = set()
        if kind not in _WHOLE:
            return self._tower(model, kind, None, coarse)
        specs: list[GroupSpec] = []
        visual = _child(model, "visual")
        if visual is not None:
            specs += self._tower(visual, _kind(visual), "visual", coarse)
        text = _child(model, "text")
        if kind == "clip":
            # CLIP unpacks its text tower onto the root: no tower module to sweep for extras.
            specs += self._finish(_text_groups(model), "text", sweep=None)
        elif text is not None:
            specs += self._tower(text, _kind(text), "text", coarse)
        decoder = _child(model, "text_decoder")
        if kind == "coca" and decoder is not None:
            specs += self._finish(_decoder_groups(decoder), "text_decoder", sweep=decoder)
        specs += self._model_level(model)
        return specs

    # -- helpers ---------------------------------------------------------------------------

    def _tower(
        self, module: nn.Module, kind: str | None, tower: str | None, coarse: bool
    ) -> list[GroupSpec]:
        own = own_groups(module, coarse) if kind != "timm" else None
        raw: list[RawGroup]
        if kind == "timm":
            raw = _timm_groups(module, coarse)
        elif own is not None:
            raw = [(name, members) for name, members, _ in own]
        elif kind == "vit":
            raw = _vit_groups(module)
        elif kind == "text":
            raw = _text_groups(module)
        elif kind == "resnet":
            raw = _resnet_groups(module)
        elif kind == "hf_text":
            raw = _hf_groups(module)
        else:
            raw = _fallback_groups(module, coarse)
        top = set(_ids(_vit_head_extras(module))) if kind == "vit" else set()
        return self._finish(raw, tower, sweep=module, top=top)

    def _finish(
        self,
        raw: Sequence[RawGroup],
        tower: str | None,
        sweep: nn.Module | None,
        top: set[int] | None = None,
    ) -> list[GroupSpec]:
        """Resolve members to parameter names, place what no group names, drop empty groups.

        ``top`` holds parameters that belong in the top group ``proj`` wherever ``raw`` puts
        them (a ViT's attention pools).
        """
        top = {i for i in (top or set()) if i in self._name and i not in self._taken}
        groups: list[tuple[str, list[int]]] = []
        for name, members in raw:
            ids = [i for i in dict.fromkeys(_ids(members)) if i in self._name]
            ids = [i for i in ids if i not in self._taken and i not in top]
            self._taken.update(ids)
            groups.append((name, ids))
        if top:
            if not groups or groups[-1][0] != "proj":
                groups.append(("proj", []))
            groups[-1][1].extend(top)
            self._taken.update(top)
        if sweep is not None and groups:
            self._place_leftovers(groups, sweep, tower)
        prefix = f"{tower}." if tower else ""
        specs = []
        for name, ids in groups:
            if not ids:
                continue
            params = sorted((self._name[i] for i in ids), key=self._order.__getitem__)
            specs.append(GroupSpec(prefix + name, tuple(params), tower))
        return specs

    def _place_leftovers(
        self, groups: list[tuple[str, list[int]]], sweep: nn.Module, tower: str | None
    ) -> None:
        """Place parameters no group names: by the position of the submodule that owns them.

        A submodule registered before the one holding the first block's first parameter
        joins the first group; anything later, and parameters registered directly on the
        tower (whose place in the forward pass registration cannot tell), join the top group.
        """
        position: dict[int, float] = {}
        for pos, (mname, module) in enumerate(sweep.named_modules()):
            for p in module.parameters(recurse=False):
                position.setdefault(id(p), float(pos) if mname else float("inf"))
        first_block = next((ids[0] for _, ids in groups[1:] if ids), None)
        boundary = position.get(first_block, float("inf")) if first_block is not None else 0.0
        extra: list[str] = []
        for p in sweep.parameters():
            pid = id(p)
            if pid in self._taken or pid not in self._name:
                continue
            self._taken.add(pid)
            early = position.get(pid, float("inf")) < boundary and len(groups) > 1
            target = groups[0] if early else groups[-1]
            target[1].append(pid)
            extra.append(f"{self._name[pid]} -> {(tower + '.') if tower else ''}{target[0]}")
        if extra:
            self.notes.append(
                f"open_clip: {len(extra)} parameter(s) outside OpenCLIP's groups were placed by "
                f"position: {', '.join(extra)}"
            )

    def _model_level(self, model: nn.Module) -> list[GroupSpec]:
        ids = [id(p) for p in (getattr(model, a, None) for a in _LOGIT_PARAMS) if p is not None]
        ids = [i for i in ids if i in self._name and i not in self._taken]
        self._taken.update(ids)
        rest = [id(p) for p in model.parameters() if id(p) not in self._taken]
        if rest:
            self.notes.append(
                "open_clip: root parameter(s) outside both towers join the model-level group "
                f"'logit_scale': {', '.join(self._name[i] for i in rest)}"
            )
        ids += rest
        self._taken.update(rest)
        if not ids:
            return []
        params = sorted((self._name[i] for i in ids), key=self._order.__getitem__)
        return [GroupSpec("logit_scale", tuple(params), MODEL_LEVEL)]


ADAPTER = OpenCLIPAdapter
