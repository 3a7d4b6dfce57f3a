"""Transforms from the model's own preprocessing config."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from layerlock.data import image_folder, model_transforms
from layerlock.errors import ConfigError


def test_grayscale_and_rgb_conversion_follow_in_chans(tree, small):
    gray = model_transforms(data_config={"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.5,)})
    assert gray.mode == "L"
    ds = image_folder(tree / "train", transform=gray.eval, mode=gray.mode)
    assert all(ds[i][0].shape == (1, 16, 16) for i in range(len(ds)))
    rgb = model_transforms(data_config=small)
    ds = image_folder(tree / "train", transform=rgb.eval, mode=rgb.mode)
    assert ds[1][0].shape == (3, 16, 16)  # a grayscale file becomes 3 channels
    with pytest.raises(ConfigError, match="4 input channels"):
        model_transforms(data_config={"input_size": (4, 16, 16)})


def test_random_augmentation_only_on_train_and_deterministic_option(tree, small):
    aug = {"scale": (0.1, 1.0), "hflip": 0.5}
    tf = model_transforms(data_config=small, augmentation=aug)
    img = Image.open(tree / "train" / "cat" / "0.png").convert("RGB")
    torch.manual_seed(0)
    train_outs = [tf.train(img) for _ in range(6)]
    assert any(not torch.equal(train_outs[0], t) for t in train_outs[1:])
    assert all(torch.equal(tf.eval(img), tf.eval(img)) for _ in range(3))
    det = model_transforms(data_config=small, augmentation=aug, deterministic_train=True)
    assert det.train is det.eval and det.deterministic_train
    assert torch.equal(det.train(img), tf.eval(img))


def test_transforms_from_timm_model_config():
    import timm

    model = timm.create_model("test_vit", num_classes=2)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "mean": (0.1, 0.2, 0.3),
        "input_size": (3, 32, 32),
    }
    tf = model_transforms(model)
    assert tf.data_config["mean"] == (0.1, 0.2, 0.3) and tf.data_config["input_size"] == (3, 32, 32)
    x = tf.eval(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(
        x[:, 0, 0], (1 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor(model.pretrained_cfg["std"])
    )


def test_model_recommended_augmentation_is_used_and_unknown_keys_rejected():
    import timm

    model = timm.create_model("test_vit", num_classes=2)
    model.pretrained_cfg = {**model.pretrained_cfg, "train_augmentation": {"hflip": 0.0}}
    names = [type(t).__name__ for t in model_transforms(model).train.transforms]
    assert "RandomHorizontalFlip" not in names
    names = [
        type(t).__name__ for t in model_transforms(timm.create_model("test_vit")).train.transforms
    ]
    assert "RandomHorizontalFlip" in names
    with pytest.raises(
        ConfigError, match=r"unknown augmentation option\(s\): 'hflp'; did you mean 'hflip'"
    ):
        model_transforms(model, augmentation={"hflp": 0.0})


def test_preprocess_callables_are_used_as_given():
    def train(img):
        return "train"

    def evaluation(img):
        return "eval"

    tf = model_transforms(preprocess=(train, evaluation))
    assert (tf.train, tf.eval, tf.mode) == (train, evaluation, "RGB")
    tf = model_transforms(preprocess=(train, evaluation), deterministic_train=True)
    assert tf.train is evaluation


def test_open_clip_model_gets_its_own_preprocessing():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": 1, "width": 32, "patch_size": 8, "image_size": 32, "head_width": 16},
        text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    )
    tf = model_transforms(model)
    assert tf.data_config["input_size"] == (3, 32, 32)
    assert tf.eval(Image.new("L", (40, 60))).shape == (3, 32, 32)
