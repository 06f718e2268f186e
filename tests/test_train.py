"""lphi-train: label masks, what each stage trains, resume after SIGKILL, bad data, configs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lphi_edge.data.make_shapes import write_shapes_dataset
from lphi_edge.errors import ConfigError
from lphi_edge.processing.template import get_template
from lphi_edge.processing.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer
from lphi_edge.train.config import TrainConfig
from lphi_edge.train.data import IGNORE_INDEX, BadSampleError, render_conversation, tokenize_with_labels
from lphi_edge.train.trainer import train

EXE = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=24, seed=3, size=96)


def labelled(tok: Tokenizer, template: str, conv: list[dict]) -> tuple[list[int], list[int], str]:
    text, spans = render_conversation(get_template(template), conv)
    ids, labels = tokenize_with_labels(tok, text, spans)
    return ids, labels, text


def test_labels_cover_exactly_the_answers_and_their_eos(tiny_ckpt):
    tok = Tokenizer.from_dir(tiny_ckpt)
    conv = [
        {"from": "human", "value": "<image>\nWhat shape is in the image?"},
        {"from": "gpt", "value": "circle"},
        {"from": "human", "value": "How many shapes are there?"},
        {"from": "gpt", "value": "2"},
    ]
    ids, labels, text = labelled(tok, "phi_v0", conv)
    assert text == get_template("phi_v0").prompt(
        [("What shape is in the image?", "circle"), ("How many shapes are there?", "2")]
    )
    assert ids == tok.encode_prompt(text)  # tokenized exactly as at inference
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    kept = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(kept, skip_special_tokens=False) == " circle<|endoftext|> 2<|endoftext|>"
    assert kept.count(tok.eos_token_id) == 2


def test_plain_labels_are_the_caption(tiny_ckpt):
    tok = Tokenizer.from_dir(tiny_ckpt)
    ids, labels, text = labelled(
        tok, "plain", [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red circle."}]
    )
    assert text == "<image>a red circle.\n" and ids[0] == IMAGE_TOKEN_INDEX
    assert tok.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False) == "a red circle.\n"


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(path.glob("*.safetensors")) if path.is_dir() else path))


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys
    return any(not torch.equal(before[k], after[k]) for k in keys)


def _config(tiny_ckpt, shapes, out, stage="pretrain", **kw) -> TrainConfig:
    data = shapes / ("pretrain.json" if stage == "pretrain" else "finetune.json")
    base = dict(
        stage=stage,
        model=str(tiny_ckpt),
        data=str(data),
        out=str(out),
        lr=1e-3,
        global_batch=4,
        micro_batch=2,
        max_steps=2,
        save_every=0,
        max_length=256,
        weight_decay=0.0,
        log_every=1,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "stage, unfreeze, changes, frozen",
    [
        ("pretrain", False, ["model.mm_projector."], ["model.vision_tower.", "model.layers.", "lm_head."]),
        ("finetune", False, ["model.mm_projector.", "model.layers.", "lm_head."], ["model.vision_tower."]),
        ("finetune", True, ["model.mm_projector.", "model.layers.", "model.vision_tower."], []),
    ],
)
def test_each_stage_trains_only_its_parts(tiny_ckpt, shapes, tmp_path, stage, unfreeze, changes, frozen):
    out = train(_config(tiny_ckpt, shapes, tmp_path / "o", stage=stage, unfreeze_vision=unfreeze))
    before, after = _state(tiny_ckpt), _state(out)
    for prefix in changes:
        assert _changed(before, after, prefix), prefix
    for prefix in frozen:
        assert not _changed(before, after, prefix), prefix
    recs = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in recs)
    assert (tmp_path / "o" / "loss.png").stat().st_size > 1000


def test_lora_finetune_merges_into_a_plain_checkpoint(tiny_ckpt, shapes, tmp_path):
    out = train(_config(tiny_ckpt, shapes, tmp_path / "o", stage="finetune", lora=True, lora_r=4))
    before, after = _state(tiny_ckpt), _state(out)
    assert set(before) == set(after)  # no adapter tensors left: the native layout
    assert _changed(before, after, "model.layers.0.self_attn.q_proj.weight")  # merged adapter update
    assert _changed(before, after, "model.mm_projector.")
    assert not _changed(before, after, "model.vision_tower.")
    assert not _changed(before, after, "model.embed_tokens.")  # not a LoRA target
    from lphi_edge import Assistant

    assert len(Assistant.from_pretrained(out).ask(None, "hello", max_new_tokens=3).token_ids) > 0
    with pytest.raises(ConfigError, match="lora applies to finetune and sft"):
        TrainConfig(stage="pretrain", model="m", data="d", out="o", lora=True)


# A training process that SIGKILLs itself in the middle of writing its step-6 checkpoint (model.safetensors
# written into the hidden partial directory, the rest not): the kill lands at a fixed point of the run,
# whatever the machine's speed, where polling for a checkpoint from outside would race the remaining steps.
KILLED_AT_STEP_6 = """
import os, signal, sys
import lphi_edge.train.trainer as trainer
from lphi_edge.cli.train import main
save_file = trainer.save_file
def save_file_then_die(tensors, path, *args, **kwargs):
    save_file(tensors, path, *args, **kwargs)
    if os.path.basename(os.path.dirname(path)).startswith(".step-00000006."):
        os.kill(os.getpid(), signal.SIGKILL)
