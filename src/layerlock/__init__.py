"""layerlock: fine-tune pretrained models by layer groups.

Split a model into ordered layer groups, lock all but the last k, and unlock them
progressively while training.

Example:
    >>> import timm, layerlock
    >>> model = timm.create_model("test_vit", num_classes=3)
    >>> groups = layerlock.layer_groups(model)
    >>> report = layerlock.lock(model, unlocked_groups=1)
    >>> report.trainable_groups
    ['head']
"""

from .errors import (
    ConfigError as ConfigError,
    LayerlockError as LayerlockError,
    MissingDependencyError as MissingDependencyError,
    PartitionError as PartitionError,
    ScheduleError as ScheduleError,
    UnknownGroupError as UnknownGroupError,
    UnknownModelError as UnknownModelError,
)
from .groups import LayerGroup as LayerGroup, LayerGroups as LayerGroups, layer_groups as layer_groups
from .lock import LockReport as LockReport, frozen_bn_modules as frozen_bn_modules, lock as lock, unlock as unlock

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "LayerGroup",
    "LayerGroups",
    "LayerlockError",
    "LockReport",
    "MissingDependencyError",
    "PartitionError",
    "ScheduleError",
    "UnknownGroupError",
    "UnknownModelError",
    "frozen_bn_modules",
    "layer_groups",
    "lock",
    "unlock",
]
