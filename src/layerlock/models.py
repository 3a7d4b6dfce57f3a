"""Build a model from a spec string: ``timm:NAME``, ``open_clip:NAME``, ``hf:NAME``,
``torchvision:NAME`` or ``module:path:factory``, and the classifier a fine-tuning job trains.

Models are built with random weights and without network access unless
``pretrained=True``; unknown names get close-match suggestions from the family's registry.

:func:`build_classifier` gives any of these (or the shipped ``demo`` backbone) a
classification head; an OpenCLIP model becomes an :class:`OpenCLIPClassifier` (its image
tower and a linear head, initialised zero-shot from the text tower). Every classifier's
layer groups are what :func:`layerlock.layer_groups` gives for it, so a job, ``lock`` and
``layerlock groups`` agree.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, LayerlockError, UnknownModelError, require
from .groups import LayerGroups, layer_groups
from .runs import load_weights

__all__ = [
    "FAMILIES",
    "OpenCLIPClassifier",
    "build_classifier",
    "build_model",
    "classifier_logits",
    "parse_spec",
    "zero_shot_head",
]

FAMILIES = ("timm", "open_clip", "hf", "torchvision", "module")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"family:name"``; a bare name means timm.

    Example:
        >>> parse_spec("timm:resnet18"), parse_spec("module:my.models:build")
        (('timm', 'resnet18'), ('module', 'my.models:build'))
    """
    family, sep, name = spec.partition(":")
    if not sep:
        return "timm", spec
    if family not in FAMILIES:
        close = difflib.get_close_matches(family, FAMILIES, n=1)
        hint = f"; did you mean '{close[0]}:{name}'?" if close else ""
        raise ConfigError(
            f"unknown model family {family!r} in {spec!r}{hint} Use one of: "
            + ", ".join(f"{f}:NAME" for f in FAMILIES[:-1])
            + ", module:path:factory"
        )
    if not name:
        raise ConfigError(f"model spec {spec!r} has no name after '{family}:'")
    return family, name


def _unknown(family: str, name: str, known: list[str]) -> UnknownModelError:
    close = [k for k in known if k.startswith(name)][:3]
    close = close or difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
    return UnknownModelError(f"unknown {family} model {name!r}{hint}")


def _network_error(spec: str, exc: BaseException) -> LayerlockError:
    return LayerlockError(
        f"could not fetch pretrained weights for {spec!r} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120] if str(exc) else 'no details'}); without network, "
        "build it without --pretrained and load a local file with --checkpoint PATH.safetensors"
    )


@contextlib.contextmanager
def _fetching(spec: str, pretrained: bool | str) -> Iterator[None]:
    """Turn a library's failure to build ``spec`` into a network error when it downloads."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise _network_error(spec, exc) from exc
        raise


def build_model(
    spec: str,
    *,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model named by ``spec``.

    Args:
        spec: ``timm:NAME``, ``open_clip:NAME``, ``hf:NAME`` (a model type such as
            ``vit`` / ``clip_vision_model``, or a local folder with ``config.json``),
            ``torchvision:NAME`` or ``module:path:factory`` (``path`` a dotted module or a
            ``.py`` file; ``factory`` is called with ``**kwargs``).
        pretrained: Load the published weights (needs network or a filled cache). For
            OpenCLIP a string is the pretrained tag.
        num_classes: Classifier size where the family supports it (timm, torchvision, hf).
        **kwargs: Passed to the family's factory.

    Raises:
        ConfigError: Malformed spec.
        UnknownModelError: A name the family's registry does not know, with suggestions.
        MissingDependencyError: The family's library is not installed.

    Example:
        >>> build_model("timm:test_vit", num_classes=3).num_classes
        3
    """
    family, name = parse_spec(spec)
    builder = {
        "timm": _timm,
        "open_clip": _open_clip,
        "hf": _hf,
        "torchvision": _torchvision,
        "module": _module,
    }[family]
    return builder(spec, name, pretrained, num_classes, kwargs)


def _timm(
    spec: str, name: str, pretrained: bool | str, num_classes: int | None, kw: dict[str, Any]
) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    if num_classes is not None:
        kw["num_classes"] = num_classes
    with _fetching(spec, pretrained):
        return timm.create_model(name, pretrained=bool(pretrained), **kw)


