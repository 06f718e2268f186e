"""`lphi-eval run`: answer a benchmark's questions with any backend, greedily, into LLaVA's answers JSONL.

Reads the LLaVA-1.5 evaluation question files (JSONL: question_id, image, text[, category]; ScienceQA's
JSON conversation list; the MMBench TSV); `shapes` generates its own frames, and `shapes-stream` the frames of a
static camera watching shapes scenes in turn (each scene's questions asked twice over, each about a new noisy,
JPEG-compressed capture; eval/frame_reuse.py) for frame reuse. Adds the official prompt
suffix where the question text lacks it. Each answer line is flushed as it is written; a rerun skips the
question ids already answered (a line cut short by a kill is dropped first), so an interrupted run
resumes without duplicates. A rerun resumes only the same run: every answer records what decided it (the model's
digest, engine, precision, device, visual tokens, frame reuse, generation length, the generated frames' settings), and
an answers file from another run is refused by name rather than mixed into this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lphi_edge.data.camera import Camera
from lphi_edge.errors import ConfigError, EvalInputError
from lphi_edge.eval.frame_reuse import stream_items
from lphi_edge.eval.io import read_json, read_jsonl
from lphi_edge.format.hash_cache import VerifiedHashes
from lphi_edge.format.manifest import sha256_file
from lphi_edge.format.shipped import resolve_model_dir
from lphi_edge.runtime.frame_reuse import FrameReuse
from lphi_edge.runtime.visual_tokens import VisualTokens

BENCHMARKS = ("vqav2", "gqa", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmvet", "shapes", "shapes-stream")
GENERATED = ("shapes", "shapes-stream")  # benchmarks that make their own frames
SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
SUFFIX = {b: SHORT_ANSWER for b in ("vqav2", "gqa", "vizwiz", "textvqa", "pope")} | {
    "sqa": MULTIPLE_CHOICE,
    "mmbench": MULTIPLE_CHOICE,
}
MAX_NEW_TOKENS = {"mmvet": 1024}  # long-form answers; the rest are short (LLaVA's scripts use 128)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    benchmark: str
    model: str
    out: str
    questions: str | None = None
    images: str | None = None
    limit: int | None = None
    backend: str | None = None
    device: str | None = None  # None: cpu (cuda for tensorrt), as Assistant.from_pretrained
    on_bad: str = "error"  # error | skip (counted, listed in OUT.skipped.jsonl)
    max_new_tokens: int | None = None
    n: int = 400  # shapes: frames; shapes-stream: scenes
    seed: int = 12345  # shapes: generator seed
    visual_tokens: int | None = None  # None: every image token; K: VisionZip-style reduction (Assistant)
    frame_reuse: bool | float = False  # Assistant frame_reuse: False (exact frames), True (default tolerance), float
    noise: float = 3.0  # shapes-stream: sensor noise σ, 8-bit levels
    jpeg_quality: int | None = 90  # shapes-stream: JPEG quality of each capture (None: uncompressed)
    camera_effects: bool = False  # shapes: the same frames as a camera delivers them (data.camera.CameraEffects)
    dtype: str | None = None  # torch backend: fp32 (None), fp16, bf16, int8 (Assistant.from_pretrained)

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {self.benchmark!r}: expected one of {BENCHMARKS}")
        VisualTokens.of(self.visual_tokens)  # K ≥ 1 here; K ≤ N when the model is loaded
        FrameReuse.of(self.frame_reuse)
        Camera(self.noise, self.jpeg_quality)  # validates both
        if self.benchmark not in GENERATED and not (self.questions and self.images):
            raise ConfigError(f"--benchmark {self.benchmark} needs --questions FILE and --images DIR")
        if self.camera_effects and self.benchmark != "shapes":
            raise ConfigError(f"--camera-effects applies to --benchmark shapes, not {self.benchmark}")
        if self.on_bad not in ("error", "skip"):
            raise ConfigError(f"on_bad must be error or skip, got {self.on_bad!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be ≥ 1, got {self.limit}")

    @property
    def camera(self) -> Camera:
        return Camera(self.noise, self.jpeg_quality)


@dataclass
class Question:
    question_id: Any
    text: str  # what the model is asked (suffix included)
    prompt: str  # what the answers file records (LLaVA's cur_prompt)
    image: Any  # path or HxWx3 array (shapes) or None
    where: str  # file:line, for errors
    metadata: dict[str, Any] = field(default_factory=dict)


def with_suffix(text: str, benchmark: str) -> str:
    suffix = SUFFIX.get(benchmark)
    return text if suffix is None or text.rstrip().endswith(suffix) else f"{text}\n{suffix}"


def load_questions(cfg: RunConfig) -> Iterator[Question]:
    if cfg.benchmark == "shapes":
        from lphi_edge.eval.shapes import shapes_items

        where = f"shapes seed {cfg.seed}" + (" (camera effects)" if cfg.camera_effects else "")
        for qid, frame, qa in shapes_items(cfg.n, cfg.seed, cfg.camera_effects):
            meta = {"type": qa.kind, "expected": qa.answer}
            yield Question(qid, qa.question, qa.question, frame, where, meta)
        return
    if cfg.benchmark == "shapes-stream":
        for qid, frame, qa, scene in stream_items(cfg.n, cfg.seed, cfg.camera):
            meta = {"type": qa.kind, "expected": qa.answer, "scene": scene}
            yield Question(qid, qa.question, qa.question, frame, f"shapes-stream seed {cfg.seed}", meta)
        return
    path, images = Path(cfg.questions), Path(cfg.images)
    if cfg.benchmark == "mmbench":
        yield from _mmbench_questions(path, images)
        return
    if path.suffix == ".json":  # ScienceQA's LLaVA file: [{id, image?, conversations: [{value}]}]
        for i, rec in enumerate(read_json(path)):
            try:
                text = rec["conversations"][0]["value"].replace("<image>", "").strip()
            except (KeyError, IndexError, TypeError, AttributeError):
                raise EvalInputError(f"{path}: record {i}: expected {{id, conversations: [{{value}}]}}") from None
            asked = with_suffix(text, cfg.benchmark)
            image = images / rec["image"] if rec.get("image") else None
            prompt = ("<image>\n" if image else "") + asked
            yield Question(rec.get("id", i), asked, prompt, image, f"{path}: record {i}")
        return
    for rec in read_jsonl(path, ("question_id", "text")):
        asked = with_suffix(rec["text"], cfg.benchmark)
        image = images / rec["image"] if rec.get("image") else None
        meta = {"category": rec["category"]} if "category" in rec else {}
        yield Question(rec["question_id"], asked, rec["text"], image, f"{path}: line {rec['_line']}", meta)


def _mmbench_questions(path: Path, images: Path) -> Iterator[Question]:
    """The MMBench TSV (images base64 in `image`, or files images/<index>.jpg)."""
    from lphi_edge.eval.mmbench import LETTERS, read_mmbench

    for index, row in read_mmbench(path).items():
        question = row["question"]
        hint = row.get("hint") or ""
        if hint and hint.lower() != "nan":
            question = f"{hint}\n{question}"
        for c in LETTERS:
            if row.get(c) and row[c].lower() != "nan":
                question += f"\n{c}. {row[c]}"
        asked = with_suffix(question, "mmbench")
        image = _decode_b64(row["image"]) if len(row.get("image", "")) > 256 else images / f"{index}.jpg"
        yield Question(index, asked, asked, image, f"{path}: index {index}", {"category": row.get("category")})


def _decode_b64(data: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def model_digest(path: Path) -> str:
    """sha256 over what decides a model's answers: an export's manifest (it pins every file's sha256), or a
    checkpoint's config and weight files. Two models that share a name (a retrained `shapes-demo`) differ here."""
    manifest = path / "manifest.json"
    files = [manifest] if manifest.is_file() else [path / "config.json", *sorted(path.glob("*.safetensors"))]
    known = VerifiedHashes(path)  # a file unchanged since this machine hashed it is not read again (gigabytes)
    h = hashlib.sha256()
    for f in files:
        digest = known.recorded(f)
        if digest is None:
            digest = sha256_file(f)
            known.remember(f, digest)
        h.update(f"{f.name}:{digest};".encode())
    known.save()
    return h.hexdigest()[:16]


def _check_same_run(out: Path, first: dict[str, Any] | None, mine: dict[str, Any]) -> None:
    """Refuse to resume over answers another run wrote (named: the setting, theirs, ours)."""
    if first is None:
        return
    theirs = first.get("metadata", {}).get("run")
    if not isinstance(theirs, dict):
        raise EvalInputError(
            f"{out}: its answers do not record the run that wrote them (an older lphi-eval), so they cannot be "
            "checked to be this run's: write to a new --out"
        )
    differ = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if differ:
        said = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise EvalInputError(f"{out} holds answers of another run ({said}): write to a new --out or delete it")


def _answered(out: Path) -> tuple[set[Any], dict[str, Any] | None]:
    """Question ids already in OUT and its first record; a last line cut short by a kill is removed."""
    if not out.is_file():
        return set(), None
    lines = out.read_text().splitlines(keepends=True)
    good, done, first = [], set(), None
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not line.endswith("\n"):
                raise ValueError("unterminated")
        except ValueError:
            if i == len(lines) - 1:  # interrupted mid-write
                logger.warning("%s: dropping the incomplete last line of an interrupted run", out)
                break
            raise EvalInputError(
                f"{out}: line {i + 1}: not valid JSON; not resuming over a damaged answers file"
            ) from None
        good.append(line)
        done.add(rec["question_id"])
        first = first or rec
    if len(good) != len(lines):
        out.write_text("".join(good))
    return done, first


def run(cfg: RunConfig) -> dict[str, Any]:
    """Answer every question not answered yet; returns counts."""
    from lphi_edge.assistant import Assistant

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, first = _answered(out)
    questions = list(load_questions(cfg))
    if cfg.limit:
        questions = questions[: cfg.limit]
    todo = [q for q in questions if q.question_id not in done]
    logger.info("%s: %d questions, %d already answered", cfg.benchmark, len(questions), len(questions) - len(todo))
    assistant = Assistant.from_pretrained(
        cfg.model,
        backend=cfg.backend,
        device=cfg.device,
        dtype=cfg.dtype,
        frame_reuse=cfg.frame_reuse,
        visual_tokens=cfg.visual_tokens,
    )
    be = assistant.backend
    model_id = Path(cfg.model).name if os.sep in cfg.model else cfg.model
    max_new = cfg.max_new_tokens or MAX_NEW_TOKENS.get(cfg.benchmark, 128)
    setup = {
        "model_digest": model_digest(resolve_model_dir(cfg.model, cfg.backend)),
        "backend": be.name,
        "precision": be.precision,
        "device": be.device,
        "visual_tokens": cfg.visual_tokens,
        "frame_reuse": cfg.frame_reuse,
        "max_new_tokens": max_new,
    }
    if cfg.benchmark in GENERATED:  # the question ids name the seed and frame, not how the frames were rendered
        setup |= {"camera_effects": cfg.camera_effects, "noise": cfg.noise, "jpeg_quality": cfg.jpeg_quality}
    _check_same_run(out, first, setup)
    skipped = []
    with open(out, "a") as f:
        for q in tqdm(todo, desc=f"lphi-eval {cfg.benchmark}", unit="q"):
            image = q.image
            if isinstance(image, Path) and not image.is_file():
                problem = f"{q.where}: image {image} not found"
                if cfg.on_bad == "error":
                    raise EvalInputError(f"{problem} (use --on-bad skip to count and skip such questions)")
                skipped.append({"question_id": q.question_id, "reason": problem})
                continue
            ans = assistant.ask(image, q.text, max_new_tokens=max_new, temperature=0.0)
            t = ans.timings
            rec = {
                "question_id": q.question_id,
                "prompt": q.prompt,
                "text": ans.text.strip(),
                "answer_id": uuid.uuid4().hex[:22],
                "model_id": model_id,
                "metadata": {
                    "benchmark": cfg.benchmark,
                    "backend": be.name,
                    "precision": be.precision,
                    "device": be.device,
                    "visual_tokens": cfg.visual_tokens,
                    "prompt_tokens": t.prompt_tokens,
                    "frame_reused": t.frame_reused,
                    "frame_difference": t.frame_difference,
                    "answer_reused": t.answer_reused,
                    "run": setup,
                    **q.metadata,
                },
            }
            f.write(json.dumps(rec) + "\n")
            f.flush()
    if skipped:
        with open(out.with_suffix(".skipped.jsonl"), "a") as f:
            f.writelines(json.dumps(s) + "\n" for s in skipped)
        logger.warning("skipped %d question(s); listed in %s", len(skipped), out.with_suffix(".skipped.jsonl"))
    return {
        "questions": len(questions),
        "answered_now": len(todo) - len(skipped),
        "already_answered": len(questions) - len(todo),
        "skipped": len(skipped),
        "out": str(out),
    }
