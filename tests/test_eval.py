"""lphi-eval: the official scorers' rules on hand-made cases, the runner's resume and bad inputs, and
shapes-demo torch vs its int4 export."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lphi_edge.errors import ConfigError, EvalInputError
from lphi_edge.eval.gqa import gqa_prediction
from lphi_edge.eval.mme import SUBTASKS, mme_label, score_mme
from lphi_edge.eval.pope import pope_says_yes, score_pope
from lphi_edge.eval.runner import MULTIPLE_CHOICE, SHORT_ANSWER, RunConfig, run, with_suffix
from lphi_edge.eval.scoring import Inputs, compare, report, score
from lphi_edge.eval.sqa import score_sqa, sqa_letter
from lphi_edge.eval.vqa import normalize_answer, soft_scores, textvqa_question

EXE = Path(sys.executable).parent


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- VQA / TextVQA normalisation and soft score ----------------------------------------------------
@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two dogs", "2 dogs"),  # number words
        ("None", "0"),
        ("the dog", "dog"),  # articles
        ("A", ""),
        ("A+", ""),  # '+' → space, then the article goes
        ("dont", "don't"),  # contractions
        ("Im", "im"),  # the table's `Im` never matches lower-cased text
        ("yes.", "yes"),
        ("22.", "22"),  # the broken "period after a digit" lookbehind
        ("3.5", "3.5"),
        ("wi-fi - zone", "wifi zone"),  # a mark next to a space anywhere: deleted everywhere
        ("wi-fi", "wi fi"),
        ("It's red", "it 's red"),
        ("3,000", "3000"),
        ("." * 40, "." * 8),  # at most 32 periods stripped
        ("  Hello?\n", "hello"),
    ],
)
def test_evalai_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_soft_score_is_the_official_leave_one_out_mean_bit_for_bit():
    others = [str(i) for i in range(8)]
    assert soft_scores(others + ["x", "x"])["x"] == 0.5999999999999999  # two matching annotators, official order
    assert soft_scores(["x"] * 3 + others[:7])["x"] == 0.9
    assert soft_scores(["x"] * 4 + others[:6])["x"] == 1.0
    with pytest.raises(EvalInputError, match="expected 10 annotator answers, got 9"):
        soft_scores(["x"] * 9)


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
        ("Reference OCR token: Nike\nWhat brand?\nAnswer the question using a single word or phrase.", "what brand?"),
        ("What brand?\nReference OCR token: Nike\nAnswer the question using a single word or phrase.", "what brand?"),
        ("What Brand?\nAnswer the question using a single word or phrase.", "what brand?"),
    ],
)
def test_textvqa_prompt_shapes(prompt, question):
    assert textvqa_question(prompt) == question


def test_textvqa_scoring_and_unknown_questions(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"data": [{"image_id": "i1", "question": "What brand?", "answers": ["nike"] * 10}]}))
    prompt = "What brand?\nAnswer the question using a single word or phrase."
    good = jsonl(tmp_path / "a.jsonl", [{"question_id": "i1", "prompt": prompt, "text": "Nike."}])
    s = score("textvqa", Inputs(answers=str(good), annotations=str(ann)))
    assert s["metrics"] == {"accuracy": 100.0, "samples": 1} and s["headline"]["paper"] == 48.6
    bad = jsonl(tmp_path / "b.jsonl", [{"question_id": "i1", "prompt": prompt, "text": "x"}] * 2 + [
        {"question_id": "i9", "prompt": prompt, "text": "x"}
    ])  # fmt: skip
    with pytest.raises(EvalInputError, match=r"b.jsonl: line 3: no annotation for image_id 'i9'"):
        score("textvqa", Inputs(answers=str(bad), annotations=str(ann)))
    weird = jsonl(tmp_path / "c.jsonl", [{"question_id": "i1", "prompt": "one line only", "text": "x"}])
    with pytest.raises(EvalInputError, match="c.jsonl: line 1: not one of the 4 TextVQA prompt shapes"):
        score("textvqa", Inputs(answers=str(weird), annotations=str(ann)))


# ---- POPE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, yes",
    [
        ("Yes", True),
        ("No", False),
        ("no, there is not", False),
        ("There is not a dog.", False),
        ("Yes. Actually, no.", True),  # only the first sentence
        ("NO", True),  # only `No`, `not`, `no` negate
        ("No!", True),
        ("Nope.", True),
        ("There isn't", True),
        ("", True),
    ],
)
def test_pope_parse(text, yes):
    assert pope_says_yes(text) is yes


def test_pope_scores_pair_by_position_per_category(tmp_path):
    qs = [
        {"question_id": i, "image": f"{i}.jpg", "text": "q", "category": "random" if i < 4 else "popular"}
        for i in range(6)
    ]
    questions = jsonl(tmp_path / "q.jsonl", qs)
    ann = tmp_path / "ann"
    ann.mkdir()
    jsonl(ann / "coco_pope_random.json", [{"label": v} for v in ("yes", "no", "yes", "no")])
    jsonl(ann / "coco_pope_popular.json", [{"label": v} for v in ("no", "no", "yes")])  # one extra label: truncated
    texts = ["Yes.", "No.", "No, there is not.", "Yes", "No", "no"]
    answers = jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(texts)])
    m = score_pope(questions, answers, ann)
    r = m["random"]
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 1, 1, 1)
    assert r["accuracy"] == 0.5 and r["precision"] == 0.5 and r["recall"] == 0.5 and r["f1"] == 0.5
    assert r["yes_ratio"] == 0.5
    p = m["popular"]  # no "yes" prediction: the official script divides by zero; null here
    assert p["precision"] is None and p["f1"] is None and p["accuracy"] == 1.0 and p["yes_ratio"] == 0.0
    (ann / "notes.txt").write_text("x")
    with pytest.raises(EvalInputError, match="must hold only coco_pope_<category>.json files, found notes.txt"):
        score_pope(questions, answers, ann)
    (ann / "notes.txt").unlink()
    unknown = jsonl(tmp_path / "u.jsonl", [{"question_id": 99, "text": "yes"}])
    with pytest.raises(EvalInputError, match=r"u.jsonl: line 1: question_id 99 not in"):
        score_pope(questions, unknown, ann)


# ---- ScienceQA ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, letter",
    [
        ("A", "A"),
        ("C. Because it is.", "C"),
        ("C. The answer is A.", "C"),
        ("The answer is B.", "B"),
        ("The answer is C", "FAILED"),  # the regex needs a character after the letter
        ("The answer is A. The answer is A.", "FAILED"),  # two matches
        ("a", "FAILED"),
        (" B", "FAILED"),
        ("The answer is F.", "F"),
    ],
)
def test_sqa_letter_extraction(text, letter):
    assert sqa_letter(text) == letter


def test_sqa_scoring(tmp_path):
    problems = {
        "1": {"choices": ["x", "y"], "answer": 0},
        "2": {"choices": ["x", "y"], "answer": 1},
        "3": {"choices": ["x", "y", "z"], "answer": 2},
        "4": {"choices": ["x", "y"], "answer": 0},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4"]}))
    answers = jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": "1", "prompt": "<image>\nq", "text": "B"},
            {"question_id": "1", "prompt": "<image>\nq", "text": "A"},  # a later duplicate wins
            {"question_id": "2", "prompt": "q", "text": "The answer is B."},
            {"question_id": "3", "prompt": "<image>\nq", "text": "D"},  # beyond the choices → −1
        ],  # "4" is missing: counted, FAILED, not IMG
    )
    m = score("sqa", Inputs(problems_dir=str(tmp_path), answers=str(answers)))
    assert m["metrics"]["accuracy"] == 50.0 and m["metrics"]["count"] == 4
    assert m["metrics"]["img_accuracy"] == 50.0  # 1 of the 2 image prompts
    assert m["files"]["output_result"]["results"] == {"1": 0, "2": 1, "3": -1, "4": -1}
    with pytest.raises(EvalInputError, match="has no split 'val'"):
        score_sqa(tmp_path, answers, "val")


# ---- MME ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction, label",
    [
        ("Yes\n", "yes"),
        ("no", "no"),
        ("not sure\n", "no"),
        ("Snow\n", "no"),
        ("Yesterday\n", "yes"),
        (" yes\n", "yes"),
        ("  yes\n", "other"),
        ("The answer is yes\n", "other"),
        ("\n", "other"),
    ],
)
def test_mme_parse(prediction, label):
    assert mme_label(prediction) == label


def test_mme_scores_acc_plus_acc_plus(tmp_path):
    for names in SUBTASKS.values():
        for name in names:
            (tmp_path / f"{name}.txt").write_text("a.jpg\tq1\tYes\tYes\na.jpg\tq2\tNo\tNo\n")
    (tmp_path / "existence.txt").write_text(
        "a.jpg\tq1\tYes\tYes\na.jpg\tq2\tNo\tyes\nb.jpg\tq1\tYes\tYes, it is\nb.jpg\tq2\tNo\tNo\n"
    )
    m = score_mme(tmp_path)
    assert m["subtasks"]["existence"] == 75.0 + 50.0 and m["subtasks"]["count"] == 200.0
    assert m["perception"] == 125.0 + 9 * 200.0 and m["cognition"] == 800.0
    (tmp_path / "OCR.txt").write_text("a.jpg\tq1\tYes\tYes\n")
    with pytest.raises(EvalInputError, match="OCR.txt: 1 lines; expected an even"):
        score_mme(tmp_path)
    (tmp_path / "OCR.txt").unlink()
    with pytest.raises(EvalInputError, match="cannot read .*OCR.txt"):
        score_mme(tmp_path)


def test_gqa_and_suffixes():
    assert gqa_prediction("Yes.") == "yes" and gqa_prediction("Left..") == "left"
    assert with_suffix("What is it?", "vqav2") == f"What is it?\n{SHORT_ANSWER}"
    assert with_suffix(f"What is it?\n{SHORT_ANSWER}", "textvqa") == f"What is it?\n{SHORT_ANSWER}"
    assert with_suffix("Pick one.\nA. x", "sqa").endswith(MULTIPLE_CHOICE)
    assert with_suffix("Is it? Please answer yes or no.", "mme") == "Is it? Please answer yes or no."


# ---- runner: resume, bad inputs ------------------------------------------------------------------
def _frames(tmp_path: Path, n: int) -> tuple[Path, Path]:
    from PIL import Image

    from lphi_edge.eval.shapes import shapes_items

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for qid, frame, qa in shapes_items(n, seed=9):
        name = f"{qid.rsplit('-', 1)[0]}.png"
        if not (images / name).exists():
            Image.fromarray(frame).save(images / name)
        rows.append({"question_id": qid, "image": name, "text": qa.question, "category": qa.kind})
    return jsonl(tmp_path / "q.jsonl", rows), images


def test_runner_resumes_after_a_kill_without_duplicates(tmp_path):
    questions, images = _frames(tmp_path, 12)
    out = tmp_path / "answers.jsonl"
    cmd = [str(EXE / "lphi-eval"), "run", "--model", "shapes-demo", "--benchmark", "vqav2"]
    cmd += ["--questions", str(questions), "--images", str(images), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(out, "a") as f:
        f.write('{"question_id": "9-99-0", "prompt"')  # a line cut short mid-write
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    total = len(questions.read_text().splitlines())
    assert summary["already_answered"] >= 3 and summary["questions"] == total
    ids = [json.loads(line)["question_id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == total  # every question once; the cut line is gone
    rec = json.loads(out.read_text().splitlines()[0])
    assert set(rec) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert rec["prompt"].endswith("?")  # the question file's text; the suffix went to the model only


def test_runner_resumes_only_the_same_run(tmp_path):
    """An answers file is resumed only by the run that wrote it: another model under the same name, other frames,
    another token budget or an older file are refused by name, never mixed in."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lphi_edge.format.shipped import resolve_model_dir

    out = str(tmp_path / "a.jsonl")
    first = run(RunConfig("shapes", "shapes-demo", out, n=2))
    assert first["answered_now"] == first["questions"] > 0
    rec = json.loads(Path(out).read_text().splitlines()[0])
    assert rec["metadata"]["run"]["backend"] == "torch" and rec["metadata"]["run"]["camera_effects"] is False
    again = run(RunConfig("shapes", "shapes-demo", out, n=3))  # more frames of the same run: resumed
    assert again["already_answered"] == first["questions"] and again["answered_now"] > 0
    with pytest.raises(EvalInputError, match=r"another run \(camera_effects: False there, True now\)"):
        run(RunConfig("shapes", "shapes-demo", out, n=2, camera_effects=True))
    with pytest.raises(EvalInputError, match=r"visual_tokens: None there, 32 now"):
        run(RunConfig("shapes", "shapes-demo", out, n=2, visual_tokens=32))
    retrained = tmp_path / "shapes-demo"  # the same name, one weight changed
    shutil.copytree(resolve_model_dir("shapes-demo"), retrained)
    weights = load_file(retrained / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, retrained / "model.safetensors")
    with pytest.raises(EvalInputError, match=r"model_digest: '[0-9a-f]{16}' there, '[0-9a-f]{16}' now"):
        run(RunConfig("shapes", str(retrained), out, n=2))
    lines = Path(out).read_text().splitlines()
    assert len(lines) == again["questions"]  # nothing was appended by the refused runs
    old = [json.loads(line) for line in lines]
    for r in old:
        del r["metadata"]["run"]
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(EvalInputError, match=r"do not record the run that wrote them"):
        run(RunConfig("shapes", "shapes-demo", out, n=2))


