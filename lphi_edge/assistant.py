"""The Python API: `Assistant` (ask / stream / chat) and `Answer`.

    a = Assistant.from_pretrained("ckpt", backend="torch", device="cpu")
    ans = a.ask("frame.png", "What is in front of the robot?", max_new_tokens=64)
    ans.text, ans.token_ids, ans.timings
    for piece in a.stream(frame, "Describe the scene."): print(piece, end="")
    chat = a.chat(frame); chat.ask("What is on the table?"); chat.ask("And to its left?")
    a = Assistant.from_pretrained("ckpt", frame_reuse=True, visual_tokens=144)   # a live camera, fewer tokens

One Assistant serves one caller at a time (calls are serialised by a lock). It keeps the KV cache of
its last prompt, so a new question reuses the shared prefix (system prompt, and the image when the
frame is unchanged), and it caches the features of the last few frames.

Frame reuse (`frame_reuse`, runtime/frame_reuse.py): False reuses a cached frame's features only for the
same pixels; True (or a tolerance in 8-bit levels) also for a frame whose frame difference from a cached
one is within the tolerance — a live camera's next frame of an unchanged scene. The reused frame keeps the
cached frame's key, so its image positions are reused from the KV cache too, and a greedy answer to the same
question about it is returned as stored, without running the model. `answer.timings` says what happened
(frame_reused, frame_difference, answer_reused).

Visual tokens (`visual_tokens=K`, runtime/visual_tokens.py): the LM sees K of the image's N tokens, chosen
by the vision tower's [CLS] attention (VisionZip); prompt_tokens shrinks by N − K.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lphi_edge.errors import ConfigError
from lphi_edge.format.manifest import Manifest, is_export_dir
from lphi_edge.format.shipped import resolve_model_dir
from lphi_edge.processing.image import ImageInput as FrameInput
from lphi_edge.processing.image import ImageProcessor, ProcessorConfig
from lphi_edge.processing.template import Template, get_template
from lphi_edge.processing.tokenizer import Tokenizer
from lphi_edge.runtime.backend import Backend, image_attention_problem
from lphi_edge.runtime.device import check_threads, parse_device
from lphi_edge.runtime.frame_reuse import FrameReuse, frame_difference, frame_signature
from lphi_edge.runtime.generation import GenerationConfig, ImageInput, Session, Timings, TokenHook, drain
from lphi_edge.runtime.visual_tokens import VisualTokens, select_visual_tokens

if TYPE_CHECKING:  # the runtime path never imports torch
    from lphi_edge.runtime.torch_backend import TorchBackend

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ANSWER_STORE_SIZE = 64  # stored greedy answers (frame, question, settings), least recently used dropped first
_KEEP = object()  # configure(): leave a setting as it is


@dataclass
class _Frame:
    """A cached frame: what the LM is fed for it and its signature for the frame difference."""

    image: ImageInput  # features [K, D] as the LM sees them, keyed by frame (and reduction)
    signature: np.ndarray  # f32 [3, H / BLOCK, W / BLOCK] block means in 8-bit levels


@dataclass
class Answer:
    """One answer. `token_ids` are the generated ids without the final eos."""

    text: str
    token_ids: list[int]
    timings: Timings
    finish_reason: str  # "eos" | "stop" | "length" | "context" | "canceled" (on_token asked to stop)
    backend: str
    precision: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "timings_ms": self.timings.to_dict(),
        }


class Assistant:
    """A vision-language assistant over any backend, sharing one generation loop."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        processor: ProcessorConfig,
        template: Template,
        eos_token_ids: set[int] | None = None,
        image_cache_size: int = 4,
        frame_reuse: bool | float | FrameReuse = False,
        visual_tokens: int | VisualTokens | None = None,
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.processor = ImageProcessor(processor)
        self.template = template
        self.eos_token_ids = frozenset(eos_token_ids or ()) | {tokenizer.eos_token_id}
        self.image_cache_size = image_cache_size
        self._levels = np.asarray(processor.image_std, np.float32) / np.float32(processor.rescale_factor)  # (3,)
        self._frames: OrderedDict[str, _Frame] = OrderedDict()  # frame digest → cached frame
        self._answers: OrderedDict[tuple, Answer] = OrderedDict()  # (frame key, turns, config) → greedy answer
        self._session = self.new_session()
        self._lock = threading.RLock()
        self.last_answer: Answer | None = None  # of the last completed stream()
        self.frame_reuse = FrameReuse()
        self.visual_tokens: VisualTokens | None = None
        self.configure(frame_reuse=frame_reuse, visual_tokens=visual_tokens)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        backend: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        cuda_graphs: bool | None = None,
        threads: int | None = None,
        torch_compile: bool = False,
        **kwargs: Any,
    ) -> Assistant:
        """Load a checkpoint directory (torch backend) or an export directory (its manifest's backend).

        `device`: "cpu", "cuda" or "cuda:N" (GPU N); default cpu, and cuda for tensorrt (which refuses the
        CPU and GPUs other than the process's first: select one with CUDA_VISIBLE_DEVICES). `threads`: CPU
        threads in 1..os.cpu_count() (default: each library's own) — for the torch backend
        torch.set_num_threads(N), which is process-wide (every torch model in this process then uses N); for
        onnxruntime the intra-op pool of this backend's sessions; TensorRT has no CPU pool to set. `dtype`
        (torch backend only): fp32 (default, as the original), fp16, bf16, or int8 (CPU: int8 matmuls, bf16
        elsewhere; runtime/torch_backend.py). `cuda_graphs` (torch backend
        only): replay decode steps from a captured CUDA graph (default: on CUDA). `torch_compile` (torch backend
        only): run the vision encoder and the prefill as compiled graphs, compiled while loading (runtime/
        torch_backend.py). Other keywords go to the
        Assistant — image_cache_size, frame_reuse (False: exact frames only; True: the default tolerance; or a
        tolerance in 8-bit levels), visual_tokens (None: all; K in 1..N) — and for exports `verify_checksums` /
        `provider` to the backend.
        """
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
        if device is not None:
            parse_device(device)  # a typo fails before anything loads
        check_threads(threads)
        path = resolve_model_dir(model, backend)

        if is_export_dir(path):
            for name, value in (("cuda_graphs", cuda_graphs), ("torch_compile", torch_compile or None)):
                if value is not None:
                    raise ConfigError(f"{name} applies to the torch backend (a checkpoint), not to exports")
            return cls._from_export(path, backend, device, dtype, threads=threads, **kwargs)
        if backend not in (None, "torch"):
            raise ConfigError(
                f"{path} is a checkpoint: backend {backend!r} runs exported engines; export it first with "
                f"`lphi-export {path} --out DIR` or use backend='torch'"
            )
        if kwargs.pop("provider", None) is not None:
            raise ConfigError(
                f"{path} is a checkpoint (torch backend): provider chooses onnxruntime's execution provider and "
                "applies to export directories"
            )
        from lphi_edge.runtime.torch_backend import TorchBackend

        tokenizer = Tokenizer.from_dir(path)  # before the weights: a broken tokenizer fails fast
        be = TorchBackend.from_checkpoint(
            path,
            device=device or "cpu",
            dtype=dtype or "fp32",
            cuda_graphs=cuda_graphs,
            threads=threads,
            torch_compile=torch_compile,
        )
        return cls.from_torch_backend(be, path, tokenizer, **kwargs)

    @classmethod
    def phased(cls, prompt: Assistant, tokens: Assistant, **kwargs: Any) -> Assistant:
        """One engine per phase (runtime/phased.py): frames and prompts on `prompt`'s engine, the answer's tokens
        on `tokens`' — e.g. torch bf16 for the prompt, an int4 export with the KV cache in place for the tokens.
        The cache moves to the token engine once per answer. Both must be the same model: the same tokenizer,
        template, image preprocessing and model geometry (checked); answers stop on the token engine's eos
        ids. The two engines are shared, not copied: the memory is both engines' (the benchmark states each
        one's). Keywords go to the new Assistant (frame_reuse, visual_tokens, image_cache_size)."""
        from lphi_edge.runtime.phased import PhasedBackend

        differ = [
            what
            for what, a, b in (
                ("tokenizer", prompt.tokenizer, tokens.tokenizer),
                ("template", prompt.template, tokens.template),
                ("image preprocessing", prompt.processor.config, tokens.processor.config),
            )
            if a != b
        ]
        if differ:
            raise ConfigError(f"the prompt and token engines are not the same model: their {', '.join(differ)} differ")
        backend = PhasedBackend(prompt.backend, tokens.backend)
        return cls(
            backend, tokens.tokenizer, tokens.processor.config, tokens.template, set(tokens.eos_token_ids), **kwargs
        )

    @classmethod
    def from_torch_backend(cls, be: TorchBackend, path: Path, tokenizer: Tokenizer, **kwargs: Any) -> Assistant:
        """An Assistant over a model already loaded from the checkpoint at `path` (e.g. the exporter's own)."""
        from lphi_edge.model.checkpoint import processor_config

        config = be.model.config
        eos = config.text.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        parts = (be, tokenizer, processor_config(path, config), get_template(config.template), eos_ids)
        if be.torch_compile:
            # the compiled prefill specialises on the caches real answers hand it (empty, a stored prefix, a grown
            # chat): one throwaway chat on a blank frame compiles those variants now, and leaves nothing in the caches
            warm = cls(*parts)
            chat = warm.chat(np.full((8, 8, 3), 128, np.uint8))
            for prompt in ("Describe the image briefly.", "And again?"):
                chat.ask(prompt, max_new_tokens=2)
        return cls(*parts, **kwargs)

    @classmethod
    def _from_export(
        cls,
        path: Path,
        backend: str | None,
        device: str | None,
        dtype: str | None,
        verify_checksums: bool = True,
        provider: str | None = None,
        threads: int | None = None,
        engine_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> Assistant:

        if dtype is not None:
            raise ConfigError(
                f"dtype applies to the torch backend; {path} is an export whose precision was fixed "
                "at export time (lphi-export --fp16 / --quant)"
            )
        manifest = Manifest.load(path, verify_checksums=verify_checksums)
        backend = backend or manifest.backend
        if backend == "torch":
            raise ConfigError(
                f"{path} is an export directory (no PyTorch weights): use backend 'onnxruntime' or "
                "'tensorrt', or point --model at the checkpoint"
            )
        if backend == "onnxruntime":
            from lphi_edge.runtime.onnx_backend import OnnxBackend

            be: Backend = OnnxBackend(manifest, device=device or "cpu", provider=provider, threads=threads)
        else:
            from lphi_edge.runtime.trt_backend import TrtBackend

            if threads is not None:
                logger.info("threads=%d not applied: TensorRT engines run on the GPU (no CPU thread pool)", threads)
            be = TrtBackend.from_export_dir(path, engine_dir, device=device or "cuda")  # engine_dir: default this GPU's
        proc = dict(manifest.processor)
        processor = ProcessorConfig.from_preprocessor_dict(proc, pad_to_square=bool(proc.get("pad_to_square")))
        return cls(
            be,
            Tokenizer.from_dir(path),
            processor,
            get_template(manifest.template),
            {manifest.text.eos_token_id},
            **kwargs,
        )

    # ---- public API ---------------------------------------------------------------------------
    def ask(self, image: FrameInput | None, prompt: str, **generation: Any) -> Answer:
        """Answer `prompt` about `image` (a path, PIL image or HxWx3 uint8 RGB array; None = text only).

        Generation keywords: max_new_tokens, temperature, top_p, top_k, seed, stop (see GenerationConfig),
        or config=GenerationConfig(...); on_text=callable receives the answer piece by piece;
        on_token=callable(tokens so far, text so far) is called after every token, and returning True stops the
        answer there (finish_reason "canceled"; such an answer is never stored for frame reuse).
        """
        on_text, on_token = generation.pop("on_text", None), generation.pop("on_token", None)
        config = generation_config(generation)
        return drain(self._run(self._session, [(prompt, None)], image, config, on_token), on_text)

    def stream(self, image: FrameInput | None, prompt: str, **generation: Any) -> Iterator[str]:
        """Yield the answer piece by piece (the pieces join to the answer's text); the full Answer is
        `last_answer` once the iterator is exhausted. on_token= as in `ask`."""
        on_token = generation.pop("on_token", None)
        config = generation_config(generation)  # validated here, not at the first next()
        return self._remember(self._run(self._session, [(prompt, None)], image, config, on_token))

    def _remember(self, steps: Generator[str, None, Answer]) -> Generator[str, None, Answer]:
        self.last_answer = yield from steps
        return self.last_answer

    def chat(self, image: FrameInput | None = None) -> Chat:
        """A multi-turn conversation about one image that keeps its own KV cache."""
        return Chat(self, image)

    def prompt_inputs(self, image: FrameInput | None, prompt: str) -> tuple[list[int], list[ImageInput]]:
        """What `ask` feeds the generation loop: the prompt's token ids (an image placeholder included) and the
        frame's features from this backend's vision encoder — for tools that drive a `new_session()` step by
        step (verification, calibration) through exactly the pipeline answers take."""
        with self._lock:
            return self._inputs([(prompt, None)], image, Timings())

    def new_session(self) -> Session:
        """A fresh KV cache over this assistant's backend and tokenizer (the generation loop's own state)."""
        return Session(self.backend, self.tokenizer, self.eos_token_ids)

    def reset(self) -> None:
        """Forget the cached KV prefix, frame features and stored answers (e.g. between benchmark runs)."""
        with self._lock:
            self._session.reset()
            self._frames.clear()
            self._answers.clear()

    def configure(self, *, frame_reuse: Any = _KEEP, visual_tokens: Any = _KEEP) -> None:
        """Change frame reuse or the visual tokens at run time (the next call uses them), validated as in
        from_pretrained; a setting not given stays. A new visual_tokens forgets the cached frames and answers."""
        with self._lock:
            reuse = self.frame_reuse if frame_reuse is _KEEP else FrameReuse.of(frame_reuse)
            tokens = self.visual_tokens if visual_tokens is _KEEP else VisualTokens.of(visual_tokens)
            if tokens is not None:
                tokens.check(self.backend.spec.image_tokens)
                problem = image_attention_problem(self.backend)
                if problem is not None:
                    raise ConfigError(f"visual_tokens {tokens.tokens} needs the vision tower's attention: {problem}")
            if tokens != self.visual_tokens:
                self._frames.clear()
                self._answers.clear()
            self.frame_reuse, self.visual_tokens = reuse, tokens

    # ---- internals ------------------------------------------------------------------------------
    def _run(
        self,
        session: Session,
        turns: list[tuple[str, str | None]],
        image: FrameInput | None,
        config: GenerationConfig,
        on_token: TokenHook | None = None,
    ) -> Generator[str, None, Answer]:
        """The one path of every call: template → tokens → image features → shared generation loop."""
        with self._lock:
            t0 = time.perf_counter()
            timings = Timings()
            prompt_ids, images = self._inputs(turns, image, timings)
            stored_as = self._answer_key(turns, images, config)
            stored = self._answers.get(stored_as) if stored_as is not None else None
            if stored is not None:
                self._answers.move_to_end(stored_as)
                answer = _replayed(stored, timings, t0)
                if answer.text:
                    yield answer.text
                if on_token is not None:
                    on_token(len(answer.token_ids), answer.text)
                return answer
            result = yield from session.iter_generate(prompt_ids, images, config, timings, t0, on_token)
            be = self.backend
            answer = Answer(
                result.text, result.token_ids, result.timings, result.finish_reason, be.name, be.precision, be.device
            )
            if stored_as is not None and answer.finish_reason != "canceled":
                self._answers[stored_as] = answer
                while len(self._answers) > ANSWER_STORE_SIZE:
                    self._answers.popitem(last=False)
            return answer

    def _answer_key(
        self, turns: list[tuple[str, str | None]], images: list[ImageInput], config: GenerationConfig
    ) -> tuple | None:
        """Where a greedy answer about a frame is stored (with frame reuse on); None: not stored."""
        if not (self.frame_reuse.enabled and config.greedy and len(images) == 1):
            return None
        return images[0].key, tuple(turns), config

    def _inputs(
        self, turns: list[tuple[str, str | None]], image: FrameInput | None, timings: Timings
    ) -> tuple[list[int], list[ImageInput]]:
        text = self.template.prompt(turns, image=image is not None)  # validates the prompt first
        return self.tokenizer.encode_prompt(text), [] if image is None else [self._image_features(image, timings)]

    def _image_features(self, image: FrameInput, timings: Timings) -> ImageInput:
        """The frame's features as the LM sees them: from the cache (the same frame, or with frame reuse a
        near-identical one) or from the vision encoder (then reduced to the visual tokens)."""
        t0 = time.perf_counter()
        pixels = self.processor(image)  # (1, 3, H, W)
        digest = hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()
        frame, signature = self._frames.get(digest), None
        if frame is not None:
            timings.frame_difference = 0.0
        elif self._frames:
            signature = frame_signature(pixels, self._levels)  # (3, H / BLOCK, W / BLOCK)
            nearest, difference = min(
                ((d, frame_difference(signature, f.signature)) for d, f in self._frames.items()), key=lambda x: x[1]
            )
            timings.frame_difference = difference
            if self.frame_reuse.accepts(difference):
                digest, frame = nearest, self._frames[nearest]
        t1 = time.perf_counter()
        timings.preprocess_ms += (t1 - t0) * 1e3
        if frame is not None:
            self._frames.move_to_end(digest)
            timings.frame_reused = True
            return frame.image
        vt = self.visual_tokens
        if vt is None:
            image_input = ImageInput(digest, self.backend.encode_images(pixels)[0])  # (N, D)
        else:
            feats, attention = self.backend.encode_images(pixels, with_attention=True)  # (1, N, D), (1, N)
            kept = select_visual_tokens(feats[0], attention[0], vt)  # (K, D)
            image_input = ImageInput((digest, vt.tokens, vt.n_contextual), kept)
        timings.vision_ms += (time.perf_counter() - t1) * 1e3
        if signature is None:
            signature = frame_signature(pixels, self._levels)
        self._frames[digest] = _Frame(image_input, signature)
        while len(self._frames) > self.image_cache_size:
            self._frames.popitem(last=False)
        return image_input


class Chat:
    """Multi-turn conversation. Each turn re-renders the whole conversation with the template (as the
    original code does) and reuses the KV cache for the prefix it shares with the previous turn."""

    def __init__(self, assistant: Assistant, image: FrameInput | None):
        self.assistant = assistant
        self.image = image
        self.turns: list[tuple[str, str]] = []
        self._session = assistant.new_session()
        self.last_answer: Answer | None = None

    def ask(self, prompt: str, **generation: Any) -> Answer:
        """Ask the next question; same keywords as `Assistant.ask`."""
        on_text, on_token = generation.pop("on_text", None), generation.pop("on_token", None)
        return drain(self._turn(prompt, generation_config(generation), on_token), on_text)

    def stream(self, prompt: str, **generation: Any) -> Iterator[str]:
        """Stream the next answer; the turn is recorded once the iterator is exhausted."""
        on_token = generation.pop("on_token", None)
        return self._turn(prompt, generation_config(generation), on_token)

    def _turn(self, prompt: str, config: GenerationConfig, on_token: TokenHook | None) -> Generator[str, None, Answer]:
        turns = [*self.turns, (prompt, None)]
        answer = yield from self.assistant._run(self._session, turns, self.image, config, on_token)
        self.turns.append((prompt, answer.text))
        self.last_answer = answer
        return answer

    def reset(self) -> None:
        self.turns.clear()
        self._session.reset()


def _replayed(stored: Answer, timings: Timings, t0: float) -> Answer:
    """A stored answer given again: its text and tokens, this call's timings (no model time), flagged."""
    done = (time.perf_counter() - t0) * 1e3
    timings.ttft_ms = timings.total_ms = done
    timings.prompt_tokens, timings.new_tokens = stored.timings.prompt_tokens, stored.timings.new_tokens
    timings.answer_reused = True
    return Answer(
        stored.text, list(stored.token_ids), timings, stored.finish_reason, stored.backend, stored.precision,
        stored.device,
    )  # fmt: skip


def generation_config(kwargs: dict[str, Any]) -> GenerationConfig:
    config = kwargs.pop("config", None)
    if config is not None:
        if kwargs:
            raise ConfigError(f"pass either config= or generation keywords, not both (got {sorted(kwargs)})")
        return config
    try:
        return GenerationConfig(**kwargs)
    except TypeError:
        known = sorted(GenerationConfig.__dataclass_fields__)
        unknown = sorted(set(kwargs) - set(known))
        raise ConfigError(f"unknown generation option(s) {unknown}: expected some of {known}") from None
