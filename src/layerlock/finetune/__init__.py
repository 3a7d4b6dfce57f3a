"""``layerlock.finetune``: progressive fine-tuning end to end, as a recipe.

One call builds the model and the data from a :class:`~layerlock.config.FinetuneConfig`,
trains it with an :class:`~layerlock.unfreezer.Unfreezer` (schedule, per-group LRs,
warm-up, weight-decay rules, AdamW, gradient clipping, bf16 autocast where the device
supports it), evaluates every epoch (and keeps everything in a run directory, layout in
:mod:`layerlock.runs`).

The package, in the order data flows:

- :mod:`~layerlock.finetune.recipe`: :class:`FinetuneRecipe` (setup, train one epoch,
  evaluate, checkpoint, summarise) and :func:`finetune`;
- :mod:`~layerlock.finetune.task`: the :class:`Task` interface and
  :class:`ClassificationTask` (loss, metrics, evaluation);
- :mod:`~layerlock.finetune.reproducible`: data order and random streams, which make a
  resumed run follow the uninterrupted one step for step (bit-identical on CPU);
- :mod:`~layerlock.finetune.contrastive`: the contrastive task (``task=clip``), with
  :mod:`~layerlock.finetune.towers` (one schedule per tower, one Unfreezer),
  :mod:`~layerlock.finetune.retrieval` (retrieval and zero-shot metrics) and
  :mod:`~layerlock.finetune.tower_cache` (the locked-tower embedding cache);
- :mod:`~layerlock.finetune.caching`: the frozen-prefix feature caches of the job (the
  policy itself is :mod:`layerlock.cache_policy`), on the interface of
  :mod:`~layerlock.finetune.cache_base`;
- :mod:`~layerlock.finetune.state`: :class:`RunResult` and the checkpointed epoch state;
- :mod:`~layerlock.finetune.summary` and :mod:`~layerlock.finetune.control`: the printed
  summary, the progress bar and Ctrl-C.

Ctrl-C (SIGINT) is turned into a flag checked between steps: the run stops after the
current step and writes a resumable checkpoint. Under ``torchrun`` every rank trains
(DistributedDataParallel, rebuilt by the Unfreezer on each unlock) and rank 0 alone writes.

Example:
    >>> from layerlock.config import load_config
    >>> result = finetune(load_config(overrides={"run.epochs": 1}))  # doctest: +SKIP
    >>> 0.0 <= result.final_top1 <= 1.0  # doctest: +SKIP
    True
"""

from .recipe import FinetuneRecipe, finetune
from .state import RunResult
from .summary import summary_renderable
from .task import ClassificationTask, Task

__all__ = [
    "ClassificationTask",
    "FinetuneRecipe",
    "RunResult",
    "Task",
    "finetune",
    "summary_renderable",
]
