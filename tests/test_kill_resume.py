"""kill -9 in the middle of a run, then --resume: the final weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layerlock.runs import load_weights
from test_finetune import make_folder


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "layerlock", "finetune", "--model", "timm:test_vit",
        "--data", "folder", "--data-path", str(data), "--schedule", "gradual",
        "--epochs", "8", "--batch-size", "4", "--device", "cpu", "--out-dir", str(out),
        "--quiet", "run.log_every=1", *extra,
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("after_rows", [5, 11])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, after_rows: int) -> None:
    data = make_folder(tmp_path / "data")
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(data, full), env=ENV, check=True, capture_output=True, timeout=300)
    # killed after the first checkpoint (end of epoch 1, step 3): before it, "start again"
    proc = subprocess.Popen(_cmd(data, cut), env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    steps = cut / "steps.jsonl"
    while proc.poll() is None and time.monotonic() < deadline:
        if steps.is_file() and len(steps.read_text().splitlines()) >= after_rows:
            proc.send_signal(signal.SIGKILL)  # wherever it is: mid-step, mid-write
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run(
        _cmd(data, cut, "--resume", str(cut)), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_weights(full / "model.safetensors"), load_weights(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
