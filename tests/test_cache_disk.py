"""The feature cache on disk (``cache.dir``): reuse without a fill, never trust a bad file.

- a second run, and the head-only stage of another schedule (lp, then lp-ft), reuse the
  published file: the decision records count no fill;
- a corrupt, truncated or foreign file is detected and filled again;
- an interrupted fill publishes nothing (and leaves no temporary file behind);
- publishing a new file never changes what an earlier reader mapped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch

from layerlock import layer_groups
from layerlock.cache import FeatureCache
from layerlock.cache_file import FileWriter, map_published
from layerlock.finetune import finetune
from layerlock.split import split_model
from test_cache import Images
from test_finetune import tiny_config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # conftest restores the count after the test


def _cache(tmp_path: Path, **kw: object) -> FeatureCache:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)
    split = split_model(model, layer_groups(model), 6)
    assert split is not None
    kw = {"storage": "mmap", "dir": tmp_path, "batch_size": 4, **kw}
    return FeatureCache(split, Images(), **kw)  # type: ignore[arg-type]


def _run(tmp_path: Path, name: str, schedule: str) -> list[dict]:
    cfg = tiny_config(
        tmp_path,
        out_dir=str(tmp_path / name),
        schedule=schedule,
        epochs=2,
        deterministic_train_transform=True,
        cache="on",
        **{"cache.dir": str(tmp_path / "features")},
    )
    return finetune(cfg, progress=False).cache


def test_second_run_and_other_schedule_reuse_without_fill(tmp_path: Path) -> None:
    first = _run(tmp_path, "lp", "lp")
    assert first[0]["train_cached"] and first[0]["fills"] == 2 and first[0]["reused"] == 0
    again = _run(tmp_path, "lp-again", "lp")
    assert again[0]["fills"] == 0 and again[0]["reused"] == 2  # training + evaluation
    assert "reused from" in again[0]["line"]
    # lp-ft's head-only stage (epoch 1) has lp's key: same locked weights and images
    lpft = _run(tmp_path, "lp-ft", "lp-ft")
    assert lpft[0]["boundary"] == first[0]["boundary"]
    assert lpft[0]["fills"] == 0 and lpft[0]["reused"] == 2
    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len([f for f in files if f.endswith(".llfeat")]) == 2
    assert not [f for f in files if f.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
def test_damaged_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    good = _cache(tmp_path)
    assert good.path is not None and not good.reused
    expected = good.features.clone()
    path = good.path
    del good
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # one byte of the features
    elif damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[:8] = b"NOTMAGIC"
    path.write_bytes(bytes(data))
    again = _cache(tmp_path)
    assert not again.reused
    want = {"flip": "checksum mismatch", "truncate": "truncated", "header": "bad magic"}
    assert again.rejected is not None and want[damage] in again.rejected
    assert torch.equal(again.features, expected)
    assert _cache(tmp_path).reused  # the rebuilt file is trusted again


def test_interrupted_fill_publishes_nothing(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path, progress=stop)
    assert not list(tmp_path.glob("*.llfeat")) and not list(tmp_path.glob("*.tmp"))
    # a temporary file a killed process left behind is never read
    (tmp_path / ".features-0.llfeat.123.abcd.tmp").write_bytes(b"half")
    cache = _cache(tmp_path)
    assert not cache.reused and cache.rejected is None and cache.path is not None
    assert _cache(tmp_path).reused


def test_publishing_never_changes_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "f.llfeat"
    key, shape = {"k": 1}, (4, 2)
    for value in (1.0, 2.0):
        w = FileWriter(path, key, shape, torch.float32)
        w.features.fill_(value)
        w.labels.zero_()
        if value == 1.0:
            w.publish()
            reader, _ = map_published(path, shape, torch.float32)
        else:
            # two writers of one key never share a temporary file (O_EXCL, unique names)
            other = FileWriter(path, key, shape, torch.float32)
            assert other.tmp != w.tmp
            other.discard()
            w.publish()
    assert float(reader.sum()) == 8.0  # the old inode, still complete
    assert float(map_published(path, shape, torch.float32)[0].sum()) == 16.0
    assert os.listdir(tmp_path) == ["f.llfeat"]
