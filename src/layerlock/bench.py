"""``layerlock bench``: what locking buys, measured side by side in one process.

For each lock level k (the last k groups train) and, optionally, each distinct stage of
the presets, on one fixed batch:

- **layerlock**: a training step driven by :class:`~layerlock.unfreezer.Unfreezer` as
  the fine-tuning job does it (forward, ``loss.backward()``, ``Unfreezer.step()``, which
  steps AdamW over named param groups, clears gradients and sets learning rates);
- **hand**: a minimal hand-written loop with the same frozen set (``requires_grad_``
  off below, AdamW over the trainable parameters in one param group with the
  Unfreezer's weight decay, ``zero_grad(set_to_none=True)`` before the forward);
- **cached**: the hand step on the suffix only, the frozen prefix's features computed
  beforehand (what training from :class:`~layerlock.cache.FeatureCache` costs);
- **prefix**: one no-grad forward of the frozen prefix (the fill cost per batch);
- the cost model's ideal (``NOTES.md`` section 6, equal cost per group).

Steps are interleaved (layerlock, hand, cached in turn, the order rotating each repeat)
so that drift on a shared machine hits all three alike; each figure is the median of
``repeats`` with its min-max spread, and the ratio layerlock / hand is the median of the
per-repeat ratios. Each step is timed on the wall clock and in process CPU time
(``time.process_time``); CPU time leaves out the time the process waits for a core, so on
a loaded machine ``ratio_cpu`` is the steadier reading.

``controls=True`` adds hand-loop variants that isolate what the layerlock step does
differently, each reported as a ratio to **hand**:

- **hand2**: a second, identical hand copy (the noise floor: its ratio should be 1);
- **hand_late**: gradients cleared right after ``optimizer.step()`` (as
  ``Unfreezer.step()`` does) instead of before the forward;
- **hand_groups**: AdamW over the Unfreezer's named param groups (two per layer group)
  instead of one.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the step, minus the
allocation before it. On CPU torch has no allocator statistics, so each configuration
runs in a fresh subprocess that samples its resident set size (``/proc/self/statm``)
every millisecond during two steps and reports the peak minus the RSS just before the
first step (activations, gradients, optimizer state). Allocator caching makes this a
lower bound, to within a few MB.

Example:
    >>> import timm
    >>> r = run_bench(lambda: timm.create_model("test_vit", num_classes=4), levels=[1], repeats=1,
    ...               batch_size=2, img_size=32, memory=False)
    >>> r.levels[0].label, r.levels[0].ratio > 0
    ('k=1', True)
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .cache_policy import ideal_costs
from .errors import ConfigError
from .groups import LayerGroups, layer_groups
from .schedule import PRESETS, parse_schedule
from .split import split_model, split_reason

__all__ = [
    "CONTROLS",
    "BenchResult",
    "LevelResult",
    "Timing",
    "count_walks",
    "parse_levels",
    "run_bench",
]

#: The hand-loop variants ``controls=True`` adds (see the module docstring).
CONTROLS = ("hand2", "hand_late", "hand_groups")


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated timings (seconds)."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, xs: Sequence[float]) -> Timing:
        return cls(statistics.median(xs), min(xs), max(xs), tuple(xs))

    def __str__(self) -> str:
        return f"{self.median * 1e3:,.1f} ms ({self.min * 1e3:,.1f}-{self.max * 1e3:,.1f})"


@dataclass
class LevelResult:
    """One trainable set: step times, ratio, memory, cache and the cost model's ideal."""

    label: str
    trainable: list[str]
    boundary: int
    layerlock: Timing
    hand: Timing
    ratio: float
    ratio_min: float
    ratio_max: float
    ratio_cpu: float
    images_per_s: float
    cached: Timing | None
    prefix: Timing | None
    cache_note: str
    feature_bytes_per_sample: int
    ideal: dict[str, float]
    memory: dict[str, int | None] = field(default_factory=dict)
    cpu: dict[str, Timing] = field(default_factory=dict)
    controls: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def cached_speedup(self) -> float | None:
        """Measured hand step / cached step."""
        return self.hand.median / self.cached.median if self.cached else None

    @property
    def ideal_speedup(self) -> float:
        """Cost-model locked / cached step."""
        return self.ideal["locked"] / self.ideal["cached"] if self.ideal["cached"] else 0.0


