"""FeatureCache: cached suffix training equals the uncached path; invalidation; budget; mmap."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import trainable_names
from layerlock import layer_groups, lock
from layerlock.cache import CacheBudgetError, FeatureCache, should_cache
from layerlock.errors import ConfigError
from layerlock.split import split_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class Images(Dataset):
    """A tiny image dataset with a ``transform`` (part of the cache key)."""

    def __init__(self, n: int = 12, size: int = 32, transform=None) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.arange(n) % 3
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return (self.transform(x) if self.transform is not None else x), self.y[i]


class Scale:
    def __init__(self, s: float) -> None:
        self.s = s

    def __call__(self, x):
        return x * self.s

    def __repr__(self) -> str:
        return f"Scale({self.s})"


class Jitter:
    def __call__(self, x):
        return x + 0.1 * torch.randn_like(x)

    def __repr__(self) -> str:
        return "Jitter()"


BATCH = 4  # the fill and the training use the same batches: samples [0, 4), [4, 8), [8, 12)
LR, EPOCHS = 0.05, 3


def _locked(base, k):
    """A copy of ``base`` with k unlocked groups, frozen prefix in eval mode (frozen BN stats)."""
    model = copy.deepcopy(base)
    lock(model, unlocked_groups=k, freeze_bn_stats=True)
    model.train()
    groups = layer_groups(model)
    split = split_model(model, groups, len(groups) - k)
    assert split is not None
    return model, split


def _batches(data):
    return [(data.x[i : i + BATCH], data.y[i : i + BATCH]) for i in range(0, len(data), BATCH)]


def _train(model, forward, batches):
    """Plain SGD (no momentum): a parameter difference grows by at most lr x the gradient
    difference per step; Adam would turn float noise in near-zero gradients into steps of lr."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for _ in range(EPOCHS):
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return torch.tensor(losses), {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name, k", [("test_vit", 1), ("test_vit", 2), ("test_resnet", 1), ("test_resnet", 2)]
)
def test_cached_training_equals_uncached(name, k):
    base = timm.create_model(name, num_classes=3)
    data = Images()
    plain, _ = _locked(base, k)
    cached, split = _locked(base, k)
    cache = FeatureCache(split, data, dtype=torch.float32, budget_bytes=2**26, batch_size=BATCH)
    served = list(cache.loader(BATCH))  # unshuffled: the fill's batches
    # The locked prefix in training mode computes, batch for batch, what the fill stored.
    with torch.no_grad():
        for (x, y), (feats, labels) in zip(_batches(data), served, strict=True):
            assert torch.equal(feats, split.prefix(x)) and torch.equal(labels, y)
    # One step on the first batch: the same loss and gradients. Both sides run the same
    # float32 suffix on bit-identical features; the tolerance only allows the full forward
    # to order a reduction differently (float32 keeps ~7 digits).
    (x, y), (feats, labels) = _batches(data)[0], served[0]
    loss_plain = torch.nn.functional.cross_entropy(plain(x), y)
    loss_cached = torch.nn.functional.cross_entropy(split.suffix(feats), labels)
    torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-6, atol=1e-6)
    loss_plain.backward()
    loss_cached.backward()
    grads_plain = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    grads_cached = {n: p.grad for n, p in cached.named_parameters() if p.grad is not None}
    assert grads_plain.keys() == grads_cached.keys() == trainable_names(plain)
    for n, g in grads_plain.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(grads_cached[n], g, rtol=1e-5, atol=1e-6 * scale, msg=n)
    plain.zero_grad(set_to_none=True)
    cached.zero_grad(set_to_none=True)
    # Whole runs, 9 SGD steps each. Gradients that agree to ~1e-5 move the parameters
    # apart by about lr x steps x 1e-5; features off by 1% already move them by ~1e-4,
    # another sample's features by ~1e-1.
    losses_plain, params_plain = _train(plain, plain, _batches(data))
    losses_cached, params_cached = _train(cached, split.suffix, served)
    steps = EPOCHS * len(served)
    tol = LR * steps * 1e-5
    torch.testing.assert_close(losses_cached, losses_plain, rtol=0, atol=1e-5)
    start = dict(base.named_parameters())
    trained = trainable_names(plain)
    for n, p in params_plain.items():
        torch.testing.assert_close(params_cached[n], p, rtol=0, atol=tol, msg=n)
        if n not in trained:
            assert torch.equal(p, start[n]) and torch.equal(params_cached[n], start[n]), n
    assert any(not torch.equal(params_plain[n], start[n]) for n in trained)  # the suffix did train
    # Buffers too (BatchNorm statistics of the trainable suffix move alike).
    for (n, x), (_, y) in zip(plain.named_buffers(), cached.named_buffers(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=tol, msg=n)


def _cache(model, boundary, data, **kw):
    groups = layer_groups(model)
    split = split_model(model, groups, boundary)
    assert split is not None
    return split, FeatureCache(split, data, budget_bytes=2**26, **kw)


def test_fp16_storage_and_restored_modes():
    model = timm.create_model("test_resnet", num_classes=3).train()
    split, cache = _cache(model, 5, Images())
    assert cache.features.dtype == torch.float16 and cache.feature_shape == (model.num_features,)
    assert cache.nbytes == 12 * model.num_features * 2
    assert all(m.training for m in model.modules())  # fill ran in eval mode, flags restored
    model.eval()
    with torch.no_grad():
        ref = split.prefix(Images().x[:1])
    torch.testing.assert_close(cache.features[0:1].float(), ref, atol=1e-2, rtol=1e-2)
    feats, labels = next(iter(cache.loader(batch_size=5)))
    assert feats.dtype == torch.float32 and feats.shape == (5, model.num_features)
    assert labels.tolist() == [0, 1, 2, 0, 1]


def test_invalidated_when_boundary_moves():
    model = timm.create_model("test_vit", num_classes=3)
    groups = layer_groups(model)
    _, cache = _cache(model, 7, Images())
    assert cache.stale_reason() is None
    moved = split_model(model, groups, 6)
    assert cache.stale_reason(moved) == "the boundary moved from group 7 to 6 (unlock)"


def test_invalidated_when_frozen_weights_change_not_trainable_ones():
    model = timm.create_model("test_resnet", num_classes=3)
    _, cache = _cache(model, 4, Images())
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # trainable suffix: no effect on the features
    assert cache.stale_reason() is None
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(1.5)
    assert "weights or BatchNorm statistics changed" in cache.stale_reason()


def test_invalidated_when_bn_statistics_change():
    model = timm.create_model("test_resnet", num_classes=3)
    _, cache = _cache(model, 4, Images())
    model.layer1[0].bn1.running_mean += 0.5
    assert "BatchNorm statistics" in cache.stale_reason()


def test_invalidated_when_preprocessing_changes():
    model = timm.create_model("test_vit", num_classes=3)
    data = Images(transform=Scale(1.0))
    _, cache = _cache(model, 7, data)
    assert cache.key.transform == "Scale(1.0)"
    data.transform = Scale(2.0)
    assert cache.stale_reason() == "the preprocessing changed"


def test_budget_overflow_message():
    model = timm.create_model("test_vit", num_classes=3)
    split = split_model(model, layer_groups(model), 3)
    with pytest.raises(
        CacheBudgetError,
        match=r"needs 7\.5 KB .*12 samples x 1 view\(s\) x 5x64 float16.* budget is 1\.0 KB",
    ):
        FeatureCache(split, Images(), budget_bytes=1024)


def test_bad_arguments_listed_together(tmp_path):
    model = timm.create_model("test_vit", num_classes=3)
    split = split_model(model, layer_groups(model), 3)
    with pytest.raises(
        ConfigError,
        match="storage must be 'memory' or 'mmap', got 'disk'; views must be an int >= 1, got 0",
    ):
        FeatureCache(split, Images(), storage="disk", views=0)
    with pytest.raises(ConfigError, match="needs dir="):
        FeatureCache(split, Images(), storage="mmap")


def test_mmap_round_trip_and_reuse(tmp_path):
    model = timm.create_model("test_vit", num_classes=3)
    data = Images()
    _, mem = _cache(model, 6, data)
    _, mm = _cache(model, 6, data, storage="mmap", dir=tmp_path)
    assert mm.path is not None and mm.path.exists() and not mm.reused
    assert torch.equal(mm.features, mem.features) and torch.equal(mm.labels, mem.labels)
    _, again = _cache(model, 6, data, storage="mmap", dir=tmp_path)
    assert again.reused and torch.equal(again.features, mem.features)
    assert torch.equal(again.labels, mem.labels)
    with torch.no_grad():
        model.patch_embed.proj.weight.add_(0.1)
    _, changed = _cache(model, 6, data, storage="mmap", dir=tmp_path)
    assert not changed.reused and changed.path != mm.path


def test_fixed_augmented_views():
    model = timm.create_model("test_vit", num_classes=3)
    data = Images(transform=Jitter())
    _, c1 = _cache(model, 7, data, views=2, seed=3)
    _, c2 = _cache(model, 7, data, views=2, seed=3)
    assert c1.features.shape[0] == 24
    assert torch.equal(c1.features, c2.features)  # views are reproducible
    v0 = next(iter(c1.loader(batch_size=12, epoch=0)))[0]
    v1 = next(iter(c1.loader(batch_size=12, epoch=1)))[0]
    v2 = next(iter(c1.loader(batch_size=12, epoch=2)))[0]
    assert not torch.equal(v0, v1) and torch.equal(v0, v2)


def test_loader_shuffles_like_dataloader():
    model = timm.create_model("test_vit", num_classes=3)
    data = TensorDataset(torch.randn(10, 3, 32, 32), torch.arange(10))
    _, cache = _cache(model, 7, data)
    got = [
        y
        for _, ys in cache.loader(3, shuffle=True, generator=torch.Generator().manual_seed(5))
        for y in ys.tolist()
    ]
    want = [
        y
        for _, ys in DataLoader(data, 3, shuffle=True, generator=torch.Generator().manual_seed(5))
        for y in ys.tolist()
    ]
    assert got == want and len(cache.loader(3)) == 4


def test_should_cache_decisions():
    on = should_cache(14, 13, epochs=5, nbytes=10_000_000)
    assert on.cache and on.reason.startswith("cache on:") and on.speedup == pytest.approx(16 / 3)
    short = should_cache(14, 13, epochs=1)
    assert not short.cache and "does not repay" in short.reason
    assert should_cache(14, 13, epochs=3, views=2).cache
    assert not should_cache(14, 13, epochs=2, views=2).cache
    rand = should_cache(14, 13, epochs=5, deterministic=False)
    assert not rand.cache and "random" in rand.reason
    big = should_cache(14, 13, epochs=5, nbytes=2**31, budget_bytes=2**30)
    assert not big.cache and "over the 1.0 GB budget" in big.reason
    none = should_cache(14, 13, epochs=5, split="no split recipe for Foo")
    assert not none.cache and none.reason == "cache off: no split recipe for Foo"
    assert not should_cache(14, 0, epochs=5).cache
    # Training early groups saves little: a boundary at 1 of 14 is not worth caching.
    low = should_cache(14, 1, epochs=50)
    assert not low.cache and "below" in low.reason
