"""finetune with run.strategy=fsdp under torchrun: 2 CPU processes (gloo), full checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from layerlock.runs import load_checkpoint, load_weights, read_jsonl
from test_finetune import make_folder


def _torchrun(tmp_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LAYERLOCK_DEBUG": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "layerlock", "finetune", "--model", "timm:test_vit", "--data", "folder",
        "--data-path", str(tmp_path / "data"), "--schedule", "gradual", "--epochs", "2",
        "--batch-size", "4", "--device", "cpu", "--out-dir", str(out), "--quiet", "--json",
        "run.strategy=fsdp", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_fsdp_run_writes_full_weights_and_resumes(tmp_path: Path) -> None:
    make_folder(tmp_path / "data", train=5)
    out = tmp_path / "run"
    part = _torchrun(tmp_path, out, "--stop-after", "3")  # exits 130: interrupted on purpose
    assert "layerlock finetune: error" not in part.stderr, part.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    ckpt = load_checkpoint(out / "checkpoint.pt")
    full = timm.create_model("test_vit", num_classes=3).state_dict()
    assert ckpt["model"].keys() == full.keys()  # the full state, not a shard
    assert all(ckpt["model"][k].shape == v.shape for k, v in full.items())
    done = _torchrun(tmp_path, out, "--resume", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and not summary["interrupted"]
    assert [e["step"] for e in read_jsonl(out / "events.jsonl")] == [0, 2]  # the unlock applied
    assert [r["epoch"] for r in read_jsonl(out / "epochs.jsonl")] == [1, 2]
    weights = load_weights(out / "model.safetensors")
    assert weights.keys() == full.keys()
    moved = [k for k in weights if not torch.equal(weights[k], ckpt["model"][k])]
    assert any(k.startswith("blocks.") for k in moved)  # the unlocked block trained after resume
