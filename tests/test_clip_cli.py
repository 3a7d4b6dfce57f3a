"""layerlock plan shows both towers' plans of a CLIP schedule; the clip summary."""

from __future__ import annotations

import json

import pytest

from layerlock.cli import main
from layerlock.data.clip_demo import register_demo_clip


def test_plan_both_towers(capsys: pytest.CaptureFixture[str]) -> None:
    name = register_demo_clip()
    args = ["plan", f"open_clip:{name}", "--schedule", "lit", "--epochs", "2", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    trains = dict(zip(data["groups"], data["trainable"]))
    assert trains["visual.proj"] == [False] and trains["visual.embeddings"] == [False]
    assert trains["text.embeddings"] == [True] and trains["logit_scale"] == [True]
    assert main(["plan", f"open_clip:{name}", "--schedule", "gradual", "--text", "locked",
                 "--epochs", "6"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "image tower 'gradual', text tower 'locked'" in " ".join(out.split())
    assert "+visual.layer.3" in out and "+text" not in out
