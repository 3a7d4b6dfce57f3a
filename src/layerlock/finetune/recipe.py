"""The fine-tuning recipe: one class whose phases a reader takes in at once.

:class:`FinetuneRecipe` runs ``setup`` (process group, checkpoint to resume, device, data,
model and task, loaders, Unfreezer, run directory, caches), then ``train`` (epochs of
:meth:`~FinetuneRecipe.train_epoch` and :meth:`~FinetuneRecipe.evaluate`, a checkpoint
after each) and ``summarise``. What depends on the objective (loss, metrics, evaluation) is
the :class:`~layerlock.finetune.task.Task`'s; the recipe owns order, state and files.

Example:
    >>> from layerlock.config import load_config
    >>> result = finetune(load_config(overrides={"run.epochs": 1}))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed, fsdp
from ..config import FinetuneConfig
from ..data import dataset_len
from ..data.loading import loader_options, resolve_workers
from ..data.sources import data_source
from ..devices import autocast, resolve_device, resolve_precision
from ..errors import ConfigError, LayerlockError
from ..groups import LayerGroups, layer_groups
from ..logging_backends import report_to
from ..optim import layer_group_of
from ..run_lock import RunLock
from ..runs import CONFIG_FILE, MODEL_FILE, RunDir, load_run_config
from ..schedule import UnlockEvent
from ..unfreezer import Unfreezer
from .caching import CACHE_LOG_FILE
from .control import Progress, StopFlag
from .extra_sets import ExtraSets
from .ownership import DATA_FILE, check_same_data, claim_run_dir, data_record
from .reproducible import EpochOrder, SeededSamples, rng_state, seed_everything, set_rng_state
from .retention import START_FILE, Retention
from .state import EpochTracker, RunResult
from .summary import PER_CLASS_FILE
from .task import make_task

__all__ = ["FinetuneRecipe", "finetune"]

SUMMARY_FILE = "summary.json"
CHECKPOINT_FORMAT = "layerlock-finetune/2"

StepCallback = Callable[[int, float], None]


def finetune(
    config: FinetuneConfig,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    on_step: StepCallback | None = None,
) -> RunResult:
    """Fine-tune ``config.model`` on ``config.data`` under ``config.unfreeze.schedule``.

    Args:
        config: The run's configuration (validated here; ``run.resume`` continues a run).
        stop_after: Stop after this many optimizer steps (global) as if interrupted:
            a resumable checkpoint is written and ``interrupted`` is set.
        progress: Show a progress bar with ETA on stderr (default: when stderr is a TTY).
        on_step: Called with ``(global_step, loss)`` after every step (on every rank).

    Returns:
        A :class:`~layerlock.finetune.state.RunResult`.

    Raises:
        ConfigError: Bad config values (all at once), resuming under another config,
            a checkpoint that does not fit the model.
        ScheduleError: A schedule that does not fit the model.
        LayerlockError: Missing or empty data, unknown model names, unreachable
            pretrained weights, a non-finite loss (with the step and the LR).

    Example:
        >>> from layerlock.config import load_config
        >>> cfg = load_config(overrides={"run.epochs": 1, "data.shots_per_class": 5})
        >>> finetune(cfg).steps  # doctest: +SKIP
        1
    """
    config.validate()
    rank, world, local_rank, created = distributed.init_from_env()
    try:
        recipe = FinetuneRecipe(config, rank=rank, world=world, local_rank=local_rank)
        try:
            recipe.setup()
            result = recipe.train(stop_after=stop_after, progress=progress, on_step=on_step)
            if config.retain.wise == "auto" and not result.interrupted:
                recipe.wise_auto(result)
            return result
        finally:
            recipe.close()
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


class FinetuneRecipe:
    """Progressive fine-tuning of a pretrained model, end to end, in explicit phases.

    Args:
        config: A validated :class:`~layerlock.config.FinetuneConfig`.
        rank: This process's rank (0 in a single process).
        world: Number of processes.
        local_rank: This process's device index on its machine.
    """

    def __init__(
        self, config: FinetuneConfig, *, rank: int = 0, world: int = 1, local_rank: int = 0
    ) -> None:
        self.config = config
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.notes: list[str] = []
        self.checkpoint: dict[str, Any] | None = None
        self.tracker = EpochTracker()
        self.lock: RunLock | None = None
        self.data_notes: list[str] = []

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Every phase that can fail on bad input runs before the run directory is touched."""
        self._load_checkpoint()
        self.setup_evaluation()
        self._setup_unfreezer()
        self._setup_run_dir()
        self._setup_caches()

    def setup_evaluation(self) -> None:
        """Only what evaluating needs: device, data, model, loaders, evaluation sets.

        No checkpoint is read and no run directory touched (``layerlock wise`` uses it).
        """
        self.device = resolve_device(self.config.run.device, self.local_rank)
        self.dtype = resolve_precision(self.config.run.precision, self.device)
        seed_everything(self.config.run.seed)
        self._setup_data()
        self._setup_model()
        self._setup_loaders()
        self._setup_eval_sets()

    def evaluation_loaders(self) -> dict[str, tuple[str, DataLoader]]:
        """``{"val": ("main", loader), name: (kind, loader) ...}``: every evaluation set."""
        return {"val": ("main", self.val_loader), **self.extra_sets.loaders}

    def _load_checkpoint(self) -> None:
        """With ``run.resume``: check the saved config and read the checkpoint."""
        resume = self.config.run.resume
        if not resume:
            return
        saved = load_run_config(resume)
        self.config.check_resume(saved, resume)
        probe = RunDir(resume, rank=1)  # reading only
        if not probe.has_checkpoint():
            raise LayerlockError(
                f"{resume} has no checkpoint to resume from (the run stopped before "
                "its first checkpoint); start it again"
            )
        checkpoint = probe.load_checkpoint()
        if not self.config.fingerprint_matches(str(checkpoint.get("fingerprint"))):
            raise ConfigError(
                f"cannot resume {resume}: its checkpoint belongs to another config "
                "or another layerlock version; use the same settings or a new out_dir"
            )
        done = int(checkpoint.get("evaluated_epochs", 0))
        if done >= self.config.run.epochs:
            raise LayerlockError(
                f"{resume} is a finished run ({done} of {self.config.run.epochs} epochs); "
                "nothing to resume: its files stay as they are"
            )
        self.checkpoint = checkpoint

    def _setup_data(self) -> None:
        """The task, and its datasets (transforms are set once the model is known)."""
        self.task = make_task(self.config)
        self.tracker = EpochTracker(self.task.best_metric)
        self.data = self.task.load_data(self.config)
        self.classes = list(self.task.classes)

    def _setup_model(self) -> None:
        """The model, its layer groups, and the model's own preprocessing."""
        model, notes, groups = self.task.build_model(self.config)
        self.model: nn.Module = model
        self.groups: LayerGroups | None = groups
        self.notes.extend(notes)
        self.transforms = self.task.transforms(model, self.config)
        pairs = ((self.data.train, self.transforms.train), (self.data.val, self.transforms.eval))
        for ds, tf in pairs:
            ds.transform = tf  # type: ignore[attr-defined]
            ds.mode = self.transforms.mode  # type: ignore[attr-defined]
        model.to(self.device)
        self.task.check_output(model, self.data.val, self.device)  # before anything is written

    def _setup_loaders(self) -> None:
        """Training order (a function of seed, epoch and rank) and the two DataLoaders."""
        run = self.config.run
        source = data_source(self.config.data.source)
        self.workers = resolve_workers(
            self.config.data.workers, self.device, in_memory=source.in_memory
        )
        options = loader_options(self.device, self.workers)
        self.order = EpochOrder(
            dataset_len(self.data.train), run.seed, self.rank, self.world, run.batch_size
        )
        self.steps_per_epoch = self.order.steps()
        self.train_samples = SeededSamples(self.data.train, run.seed)
        # The training set's epoch attribute changes between epochs: workers must not
        # outlive an epoch, or they would keep drawing the augmentation of the first one.
        self.train_loader = DataLoader(
            self.train_samples,
            batch_size=run.batch_size,
            sampler=self.order,
            generator=torch.Generator().manual_seed(run.seed),
            **{**options, "persistent_workers": False},
        )
        val_idx = list(range(self.rank, dataset_len(self.data.val), self.world))
        self.val_set: Dataset = torch.utils.data.Subset(self.data.val, val_idx)
        self.val_loader = DataLoader(
            self.val_set, batch_size=run.batch_size, shuffle=False, **options
        )

    def _setup_eval_sets(self) -> None:
        """Loaders of ``eval.sets`` (each rank evaluates its share, like the validation split)."""
        cache = self.config.cache
        self.extra_sets = ExtraSets.build(
            self.task.eval_sets(self.config, self.transforms),
            batch_size=self.config.run.batch_size,
            rank=self.rank,
            world=self.world,
            loader_options=loader_options(self.device, self.workers),
            cache_off=cache.mode == "off",
            budget_bytes=cache.budget_mb * 2**20,
        )
        guarded = self.config.retain.set
        if guarded is not None and guarded != "val" and guarded not in self.extra_sets.names:
            known = ", ".join(["val", *self.extra_sets.names])
            raise ConfigError(f"retain.set: {guarded!r} is not an evaluation set; sets: {known}")
        at_start = self.config.eval.at_start
        if at_start == "auto":
            at_start = self.task.eval_at_start or self.config.retain.set is not None
        self.eval_at_start = bool(at_start)

    def _setup_unfreezer(self) -> None:
        """The Unfreezer; under ``run.strategy=fsdp`` the model is first sharded per group."""
        ddp_kwargs: dict[str, Any] = {}
        if self.device.type == "cuda" and self.world > 1:
            ddp_kwargs["device_ids"] = [self.device.index]
        self.sharded = self.config.run.strategy == "fsdp" and self.world > 1
        if self.sharded:
            groups = self.groups if self.groups is not None else layer_groups(self.model)
            fsdp.shard_by_groups(self.model, groups)
            self.groups = fsdp.rebind_groups(groups, self.model)
        self.unfreezer = self.task.make_unfreezer(
            self.model,
            self.config,
            epochs=self.config.run.epochs,
            steps_per_epoch=self.steps_per_epoch,
            groups=self.groups,
            ddp_kwargs=ddp_kwargs,
        )

    def _setup_run_dir(self) -> None:
        """Only now, with everything checked, claim the run directory (rank 0 writes)."""
        path: Path | None = None
        if self.rank == 0:
            path = self._claim_run_dir()
        self.run_path = Path(distributed.broadcast_object(str(path)))
        self.run = RunDir(self.run_path, rank=self.rank)
        self.retention = Retention(
            self.config.retain,
            self.task.best_metric,
            self.model,
            self.unfreezer,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.config.run.epochs,
            log=self._log_event,
            save_start=self._save_start,
            set_metric=self.task.set_metric,
        )
        if self.checkpoint is not None:
            self._check_same_data()
            try:
                self._restore(self.checkpoint)
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                raise LayerlockError(
                    f"cannot resume {self.run_path}: its checkpoint is damaged or belongs to "
                    f"another model ({type(exc).__name__}: {why}); start a new run"
                ) from exc
        else:
            resolved = self.config.to_dict()
            resolved["run"]["out_dir"] = str(self.run_path)
            self.run.write_yaml(CONFIG_FILE, resolved)
            self.run.write_json(DATA_FILE, self._data_record())
        resumed = self.checkpoint is not None
        self.logger = report_to(
            self.run.metrics(
                resume_step=self.unfreezer.global_step if resumed else None,
                resume_epoch=self.tracker.evaluated if resumed else None,
            ),
            self.config.run.report_to,
            self.run_path,
            self.config.to_dict(),
            rank=self.rank,
        )
        for line in self.data_notes:
            self.logger.log_event(self.unfreezer.global_step, self._epoch_now(), line)
        self.live = {"trainable": _trainable(self.model), "groups": len(self.unfreezer.trainable)}
        if self.checkpoint is None:
            self._on_unlock(self.unfreezer.plan.events[0])
        self.unfreezer.add_listener(self._on_unlock)

    def _claim_run_dir(self) -> Path:
        """Lock the run directory: the resumed one, or the first free ``out_dir[-N]``."""
        path, self.lock = claim_run_dir(
            self.config.run.resume or self.config.run.out_dir, resume=bool(self.config.run.resume)
        )
        return path

    def _data_record(self) -> dict[str, Any]:
        return data_record(self.classes, self.data.train, self.data.val)

    def _check_same_data(self) -> None:
        """Refuse a resume whose classes changed; whose samples changed unless allowed."""
        note = check_same_data(
            self.run_path, self._data_record(), allow=self.config.run.allow_data_change
        )
        if note is not None:
            self.data_notes.append(note)
            self.notes.append(note)

    def _setup_caches(self) -> None:
        t = self.transforms
        self.caches = self.task.job_caches(
            self.config.cache,
            self.unfreezer,
            self.data.train,
            self.val_set,
            deterministic=t.deterministic_train or t.train is t.eval,
            device=self.device,
            dtype=self.dtype,
            world=self.world,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=self.config.run.batch_size,
            workers=self.workers,
            seed=self.config.run.seed,
            say=self._say_cache,
        )

    # -- training --------------------------------------------------------------------------
    def train(
        self,
        *,
        stop_after: int | None = None,
        progress: bool | None = None,
        on_step: StepCallback | None = None,
    ) -> RunResult:
        """Train the remaining epochs, evaluating and checkpointing after each."""
        self.stop_after, self.on_step = stop_after, on_step
        show = (sys.stderr.isatty() if progress is None else progress) and self.rank == 0
        total = self.config.run.epochs * self.steps_per_epoch
        self.bar = Progress(show, total, self.unfreezer.global_step)
        self.session_start = time.perf_counter()
        interrupted = False
        with StopFlag() as self.stop:
            try:
                self.retention.before_training()
                if self.eval_at_start and not self.tracker.baseline:
                    self.retention.after_evaluation(0, self.evaluate(-1))  # the starting point
                    self.save_checkpoint()
                while self.tracker.evaluated < self.config.run.epochs:
                    epoch = self.tracker.evaluated
                    if self.train_epoch(epoch):
                        interrupted = True
                        break
                    self.retention.after_evaluation(epoch + 1, self.evaluate(epoch))
                    self.save_checkpoint()
            except KeyboardInterrupt:
                interrupted = True
            finally:
                self.bar.close()
                self.caches.close()
        if interrupted:
            self.save_checkpoint()
        else:
            self.retention.finish()
        return self.summarise(interrupted)

    def train_epoch(self, epoch: int) -> bool:
        """Train what is left of ``epoch``; return whether the run was interrupted."""
        spe, batch_size = self.steps_per_epoch, self.config.run.batch_size
        done = self.unfreezer.global_step - epoch * spe
        self.epoch_cached = False
        if done >= spe:
            return False  # stopped after the epoch's last step, before its evaluation
        self.order.epoch = self.train_samples.epoch = epoch
        self.order.skip = done * batch_size
        self.caches.begin_epoch(epoch, self.unfreezer.global_step)
        self.epoch_cached = self.caches.train_epoch(epoch, self.unfreezer.global_step)
        self.unfreezer.model.train()
        # cached: the suffix trains on the prefix's stored output, in the same batches
        suffix = self.caches.suffix() if self.epoch_cached else None
        batches = (
            self.caches.train_batches(epoch, self.order) if self.epoch_cached else self.train_loader
        )
        self.t_log, self.n_log = time.perf_counter(), 0
        # any() stops at the first step that asks to stop
        return any(self._train_step(suffix, x, y, epoch) for x, y in batches)

    def _train_step(self, suffix: nn.Module | None, x: Any, y: Any, epoch: int) -> bool:
        """One optimizer step; return whether to stop after it."""
        step = self.unfreezer.global_step
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        net = suffix if suffix is not None else self.unfreezer.model  # after any DDP rebuild
        with autocast(self.device, self.dtype):
            stats = self.task.forward(net, x, y)
        lrs = self._lrs()
        trained = dict(self.live)
        names = list(stats.counts)
        summed = distributed.all_sum(
            [float(stats.loss.detach()), float(self.stop.raised), *stats.counts.values()],
            self.device,
        )
        loss_value, flag = summed[0] / self.world, summed[1]
        counts = dict(zip(names, summed[2:]))
        if not math.isfinite(loss_value):
            top = max(lrs.items(), key=lambda kv: kv[1])
            raise LayerlockError(
                f"loss became {loss_value} at step {step} (epoch {epoch + 1}) with learning "
                f"rate {top[1]:.3g} ({top[0][3:]}); lower unfreeze.lr "
                f"(now {self.config.unfreeze.lr:g}) or set run.grad_clip"
            )
        stats.loss.backward()
        if self.config.run.grad_clip is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.run.grad_clip)
        self.unfreezer.step()
        self.tracker.add(loss_value * counts["seen"], counts)
        self.tracker.last_lrs, self.tracker.last_trained = lrs, trained
        self.n_log += int(counts["seen"])
        gs = self.unfreezer.global_step
        self._log_step(gs, loss_value, counts, lrs, trained)
        if self.on_step is not None:
            self.on_step(gs, loss_value)
        self.bar.update(f"epoch {epoch + 1}/{self.config.run.epochs} loss {loss_value:.3f}")
        # under DDP only the all-reduced flag, so that every rank stops at the same step
        stop = flag or (self.world == 1 and self.stop.raised)
        return bool(stop or (self.stop_after is not None and gs >= self.stop_after))

    def _log_step(
        self,
        gs: int,
        loss: float,
        counts: dict[str, float],
        lrs: dict[str, float],
        trained: dict[str, int],
    ) -> None:
        spe = self.steps_per_epoch
        if not (gs % self.config.run.log_every == 0 or gs == 1 or gs % spe == 0):
            return
        now = time.perf_counter()
        self.logger.log_step(
            {
                "step": gs,
                "epoch": gs / spe,
                "loss": loss,
                **self.task.step_columns(counts),
                **lrs,
                "trainable_params": trained["trainable"],
                "unlocked_groups": trained["groups"],
                "images_per_s": self.n_log / max(now - self.t_log, 1e-9),
            }
        )
        self.t_log, self.n_log = now, 0

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Evaluate after ``epoch`` (``-1``: before training), write its row, update the tracker."""
        self.bar.describe(f"epoch {epoch + 1}/{self.config.run.epochs} evaluating")
        t_eval = time.perf_counter()
        ev, kind = self.caches.evaluate(epoch, self._evaluate_batches)
        if ev is None:
            ev = self._evaluate_batches(self.model, self.val_loader)
        tracker = self.tracker
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.unfreezer.global_step}
        row.update(self.task.train_columns(tracker.loss_sum, tracker.counts))
        row.update({k: v for k, v in ev.items() if not k.startswith("_") and v is not None})
        row.update(
            self.extra_sets.columns(
                lambda batches, set_kind: self.task.evaluate(
                    self.model, batches, self.device, self.dtype, set_kind
                )
            )
        )
        row["elapsed_s"] = self._elapsed()
        # the LRs and trainable set the epoch's last step trained with
        row.update(tracker.last_lrs or self._lrs())
        row["trainable_params"] = tracker.last_trained.get("trainable", self.live["trainable"])
        row["unlocked_groups"] = tracker.last_trained.get("groups", self.live["groups"])
        row["eval_s"] = time.perf_counter() - t_eval
        row.update(self.caches.epoch_columns(self.epoch_cached if epoch >= 0 else False, kind))
        self.logger.log_epoch(row)
        tracker.finish_epoch(row, {k: v for k, v in ev.items() if k.startswith("_")})
        return row

    def _evaluate_batches(self, model: nn.Module, batches: Any) -> dict[str, Any]:
        return self.task.evaluate(model, batches, self.device, self.dtype)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Model, Unfreezer, every rank's RNG states and the tracker (rank 0 writes)."""
        rngs = distributed.gather_objects(rng_state())
        # collectives under FSDP: every rank gathers, rank 0 writes
        model_state = fsdp.full_model_state_dict(self.model)
        unfreezer_state = self.unfreezer.state_dict()
        if self.rank != 0:
            return
        self.run.save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": self.config.fingerprint(),
                "model": model_state,
                "unfreezer": unfreezer_state,
                "rng": rngs,
                "retention": self.retention.state_dict(),
                **self.tracker.dump(self._elapsed()),
            }
        )

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        fsdp.load_full_model_state_dict(self.model, checkpoint["model"])
        self.unfreezer.load_state_dict(checkpoint["unfreezer"])
        self.tracker.load(checkpoint)
        self.retention.load_state_dict(checkpoint.get("retention", {}))
        rngs = checkpoint["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    # -- the end ---------------------------------------------------------------------------
    def summarise(self, interrupted: bool) -> RunResult:
        """Fill the :class:`RunResult`; rank 0 writes charts, weights and the summary."""
        total = sum(p.numel() for p in self.model.parameters())
        result = RunResult(self.run_path, self.classes, total_params=total, model=self.model)
        result.skipped_images = sum(len(v) for v in self.data.skipped.values())
        result.cache = self.caches.records
        result.interrupted = interrupted
        result.steps = self.unfreezer.global_step
        result.trainable_params = _trainable(self.model)
        result.wall_time_s = self._elapsed()
        result.epochs = self.logger.rows("epochs") if self.rank == 0 else list(self.tracker.rows)
        self.task.fill_result(result, self.tracker)
        weights = fsdp.full_model_state_dict(self.model)  # a collective under FSDP
        if not self.sharded:  # sharded replicas hold one copy between them
            result.replicas_agree = distributed.replicas_agree(self.model, self.device)
        if self.rank != 0:
            return result
        self.run.plot()
        if not interrupted:
            metadata = {
                "classes": self.classes,
                "model": self.config.model.name,
                "schedule": self.config.unfreeze.schedule,
            }
            self.run.save_weights(weights, MODEL_FILE, metadata=metadata)
        skipped = {k: [list(e) for e in v[:1000]] for k, v in self.data.skipped.items()}
        summary = {**result.to_dict(), "skipped_files": skipped, "notes": self.notes}
        self.run.write_json(SUMMARY_FILE, summary)
        self.run.write_csv(
            PER_CLASS_FILE,
            [{"class": c, "accuracy": a} for c, a in result.per_class.items()],
            ["class", "accuracy"],
        )
        return result

    def wise_auto(self, result: RunResult) -> None:
        """``retain.wise=auto``: WiSE-FT over the finished run; keep the α best on ``val``."""
        from ..wise import wise

        if self.world > 1:
            line = f"retain.wise=auto runs in one process: layerlock wise {self.run_path}"
            self.notes.append(line)
            return
        found = wise(self.run_path, save="best")
        result.wise = found.to_dict()
        line = f"WiSE-FT: best alpha {found.best_alpha:g} on val (wise.json, {found.saved})"
        self.notes.append(line)
        print(f"layerlock finetune: {line}", file=sys.stderr, flush=True)
        self.run.write_json(SUMMARY_FILE, {**result.to_dict(), "notes": self.notes})

    def close(self) -> None:
        """Release the run directory."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- helpers ---------------------------------------------------------------------------
    def _epoch_now(self) -> float:
        return self.unfreezer.global_step / self.steps_per_epoch

    def _elapsed(self) -> float:
        start = getattr(self, "session_start", time.perf_counter())
        return self.tracker.elapsed + time.perf_counter() - start

    def _log_event(self, label: str) -> None:
        self.notes.append(label)
        self.logger.log_event(self.unfreezer.global_step, self._epoch_now(), label)
        if self.rank == 0:
            print(f"layerlock finetune: {label}", file=sys.stderr, flush=True)

    def _save_start(self, weights: dict[str, torch.Tensor], epoch: int) -> None:
        """WiSE-FT's start weights (``start.safetensors``), with the epoch they are from."""
        self.run.save_weights(weights, START_FILE, metadata={"epoch": epoch})

    def _on_unlock(self, event: UnlockEvent) -> None:
        self.live = {"trainable": _trainable(self.model), "groups": len(self.unfreezer.trainable)}
        self.logger.log_event(
            event.step,
            event.step / self.steps_per_epoch,
            _event_label(self.unfreezer, event),
            trainable_params=self.live["trainable"],
        )

    def _say_cache(self, record: dict[str, Any]) -> None:
        self.notes.append(record["line"])
        if self.rank == 0:
            print(f"layerlock finetune: {record['line']}", file=sys.stderr, flush=True)
            with self.run.file(CACHE_LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _lrs(self) -> dict[str, float]:
        """The highest LR of each layer group's param groups, as ``lr/<group>`` columns."""
        out: dict[str, float] = {}
        for pg in self.unfreezer.optimizer.param_groups:
            key = f"lr/{layer_group_of(str(pg.get('name')))}"
            if key not in out or pg["lr"] > out[key]:
                out[key] = float(pg["lr"])
        return out


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _event_label(unfreezer: Unfreezer, event: UnlockEvent) -> str:
    """``+blocks.11,head``, ``unlock all``, ``-3 groups`` ... for the events log."""
    names = unfreezer.groups.names
    if event.step == 0 and len(event.trainable) == len(names):
        return "all groups"
    if len(event.trainable) == len(names):
        return "unlock all"
    plus = [names[i] for i in sorted(event.unlocked)]
    minus = [names[i] for i in sorted(event.locked)]
    parts = []
    if plus:
        parts.append("+" + ",".join(plus) if len(plus) <= 2 else f"+{len(plus)} groups")
    if minus:
        parts.append("-" + ",".join(minus) if len(minus) <= 2 else f"-{len(minus)} groups")
    return " ".join(parts) or "nothing trains"
