"""The one generation loop, shared by every backend.

    prompt ids (with image placeholders) + image features
        → reuse the longest cached prefix (system prompt, same frame, earlier turns)
        → prefill the rest → sample → decode token by token → stop on eos / stop string / limit

Sampling is greedy by default; temperature / top-k / top-p sampling draws from a seeded numpy RNG,
so a seed reproduces an answer on every backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np

from lphi_edge.errors import ConfigError, ContextLengthError, GenerationInProgressError, PromptError
from lphi_edge.processing.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer
from lphi_edge.runtime.backend import Backend, KVCache

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings.

    Attributes:
        max_new_tokens: generated tokens at most (≥ 1).
        temperature: 0 → greedy; > 0 → sampling from softmax(logits / temperature).
        top_p: nucleus sampling mass in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; 0 disables.
        seed: RNG seed for sampling (None → fresh entropy).
        stop: stop strings; the answer ends before the first occurrence.
        min_new_tokens: eos is masked out until this many tokens are generated (benchmarks use it to
            time a fixed number of decode steps, as transformers' `min_new_tokens` does).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer ≥ 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer ≥ 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be an integer in 0..max_new_tokens, got {self.min_new_tokens!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Timings:
    """Per-stage wall-clock milliseconds of one answer, and what it reused."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0  # forward over the uncached prompt positions + first token
    decode_ms: float = 0.0  # all later tokens
    ttft_ms: float = 0.0  # request start → first token
    total_ms: float = 0.0
    prompt_tokens: int = 0  # positions in the prompt (text + image; an image counts its visual tokens)
    cached_tokens: int = 0  # of which reused from the KV cache
    new_tokens: int = 0
    frame_reused: bool = False  # the image's features came from a cached frame (exact or within the tolerance)
    frame_difference: float | None = None  # frame difference to the nearest cached frame (None: none cached)
    answer_reused: bool = False  # a stored greedy answer to the same question about the reused frame, model not run

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first (the decode rate)."""
        n = self.new_tokens - 1
        return n / (self.decode_ms / 1e3) if n > 0 and self.decode_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        d = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["decode_tokens_per_s"] = round(self.decode_tokens_per_s, 3)
        return d


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids, eos excluded
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "context" | "canceled" (the token hook asked to stop)
    timings: Timings


@dataclass(frozen=True)
class ImageInput:
    """Projected features of one image and a key identifying the frame (for prefix reuse). K ≤ N rows when
    visual tokens were reduced (the key then names the reduction too)."""

    key: Hashable
    features: np.ndarray  # f32 [K, D]


class TextStream:
    """Incremental detokenisation: releases only text that can no longer change.

    Held back: incomplete UTF-8 (U+FFFD at the end), trailing whitespace (the final text is stripped),
    and any tail that could still grow into a stop string or a decode clean-up pattern (" n't" → "n't").
    All released pieces joined equal the final text.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.hold = self.stop + tuple(getattr(tokenizer, "pending_patterns", ()))
        self.released = 0
        self.stopped = False

    def _visible(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids).lstrip()
        for s in self.stop:
            i = text.find(s)
            if i >= 0:
                text, self.stopped = text[:i], True
        return text

    def update(self, ids: list[int]) -> str:
        """New generated ids → the piece of text that became final ("" if none)."""
        text = self._visible(ids)
        if self.stopped:
            return ""
        return self._release(self._settled(text))

    def _settled(self, text: str) -> str:
        """Drop, until nothing changes, trailing whitespace, U+FFFD and stop-string prefixes."""
        while True:
            kept = text.rstrip().rstrip("\ufffd")
            for s in self.hold:
                k = next((k for k in range(min(len(s) - 1, len(kept)), 0, -1) if kept.endswith(s[:k])), 0)
                kept = kept[: len(kept) - k]
            if kept == text:
                return text
            text = kept

    def finish(self, ids: list[int]) -> tuple[str, str]:
        """→ (last piece, final text)."""
        text = self._visible(ids).rstrip()
        return self._release(text), text

    def _release(self, text: str) -> str:
        if len(text) <= self.released:
            return ""
        piece, self.released = text[self.released :], len(text)
        return piece


