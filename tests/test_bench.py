"""lphi-bench on tiny models: the JSON contract, speed-ups against the transformers baseline, floors,
extrapolation labels, Markdown and PNG; the cost model against hand counts; bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from lphi_edge.bench.costs import Arch
from lphi_edge.bench.runner import BenchConfig
from lphi_edge.errors import ConfigError
from lphi_edge.model.config import LlavaPhiConfig

EXE = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_int8(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "int8"
    subprocess.run(
        [str(EXE / "lphi-export"), str(tiny_ckpt), "--out", str(out), "--quant", "int8", "--no-verify"],
        check=True,
        capture_output=True,
    )
    return out


def test_bench_json_markdown_plot(tiny_ckpt, tiny_int8, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [str(EXE / "lphi-bench"), "--model", str(tiny_ckpt), "--model", str(tiny_int8), "--baseline", "hf"]
    cmd += ["--runs", "3", "--new-tokens", "6", "--threads", "1", "--json", str(out)]
    cmd += ["--markdown", str(tmp_path / "bench.md"), "--plot", str(tmp_path / "bench.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    m = r["machine"]
    vision_flops = Arch.from_config(LlavaPhiConfig.from_dir(tiny_ckpt)).vision_flops()
    best_gflops = max(m["compute_gflops_fp32"], m["compute_gflops_bf16"])
    for key in ("cpu", "cores", "threads", "gpu", "memory", "memory_bandwidth_gbs", "libraries"):
        assert key in m, key
    assert (
        m["threads"] == 1 and m["memory_bandwidth_gbs"] > 0.1 and m["libraries"]["torch"] == metadata.version("torch")
    )
    # the copy rate is measured once up front and before and after each measured run of each of the 3
    # engines; the read rate up front and before each later round (1 warm-up + 3 runs); the strict floors
    # use the best
    assert len(m["memory_bandwidth_samples_gbs"]) == 1 + 2 * 3 * 3 and len(m["memory_read_samples_gbs"]) == 4
    assert m["memory_bandwidth_gbs"] == max(m["memory_bandwidth_samples_gbs"])
    assert m["memory_read_gbs"] == max(m["memory_read_samples_gbs"])
    assert [x["backend"] for x in r["results"]] == ["torch", "onnxruntime"]
    assert [x["precision"] for x in r["results"]] == ["fp32", "int8"]
    assert [x["kv_cache"] for x in r["results"]] == [None, "concat"]  # a checkpoint has no exported cache
    for res in [*r["results"], r["baseline"]]:
        for stage in ("preprocess", "vision", "prefill", "decode_per_token", "end_to_end"):
            p = res["stages_ms"][stage]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"], (res["key"], stage)
        assert res["decode_tokens_per_s"] == pytest.approx(1e3 / res["stages_ms"]["decode_per_token"]["p50"], rel=0.01)
        assert res["peak_rss_mb"] > 50 and res["weights_mb"] > 0 and res["decode_floor_ms"] > 0
        assert 0 <= res["load_rss_mb"] <= res["peak_rss_mb"]
        assert res["decode_floor_read_ms"] > 0 and res["floor_fraction"]["decode_read"] > 0
        # beside: every run's decode against the copy rate measured just after it (3 runs, 3 rates; and 3 before)
        assert len(res["copy_gbs_beside"]) == len(res["copy_gbs_before"]) == 3
        assert res["decode_floor_beside_ms"] >= res["decode_floor_ms"] * 0.99
        assert set(m["memory_bandwidth_samples_gbs"]) >= set(res["copy_gbs_beside"] + res["copy_gbs_before"])
        runs = res["runs_ms"]["decode_per_token"]  # every run's own figure, the percentiles' source
        assert len(runs) == 3
        assert res["stages_ms"]["decode_per_token"]["p50"] == pytest.approx(sorted(runs)[1], abs=1e-3)
        median_bw = sorted(res["copy_gbs_beside"])[1]
        want = res["decode_floor_ms"] * m["memory_bandwidth_gbs"] / median_bw
        assert res["decode_floor_beside_ms"] == pytest.approx(want, rel=0.01, abs=1e-3)  # JSON rounds to µs
        assert 0 < res["floor_fraction"]["decode_beside"]
        assert res["extrapolated_32_layers"] is None  # tiny widths: nothing to extrapolate to
        # the vision floor is the encoder's FLOPs at the run's best matmul rate (never rounded to 0 when fast)
        assert res["vision_floor_ms"] == pytest.approx(vision_flops / best_gflops / 1e6, rel=0.01)
        assert 0 < res["floor_fraction"]["decode"] and 0 < res["floor_fraction"]["vision"]
    assert r["baseline"]["backend"] == "transformers" and r["baseline"]["precision"] == "fp32"
    assert r["baselines"] == [r["baseline"]]  # both engines compare with fp32 transformers on a CPU
    # what each engine ran with, read back from torch / onnxruntime (--threads 1 reached both)
    assert [x["threads"] for x in r["results"]] == [
        {"torch": 1},
        {"onnxruntime_intra_op": 1, "onnxruntime_inter_op": 1},
    ]
    assert r["baseline"]["threads"] == {"torch": 1}
    sp = r["speedup_vs_baseline"]
    assert set(sp) == {"torch/fp32", "onnxruntime/int8"}
    assert {x["baseline"] for x in sp.values()} == {"transformers/fp32"}
    base, torch_res = r["baseline"]["stages_ms"], r["results"][0]["stages_ms"]
    assert sp["torch/fp32"]["decode_per_token"] == pytest.approx(
        base["decode_per_token"]["p50"] / torch_res["decode_per_token"]["p50"], rel=0.02
    )
    table = (tmp_path / "bench.md").read_text()
    assert "| torch/fp32 |" in table and "| transformers/fp32 |" in table and "GB/s" in table
    assert "× vs transformers/fp32 |" in table  # every speed-up names the baseline's precision
    assert "CPU threads: torch/fp32 torch 1; onnxruntime/int8 onnxruntime_intra_op 1" in table
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_per_precision(tiny_ckpt, tmp_path):
    """Each torch dtype is compared with transformers' generate() in that dtype, and says so."""
    out = tmp_path / "bench.json"
    cmd = [str(EXE / "lphi-bench"), "--model", str(tiny_ckpt), "--torch-dtypes", "fp32,bf16", "--baseline", "hf"]
    cmd += [
        "--runs",
        "1",
        "--warmup",
        "0",
        "--new-tokens",
        "3",
        "--json",
        str(out),
        "--markdown",
        str(tmp_path / "b.md"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [b["key"] for b in r["baselines"]] == ["transformers/fp32", "transformers/bf16"]
    assert [b["precision"] for b in r["baselines"]] == ["fp32", "bf16"]
    assert r["baseline"]["key"] == "transformers/fp32"  # the single-baseline field stays the fp32 one
    sp = r["speedup_vs_baseline"]
    assert {k: v["baseline"] for k, v in sp.items()} == {
        "torch/fp32": "transformers/fp32",
        "torch/bf16": "transformers/bf16",
    }
    bf16 = {b["key"]: b for b in r["baselines"]}["transformers/bf16"]["stages_ms"]["decode_per_token"]["p50"]
    engine = {x["key"]: x for x in r["results"]}["torch/bf16"]["stages_ms"]["decode_per_token"]["p50"]
    assert sp["torch/bf16"]["decode_per_token"] == pytest.approx(bf16 / engine, rel=0.02)
    table = (tmp_path / "b.md").read_text()
    assert "| transformers/bf16 |" in table and "× vs transformers/bf16 |" in table


def test_cost_model_matches_hand_counts():
    from lphi_edge.model.synthetic import synthetic_config

    a = Arch.from_config(synthetic_config("phi2-2l"))
    assert (a.text_hidden, a.text_ffn, a.vision_tokens, a.vision_layers_run) == (2560, 10240, 577, 23)
    assert a.layer_params() == 4 * 2560**2 + 2 * 2560 * 10240
    full = a.decode_params(32)
    assert 2.5e9 < full < 2.8e9  # Phi-2: 2.7 B parameters, minus the embedding table
    assert 3.5e11 < a.vision_flops() < 4.5e11  # ViT-L/14-336 to layer 23 + projector, ~0.4 TFLOP
    f = a.full_size_factors(640)
    assert f["decode"] == pytest.approx(full / a.decode_params())


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="--new-tokens must be ≥ 2"):
        BenchConfig(models=("m",), new_tokens=1)
    with pytest.raises(ConfigError, match="give at least one --model"):
        BenchConfig(models=())
    with pytest.raises(ConfigError, match=r"unknown precision\(s\) \['int2'\]"):
        BenchConfig(models=("m",), synthetic_exports=("int2",))
    with pytest.raises(ConfigError, match="--cuda-graphs on with --torch-compile on"):
        BenchConfig(models=("m",), device="cuda", cuda_graphs="on", torch_compile="on")
    proc = subprocess.run([str(EXE / "lphi-bench"), "--model", "/no/such"], capture_output=True, text=True)
    assert proc.returncode == 2 and "model not found" in proc.stderr


def test_torch_engines_skip_graphs_with_a_compiled_prefill():
    """On a GPU `--cuda-graphs both --torch-compile both` loads graphs, eager and compiled (eager decode) — not the
    combination the torch backend refuses; on the CPU there are no graph variants."""
    from lphi_edge.bench.runner import torch_engines

    gpu = BenchConfig(models=("m",), device="cuda", torch_dtypes=("fp16",), cuda_graphs="both", torch_compile="both")
    assert torch_engines(gpu) == [("fp16", True, False), ("fp16", False, False), ("fp16", False, True)]
    cpu = BenchConfig(models=("m",), torch_dtypes=("bf16", "int8"), torch_compile="both")
    assert torch_engines(cpu) == [(d, None, c) for d in ("bf16", "int8") for c in (False, True)]


def test_an_engine_pair_is_one_row_beside_its_engines(tiny_ckpt, tiny_int8, tmp_path):
    """--phased: frames and prefill on torch bf16, the tokens on the int8 export, as one Assistant."""
    out = tmp_path / "bench.json"
    cmd = [str(EXE / "lphi-bench"), "--model", str(tiny_ckpt), "--model", str(tiny_int8), "--torch-dtypes", "bf16"]
    cmd += ["--phased", "torch/bf16+int8", "--baseline", "hf", "--runs", "1", "--warmup", "0", "--new-tokens", "3"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = {x["key"]: x for x in r["results"]}
    assert list(rows) == ["torch/bf16", "onnxruntime/int8", "torch/bf16 → onnxruntime/int8"]
    pair, prompt, tokens = rows["torch/bf16 → onnxruntime/int8"], rows["torch/bf16"], rows["onnxruntime/int8"]
    assert (pair["backend"], pair["precision"]) == ("torch+onnxruntime", "bf16+int8")
    assert pair["phases"] == {"prompt": "torch/bf16", "tokens": "onnxruntime/int8"} and prompt["phases"] is None
    assert pair["load_rss_mb"] == pytest.approx(prompt["load_rss_mb"] + tokens["load_rss_mb"], abs=0.11)
    assert pair["weights_mb"] == pytest.approx(prompt["weights_mb"] + tokens["weights_mb"], abs=0.11)
    assert pair["decode_floor_ms"] == tokens["decode_floor_ms"]  # the token engine's weights are read per token
    assert set(pair["threads"]) == {"prompt", "tokens"}
    assert r["speedup_vs_baseline"][pair["key"]]["baseline"] == "transformers/bf16"  # the prompt engine's
    quick = [*cmd[:7], "--runs", "1", "--warmup", "0", "--new-tokens", "2"]
    bad = subprocess.run([*quick, "--phased", "torch/fp16+int8"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--phased: 'torch/fp16' names no loaded engine: give one of" in bad.stderr
    bad = subprocess.run([*quick, "--phased", "torch/bf16"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--phased takes PROMPT+TOKENS" in bad.stderr


def test_int8_engine_floor_uses_the_int8_rate(tiny_ckpt, tmp_path):
    """A torch int8 engine's linears get the int8 matmul rate measured in the same run, its attention the float
    rate; it is compared with fp32 transformers (transformers has no int8 engine on the CPU)."""
    out = tmp_path / "bench.json"
    cmd = [str(EXE / "lphi-bench"), "--model", str(tiny_ckpt), "--torch-dtypes", "int8,bf16", "--baseline", "hf"]
    cmd += ["--runs", "1", "--warmup", "0", "--new-tokens", "3", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    m, rows = r["machine"], {x["key"]: x for x in r["results"]}
    assert m["compute_gflops_int8"] > 0 and rows["torch/int8"]["precision"] == "int8"
    floats = max(m["compute_gflops_fp32"], m["compute_gflops_bf16"])
    assert rows["torch/int8"]["floor_linears_gflops"] == m["compute_gflops_int8"]
    assert rows["torch/bf16"]["floor_linears_gflops"] == round(floats, 1)
    linears, attention = Arch.from_config(LlavaPhiConfig.from_dir(tiny_ckpt)).vision_flops_parts()
    want = (linears / m["compute_gflops_int8"] + attention / floats) / 1e6
    assert rows["torch/int8"]["vision_floor_ms"] == pytest.approx(want, rel=0.01)
    assert {k: v["baseline"] for k, v in r["speedup_vs_baseline"].items()} == {
        "torch/int8": "transformers/fp32",
        "torch/bf16": "transformers/bf16",
    }
