"""lphi-train under torchrun: FSDP2 over gloo on the CPU, compared with one process at the same global batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lphi_edge.data.make_shapes import write_shapes_dataset
from lphi_edge.train.config import TrainConfig
from lphi_edge.train.data import LlavaJsonDataset
from lphi_edge.train.distributed import DistContext
from lphi_edge.train.trainer import Batches

EXE = Path(sys.executable).parent
STEPS = 4
# Same samples per step, different reduction order (gloo all-reduce / reduce-scatter vs one process), so the
# gradients differ by float32 rounding. AdamW moves a weight by lr·m̂/(√v̂ + eps), whose derivative in the
# gradient is up to lr/eps: 1e4 at lr=1e-3, eps=1e-7, which turns rounding noise in a gradient that is
# mathematically 0 (the attention key biases: softmax ignores a constant shift) into moves of up to ~lr
# (measured 1.4e-5, any value up to 4e-3 possible). With eps = lr = 0.01 that gain is ≤ 1 (still AdamW: m, v,
# bias correction, clipping, sharded state; v still matters as |g| ~ eps), so gradient rounding (~1e-9) stays
# far below one ulp of the weights and the runs differ by the rounding of each step's w + Δw: ≤ 1 ulp ≤
# eps32·|w| per step. Bound: STEPS · eps32 · max|w|, doubled for gradient rounding carried into later steps
# (≈3.7e-6 here; measured 1.2e-7, one ulp of a weight near 1); training moves weights by up to ≈2e-2.
ADAM = {"lr": "0.01", "eps": "0.01"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=24, seed=5, size=96)


def _args(ckpt: Path, shapes: Path, out: Path, micro_batch: int, **extra: str) -> list[str]:
    sets = {
        **ADAM,
        "global_batch": "8",
        "micro_batch": str(micro_batch),
        "max_steps": str(STEPS),
        "save_every": "2",
        "max_length": "256",
        "threads": "1",
        "unfreeze_vision": "true",
        "log_every": "1",
        **extra,
    }
    args = ["finetune", "--model", str(ckpt), "--data", str(shapes / "finetune.json"), "--out", str(out)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = "\n".join(ln for ln in proc.stderr.splitlines() if "it/s" not in ln and "step/s" not in ln)
    assert proc.returncode == 0, log[-5000:]
    return proc


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return _run([str(EXE / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(EXE / "lphi-train"), *args])


def _max_diff(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _tolerance(start: dict[str, torch.Tensor]) -> float:
    """The float32 rounding bound derived above, for these weights."""
    return 2 * STEPS * torch.finfo(torch.float32).eps * max(float(v.abs().max()) for v in start.values())


def test_two_processes_match_one_and_checkpoints_move_between_them(tiny_ckpt, shapes, tmp_path):
    one = tmp_path / "one"
    _run([str(EXE / "lphi-train"), *_args(tiny_ckpt, shapes, one, micro_batch=4)])  # 4 × 1 process × 2 accumulated
    two = tmp_path / "two"
    _torchrun(2, _args(tiny_ckpt, shapes, two, micro_batch=2))  # 2 × 2 processes × 2 accumulated
    start = load_file(str(tiny_ckpt / "model.safetensors"))
    tolerance = _tolerance(start)
    assert _max_diff(one / "model", two / "model") <= tolerance
    # the whole model moved: projector, LM and (unfrozen) vision tower all trained, far beyond the tolerance
    trained = load_file(str(two / "model" / "model.safetensors"))
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 100 * tolerance
    for prefix in ("model.mm_projector.", "model.layers.", "model.vision_tower."):
        assert any(not (start[k] == trained[k]).all() for k in start if k.startswith(prefix)), prefix
    # metrics once (rank 0), with the global loss and throughput
    m1 = [json.loads(ln) for ln in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(ln) for ln in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m2] == [1, 2, 3, 4]
    # the loss (a float32 sum over the step's tokens, here ≈ 4-8) differs by rounding only (measured < 1e-6)
    assert all(abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, a["loss"]) for a, b in zip(m1, m2))
    # a checkpoint written by 2 processes resumes in 1 (and lands on the same weights)
    assert (two / "checkpoints" / "step-00000002").is_dir() and (two / "checkpoints" / "step-00000004").is_dir()
    shutil.rmtree(two / "checkpoints" / "step-00000004")  # back to mid-run: steps 3-4 redone by 1 process
    shutil.rmtree(two / "model")
    (two / "metrics.jsonl").write_text("")
    proc = _run([str(EXE / "lphi-train"), *_args(tiny_ckpt, shapes, two, micro_batch=4)])
    assert "checkpoint written by 2 process(es), resuming with 1" in proc.stderr
    assert _max_diff(one / "model", two / "model") <= tolerance


def test_global_batch_must_split_over_the_processes(tiny_ckpt, shapes, tmp_path):
    proc = subprocess.run(
        [
            str(EXE / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(EXE / "lphi-train"),
            *_args(tiny_ckpt, shapes, tmp_path / "o", micro_batch=2, global_batch="6"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "global_batch (6) must be a multiple of micro_batch × processes (2 × 2)" in proc.stderr
    assert not (tmp_path / "o" / "model").exists()


def test_ranks_split_each_global_micro_batch_and_length_grouping_sorts(tiny_ckpt, shapes):
    """The data side, without processes: rank slices tile the one-process order; grouping sorts by length."""
    from lphi_edge.model.checkpoint import load_checkpoint, processor_config
    from lphi_edge.processing.image import ImageProcessor
    from lphi_edge.processing.template import get_template
    from lphi_edge.processing.tokenizer import Tokenizer

    cfg = load_checkpoint(tiny_ckpt).config
    tok = Tokenizer.from_dir(tiny_ckpt)
    ds = LlavaJsonDataset(
        shapes / "finetune.json",
        None,
        tok,
        get_template("phi_v0"),
        ImageProcessor(processor_config(tiny_ckpt, cfg)),
        256,
        cfg.image_tokens,
    )
    base = dict(stage="finetune", model="m", data="d", out="o", global_batch=8, micro_batch=2)
    solo = Batches(ds, TrainConfig(**{**base, "micro_batch": 4}), tok.eos_token_id, cfg.image_tokens)
    ranks = [Batches(ds, TrainConfig(**base), tok.eos_token_id, cfg.image_tokens, DistContext(r, 2)) for r in range(2)]
    solo_batches = [b["input_ids"] for _, b in solo.iterate(0, 0)]
    rank_batches = [[b["input_ids"] for _, b in r.iterate(0, 0)] for r in ranks]
    assert len(solo_batches) == len(rank_batches[0]) == len(rank_batches[1]) > 0
    for whole, a, b in zip(solo_batches, *rank_batches):
        # one process's micro-batch of 4 == rank 0's 2 samples followed by rank 1's 2
        width = whole.shape[1]
        assert a.shape[0] == b.shape[0] == 2
        assert (whole[:2, : a.shape[1]] == a).all() and (whole[2:, : b.shape[1]] == b).all()
        assert max(a.shape[1], b.shape[1]) == width
    grouped = Batches(ds, TrainConfig(**{**base, "group_by_length": True}), tok.eos_token_id, cfg.image_tokens)
    order, lengths = grouped.epoch_order(0), ds.approx_lengths()
    assert sorted(order) == list(range(len(ds)))  # a permutation: nothing lost or repeated
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # one group here: longest first