def _open_clip(
    spec: str, name: str, pretrained: bool | str, num_classes: int | None, kw: dict[str, Any]
) -> nn.Module:
    require("open_clip", "open_clip", "open_clip models")
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        raise _unknown("open_clip", name, known)
    tag = pretrained if isinstance(pretrained, str) else None
    if pretrained is True:
        raise ConfigError(
            f"open_clip models need a pretrained tag, e.g. --pretrained openai; tags for {name}: "
            + ", ".join(t for m, t in open_clip.list_pretrained() if m == name)
        )
    with _fetching(spec, tag or False):
        return open_clip.create_model(name, pretrained=tag, **kw)


def _hf(
    spec: str, name: str, pretrained: bool | str, num_classes: int | None, kw: dict[str, Any]
) -> nn.Module:
    require("transformers", "transformers", "hf: models")
    import transformers
    from transformers import AutoConfig

    local = Path(name)
    if local.is_file():
        raise ConfigError(
            f"model spec {spec!r}: {name} is a file; pass the folder holding config.json"
        )
    try:
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ConfigError(
                    f"model spec {spec!r}: folder {name} has no config.json "
                    "(a Hugging Face model folder is written by save_pretrained)"
                )
            config = AutoConfig.from_pretrained(str(local), **kw)
        elif pretrained:
            config = AutoConfig.from_pretrained(name, **kw)
        else:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            if name not in CONFIG_MAPPING:
                raise _unknown("hf (model type)", name, list(CONFIG_MAPPING.keys()))
            config = CONFIG_MAPPING[name](**kw)
    except (UnknownModelError, ConfigError):
        raise
    except ValueError as exc:  # transformers: a config.json without a known model_type
        text = str(exc).splitlines()[0][:200] if str(exc) else "no message"
        raise ConfigError(
            f"model spec {spec!r}: its config.json names no model type transformers knows "
            f'(set "model_type", e.g. "vit"): {text}'
        ) from exc
    except OSError as exc:
        if local.is_dir():
            raise ConfigError(f"model spec {spec!r}: cannot read folder {name}: {exc}") from exc
        raise _network_error(spec, exc) from exc
    if num_classes is not None:
        config.num_labels = num_classes
        auto: Any = transformers.AutoModelForImageClassification
        if type(config) not in auto._model_mapping:
            auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModel
    if pretrained:
        try:
            return auto.from_pretrained(name, config=config)
        except OSError as exc:
            raise _network_error(spec, exc) from exc
    return auto.from_config(config)


def _torchvision(
    spec: str, name: str, pretrained: bool | str, num_classes: int | None, kw: dict[str, Any]
) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise _unknown("torchvision", name, known)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    with _fetching(spec, pretrained):
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kw)


