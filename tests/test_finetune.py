"""finetune: bad input gives one-line errors before anything is written; data helpers.

The helpers here (``make_folder``, ``make_csv``, ``tiny_config``) are shared by the other
finetune test modules.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layerlock.cli import main
from layerlock.config import LEGACY_KEYS, FinetuneConfig
from layerlock.errors import ConfigError, LayerlockError, ScheduleError, UnknownModelError
from layerlock.finetune import ClassificationTask, finetune
from layerlock.finetune.reproducible import EpochOrder
from layerlock.models import build_classifier

CLASSES = ("red", "green", "blue")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.set_num_threads(1)


def _image(cls: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A noisy image whose dominant colour channel is the class."""
    arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    arr[..., cls] = rng.integers(180, 255, size=(size, size), dtype=np.uint8)
    return Image.fromarray(arr)


def make_folder(root: Path, train: int = 4, val: int = 2, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.jpg``."""
    rng = np.random.default_rng(seed)
    for split, n, ext in (("train", train, "png"), ("val", val, "jpg")):
        for ci, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _image(ci, rng).save(folder / f"{i}.{ext}")
    return root


def make_csv(root: Path, train: int = 4, val: int = 2, corrupt: bool = False) -> tuple[Path, Path]:
    """``train.csv`` / ``val.csv`` of ``path,label`` (relative paths), JPEG and PNG images."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", train), ("val", val)):
        lines = ["path,label"]
        for ci, name in enumerate(CLASSES):
            for i in range(n):
                rel = f"img/{split}_{name}_{i}.{'jpg' if i % 2 else 'png'}"
                _image(ci, rng).save(root / rel)
                lines.append(f"{rel},{name}")
        if corrupt and split == "train":
            (root / "img" / "broken.png").write_bytes(b"not an image at all")
            lines.append("img/broken.png,red")
        path = root / f"{split}.csv"
        path.write_text("\n".join(lines) + "\n")
        out.append(path)
    return out[0], out[1]


def tiny_config(tmp_path: Path, **kw: object) -> FinetuneConfig:
    """A fast config on a generated ImageFolder tree (timm test_vit unless overridden)."""
    data = tmp_path / "data"
    if not data.exists():
        make_folder(data)
    values: dict[str, object] = dict(
        model="timm:test_vit",
        data="folder",
        data_path=str(data),
        epochs=2,
        batch_size=4,
        lr=1e-3,
        log_every=1,
        out_dir=str(tmp_path / "run"),
    )
    values.update(kw)
    # the previous release's flat names, spelled as the dotted keys they became
    shorthand = {"model", "data", "cache"}
    return FinetuneConfig.from_dict(
        {(k if k in shorthand else LEGACY_KEYS.get(k, k)): v for k, v in values.items()}
    )


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["finetune", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("layerlock finetune: error: ")
    return lines[0]


# -- bad input: one line each, nothing half-written -------------------------------------------


def test_missing_data_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _cli_error(["--data", "folder", "--data-path", str(tmp_path / "nope")], capsys)
    assert "data.path: folder" in line and "does not exist" in line


def test_empty_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    line = _cli_error(
        [
            "--model",
            "timm:test_vit",
            "--data",
            "folder",
            "--data-path",
            str(tmp_path / "empty"),
            "--out-dir",
            str(out),
        ],
        capsys,
    )
    assert "no train/ folder" in line
    assert not out.exists()


def test_empty_class_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "train" / "purple").mkdir()
    with pytest.raises(LayerlockError, match=r"class folder .*purple has no images"):
        finetune(tiny_config(tmp_path))