class Sampler:
    def __init__(self, config: GenerationConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits f32 [V] → next token id."""
        cfg = self.config
        if cfg.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / cfg.temperature
        order = np.argsort(-z, kind="stable")  # (V,) most likely first
        if cfg.top_k:
            order = order[: cfg.top_k]
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        if cfg.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), cfg.top_p) + 1)  # smallest set with mass ≥ top_p
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[self.rng.choice(len(order), p=p)])


# Called after every generated token with (tokens so far, the answer's visible text so far); returning True stops
# the answer there (finish_reason "canceled", before the next token is computed). Per token, not per text piece:
# a token can add no visible text (a held stop-string prefix, half a UTF-8 character) and still cost a decode step.
TokenHook = Callable[[int, str], "bool | None"]


def drain(steps: Generator[str, None, T], on_text: Callable[[str], None] | None = None) -> T:
    """Run a text-yielding generator to its end, passing each piece to `on_text`; return its value."""
    while True:
        try:
            piece = next(steps)
        except StopIteration as done:
            return done.value
        if on_text is not None:
            on_text(piece)


@dataclass
class Session:
    """A KV cache and the keys of the positions it holds; prompts sharing a prefix reuse it.

    Position keys: a token id for text, (image key, i) for the i-th embedding of an image. Reusing a
    prefix is exact (same positions, same values); only the uncached positions are computed.
    """

    backend: Backend
    tokenizer: Tokenizer
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    cache: KVCache | None = None
    keys: list[Hashable] = field(default_factory=list)
    busy: bool = False

    def reset(self) -> None:
        self.cache, self.keys = None, []

    def generate(
        self,
        prompt_ids: list[int],
        images: Sequence[ImageInput],
        config: GenerationConfig,
        on_text: Callable[[str], None] | None = None,
        on_token: TokenHook | None = None,
    ) -> GenerationResult:
        """Answer one prompt, calling `on_text` with each piece of final text as it is produced and `on_token`
        after every token (see TokenHook)."""
        return drain(self.iter_generate(prompt_ids, images, config, on_token=on_token), on_text)

    def iter_generate(
        self,
        prompt_ids: list[int],
        images: Sequence[ImageInput],
        config: GenerationConfig,
        timings: Timings | None = None,
        t_start: float | None = None,
        on_token: TokenHook | None = None,
    ) -> Generator[str, None, GenerationResult]:
        """Yield text pieces; the generator's return value is the GenerationResult. `on_token` is called after
        every generated token and can stop the answer (TokenHook).

        `prompt_ids` holds IMAGE_TOKEN_INDEX once per entry of `images`. Timings count from `t_start`
        (default: now) and include the consumer's time between pieces. Closing the generator early
        leaves the session consistent (the cache holds exactly the positions in `keys`).
        """
        if self.busy:
            raise GenerationInProgressError(
                "a streamed answer from this session is still open: iterate it to the end or close() it first"
            )
        self.busy = True
        try:
            return (
                yield from self._generate(
                    prompt_ids,
                    images,
                    config,
                    timings or Timings(),
                    time.perf_counter() if t_start is None else t_start,
                    on_token,
                )
            )
        finally:
            self.busy = False

    def _generate(
        self,
        prompt_ids: list[int],
        images: Sequence[ImageInput],
        config: GenerationConfig,
        timings: Timings,
        t_start: float,
        on_token: TokenHook | None,
    ) -> Generator[str, None, GenerationResult]:
        spec = self.backend.spec
        keys = self._position_keys(prompt_ids, images)
        total = len(keys)
        reuse = self._reuse_prefix(keys)

        t0 = time.perf_counter()
        logits = self._forward(self._prompt_embeds(prompt_ids, images, start=reuse), keys[reuse:])
        sampler = Sampler(config)
        stream = TextStream(self.tokenizer, config.stop)
        budget = min(config.max_new_tokens, spec.context_length - total + 1)  # never past the context
        finish = "length" if budget == config.max_new_tokens else "context"
        generated: list[int] = []
        shown = ""  # the text yielded so far
        eos = sorted(self.eos_token_ids)

        def pick(row: np.ndarray) -> int:  # row: (V,) logits of the next token
            if len(generated) < config.min_new_tokens and eos:
                row = row.copy()
                row[eos] = -np.inf
            return sampler(row)

        token = pick(logits[0, -1])
        t1 = time.perf_counter()
        timings.prefill_ms += (t1 - t0) * 1e3
        timings.ttft_ms = (t1 - t_start) * 1e3
        timings.prompt_tokens, timings.cached_tokens = total, reuse

        while True:
            if token in self.eos_token_ids:
                finish = "eos"
                break
            generated.append(token)
            piece = stream.update(generated)
            if piece:
                shown += piece
                yield piece
            if stream.stopped:
                finish = "stop"
                break
            halt = on_token is not None and bool(on_token(len(generated), shown))
            if len(generated) >= budget:
                break
            if halt:
                finish = "canceled"
                break
            token = pick(self.step(token)[0, -1])

        piece, text = stream.finish(generated)
        if piece:
            yield piece
        t2 = time.perf_counter()
        timings.decode_ms += (t2 - t1) * 1e3
        timings.total_ms = (t2 - t_start) * 1e3
        timings.new_tokens = len(generated) + (finish == "eos")
        return GenerationResult(generated, text, finish, timings)

    def prefill(self, prompt_ids: list[int], images: Sequence[ImageInput]) -> np.ndarray:
        """Forward a whole prompt from an empty cache; logits (1, S', V)."""
        keys = self._position_keys(prompt_ids, images)
        self.cache, self.keys = self.backend.new_cache(1), []
        return self._forward(self._prompt_embeds(prompt_ids, images, start=0), keys)

    def step(self, token: int) -> np.ndarray:
        """Feed one token after the cached positions; logits (1, 1, V)."""
        return self._forward(self.backend.embed(np.array([[token]], dtype=np.int64)), [token])  # embeds (1, 1, D)

    def _reuse_prefix(self, keys: list[Hashable]) -> int:
        """Crop the cache to the longest prefix shared with `keys` (leaving ≥ 1 position to compute)."""
        if self.cache is None:
            self.cache, self.keys = self.backend.new_cache(1), []
            return 0
        limit = min(len(self.keys), len(keys) - 1)
        reuse = 0
        while reuse < limit and self.keys[reuse] == keys[reuse]:
            reuse += 1
        self.cache.crop(reuse)
        del self.keys[reuse:]
        return reuse

    def _forward(self, embeds: np.ndarray, new_keys: list[Hashable]) -> np.ndarray:
        """Run embeds (1, S, D) after the cached positions; returns logits (1, S', V)."""
        assert self.cache is not None and len(new_keys) == embeds.shape[1]
        past, s = len(self.keys), embeds.shape[1]
        mask = np.ones((1, past + s), dtype=np.int64)  # (1, P + S)
        positions = np.arange(past, past + s, dtype=np.int64)[None]  # (1, S)
        logits, self.cache = self.backend.decode(embeds, mask, positions, self.cache)
        self.keys.extend(new_keys)
        return logits

    def _position_keys(self, prompt_ids: list[int], images: Sequence[ImageInput]) -> list[Hashable]:
        """One key per prompt position; checks image count, feature shapes and the context length."""
        spec = self.backend.spec
        n_slots = prompt_ids.count(IMAGE_TOKEN_INDEX)
        if n_slots != len(images):
            raise PromptError(f"prompt has {n_slots} image placeholder(s) but {len(images)} image(s) were given")
        for img in images:
            rows, width = img.features.shape
            if width != spec.hidden_size or not 1 <= rows <= spec.image_tokens:
                raise PromptError(
                    f"image features have shape {img.features.shape}, expected (K, {spec.hidden_size}) with "
                    f"K in 1..{spec.image_tokens} ({spec.image_tokens}: every image token)"
                )
        keys: list[Hashable] = []
        it = iter(images)
        for tok in prompt_ids:
            if tok == IMAGE_TOKEN_INDEX:
                img = next(it)
                keys.extend((img.key, i) for i in range(len(img.features)))
            else:
                keys.append(tok)
        if len(keys) > spec.context_length:
            image_positions = sum(len(img.features) for img in images)
            raise ContextLengthError(
                f"prompt does not fit the context: {len(keys)} positions ({len(keys) - image_positions} text tokens "
                f"+ {image_positions} of {len(images)} image(s)) > context length {spec.context_length}; "
                "shorten the prompt or the conversation"
            )
        return keys

    def _prompt_embeds(self, prompt_ids: list[int], images: Sequence[ImageInput], start: int) -> np.ndarray:
        """Embeddings of prompt positions [start:], image features spliced in: (1, S, D).

        Only text at positions ≥ start is embedded (one backend call); cached positions cost nothing.
        """
        pieces: list[tuple[str, int, object]] = []  # ("text", pos, token) | ("image", pos, features)
        pos, it = 0, iter(images)
        for tok in prompt_ids:
            if tok == IMAGE_TOKEN_INDEX:
                feats = next(it).features  # (K, D)
                if pos + len(feats) > start:
                    pieces.append(("image", pos, feats[max(0, start - pos) :]))
                pos += len(feats)
            else:
                if pos >= start:
                    pieces.append(("text", pos, tok))
                pos += 1
        text_ids = [tok for kind, _, tok in pieces if kind == "text"]
        text_emb = iter(self.backend.embed(np.array([text_ids], dtype=np.int64))[0]) if text_ids else iter(())
        rows = [next(text_emb)[None] if kind == "text" else np.asarray(x, np.float32) for kind, _, x in pieces]
        return np.concatenate(rows, axis=0)[None]  # (1, S, D)
