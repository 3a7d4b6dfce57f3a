"""layerlock bench runs on a tiny model and produces well-formed output (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from layerlock.bench import count_walks, parse_levels, run_bench
from layerlock.cli import main
from layerlock.errors import ConfigError
from layerlock.unfreezer import Unfreezer


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_run_bench_structure():
    r = run_bench(
        lambda: timm.create_model("test_resnet", num_classes=3),
        batch_size=2,
        img_size=32,
        levels="1,all",
        repeats=2,
        memory=False,
    )
    assert [lv.label for lv in r.levels] == ["k=1", f"k={r.num_groups}"]
    head, full = r.levels
    assert head.trainable == ["fc"] and head.boundary == r.num_groups - 1
    assert (
        len(head.layerlock.samples) == 2
        and head.layerlock.min <= head.layerlock.median <= head.layerlock.max
    )
    assert head.cached is not None and head.prefix is not None and head.cached_speedup > 0
    assert head.feature_bytes_per_sample > 0
    assert head.ideal == {"full": 18.0, "locked": 8.0, "cached": 3.0, "prefix": 5.0}
    assert full.cached is None and "nothing is locked" in full.cache_note
    assert r.per_step_walks == 0
    data = json.loads(json.dumps(r.to_dict()))
    assert data["levels"][0]["ratio"] > 0 and data["memory_method"] == "not measured"


def test_presets_add_stages():
    r = run_bench(
        lambda: timm.create_model("test_vit", num_classes=3),
        batch_size=2,
        img_size=32,
        levels="1",
        presets=True,
        repeats=1,
        warmup=0,
        memory=False,
    )
    labels = [lv.label for lv in r.levels]
    assert labels[0] == "k=1" and any(lbl.startswith("chain-thaw") for lbl in labels)
    sets = [tuple(lv.trainable) for lv in r.levels]
    assert len(sets) == len(set(sets))  # each distinct trainable set once


def test_cli_json_with_memory(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(
        [
            "bench",
            "timm:test_vit",
            "--img-size",
            "32",
            "--batch-size",
            "2",
            "--levels",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [lv["label"] for lv in printed["levels"]] == ["k=1"]
    mem = printed["levels"][0]["memory"]
    assert set(mem) == {"layerlock", "hand", "cached"}
    assert all(isinstance(v, int) and v >= 0 for v in mem.values())


def test_cli_table(capsys):
    assert (
        main(
            [
                "bench",
                "timm:test_vit",
                "--img-size",
                "32",
                "--batch-size",
                "2",
                "--levels",
                "2",
                "--repeats",
                "1",
                "--no-memory",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "k=2" in text and "ratio" in text and "walks over all parameters" in text


def test_bad_levels_message():
    with pytest.raises(ConfigError, match=r"--levels: '0', 'x' not valid; use k in 1\.\.8"):
        parse_levels("0,2,x", 8)
    assert main(["bench", "timm:test_vit", "--levels", "99", "--img-size", "32"]) == 1


def test_unfreezer_step_walks_nothing():
    model = timm.create_model("test_vit", num_classes=3)
    u = Unfreezer(model, "lp-ft", epochs=2, steps_per_epoch=2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(u.model(x), y).backward()
    assert count_walks(u.step) == 0
    # The unlock event (step 2) is allowed to walk: it calls lock().
    torch.nn.functional.cross_entropy(u.model(x), y).backward()
    assert count_walks(u.step) > 0
