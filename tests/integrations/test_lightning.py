"""LayerlockFinetuning: schedules under Lightning, resume, and replicas under DDP."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import BackboneFinetuning  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from layerlock import lock  # noqa: E402
from layerlock.audit import audit, fingerprint  # noqa: E402
from layerlock.errors import ConfigError, MissingDependencyError, ScheduleError  # noqa: E402
from layerlock.integrations.lightning import LayerlockFinetuning  # noqa: E402

STEPS_PER_EPOCH = 4


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.tanh(self.stem(x)))


class Model(pl.LightningModule):
    """backbone (stem, 3 blocks) + head; AdamW with weight decay over all parameters."""

    def __init__(self, scheduler: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = Backbone()
        self.head = nn.Linear(16, 3)
        self.scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(n: int = 8 * STEPS_PER_EPOCH, seed: int = 1) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)


def trainer(epochs: int, callbacks: list[Any], **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


class Probe(pl.Callback):
    """At every epoch start: audits the previous epoch's locked set, then records the
    trainable groups, a fingerprint of the locked parameters and all parameters."""

    def __init__(self, cb: LayerlockFinetuning) -> None:
        self.cb = cb
        self.trainable: list[list[str]] = []
        self.prints: list[Any] = []
        self.audits: list[Any] = []
        self.params: list[dict[str, torch.Tensor]] = []

    def _record(self, pl_module: Any) -> None:
        if self.prints:
            self.audits.append(audit(pl_module, self.prints[-1]))
        self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._record(pl_module)
        self.cb._sync(trainer)  # the epoch's first batch would apply it; look at it now
        self.trainable.append(self.cb.trainable_groups())
        self.prints.append(fingerprint(pl_module))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._record(pl_module)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    hits = [n for n in a if n.startswith(prefix)]
    assert hits, prefix
    return any(not torch.equal(a[n], b[n]) for n in hits)


def trainer_opt(model: Any) -> torch.optim.Optimizer:
    return model.trainer.optimizers[0]


def test_groups_unlock_mid_run_and_locked_ones_stay_bit_identical() -> None:
    cb = LayerlockFinetuning("0:1, 1:2, 2:all")
    probe = Probe(cb)
    model = Model()
    trainer(3, [cb, probe]).fit(model, loader())
    names = list(cb.unfreezer.groups.names)
    assert names == ["stem", "backbone.blocks.0", "backbone.blocks.1", "backbone.blocks.2", "head"]
    assert probe.trainable == [["head"], names[-2:], names]
    # what was locked in an epoch did not move at all (AdamW with weight decay, momentum)
    assert [a.checked_params for a in probe.audits] == [8, 6, 0]
    assert all(a.ok for a in probe.audits), [str(a) for a in probe.audits]
    p0, p1, p2, end = probe.params
    assert changed(p0, p1, "head.")
    assert changed(p1, p2, "backbone.blocks.2") and changed(p2, end, "backbone.stem")
    assert changed(p2, end, "backbone.blocks.0")
    # the StepLR scheduler kept driving the single param group: nothing was added
    assert len(trainer_opt(model).param_groups) == 1
    assert trainer_opt(model).param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)


def test_module_attr_schedules_only_that_submodule() -> None:
    cb = LayerlockFinetuning("0:1, 1:3, 2:all", module_attr="backbone")
    probe = Probe(cb)
    model = Model()
    trainer(3, [cb, probe]).fit(model, loader())
    names = list(cb.unfreezer.groups.names)
    assert names == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    assert probe.trainable == [["blocks.2"], names[1:], names]
    assert all(a.ok for a in probe.audits), [str(a) for a in probe.audits]
    assert probe.audits[0].checked_params == 6
    assert changed(probe.params[0], probe.params[1], "head.")  # outside: left trainable
    assert changed(probe.params[1], probe.params[2], "backbone.blocks.0")


def test_optimizer_of_trainable_params_only_gets_missing_groups() -> None:
    class PreLocked(Model):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    model = PreLocked()
    lock(model.backbone, 0)  # "lock, then build the optimizer from what trains"
    cb = LayerlockFinetuning("0:1, 1:all", module_attr="backbone")
    probe = Probe(cb)
    trainer(2, [cb, probe]).fit(model, loader())
    names = [pg.get("name") for pg in trainer_opt(model).param_groups]
    assert names[0] is None and {"stem", "blocks.0"} <= set(names)
    # the scheduler was extended: the added groups follow it too (no zip(strict) error)
    lrs = [pg["lr"] for pg in trainer_opt(model).param_groups]
    assert lrs == pytest.approx([0.1 * 0.9 ** (2 * STEPS_PER_EPOCH)] * len(lrs))


def test_resume_restores_trainable_set_and_equals_uninterrupted_run(tmp_path: Path) -> None:
    spec = "0:1, 1:3, 3:all"
    full_cb = LayerlockFinetuning(spec)
    full = Model(scheduler=False)
    trainer(3, [full_cb]).fit(full, loader())

    first_cb = LayerlockFinetuning(spec)
    first = Model(scheduler=False)
    t1 = trainer(2, [first_cb])
    t1.fit(first, loader())
    ckpt = tmp_path / "after-unlock.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("LayerlockFinetuning"))
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    assert state["trainable"] == ["backbone.blocks.1", "backbone.blocks.2", "head"]

    resumed_cb = LayerlockFinetuning(spec)
    seen: list[list[str]] = []

    class AtStart(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen.append(resumed_cb.trainable_groups())
            seen.append([n for n, p in pl_module.named_parameters() if p.requires_grad])

    resumed = Model(scheduler=False)
    trainer(3, [resumed_cb, AtStart()]).fit(resumed, loader(), ckpt_path=ckpt)
    groups = resumed_cb.unfreezer.groups.names
    assert seen[0] == list(groups[-3:])  # not re-locked to the head
    assert not any(n.startswith(("backbone.stem", "backbone.blocks.0")) for n in seen[1])
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_errors() -> None:
    with pytest.raises(ScheduleError, match="unknown preset"):
        LayerlockFinetuning("gradul")
    with pytest.raises(ConfigError, match="lr must be None or a number > 0, got -1"):
        LayerlockFinetuning("lp-ft", lr=-1)
    cb = LayerlockFinetuning("lp-ft", module_attr="backbon")
    with pytest.raises(ConfigError, match="no submodule 'backbon'; did you mean 'backbone'"):
        trainer(1, [cb]).fit(Model(), loader())


def test_options_object_and_keywords_share_the_unfreezer_options() -> None:
    from layerlock import UnfreezeOptions

    opts = UnfreezeOptions(schedule="gradual", layer_decay=0.5)
    cb = LayerlockFinetuning(opts, module_attr="backbone", weight_decay=0.0)
    assert cb.options == UnfreezeOptions(schedule="gradual", layer_decay=0.5, weight_decay=0.0)
    assert str(cb.schedule) == "gradual" and not cb.manage_lr and cb.lr is None
    assert LayerlockFinetuning("lp-ft", lr=1e-2).manage_lr  # an lr keyword sets the LRs
    assert LayerlockFinetuning(opts, manage_lr=True).lr == opts.lr
    assert not LayerlockFinetuning("lp-ft", lr=None).manage_lr
    with pytest.raises(ConfigError, match="unknown unfreezing option 'towr'; did you mean"):
        LayerlockFinetuning("lp-ft", towr="visual")


def test_missing_lightning_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "layerlock.integrations.lightning")
    with pytest.raises(MissingDependencyError, match=r"pip install 'layerlock\[lightning\]'"):
        importlib.import_module("layerlock.integrations.lightning")


# -- DDP (2 processes, gloo, CPU) ---------------------------------------------------------


class SaveRank(pl.Callback):
    """Each rank saves its parameters at the start and the end of training."""

    def __init__(self, out: Path) -> None:
        self.out = str(out)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, pl_module, "start")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, pl_module, "end")

    def _save(self, trainer: Any, pl_module: Any, when: str) -> None:
        state = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        torch.save(state, f"{self.out}/rank{trainer.global_rank}-{when}.pt")


def run_ddp(tmp_path: Path, callback: pl.Callback, epochs: int = 2) -> tuple[dict, dict, dict]:
    t = trainer(
        epochs,
        [callback, SaveRank(tmp_path)],
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", start_method="spawn"),
        deterministic=False,
    )
    # 2 ranks x 4 batches of 8: the DistributedSampler gives each rank different samples
    t.fit(Model(scheduler=False), loader(n=64))
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    return load("rank0-start.pt"), load("rank0-end.pt"), load("rank1-end.pt")


@pytest.mark.slow
def test_ddp_replicas_identical_after_mid_run_unlock(tmp_path: Path) -> None:
    start, r0, r1 = run_ddp(tmp_path, LayerlockFinetuning("0:1, 1:all"))
    assert changed(start, r0, "backbone.stem")  # unlocked at epoch 1 and trained
    mismatched = [n for n in r0 if not torch.equal(r0[n], r1[n])]
    assert mismatched == []


@pytest.mark.slow
@pytest.mark.peer_defect
def test_lightning_backbone_finetuning_replicas_drift_under_ddp(tmp_path: Path) -> None:
    """Lightning's BackboneFinetuning: DDP was built while the backbone was frozen; after the unfreeze
    its gradients are never averaged, so each rank trains it on its own data."""
    start, r0, r1 = run_ddp(tmp_path, BackboneFinetuning(unfreeze_backbone_at_epoch=1))
    assert changed(start, r0, "backbone.stem")
    mismatched = [n for n in r0 if not torch.equal(r0[n], r1[n])]
    assert mismatched and all(n.startswith("backbone.") for n in mismatched)
    assert all(torch.equal(r0[n], r1[n]) for n in r0 if n.startswith("head."))
