"""task=clip under DDP (2 CPU processes, gloo): global negatives and replicas that agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import spawn_for_results
from layerlock.distributed import free_port
from layerlock.finetune.contrastive import clip_outputs, contrastive_loss

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**TINY)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(1, 400, (8, 16), generator=g)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_clip())
        x, t = _batch()
        share = slice(4 * rank, 4 * rank + 4)
        img, txt, scale, _ = clip_outputs(model(x[share], t[share]))
        loss = contrastive_loss("clip", rank=rank, world=2)(img, txt, scale)
        loss.backward()
        grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_negatives_equal_the_concatenated_batch(tmp_path: Path) -> None:
    results = [tmp_path / f"rank{r}.pt" for r in range(2)]
    spawn_for_results(_worker, (free_port(), str(tmp_path)), results)
    model = _clip()
    x, t = _batch()
    img, txt, scale, _ = clip_outputs(model(x, t))
    loss = contrastive_loss("clip")(img, txt, scale)
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # every rank computes the loss of the whole (gathered) batch
        assert torch.allclose(got["loss"], loss, atol=1e-6)
        for n, p in model.named_parameters():
            assert torch.allclose(got["grads"][n], p.grad, atol=1e-6, rtol=1e-4), (rank, n)


@pytest.mark.slow
def test_replicas_agree_after_tower_unlocks(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERLOCK_DEBUG": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "layerlock", "finetune", "task=clip", "run.epochs=2", "run.batch_size=4",
        "data.shots_per_class=4", "run.device=cpu", "data.workers=0", "eval.at_start=false",
        "towers.visual=0:0, 1:1", "towers.text=gradual", f"run.out_dir={out}", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas_agree"] is True
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert any("visual" in e.get("label", "") for e in events[1:]), events