trainer.save_file = save_file_then_die
sys.exit(main(sys.argv[1:]))
"""
RESUME_STEPS = 8


@pytest.mark.parametrize("lora", [False, True])
def test_killed_run_resumes_to_the_same_weights(tiny_ckpt, shapes, tmp_path, lora):
    # lr = eps (AdamW's gain from gradient to update ≤ 1, see test_train_distributed.py): the runs compare to
    # float32 rounding even if a kernel rounds differently from one run to the next, where at the default
    # eps=1e-7 rounding noise in the zero-gradient key biases is amplified 1e4 times. Still sensitive to
    # every piece of resumed state: corrupting the step-4 checkpoint's exp_avg, exp_avg_sq, Adam step,
    # scheduler, data position or (LoRA dropout) RNG moved the result by 79-2300 × the tolerance.
    sets = dict(
        lora=str(lora).lower(),
        lr="0.01",
        eps="0.01",
        global_batch="4",
        micro_batch="2",
        max_steps=str(RESUME_STEPS),
        save_every="2",
        max_length="256",
        threads="1",
        log_every="1",
    )
    common = ["finetune", "--model", str(tiny_ckpt), "--data", str(shapes / "finetune.json")]
    for key, value in sets.items():
        common += ["--set", f"{key}={value}"]
    ref = tmp_path / "ref"
    subprocess.run([str(EXE / "lphi-train"), *common, "--out", str(ref)], check=True, capture_output=True)
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_6, *common, "--out", str(run)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    ckpts = run / "checkpoints"
    assert not (run / "model").exists()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000004"]
    assert len(list(ckpts.glob(".step-00000006.*"))) == 1  # the half-written one, never published
    subprocess.run([str(EXE / "lphi-train"), *common, "--out", str(run)], check=True, capture_output=True)
    assert not list(ckpts.glob(".step-*"))  # the leftover was cleared
    start, a, b = _state(tiny_ckpt), _state(ref / "model"), _state(run / "model")
    # float32 rounding of each step's update, ≤ 1 ulp ≤ eps32·|w| per step, doubled (as in the distributed test)
    tolerance = 2 * RESUME_STEPS * torch.finfo(torch.float32).eps * max(float(v.abs().max()) for v in start.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= tolerance  # measured 0 (bitwise) on one machine
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 100 * tolerance  # it did train
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, RESUME_STEPS + 1))  # steps 5-6 logged before the kill, redone, not duplicated


def _bad_data(shapes: Path, tmp_path: Path, record: dict) -> Path:
    records = json.loads((shapes / "finetune.json").read_text())[:6]
    records.insert(2, record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    return path


BAD = {
    "missing image": (
        {
            "id": "x1",
            "image": "images/nope.png",
            "conversations": [
                {"from": "human", "value": "<image>\nHow many shapes are there?"},
                {"from": "gpt", "value": "1"},
            ],
        },
        "image file not found",
    ),
    "image token missing": (
        {
            "id": "x2",
            "image": "images/000000.png",
            "conversations": [{"from": "human", "value": "How many shapes are there?"}, {"from": "gpt", "value": "1"}],
        },
        "0 image placeholder",
    ),
    "image token doubled": (
        {
            "id": "x3",
            "image": "images/000000.png",
            "conversations": [{"from": "human", "value": "<image>\n<image>\nHow many?"}, {"from": "gpt", "value": "1"}],
        },
        "2 image placeholder",
    ),
    "too long": (
        {
            "id": "x4",
            "image": "images/000000.png",
            "conversations": [{"from": "human", "value": "<image>\n" + "word " * 400}, {"from": "gpt", "value": "1"}],
        },
        "> max_length",
    ),
    "malformed": ({"id": "x5", "conversations": [{"from": "gpt", "value": "hi"}]}, "malformed conversation"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_samples_error_naming_the_record_or_are_skipped(tiny_ckpt, shapes, tmp_path, case):
    record, fragment = BAD[case]
    data = _bad_data(shapes, tmp_path, record)
    common = dict(stage="finetune", data=str(data), image_folder=str(shapes), max_steps=1)
    cfg = _config(tiny_ckpt, shapes, tmp_path / "e", **common, global_batch=7, micro_batch=7)
    with pytest.raises(BadSampleError, match=rf"bad.json record 2 \(id '{record['id']}'\).*{fragment}"):
        train(cfg)
    out = train(
        _config(tiny_ckpt, shapes, tmp_path / "s", **common, global_batch=6, micro_batch=6, on_bad_sample="skip")
    )
    assert out.is_dir()
    skipped = (tmp_path / "s" / "skipped_samples.txt").read_text().splitlines()
    assert len(skipped) == 1 and record["id"] in skipped[0]


def test_dataset_smaller_than_a_micro_batch_is_refused(tiny_ckpt, shapes, tmp_path):
    small = tmp_path / "small.json"
    small.write_text(json.dumps(json.loads((shapes / "finetune.json").read_text())[:3]))
    with pytest.raises(ConfigError, match="3 records, fewer than one micro-batch per process \\(4\\)"):
        train(
            _config(
                tiny_ckpt,
                shapes,
                tmp_path / "o",
                stage="finetune",
                data=str(small),
                image_folder=str(shapes),
                global_batch=4,
                micro_batch=4,
            )
        )


def test_malformed_json_file_is_named(tiny_ckpt, shapes, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"id": 1,')
    with pytest.raises(BadSampleError, match="broken.json"):
        train(_config(tiny_ckpt, shapes, tmp_path / "o", stage="finetune", data=str(bad)))


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(stage="rlhf", model="m", data="d", out="o")
    with pytest.raises(ConfigError, match="global_batch"):
        TrainConfig(stage="pretrain", model="m", data="d", out="o", global_batch=10, micro_batch=4)
    with pytest.raises(ConfigError, match="on_bad_sample"):
        TrainConfig(stage="pretrain", model="m", data="d", out="o", on_bad_sample="ignore")
    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 1.0e-3\nbetas: [0.9, 0.95]\n")
    cfg = TrainConfig.load(yml, ["micro_batch=8", "bf16=true"], stage="pretrain", model="m", data="d", out="o")
    assert cfg.lr == 1e-3 and cfg.betas == (0.9, 0.95) and cfg.micro_batch == 8 and cfg.bf16 is True
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.load(yml, ["learning_rate=1"], stage="pretrain", model="m", data="d", out="o")
    # YAML 1.1 reads 6e-4 (no dot) as a string: in a file and in --set it is still the number
    yml.write_text("lr: 6e-4\n")
    cfg = TrainConfig.load(yml, ["eps=1e-8"], stage="pretrain", model="m", data="d", out="o")
    assert cfg.lr == 6e-4 and cfg.eps == 1e-8
    with pytest.raises(ConfigError, match=r"TrainConfig.lr must be a number, got 'fast'"):
        TrainConfig.load(yml, ["lr=fast"], stage="pretrain", model="m", data="d", out="o")


def test_paper_defaults_in_the_recipes():
    root = Path(__file__).resolve().parents[1] / "train" / "configs"
    pre = TrainConfig.load(root / "pretrain.yaml", stage="pretrain", model="m", data="d", out="o")
    fin = TrainConfig.load(root / "finetune.yaml", stage="finetune", model="m", data="d", out="o")
    sft = TrainConfig.load(root / "sft.yaml", stage="sft", model="m", data="d", out="o")
    assert (pre.lr, pre.global_batch, pre.epochs) == (1e-3, 256, 1)
    assert (fin.lr, fin.global_batch, fin.epochs) == (2e-5, 256, 1)
    assert (sft.lr, sft.epochs, sft.schedule) == (3e-5, 2, "linear")
    for c in (pre, fin, sft):
        assert c.betas == (0.9, 0.98) and c.eps == 1e-7 and c.bf16 and c.gradient_checkpointing
        assert c.max_length == 2048
    assert fin.weight_decay == 0.1


def test_make_shapes_writes_llava_json(shapes):
    pre = json.loads((shapes / "pretrain.json").read_text())
    fin = json.loads((shapes / "finetune.json").read_text())
    assert len(pre) == 24 and all(r["conversations"][0]["value"] == "<image>" for r in pre)
    asked = {t["value"].removeprefix("<image>\n") for r in fin for t in r["conversations"] if t["from"] == "human"}
    for kind in ("How many shapes are there?", "What shape is in the image?", "What color is the", "Is there a"):
        assert any(q.startswith(kind) for q in asked), kind
    assert any(len(r["conversations"]) > 2 for r in fin)  # multi-turn records too
    assert all((shapes / r["image"]).is_file() for r in pre)
    assert len((shapes / "scenes.jsonl").read_text().splitlines()) == 24


def test_binding_questions_defeat_the_colour_only_and_shape_only_shortcuts(tmp_path):
    from lphi_edge.data.shapes import answer_question, binding_questions, random_scene

    rng = np.random.default_rng(0)
    wrong_if_colour_only = wrong_if_shape_only = total = 0
    for _ in range(200):
        scene = random_scene(rng)
        for qa in binding_questions(scene, rng):
            assert answer_question(scene, qa.question) == qa.answer  # every answer is the task's own
            if qa.kind == "exists":
                total += 1
                color, kind = qa.question.removeprefix("Is there a ").removesuffix("?").split()
                by_colour = "yes" if color in {s.color for s in scene} else "no"
                by_shape = "yes" if kind in {s.kind for s in scene} else "no"
                wrong_if_colour_only += by_colour != qa.answer
                wrong_if_shape_only += by_shape != qa.answer
    assert total >= 790 and wrong_if_colour_only / total >= 0.2 and wrong_if_shape_only / total >= 0.2
    # the dataset: finetune_binding.json = finetune.json + those questions; every other file as without --binding
    plain = write_shapes_dataset(tmp_path / "plain", n=12, seed=5, size=96, multi_turn=0.5)
    both = write_shapes_dataset(tmp_path / "both", n=12, seed=5, size=96, multi_turn=0.5, binding=True)
    for name in ("pretrain.json", "finetune.json", "scenes.jsonl", "images/000011.png"):
        assert (plain / name).read_bytes() == (both / name).read_bytes(), name
    assert not (plain / "finetune_binding.json").exists()
    fin, bind = (
        json.loads((both / "finetune.json").read_text()),
        json.loads((both / "finetune_binding.json").read_text()),
    )
    assert bind[: len(fin)] == fin and len(bind) > len(fin) + 12 * 4
    assert all(r["id"].startswith("bind-") and len(r["conversations"]) == 2 for r in bind[len(fin) :])


def test_colour_drill_asks_every_unique_shape_of_multi_shape_frames(tmp_path):
    from lphi_edge.data.shapes import Shape, answer_question

    both = write_shapes_dataset(tmp_path / "both", n=40, seed=5, size=96, multi_turn=0.5, binding=True)
    drill = write_shapes_dataset(tmp_path / "d", n=40, seed=5, size=96, multi_turn=0.5, binding=True, colour_drill=True)
    for name in ("pretrain.json", "finetune.json", "finetune_binding.json", "scenes.jsonl", "images/000039.png"):
        assert (both / name).read_bytes() == (drill / name).read_bytes(), name  # a stream of its own
    scenes = [json.loads(line) for line in (drill / "scenes.jsonl").read_text().splitlines()]
    records = json.loads((drill / "finetune_colour.json").read_text())
    colour = [r for r in records if r["id"].startswith("colour-")]
    binding = json.loads((drill / "finetune_binding.json").read_text())
    assert records[len(colour) :] and all(r in binding for r in records[len(colour) :])
    assert len(records) == 3 * len(colour)  # twice as many replayed
    expected = 0
    for i, scene in enumerate(scenes):
        shapes = [Shape(**s) for s in scene["shapes"]]
        kinds = [s.kind for s in shapes]
        unique = {s.kind for s in shapes if kinds.count(s.kind) == 1}
        mine = [r for r in colour if r["id"] == f"colour-{i}"]
        if len(shapes) < 2 or not unique:
            assert not mine
            continue
        expected += 1
        (record,) = mine
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        asked = {turns[k]["value"].removeprefix("<image>\n") for k in range(0, len(turns), 2)}
        assert asked == {f"What color is the {k}?" for k in unique}
        for k in range(0, len(turns), 2):
            assert answer_question(shapes, turns[k]["value"].removeprefix("<image>\n")) == turns[k + 1]["value"]
    assert expected == len(colour) > 5
    with pytest.raises(ValueError, match="needs binding"):
        write_shapes_dataset(tmp_path / "x", n=2, seed=5, size=96, colour_drill=True)


def test_qlora_is_refused_clearly_where_it_cannot_run(tiny_ckpt, shapes, tmp_path):
    with pytest.raises(ConfigError, match="qlora trains LoRA adapters over a 4-bit LM: it needs lora=true"):
        TrainConfig(stage="finetune", model="m", data="d", out="o", qlora=True)
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU refusal does not apply")
    cfg = _config(tiny_ckpt, shapes, tmp_path / "o", stage="finetune", lora=True, qlora=True, device="cpu")
    with pytest.raises(ConfigError, match="qlora needs a CUDA device"):
        train(cfg)
    assert not (tmp_path / "o" / "model").exists()


def test_vision_pretraining_trains_the_tower_from_scene_labels(tiny_ckpt, tmp_path):
    from lphi_edge.model.checkpoint import load_checkpoint, processor_config
    from lphi_edge.processing.image import ImageProcessor
    from lphi_edge.train.vision_pretrain import LABELS, PAIRS, load_labels, pretrain_vision

    data = write_shapes_dataset(tmp_path / "d", n=530, seed=2, size=96)
    paths, present, counts, patches = load_labels(data, 530)
    assert present.shape == (530, len(LABELS)) and set(counts) <= {0, 1, 2} and patches.shape == (530, 0)
    pairs = present[:, : len(PAIRS)].sum(1)
    assert (pairs >= 1).all() and (pairs <= counts + 1).all()
    model = load_checkpoint(tiny_ckpt)
    before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    proc = processor_config(tiny_ckpt, model.config)
    assert ImageProcessor(proc)(str(paths[0])).shape[1:] == (3, 56, 56)
    scores = pretrain_vision(model.vision_tower, proc, data, steps=3, batch=8, frames=530)
    assert set(scores) == {"pairs_exact", "shapes_exact", "count"} and all(0 <= v <= 1 for v in scores.values())
    after = model.vision_tower.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # per patch: every patch feature also names the shape it shows (the binding), scored on held-out frames
    grown = {k: v.clone() for k, v in after.items()}
    scores = pretrain_vision(model.vision_tower, proc, data, steps=3, batch=8, frames=530, per_patch=True)
    assert {"patches", "patches_exact"} <= set(scores) and 0 < scores["patches"] <= 1
    assert any(not torch.equal(grown[k], v) for k, v in model.vision_tower.state_dict().items())


def test_patch_labels_name_the_shape_covering_each_patch():
    from lphi_edge.train.vision_pretrain import BACKGROUND, PAIRS, patch_labels

    big = {"x": 0, "y": 0, "size": 56, "color": "red", "kind": "circle"}  # exactly patches (0..1, 0..1)
    small = {"x": 150, "y": 100, "size": 28, "color": "blue", "kind": "square"}  # straddles 4 patches
    grid = patch_labels([big, small], 224, 8).reshape(8, 8)
    red_circle, blue_square = PAIRS.index(("red", "circle")), PAIRS.index(("blue", "square"))
    assert (grid[:2, :2] == red_circle).all()
    # the small square covers 37 % and 28 % of patches (4, 5) and (3, 5), under a quarter of the other two
    assert grid[4, 5] == blue_square and grid[3, 5] == blue_square and grid[3, 6] == grid[4, 6] == BACKGROUND
    assert (grid == BACKGROUND).sum() == 64 - 4 - 2
    tiny = {"x": 20, "y": 20, "size": 16, "color": "green", "kind": "triangle"}  # centre (28, 28); no patch ¼ covered
    grid = patch_labels([tiny], 224, 8).reshape(8, 8)
    assert grid[1, 1] == PAIRS.index(("green", "triangle")) and (grid == BACKGROUND).sum() == 63  # its centre


def test_demo_init_takes_a_pretrained_tower_from_another_checkpoint(tmp_path):
    """`python -m lphi_edge.train.demo --vision-from CKPT`: a new language model over the donor's exact tower."""
    import dataclasses

    from safetensors.numpy import load_file

    from lphi_edge.train.demo import DEMO_SPEC, write_demo_init

    donor = write_demo_init(tmp_path / "donor", seed=7)
    deeper = dataclasses.replace(DEMO_SPEC, text_layers=DEMO_SPEC.text_layers + 1)
    taken = write_demo_init(tmp_path / "taken", seed=8, vision_from=donor, spec=deeper)
    a, b = load_file(str(donor / "model.safetensors")), load_file(str(taken / "model.safetensors"))
    tower = [k for k in a if k.startswith("model.vision_tower.")]
    assert tower and all(np.array_equal(a[k], b[k]) for k in tower)
    assert json.loads((taken / "config.json").read_text())["num_hidden_layers"] == DEMO_SPEC.text_layers + 1
    other = dataclasses.replace(DEMO_SPEC, image_size=DEMO_SPEC.image_size + 14)
    with pytest.raises(ConfigError, match="its vision tower is not this spec's"):
        write_demo_init(tmp_path / "bad", vision_from=donor, spec=other)
