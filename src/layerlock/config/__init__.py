"""The configuration of a ``layerlock finetune`` run: one section per concept.

A :class:`FinetuneConfig` has a ``task`` and five sections, each its own options type:
``model`` (:class:`ModelOptions`), ``data`` (:class:`DataOptions`), ``unfreeze``
(:class:`~layerlock.options.UnfreezeOptions`, the type the Unfreezer and the callbacks
take), ``cache`` (:class:`CacheOptions`) and ``run`` (:class:`RunOptions`). It is built
from a YAML file (nested mappings) and ``section.key=value`` overrides, or a dict, and
validated as a whole: every unknown key and every bad value is reported at once in a
single :class:`~layerlock.errors.ConfigError`, one problem per line, keys shown dotted,
before any model or data is touched.

A section given a scalar means its primary field: ``model=timm:resnet18`` is
``model.name``, ``data=folder`` is ``data.source``, ``cache=off`` is ``cache.mode`` and
``unfreeze=gradual`` is ``unfreeze.schedule``.

The flat keys of the previous release (``lr``, ``epochs``, ``data_path``,
``cache_budget_mb`` ...; :data:`LEGACY_KEYS`) still work for one release: each is mapped
to its dotted key with a :class:`FutureWarning`, and the messages are kept in
:attr:`FinetuneConfig.deprecations` for the command line to print. A run's flat
``config.yaml`` written by that release loads the same way.

Example:
    >>> cfg = load_config(overrides=["run.epochs=3", "unfreeze.lr=3e-4", "unfreeze=gradual"])
    >>> cfg.run.epochs, cfg.unfreeze.lr, cfg.unfreeze.schedule
    (3, 0.0003, 'gradual')
"""

from ..cache_policy import CACHE_MODES as CACHE_MODES
from ..data.datasets import BAD_IMAGE_POLICIES as BAD_IMAGE_POLICIES
from ..data.sources import DATA_SOURCES as DATA_SOURCES
from .coerce import parse_overrides as parse_overrides
from .finetune_config import RESUME_IGNORED as RESUME_IGNORED
from .finetune_config import FinetuneConfig as FinetuneConfig
from .finetune_config import load_config as load_config
from .keys import LEGACY_KEYS as LEGACY_KEYS
from .keys import dotted_keys as dotted_keys
from .sections import CACHE_DTYPES as CACHE_DTYPES
from .sections import DEVICES as DEVICES
from .sections import PRECISIONS as PRECISIONS
from .sections import SECTIONS as SECTIONS
from .sections import TASKS as TASKS
from .sections import CacheOptions as CacheOptions
from .sections import DataOptions as DataOptions
from .sections import EvalOptions as EvalOptions
from .sections import ModelOptions as ModelOptions
from .sections import RetainOptions as RetainOptions
from .sections import RunOptions as RunOptions
from .sections import TowerOptions as TowerOptions

__all__ = [
    "BAD_IMAGE_POLICIES",
    "CACHE_DTYPES",
    "CACHE_MODES",
    "DATA_SOURCES",
    "DEVICES",
    "LEGACY_KEYS",
    "PRECISIONS",
    "RESUME_IGNORED",
    "SECTIONS",
    "TASKS",
    "CacheOptions",
    "DataOptions",
    "EvalOptions",
    "FinetuneConfig",
    "ModelOptions",
    "RetainOptions",
    "RunOptions",
    "TowerOptions",
    "dotted_keys",
    "load_config",
    "parse_overrides",
]
