"""The model's own preprocessing: training and evaluation transforms.

Transforms come from the model: ``timm.data.resolve_model_data_config(model)`` and
``timm.data.create_transform`` for timm-style models, the model's preprocess config for
OpenCLIP models, or preprocess callables you pass in. Random augmentation is applied to the
training split only; ``deterministic_train=True`` uses the evaluation transform there too
(needed to cache the output of a locked prefix).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from torch import nn

from ..errors import ConfigError, shorten, suggest

__all__ = [
    "Transform",
    "Transforms",
    "model_transforms",
    "open_clip_preprocess",
]

Transform = Callable[[Image.Image], Any]


def _mode_for(in_chans: int) -> str:
    if in_chans == 1:
        return "L"
    if in_chans == 3:
        return "RGB"
    raise ConfigError(f"models with {in_chans} input channels are not supported; use 1 or 3")


@dataclass
class Transforms:
    """Preprocessing for one model: training and evaluation transforms and the image mode.

    Attributes:
        train: Transform of training images (random augmentation unless deterministic).
        eval: Deterministic transform of evaluation images.
        mode: PIL mode images are converted to first (``"L"`` for 1 channel, else ``"RGB"``).
        data_config: The resolved timm data config (input_size, mean, std, ...), if any.
        deterministic_train: Whether ``train`` is the evaluation transform.
    """

    train: Transform
    eval: Transform
    mode: str = "RGB"
    data_config: dict[str, Any] = field(default_factory=dict)
    deterministic_train: bool = False


def _augmentation_keys() -> list[str]:
    import timm.data

    skip = {"input_size", "is_training", "mean", "std", "interpolation", "crop_pct", "crop_mode"}
    params = inspect.signature(timm.data.create_transform).parameters
    return [p for p in params if p not in skip]


def _hf_data_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    size = getattr(config, "image_size", None)
    if config is None or size is None or not hasattr(config, "num_channels"):
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return {"input_size": (int(config.num_channels), *size)}


def _open_clip_cfg(visual: nn.Module) -> Any:
    from open_clip import transform as oct

    cfg = getattr(visual, "preprocess_cfg", None)
    if cfg:
        return oct.PreprocessCfg(**cfg)
    size = visual.image_size
    return oct.PreprocessCfg(size=tuple(size) if isinstance(size, (tuple, list)) else size)


def open_clip_preprocess(
    visual: nn.Module, augmentation: dict[str, Any] | None = None
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """OpenCLIP's own (train, eval) transforms for an image tower, from its preprocess config.

    Args:
        visual: An OpenCLIP image tower (``model.visual``).
        augmentation: OpenCLIP's ``aug_cfg`` for the training transform (``scale``,
            ``color_jitter`` ...); ``None`` takes OpenCLIP's defaults.

    Returns:
        The ``(train, eval)`` transforms of PIL images.

    Example:
        >>> import open_clip
        >>> from PIL import Image
        >>> clip = open_clip.CLIP(
        ...     embed_dim=16,
        ...     vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
        ...                 "image_size": 32},
        ...     text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
        ...               "layers": 1},
        ... )
        >>> train, evaluation = open_clip_preprocess(clip.visual)
        >>> evaluation(Image.new("RGB", (40, 60))).shape
        torch.Size([3, 32, 32])
    """
    from open_clip import transform as oct

    pcfg = _open_clip_cfg(visual)
    train = _checked_augmentation(
        lambda aug: oct.image_transform_v2(pcfg, is_train=True, aug_cfg=aug or None),
        dict(augmentation or {}),
        "RGB",
    )
    return train, oct.image_transform_v2(pcfg, is_train=False)


def _open_clip_transforms(
    model: nn.Module, augmentation: dict[str, Any] | None
) -> Transforms | None:
    visual = getattr(model, "visual", None)
    if visual is None or not type(model).__module__.startswith("open_clip"):
        return None
    pcfg = _open_clip_cfg(visual)
    train, evaluation = open_clip_preprocess(visual, augmentation)
    data_config = {"input_size": (3, *_pair(pcfg.size)), "mean": pcfg.mean, "std": pcfg.std}
    return Transforms(train, evaluation, "RGB", data_config)


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def model_transforms(
    model: nn.Module | None = None,
    *,
    preprocess: Transform | tuple[Transform, Transform] | None = None,
    data_config: dict[str, Any] | None = None,
    augmentation: dict[str, Any] | None = None,
    deterministic_train: bool = False,
    in_chans: int | None = None,
) -> Transforms:
    """Training and evaluation transforms from the model's own preprocessing config.

    Order of precedence: ``preprocess`` callables (e.g. OpenCLIP's ``preprocess_train,
    preprocess_val``); an OpenCLIP model's preprocess config; timm's
    ``resolve_model_data_config(model)`` (updated by ``data_config``; Hugging Face models
    contribute their ``config.image_size`` / ``num_channels``) with ``create_transform``.

    Args:
        model: The model whose config decides input size, mean, std and interpolation.
        preprocess: One callable for both splits, or a ``(train, eval)`` pair.
        data_config: Overrides of timm's data config (``input_size``, ``mean``, ...).
        augmentation: Keyword arguments of ``timm.data.create_transform`` for training
            (``hflip``, ``scale``, ``color_jitter``, ``auto_augment`` ...). ``None`` takes
            ``model.pretrained_cfg["train_augmentation"]`` when present, else timm's defaults.
        deterministic_train: Use the evaluation transform for training images too.
        in_chans: Channels the model expects, when ``preprocess`` is given (default 3).

    Returns:
        A :class:`Transforms`.

    Raises:
        ConfigError: Unknown augmentation keys or an unsupported number of channels.

    Example:
        >>> import timm
        >>> tf = model_transforms(timm.create_model("test_vit"), deterministic_train=True)
        >>> tf.mode, tf.data_config["input_size"], tf.train is tf.eval
        ('RGB', (3, 160, 160), True)
    """
    if preprocess is not None:
        train, evaluation = (
            preprocess if isinstance(preprocess, tuple) else (preprocess, preprocess)
        )
        mode = _mode_for(in_chans or 3)
        return Transforms(
            evaluation if deterministic_train else train,
            evaluation,
            mode,
            dict(data_config or {}),
            deterministic_train,
        )
    if model is None and data_config is None:
        raise ConfigError("model_transforms needs a model, a data_config or preprocess callables")
    if augmentation is None and model is not None:
        augmentation = dict(getattr(model, "pretrained_cfg", None) or {}).get("train_augmentation")
    augmentation = dict(augmentation or {})
    if model is not None:
        oc = _open_clip_transforms(model, augmentation)
        if oc is not None:
            if deterministic_train:
                oc.train, oc.deterministic_train = oc.eval, True
            return oc
    known = _augmentation_keys()
    unknown = [k for k in augmentation if k not in known]
    if unknown:
        raise ConfigError(
            "unknown augmentation option(s): "
            + ", ".join(f"{k!r}{suggest(k, known)}" for k in unknown)
            + f" Options of timm.data.create_transform: {', '.join(known[:12])} ..."
        )
    import timm.data

    overrides = dict(data_config or {})
    if model is not None and not getattr(model, "pretrained_cfg", None):
        overrides = {**(_hf_data_config(model) or {}), **overrides}
    if model is not None:
        cfg = timm.data.resolve_model_data_config(model, args=overrides or None)
    else:
        cfg = timm.data.resolve_data_config(args=overrides)
    cfg = {**cfg, **{k: v for k, v in overrides.items() if k in cfg}}
    mode = _mode_for(int(cfg["input_size"][0]))
    for key in ("scale", "ratio"):
        if key in augmentation and augmentation[key] is not None:
            augmentation[key] = tuple(augmentation[key])
    evaluation = timm.data.create_transform(**cfg, is_training=False)
    train = (
        evaluation
        if deterministic_train
        else _checked_augmentation(
            lambda aug: timm.data.create_transform(**cfg, is_training=True, **aug),
            augmentation,
            mode,
        )
    )
    return Transforms(train, evaluation, mode, dict(cfg), deterministic_train)


def _checked_augmentation(
    build: Callable[[dict[str, Any]], Transform], augmentation: dict[str, Any], mode: str
) -> Transform:
    """``build(augmentation)``, tried once on a small image; a failure names the option.

    timm and OpenCLIP check augmentation values late (some only when an image goes
    through), with errors that do not say which option was bad: the transform is built
    and run once here, and on failure each option alone finds the culprit.
    """

    def attempt(aug: dict[str, Any]) -> tuple[Transform | None, BaseException | None]:
        import random

        import numpy as np
        import torch

        # the trial image must not move the random streams training draws from
        states = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                transform = build(aug)
                transform(Image.new(mode, (48, 40)))
        except Exception as exc:  # timm / torchvision raise many types for bad values
            return None, exc
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
        return transform, None

    transform, error = attempt(augmentation)
    if error is None:
        assert transform is not None
        return transform
    culprits = [k for k in augmentation if attempt({k: augmentation[k]})[1] is not None]
    text = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    if culprits:
        named = ", ".join(f"{k}={shorten(augmentation[k])}" for k in culprits)
        raise ConfigError(f"augmentation option {named} is not valid: {text}") from error
    raise ConfigError(
        f"augmentation options {shorten(augmentation)} do not work together: {text}"
    ) from error