def test_runner_bad_inputs_are_named_or_counted(tmp_path):
    questions, images = _frames(tmp_path, 2)
    lines = questions.read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(EvalInputError, match=r"bad.jsonl: line 2: not valid JSON"):
        run(RunConfig("vqav2", "shapes-demo", str(tmp_path / "o1.jsonl"), str(tmp_path / "bad.jsonl"), str(images)))
    missing = json.loads(lines[0]) | {"image": "nope.png"}
    jsonl(tmp_path / "missing.jsonl", [missing, json.loads(lines[1])])
    with pytest.raises(EvalInputError, match=r"missing.jsonl: line 1: image .*nope.png not found"):
        run(RunConfig("vqav2", "shapes-demo", str(tmp_path / "o2.jsonl"), str(tmp_path / "missing.jsonl"), str(images)))
    summary = run(
        RunConfig(
            "vqav2",
            "shapes-demo",
            str(tmp_path / "o3.jsonl"),
            str(tmp_path / "missing.jsonl"),
            str(images),
            on_bad="skip",
        )
    )
    assert summary["skipped"] == 1 and summary["answered_now"] == 1
    assert "nope.png" in (tmp_path / "o3.skipped.jsonl").read_text()
    with pytest.raises(ConfigError, match="needs --questions FILE and --images DIR"):
        RunConfig("pope", "shapes-demo", "o.jsonl")
    with pytest.raises(ConfigError, match="--camera-effects applies to --benchmark shapes, not shapes-stream"):
        RunConfig("shapes-stream", "shapes-demo", "o.jsonl", camera_effects=True)
    cli = subprocess.run(
        [str(EXE / "lphi-eval"), "score", "--benchmark", "pope", "--answers", "a.jsonl"], capture_output=True, text=True
    )
    assert cli.returncode == 2 and "--benchmark pope needs --questions --annotations" in cli.stderr


