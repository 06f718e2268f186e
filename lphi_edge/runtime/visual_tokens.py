"""Visual-token reduction: K of an image's N projected features, chosen by the vision tower's own attention.

The method is VisionZip's (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
Models", CVPR 2025, arXiv:2412.04467), training-free:

1. Dominant tokens: the K − C patches the [CLS] token attends to most in the layer the features are taken
   from (LLaVA's mm_vision_select_layer, −2), its attention averaged over heads. The vision encoder provides
   these scores beside the features (`encode_images(..., with_attention=True)`: torch computes them in
   LlavaPhiForCausalLM.encode_images_with_attention, exports carry them as the vision encoder's
   `image_attention` output), so every backend selects the same tokens from the same scores.
2. Contextual tokens (C of them; default round(K · 10 / 64), VisionZip's 54 + 10 split): C of the remaining
   tokens, evenly spaced, are targets; every other remaining token joins the target it is most similar to
   (cosine), and each group becomes its mean.

Kept tokens keep their order in the image (a contextual token sits at its target's place), so the LM still
reads the patches in raster order. Differences from VisionZip's code: the selection runs on the projected
features (the backend protocol's output) rather than on the tower's hidden states before the projector, so
the merge similarity is that of the projected features (VisionZip: the layer's keys) and a group's token is
its plain mean (VisionZip: target + mean of the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from lphi_edge.errors import ConfigError

CONTEXTUAL_SHARE = 10 / 64  # VisionZip's split: 54 dominant + 10 contextual of 64 (108 + 20, 162 + 30)


@dataclass(frozen=True)
class VisualTokens:
    """How many image tokens the LM sees per image.

    Attributes:
        tokens: K, kept per image (1..N; N = the model's image tokens, 576 for CLIP-L/336).
        contextual: of those, merged contextual tokens (0..K − 1); None: round(K · 10 / 64), as VisionZip.
    """

    tokens: int
    contextual: int | None = None

    def __post_init__(self) -> None:
        k, c = self.tokens, self.contextual
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"visual_tokens must be an integer ≥ 1 (None: all the image tokens), got {k!r}")
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < k):
            raise ConfigError(f"contextual visual tokens must be an integer in 0..{k - 1} (K − 1), got {c!r}")

    @classmethod
    def of(cls, value: int | VisualTokens | None) -> VisualTokens | None:
        if value is None or isinstance(value, VisualTokens):
            return value
        return cls(value)

    @property
    def n_contextual(self) -> int:
        return round(self.tokens * CONTEXTUAL_SHARE) if self.contextual is None else self.contextual

    def check(self, image_tokens: int) -> None:
        """K must be in 1..N for a model whose images give N tokens."""
        if not 1 <= self.tokens <= image_tokens:
            raise ConfigError(
                f"visual_tokens {self.tokens} is out of range: this model gives {image_tokens} tokens per image, "
                f"so K must be in 1..{image_tokens}"
            )


def _one_blas_thread() -> threadpool_limits:
    """numpy's BLAS on one thread for a small product. Multi-threaded, OpenBLAS leaves its threads spinning after
    the call, and they took the cores from the prefill that follows (benchmarks/results/NOTES.md, "The compiled
    prefill at other lengths"). The product itself is small. The BLAS libraries are looked up on each call, so one
    loaded later is limited too."""
    return threadpool_limits(limits=1, user_api="blas")


def select_visual_tokens(features: np.ndarray, attention: np.ndarray, config: VisualTokens) -> np.ndarray:
    """features f32 [N, D], attention f32 [N] (the [CLS] token's, per image token) → f32 [K, D], in image order.

    K = N returns the features unchanged."""
    n = features.shape[0]
    config.check(n)
    k = config.tokens
    if k == n:
        return features
    c = config.n_contextual
    order = np.argsort(-attention, kind="stable")  # (N,) most attended first; ties: the earlier token
    dominant = np.sort(order[: k - c])  # (K − C,) image positions
    if c == 0:
        return features[dominant]  # (K, D)
    rest = np.setdiff1d(np.arange(n), dominant)  # (R,) R = N − K + C ≥ C, in order
    step = max(1, len(rest) // c)
    is_target = np.zeros(len(rest), bool)
    is_target[np.arange(0, len(rest), step)[:c]] = True
    targets, others = rest[is_target], rest[~is_target]  # (C,), (R − C,)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)  # (N, D)
    with _one_blas_thread():
        group = np.argmax(unit[others] @ unit[targets].T, axis=1)  # (R − C,) → index into targets
    sums = features[targets].astype(np.float64)  # (C, D): each group starts with its target
    by_group = np.argsort(group, kind="stable")  # others grouped, image order kept within a group
    present, starts = np.unique(group[by_group], return_index=True)  # groups with members, where each begins
    # one pass of float64 sums per group (np.add.at did the same ~25× slower: 74 ms at N = 576, D = 2560)
    sums[present] += np.add.reduceat(features[others][by_group].astype(np.float64), starts, axis=0)
    counts = 1 + np.bincount(group, minlength=c)  # (C,)
    merged = (sums / counts[:, None]).astype(features.dtype)  # (C, D)
    positions = np.concatenate([dominant, targets])  # (K,)
    rows = np.concatenate([features[dominant], merged])  # (K, D)
    return rows[np.argsort(positions, kind="stable")]
