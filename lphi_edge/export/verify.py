"""Exported engines against the PyTorch model: per-part numbers and end-to-end greedy tokens.

Two halves, so that any machine can re-check an export without torch or the checkpoint:
  `make_golden` runs the PyTorch model (behind the Assistant API) on fixed inputs and records what it was
  fed and what it answered (`lphi_edge.format.golden`, stored in every export); `check` runs an exported
  Assistant on the same inputs and judges it against that record — at export time and in `lphi-verify`.
Checked points: preprocessing (pixel values) · vision features · prefill logits and a sample of the KV
cache · decode logits teacher-forced over several steps · the same logits through the export's whole
pipeline · greedy answers for several frame/prompt pairs.
Thresholds by precision: fp32 cosine ≥ 0.99999, fp16 cosine ≥ 0.999, and for both no greedy divergence
that the precision's measured logit error cannot explain; int8 / int4 report their token-match rate and
cosine (no gate beyond finite outputs).

Near-ties. A greedy answer diverges where the export ranks another token first. Where the reference's
margin between its token `a` and the export's token `b` at the first diverging step is small, the
export's rounding alone flips it: with the export's logits x = r + e, b beats a iff
r[a] − r[b] ≤ e[b] − e[a] ≤ 2·max|e|. The per-part measurements give max|e| on the verification frame
(E: the worst max |diff| of prefill_logits, decode_logits and answer_logits); another frame or step may
see more, so the bound is 2 · OTHER_INPUTS · E. A divergence within the bound is a "near-tie" (a real
checkpoint has them, so does a random one); beyond it, or where the logits fail their own cosine gate
(then E is not that precision's noise), it is an "error" and fails fp32 / fp16 exports. An int8 KV cache
(`kv_quant`): the PyTorch model's prefill cache put through the export's int8 rounding (its own scales)
keeps cosine ≥ KV_COSINE_MIN against itself in every layer's keys and values — the cache's own error,
whatever the weights' precision; the fraction of values that saturate is reported. With float weights the
exported cache itself (dequantized) must also keep cosine ≥ KV_COSINE_MIN against the PyTorch model's.
The vision features keep their precision's gate; logits and tokens are reported (the cache's rounding
moves them), gated only by `min_token_match`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lphi_edge.assistant import Answer, Assistant
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import LphiError
from lphi_edge.format.golden import TOPK, Golden
from lphi_edge.format.kv_int8 import round_trip
from lphi_edge.runtime.generation import ImageInput

logger = logging.getLogger(__name__)

PROMPTS = (
    "What shape is in the image?",
    "How many shapes are there?",
    "What color is the circle?",
    "Is there a red square?",
    "Describe the scene in front of the robot.",
)


class VerificationError(LphiError):
    """The exported parts do not answer like the PyTorch model; `report` holds the numbers."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


COSINE_MIN = {"fp32": 0.99999, "fp16": 0.999}
KV_COSINE_MIN = 0.999  # an int8 KV cache, dequantized, against the PyTorch model's
LOGIT_PARTS = ("prefill_logits", "decode_logits", "answer_logits")  # what the near-tie bound is measured on
OTHER_INPUTS = 2.0  # another frame / step may see up to this many times the verification frame's logit error


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


@dataclass
class Comparison:
    max_abs_diff: float
    cosine: float

    @classmethod
    def of(cls, ref: np.ndarray, got: np.ndarray) -> Comparison:
        return cls(float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))), cosine(ref, got))


