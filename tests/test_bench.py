"""layerlock bench runs on a tiny model and produces well-formed output (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from layerlock.bench import CONTROLS, count_walks, parse_levels, run_bench
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


def test_controls_and_cpu_time():
    r = run_bench(
        lambda: timm.create_model("test_vit", num_classes=3),
        batch_size=2,
        img_size=32,
        levels="1,all",
        repeats=2,
        warmup=0,
        memory=False,
        controls=True,
    )
    for lv in r.levels:
        assert set(lv.controls) == set(CONTROLS)
        for c in lv.controls.values():
            assert c["ratio_min"] <= c["ratio"] <= c["ratio_max"] and c["ratio_cpu"] > 0
        assert lv.ratio_cpu > 0 and len(lv.cpu["layerlock"].samples) == 2
    data = json.loads(json.dumps(r.to_dict()))
    assert set(data["levels"][0]["controls"]) == set(CONTROLS)
    assert "hand2 / hand" in _render(r)


def test_hand_loop_mirrors_the_unfreezer_optimizer():
    """The hand loop's AdamW does the same work per parameter as the Unfreezer's."""
    from layerlock.bench import _Runner

    model = timm.create_model("test_vit", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    r = _Runner(model, frozenset({7}), x, torch.tensor([0, 1]), controls=True)
    wds = {pg["weight_decay"] for pg in r.unfreezer.optimizer.param_groups}
    assert {pg["weight_decay"] for pg in r.hand_opt.param_groups} == wds == {0.0}
    trainable = {id(p) for p in r.hand_model.parameters() if p.requires_grad}
    assert trainable and len(trainable) == sum(p.requires_grad for p in r.ll_model.parameters())


def _render(result) -> str:
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(result.table())
    return console.export_text()


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


def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_components_script_runs():
    r = _script("step_components").measure("timm:test_vit", 32, "1,all", repeats=2)
    head, full = r["levels"]
    assert head["ll_param_groups"] > head["hand_param_groups"] == 1
    assert full["trainable_tensors"] > head["trainable_tensors"]
    for lv in r["levels"]:
        for key in ("ll_optimizer_wall", "ll_bookkeeping_cpu", "hand_zero_grad_wall"):
            assert lv[key]["min"] <= lv[key]["median"] <= lv[key]["max"]


def test_input_pipeline_script_runs(tmp_path, capsys):
    out = tmp_path / "p.json"
    r = _script("input_pipeline").main(
        ["--model", "test_resnet", "--batch-size", "2", "--steps", "1", "--rounds", "1",
         "--images", "4", "--classes", "2", "--width", "40", "--height", "30",
         "--workers", "0,auto", "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["configs"].keys() == r["configs"].keys()
    assert next(iter(r["configs"])) == "bare" and any("workers=0" in k for k in r["configs"])
    assert r["configs"]["bare"]["ratio_to_bare"]["median"] == 1.0
    assert "ratio" in capsys.readouterr().out
