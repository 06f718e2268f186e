"""The golden verification data every export carries: what its verification fed the PyTorch model and what
the model answered, so that any machine can re-run the same checks without torch or the checkpoint.

    DIR/verification_golden.npz    the arrays (float32 unless noted), loaded with allow_pickle=False
        frames               uint8 [F, H, W, 3]  the verification frames, as a camera would deliver them
        pixel_values         [1, 3, h, w]        frame 0 through the checkpoint's preprocessing
        vision_features      [N, D]              frame 0's image features
        prefill_logits       [V]                 next-token logits after the prompt (decoder fed the above)
        decode_logits        [T, V]              teacher-forced on the reference's first T answer tokens
        kv_positions         int64 [k]           cache positions sampled for the KV check
        kv_samples           [2·L, H, k, Dh]     the prefill cache at those positions (past_key_values order)
        answer_topk_ids      int64 [F, S, K]     per pair and answer step: the reference's K best tokens …
        answer_topk_logits   [F, S, K]           … and their logits (steps past an answer's end: −inf)
    DIR/verification_golden.json   prompts, prompt ids, forced tokens, greedy token ids per pair (with the eos
                                   that ended them), what the arrays are, and the settings they were made with

Everything is stored at the reference's own precision (fp32), so an fp32 export's figures are its own, not
the storage's; the cache is sampled at a few positions. At full LLaVA-Phi size the set is ≈ 10 MB
(features 5.9, logits 1.8, cache samples 2.6, compressed frames < 1), under 1 % of an int4 export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lphi_edge.errors import CheckpointError

GOLDEN_ARRAYS = "verification_golden.npz"
GOLDEN_META = "verification_golden.json"
GOLDEN_FILES = (GOLDEN_ARRAYS, GOLDEN_META)
GOLDEN_VERSION = 1
TOPK = 32  # reference tokens kept per answer step: a near-tie is between the best few, never below the 32nd

_ARRAY_DTYPES = {
    "frames": np.uint8,
    "pixel_values": np.float32,
    "vision_features": np.float32,
    "prefill_logits": np.float32,
    "decode_logits": np.float32,
    "kv_positions": np.int64,
    "kv_samples": np.float32,
    "answer_topk_ids": np.int64,
    "answer_topk_logits": np.float32,
}


@dataclass(frozen=True)
class Golden:
    """The reference side of an export's verification (see the module docstring for shapes)."""

    frames: np.ndarray
    pixel_values: np.ndarray
    vision_features: np.ndarray
    prefill_logits: np.ndarray
    decode_logits: np.ndarray
    kv_positions: np.ndarray
    kv_samples: np.ndarray
    answer_topk_ids: np.ndarray
    answer_topk_logits: np.ndarray
    prompts: list[str] = field(default_factory=list)  # one per pair
    prompt_ids: list[list[int]] = field(default_factory=list)  # one per pair (image placeholder included)
    forced_tokens: list[int] = field(default_factory=list)  # the decode check's teacher-forced tokens (pair 0)
    answers: list[list[int]] = field(default_factory=list)  # greedy token ids per pair, the ending eos included
    settings: dict[str, Any] = field(default_factory=dict)  # new_tokens, seed, …: how the set was made

    @property
    def pairs(self) -> int:
        return len(self.prompts)

    def save(self, directory: Path) -> None:
        arrays = {name: getattr(self, name).astype(dtype, copy=False) for name, dtype in _ARRAY_DTYPES.items()}
        with open(directory / GOLDEN_ARRAYS, "wb") as f:
            np.savez_compressed(f, **arrays)  # the frames are mostly flat background
        meta = {k: v for k, v in asdict(self).items() if k not in _ARRAY_DTYPES}
        meta |= {"version": GOLDEN_VERSION, "arrays": {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()}}
        (directory / GOLDEN_META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Golden:
        """Read and check the golden set of an export directory (its files' hashes are the manifest's job)."""
        meta_path, arrays_path = directory / GOLDEN_META, directory / GOLDEN_ARRAYS
        for p in (meta_path, arrays_path):
            if not p.is_file():
                raise CheckpointError(f"{directory} has no golden verification data ({p.name} missing): re-export")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{meta_path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("version") != GOLDEN_VERSION:
            raise CheckpointError(f"{meta_path}: golden data version {meta.get('version')!r} is not {GOLDEN_VERSION}")
        try:
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAY_DTYPES}
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{arrays_path}: cannot read the golden arrays ({e}): re-export") from None
        for name, dtype in _ARRAY_DTYPES.items():
            if arrays[name].dtype != dtype:
                raise CheckpointError(f"{arrays_path}: {name} is {arrays[name].dtype}, expected {np.dtype(dtype)}")
        lists = {f.name: meta.get(f.name) for f in fields(cls) if f.name not in _ARRAY_DTYPES}
        golden = cls(**arrays, **lists)
        golden._check(arrays_path)
        return golden

    def _check(self, where: Path) -> None:
        n = self.pairs
        if not n or any(len(x) != n for x in (self.prompt_ids, self.answers)) or len(self.frames) != n:
            raise CheckpointError(f"{where}: golden data for {n} pairs is inconsistent (frames, prompts, answers)")
        steps = self.answer_topk_ids.shape[1] if self.answer_topk_ids.ndim == 3 else -1
        if self.answer_topk_ids.shape[:1] != (n,) or self.answer_topk_logits.shape != self.answer_topk_ids.shape:
            raise CheckpointError(f"{where}: answer_topk arrays do not hold {n} pairs")
        if any(len(a) > steps for a in self.answers) or len(self.forced_tokens) != len(self.decode_logits):
            raise CheckpointError(f"{where}: answers or forced tokens do not match their logits")
        positions = len(self.prompt_ids[0]) - 1 + len(self.vision_features)  # the image placeholder → N features
        if self.kv_positions.size and not 0 <= self.kv_positions.min() <= self.kv_positions.max() < positions:
            raise CheckpointError(f"{where}: kv_positions lie outside the verification prompt's {positions} positions")
