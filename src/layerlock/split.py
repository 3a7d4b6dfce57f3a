"""Split a model at a group boundary: ``prefix`` runs groups ``[0, b)``, ``suffix`` the rest.

When the lowest trainable group is ``b > 0``, the groups below it are frozen and their
output depends only on the input: it can be computed once and cached
(:mod:`layerlock.cache`). That needs the model's forward pass written as a chain of
steps, each using the parameters of known groups. A *recipe* per family writes that
chain with the model's own modules and methods, in the order its ``forward`` uses them
(timm ``VisionTransformer``: ``patch_embed``, ``_pos_embed``, ``patch_drop``,
``norm_pre``, ``blocks[i]``, ``norm``, then the head). :func:`split_model` then checks
with the layer groups that the steps before the cut use only groups ``< b`` and the
steps after it only groups ``>= b``; otherwise the split is not well defined and it
returns None (:func:`split_reason` says why in one line) and the caller trains
uncached.

Parameter-free, deterministic steps right after the last frozen step (global pooling,
class-token selection) go into the prefix, so the cached features are as small as
possible; random ones (dropout with p > 0) stay in the suffix, where training applies
them.

Supported: timm ``VisionTransformer`` and subclasses (DeiT), ``Eva``, ``Beit``,
``ResNet``, ``ConvNeXt``, ``EfficientNet``, ``RegNet``; torchvision ``ResNet`` and
``VisionTransformer``; OpenCLIP's visual ``VisionTransformer``; Hugging Face
``ViTForImageClassification``. Libraries the caller has not imported are never imported.

Example:
    >>> import torch, timm
    >>> from layerlock import layer_groups
    >>> model = timm.create_model("test_vit", num_classes=3).eval()
    >>> split = split_model(model, layer_groups(model), boundary=7)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.allclose(split.suffix(split.prefix(x)), model(x), atol=1e-5)
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .groups import LayerGroups, unwrap

__all__ = ["Split", "Step", "SuffixModule", "split_model", "split_reason"]

Context = dict[str, Any]
StepFn = Callable[[torch.Tensor, Context], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One step of a model's forward chain.

    Attributes:
        name: Short label (``"blocks.3"``, ``"pool"``).
        uses: Names of the modules or parameters the step reads (dotted, from the model).
        fn: ``fn(x, context) -> x``.
        random: Whether the step is random in training mode (dropout with p > 0); only
            matters for parameter-free steps, which may otherwise move into the prefix.
    """

    name: str
    uses: tuple[str, ...]
    fn: StepFn = field(repr=False)
    random: bool = False


@dataclass(frozen=True)
class _Recipe:
    family: str
    steps: tuple[Step, ...]
    # Values every step may read that depend on the model only (EVA's rotary embedding,
    # BEiT's shared relative position bias); computed on both sides of the cut.
    context: Callable[[], Context] | None = None
    context_uses: tuple[str, ...] = ()


