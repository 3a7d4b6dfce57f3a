"""Shared fixtures: tiny models built in pure torch, offline environment."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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
