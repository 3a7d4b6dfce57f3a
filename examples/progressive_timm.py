"""Progressive fine-tuning of a timm model on an ImageFolder tree, from Python.

Writes a tiny three-class data set (coloured noise) so that it runs anywhere, offline, in
seconds; point ``data_path`` at your own ``train/`` + ``val/`` folders and ``model`` at a
real backbone (``timm:resnet50`` with ``pretrained=True``) for actual work.

    python examples/progressive_timm.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from layerlock import UnfreezeOptions
from layerlock.config import DataOptions, FinetuneConfig, ModelOptions, RunOptions
from layerlock.finetune import finetune


def write_toy_data(root: Path, per_class: int = 6) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: one dominant colour each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., c] = 220
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def main() -> None:
    data = write_toy_data(Path(tempfile.mkdtemp()) / "toy")
    config = FinetuneConfig(
        # a tiny CNN with BatchNorm; try ModelOptions("timm:resnet18", pretrained=True)
        model=ModelOptions("timm:test_resnet"),
        data=DataOptions(source="folder", path=str(data)),
        # head first, then one more group from the top every epoch
        unfreeze=UnfreezeOptions("gradual", lr=3e-3, layer_decay=0.8),
        run=RunOptions(epochs=3, batch_size=6, out_dir="runs/example"),
    )
    result = finetune(config)
    print(f"top-1 {result.final_top1:.1%} after {result.steps} steps; files in {result.run_dir}")


if __name__ == "__main__":
    main()
