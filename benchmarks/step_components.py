"""What ``Unfreezer.step()`` costs beyond a hand-written loop, measured component by component.

A full training step is forward + backward + optimizer. The layerlock step and the hand
loop run the same forward and backward; they differ only in what happens after
``loss.backward()``:

- **optimizer**: AdamW over the Unfreezer's named param groups (two per layer group: 28
  for a ViT-S/16; locked groups have grads None and LR 0) vs AdamW over one param group
  holding the trainable parameters;
- **bookkeeping**: what ``Unfreezer.step()`` does besides ``optimizer.step()``: clear the
  gradients (``zero_grad(set_to_none=True)``, every parameter of every group), advance the
  step, ``sync()`` (event lookup, one LR per param group) vs the hand loop's
  ``zero_grad(set_to_none=True)`` over its trainable parameters.

Each component is timed directly rather than as a difference of two noisy step totals:
the optimizer's own step pre/post hooks timestamp ``optimizer.step()`` inside
``Unfreezer.step()``, so bookkeeping = (time of ``Unfreezer.step()``) - (time between the
hooks), both from the same call. Gradients are fixed random tensors set before each
timed call (no forward/backward), calls are interleaved with the order alternating, one
thread, and every figure is the median of ``--repeats`` with its min-max. Wall time and
thread CPU time (``time.thread_time``: not counting time the process waits for a CPU)
are both recorded.

    python benchmarks/step_components.py timm:vit_small_patch16_224 --img-size 112 \
        --repeats 31 --out benchmarks/results/components_vit_small_112.json
    python benchmarks/step_components.py timm:resnet50 --img-size 112 \
        --repeats 31 --out benchmarks/results/components_resnet50_112.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from layerlock.bench import _build, parse_levels
from layerlock.groups import LayerGroups, layer_groups
from layerlock.schedule import parse_schedule
from layerlock.unfreezer import Unfreezer


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _level(base: torch.nn.Module, groups: LayerGroups, k: int, repeats: int) -> dict[str, Any]:
    """One lock level: the last ``k`` groups train."""
    g = len(groups)
    trainable = frozenset(range(g - k, g))
    names = ",".join(groups[i].name for i in sorted(trainable))
    u = Unfreezer(
        base,
        parse_schedule({0: names}),
        epochs=1,
        steps_per_epoch=10**9,
        lr=1e-5,
        weight_decay=0.0,
        freeze_bn_stats=False,
        groups=groups,
    )
    params = [p for p in base.parameters() if p.requires_grad]
    hand = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    grads = {p: torch.randn_like(p) * 1e-3 for p in params}

    def set_grads() -> None:
        for p, gr in grads.items():
            p.grad = gr.clone()

    marks: dict[str, tuple[float, float]] = {}
    u.optimizer.register_step_pre_hook(lambda *_: marks.__setitem__("pre", _clocks()))
    u.optimizer.register_step_post_hook(lambda *_: marks.__setitem__("post", _clocks()))

    samples: dict[str, list[float]] = {
        k2: []
        for k2 in (
            "ll_optimizer_wall",
            "ll_bookkeeping_wall",
            "ll_optimizer_cpu",
            "ll_bookkeeping_cpu",
            "hand_optimizer_wall",
            "hand_zero_grad_wall",
            "hand_optimizer_cpu",
            "hand_zero_grad_cpu",
        )
    }

    def layerlock_step() -> None:
        set_grads()
        w0, c0 = _clocks()
        u.step()
        w1, c1 = _clocks()
        (pw, pc), (qw, qc) = marks["pre"], marks["post"]
        samples["ll_optimizer_wall"].append(qw - pw)
        samples["ll_optimizer_cpu"].append(qc - pc)
        samples["ll_bookkeeping_wall"].append((w1 - w0) - (qw - pw))
        samples["ll_bookkeeping_cpu"].append((c1 - c0) - (qc - pc))

    def hand_step() -> None:
        set_grads()
        w0, c0 = _clocks()
        hand.step()
        w1, c1 = _clocks()
        hand.zero_grad(set_to_none=True)
        w2, c2 = _clocks()
        samples["hand_optimizer_wall"].append(w1 - w0)
        samples["hand_optimizer_cpu"].append(c1 - c0)
        samples["hand_zero_grad_wall"].append(w2 - w1)
        samples["hand_zero_grad_cpu"].append(c2 - c1)

    pair: list[Callable[[], None]] = [layerlock_step, hand_step]
    for fn in pair:  # warm-up: creates the optimizer state
        fn()
    for v in samples.values():
        v.clear()
    for i in range(repeats):
        for fn in pair if i % 2 == 0 else pair[::-1]:
            fn()
    n_groups = len(u.optimizer.param_groups)
    row = {
        "label": f"k={k}",
        "trainable_params": sum(p.numel() for p in params),
        "trainable_tensors": len(params),
        "ll_param_groups": n_groups,
        "hand_param_groups": len(hand.param_groups),
        **{name: _stats(xs) for name, xs in samples.items()},
    }
    return row


def measure(model_spec: str, img_size: int, levels: str, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    base = _build(model_spec, img_size)
    groups = layer_groups(base)
    g = len(groups)
    out: dict[str, Any] = {
        "model": model_spec,
        "img_size": img_size,
        "num_groups": g,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": f"{torch.__version__} ({platform.machine()})",
        "levels": [],
    }
    for k in parse_levels(levels, g):
        out["levels"].append(_level(base, groups, k, repeats))
        # Undo the lock for the next level on the same model.
        for p in base.parameters():
            p.requires_grad_(True)
            p.grad = None
    return out


def _ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:7.2f} ({s['min'] * 1e3:.2f}-{s['max'] * 1e3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--levels", default="1,2,all")
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    r = measure(args.model, args.img_size, args.levels, args.repeats)
    print(
        f"{r['model']}: {r['num_groups']} groups, {r['threads']} thread, median (min-max) of "
        f"{r['repeats']}, ms; cpu = thread CPU time"
    )
    print(
        f"{'level':>6} {'groups ll/hand':>14} | {'ll optimizer':>22} {'hand optimizer':>22} | "
        f"{'ll bookkeeping':>22} {'hand zero_grad':>22} | {'ll opt cpu':>10} {'hand opt cpu':>12} "
        f"{'ll bk cpu':>10} {'hand zg cpu':>11}"
    )
    for lv in r["levels"]:
        print(
            f"{lv['label']:>6} {lv['ll_param_groups']:>6}/{lv['hand_param_groups']:<7} | "
            f"{_ms(lv['ll_optimizer_wall']):>22} {_ms(lv['hand_optimizer_wall']):>22} | "
            f"{_ms(lv['ll_bookkeeping_wall']):>22} {_ms(lv['hand_zero_grad_wall']):>22} | "
            f"{lv['ll_optimizer_cpu']['median'] * 1e3:10.2f} "
            f"{lv['hand_optimizer_cpu']['median'] * 1e3:12.2f} "
            f"{lv['ll_bookkeeping_cpu']['median'] * 1e3:10.3f} "
            f"{lv['hand_zero_grad_cpu']['median'] * 1e3:11.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