@dataclass
class BenchResult:
    """Everything one ``layerlock bench`` run measured."""

    model: str
    device: str
    batch_size: int
    img_size: int
    num_groups: int
    repeats: int
    threads: int
    torch: str
    memory_method: str
    per_step_walks: int
    levels: list[LevelResult]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for lv, src in zip(d["levels"], self.levels, strict=True):
            lv["cached_speedup"] = src.cached_speedup
            lv["ideal_speedup"] = src.ideal_speedup
            for key in ("layerlock", "hand", "cached", "prefix"):
                if lv[key] is not None:
                    lv[key]["samples"] = list(lv[key]["samples"])
            for t in lv["cpu"].values():
                t["samples"] = list(t["samples"])
        return d

    def table(self) -> Any:
        """A rich Table."""
        from rich.table import Table

        t = Table(
            title=(
                f"{self.model}: batch {self.batch_size}, {self.img_size}px, {self.device}, "
                f"{self.threads} thread(s), median of {self.repeats} (min-max)"
            ),
            title_justify="left",
            caption=(
                f"ratio = layerlock / hand step, wall clock (<= 1.03 is the target); cpu = the "
                f"same in process CPU time; cached = suffix-only step "
                f"on precomputed features; ideal = cost model locked/cached; memory: "
                f"{self.memory_method}; walks over all parameters/modules in Unfreezer.step(): "
                f"{self.per_step_walks}"
            ),
            caption_justify="left",
        )
        for col in (
            "level",
            "layerlock",
            "hand",
            "ratio",
            "cpu",
            "img/s",
            "cached",
            "speedup",
            "ideal",
            "peak mem ll / hand / cached",
        ):
            t.add_column(col, justify="left" if col == "level" else "right")
        shown = [c for c in CONTROLS if any(c in lv.controls for lv in self.levels)]
        for c in shown:
            t.add_column(f"{c} / hand", justify="right")
        for lv in self.levels:
            mem = " / ".join(_mb(lv.memory.get(k)) for k in ("layerlock", "hand", "cached"))
            t.add_row(
                lv.label,
                str(lv.layerlock),
                str(lv.hand),
                f"{lv.ratio:.3f} ({lv.ratio_min:.2f}-{lv.ratio_max:.2f})",
                f"{lv.ratio_cpu:.3f}",
                f"{lv.images_per_s:,.1f}",
                str(lv.cached) if lv.cached else lv.cache_note[:40],
                f"{lv.cached_speedup:.1f}x" if lv.cached_speedup else "-",
                f"{lv.ideal_speedup:.1f}x",
                mem,
                *(
                    f"{lv.controls[c]['ratio']:.3f} ({lv.controls[c]['ratio_min']:.2f}-"
                    f"{lv.controls[c]['ratio_max']:.2f})"
                    if c in lv.controls
                    else "-"
                    for c in shown
                ),
            )
        return t


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MB"


# -- levels ----------------------------------------------------------------------------


