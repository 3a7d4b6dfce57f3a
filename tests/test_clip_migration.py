"""open_clip_train's lock flags -> layerlock tower schedules: the same trainable parameters.

Each row of the README's migration table is checked against what open_clip_torch 3.3.0's
own ``lock_image_tower`` / ``lock_text_tower`` leave trainable on a small CLIP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerlock.config import load_config
from layerlock.finetune.contrastive import tower_unfreezer

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
GROUPS_PER_TOWER = 5  # embeddings, layer.0-2, proj


def _clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**TINY)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _layerlock(tmp_path: Path, *overrides: str) -> set[str]:
    model = _clip()
    cfg = load_config(overrides=["task=clip", f"run.out_dir={tmp_path}", *overrides])
    tower_unfreezer(model, cfg, epochs=1, steps_per_epoch=1)
    return _trainable(model)


def _schedule(k: int) -> str:
    """``--lock-*-unlocked-groups k`` as a tower schedule."""
    return "locked" if k == 0 else ("full" if k >= GROUPS_PER_TOWER else f"0:{k}")


@pytest.mark.parametrize("k", [0, 1, 2, GROUPS_PER_TOWER])
def test_lock_image_unlocked_groups(tmp_path: Path, k: int) -> None:
    """``--lock-image --lock-image-unlocked-groups k`` == ``towers.visual=<k> towers.text=full``."""
    ref = _clip()
    ref.lock_image_tower(unlocked_groups=k, freeze_bn_stats=False)
    ours = _layerlock(tmp_path, f"towers.visual={_schedule(k)}", "towers.text=full")
    assert ours == _trainable(ref)


@pytest.mark.parametrize("k", [0, 1, 3, GROUPS_PER_TOWER])
def test_lock_text_unlocked_layers(tmp_path: Path, k: int) -> None:
    """``--lock-text --lock-text-unlocked-layers k --lock-text-freeze-layer-norm`` ==
    ``towers.text=<k> towers.visual=full``."""
    ref = _clip()
    ref.lock_text_tower(unlocked_layers=k, freeze_layer_norm=True)
    ours = _layerlock(tmp_path, f"towers.text={_schedule(k)}", "towers.visual=full")
    assert ours == _trainable(ref)


def test_lock_both_towers(tmp_path: Path) -> None:
    """Both flags: ``logit_scale`` is the one difference. open_clip_train keeps it trainable
    with both towers fully locked (and its optimizer then trains the scale alone); layerlock
    refuses a run where no tower trains, and trains the scale whenever a tower does."""
    ref = _clip()
    ref.lock_image_tower(unlocked_groups=0)
    ref.lock_text_tower(unlocked_layers=1)
    ours = _layerlock(tmp_path, "towers.visual=locked", "towers.text=0:1")
    assert ours == _trainable(ref)
    ref = _clip()
    ref.lock_image_tower(unlocked_groups=0)
    ref.lock_text_tower(unlocked_layers=0)
    assert _trainable(ref) == {"logit_scale"}
    with pytest.raises(Exception, match="both towers are locked"):
        _layerlock(tmp_path, "towers.visual=locked", "towers.text=locked")


def test_lock_text_layer_norm_flag_is_required_by_open_clip() -> None:
    """open_clip 3.3.0 asserts ``freeze_layer_norm``; layerlock's equivalent of training the
    norms of locked groups is ``unfreeze.train_norm=true`` (available for both towers)."""
    with pytest.raises(AssertionError):
        _clip().lock_text_tower(unlocked_layers=1, freeze_layer_norm=False)
