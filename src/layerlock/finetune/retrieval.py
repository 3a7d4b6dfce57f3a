"""Contrastive evaluation metrics: image<->text retrieval and zero-shot classifiers.

Both follow open_clip_train (its metric names, its rank definition, OpenCLIP's
``build_zero_shot_classifier``).

Example:
    >>> import torch
    >>> image = torch.eye(3)
    >>> retrieval_metrics(image, image)["image_to_text_R@1"]
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RETRIEVAL_KS", "retrieval_metrics", "zero_shot_classifier"]

#: The ``k`` of the ``R@k`` retrieval metrics.
RETRIEVAL_KS = (1, 5, 10)


def retrieval_metrics(
    image: torch.Tensor, text: torch.Tensor, same: torch.Tensor | None = None
) -> dict[str, float]:
    """open_clip_train's retrieval metrics of paired, normalised features.

    ``image[i]`` and ``text[i]`` are a pair. The rank of a query is 1 + the number of
    candidates that score higher than its best true match; without ``same`` the true match
    is the pair's own item (open_clip_train's definition). ``same[i, j]`` marks caption ``j``
    as identical to caption ``i``: identical captions cannot be told apart, so retrieving any
    of them counts (with unique captions this is open_clip_train's rank).

    Returns:
        ``image_to_text_{mean_rank,median_rank,R@1,R@5,R@10}`` and the same for ``text_to_image``.

    Example:
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> retrieval_metrics(img, txt)["image_to_text_mean_rank"]
        2.0
    """
    sim = image.float() @ text.float().T
    n = sim.shape[0]
    if same is None:
        same = torch.eye(n, dtype=torch.bool)
    out: dict[str, float] = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        best = s.masked_fill(~same, -math.inf).max(dim=1).values
        ranks = ((s > best[:, None]) & ~same).sum(dim=1).numpy()  # 0-based
        out[f"{name}_mean_rank"] = float(ranks.mean() + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
        for k in RETRIEVAL_KS:
            out[f"{name}_R@{k}"] = float(np.mean(ranks < k))
    return out


def zero_shot_classifier(
    encode_text: Callable[..., torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classes: Sequence[str],
    templates: Sequence[Callable[[str], str]],
    device: torch.device,
) -> torch.Tensor:
    """``[dim, classes]``: each class's mean normalised template embedding, normalised
    (OpenCLIP's ``build_zero_shot_classifier``)."""
    columns = []
    for c in classes:
        tokens = tokenizer([t(c) for t in templates]).to(device)
        emb = F.normalize(encode_text(tokens, normalize=True).float(), dim=-1).mean(dim=0)
        columns.append(F.normalize(emb, dim=-1))
    return torch.stack(columns, dim=1)