def parse_levels(text: str | Sequence[int] | None, num_groups: int) -> list[int]:
    """``"1,2,all"`` / ``"all"`` / None (default: 1, 2, half, all) -> sorted unique k values.

    Example:
        >>> parse_levels("1,2,all", 14), parse_levels(None, 14), parse_levels("all", 3)
        ([1, 2, 14], [1, 2, 7, 14], [1, 2, 3])
    """
    if text is None:
        return sorted({k for k in (1, 2, num_groups // 2, num_groups) if 1 <= k <= num_groups})
    if isinstance(text, str):
        if text.strip() == "all":
            return list(range(1, num_groups + 1))
        out, bad = [], []
        for part in text.split(","):
            p = part.strip()
            if p == "all":
                out.append(num_groups)
            elif p.isdigit() and 1 <= int(p) <= num_groups:
                out.append(int(p))
            else:
                bad.append(p)
        if bad:
            raise ConfigError(
                f"--levels: {', '.join(map(repr, bad))} not valid; use k in 1..{num_groups}, "
                "'all', or a comma list like '1,2,all'"
            )
        return sorted(set(out))
    ks = sorted(set(int(k) for k in text))
    if not ks or ks[0] < 1 or ks[-1] > num_groups:
        raise ConfigError(f"levels must lie in 1..{num_groups}, got {list(text)}")
    return ks


def _preset_sets(groups: LayerGroups) -> list[tuple[str, frozenset[int]]]:
    sets: list[tuple[str, frozenset[int]]] = []
    for name in PRESETS:
        if PRESETS[name][0] and name == "surgical":
            continue
        try:
            plan = parse_schedule(name).resolve(groups, len(groups) + 1, 1)
        except Exception:  # a preset that needs parameters this model cannot take
            continue
        for i, e in enumerate(plan.events):
            sets.append((f"{name}[{i}]", e.trainable))
    seen: set[frozenset[int]] = set()
    unique = []
    for label, s in sets:
        if s and s not in seen:
            seen.add(s)
            unique.append((label, s))
    return unique


# -- the per-step walk check -----------------------------------------------------------


def count_walks(fn: Callable[[], Any]) -> int:
    """How many times ``fn`` calls ``Module.parameters/named_parameters/modules/named_modules``.

    Example:
        >>> count_walks(lambda: list(nn.Linear(2, 2).parameters()))
        1
    """
    names = ("parameters", "named_parameters", "modules", "named_modules")
    originals = {n: getattr(nn.Module, n) for n in names}
    calls = [0]
    depth = [0]

    def wrap(orig: Callable[..., Any]) -> Callable[..., Any]:
        def inner(self: nn.Module, *a: Any, **kw: Any) -> Any:
            if depth[0] == 0:
                calls[0] += 1
            depth[0] += 1
            try:
                return list(orig(self, *a, **kw))
            finally:
                depth[0] -= 1

        return inner

    try:
        for n in names:
            setattr(nn.Module, n, wrap(originals[n]))
        fn()
    finally:
        for n, f in originals.items():
            setattr(nn.Module, n, f)
    return calls[0]


# -- steps -----------------------------------------------------------------------------


def _logits(out: Any) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        n = _logits(model.eval()(x[:1])).shape[-1]
    model.train()
    return torch.arange(x.shape[0], device=x.device) % n


# Every step in the comparison uses these. Weight decay is off so that a one-group hand
# optimizer can match the Unfreezer's decay / no_decay param groups exactly.
_LR = 1e-5
_WEIGHT_DECAY = 0.0


def _hand_copy(
    base: nn.Module, trainable: frozenset[int], named_groups: bool
) -> tuple[nn.Module, LayerGroups, torch.optim.Optimizer]:
    """A private copy with the frozen set applied by hand, and its AdamW.

    Learning rate and weight decay are the ones the layerlock step's Unfreezer gets, so
    both optimizers do the same arithmetic per parameter (with AdamW's own default weight
    decay, 0.01, the hand loop would do a multiply per parameter the layerlock one skips,
    or the reverse).
    """
    model = copy.deepcopy(base).train()
    groups = layer_groups(model)
    for gi, grp in enumerate(groups):
        for p in grp.params:
            p.requires_grad_(gi in trainable)
    if named_groups:
        from .optim import param_groups

        opt = torch.optim.AdamW(
            param_groups(groups, lr=_LR, weight_decay=_WEIGHT_DECAY),
            lr=_LR,
            weight_decay=_WEIGHT_DECAY,
        )
    else:
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=_LR, weight_decay=_WEIGHT_DECAY
        )
    return model, groups, opt


class _Runner:
    """The steps for one trainable set, each on a private copy of the model."""

    def __init__(
        self,
        base: nn.Module,
        trainable: frozenset[int],
        x: torch.Tensor,
        y: torch.Tensor,
        controls: bool = False,
    ) -> None:
        from .unfreezer import Unfreezer

        self.x, self.y = x, y
        names = None
        # layerlock: as the fine-tuning job drives it.
        self.ll_model = copy.deepcopy(base).train()
        g = layer_groups(self.ll_model)
        names = ",".join(g[i].name for i in sorted(trainable))
        self.unfreezer = Unfreezer(
            self.ll_model,
            parse_schedule({0: names}),
            epochs=1,
            steps_per_epoch=10**9,
            lr=_LR,
            weight_decay=_WEIGHT_DECAY,
            # the hand loop keeps BatchNorm statistics training in locked groups too
            freeze_bn_stats=False,
            groups=g,
        )
        # hand: the minimal loop.
        self.hand_model, hg, self.hand_opt = _hand_copy(base, trainable, named_groups=False)
        self.controls: dict[str, Callable[[], None]] = {}
        if controls:
            for name in CONTROLS:
                m, _, opt = _hand_copy(base, trainable, named_groups=name == "hand_groups")
                late = name == "hand_late"
                self.controls[name] = functools.partial(self._hand_step, m, opt, late)
        self.boundary = min(trainable)
        self.split = split_model(self.hand_model, hg, self.boundary)
        self.cache_note = split_reason(self.hand_model, hg, self.boundary)
        self.features: torch.Tensor | None = None
        if self.split is not None:
            was = [(m, m.training) for m in self.hand_model.modules()]
            self.hand_model.eval()
            with torch.no_grad():
                self.features = self.split.prefix(x)
            for m, f in was:
                m.training = f

    def layerlock(self) -> None:
        u = self.unfreezer
        loss = nn.functional.cross_entropy(_logits(u.model(self.x)), self.y)
        loss.backward()
        u.step()

    def hand(self) -> None:
        self._hand_step(self.hand_model, self.hand_opt, late=False)

    def _hand_step(self, model: nn.Module, opt: torch.optim.Optimizer, late: bool) -> None:
        if not late:
            opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(_logits(model(self.x)), self.y)
        loss.backward()
        opt.step()
        if late:
            opt.zero_grad(set_to_none=True)

    def cached(self) -> None:
        assert self.split is not None and self.features is not None
        self.hand_opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.split.suffix(self.features), self.y)
        loss.backward()
        self.hand_opt.step()

    def prefix(self) -> None:
        assert self.split is not None
        with torch.no_grad():
            self.split.prefix(self.x)


def _timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, time.process_time() - c


def _ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


# -- memory ----------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_during(fn: Callable[[], object]) -> int:
    """Peak RSS above the current RSS while ``fn`` runs.

    1 ms sampling alone misses short peaks; the kernel's lifetime maximum (``ru_maxrss``)
    catches them whenever the step sets a new maximum for the process.
    """
    before = _rss()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    peak[0] = max(peak[0], _rss())
    max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if max_after > max_before:  # the step set a new lifetime maximum: that is its peak
        peak[0] = max(peak[0], max_after * 1024)
    return peak[0] - before


def _child_memory(spec: dict[str, Any]) -> dict[str, int | None]:
    """Run in a fresh process: peak RSS above the pre-step RSS for each method."""
    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    base = _build(spec["model"], spec["img_size"])
    x = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"])
    y = _labels(base, x)
    trainable = frozenset(spec["trainable"])
    method = spec["method"]
    runner = _Runner(base, trainable, x, y)
    # Keep only what this method needs, and free the rest in every case alike: freed
    # pages are reused by the allocator, so freeing for one method only would favour it.
    if method == "layerlock":
        del runner.hand_model, runner.hand_opt, runner.split, runner.features
    else:
        del runner.unfreezer, runner.ll_model
    gc.collect()
    fn = getattr(runner, method)
    if method == "cached" and runner.split is None:
        return {method: None}
    return {method: _peak_rss_during(lambda: (fn(), fn()))}


def _memory_subprocess(
    model: str, trainable: frozenset[int], method: str, batch_size: int, img_size: int, threads: int
) -> int | None:
    spec = {
        "model": model,
        "trainable": sorted(trainable),
        "method": method,
        "batch_size": batch_size,
        "img_size": img_size,
        "threads": threads,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "layerlock.bench", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])[method]


