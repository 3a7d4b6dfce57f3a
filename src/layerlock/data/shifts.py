"""Shifted versions of the demo task: the same held-out digits, changed in ways a reader sees.

Robust fine-tuning is judged on the training distribution *and* under distribution shift.
The demo evaluates on MNIST digits 5-9 it did not train on; the built-in evaluation sets
``demo-<shift>`` take exactly those images and change them by one transformation each:

========== ==============================================================================
rotated    turned by 25-35 degrees, clockwise or anticlockwise (alternating)
thick      strokes thickened (3x3 maximum filter)
blurred    Gaussian blur, radius 1.2
inverted   white background, black strokes
noisy      Gaussian pixel noise (sigma 70 of 255), clipped
shifted    moved 4-6 pixels in a random direction (the digit partly leaves the frame)
========== ==============================================================================

Every transformation is deterministic for a seed (the run's seed), so the sets are the
same in every run and every process.

Example:
    >>> import numpy as np
    >>> images = np.zeros((2, 28, 28), np.uint8); images[:, 10:18, 12:16] = 255
    >>> int(shift_images(images, "inverted", seed=0)[0, 0, 0])
    255
    >>> sorted(SHIFTS)[:3]
    ['blurred', 'inverted', 'noisy']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ConfigError, suggest

__all__ = ["SHIFTS", "Shift", "shift_images"]


@dataclass(frozen=True)
class Shift:
    """One named transformation of 8-bit grey images.

    Attributes:
        description: What it does, in words (help texts, README).
        apply: ``apply(image, rng) -> image`` on one ``(H, W)`` uint8 array.
    """

    description: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(
    fn: Callable[[Image.Image, np.random.Generator], Image.Image],
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(fn(Image.fromarray(image), rng), dtype=np.uint8)

    return apply


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(25, 35)) * (1 if rng.integers(2) else -1)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)


def _shift(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    theta = float(rng.uniform(0, 2 * np.pi))
    r = float(rng.uniform(4, 6))
    dx, dy = round(r * np.cos(theta)), round(r * np.sin(theta))
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=0)


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0.0, 70.0, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


SHIFTS: dict[str, Shift] = {
    "rotated": Shift("turned by 25-35 degrees, alternating direction", _pil(_rotate)),
    "thick": Shift(
        "strokes thickened (3x3 maximum filter)",
        _pil(lambda img, rng: img.filter(ImageFilter.MaxFilter(3))),
    ),
    "blurred": Shift(
        "Gaussian blur, radius 1.2",
        _pil(lambda img, rng: img.filter(ImageFilter.GaussianBlur(1.2))),
    ),
    "inverted": Shift("white background, black strokes", lambda image, rng: 255 - image),
    "noisy": Shift("Gaussian pixel noise, sigma 70 of 255", _noise),
    "shifted": Shift("moved 4-6 pixels in a random direction", _pil(_shift)),
}
"""The built-in shifts, by name (``demo-<name>`` is the evaluation set)."""


def shift_images(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """``images`` (``(N, H, W)`` uint8) changed by the shift ``name``, deterministically.

    Image ``i`` draws its randomness from ``(seed, shift, i)`` alone.

    Raises:
        ConfigError: An unknown shift name, with the valid ones.
    """
    if name not in SHIFTS:
        raise ConfigError(
            f"unknown shift {name!r}; shifts: {', '.join(SHIFTS)}" + suggest(name, list(SHIFTS))
        )
    shift = SHIFTS[name]
    salt = list(SHIFTS).index(name)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = shift.apply(image, np.random.default_rng([seed, salt, i]))
    return out
