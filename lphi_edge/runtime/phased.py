"""One engine per phase: the prompt (vision encoder + prefill) on one engine, the tokens on another.

No single engine is best for a frame → short answer on a CPU: bf16 compute (torch) encodes the frame and
prefills ~700 positions fastest, while int4 weights with the KV cache written in place (onnxruntime) decode
fastest. `PhasedBackend` runs each forward pass on the engine of its phase and moves the KV cache between
them when the phase changes — in practice once per answer, after the prefill (`cache_from_arrays`: the values
as f32 on the host, in the receiving engine's own format, quantized there for an int8 cache).

Which engine runs a forward pass of S new positions over P cached ones:
- S = 1 (a token step): the token engine.
- S > 1 (a prompt): the prompt engine, unless the cache is the token engine's and S < P — a follow-up
  question about a cached frame, where computing a few positions on the token engine is cheaper than moving
  P positions back. A new frame after a cached system prompt (S ≫ P) moves the short prefix back.
Answers match the single engines within their precisions' gates (the two engines compute the same model).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lphi_edge.errors import ConfigError
from lphi_edge.runtime.backend import Backend, KVCache, image_attention_problem

logger = logging.getLogger(__name__)


class PhasedCache:
    """The KV cache of a PhasedBackend: the cache of whichever engine wrote it last."""

    def __init__(self, inner: KVCache, owner: Backend):
        self.inner, self.owner = inner, owner
        self.handovers = 0  # times the cache moved between the engines

    @property
    def seq_len(self) -> int:
        return self.inner.seq_len

    def crop(self, length: int) -> None:
        self.inner.crop(length)

    def arrays(self) -> list[np.ndarray]:
        return self.inner.arrays()


class PhasedBackend:
    """Backend protocol over two engines of the same model: `prompt` encodes frames and prefills, `tokens`
    decodes. Both must have the same ModelSpec; each engine that may receive the cache needs cache_from_arrays."""

    def __init__(self, prompt: Backend, tokens: Backend):
        if prompt.spec != tokens.spec:
            diff = {
                k: (getattr(prompt.spec, k), getattr(tokens.spec, k))
                for k in prompt.spec.__dataclass_fields__
                if getattr(prompt.spec, k) != getattr(tokens.spec, k)
            }
            raise ConfigError(f"the prompt and token engines are not the same model: (prompt, tokens) differ in {diff}")
        for role, be in (("prompt", prompt), ("token", tokens)):
            if not callable(getattr(be, "cache_from_arrays", None)):
                raise ConfigError(f"the {be.name} engine cannot take over a KV cache (no cache_from_arrays): {role}")
        self.prompt, self.tokens = prompt, tokens
        self.spec = tokens.spec
        self.name = f"{prompt.name}+{tokens.name}"
        self.precision = f"{prompt.precision}+{tokens.precision}"
        self.device = prompt.device if prompt.device == tokens.device else f"{prompt.device}+{tokens.device}"
        self.kv_scales = getattr(tokens, "kv_scales", None)  # the decoding cache's int8 scales (verification)

    # ---- protocol: frames and embeddings come from the prompt engine ------------------------------
    def encode_images(self, pixel_values: np.ndarray, with_attention: bool = False):
        if with_attention:
            return self.prompt.encode_images(pixel_values, with_attention=True)
        return self.prompt.encode_images(pixel_values)

    def image_attention_problem(self) -> str | None:
        return image_attention_problem(self.prompt)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.tokens.embed(input_ids)  # cheap either way; the token engine embeds every decoded token

    def new_cache(self, batch_size: int = 1) -> PhasedCache:
        return PhasedCache(self.prompt.new_cache(batch_size), self.prompt)

    def decode(
        self,
        inputs_embeds: np.ndarray,  # f32 [B, S, D]
        attention_mask: np.ndarray,  # i64 [B, P + S]
        position_ids: np.ndarray,  # i64 [B, S]
        past: PhasedCache,
    ) -> tuple[np.ndarray, PhasedCache]:
        s, p = inputs_embeds.shape[1], past.seq_len
        if s == 1:
            engine = self.tokens
        elif past.owner is self.prompt or s >= p:
            engine = self.prompt
        else:
            engine = self.tokens
        if past.owner is not engine:
            handed = engine.cache_from_arrays(past.inner.arrays()) if p else engine.new_cache(inputs_embeds.shape[0])
            past.inner, past.owner = handed, engine
            past.handovers += 1
        logits, past.inner = engine.decode(inputs_embeds, attention_mask, position_ids, past.inner)
        return logits, past

    def thread_settings(self) -> dict[str, Any]:
        return {"prompt": self.prompt.thread_settings(), "tokens": self.tokens.thread_settings()}