# ---- shapes: torch vs int4 export ----------------------------------------------------------------
def test_shapes_torch_vs_int4_reports_the_drop(tmp_path):
    int4 = tmp_path / "int4"
    exp = subprocess.run(
        [str(EXE / "lphi-export"), "shapes-demo", "--out", str(int4), "--quant", "int4", "--no-verify"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert exp.returncode == 0, exp.stderr[-2000:]
    runs = []
    for name, model in (("torch", "shapes-demo"), ("int4", str(int4))):
        out = tmp_path / f"{name}.jsonl"
        run(RunConfig("shapes", model, str(out), n=25, seed=4))
        runs.append(str(out))
    result = compare(runs)
    base, q = result["runs"]
    assert result["benchmark"] == "shapes"
    assert (base["backend"], q["backend"], q["precision"]) == ("torch", "onnxruntime", "int4")
    assert q["delta_vs_first"] == pytest.approx(q["headline"] - base["headline"])
    assert 0 <= q["agreement_with_first"] <= 1 and base["agreement_with_first"] == 1.0
    cli = subprocess.run([str(EXE / "lphi-eval"), "compare", *runs, "--json"], capture_output=True, text=True)
    assert (
        cli.returncode == 0 and json.loads(cli.stdout.strip().splitlines()[-1])["runs"][1]["delta_vs_first"] is not None
    )
    scored = score("shapes", Inputs(answers=runs[0]))
    j, md = report([scored], tmp_path / "report")
    text = md.read_text()
    assert "| vqav2 | VQAv2 accuracy % | 71.4 | — |" in text and "| shapes |" in text
    assert json.loads(j.read_text())["rows"]


def test_mme_answers_convert_to_the_official_results_directory(tmp_path):
    release = tmp_path / "MME_Benchmark_release_version"
    answers = []
    for names in SUBTASKS.values():
        for name in names:
            qa = release / name / "questions_answers_YN" if name == "existence" else release / name
            qa.mkdir(parents=True, exist_ok=True)
            if name == "existence":
                (release / name / "images").mkdir()
            (qa / "0001.txt").write_text(
                "Is it red? Please answer yes or no.\tYes\nIs it blue? Please answer yes or no.\tNo\n"
            )
            for q, a in (("Is it red?", "Yes"), ("Is it blue?", "No" if name != "OCR" else "Yes")):
                prompt = f"{q}\n{SHORT_ANSWER}" if name == "count" else f"{q} Please answer yes or no."
                answers.append({"question_id": f"{name}/0001.png", "prompt": prompt, "text": a})
    ans = jsonl(tmp_path / "mme.jsonl", answers)
    s = score("mme", Inputs(answers=str(ans), annotations=str(release), results_dir=str(tmp_path / "results")))
    assert s["metrics"]["subtasks"]["OCR"] == 50.0 and s["metrics"]["subtasks"]["count"] == 200.0
    assert s["metrics"]["perception"] == 9 * 200.0 + 50.0 and s["headline"]["paper"] == 1335.1
    line = (tmp_path / "results" / "count.txt").read_text().splitlines()[0]
    assert line == "0001.txt\tIs it red? Please answer yes or no.\tYes\tYes"
    bad = jsonl(tmp_path / "bad.jsonl", [{"question_id": "count/0009.png", "prompt": "Is it?", "text": "Yes"}])
    with pytest.raises(EvalInputError, match=r"bad.jsonl: line 1: no ground truth for count/0009.txt"):
        score("mme", Inputs(answers=str(bad), annotations=str(release)))


def test_mmbench_single_pass_circular_and_sheet(tmp_path):
    tsv = tmp_path / "mmbench_dev.tsv"
    tsv.write_text(
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\n"
        "1\tWhich is red?\tnan\tapple\tsky\tgrass\tsea\tA\tcolor\n"
        "2\tHow many?\tCount them.\tone\ttwo\tthree\tfour\tC\tcount\n"
    )
    rounds = [
        {"question_id": 1, "round_id": 0, "text": "A", "options": ["apple", "sky", "grass", "sea"]},
        {"question_id": 1, "round_id": 1, "text": "D", "options": ["sky", "grass", "sea", "apple"]},
        {"question_id": 2, "round_id": 0, "text": "C. three", "options": ["one", "two", "three", "four"]},
        {"question_id": 2, "round_id": 1, "text": "C", "options": ["two", "three", "four", "one"]},  # wrong
    ]
    answers = jsonl(tmp_path / "a.jsonl", rounds)
    s = score("mmbench", Inputs(questions=str(tsv), answers=str(answers), circular=True))
    assert s["metrics"]["accuracy"] == 100.0 and s["metrics"]["circular_accuracy"] == 50.0
    assert [r["prediction"] for r in s["files"]["submission"]] == ["A", "C. three"]
    from lphi_edge.cli.eval import _write_sheet

    _write_sheet(tmp_path / "sheet.tsv", s["files"]["submission"])
    assert (tmp_path / "sheet.tsv").read_text().splitlines()[0].endswith("\tprediction")
    from lphi_edge.eval.runner import _mmbench_questions

    qs = list(_mmbench_questions(tsv, tmp_path))
    assert qs[1].text == f"Count them.\nHow many?\nA. one\nB. two\nC. three\nD. four\n{MULTIPLE_CHOICE}"


def test_vqav2_local_accuracy_and_server_file(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": [{"question_id": 7, "answers": [{"answer": "two"}] * 10}]}))
    answers = jsonl(tmp_path / "a.jsonl", [{"question_id": 7, "text": "2."}])
    questions = jsonl(tmp_path / "q.jsonl", [{"question_id": 7}, {"question_id": 8}])
    s = score("vqav2", Inputs(answers=str(answers), annotations=str(ann), questions=str(questions)))
    assert s["metrics"]["accuracy"] == 100.0
    assert s["files"]["submission"] == [{"question_id": 7, "answer": "2"}, {"question_id": 8, "answer": ""}]


def test_vqav2_and_vizwiz_test_splits_write_the_server_file_without_annotations(tmp_path):
    from lphi_edge.cli.eval import main

    answers = jsonl(tmp_path / "a.jsonl", [{"question_id": 7, "text": "Two."}, {"question_id": 9, "text": "Yes"}])
    questions = jsonl(
        tmp_path / "q.jsonl", [{"question_id": 7, "image": "x.jpg"}, {"question_id": 9, "image": "y.jpg"}]
    )
    out = tmp_path / "test-dev.json"
    assert main(["score", "--benchmark", "vqav2", "--answers", str(answers), "--submission", str(out)]) == 0
    assert json.loads(out.read_text()) == [{"question_id": 7, "answer": "2"}, {"question_id": 9, "answer": "yes"}]
    s = score("vizwiz", Inputs(answers=str(answers), questions=str(questions)))
    assert s["metrics"]["accuracy"] is None and s["headline"]["value"] is None and s["metrics"]["samples"] == 2
    assert s["files"]["submission"] == [{"image": "x.jpg", "answer": "2"}, {"image": "y.jpg", "answer": "yes"}]
    # neither annotations nor a file to write: nothing to do, said plainly
    assert main(["score", "--benchmark", "vizwiz", "--answers", str(answers), "--questions", str(questions)]) == 2


def test_model_digest_hashes_a_checkpoint_once_and_sees_changes(tmp_path):
    """The digest's file hashes are recorded (format/hash_cache.py): an unchanged checkpoint is not re-read on the
    next run, and a rewritten weight file is hashed again and changes the digest."""
    import shutil

    from lphi_edge.eval.runner import model_digest
    from lphi_edge.format.hash_cache import VerifiedHashes
    from lphi_edge.format.manifest import sha256_file
    from lphi_edge.format.shipped import resolve_model_dir

    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_model_dir("shapes-demo"), ckpt)
    first = model_digest(ckpt)
    weights = ckpt / "model.safetensors"
    assert VerifiedHashes(ckpt).recorded(weights) == sha256_file(weights)  # what the next run trusts
    assert model_digest(ckpt) == first
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    assert VerifiedHashes(ckpt).recorded(weights) is None  # not the file that was hashed
    assert model_digest(ckpt) != first
