"""The embedded demo backbone: shipped weights, its data config, transfer to 5-9."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from layerlock import demo
from layerlock.data import demo as demo_data
from layerlock.errors import LayerlockError

pytest.importorskip("mlxtend")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_assets_are_small_and_describe_the_pretraining():
    assert demo.WEIGHTS.stat().st_size < 4 * 2**20
    cfg = demo.demo_config()
    assert cfg["pretraining"]["digits"] == [0, 1, 2, 3, 4]
    assert cfg["pretraining"]["held_out_accuracy"] >= 0.9
    assert 200_000 <= cfg["num_params_trunk"] <= 1_000_000
    assert cfg["pretrained_cfg"]["input_size"] == [1, 28, 28]


def test_backbone_loads_trunk_strictly_and_exposes_its_data_config():
    import timm
    from safetensors.torch import load_file

    model = demo.load_demo_backbone(5)
    state = load_file(str(demo.WEIGHTS))
    own = model.state_dict()
    assert set(own) - set(state) == {"head.weight", "head.bias"}
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert model.head.out_features == 5
    data_cfg = timm.data.resolve_model_data_config(model)
    pre = demo.demo_config()["pretrained_cfg"]
    assert data_cfg["input_size"] == (1, 28, 28)
    assert data_cfg["mean"] == tuple(pre["mean"]) and data_cfg["std"] == tuple(pre["std"])
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert demo.load_demo_backbone(0)(torch.zeros(1, 1, 28, 28)).shape == (1, 96)


def test_backbone_is_a_module_model_spec():
    from layerlock.models import build_model

    model = build_model(demo.DEMO_MODEL_SPEC, num_classes=3)
    assert model.head.out_features == 3


def test_mismatched_weights_are_refused(monkeypatch, tmp_path):
    import json

    cfg = demo.demo_config()
    cfg["model_kwargs"]["depth"] = 2
    bad = tmp_path / "demo_vit.json"
    bad.write_text(json.dumps(cfg))
    monkeypatch.setattr(demo_data, "CONFIG", bad)
    demo_data._config_cached.cache_clear()
    try:
        with pytest.raises(
            LayerlockError, match=r"do not fit the architecture.*unexpected \['blocks\.2"
        ):
            demo.load_demo_backbone(5)
    finally:
        demo_data._config_cached.cache_clear()


def test_pretrained_features_transfer_better_than_random():
    """Nearest-class-mean on frozen features: the pretrained trunk beats a random one."""
    from timm.models.vision_transformer import VisionTransformer

    task = demo.demo_task(seed=0, shots_per_class=30)

    def ncm_accuracy(model):
        model.eval()
        with torch.no_grad():
            ft = F.normalize(model(torch.stack([task.train[i][0] for i in range(150)])), dim=1)
            fv = F.normalize(model(torch.stack([task.val[i][0] for i in range(0, 2350, 3)])), dim=1)
        yt = torch.tensor(task.train.targets)
        yv = torch.tensor(task.val.targets[::3])
        means = torch.stack([ft[yt == c].mean(0) for c in range(5)])
        return ((fv @ means.T).argmax(1) == yv).float().mean().item()

    torch.manual_seed(0)
    random_trunk = VisionTransformer(**demo.demo_config()["model_kwargs"], num_classes=0)
    assert ncm_accuracy(demo.load_demo_backbone(0)) > ncm_accuracy(random_trunk) + 0.05


@pytest.mark.slow
def test_pretrain_script_writes_a_loadable_backbone(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_demo_backbone.py"
    subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "demo_vit.safetensors"))
    assert set(state) == set(load_file(str(demo.WEIGHTS)))
    assert not any(k.startswith("head.") for k in state)