# -- the run ---------------------------------------------------------------------------


def _build(model: str, img_size: int) -> nn.Module:
    from .models import build_model, parse_spec

    family, _ = parse_spec(model)
    if family == "timm":
        try:
            return build_model(model, img_size=img_size)
        except TypeError:
            pass
    return build_model(model)


def run_bench(
    model: str | Callable[[], nn.Module],
    *,
    batch_size: int = 32,
    img_size: int = 224,
    levels: str | Sequence[int] | None = None,
    presets: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    memory: bool = True,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = None,
    controls: bool = False,
) -> BenchResult:
    """Measure step times, ratio, cache speed-up and memory for each lock level.

    Args:
        model: A model spec (``"timm:vit_small_patch16_224"``) or a factory returning a
            fresh model (memory is then measured only on CUDA).
        batch_size: Batch size.
        img_size: Input resolution (passed to timm models as ``img_size``).
        levels: Lock levels k: ``"1,2,all"``, ``"all"`` or ints (default 1, 2, G/2, G).
        presets: Also measure each distinct stage of the presets.
        repeats: Timed repeats per method.
        warmup: Untimed steps per method first.
        memory: Measure peak memory (CPU: one subprocess per configuration).
        device: Where to run (default: CUDA when available).
        progress: Called with a line per configuration.
        controls: Also time the hand-loop variants in :data:`CONTROLS`.

    Returns:
        A :class:`BenchResult`.

    Raises:
        ConfigError: Invalid values.
    """
    problems = []
    for name, v, lo in (
        ("batch_size", batch_size, 1),
        ("img_size", img_size, 8),
        ("repeats", repeats, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            problems.append(f"{name} must be an int >= {lo}, got {v!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(0)
    label = model if isinstance(model, str) else getattr(model, "__name__", "model")
    base = (_build(model, img_size) if isinstance(model, str) else model()).to(dev)
    groups = layer_groups(base)
    g = len(groups)
    sets: list[tuple[str, frozenset[int]]] = [
        (f"k={k}", frozenset(range(g - k, g))) for k in parse_levels(levels, g)
    ]
    if presets:
        known = {s for _, s in sets}
        sets += [(lbl, s) for lbl, s in _preset_sets(groups) if s not in known]
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    y = _labels(base, x)
    walks = -1
    results = []
    threads = torch.get_num_threads()
    for lbl, trainable in sets:
        if progress:
            progress(f"{lbl}: {len(trainable)} of {g} groups trainable")
        r = _Runner(base, trainable, x, y, controls=controls)
        methods: list[tuple[str, Callable[[], None]]] = [
            ("layerlock", r.layerlock),
            ("hand", r.hand),
        ]
        if r.split is not None:
            methods += [("cached", r.cached), ("prefix", r.prefix)]
        methods += list(r.controls.items())
        for _ in range(warmup):
            for _, fn in methods:
                fn()
        if walks < 0:
            walks = count_walks(r.unfreezer.step)
        times: dict[str, list[float]] = {m: [] for m, _ in methods}
        cpu: dict[str, list[float]] = {m: [] for m, _ in methods}
        for i in range(repeats):
            order = methods[i % len(methods) :] + methods[: i % len(methods)]
            for m, fn in order:
                wall, proc = _timed(fn, dev)
                times[m].append(wall)
                cpu[m].append(proc)
        ratios = _ratios(times["layerlock"], times["hand"])
        control_ratios = {}
        for name in r.controls:
            cr = _ratios(times[name], times["hand"])
            control_ratios[name] = {
                "median_s": statistics.median(times[name]),
                "ratio": statistics.median(cr),
                "ratio_min": min(cr),
                "ratio_max": max(cr),
                "ratio_cpu": statistics.median(_ratios(cpu[name], cpu["hand"])),
            }
        mem: dict[str, int | None] = {}
        if memory and dev.type == "cuda":
            for m, fn in methods[:3] if r.split is not None else methods[:2]:
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
                fn()
                torch.cuda.synchronize(dev)
                mem[m] = torch.cuda.max_memory_allocated(dev) - before
        elif memory and isinstance(model, str) and sys.platform.startswith("linux"):
            for m in ("layerlock", "hand", "cached"):
                if m == "cached" and r.split is None:
                    continue
                mem[m] = _memory_subprocess(model, trainable, m, batch_size, img_size, threads)
        feat_bytes = (
            int(r.features[0].numel()) * 2 if r.features is not None else 0
        )  # stored in fp16
        hand = Timing.of(times["hand"])
        results.append(
            LevelResult(
                label=lbl,
                trainable=[groups[i].name for i in sorted(trainable)],
                boundary=r.boundary,
                layerlock=Timing.of(times["layerlock"]),
                hand=hand,
                ratio=statistics.median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                ratio_cpu=statistics.median(_ratios(cpu["layerlock"], cpu["hand"])),
                images_per_s=batch_size / statistics.median(times["layerlock"]),
                cached=Timing.of(times["cached"]) if "cached" in times else None,
                prefix=Timing.of(times["prefix"]) if "prefix" in times else None,
                cache_note=r.cache_note,
                feature_bytes_per_sample=feat_bytes,
                ideal=ideal_costs(g, r.boundary),
                memory=mem,
                cpu={m: Timing.of(cpu[m]) for m in ("layerlock", "hand")},
                controls=control_ratios,
            )
        )
        # The methods hold the runner (bound methods): drop both before the next level's
        # copies are made, or two levels' models and optimizer states coexist.
        methods.clear()
        del r, fn
        gc.collect()
    if dev.type == "cuda":
        method = f"torch.cuda.max_memory_allocated above the pre-step allocation ({torch.cuda.get_device_name(dev)})"
    elif memory and isinstance(model, str):
        method = "peak RSS above pre-step RSS, fresh subprocess per configuration, 1 ms sampling"
    else:
        method = "not measured"
    return BenchResult(
        model=label,
        device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        batch_size=batch_size,
        img_size=img_size,
        num_groups=g,
        repeats=repeats,
        threads=threads,
        torch=f"{torch.__version__} ({platform.machine()})",
        memory_method=method,
        per_step_walks=walks,
        levels=results,
    )


if __name__ == "__main__":  # the memory child
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child_memory(json.loads(sys.argv[2]))))
