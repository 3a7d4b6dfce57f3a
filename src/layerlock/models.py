"""Build a model from a spec string: ``timm:NAME``, ``open_clip:NAME``, ``hf:NAME``,
``torchvision:NAME`` or ``module:path:factory``.

Models are built with random weights and without network access unless
``pretrained=True``; unknown names get close-match suggestions from the family's registry.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError, LayerlockError, UnknownModelError, require

__all__ = ["FAMILIES", "build_model", "parse_spec"]

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


def _timm(spec: str, name: str, pretrained: Any, num_classes: int | None, kw: dict) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    if num_classes is not None:
        kw["num_classes"] = num_classes
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kw)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise _network_error(spec, exc) from exc
        raise


def _open_clip(
    spec: str, name: str, pretrained: Any, num_classes: int | None, kw: dict
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
    try:
        return open_clip.create_model(name, pretrained=tag, **kw)
    except (OSError, RuntimeError) as exc:
        if tag:
            raise _network_error(spec, exc) from exc
        raise


def _hf(spec: str, name: str, pretrained: Any, num_classes: int | None, kw: dict) -> nn.Module:
    require("transformers", "transformers", "hf: models")
    import transformers
    from transformers import AutoConfig

    local = Path(name)
    try:
        if local.is_dir():
            config = AutoConfig.from_pretrained(str(local), **kw)
        elif pretrained:
            config = AutoConfig.from_pretrained(name, **kw)
        else:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            if name not in CONFIG_MAPPING:
                raise _unknown("hf (model type)", name, list(CONFIG_MAPPING.keys()))
            config = CONFIG_MAPPING[name](**kw)
    except UnknownModelError:
        raise
    except OSError as exc:
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
    spec: str, name: str, pretrained: Any, num_classes: int | None, kw: dict
) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise _unknown("torchvision", name, known)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kw)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise _network_error(spec, exc) from exc
        raise


def _module(spec: str, name: str, pretrained: Any, num_classes: int | None, kw: dict) -> nn.Module:
    path, sep, factory = name.rpartition(":")
    if not sep or not path or not factory:
        raise ConfigError(
            f"model spec {spec!r}: use module:PATH:FACTORY, e.g. module:my_models:build"
        )
    if path.endswith(".py"):
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"model spec {spec!r}: no such file {path!r}")
        mod_name = f"_layerlock_user_{file.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, file)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"model spec {spec!r}: cannot import {path!r} ({exc})") from exc
    fn = getattr(module, factory, None)
    if not callable(fn):
        public = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise _unknown(f"factory in {path}", factory, public)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    model = fn(**kw)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
