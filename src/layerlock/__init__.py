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

from .audit import audit as audit
from .audit import fingerprint as fingerprint
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    LayerlockError as LayerlockError,
)
from .errors import (
    MissingDependencyError as MissingDependencyError,
)
from .errors import (
    PartitionError as PartitionError,
)
from .errors import (
    ScheduleError as ScheduleError,
)
from .errors import (
    UnknownGroupError as UnknownGroupError,
)
from .errors import (
    UnknownModelError as UnknownModelError,
)
from .groups import LayerGroup as LayerGroup
from .groups import LayerGroups as LayerGroups
from .groups import layer_groups as layer_groups
from .lock import LockReport as LockReport
from .lock import frozen_bn_modules as frozen_bn_modules
from .lock import lock as lock
from .lock import unlock as unlock
from .optim import create_optimizer as create_optimizer
from .options import UnfreezeOptions as UnfreezeOptions
from .schedule import PRESETS as PRESETS
from .schedule import Schedule as Schedule
from .schedule import parse_schedule as parse_schedule
from .unfreezer import Unfreezer as Unfreezer

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "LayerGroup",
    "LayerGroups",
    "LayerlockError",
    "LockReport",
    "MissingDependencyError",
    "PartitionError",
    "Schedule",
    "ScheduleError",
    "UnfreezeOptions",
    "Unfreezer",
    "UnknownGroupError",
    "UnknownModelError",
    "audit",
    "create_optimizer",
    "fingerprint",
    "frozen_bn_modules",
    "layer_groups",
    "lock",
    "parse_schedule",
    "unlock",
]
