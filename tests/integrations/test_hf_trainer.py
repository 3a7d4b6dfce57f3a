"""LayerlockTrainerCallback: groups unlocked mid-run under transformers.Trainer really train."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from layerlock import lock  # noqa: E402
from layerlock.audit import audit, fingerprint  # noqa: E402
from layerlock.errors import ConfigError, MissingDependencyError, ScheduleError  # noqa: E402
from layerlock.integrations.hf_trainer import (  # noqa: E402
    LayerlockTrainerCallback,
    layerlock_optimizer,
)

BATCH, STEPS_PER_EPOCH = 4, 3


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int = BATCH * STEPS_PER_EPOCH) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def args(tmp_path: Path, epochs: int = 2, **kw: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=BATCH,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        weight_decay=0.1,
        dataloader_num_workers=0,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


class Probe(TrainerCallback):
    """At every epoch start (after layerlock's callback): audit the previous epoch's locked
    set, then record the trainable groups, a fingerprint and all parameters."""

    def __init__(self, cb: LayerlockTrainerCallback | None) -> None:
        self.cb = cb
        self.trainable: list[list[str]] = []
        self.prints: list[Any] = []
        self.audits: list[Any] = []
        self.params: list[dict[str, torch.Tensor]] = []
        self.lrs: list[dict[str, float]] = []

    def _record(self, model: Any) -> None:
        if self.prints:
            self.audits.append(audit(model, self.prints[-1]))
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_epoch_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        self._record(model)
        if self.cb is not None:
            self.trainable.append(self.cb.trainable_groups())
        self.prints.append(fingerprint(model))

    def on_step_begin(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any
    ) -> None:
        self.lrs.append(
            {pg.get("name", str(i)): pg["lr"] for i, pg in enumerate(optimizer.param_groups)}
        )

    def on_train_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        self._record(model)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], part: str) -> bool:
    hits = [n for n in a if part in n]
    assert hits, part
    return any(not torch.equal(a[n], b[n]) for n in hits)


def test_layerlock_optimizer_unlocked_groups_train_locked_stay_identical(tmp_path: Path) -> None:
    model = tiny_bert()
    cb = LayerlockTrainerCallback("0:1, 1:2, 2:all")
    probe = Probe(cb)
    opt = layerlock_optimizer(model, lr=1e-2, weight_decay=0.1)
    n_groups = len(opt.param_groups)
    trainer = Trainer(
        model=model,
        args=args(tmp_path, epochs=3),
        train_dataset=Data(),
        optimizers=(opt, None),
        callbacks=[cb, probe],
    )
    trainer.train()
    assert probe.trainable == [
        ["head"],
        ["layer.1", "head"],
        ["embeddings", "layer.0", "layer.1", "head"],
    ]
    assert [a.checked_params > 0 for a in probe.audits] == [True, True, False]
    assert all(a.ok for a in probe.audits), [str(a) for a in probe.audits]
    p0, p1, p2, end = probe.params
    assert changed(p0, p1, "classifier") and changed(p0, p1, "pooler")
    assert changed(p1, p2, "encoder.layer.1.") and not changed(p1, p2, "encoder.layer.0.")
    assert changed(p2, end, "encoder.layer.0.") and changed(p2, end, "embeddings.")
    assert len(trainer.optimizer.param_groups) == n_groups  # nothing added, scheduler intact
    # Trainer's linear-decay scheduler drove every group, the late-unlocked ones included
    first, last = probe.lrs[0], probe.lrs[-1]
    assert 0 < last["layer.0"] < first["layer.0"] == pytest.approx(1e-2)


def test_trainer_optimizer_built_from_locked_model_gets_missing_params(tmp_path: Path) -> None:
    model = tiny_bert()
    lock(model, 1)  # lock first: Trainer's own optimizer then holds the head only
    cb = LayerlockTrainerCallback("lp-ft", weight_decay=0.1)  # Trainer's args.weight_decay
    probe = Probe(cb)
    trainer = Trainer(model=model, args=args(tmp_path), train_dataset=Data(), callbacks=[cb, probe])
    with pytest.warns(UserWarning, match="added param groups"):
        trainer.train()
    assert probe.trainable == [["head"], ["embeddings", "layer.0", "layer.1", "head"]]
    assert probe.audits[0].ok and probe.audits[0].checked_params > 0
    p0, p1, end = probe.params
    assert not changed(p0, p1, "encoder.layer.0.")
    assert changed(p1, end, "encoder.layer.0.") and changed(p1, end, "embeddings.")
    names = [pg.get("name") for pg in trainer.optimizer.param_groups]
    assert "layer.0" in names and "embeddings" in names
    # Trainer's linear schedule was extended to the added groups
    assert len({round(lr, 12) for lr in probe.lrs[-1].values()}) == 1
    assert 0 < probe.lrs[-1]["layer.0"] < 1e-2


@pytest.mark.peer_defect
def test_trainer_never_optimises_params_unfrozen_later(tmp_path: Path) -> None:
    """Without layerlock: unfreezing after Trainer built its optimizer trains nothing new."""

    class NaiveUnfreeze(TrainerCallback):
        def on_epoch_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
        ) -> None:
            if state.epoch and state.epoch >= 1:
                model.requires_grad_(True)

    model = tiny_bert()
    model.bert.requires_grad_(False)
    probe = Probe(None)
    Trainer(
        model=model,
        args=args(tmp_path),
        train_dataset=Data(),
        callbacks=[NaiveUnfreeze(), probe],
    ).train()
    _, p1, end = probe.params
    assert all(p.requires_grad for p in model.parameters())
    assert changed(p1, end, "classifier")
    assert not changed(p1, end, "encoder.layer.0.") and not changed(p1, end, "embeddings.")


def test_lr_formula_is_applied_every_step(tmp_path: Path) -> None:
    model = tiny_bert()
    cb = LayerlockTrainerCallback("0:1, 1:all", lr=1e-2, layer_decay=0.5, lr_schedule="constant")
    probe = Probe(cb)
    opt = layerlock_optimizer(model, lr=1e-2, layer_decay=0.5, weight_decay=0.0)
    Trainer(
        model=model,
        args=args(tmp_path),
        train_dataset=Data(),
        optimizers=(opt, None),
        callbacks=[cb, probe],
    ).train()
    assert len(probe.lrs) == 2 * STEPS_PER_EPOCH
    for step, lrs in enumerate(probe.lrs):
        for name, lr in lrs.items():
            assert lr == pytest.approx(cb.unfreezer.lr_of(name, step)), (step, name)
    assert probe.lrs[0]["layer.0"] == 0.0
    assert probe.lrs[-1]["head"] == pytest.approx(1e-2)
    assert probe.lrs[-1]["layer.0"] == pytest.approx(1e-2 * 0.5**2)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="unknown preset"):
        LayerlockTrainerCallback("chain-thw")
    with pytest.raises(ConfigError, match="lr must be None or a number > 0, got 0"):
        LayerlockTrainerCallback("lp-ft", lr=0)
    cb = LayerlockTrainerCallback("0:1, 1:7")
    trainer = Trainer(model=tiny_bert(), args=args(tmp_path), train_dataset=Data(), callbacks=[cb])
    with pytest.raises(ScheduleError, match="7"):
        trainer.train()


def test_options_object_and_keywords_share_the_unfreezer_options() -> None:
    from layerlock import UnfreezeOptions

    opts = UnfreezeOptions(schedule="lp-ft", tower="text")
    cb = LayerlockTrainerCallback(opts, unlock_warmup_steps=5)
    assert cb.options == UnfreezeOptions(schedule="lp-ft", tower="text", unlock_warmup_steps=5)
    assert not cb.manage_lr and cb.lr is None
    assert LayerlockTrainerCallback(opts, lr=1e-2).lr == 1e-2
    model = tiny_bert()
    opt = layerlock_optimizer(model, opts, lr=0.1, betas=(0.8, 0.9))
    assert opt.defaults["betas"] == (0.8, 0.9)
    assert {pg["weight_decay"] for pg in opt.param_groups} == {0.0, opts.weight_decay}
    with pytest.raises(ConfigError, match="lr: must be a finite number > 0"):
        layerlock_optimizer(model, lr=float("nan"))


def test_missing_transformers_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "layerlock.integrations.hf_trainer")
    with pytest.raises(MissingDependencyError, match=r"pip install 'layerlock\[transformers\]'"):
        importlib.import_module("layerlock.integrations.hf_trainer")