class Split:
    """A model split at a group boundary (built by :func:`split_model`).

    Attributes:
        model: The (unwrapped) model.
        boundary: Groups ``[0, boundary)`` run in :meth:`prefix`.
        family: The recipe used (``"timm.VisionTransformer"`` ...).
        prefix_steps: Names of the steps the prefix runs.
        suffix_steps: Names of the steps the suffix runs.
    """

    def __init__(
        self, model: nn.Module, groups: LayerGroups, boundary: int, recipe: _Recipe, cut: int
    ) -> None:
        self.model = model
        self.groups = groups
        self.boundary = boundary
        self.family = recipe.family
        self._recipe = recipe
        self._pre = recipe.steps[:cut]
        self._post = recipe.steps[cut:]
        self.prefix_steps = [s.name for s in self._pre]
        self.suffix_steps = [s.name for s in self._post]

    def _context(self) -> Context:
        return self._recipe.context() if self._recipe.context is not None else {}

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Run groups ``[0, boundary)`` (in the modules' current train/eval mode)."""
        ctx = self._context()
        for step in self._pre:
            x = step.fn(x, ctx)
        return x

    def suffix(self, features: torch.Tensor) -> torch.Tensor:
        """Run groups ``[boundary, G)`` on :meth:`prefix`'s output; returns the logits."""
        ctx = self._context()
        for step in self._post:
            features = step.fn(features, ctx)
        return features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x))

    def prefix_params(self) -> list[tuple[str, torch.Tensor]]:
        """Parameters of the frozen groups ``[0, boundary)``, named, in group order."""
        return [
            (n, p)
            for g in self.groups[: self.boundary]
            for n, p in zip(g.param_names, g.params, strict=True)
        ]

    def prefix_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """Buffers (BatchNorm statistics ...) of the modules the prefix steps use."""
        names = [u for s in self._pre for u in s.uses] + list(self._recipe.context_uses)
        out: list[tuple[str, torch.Tensor]] = []
        for bn, buf in self.model.named_buffers():
            if any(bn == u or bn.startswith(u + ".") for u in names):
                out.append((bn, buf))
        return out

    def prefix_modules(self) -> list[nn.Module]:
        """The modules the prefix steps use (to put them in eval mode while caching)."""
        mods = dict(self.model.named_modules())
        uses = [u for s in self._pre for u in s.uses] + list(self._recipe.context_uses)
        return [mods[u] for u in uses if u in mods]

    def __repr__(self) -> str:
        return (
            f"Split({self.family}, boundary={self.boundary}: prefix {len(self._pre)} steps "
            f"-> {self.prefix_steps[-1] if self._pre else '-'}, suffix {len(self._post)} steps)"
        )


# -- public entry points ---------------------------------------------------------------


class SuffixModule(nn.Module):
    """A :class:`Split`'s suffix as a module: ``forward(features)`` calls ``split.suffix``.

    It holds the whole model, so ``train()`` / ``eval()`` and DDP wrapping reach the
    suffix's layers.

    Example:
        >>> import timm, torch
        >>> from layerlock import layer_groups
        >>> model = timm.create_model("test_vit", num_classes=2)
        >>> split = split_model(model, layer_groups(model), boundary=7)
        >>> SuffixModule(split)(torch.randn(1, 64)).shape
        torch.Size([1, 2])
    """

    def __init__(self, split: Split) -> None:
        super().__init__()
        self.body = split.model
        self.split = split
        self.training = split.model.training

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.split.suffix(features)


def split_model(model: nn.Module, groups: LayerGroups, boundary: int) -> Split | None:
    """Split ``model`` so that ``prefix`` runs groups ``[0, boundary)`` and ``suffix`` the rest.

    ``suffix(prefix(x))`` equals ``model(x)`` (eval mode, up to float tolerance).

    Args:
        model: The model (DDP / compile wrappers are looked through).
        groups: Its layer groups (:func:`layerlock.layer_groups`).
        boundary: Index of the lowest trainable group, ``1 <= boundary < len(groups)``.

    Returns:
        The :class:`Split`, or None when the split is not well defined for this model
        (:func:`split_reason` gives the reason).

    Example:
        >>> import timm
        >>> from layerlock import layer_groups
        >>> m = timm.create_model("test_resnet", num_classes=2)
        >>> split_model(m, layer_groups(m), boundary=len(layer_groups(m)) - 1).suffix_steps
        ['fc']
    """
    result = _split(unwrap(model), groups, boundary)
    return result if isinstance(result, Split) else None


def split_reason(model: nn.Module, groups: LayerGroups, boundary: int) -> str:
    """One line saying why :func:`split_model` returns None (or what the split is).

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> split_reason(m, layer_groups(m), 1)
        'no split recipe for torch.nn.modules.container.Sequential (generic); training uncached'
    """
    result = _split(unwrap(model), groups, boundary)
    if isinstance(result, Split):
        return (
            f"split {result.family} at group {boundary} ({groups[boundary].name}): "
            f"prefix ends after {result.prefix_steps[-1]}"
        )
    return result


