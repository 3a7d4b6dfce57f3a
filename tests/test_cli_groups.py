"""``layerlock groups``: table, JSON, selections and one-line errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from layerlock.cli import main


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["groups", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_table_of_a_timm_model(capsys: pytest.CaptureFixture[str]) -> None:
    table = _json(capsys, "timm:test_vit", "--num-classes", "3", "-k", "2")
    rows = table["rows"]
    assert rows[0]["name"] == "stem" and rows[-1]["name"] == "head"
    assert [r["trainable"] for r in rows] == [False] * (len(rows) - 2) + [True, True]
    assert [r["unlocked_by_k"] for r in rows] == list(range(len(rows), 0, -1))
    assert sum(r["params"] for r in rows) == table["total_params"]
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9


def test_batchnorm_counts_and_coarse(capsys: pytest.CaptureFixture[str]) -> None:
    table = _json(capsys, "timm:resnet18", "--coarse")
    assert [r["name"] for r in table["rows"]] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    ]
    assert [r["batchnorm"] for r in table["rows"]] == [1, 4, 5, 5, 5, 0]


def test_groups_selection(capsys: pytest.CaptureFixture[str]) -> None:
    table = _json(capsys, "timm:resnet18", "--groups", "layer4.*,fc")
    assert [r["name"] for r in table["rows"] if r["trainable"]] == ["layer4.0", "layer4.1", "fc"]


def test_user_module_factory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "my_models.py"
    file.write_text(
        textwrap.dedent(
            """
            import torch.nn as nn
            def build(num_classes=2):
                return nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), nn.Linear(8, num_classes))
            """
        )
    )
    table = _json(capsys, f"module:{file}:build")
    assert table["adapter"] == "generic" and len(table["rows"]) == 3


def test_rich_table_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["groups", "timm:test_resnet", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "groups via timm adapter" in out and "trainable" in out and "fc" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["timm:vit_tiny"], "unknown timm model 'vit_tiny'; did you mean 'vit_tiny_patch16_224"),
        (["tim:resnet18"], "unknown model family 'tim'.*did you mean 'timm:resnet18'"),
        (["timm:resnet18", "--groups", "layr4"], "unknown group 'layr4'; did you mean 'layer4"),
        (["timm:resnet18", "-k", "-1"], "unlocked_groups must be >= 0, got -1"),
        (["torchvision:resnet5"], "unknown torchvision model 'resnet5'"),
        (["module:nowhere_xyz:build"], "cannot import 'nowhere_xyz'"),
    ],
)
def test_errors_are_one_line_exit_1(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    assert main(["groups", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["groups"])
    assert exc.value.code == 2


def test_hf_model_type_offline(capsys: pytest.CaptureFixture[str]) -> None:
    table = _json(capsys, "hf:vit", "-k", "1")
    names = [r["name"] for r in table["rows"]]
    assert table["adapter"] == "transformers"
    assert names[0] == "embeddings" and names[1] == "layer.0"
    assert [r["name"] for r in table["rows"] if r["trainable"]] == [names[-1]]


def test_torchvision_model(capsys: pytest.CaptureFixture[str]) -> None:
    table = _json(capsys, "torchvision:resnet18", "--coarse")
    assert table["adapter"] == "torchvision"
    assert len(table["rows"]) == 6


def test_tower_selection_on_a_clip_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tiny_clip.py"
    file.write_text(
        textwrap.dedent(
            """
            import open_clip
            def build():
                vision = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
                text = dict(context_length=8, vocab_size=50, width=32, heads=2, layers=2)
                return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
            """
        )
    )
    both = _json(capsys, f"module:{file}:build", "-k", "1")
    assert {r["tower"] for r in both["rows"]} == {"visual", "text", "model"}
    assert sorted(r["name"] for r in both["rows"] if r["trainable"]) == [
        "logit_scale",
        "text.proj",
        "visual.proj",
    ]
    visual = _json(capsys, f"module:{file}:build", "-k", "2", "--tower", "visual")
    assert {r["tower"] for r in visual["rows"]} == {"visual"}
    assert [r["name"] for r in visual["rows"] if r["trainable"]] == [
        "visual.layer.1",
        "visual.proj",
    ]
