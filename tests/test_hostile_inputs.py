"""Hostile input, table-driven: every case is one CLI call that must fail cleanly.

Each case runs ``layerlock.cli.main([...])`` and checks the exit code (1 for a
LayerlockError, 2 for usage), that stderr holds exactly one ``layerlock <cmd>: error:``
line, no traceback, and names the bad value, and that nothing was written: a new
``out_dir`` does not exist afterwards, and a run directory that existed before is byte for
byte what it was.

Placeholders in a case's arguments and expected text: ``{tmp}`` (the case's own folder),
``{data}`` (a tiny ImageFolder tree), ``{out}`` (the out_dir that must not appear) and
``{run}`` (a copy of a prepared run directory, for resume cases).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from layerlock.cli import main
from layerlock.finetune import finetune
from layerlock.run_lock import RunLock
from layerlock.runs import save_weights
from test_finetune import make_folder, tiny_config

Setup = Callable[[Path], None]


@dataclass
class Case:
    """One hostile input: arguments, what the error must name, and how to prepare it."""

    id: str
    args: list[str]
    needle: str
    code: int = 1
    setup: Setup | None = None
    #: "interrupted" or "finished": a copy of that prepared run is ``{run}``
    run: str | None = None
    #: finetune cases get the tiny-model base arguments unless False
    base: bool = True
    #: the run directory is held by another owner while the case runs
    locked: bool = False
    extra: dict[str, str] = field(default_factory=dict)


# -- files the cases write -------------------------------------------------------------------


def write(name: str, data: str | bytes) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def both(*steps: Setup) -> Setup:
    def setup(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return setup


def fifo(name: str) -> Setup:
    return lambda tmp: os.mkfifo(tmp / name)


def folder(name: str) -> Setup:
    return lambda tmp: (tmp / name).mkdir(parents=True, exist_ok=True)


def tree(train: dict[str, int], val: dict[str, int], corrupt: bool = False) -> Setup:
    """``tmp/tree/{train,val}/<class>/<n>.png``; ``corrupt``: every file is garbage."""

    def setup(tmp: Path) -> None:
        from PIL import Image

        for split, classes in (("train", train), ("val", val)):
            for name, n in classes.items():
                d = tmp / "tree" / split / name
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    if corrupt:
                        (d / f"{i}.png").write_bytes(b"not a png")
                    else:
                        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")

    return setup


def images_and_csv(name: str, text: str | bytes) -> Setup:
    """Two real images ``a.png``/``b.png`` beside a CSV file ``name``."""

    def setup(tmp: Path) -> None:
        from PIL import Image

        for n in ("a", "b"):
            Image.new("RGB", (8, 8)).save(tmp / f"{n}.png")
        write(name, text)(tmp)

    return setup


GOOD_CSV = "path,label\na.png,x\nb.png,y\n"
CSV_ARGS = ["--data", "csv", "--train-csv", "{tmp}/t.csv", "--val-csv", "{tmp}/v.csv"]


def csv_case(id: str, train: str | bytes, needle: str, extra: list[str] = ()) -> Case:  # type: ignore[assignment]
    return Case(
        id,
        [*CSV_ARGS, *extra],
        needle,
        setup=both(images_and_csv("t.csv", train), write("v.csv", GOOD_CSV)),
    )


def module_file(body: str) -> Setup:
    return write("usermodels.py", body)


def hf_folder(config: dict[str, object]) -> Setup:
    return write("hfmodel/config.json", json.dumps(config))


def torch_file(name: str, obj: object) -> Setup:
    def setup(tmp: Path) -> None:
        torch.save(obj, tmp / name)

    return setup


def weights_of(model: Callable[[], torch.nn.Module], name: str) -> Setup:
    def setup(tmp: Path) -> None:
        save_weights(tmp / name, model())

    return setup


def resnet() -> torch.nn.Module:
    import timm

    return timm.create_model("test_resnet", num_classes=3)


class Evil:
    """Pickled by reference: ``weights_only=True`` refuses to build it."""


BOMB = (
    'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "run: {seed: [*d,*d,*d,*d,*d,*d,*d,*d,*d]}\n"
)
FACTORY_OK_HEAD = "import torch.nn as nn\n"

CASES: list[Case] = [
    # -- config keys and values ----------------------------------------------------------
    Case("unknown-key", ["run.epoch=2"], "unknown key 'run.epoch'; did you mean 'run.epochs'?"),
    Case("not-key-value", ["justtext"], "'justtext' is not KEY=VALUE"),
    Case("epochs-text", ["run.epochs=abc"], "run.epochs: expected an integer, got 'abc'"),
    Case("epochs-zero", ["run.epochs=0"], "run.epochs: must be >= 1, got 0"),
    Case("epochs-huge", ["run.epochs=1000000000"], "1,000,000,000 is more than"),
    Case("epochs-float", ["run.epochs=1.5"], "expected an integer, got '1.5'"),
    Case("seed-negative", ["run.seed=-1"], "run.seed: must be in [0, 4294967296), got -1"),
    Case("seed-too-big", ["run.seed=4294967296"], "got 4294967296"),
    Case("batch-zero", ["run.batch_size=0"], "run.batch_size: must be >= 1, got 0"),
    Case("lr-nan", ["--lr", "nan"], "unfreeze.lr: must be a finite number > 0, got nan"),
    Case("lr-inf", ["unfreeze.lr=inf"], "unfreeze.lr: must be a finite number > 0, got inf"),
    Case("lr-negative", ["unfreeze.lr=-1"], "got -1.0"),
    Case("wd-nan", ["unfreeze.weight_decay=nan"], "unfreeze.weight_decay: must be a finite"),
    Case("wd-inf", ["unfreeze.weight_decay=inf"], "weight_decay: must be a finite number >= 0"),
    Case("layer-decay", ["unfreeze.layer_decay=2"], "layer_decay: must be in (0, 1], got 2.0"),
    Case("smoothing", ["run.label_smoothing=1"], "label_smoothing: must be in [0, 1), got 1.0"),
    Case("grad-clip-zero", ["run.grad_clip=0"], "grad_clip: must be > 0 or none, got 0.0"),
    Case("precision", ["run.precision=fp8"], "run.precision: 'fp8' is not one of"),
    Case("device-tpu", ["--device", "tpu"], "run.device: 'tpu' is not one of"),
    Case("device-cuda-index", ["run.device=cuda:99"], "'cuda:99' is not one of"),
    Case("source", ["--data", "floder"], "data.source: 'floder' is not one of"),
    Case("bad-images", ["data.bad_images=maybe"], "data.bad_images: 'maybe' is not one of"),
    Case("separator", ["data.csv_separator=;;"], "csv_separator: must be one character, got ';;'"),
    Case("encoding", ["data.csv_encoding=klingon"], "unknown text encoding 'klingon'"),
    Case("workers", ["data.workers=-1"], "data.workers: must be >= 0, got -1"),
    Case("cache-mode", ["--cache", "sometimes"], "cache.mode: 'sometimes' is not one of"),
    Case("cache-views", ["cache.views=0"], "cache.views: must be >= 1, got 0"),
    Case("task", ["task=regress"], "task: 'regress' is not one of"),
    Case("prompt", ["model.prompt=photo"], "model.prompt: must contain '{{}}'"),
    Case("section-scalar", ["run=fast"], "run: expected a mapping of run.* keys, got 'fast'"),
    Case(
        "augmentation-text", ["data.augmentation=[1, 2]"], "data.augmentation: expected a mapping"
    ),
    Case("long-value", ["run.precision=" + "x" * 100_000], "(100,002 characters)"),
    Case("long-key", ["run." + "y" * 100_000 + "=1"], "unknown key 'run.yyyy"),
    Case("stop-after-zero", ["--stop-after", "0"], "--stop-after must be >= 1"),
    Case("stop-after-negative", ["--stop-after", "-3"], "--stop-after must be >= 1"),
    # -- paths -----------------------------------------------------------------------------
    Case("out-dir-empty", ["--out-dir", " "], "out_dir: must not be empty"),
    Case("out-dir-too-long", ["--out-dir", "{tmp}/" + "n" * 300], "is too long a path"),
    Case(
        "out-dir-is-file",
        ["--out-dir", "{tmp}/f"],
        "is a file, not a folder",
        setup=write("f", "x"),
    ),
    Case(
        "out-dir-is-fifo",
        ["--out-dir", "{tmp}/p"],
        "out_dir: {tmp}/p is a FIFO, not a folder",
        setup=fifo("p"),
    ),
    Case("data-path-missing", ["--data-path", "{tmp}/nope"], "folder {tmp}/nope does not exist"),
    Case(
        "data-path-is-file",
        ["--data-path", "{tmp}/f"],
        "data.path: {tmp}/f is a file, not a folder",
        setup=write("f", "x"),
    ),
    Case(
        "csv-is-folder",
        ["--data", "csv", "--train-csv", "{tmp}/d", "--val-csv", "{tmp}/v.csv"],
        "data.train_csv: {tmp}/d is a folder, not a file",
        setup=both(folder("d"), write("v.csv", GOOD_CSV)),
    ),
    Case(
        "csv-missing",
        ["--data", "csv", "--train-csv", "{tmp}/t.csv", "--val-csv", "{tmp}/v.csv"],
        "data.train_csv: file {tmp}/t.csv does not exist",
        setup=write("v.csv", GOOD_CSV),
    ),
    Case(
        "checkpoint-missing",
        ["--checkpoint", "{tmp}/w.safetensors"],
        "w.safetensors does not exist",
    ),
    Case(
        "checkpoint-is-folder",
        ["--checkpoint", "{tmp}/w"],
        "model.checkpoint: {tmp}/w is a folder, not a file",
        setup=folder("w"),
    ),
    Case("resume-missing", ["--resume", "{tmp}/gone"], "run directory {tmp}/gone does not exist"),
    Case(
        "resume-is-file",
        ["--resume", "{tmp}/f"],
        "{tmp}/f is a file; pass its run directory",
        setup=write("f", "x"),
    ),
    Case(
        "resume-not-a-run",
        ["--resume", "{tmp}/d"],
        "{tmp}/d is not a layerlock run directory",
        setup=folder("d"),
    ),
    Case(
        "unwritable-out-dir",
        ["--out-dir", "/sys/layerlock-hostile/run"],
        "cannot write in /sys/layerlock-hostile",
    ),
    # -- config files ------------------------------------------------------------------------
    Case(
        "yaml-bomb",
        ["--config", "{tmp}/c.yaml"],
        "aliases (*a) are not supported",
        setup=write("c.yaml", BOMB),
    ),
    Case(
        "yaml-duplicate-key",
        ["--config", "{tmp}/c.yaml"],
        "line 3: key 'run' is given twice (first on line 1)",
        setup=write("c.yaml", "run:\n  epochs: 2\nrun:\n  seed: 1\n"),
    ),
    Case(
        "yaml-binary",
        ["--config", "{tmp}/c.yaml"],
        "c.yaml is a binary file",
        setup=write("c.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00"),
    ),
    Case(
        "yaml-latin1",
        ["--config", "{tmp}/c.yaml"],
        "c.yaml is not utf-8 text (byte 0xe9",
        setup=write("c.yaml", "model:\n  prompt: caf\xe9 {}\n".encode("latin-1")),
    ),
    Case(
        "yaml-huge",
        ["--config", "{tmp}/c.yaml"],
        "config files are limited to 1,048,576 bytes",
        setup=write("c.yaml", "# " + "x" * (1 << 20) + "\n"),
    ),
    Case(
        "yaml-deep",
        ["--config", "{tmp}/c.yaml"],
        "nested more than 32 levels deep",
        setup=write("c.yaml", "a: " + "[" * 100 + "]" * 100 + "\n"),
    ),
    Case(
        "yaml-list",
        ["--config", "{tmp}/c.yaml"],
        "must hold a mapping of keys, not list",
        setup=write("c.yaml", "- 1\n- 2\n"),
    ),
    Case(
        "yaml-syntax",
        ["--config", "{tmp}/c.yaml"],
        "is not valid YAML (line",
        setup=write("c.yaml", "run: {epochs: 2\n"),
    ),
    Case("yaml-missing", ["--config", "{tmp}/c.yaml"], "config file {tmp}/c.yaml does not exist"),
    Case(
        "yaml-folder", ["--config", "{tmp}/d"], "config file {tmp}/d is a folder", setup=folder("d")
    ),
    Case(
        "yaml-fifo",
        ["--config", "{tmp}/p"],
        "config file {tmp}/p is not a regular file",
        setup=fifo("p"),
    ),
    # -- schedules -------------------------------------------------------------------------
    Case("schedule-nothing", ["--schedule", "0:0"], "nothing trains from epoch 0 on"),
    Case(
        "schedule-relock-all",
        ["--schedule", "0:all, 1:0", "--epochs", "2"],
        "nothing trains from epoch 1",
    ),
    Case(
        "schedule-inf",
        ["--schedule", "0:1, inf:all"],
        "time 'inf' in entry 'inf:all' is not a whole",
    ),
    Case("schedule-preset-typo", ["--schedule", "gradul"], "did you mean 'gradual'"),
    Case("schedule-k-range", ["--schedule", "0:99"], "k=99 is out of range"),
    Case("schedule-start", ["--schedule", "1:all"], "the first entry is at epoch 1"),
    Case("schedule-order", ["--schedule", "0:1, 0:2"], "times must increase strictly"),
    Case("schedule-group", ["--schedule", "0:blokcs.1"], "did you mean 'blocks.1'"),
    Case("schedule-negative-k", ["--schedule", "0:-1"], "k must be >= 0, got -1"),
    Case("schedule-mixed", ["--schedule", "0:1, s5:all"], "mixes epochs and steps"),
    Case("schedule-param", ["--schedule", "lp-ft:at=x"], "lp-ft parameter at='x'"),
    # -- model specs -------------------------------------------------------------------------
    Case("timm-unknown", ["--model", "timm:test_vitt"], "unknown timm model 'test_vitt'"),
    Case("family-typo", ["--model", "tim:test_vit"], "unknown model family 'tim'"),
    Case(
        "module-missing",
        ["--model", "module:no_such_mod_xyz:build"],
        "cannot import 'no_such_mod_xyz'",
    ),
    Case(
        "factory-raises",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "calling build() raised RuntimeError: no GPU budget",
        setup=module_file("def build(num_classes):\n    raise RuntimeError('no GPU budget')\n"),
    ),
    Case(
        "factory-syntax-error",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "syntax error importing {tmp}/usermodels.py",
        setup=module_file("def build(num_classes):\n    return (\n"),
    ),
    Case(
        "module-import-raises",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "importing {tmp}/usermodels.py raised ValueError: boom",
        setup=module_file("raise ValueError('boom')\n"),
    ),
    Case(
        "factory-no-num-classes",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "build() takes no num_classes argument",
        setup=module_file(FACTORY_OK_HEAD + "def build():\n    return nn.Linear(2, 2)\n"),
    ),
    Case(
        "factory-not-module",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "returned int, not a torch.nn.Module",
        setup=module_file("def build(num_classes):\n    return 3\n"),
    ),
    Case(
        "factory-unknown-name",
        ["--model", "module:{tmp}/usermodels.py:biuld"],
        "unknown factory in {tmp}/usermodels.py model 'biuld'; did you mean 'build'?",
        setup=module_file("def build(num_classes):\n    return 3\n"),
    ),
    Case(
        "model-output-size",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "gives outputs of shape (1, 7) per batch of 1 but the data has 3 classes",
        setup=module_file(
            FACTORY_OK_HEAD
            + "def build(num_classes):\n"
            + "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 7))\n"
        ),
    ),
    Case(
        "text-model-given-images",
        ["--model", "module:{tmp}/usermodels.py:build"],
        "the model cannot classify images",
        setup=module_file(
            FACTORY_OK_HEAD
            + "def build(num_classes):\n"
            + "    return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, num_classes))\n"
        ),
    ),
    Case(
        "hf-folder-no-config",
        ["--model", "hf:{tmp}/hfmodel"],
        "folder {tmp}/hfmodel has no config.json",
        setup=folder("hfmodel"),
    ),
    Case(
        "hf-folder-no-model-type",
        ["--model", "hf:{tmp}/hfmodel"],
        "names no model type transformers knows",
        setup=hf_folder({"hidden_size": 8}),
    ),
    Case(
        "hf-text-model-given-images",
        ["--model", "hf:{tmp}/hfmodel"],
        "the model cannot classify images",
        setup=hf_folder(
            {
                "model_type": "bert",
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
                "intermediate_size": 8,
                "vocab_size": 30,
            }
        ),
    ),
    # -- checkpoints given as model.checkpoint ------------------------------------------------
    Case(
        "checkpoint-corrupt-safetensors",
        ["--checkpoint", "{tmp}/w.safetensors"],
        "w.safetensors is a corrupt safetensors file",
        setup=write("w.safetensors", (100).to_bytes(8, "little") + b"{" + b"x" * 120),
    ),
    Case(
        "checkpoint-pickle",
        ["--checkpoint", "{tmp}/w.pt"],
        "cannot be loaded with torch.load(weights_only=True)",
        setup=torch_file("w.pt", {"model": Evil()}),
    ),
    Case(
        "checkpoint-garbage",
        ["--checkpoint", "{tmp}/w.pt"],
        "w.pt is not a safetensors file",
        setup=write("w.pt", b"\x00garbage" * 10),
    ),
    Case(
        "checkpoint-other-model",
        ["--checkpoint", "{tmp}/w.safetensors"],
        "has none of the model's tensor names",
        setup=weights_of(resnet, "w.safetensors"),
    ),
    Case(
        "checkpoint-missing-keys",
        ["--checkpoint", "{tmp}/w.pt"],
        "does not fit the model",
        setup=torch_file("w.pt", {"cls_token": torch.zeros(1, 1, 64)}),
    ),
    Case(
        "checkpoint-not-tensors",
        ["--checkpoint", "{tmp}/w.pt"],
        "does not hold a state dict of tensors",
        setup=torch_file("w.pt", [1, 2, 3]),
    ),
    # -- data trees --------------------------------------------------------------------------
    Case(
        "tree-no-val",
        ["--data-path", "{tmp}/tree"],
        "no val/ folder in {tmp}/tree",
        setup=tree({"a": 2, "b": 2}, {}),
    ),
    Case(
        "tree-no-train",
        ["--data-path", "{tmp}/d"],
        "no train/ folder in {tmp}/d",
        setup=folder("d"),
    ),
    Case(
        "tree-no-classes",
        ["--data-path", "{tmp}/tree"],
        "has no class folders",
        setup=both(folder("tree/train"), folder("tree/val")),
    ),
    Case(
        "tree-empty-class",
        ["--data-path", "{tmp}/tree"],
        "class folder {tmp}/tree/train/b has no images",
        setup=both(tree({"a": 2}, {"a": 1}), folder("tree/train/b")),
    ),
    Case(
        "tree-all-corrupt",
        ["--data-path", "{tmp}/tree"],
        "none of its 4 images is readable",
        setup=tree({"a": 2, "b": 2}, {"a": 1}, corrupt=True),
    ),
    Case(
        "tree-val-extra-class",
        ["--data-path", "{tmp}/tree"],
        "labels in {tmp}/tree/val that train lacks: 'zebra'",
        setup=tree({"a": 2, "b": 2}, {"zebra": 1}),
    ),
    Case(
        "tree-one-class",
        ["--data-path", "{tmp}/tree"],
        "the training data has 1 class",
        setup=tree({"a": 2}, {"a": 1}),
    ),
    Case(
        "tree-bad-image-error-policy",
        ["--data-path", "{tmp}/tree", "data.bad_images=error"],
        "cannot read image {tmp}/tree/train/a/bad.png",
        setup=both(tree({"a": 2, "b": 2}, {"a": 1}), write("tree/train/a/bad.png", b"junk")),
    ),
    Case(
        "tree-fifo-error-policy",
        ["--data-path", "{tmp}/tree", "data.bad_images=error"],
        "tree/train/a/f.png: not a regular file (a FIFO)",
        setup=both(tree({"a": 2, "b": 2}, {"a": 1}), fifo("tree/train/a/f.png")),
    ),
    # -- CSV files ---------------------------------------------------------------------------
    csv_case("csv-no-column", "file,label\na.png,x\n", "has no column 'path' (csv_img_key)"),
    csv_case(
        "csv-repeated-column", "path,label,label\na.png,x,y\n", "column(s) 'label' more than once"
    ),
    csv_case("csv-nul-label", "path,label\na.png,x\x00y\n", "t.csv line 2: a NUL character"),
    csv_case(
        "csv-latin1", "path,label\na.png,caf\xe9\n".encode("latin-1"), "t.csv is not utf-8 text"
    ),
    csv_case("csv-binary", b"\x00\x01\x02\x03", "t.csv is a binary file"),
    csv_case("csv-empty-cell", "path,label\na.png,\n", "t.csv line 2: empty 'path' or 'label'"),
    csv_case("csv-header-only", "path,label\n", "t.csv has a header but no rows"),
    csv_case("csv-encoding-wrong", GOOD_CSV.encode("utf-16"), "t.csv is not utf-8 text"),
    # -- run directories: resume ---------------------------------------------------------------
    Case("resume-finished", ["--resume", "{run}"], "is a finished run", run="finished", base=False),
    Case(
        "resume-other-config",
        ["--resume", "{run}", "unfreeze.lr=0.5"],
        "started with a different config (unfreeze.lr: 0.001 -> 0.5)",
        run="interrupted",
        base=False,
    ),
    Case(
        "resume-in-use",
        ["--resume", "{run}"],
        "is in use by process",
        run="interrupted",
        base=False,
        locked=True,
    ),
    Case(
        "resume-no-checkpoint",
        ["--resume", "{run}"],
        "has no checkpoint to resume from",
        run="interrupted",
        base=False,
        extra={"remove": "checkpoint.pt"},
    ),
    Case(
        "resume-checkpoint-folder",
        ["--resume", "{run}"],
        "checkpoint {run}/checkpoint.pt is a folder, not a file",
        run="interrupted",
        base=False,
        extra={"replace": "checkpoint.pt", "with": "folder"},
    ),
    Case(
        "resume-checkpoint-garbage",
        ["--resume", "{run}"],
        "checkpoint {run}/checkpoint.pt is not a safetensors file",
        run="interrupted",
        base=False,
        extra={"replace": "checkpoint.pt", "with": "garbage"},
    ),
    Case(
        "resume-checkpoint-bad-rng",
        ["--resume", "{run}"],
        "its checkpoint is damaged or belongs to another model",
        run="interrupted",
        base=False,
        extra={"damage": "rng"},
    ),
    Case(
        "resume-checkpoint-missing-keys",
        ["--resume", "{run}"],
        "its checkpoint is damaged or belongs to another model",
        run="interrupted",
        base=False,
        extra={"damage": "model"},
    ),
    Case(
        "resume-config-bomb",
        ["--resume", "{run}"],
        "run config {run}/config.yaml line 2: aliases (*a) are not supported",
        run="interrupted",
        base=False,
        extra={"replace": "config.yaml", "with": "bomb"},
    ),
    Case(
        "resume-data-changed",
        ["--resume", "{run}"],
        "its data changed since it started",
        run="changing",
        base=False,
        extra={"data": "add"},
    ),
    # -- usage errors (exit 2) ---------------------------------------------------------------
    Case("usage-epochs-text", ["--epochs", "many"], "invalid int value: 'many'", code=2),
    Case("usage-unknown-flag", ["--epochz", "3"], "unrecognized arguments: --epochz", code=2),
]

PLAN_CASES: list[Case] = [
    Case("plan-nothing-trains", ["-s", "0:0", "-e", "3"], "nothing trains from epoch 0 on"),
    Case("plan-relock", ["-s", "0:all, 2:none", "-e", "3"], "nothing trains from epoch 2 on"),
    Case("plan-inf", ["-s", "0:1, inf:all", "-e", "3"], "time 'inf'"),
    Case("plan-epochs-zero", ["-s", "lp", "-e", "0"], "--epochs must be >= 1, got 0"),
    Case(
        "plan-spe-zero",
        ["-s", "lp", "-e", "2", "--steps-per-epoch", "0"],
        "--steps-per-epoch must be >= 1",
    ),
    Case(
        "plan-out-jpg",
        ["-s", "lp", "-e", "2", "--out", "{tmp}/p.jpg"],
        "--out must name a .png file",
    ),
    Case("plan-tower", ["-s", "lp", "-e", "2", "--tower", "text"], "unknown tower 'text'"),
    Case(
        "plan-no-schedule", ["-e", "2"], "the following arguments are required: --schedule", code=2
    ),
    Case("plan-epochs-text", ["-s", "lp", "-e", "x"], "invalid int value: 'x'", code=2),
]


# -- running the cases -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ImageFolder tree, and an interrupted and a finished run on it."""
    root = tmp_path_factory.mktemp("hostile")
    make_folder(root / "data", train=2, val=1)
    # the base of finetune cases: short runs; a case's KEY=VALUE and flags win over it
    (root / "base.yaml").write_text("run:\n  epochs: 1\n  batch_size: 4\n")
    interrupted = finetune(
        tiny_config(root, epochs=2, out_dir=str(root / "interrupted")), stop_after=1
    )
    finished = finetune(tiny_config(root, epochs=1, out_dir=str(root / "finished")))
    # a run whose data folder one case changes
    make_folder(root / "other" / "data", train=2, val=1)
    changing = finetune(
        tiny_config(root / "other", epochs=2, out_dir=str(root / "changing")), stop_after=1
    )
    return {
        "root": root,
        "interrupted": interrupted.run_dir,
        "finished": finished.run_dir,
        "changing": changing.run_dir,
        "changing_data": root / "other" / "data",
    }


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(folder.rglob("*"))
    }


