"""Shared fixtures: tiny models built in pure torch, offline environment.

The offline switches are set when this module is imported, before anything imports
``huggingface_hub``: it reads ``HF_HUB_OFFLINE`` and its cache paths once, at import time
(timm, transformers, open_clip and datasets all import it), so setting them in a fixture
comes too late for every test module that imports one of those libraries at the top.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Processes started by the tests (DDP workers, the CLI) inherit the variables and
# reuse the directory; only the process that made it removes it.
if "LAYERLOCK_TESTS_CACHE" not in os.environ:
    os.environ["LAYERLOCK_TESTS_CACHE"] = tempfile.mkdtemp(prefix="layerlock-tests-cache-")
    atexit.register(shutil.rmtree, os.environ["LAYERLOCK_TESTS_CACHE"], ignore_errors=True)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": os.path.join(os.environ["LAYERLOCK_TESTS_CACHE"], "hf"),
    "TORCH_HOME": os.path.join(os.environ["LAYERLOCK_TESTS_CACHE"], "torch"),
    "MPLBACKEND": "Agg",
}
os.environ.update(OFFLINE_ENV)

import numpy as np  # noqa: E402
import pytest  # noqa: E402 - after the environment above
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from layerlock.data import Transforms, model_transforms  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo whatever a test does to the offline environment (a name no module shadows)."""
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    if "OMP_NUM_THREADS" not in os.environ:  # for the processes a test starts
        monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _restore_torch_settings() -> Iterator[None]:
    """Tests may change torch's thread count or determinism; the next test gets them back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class ConvBNNet(nn.Module):
    """stem (conv+BN) -> 3 blocks (conv+BN+ReLU) -> head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                for _ in range(3)
            ]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


class TinyViT(nn.Module):
    """Patch embedding + cls token + fixed (frozen) sin-cos position embedding, 2 blocks, norm, head."""

    def __init__(self, dim: int = 16, depth: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.randn(1, 17, dim)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # created frozen
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


@pytest.fixture
def cnn() -> ConvBNNet:
    torch.manual_seed(0)
    return ConvBNNet()


@pytest.fixture
def tiny_vit() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT()


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- data fixtures (tests/data) ---------------------------------------------------------

SMALL = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def write_image(path: Path, seed: int, mode: str = "RGB", size: int = 12) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


def write_csv(path: Path, rows: list[tuple[str, str]], header=("path", "label"), sep=",") -> Path:
    path.write_text(sep.join(header) + "\n" + "".join(f"{a}{sep}{b}\n" for a, b in rows))
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a random image: ``make_image(path, seed, mode="RGB", size=12)``."""
    return write_image


@pytest.fixture
def make_csv() -> Callable[..., Path]:
    """Write a CSV: ``make_csv(path, rows, header=("path", "label"), sep=",")``."""
    return write_csv


@pytest.fixture
def small() -> dict:
    """A timm data config of 16 x 16 RGB images."""
    return dict(SMALL)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/train/{cat,dog} and root/val/{cat,dog}: PNG and JPEG files, RGB and grayscale."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                ext = "png" if i % 2 == 0 else "jpg"
                mode = "L" if i == 1 else "RGB"
                write_image(root / split / cls / f"{i}.{ext}", seed=100 * c + i, mode=mode)
    return root


@pytest.fixture
def tf() -> Transforms:
    return model_transforms(data_config=SMALL)


def spawn_for_results(
    worker: Any, args: tuple[Any, ...], results: list[Path], nprocs: int = 2
) -> None:
    """``torch.multiprocessing.spawn`` that tolerates a crash in gloo's teardown.

    gloo sometimes aborts a process at exit ("terminate called without an active
    exception") after the worker returned. Every worker writes its result file as its last
    act of work, so the run counts when every result file exists; a missing one (the worker
    died while working) still fails the test.
    """
    import torch.multiprocessing as mp

    try:
        mp.spawn(worker, args=args, nprocs=nprocs, join=True)
    except mp.ProcessExitedException as exc:
        if not all(p.exists() for p in results):
            raise
        print(f"ignored a crash in process teardown after the results were written: {exc}")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (the demo's numbers are checked with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