def _split(model: nn.Module, groups: LayerGroups, boundary: int) -> Split | str:
    n = len(groups)
    if isinstance(boundary, bool) or not isinstance(boundary, int):
        return f"boundary must be an int, got {boundary!r}"
    if boundary <= 0:
        return "nothing is locked below the lowest trainable group (boundary 0): nothing to cache"
    if boundary >= n:
        return f"boundary {boundary} leaves no trainable group ({n} groups): nothing to train"
    if len(groups.towers) > 1:
        return (
            f"{type(model).__name__} has several towers ({', '.join(map(str, groups.towers))}): "
            "split one tower (e.g. model.visual) instead; training uncached"
        )
    if groups.model is not model:
        return "the layer groups were computed for another model; training uncached"
    recipe = _recipe(model)
    if isinstance(recipe, str):
        return recipe
    return _cut(model, groups, boundary, recipe)


def _cut(model: nn.Module, groups: LayerGroups, boundary: int, recipe: _Recipe) -> Split | str:
    owner = {name: g.index for g in groups for name in g.param_names}

    def used(names: Sequence[str]) -> set[int]:
        return {gi for p, gi in owner.items() for u in names if p == u or p.startswith(u + ".")}

    per_step = [used(s.uses) for s in recipe.steps]
    covered = {
        p for p in owner for s in recipe.steps for u in s.uses if p == u or p.startswith(u + ".")
    }
    covered |= {p for p in owner for u in recipe.context_uses if p == u or p.startswith(u + ".")}
    missing = [p for p in owner if p not in covered]
    if missing:
        return (
            f"the {recipe.family} recipe does not account for {len(missing)} parameter(s) "
            f"({missing[0]} ...); training uncached"
        )
    ctx_groups = used(recipe.context_uses)
    if ctx_groups and max(ctx_groups) >= boundary:
        return (
            f"{recipe.family}: parameters every block reads lie in trainable group "
            f"{groups[max(ctx_groups)].name}; training uncached"
        )
    valid = [
        c
        for c in range(len(recipe.steps) + 1)
        if all(gi < boundary for s in per_step[:c] for gi in s)
        and all(gi >= boundary for s in per_step[c:] for gi in s)
    ]
    if not valid:
        # Name the first step that mixes frozen and trainable groups.
        for step, gs in zip(recipe.steps, per_step, strict=True):
            if gs and min(gs) < boundary <= max(gs):
                return (
                    f"{recipe.family} step {step.name!r} uses both frozen and trainable groups "
                    f"at boundary {boundary} ({groups[boundary].name}); training uncached"
                )
        return (
            f"the groups below {groups[boundary].name} are not a prefix of {recipe.family}'s "
            "forward order; training uncached"
        )
    cut = valid[0]
    while cut + 1 in valid and not recipe.steps[cut].random:
        cut += 1
    if cut == 0:
        return f"{recipe.family}: no frozen step before group {boundary}; nothing to cache"
    return Split(model, groups, boundary, recipe, cut)


# -- recipes ---------------------------------------------------------------------------


def _is(model: nn.Module, module: str, cls: str) -> bool:
    """isinstance against ``module.cls`` without importing ``module``."""
    mod = sys.modules.get(module)
    target = getattr(mod, cls, None) if mod is not None else None
    return isinstance(target, type) and isinstance(model, target)


def _call(mod: nn.Module) -> StepFn:
    return lambda x, ctx: mod(x)


def _p(mod: Any) -> float:
    p = getattr(mod, "p", getattr(mod, "prob", getattr(mod, "drop_prob", 0.0)))
    return float(p or 0.0)


def _own_params(mod: nn.Module) -> tuple[str, ...]:
    """Names of the parameters held directly by ``mod`` (class / position tokens)."""
    return tuple(n for n, _ in mod.named_parameters(recurse=False))