def _damage(run: Path, case: Case) -> None:
    extra = case.extra
    if "remove" in extra:
        (run / extra["remove"]).unlink()
    if extra.get("with") == "folder":
        (run / extra["replace"]).unlink()
        (run / extra["replace"]).mkdir()
    elif extra.get("with") == "garbage":
        (run / extra["replace"]).write_bytes(b"\x00not a checkpoint" * 8)
    elif extra.get("with") == "bomb":
        (run / extra["replace"]).write_text(BOMB)
    if "damage" in extra:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        if extra["damage"] == "rng":
            state["rng"] = [{"torch": torch.zeros(3, dtype=torch.uint8)}]
        else:
            state["model"] = {k: v for k, v in list(state["model"].items())[1:]}
        torch.save(state, run / "checkpoint.pt")


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text.replace("{{}}", "{}")


def _run_case(
    case: Case,
    command: str,
    prepared: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case.id == "unwritable-out-dir" and os.access("/sys", os.W_OK) and os.geteuid() != 0:
        pytest.skip("/sys is writable here")
    if case.id.startswith("hf-") and not _has("transformers"):
        pytest.skip("transformers is not installed")
    values = {
        "tmp": str(tmp_path),
        "data": str(prepared["root"] / "data"),
        "out": str(tmp_path / "out"),
    }
    if case.setup is not None:
        case.setup(tmp_path)
    run: Path | None = None
    if case.run is not None:
        run = tmp_path / "run"
        shutil.copytree(prepared[case.run], run)
        if case.extra.get("data") == "add":  # this run's own data folder gains an image
            red = prepared["changing_data"] / "train" / "red"
            (red / "new.png").write_bytes(next(red.glob("*.png")).read_bytes())
        _damage(run, case)
        values["run"] = str(run)
    before = _snapshot(run) if run is not None else None
    args = [_fill(a, values) for a in case.args]
    if command == "finetune":
        base = ["--quiet"]
        if case.base:
            base += [
                "--model", "timm:test_vit", "--data", "folder", "--data-path", values["data"],
                "--out-dir", values["out"], "--config", str(prepared["root"] / "base.yaml"),
            ]  # fmt: skip
        argv = ["finetune", *base, *args]
    else:
        argv = [command, "timm:test_vit", *args]
    lock = RunLock(run) if case.locked and run is not None else None
    if lock is not None:
        lock.acquire()
    try:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    finally:
        if lock is not None:
            lock.release()
    err = capsys.readouterr().err
    assert code == case.code, err[-2000:]
    assert "Traceback" not in err
    prefix = f"layerlock {command}: error: "
    errors = [line for line in err.splitlines() if line.startswith(prefix)]
    if case.code == 2:  # argparse's own usage message: usage lines, then one error line
        errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err[-2000:]
    assert _fill(case.needle, values) in errors[0], errors[0][:2000]
    assert len(errors[0]) < 1000, errors[0][:300]
    # nothing written: no new run directory, and a prepared one is as it was
    assert not (tmp_path / "out").exists()
    assert not Path("/sys/layerlock-hostile").exists()
    if run is not None:
        if case.locked:  # the other owner's lock file names it; everything else is untouched
            before.pop(".lock", None)
            after = _snapshot(run)
            after.pop(".lock", None)
            assert after == before
        else:
            assert _snapshot(run) == before


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


BENCH_CASES: list[Case] = [
    Case(
        "bench-out-no-folder",
        ["--out", "{tmp}/nowhere/b.json"],
        "folder {tmp}/nowhere does not exist",
    ),
    Case("bench-out-is-folder", ["--out", "{tmp}"], "--out {tmp} is a folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_finetune_hostile_input(
    case: Case, prepared: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_case(case, "finetune", prepared, tmp_path, capsys)


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.id for c in PLAN_CASES])
def test_plan_hostile_input(
    case: Case, prepared: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_case(case, "plan", prepared, tmp_path, capsys)


@pytest.mark.parametrize("case", BENCH_CASES, ids=[c.id for c in BENCH_CASES])
def test_bench_hostile_output(
    case: Case, prepared: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_case(case, "bench", prepared, tmp_path, capsys)


def test_mps_where_unsupported_is_one_line(
    prepared: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    case = Case(
        "device-mps", ["--device", "mps"], "device: 'mps' requested but MPS is not available"
    )
    _run_case(case, "finetune", prepared, tmp_path, capsys)


def test_there_are_enough_cases() -> None:
    every = CASES + PLAN_CASES + BENCH_CASES
    assert len(every) >= 80 and len({c.id for c in every}) == len(every)
