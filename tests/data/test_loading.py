"""DataLoader options: worker count and the options that keep an accelerator fed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from layerlock.data import loader_options, loading, resolve_workers
from layerlock.errors import ConfigError

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_an_integer_is_used_as_given():
    assert resolve_workers(0, CPU) == 0
    assert resolve_workers(12, CUDA) == 12


@pytest.mark.parametrize(
    ("cores", "cpu", "cuda"),
    [(1, 0, 0), (2, 1, 1), (3, 1, 2), (5, 2, 4), (16, 7, 8), (64, 8, 8)],
)
def test_auto_keeps_a_core_for_training_and_half_on_cpu_at_least_one(monkeypatch, cores, cpu, cuda):
    monkeypatch.setattr(loading, "available_cores", lambda: cores)
    assert resolve_workers("auto", CPU) == cpu
    assert resolve_workers("auto", CUDA) == cuda
    assert resolve_workers("auto", torch.device("mps")) == cuda


@pytest.mark.parametrize("bad", [-1, "many", "4", True, 2.0])
def test_bad_worker_values_are_named(bad):
    with pytest.raises(ConfigError, match=r"workers must be a non-negative integer or 'auto', got"):
        resolve_workers(bad, CPU)


def test_available_cores_follows_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert loading.available_cores() == 3


def test_cpu_options():
    assert loader_options(CPU, 0) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(CPU, 2) == {
        "num_workers": 2,
        "pin_memory": False,
        "prefetch_factor": 2,
        "persistent_workers": False,
    }


def test_cuda_options_pin_prefetch_and_persist():
    assert loader_options(CUDA, 0) == {"num_workers": 0, "pin_memory": True}
    assert loader_options(CUDA, 3) == {
        "num_workers": 3,
        "pin_memory": True,
        "prefetch_factor": 4,
        "persistent_workers": True,
    }
    assert loader_options(CUDA, 3, persistent=False)["persistent_workers"] is False


def test_options_are_accepted_by_a_dataloader():
    data = TensorDataset(torch.arange(8.0))
    for workers in (0, 1):
        loader = DataLoader(data, batch_size=4, **loader_options(CPU, workers))
        assert torch.cat([b for (b,) in loader]).tolist() == list(range(8))