def _seq_steps(prefix: str, seq: nn.Module) -> list[Step]:
    return [
        Step(f"{prefix}.{name}", (f"{prefix}.{name}",), _call(child))
        for name, child in seq.named_children()
    ]


def _recipe(model: nn.Module) -> _Recipe | str:
    family = f"{type(model).__module__}.{type(model).__qualname__}"
    if type(model).__module__.startswith("timm."):
        r = _timm_recipe(model)
    elif type(model).__module__.startswith("torchvision."):
        r = _torchvision_recipe(model)
    elif type(model).__module__.startswith("open_clip."):
        r = _open_clip_recipe(model)
    elif type(model).__module__.startswith("transformers."):
        r = _transformers_recipe(model)
    else:
        r = None
    if r is None:
        return f"no split recipe for {family} (generic); training uncached"
    return r


def _timm_head(model: nn.Module, done: set[str]) -> list[Step]:
    """timm's ``forward_head``: decomposed for the known layouts, else one step."""
    attrs = [n for n, _ in model.named_children() if n not in done]
    return [Step("forward_head", tuple(attrs), lambda x, ctx: model.forward_head(x))]  # type: ignore[operator]


def _pooled_dropout_head(model: Any, classifier: str) -> list[Step]:
    """timm's ResNet / EfficientNet head: ``global_pool``, dropout at ``drop_rate``, classifier."""
    rate = float(model.drop_rate or 0.0)

    def classify(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        head = getattr(model, classifier)
        return head(nn.functional.dropout(x, rate, model.training) if rate else x)

    return [
        Step("global_pool", ("global_pool",), _call(model.global_pool)),
        Step(classifier, (classifier,), classify),
    ]


def _timm_recipe(model: nn.Module) -> _Recipe | None:
    m: Any = model
    if _is(model, "timm.models.vision_transformer", "VisionTransformer"):
        from timm.models.vision_transformer import VisionTransformer as ViT

        if type(m).forward_features is not ViT.forward_features:
            return None
        steps = [
            Step("patch_embed", ("patch_embed",), _call(m.patch_embed)),
            Step("pos_embed", (*_own_params(m), "pos_drop"), lambda x, ctx: m._pos_embed(x)),
            Step("patch_drop", ("patch_drop",), _call(m.patch_drop), _p(m.patch_drop) > 0),
            Step("norm_pre", ("norm_pre",), _call(m.norm_pre)),
            *_seq_steps("blocks", m.blocks),
            Step("norm", ("norm",), _call(m.norm)),
        ]
        if type(m).forward_head is ViT.forward_head:
            steps += [
                Step("pool", ("attn_pool",), lambda x, ctx: m.pool(x)),
                Step("fc_norm", ("fc_norm",), _call(m.fc_norm)),
                Step("head_drop", ("head_drop",), _call(m.head_drop), _p(m.head_drop) > 0),
                Step("head", ("head",), _call(m.head)),
            ]
        else:
            steps += _timm_head(m, {"patch_embed", "patch_drop", "norm_pre", "blocks", "norm"})
        return _Recipe("timm.VisionTransformer", tuple(steps))
    if _is(model, "timm.models.eva", "Eva"):
        if m.dynamic_img_size or m.patch_drop is not None or getattr(m, "rope_mixed", False):
            return None

        def eva_ctx() -> Context:
            if m.rope is None:
                return {"rope": None}
            if hasattr(m.rope, "feat_shape"):
                return {"rope": m.rope.get_embed()}
            return {"rope": m.rope.get_embed(shape=m.patch_embed.grid_size)}

        def eva_block(blk: nn.Module) -> StepFn:
            return lambda x, ctx: blk(x, rope=ctx["rope"])

        steps = [
            Step("patch_embed", ("patch_embed",), _call(m.patch_embed)),
            Step(
                "pos_embed",
                ("cls_token", "reg_token", "pos_embed", "pos_drop"),
                lambda x, ctx: m._pos_embed(x)[0],
            ),
            Step("norm_pre", ("norm_pre",), _call(m.norm_pre)),
            *[Step(f"blocks.{i}", (f"blocks.{i}",), eva_block(b)) for i, b in enumerate(m.blocks)],
            Step("norm", ("norm",), _call(m.norm)),
            *_timm_head(m, {"patch_embed", "pos_drop", "norm_pre", "blocks", "norm", "rope"}),
        ]
        return _Recipe("timm.Eva", tuple(steps), eva_ctx, ("rope",))
    if _is(model, "timm.models.beit", "Beit"):

        def beit_ctx() -> Context:
            return {"rpb": m.rel_pos_bias() if m.rel_pos_bias is not None else None}

        def beit_embed(x: torch.Tensor, ctx: Context) -> torch.Tensor:
            x = m.patch_embed(x)
            x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            if m.pos_embed is not None:
                x = x + m.pos_embed
            return x

        def beit_block(blk: nn.Module) -> StepFn:
            return lambda x, ctx: blk(x, shared_rel_pos_bias=ctx["rpb"])

        steps = [
            Step("embed", ("patch_embed", "cls_token", "pos_embed"), beit_embed),
            Step("pos_drop", ("pos_drop",), _call(m.pos_drop), _p(m.pos_drop) > 0),
            *[Step(f"blocks.{i}", (f"blocks.{i}",), beit_block(b)) for i, b in enumerate(m.blocks)],
            Step("norm", ("norm",), _call(m.norm)),
            *_timm_head(
                m, {"patch_embed", "pos_drop", "blocks", "norm", "rel_pos_bias", "cls_token"}
            ),
        ]
        return _Recipe("timm.Beit", tuple(steps), beit_ctx, ("rel_pos_bias",))
    if _is(model, "timm.models.resnet", "ResNet"):
        steps = [Step(n, (n,), _call(getattr(m, n))) for n in ("conv1", "bn1", "act1", "maxpool")]
        for i in range(1, 5):
            steps += _seq_steps(f"layer{i}", getattr(m, f"layer{i}"))
        steps += _pooled_dropout_head(m, "fc")
        return _Recipe("timm.ResNet", tuple(steps))
    if _is(model, "timm.models.convnext", "ConvNeXt"):
        steps = [Step("stem", ("stem",), _call(m.stem))]
        for i, stage in enumerate(m.stages):
            steps.append(
                Step(f"stages.{i}.downsample", (f"stages.{i}.downsample",), _call(stage.downsample))
            )
            steps += _seq_steps(f"stages.{i}.blocks", stage.blocks)
        steps.append(Step("norm_pre", ("norm_pre",), _call(m.norm_pre)))
        steps += _timm_head(m, {"stem", "stages", "norm_pre"})
        return _Recipe("timm.ConvNeXt", tuple(steps))
    if _is(model, "timm.models.efficientnet", "EfficientNet"):
        steps = [Step(n, (n,), _call(getattr(m, n))) for n in ("conv_stem", "bn1")]
        for i, stage in enumerate(m.blocks):
            steps += _seq_steps(f"blocks.{i}", stage)
        steps += [Step(n, (n,), _call(getattr(m, n))) for n in ("conv_head", "bn2")]
        steps += _pooled_dropout_head(m, "classifier")
        return _Recipe("timm.EfficientNet", tuple(steps))
    if _is(model, "timm.models.regnet", "RegNet"):
        steps = [Step("stem", ("stem",), _call(m.stem))]
        for s in ("s1", "s2", "s3", "s4"):
            steps += _seq_steps(s, getattr(m, s))
        steps.append(Step("final_conv", ("final_conv",), _call(m.final_conv)))
        steps += _timm_head(m, {"stem", "s1", "s2", "s3", "s4", "final_conv"})
        return _Recipe("timm.RegNet", tuple(steps))
    return None


def _torchvision_recipe(model: nn.Module) -> _Recipe | None:
    m: Any = model
    if _is(model, "torchvision.models.resnet", "ResNet"):
        steps = [Step(n, (n,), _call(getattr(m, n))) for n in ("conv1", "bn1", "relu", "maxpool")]
        for i in range(1, 5):
            steps += _seq_steps(f"layer{i}", getattr(m, f"layer{i}"))
        steps += [
            Step("avgpool", ("avgpool",), lambda x, ctx: torch.flatten(m.avgpool(x), 1)),
            Step("fc", ("fc",), _call(m.fc)),
        ]
        return _Recipe("torchvision.ResNet", tuple(steps))
    if _is(model, "torchvision.models.vision_transformer", "VisionTransformer"):
        enc = m.encoder

        def embed(x: torch.Tensor, ctx: Context) -> torch.Tensor:
            x = m._process_input(x)
            return torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)

        steps = [
            Step("embed", ("conv_proj", "class_token"), embed),
            Step(
                "encoder.pos",
                ("encoder.pos_embedding", "encoder.dropout"),
                lambda x, ctx: enc.dropout(x + enc.pos_embedding),
            ),
            *_seq_steps("encoder.layers", enc.layers),
            Step("encoder.ln", ("encoder.ln",), _call(enc.ln)),
            Step("class_token_out", (), lambda x, ctx: x[:, 0]),
            Step("heads", ("heads",), _call(m.heads)),
        ]
        return _Recipe("torchvision.VisionTransformer", tuple(steps))
    return None