@dataclass
class Divergence:
    """Where one pair's greedy answers part: the first step at which the export picks another token."""

    pair: int
    step: int  # 0 = the first answer token
    reference_token: int
    export_token: int
    reference_text: str
    export_text: str
    margin: float  # the reference's logit of its token minus that of the export's token, at `step`
    bound: float  # the largest margin the export's measured logit error explains
    export_logit_error: float  # max |diff| of the two sides' logits at `step` (reported, not used)
    verdict: str  # "near-tie" | "error"
    why: str = ""  # set when the verdict is not the margin against the bound

    def describe(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return (
            f"pair {self.pair} step {self.step}: reference {self.reference_token} {self.reference_text!r} vs export "
            f"{self.export_token} {self.export_text!r}, margin {self.margin:.3g} "
            f"{'≤' if self.margin <= self.bound else '>'} bound {self.bound:.3g}: {self.verdict}{why}"
        )


@dataclass
class VerificationReport:
    precision: str
    kv_quant: str | None = None
    kv_clipped_fraction: float | None = None  # of the reference cache's values beyond the int8 range
    parts: dict[str, Comparison] = field(default_factory=dict)
    pairs: int = 0
    identical_answers: int = 0
    token_match_rate: float = 0.0
    logit_error_bound: float | None = None  # 2 · OTHER_INPUTS · the worst logit part's max |diff|
    divergences: list[Divergence] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["thresholds"] = {
            "cosine_min": COSINE_MIN.get(self.precision),
            "identical_tokens": self.precision in COSINE_MIN and self.kv_quant is None,
            "kv_cosine_min": KV_COSINE_MIN if self.kv_quant else None,
            "divergence_bound": f"2 * {OTHER_INPUTS} * max |diff| of {list(LOGIT_PARTS)}",
        }
        return d


def report_table(report: dict[str, Any]) -> str:
    """A verification report (as stored in manifest.json) as a text table."""
    rows = [f"{'check':<18} {'max |diff|':>12} {'cosine':>10}"]
    rows += [f"{name:<18} {c['max_abs_diff']:>12.3e} {c['cosine']:>10.6f}" for name, c in report["parts"].items()]
    if report.get("kv_clipped_fraction") is not None:
        rows.append(f"int8 KV cache: {report['kv_clipped_fraction']:.4%} of the reference cache's values saturate")
    rows.append(
        f"greedy answers: {report['identical_answers']}/{report['pairs']} identical, "
        f"token match rate {report['token_match_rate']:.3f} ({report['precision']}"
        + (f", {report['kv_quant']} KV cache)" if report.get("kv_quant") else ")")
    )
    rows += [f"  diverges: {Divergence(**d).describe()}" for d in report.get("divergences", [])]
    rows.append("PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))
    return "\n".join(rows)


def verify(
    reference: Assistant,
    exported: Assistant,
    precision: str,
    *,
    pairs: int = 8,
    new_tokens: int = 16,
    teacher_steps: int = 8,
    seed: int = 0,
    min_token_match: float | None = None,
    kv_quant: str | None = None,
) -> VerificationReport:
    """Compare `exported` (any backend) with `reference` (the torch model) on fixed inputs: the golden set the
    reference makes (`make_golden`), checked by `check` — the same check `lphi-verify` runs on a robot."""
    golden = make_golden(reference, pairs=pairs, new_tokens=new_tokens, teacher_steps=teacher_steps, seed=seed)
    return check(exported, golden, precision, min_token_match=min_token_match, kv_quant=kv_quant)


def make_golden(
    reference: Assistant,
    *,
    pairs: int = 8,
    new_tokens: int = 16,
    teacher_steps: int = 8,
    seed: int = 0,
    kv_positions: int = 4,
) -> Golden:
    """What the reference (the PyTorch model behind the Assistant API) is fed and answers on the verification's
    fixed inputs: synthetic frames (seed `seed`), PROMPTS, `teacher_steps` forced tokens, `new_tokens` answers."""
    frames = sample_frames(pairs, seed=seed)
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(pairs)]
    eos = min(reference.eos_token_ids)
    prompt_ids, image = reference.prompt_inputs(frames[0], prompts[0])
    features = image[0].features  # (N, D): the decoder check feeds these to both sides
    forced = reference.ask(frames[0], prompts[0], max_new_tokens=teacher_steps).token_ids
    session = reference.new_session()
    prefill = session.prefill(prompt_ids, image)[0, -1]  # (V,)
    cache = session.cache.arrays()  # 2·L × (1, H, P, Dh)
    length = cache[0].shape[2]
    positions = np.unique(np.linspace(0, length - 1, min(length, kv_positions)).round().astype(np.int64))
    kv = np.stack([t[0][:, positions] for t in cache])  # (2·L, H, k, Dh)
    decode = np.stack([session.step(t)[0, -1] for t in forced]) if forced else np.zeros((0, prefill.size))
    steps = new_tokens + 1  # an answer's tokens and the eos that may end it
    topk_ids = np.full((pairs, steps, TOPK), -1, np.int64)
    topk_logits = np.full((pairs, steps, TOPK), -np.inf, np.float32)
    answers, ids_per_pair = [], []
    for k, (frame, prompt) in enumerate(zip(frames, prompts)):
        tokens = _answer_tokens(reference.ask(frame, prompt, max_new_tokens=new_tokens), eos)
        ids, images = reference.prompt_inputs(frame, prompt)
        rows = _forced_logits(reference, ids, images, tokens[:-1])  # (len(tokens), V): before each token
        best = np.argsort(-rows, axis=1, kind="stable")[:, :TOPK]  # (len(tokens), K)
        topk_ids[k, : len(tokens), : best.shape[1]] = best
        topk_logits[k, : len(tokens), : best.shape[1]] = np.take_along_axis(rows, best, axis=1)
        answers.append(tokens)
        ids_per_pair.append(ids)
    settings = {
        "seed": seed, "new_tokens": new_tokens, "teacher_steps": teacher_steps, "topk": TOPK,
        "cosine_min": COSINE_MIN, "kv_cosine_min": KV_COSINE_MIN, "other_inputs": OTHER_INPUTS,
        "reference": f"{reference.backend.name}/{reference.backend.precision}",
    }  # fmt: skip
    return Golden(
        frames=np.stack(frames), pixel_values=reference.processor(frames[0]), vision_features=features,
        prefill_logits=prefill, decode_logits=decode, kv_positions=positions, kv_samples=kv,
        answer_topk_ids=topk_ids, answer_topk_logits=topk_logits, prompts=prompts, prompt_ids=ids_per_pair,
        forced_tokens=list(forced), answers=answers, settings=settings,
    )  # fmt: skip


def check(
    exported: Assistant,
    golden: Golden,
    precision: str,
    *,
    min_token_match: float | None = None,
    kv_quant: str | None = None,
) -> VerificationReport:
    """Run `exported` on the golden inputs and judge it against the golden outputs (the gates in the module
    docstring). Needs neither torch nor the checkpoint."""
    report = VerificationReport(precision, kv_quant)
    frame0, prompt0 = golden.frames[0], golden.prompts[0]
    report.parts["pixel_values"] = Comparison.of(golden.pixel_values, exported.processor(frame0))
    prompt_ids, own_image = exported.prompt_inputs(frame0, prompt0)  # the export's own pipeline
    if prompt_ids != golden.prompt_ids[0]:
        report.failures.append("the export's tokenizer does not give the verification prompt's token ids")
    report.parts["vision_features"] = Comparison.of(golden.vision_features, own_image[0].features)

    # The decoder alone: the reference's features, prefill, then the forced tokens.
    golden_image = [ImageInput("golden", golden.vision_features)]
    session = exported.new_session()
    report.parts["prefill_logits"] = Comparison.of(
        golden.prefill_logits, session.prefill(golden.prompt_ids[0], golden_image)[0, -1]
    )
    cache = session.cache.arrays()  # 2·L × (1, H, P, Dh)
    exp_kv = np.stack([t[0][:, golden.kv_positions] for t in cache])  # (2·L, H, k, Dh)
    ref_kv = golden.kv_samples
    report.parts["prefill_kv"] = Comparison.of(ref_kv, exp_kv)
    if kv_quant is not None:  # the int8 cache's own error: the reference cache through the export's rounding
        scales = exported.backend.kv_scales  # (2·L, H, Dh)
        trips = [round_trip(t[None], s) for t, s in zip(ref_kv, scales)]  # (dequantized, clipped share) each
        per_tensor = [Comparison.of(t, q[0]) for t, (q, _) in zip(ref_kv, trips)]
        report.parts["kv_int8_round_trip"] = Comparison(  # the worst layer's key or value
            max(c.max_abs_diff for c in per_tensor), min(c.cosine for c in per_tensor)
        )
        report.kv_clipped_fraction = float(np.mean([c for _, c in trips]))
    forced = golden.forced_tokens
    steps = [Comparison.of(ref, session.step(t)[0, -1]) for ref, t in zip(golden.decode_logits, forced)]
    if steps:
        report.parts["decode_logits"] = Comparison(max(c.max_abs_diff for c in steps), min(c.cosine for c in steps))
    # The whole pipeline: the export's own features, prefill and the same forced tokens.
    reference_rows = np.concatenate([golden.prefill_logits[None], golden.decode_logits])  # (T + 1, V)
    rows = _forced_logits(exported, prompt_ids, own_image, forced)
    per_row = [Comparison.of(r, e) for r, e in zip(reference_rows, rows)]
    report.parts["answer_logits"] = Comparison(max(c.max_abs_diff for c in per_row), min(c.cosine for c in per_row))
    errors = [report.parts[p].max_abs_diff for p in LOGIT_PARTS if p in report.parts]
    report.logit_error_bound = 2 * OTHER_INPUTS * max(errors)

    # End to end: greedy answers over frame/prompt pairs; each divergence explained or not by that bound.
    eos = min(exported.eos_token_ids)
    new_tokens = int(golden.settings.get("new_tokens", golden.answer_topk_ids.shape[1] - 1))
    matches = []
    for k, (frame, prompt) in enumerate(zip(golden.frames, golden.prompts)):
        a = golden.answers[k]
        b = _answer_tokens(exported.ask(frame, prompt, max_new_tokens=new_tokens), eos)
        report.identical_answers += a == b
        matches.append(sum(x == y for x, y in zip(a, b)) / max(len(a), len(b), 1))
        if a != b:
            report.divergences.append(_divergence(k, a, b, golden, exported, report))
    report.pairs = golden.pairs
    report.token_match_rate = float(np.mean(matches))
    _judge(report, min_token_match)
    return report


def _answer_tokens(answer: Answer, eos: int) -> list[int]:
    """The tokens the loop picked, the eos that ended the answer included."""
    return answer.token_ids + [eos] * (answer.finish_reason == "eos")


def _forced_logits(
    assistant: Assistant, prompt_ids: list[int], images: list[ImageInput], tokens: list[int]
) -> np.ndarray:
    """Next-token logits after the prompt and after each of `tokens`, teacher-forced: (len(tokens) + 1, V)."""
    session = assistant.new_session()
    rows = [session.prefill(prompt_ids, images)[0, -1]]
    rows += [session.step(t)[0, -1] for t in tokens]
    return np.stack(rows)


def _divergence(
    pair: int, a: list[int], b: list[int], golden: Golden, exported: Assistant, report: VerificationReport
) -> Divergence:
    """The first step where the answers part, with the reference's margin there against the bound."""
    step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # neither is a prefix: both end at eos or limit
    ids, logits = golden.answer_topk_ids[pair, step], golden.answer_topk_logits[pair, step]  # (K,) each
    best = float(logits[ids == a[step]][0]) if (ids == a[step]).any() else float(logits[0])
    ranked = ids == b[step]
    margin = best - float(logits[ranked][0] if ranked.any() else logits[-1])  # outside the top K: at least this
    # the export's own logits at that step, on the common prefix, against the reference's K best
    own_ids, own_image = exported.prompt_inputs(golden.frames[pair], golden.prompts[pair])
    row = _forced_logits(exported, own_ids, own_image, a[:step])[-1]  # (V,)
    valid = ids >= 0
    error = float(np.max(np.abs(row[ids[valid]].astype(np.float64) - logits[valid]))) if valid.any() else 0.0
    verdict, why = classify(margin, report)
    if not ranked.any():
        verdict, why = "error", f"the export's token is not among the reference's {ids.size} best (margin ≥ this)"
    tok = exported.tokenizer
    return Divergence(
        pair, step, a[step], b[step], tok.token_text(a[step]), tok.token_text(b[step]), margin,
        float(report.logit_error_bound or 0.0), error, verdict, why,
    )  # fmt: skip


def classify(margin: float, report: VerificationReport) -> tuple[str, str]:
    """("near-tie" | "error", why): a near-tie is a margin within the report's logit-error bound, measured on
    logits that pass their precision's cosine gate (otherwise the measured error is not that precision's)."""
    gate = None if report.kv_quant else COSINE_MIN.get(report.precision)  # an int8 cache's logits are not gated
    outside = [p for p in LOGIT_PARTS if gate is not None and p in report.parts and report.parts[p].cosine < gate]
    if outside:
        return "error", f"{', '.join(outside)} outside the {report.precision} gate: that error is not the precision's"
    return ("near-tie" if margin <= (report.logit_error_bound or 0.0) else "error"), ""


def _judge(report: VerificationReport, min_token_match: float | None) -> None:
    for name, c in report.parts.items():
        if not np.isfinite(c.max_abs_diff) or not np.isfinite(c.cosine):
            report.failures.append(f"{name}: non-finite outputs")
    if min_token_match is not None and report.token_match_rate < min_token_match:
        report.failures.append(f"token match rate {report.token_match_rate:.3f} < {min_token_match}")
    if report.kv_quant is not None:
        kv = report.parts.get("prefill_kv")
        if report.precision in COSINE_MIN and kv is not None and kv.cosine < KV_COSINE_MIN:
            # float weights: the exported cache itself (its graph's scales) against PyTorch's
            report.failures.append(f"prefill_kv cosine {kv.cosine:.6f} < {KV_COSINE_MIN} ({report.kv_quant} KV cache)")
        trip = report.parts.get("kv_int8_round_trip")
        if trip is not None and trip.cosine < KV_COSINE_MIN:
            clipped = report.kv_clipped_fraction or 0.0
            report.failures.append(
                f"kv_int8_round_trip cosine {trip.cosine:.6f} < {KV_COSINE_MIN} "
                f"({clipped:.3%} of the values saturate): calibrate on frames like the deployment's "
                "(--kv-calibration-images DIR), or raise --kv-calibration-headroom if values saturate"
            )
    gate = COSINE_MIN.get(report.precision)
    if gate is None:  # int8 / int4: reported, not gated
        return
    # the int8 cache's rounding moves everything after the vision encoder
    before_the_cache = [p for p in ("pixel_values", "vision_features") if p in report.parts]
    gated = before_the_cache if report.kv_quant else list(report.parts)
    for name in gated:
        c = report.parts[name]
        if c.cosine < gate:
            report.failures.append(f"{name} cosine {c.cosine:.6f} < {gate}")
    errors = [d for d in report.divergences if d.verdict == "error"]
    if report.kv_quant is None and errors:
        report.failures.append(
            f"greedy answers diverge beyond the {report.precision} logit error on {len(errors)}/{report.pairs} pairs "
            f"({'; '.join(d.describe() for d in errors)})"
        )
