"""VQA-style soft accuracy: the EvalAI answer normaliser and the 10-annotator score of LLaVA's
`m4c_evaluator.py` (TextVQAAccuracyEvaluator), used for TextVQA, and for VQAv2 / VizWiz where their
annotations are at hand; plus the submission files of the VQAv2 and VizWiz servers.

The official code's quirks are reproduced on purpose (see ../shared/reference/eval-formats.md):
at most 32 periods are stripped (re.UNICODE passed as the count), the "period after a digit" lookbehind
is broken (`22.` → `22`), a punctuation mark next to a space anywhere is deleted everywhere, the `Im`
contraction never matches, `none` → `0`, and the soft score's float sums keep their order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError
from lphi_edge.eval.io import at, read_json, read_jsonl

# key>value, whitespace-separated (EvalAI's table, unchanged, including its unreachable `Im`)
_CONTRACTIONS = dict(
    item.split(">")
    for item in """
aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've couldnt've>couldn't've
didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've hadn'tve>hadn't've hasnt>hasn't havent>haven't
hed>he'd hed've>he'd've he'dve>he'd've hes>he's howd>how'd howll>how'll hows>how's Id've>I'd've I'dve>I'd've Im>I'm
Ive>I've isnt>isn't itd>it'd itd've>it'd've it'dve>it'd've itll>it'll let's>let's maam>ma'am mightnt>mightn't
mightnt've>mightn't've mightn'tve>mightn't've mightve>might've mustnt>mustn't mustve>must've neednt>needn't
notve>not've oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at 'ows'at>'ow's'at 'ow'sat>'ow's'at shant>shan't
shed've>she'd've she'dve>she'd've she's>she's shouldve>should've shouldnt>shouldn't shouldnt've>shouldn't've
shouldn'tve>shouldn't've somebody'd>somebodyd somebodyd've>somebody'd've somebody'dve>somebody'd've
somebodyll>somebody'll somebodys>somebody's someoned>someone'd someoned've>someone'd've someone'dve>someone'd've
someonell>someone'll someones>someone's somethingd>something'd somethingd've>something'd've
something'dve>something'd've somethingll>something'll thats>that's thered>there'd thered've>there'd've
there'dve>there'd've therere>there're theres>there's theyd>they'd theyd've>they'd've they'dve>they'd've
theyll>they'll theyre>they're theyve>they've twas>'twas wasnt>wasn't wed've>we'd've we'dve>we'd've weve>we've
werent>weren't whatll>what'll whatre>what're whats>what's whatve>what've whens>when's whered>where'd wheres>where's
whereve>where've whod>who'd whod've>who'd've who'dve>who'd've wholl>who'll whos>who's whove>who've whyll>why'll
whyre>why're whys>why's wont>won't wouldve>would've wouldnt>wouldn't wouldnt've>wouldn't've wouldn'tve>wouldn't've
yall>y'all yall'll>y'all'll y'allll>y'all'll yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've
youd>you'd youd've>you'd've you'dve>you'd've youll>you'll youre>you're youve>you've
""".split()
)
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = list(';/[]"{}()=+\\_-><@`,?!')  # EvalAI's order
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead for "<=digit", not a lookbehind
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_OFFICIAL_PERIOD_COUNT = 32  # the official call passes re.UNICODE (= 32) where the count goes


def normalize_answer(text: str) -> str:
    """EvalAI's answer normalisation, as LLaVA's m4c_evaluator applies it."""
    t = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    out = t
    delete = _COMMA_STRIP.search(t) is not None
    for p in _PUNCTUATION:
        out = out.replace(p, "") if delete or p + " " in t or " " + p in t else out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def soft_scores(gt_answers: list[str]) -> dict[str, float]:
    """Score of each distinct normalised answer: mean over the 10 leave-one-out subsets of min(1, matches / 3)."""
    answers = [normalize_answer(a) for a in gt_answers]
    if len(answers) != 10:
        raise EvalInputError(f"expected 10 annotator answers, got {len(answers)}")
    scores = {}
    for candidate in set(answers):
        accs = [min(1, sum(a == candidate for j, a in enumerate(answers) if j != i) / 3) for i in range(10)]
        scores[candidate] = sum(accs) / len(accs)
    return scores


def soft_accuracy(pairs: list[tuple[str, list[str]]]) -> float:
    """Mean soft score of (prediction, 10 annotator answers) pairs, as a fraction."""
    if not pairs:
        raise EvalInputError("no answers to score")
    scores = [soft_scores(gts).get(normalize_answer(pred), 0.0) for pred, gts in pairs]
    return sum(scores) / len(scores)


def textvqa_question(prompt: str) -> str:
    """The question inside a TextVQA prompt (the official prompt_processor's four shapes), lower-cased."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        m = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if m is None:
            raise ValueError("an 'OCR tokens:' prompt without 'Question: ... Short answer:'")
        question = m.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif "Reference OCR token: " in prompt and len(lines) == 2:
        question = lines[1].replace("Question: ", "")
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError("not one of the 4 TextVQA prompt shapes (question + suffix line, with optional OCR tokens)")
    if question.startswith("Question: "):
        question = question.replace("Question: ", "")
    return question.lower()


def score_textvqa(annotations: str | Path, answers: str | Path) -> dict[str, Any]:
    """`eval_textvqa.py --annotation-file A --result-file R`: accuracy in percent."""
    data = read_json(annotations)
    try:
        table = {(a["image_id"], a["question"].lower()): a["answers"] for a in data["data"]}
    except (KeyError, TypeError) as e:
        raise EvalInputError(f"{annotations}: not a TextVQA annotation file ({e!r} missing)") from None
    pairs = []
    for rec in read_jsonl(answers, ("question_id", "prompt", "text")):
        try:
            key = (rec["question_id"], textvqa_question(rec["prompt"]))
        except ValueError as e:
            raise EvalInputError(f"{at(answers, rec)}: {e}") from None
        if key not in table:
            raise EvalInputError(f"{at(answers, rec)}: no annotation for image_id {key[0]!r}, question {key[1]!r}")
        pairs.append((rec["text"], table[key]))
    return {"accuracy": 100.0 * soft_accuracy(pairs), "samples": len(pairs)}


def score_vqav2(annotations: str | Path, answers: str | Path) -> dict[str, Any]:
    """VQAv2 with local annotations (`{"annotations": [{question_id, answers: [{answer}] × 10}]}`): percent."""
    data = read_json(annotations)
    try:
        table = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in data["annotations"]}
    except (KeyError, TypeError) as e:
        raise EvalInputError(f"{annotations}: not a VQAv2 annotation file ({e!r} missing)") from None
    pairs = []
    for rec in read_jsonl(answers, ("question_id", "text")):
        if rec["question_id"] not in table:
            raise EvalInputError(f"{at(answers, rec)}: question_id {rec['question_id']!r} not in {annotations}")
        pairs.append((rec["text"], table[rec["question_id"]]))
    return {"accuracy": 100.0 * soft_accuracy(pairs), "samples": len(pairs)}