def _open_clip_recipe(model: nn.Module) -> _Recipe | None:
    m: Any = model
    if not _is(model, "open_clip.transformer", "VisionTransformer") or m.output_tokens:
        return None
    batch_first = getattr(m.transformer, "batch_first", True)

    def block(r: nn.Module) -> StepFn:
        if batch_first:
            return lambda x, ctx: r(x)
        return lambda x, ctx: r(x.transpose(0, 1)).transpose(0, 1)

    def proj(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return x @ m.proj if m.proj is not None else x

    steps = [
        Step(
            "embeds",
            ("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre"),
            lambda x, ctx: m._embeds(x),
        ),
        *[
            Step(f"transformer.resblocks.{i}", (f"transformer.resblocks.{i}",), block(r))
            for i, r in enumerate(m.transformer.resblocks)
        ],
        Step(
            "pool",
            ("ln_post", "attn_pool", "attn_pool_contrastive"),
            lambda x, ctx: m._pool(x)[0],
        ),
        Step("proj", ("proj",), proj),
    ]
    return _Recipe("open_clip.VisionTransformer", tuple(steps))


def _transformers_recipe(model: nn.Module) -> _Recipe | None:
    m: Any = model
    if not _is(model, "transformers", "ViTForImageClassification"):
        return None
    vit = m.vit
    layers = getattr(vit, "layers", None)
    prefix = "vit.layers"
    if layers is None:
        layers, prefix = vit.encoder.layer, "vit.encoder.layer"
    if getattr(vit, "pooler", None) is not None:
        return None

    def layer(mod: nn.Module) -> StepFn:
        def run(x: torch.Tensor, ctx: Context) -> torch.Tensor:
            out = mod(x, None)
            return out[0] if isinstance(out, tuple) else out

        return run

    def embed(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        w = vit.embeddings.patch_embeddings.projection.weight
        return vit.embeddings(x.to(w.dtype))

    steps = [
        Step("vit.embeddings", ("vit.embeddings",), embed),
        *[Step(f"{prefix}.{i}", (f"{prefix}.{i}",), layer(mod)) for i, mod in enumerate(layers)],
        Step("vit.layernorm", ("vit.layernorm",), _call(vit.layernorm)),
        Step("cls", (), lambda x, ctx: x[:, 0, :]),
        Step("classifier", ("classifier",), _call(m.classifier)),
    ]
    return _Recipe("transformers.ViTForImageClassification", tuple(steps))
