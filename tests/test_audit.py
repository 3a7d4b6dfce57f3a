"""audit / fingerprint: detect any change of locked parameters and frozen BN buffers."""

from __future__ import annotations

import torch
from torch import nn

from layerlock import lock
from layerlock.audit import audit, fingerprint


def test_detects_changed_locked_parameter_and_ignores_trainable(cnn: nn.Module) -> None:
    lock(cnn, 1, freeze_bn_stats=True)
    fp = fingerprint(cnn)
    trainable = {n for n, p in cnn.named_parameters() if p.requires_grad}
    assert set(fp.params).isdisjoint(trainable) and fp.params
    with torch.no_grad():
        cnn.head.weight.add_(1.0)  # trainable: not audited
    assert audit(cnn, fp).ok
    with torch.no_grad():
        cnn.blocks[0][0].weight.view(-1)[0] += 1e-7  # a single tiny change is caught
    report = audit(cnn, fp)
    assert not report.ok and report.changed_params == ("blocks.0.0.weight",)
    assert "1 of" in str(report) and "blocks.0.0.weight" in str(report)


def test_detects_bn_statistics_update(cnn: nn.Module) -> None:
    lock(cnn, 1, freeze_bn_stats=True)
    fp = fingerprint(cnn)
    assert len(fp.buffers) == 12  # 4 BatchNorms x (mean, var, num_batches_tracked)
    cnn.train()
    cnn(torch.randn(2, 3, 8, 8))
    assert audit(cnn, fp).ok  # frozen stats do not move, even in train mode
    lock(cnn, 1, freeze_bn_stats=False)
    cnn(torch.randn(2, 3, 8, 8))
    report = audit(cnn, fp)
    assert "stem.1.running_mean" in report.changed_buffers
    assert "BatchNorm buffer" in str(report)


def test_all_bn_and_none_modes(cnn: nn.Module) -> None:
    assert fingerprint(cnn, buffers="none").buffers == {}
    assert len(fingerprint(cnn, buffers="all_bn").buffers) == 12
    assert fingerprint(cnn).params == {}  # nothing locked yet