def _module(
    spec: str, name: str, pretrained: bool | str, num_classes: int | None, kw: dict[str, Any]
) -> nn.Module:
    path, sep, factory = name.rpartition(":")
    if not sep or not path or not factory:
        raise ConfigError(
            f"model spec {spec!r}: use module:PATH:FACTORY, e.g. module:my_models:build"
        )
    if path.endswith(".py"):
        file = Path(path)
        if file.is_dir():
            raise ConfigError(f"model spec {spec!r}: {path} is a folder, not a .py file")
        if not file.is_file():
            raise ConfigError(f"model spec {spec!r}: no such file {path!r}")
        mod_name = f"_layerlock_user_{file.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"model spec {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        with _user_code(spec, f"importing {path}"):
            loader_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            with _user_code(spec, f"importing {path}"):
                module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"model spec {spec!r}: cannot import {path!r} ({exc})") from exc
    fn = getattr(module, factory, None)
    if not callable(fn):
        public = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise _unknown(f"factory in {path}", factory, public)
    if num_classes is not None and not _accepts(fn, "num_classes"):
        raise ConfigError(
            f"model spec {spec!r}: {factory}() takes no num_classes argument; a job calls "
            f"{factory}(num_classes=N): add the parameter (and size the head with it)"
        )
    if num_classes is not None:
        kw["num_classes"] = num_classes
    with _user_code(spec, f"calling {factory}()"):
        model = fn(**kw)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` can be called with the keyword ``name`` (unknown signatures: yes)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


@contextlib.contextmanager
def _user_code(spec: str, doing: str) -> Iterator[None]:
    """Report an exception of user code (a model factory, its module) as one line."""
    try:
        yield
    except LayerlockError:
        raise
    except SyntaxError as exc:
        raise ConfigError(
            f"model spec {spec!r}: syntax error {doing}: {exc.msg} "
            f"({Path(exc.filename or '?').name} line {exc.lineno})"
        ) from exc
    except ModuleNotFoundError:
        raise
    except Exception as exc:  # the factory is user code: any exception is possible
        text = str(exc).splitlines()[0][:160] if str(exc) else "no message"
        raise LayerlockError(
            f"model spec {spec!r}: {doing} raised {type(exc).__name__}: {text}"
        ) from exc


# -- classifiers --------------------------------------------------------------------------


class OpenCLIPClassifier(nn.Module):
    """An OpenCLIP image tower with a linear head on its L2-normalised embedding.

    With the head initialised by :func:`zero_shot_head`, the logits equal CLIP's
    zero-shot logits (``logit_scale * cos(image, "a photo of a {class}.")``), as in
    WiSE-FT / FLYP. Its groups are the tower's OpenCLIP groups (``embeddings``,
    ``layer.{i}``, ``proj``) and then ``head``, named by :meth:`layer_groups`.

    Example:
        >>> import open_clip, torch, layerlock
        >>> clip = open_clip.CLIP(16, dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        ...                       dict(context_length=16, vocab_size=1000, width=32, heads=2, layers=1))
        >>> model = OpenCLIPClassifier(clip.visual, 16, 3)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
        >>> layerlock.layer_groups(model).names
        ['embeddings', 'layer.0', 'layer.1', 'proj', 'head']
    """

    def __init__(
        self, visual: nn.Module, embed_dim: int, num_classes: int, normalize: bool = True
    ) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.visual(x)
        if isinstance(features, (tuple, list)):
            features = features[0]
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.head(features)

    def layer_groups(self, coarse: bool = False) -> list[tuple[str, list[nn.Parameter]]]:
        """The image tower's groups, then ``head``, in OpenCLIP's ``(name, members)`` form.

        :func:`layerlock.layer_groups` splits this model by this method (the ``own``
        adapter), so the two always agree.

        Args:
            coarse: Passed to the tower's grouping (it reaches timm trunks only).

        Returns:
            ``[(name, [parameters]), ...]``, input side first.

        Example:
            >>> import open_clip
            >>> clip = open_clip.CLIP(16, dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
            ...                       dict(context_length=16, vocab_size=1000, width=32, heads=2, layers=1))
            >>> [name for name, _ in OpenCLIPClassifier(clip.visual, 16, 3).layer_groups()]
            ['embeddings', 'layer.0', 'proj', 'head']
        """
        tower = layer_groups(self.visual, coarse)
        return [(g.name, list(g.params)) for g in tower] + [("head", list(self.head.parameters()))]


def zero_shot_head(
    clip: Any,
    head: nn.Linear,
    classes: list[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    prompt: str = "a photo of a {}.",
) -> None:
    """Set ``head`` to CLIP's zero-shot classifier: normalised text embeddings x logit scale.

    Args:
        clip: The full OpenCLIP model (text tower and ``logit_scale``).
        head: The linear head on normalised image embeddings (bias set to 0).
        classes: Class names, put into ``prompt``.
        tokenizer: OpenCLIP tokenizer of the model.
        prompt: Template with ``{}`` for the class name.

    Raises:
        LayerlockError: The tokenizer gives ids beyond the text tower's vocabulary.

    Example:
        >>> import open_clip, torch
        >>> clip = open_clip.CLIP(16, dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        ...                       dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
        >>> head = torch.nn.Linear(16, 2)
        >>> zero_shot_head(clip, head, ["cat", "dog"], open_clip.get_tokenizer("ViT-B-32", context_length=16))
        >>> bool(torch.allclose(head.weight.norm(dim=-1), clip.logit_scale.exp().detach()))
        True
    """
    tokens = tokenizer([prompt.format(c) for c in classes])
    vocab = getattr(clip, "vocab_size", None)
    if vocab is not None and int(tokens.max()) >= int(vocab):
        raise LayerlockError(
            f"the tokenizer gives token ids up to {int(tokens.max())} but the text tower has "
            f"a vocabulary of {vocab}; set zero_shot_head=false"
        )
    was = clip.training
    clip.eval()
    with torch.no_grad():
        text = clip.encode_text(tokens, normalize=True).float()
        scale = clip.logit_scale.exp().float() if hasattr(clip, "logit_scale") else 1.0
        head.weight.copy_(text * scale)
        head.bias.zero_()
    clip.train(was)


# ``build_classifier`` has a parameter of this name
_init_zero_shot_head = zero_shot_head


def _embed_dim(visual: nn.Module) -> int:
    """Width of the tower's output: ``output_dim``, else one probe forward in eval mode.

    The probe leaves every submodule in the train / eval mode it had.
    """
    dim = getattr(visual, "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    size = getattr(visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    modes = [(m, m.training) for m in visual.modules()]
    try:
        with torch.no_grad():
            out = visual.eval()(torch.zeros(1, 3, *size))
    finally:
        for m, training in modes:
            m.training = training
    return int((out[0] if isinstance(out, (tuple, list)) else out).shape[-1])


def build_classifier(
    spec: str,
    classes: Sequence[str],
    *,
    pretrained: bool | str = False,
    checkpoint: str | None = None,
    zero_shot_head: bool = True,
    prompt: str = "a photo of a {}.",
) -> tuple[nn.Module, list[str], LayerGroups | None]:
    """Build the model named by ``spec`` with a ``len(classes)``-way head.

    Args:
        spec: ``demo`` (the shipped MNIST ViT) or a :func:`build_model` spec. An
            ``open_clip:NAME`` model becomes an :class:`OpenCLIPClassifier` on its image tower.
        classes: Class names; label ``i`` is ``classes[i]``.
        pretrained: Load the published weights (:func:`build_model`).
        checkpoint: A local weights file loaded over the built model; tensors of the head
            that do not fit ``len(classes)`` are left new.
        zero_shot_head: Initialise an OpenCLIP head from its text tower's embeddings of
            ``prompt`` (not when ``checkpoint`` is given).
        prompt: Template with ``{}`` for the class name.

    Returns:
        ``(model, notes, groups)``: notes say what was done (zero-shot head, checkpoint
        loaded); ``groups`` is set for an :class:`OpenCLIPClassifier` (else None) and
        equals :func:`layerlock.layer_groups` of the model either way.

    Raises:
        ConfigError: A malformed spec, a checkpoint that does not fit the model.
        UnknownModelError: A model name the family does not know (with suggestions).
        LayerlockError: Pretrained weights unreachable, a bad checkpoint file.

    Example:
        >>> model, notes, groups = build_classifier("timm:test_vit", ["a", "b"])
        >>> model.num_classes, groups
        (2, None)
    """
    notes: list[str] = []
    groups: LayerGroups | None = None
    n = len(classes)
    model: nn.Module
    if spec == "demo":
        from .demo import load_demo_backbone

        model = load_demo_backbone(n)
        notes.append("demo backbone: ViT pretrained on MNIST digits 0-4")
    elif parse_spec(spec)[0] == "open_clip":
        clip: Any = build_model(spec, pretrained=pretrained)
        visual: nn.Module = clip.visual
        classifier = OpenCLIPClassifier(visual, _embed_dim(visual), n)
        if zero_shot_head and hasattr(clip, "encode_text") and checkpoint is None:
            import open_clip

            name = parse_spec(spec)[1]
            _init_zero_shot_head(
                clip, classifier.head, list(classes), open_clip.get_tokenizer(name), prompt
            )
            notes.append(f"head initialised zero-shot from prompts {prompt!r}")
        model = classifier
        groups = layer_groups(classifier)
    else:
        model = build_model(spec, pretrained=pretrained, num_classes=n)
    if checkpoint:
        notes.append(_load_checkpoint_into(model, checkpoint, groups))
    return model, notes, groups


def _load_checkpoint_into(model: nn.Module, path: str, groups: LayerGroups | None) -> str:
    state = load_weights(path)
    own = model.state_dict()
    head = set((groups or layer_groups(model))[-1].param_names)
    reshaped = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    bad = [k for k in reshaped if k not in head]
    if bad:
        raise ConfigError(
            f"checkpoint {path} does not fit the model: {len(bad)} tensor(s) of another shape, "
            f"e.g. {bad[0]} {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}"
        )
    for k in reshaped:
        state.pop(k)
    if not any(k in own for k in state):
        raise ConfigError(
            f"checkpoint {path} has none of the model's tensor names (it has e.g. "
            f"{', '.join(list(state)[:3])}; the model has e.g. {', '.join(list(own)[:3])})"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if result.unexpected_keys:
            parts.append(
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})"
            )
        raise ConfigError(f"checkpoint {path} does not fit the model: {'; '.join(parts)} tensors")
    fresh = " (new head)" if reshaped or any(k in head for k in result.missing_keys) else ""
    return f"weights loaded from {path}{fresh}"


def classifier_logits(output: Any) -> torch.Tensor:
    """The logits in a classifier's output: a tensor, ``.logits``, or a tuple's first tensor.

    Raises:
        LayerlockError: The output holds none of these.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> classifier_logits(SimpleNamespace(logits=torch.zeros(2, 3))).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerlockError(
        f"the model returned {type(output).__name__}; expected logits (a tensor or .logits)"
    )
