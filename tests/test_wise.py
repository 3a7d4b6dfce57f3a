"""WiSE-FT: interpolation endpoints, the command, reuse of unchanged groups, wise=auto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerlock.cli import main
from layerlock.errors import ConfigError, LayerlockError
from layerlock.finetune import finetune
from layerlock.finetune.retention import START_FILE
from layerlock.runs import load_weights
from layerlock.wise import interpolate, parse_alphas, wise
from test_finetune import make_folder, tiny_config


def test_interpolation_endpoints_are_bit_identical() -> None:
    torch.manual_seed(0)
    start = {"w": torch.randn(5), "b": torch.randn(3), "n": torch.tensor(7), "same": torch.ones(2)}
    end = {"w": torch.randn(5), "b": torch.randn(3), "n": torch.tensor(9), "same": torch.ones(2)}
    at0, at1 = interpolate(start, end, 0.0), interpolate(start, end, 1.0)
    assert all(torch.equal(at0[k], start[k]) for k in start)
    assert all(torch.equal(at1[k], end[k]) for k in end)
    mid = interpolate(start, end, 0.3)
    assert torch.equal(mid["same"], start["same"])  # equal in both: kept exactly
    assert torch.allclose(mid["w"], 0.7 * start["w"] + 0.3 * end["w"])
    with pytest.raises(LayerlockError, match="differ in their tensors"):
        interpolate(start, {"w": end["w"]}, 0.5)


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        ("0:1:0.5", [0.0, 0.5, 1.0]),
        ("0:1:0.1", [round(i / 10, 10) for i in range(11)]),
        ("1,0.25", [1.0, 0.25]),
    ],
)
def test_alphas_parse(spec: str, values: list[float]) -> None:
    assert parse_alphas(spec) == values


@pytest.mark.parametrize("spec", ["0:1:0", "a:b:c", "0,1.5", ""])
def test_bad_alphas_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="alphas"):
        parse_alphas(spec)


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    make_folder(tmp_path / "data")
    other = f"other=folder:{tmp_path / 'data' / 'val'}"
    cfg = tiny_config(tmp_path, epochs=3, schedule="lp-ft:at=1", **{"eval.sets": other})
    return finetune(cfg).run_dir


def test_wise_reproduces_the_endpoints_and_their_accuracy(finished: Path) -> None:
    result = wise(finished, alphas="0,1")
    rows = {r["alpha"]: r for r in result.rows}
    epochs = [json.loads(x) for x in (finished / "epochs.jsonl").read_text().splitlines()]
    assert result.start_epoch == 1  # the end of lp-ft's head-only stage
    assert rows[1.0]["val_acc"] == epochs[-1]["val_acc"]  # the final weights, evaluated again
    assert rows[0.0]["val_acc"] == epochs[0]["val_acc"]  # the start = after epoch 1
    assert rows[1.0]["other/val_acc"] == epochs[-1]["other/val_acc"]
    assert (finished / "wise.json").is_file() and (finished / "wise.png").is_file()


def test_wise_saves_the_chosen_mixture(finished: Path) -> None:
    result = wise(finished, alphas="0:1:0.5", save=0.5)
    assert result.saved == finished / "wise-0.5.safetensors"
    start, end = load_weights(finished / START_FILE), load_weights(finished / "model.safetensors")
    saved = load_weights(result.saved)
    assert all(torch.equal(saved[k], interpolate(start, end, 0.5)[k]) for k in saved)


def test_unchanged_groups_are_run_once(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    # the first stage trains the head alone; the second the last block too: the rest never moves
    run = finetune(tiny_config(tmp_path, epochs=2, schedule="0:1, 1:2")).run_dir
    result = wise(run, alphas="0:1:0.5")
    assert result.reused_groups > 0
    direct = wise(run, alphas="1")  # reused prefix and plain evaluation agree at α=1
    assert result.rows[-1]["val_acc"] == pytest.approx(direct.rows[0]["val_acc"], abs=1e-9)


def test_wise_command_prints_a_table(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wise", str(finished), "--alphas", "0:1:0.5"]) == 0
    out = capsys.readouterr().out
    assert "WiSE-FT" in out and "other" in out and "best on the validation split" in out


def test_wise_of_an_unfinished_run_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = finetune(tiny_config(tmp_path, epochs=2), stop_after=1).run_dir
    capsys.readouterr()
    assert main(["wise", str(part)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("layerlock wise: error:") and "resume it first" in err


def test_wise_auto_in_finetune(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    result = finetune(
        tiny_config(tmp_path, epochs=2, schedule="lp-ft:at=1", **{"retain.wise": "auto"})
    )
    assert result.wise is not None and 0.0 <= result.wise["best_alpha"] <= 1.0
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["wise"]["best_alpha"] == result.wise["best_alpha"]
    assert (result.run_dir / f"wise-{result.wise['best_alpha']:g}.safetensors").is_file()