def test_val_labels_missing_from_train(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    extra = tmp_path / "data" / "val" / "yellow"
    extra.mkdir()
    _image(0, np.random.default_rng(0)).save(extra / "0.png")
    with pytest.raises(ConfigError, match=r"labels in .*val that train lacks: 'yellow'"):
        finetune(tiny_config(tmp_path))
    assert not (tmp_path / "run").exists()


def test_unknown_model_suggests(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownModelError, match=r"unknown timm model 'test_vitt'.*did you mean 'test_vit"
    ):
        finetune(tiny_config(tmp_path, model="timm:test_vitt"))


def test_pretrained_without_network_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_folder(tmp_path / "data")
    line = _cli_error(
        [
            "--model",
            "timm:test_vit",
            "--pretrained",
            "--data",
            "folder",
            "--data-path",
            str(tmp_path / "data"),
            "--out-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert "could not fetch pretrained weights for 'timm:test_vit'" in line
    assert "--checkpoint" in line


def test_schedule_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match=r"does not fit this model"):
        finetune(tiny_config(tmp_path, schedule="surgical:blocks.42"))
    assert not (tmp_path / "run").exists()


def test_bad_config_values_reported_together(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["finetune", "--quiet", "epochs=0", "precision=fp16", "lrr=3"])
    err = capsys.readouterr().err
    assert code == 1
    assert "3 problems" in err and "lrr" in err and "fp16" in err and "epochs" in err


def test_resume_from_a_different_config(tmp_path: Path) -> None:
    first = finetune(tiny_config(tmp_path, epochs=1), stop_after=1)
    assert first.interrupted
    changed = tiny_config(tmp_path, epochs=1, lr=0.01, resume=str(first.run_dir))
    with pytest.raises(
        ConfigError, match=r"cannot resume .*different config \(unfreeze.lr: 0.001 -> 0.01\)"
    ):
        finetune(changed)


def test_resume_dir_that_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    with pytest.raises(LayerlockError, match=r"is not a layerlock run directory"):
        finetune(tiny_config(tmp_path, resume=str(tmp_path / "junk")))


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_checkpoint_not_loadable_safely(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(pickle.dumps({"weight": _Evil()}))
    with pytest.raises(
        LayerlockError,
        match=r"not a safetensors file and cannot be loaded with torch.load\(weights_only=True\)",
    ):
        finetune(tiny_config(tmp_path, checkpoint=str(bad)))


def test_checkpoint_of_another_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ConfigError, match=r"has none of the model's tensor names"):
        finetune(tiny_config(tmp_path, checkpoint=str(path)))


def test_checkpoint_loaded_with_new_head(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_vit", num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, notes, _ = build_classifier("timm:test_vit", list(CLASSES), checkpoint=str(path))
    assert torch.equal(
        model.state_dict()["blocks.0.attn.qkv.weight"],
        source.state_dict()["blocks.0.attn.qkv.weight"],
    )
    assert model.num_classes == 3 and "new head" in notes[-1]


def test_nan_loss_names_step_and_lr(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, lr=1e30, grad_clip=None, schedule="full", epochs=3)
    with pytest.raises(
        LayerlockError,
        match=r"loss became (nan|inf|-inf) at step \d+ \(epoch \d\) with learning rate [0-9.e+]+ \(\w",
    ):
        finetune(cfg)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_corrupt_image_skipped_or_error(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "train" / "red" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(LayerlockError, match=r"cannot read image .*bad.png"):
        finetune(tiny_config(tmp_path, bad_images="error"))
    result = finetune(tiny_config(tmp_path, epochs=1, schedule="lp"))
    assert result.skipped_images == 1


# -- pieces --------------------------------------------------------------------------------


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = EpochOrder(10, 0, 0, 1, 4), EpochOrder(10, 0, 0, 1, 4)
    a.epoch = b.epoch = 3
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.skip = 4
    assert list(b) == list(a)[4:]
    a.epoch = 4
    assert list(a) != list(b)
    # two ranks: disjoint shards covering everything, equal lengths
    r0, r1 = EpochOrder(9, 0, 0, 2, 3), EpochOrder(9, 0, 1, 2, 3)
    assert len(r0) == len(r1) and set(r0) | set(r1) == set(range(9))
    # a last batch of one image is dropped (BatchNorm cannot train on it)
    assert len(EpochOrder(9, 0, 0, 1, 4)) == 8


def test_cli_help_ends_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("finetune", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert (
            "examples:" in out and out.rstrip().splitlines()[-1].strip().startswith("layerlock")
        ) or "torchrun" in out


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path: Path) -> None:
    import os
    import signal

    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    result = finetune(tiny_config(tmp_path, epochs=1), on_step=interrupt)
    assert result.interrupted and result.steps == 2
    assert (result.run_dir / "checkpoint.pt").is_file()
    assert not (result.run_dir / "model.safetensors").exists()
    resumed = finetune(tiny_config(tmp_path, epochs=1, resume=str(result.run_dir)))
    assert not resumed.interrupted and resumed.steps == 3


def test_evaluate_top5_only_beyond_five_classes() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    for classes in (3, 7):
        data = TensorDataset(torch.randn(20, 4), torch.arange(20) % classes)
        ev = ClassificationTask([str(c) for c in range(classes)]).evaluate(
            torch.nn.Linear(4, classes),
            DataLoader(data, batch_size=6),
            torch.device("cpu"),
            None,
        )
        assert (ev["val_top5"] is None) == (classes <= 5)
        assert len(ev["_per_class"]) == classes
        if ev["val_top5"] is not None:
            assert ev["val_acc"] <= ev["val_top5"] <= 1.0
        counts = torch.bincount(torch.arange(20) % classes).double()
        assert (
            abs(sum(a * c for a, c in zip(ev["_per_class"], counts.tolist())) / 20 - ev["val_acc"])
            < 1e-9
        )
