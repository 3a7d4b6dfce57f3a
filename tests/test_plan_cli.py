"""``layerlock plan``: table, JSON, PNG chart, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerlock.cli import main


def test_plan_json_matches_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            "timm:test_vit",
            "--schedule",
            "0:1, 2:3, 3:all",
            "--epochs",
            "4",
            "--layer-decay",
            "0.5",
            "--json",
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups"][-1] == "head" and len(data["groups"]) == 8
    # epochs 0-1 train the same groups: one column
    assert data["columns"] == [
        {"first_epoch": 0, "last_epoch": 1},
        {"first_epoch": 2, "last_epoch": 2},
        {"first_epoch": 3, "last_epoch": 3},
    ]
    assert [row[0] for row in data["trainable"]] == [False] * 7 + [True]
    assert [row[1] for row in data["trainable"]] == [False] * 5 + [True] * 3
    assert all(row[2] for row in data["trainable"])
    assert data["lr_multiplier"][6][1] == 0.5 and data["lr_multiplier"][5][1] == 0.25
    assert data["lr_multiplier"][0][0] == 0.0
    assert [e["step"] for e in data["events"]] == [0, 2, 3]


def test_plan_table_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "charts" / "plan.png"
    rc = main(
        [
            "plan",
            "timm:test_resnet",
            "--schedule",
            "gradual",
            "--epochs",
            "3",
            "--steps-per-epoch",
            "5",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "layer4.0" in captured.out and "step 5 (epoch 1): +layer4.0" in captured.out
    assert "never happen" in captured.err and f"wrote {out}" in captured.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_reports_schedule_errors_with_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "timm:test_vit", "--schedule", "0:1, 2:9, 3:blokcs.1", "--epochs", "4"]) == 1
    )
    err = capsys.readouterr().err
    assert "k=9 is out of range" in err and "did you mean 'blocks.1'" in err
    assert (
        main(["plan", "timm:test_vit", "--schedule", "gradul", "--epochs", "0", "--out", "x.jpg"])
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "--epochs must be >= 1" in err
        and "--out must name a .png" in err
        and "did you mean 'gradual'" in err
    )


def test_plan_usage_error_exit_code_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "timm:test_vit", "--epochs", "3"])  # --schedule missing
    assert info.value.code == 2


def test_plan_help_ends_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and text.rstrip().splitlines()[-1].strip().startswith(
        "layerlock plan"
    )


@pytest.mark.parametrize("epochs", ["10000", "1000000000"])
def test_plan_of_many_epochs_is_quick_and_compact(
    epochs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["plan", "timm:test_vit", "--schedule", "gradual", "--epochs", epochs])
    out = capsys.readouterr().out
    assert rc == 0
    # one column per epoch that changes something, then one for the identical rest
    assert f"7...{int(epochs) - 1}" in out and len(out) < 10_000
    rc = main(["plan", "timm:test_vit", "--schedule", "lp-ft", "--epochs", epochs, "--json"])
    data = json.loads(capsys.readouterr().out)
    half = int(epochs) // 2
    assert data["columns"] == [
        {"first_epoch": 0, "last_epoch": half - 1},
        {"first_epoch": half, "last_epoch": int(epochs) - 1},
    ]


def test_plan_png_of_many_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.png"
    args = ["plan", "timm:test_vit", "-s", "s0:1, s7:all", "-e", "100000", "--steps-per-epoch", "3"]
    assert main([*args, "--out", str(out)]) == 0
    assert out.stat().st_size < 200_000


@pytest.mark.parametrize("schedule", ["0:0", "0:all, 1:0", "0:1, 2:none"])
def test_plan_refuses_a_stage_where_nothing_trains(
    schedule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "timm:test_vit", "--schedule", schedule, "--epochs", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerlock plan: error: ")
    assert "nothing trains from epoch" in lines[0]