def score_vizwiz(annotations: str | Path, questions: str | Path, answers: str | Path) -> dict[str, Any]:
    """VizWiz with local annotations (val.json: [{image, answers: [{answer}] × 10}]); answers map to images
    through the question file."""
    table = {}
    for a in read_json(annotations):
        try:
            table[a["image"]] = [x["answer"] for x in a["answers"]]
        except (KeyError, TypeError) as e:
            raise EvalInputError(f"{annotations}: not a VizWiz annotation file ({e!r} missing)") from None
    image_of = {q["question_id"]: q["image"] for q in read_jsonl(questions, ("question_id", "image"))}
    pairs = []
    for rec in read_jsonl(answers, ("question_id", "text")):
        image = image_of.get(rec["question_id"])
        if image is None or image not in table:
            raise EvalInputError(f"{at(answers, rec)}: question_id {rec['question_id']!r} has no annotation")
        pairs.append((rec["text"], table[image]))
    return {"accuracy": 100.0 * soft_accuracy(pairs), "samples": len(pairs)}


def vqav2_submission(answers: str | Path, questions: str | Path | None = None) -> list[dict[str, Any]]:
    """The VQAv2 server's file: [{question_id, answer (normalised)}]; questions of `questions` without an
    answer get "" (as LLaVA's converter does for test-dev)."""
    got = {rec["question_id"]: normalize_answer(rec["text"]) for rec in read_jsonl(answers, ("question_id", "text"))}
    ids = [q["question_id"] for q in read_jsonl(questions, ("question_id",))] if questions else list(got)
    return [{"question_id": int(qid), "answer": got.get(qid, "")} for qid in ids]


def vizwiz_submission(answers: str | Path, questions: str | Path) -> list[dict[str, Any]]:
    """The VizWiz server's file: [{image, answer (normalised)}] in question-file order."""
    got = {rec["question_id"]: normalize_answer(rec["text"]) for rec in read_jsonl(answers, ("question_id", "text"))}
    out = []
    for q in read_jsonl(questions, ("question_id", "image")):
        if q["question_id"] not in got:
            raise EvalInputError(f"{at(questions, q)}: question_id {q['question_id']!r} has no answer in {answers}")
        out.append({"image": q["image"], "answer": got[q["question_id"]]})
    return out
