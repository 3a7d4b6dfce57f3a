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
from collections.abc import Iterator

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

import pytest  # noqa: E402 - after the environment above
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo whatever a test does to the offline environment."""
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
