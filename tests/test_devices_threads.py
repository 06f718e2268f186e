"""Threads and devices reach every backend, and bad values are refused in one place: the shared validators,
lphi-ask / lphi-bench (one line, exit status 2), Assistant.from_pretrained and what each engine reads back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lphi_edge import Assistant
from lphi_edge.bench.runner import BenchConfig, baseline_precision
from lphi_edge.errors import ConfigError
from lphi_edge.runtime.device import Device, check_threads, parse_device
from lphi_edge.runtime.onnx_backend import providers_for
from lphi_edge.runtime.trt_backend import check_trt_device

EXE = Path(sys.executable).parent
ASSETS = Path(__file__).resolve().parents[1] / "lphi_edge" / "assets"
SAMPLE = ASSETS / "sample_frame.png"
SHIPPED_EXPORT = ASSETS / "shapes_demo_onnx"
CORES = os.cpu_count() or 1
BAD = {  # argument → what its one error line must say
    "--threads=0": f"--threads must be an integer in 1..{CORES}",
    f"--threads={CORES + 1}": f"got {CORES + 1}",
    "--device=gpu": "device must be 'cpu' or 'cuda' / 'cuda:N'",
    "--device=cuda:x": "got 'cuda:x'",
}


@pytest.fixture
def torch_threads():
    """Restore torch's process-wide thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("value", "want"),
    [("cpu", Device("cpu")), ("cuda", Device("cuda", 0)), ("cuda:0", Device("cuda", 0)), ("cuda:3", Device("cuda", 3))],
)
def test_parse_device_accepts_cpu_cuda_and_cuda_n(value, want):
    assert parse_device(value) == want
    assert str(want) == {"cuda:0": "cuda"}.get(value, value)  # GPU 0 is spelled "cuda", as the backends report it


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:-1", "CUDA", "cuda:", "cuda:1:2", "", None, 0])
def test_parse_device_refuses_anything_else_naming_the_value(value):
    with pytest.raises(ConfigError, match="device must be 'cpu' or 'cuda' / 'cuda:N'") as err:
        parse_device(value)
    assert str(err.value).endswith(f"got {value!r}")


def test_check_threads_range():
    assert check_threads(None) is None and check_threads(1) == 1 and check_threads(CORES) == CORES
    for bad in (0, -1, CORES + 1, True, 1.0, "2"):
        with pytest.raises(ConfigError, match=rf"threads must be an integer in 1\.\.{CORES} .*got {bad!r}"):
            check_threads(bad)


@pytest.mark.parametrize("prog", ["lphi-ask", "lphi-bench"])
@pytest.mark.parametrize("arg", list(BAD))
def test_cli_refuses_bad_threads_and_devices_with_one_line_and_status_2(prog, arg):
    argv = ["--model", "shapes-demo", arg]
    if prog == "lphi-ask":
        argv += ["--image", str(SAMPLE), "--prompt", "How many shapes are there?"]
    proc = subprocess.run([str(EXE / prog), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and BAD[arg] in lines[0], proc.stderr


def test_bench_config_validates_device_and_threads():
    assert BenchConfig(models=("m",), device="cuda:0").device == "cuda"  # canonical spelling
    assert BenchConfig(models=("m",), device="cuda:2").cuda
    with pytest.raises(ConfigError, match="got 'tpu'"):
        BenchConfig(models=("m",), device="tpu")
    with pytest.raises(ConfigError, match=r"--threads must be an integer in 1\.\."):
        BenchConfig(models=("m",), threads=0)


def test_from_pretrained_threads_reach_torch_and_onnxruntime(tiny_ckpt, torch_threads):
    torch_a = Assistant.from_pretrained(tiny_ckpt, threads=1)
    assert torch.get_num_threads() == 1 and torch_a.backend.thread_settings() == {"torch": 1}
    onnx_a = Assistant.from_pretrained("shapes-demo", backend="onnxruntime", threads=1)
    for sess in onnx_a.backend.sessions.values():  # every part, read back from onnxruntime itself
        assert sess.get_session_options().intra_op_num_threads == 1
    assert onnx_a.backend.thread_settings() == {"onnxruntime_intra_op": 1, "onnxruntime_inter_op": 1}
    default = Assistant.from_pretrained("shapes-demo", backend="onnxruntime").backend.thread_settings()
    assert default["onnxruntime_intra_op"] == 0 and "default" in default["note"]  # recorded as what it is
    assert onnx_a.ask(SAMPLE, "How many shapes are there?", max_new_tokens=4).text


def test_from_pretrained_refuses_bad_values_before_loading():
    for kwargs, match in [
        ({"threads": 0}, r"threads must be an integer in 1\.\."),
        ({"threads": CORES + 1}, f"got {CORES + 1}"),
        ({"device": "gpu"}, "got 'gpu'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            Assistant.from_pretrained("/no/such/model", **kwargs)  # refused before the model is looked for


def test_onnxruntime_gpu_providers_get_the_device_id():
    assert providers_for("cpu", 0) == ["CPUExecutionProvider"]
    assert providers_for("cuda", 2) == [("CUDAExecutionProvider", {"device_id": "2"}), "CPUExecutionProvider"]
    assert [p if isinstance(p, str) else p[1] for p in providers_for("tensorrt", 1)] == [
        {"device_id": "1"},
        {"device_id": "1"},
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match="provider 'rocm' unknown"):
        providers_for("rocm")


def test_tensorrt_refuses_devices_it_cannot_honour():
    assert check_trt_device("cuda") == "cuda" and check_trt_device("cuda:0") == "cuda"
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1"):
        check_trt_device("cuda:1")
    with pytest.raises(ConfigError, match="runs on a GPU, not on 'cpu'"):
        check_trt_device("cpu")
    # through the public API, before TensorRT is imported or engines are looked for
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=2"):
        Assistant.from_pretrained(SHIPPED_EXPORT, backend="tensorrt", device="cuda:2")
    with pytest.raises(ConfigError, match="runs on a GPU, not on 'cpu'"):
        Assistant.from_pretrained(SHIPPED_EXPORT, backend="tensorrt", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_torch_cuda_n_without_a_gpu_says_so(tiny_ckpt):
    with pytest.raises(ConfigError, match="'cuda:1' requested but torch sees no CUDA GPU"):
        Assistant.from_pretrained(tiny_ckpt, device="cuda:1")


@pytest.mark.parametrize(
    ("backend", "precision", "cuda", "want"),
    [
        ("torch", "fp32", False, "fp32"),
        ("torch", "bf16", False, "bf16"),  # a torch engine: always its own precision
        ("torch", "fp16", True, "fp16"),
        ("onnxruntime", "int8", False, "fp32"),  # quantized on a CPU: what transformers users run there
        ("onnxruntime", "int4", False, "fp32"),
        ("onnxruntime", "fp16", False, "fp32"),  # fp16 matmuls on a CPU are not what anyone runs
        ("onnxruntime", "fp16", True, "fp16"),
        ("tensorrt", "fp16", True, "fp16"),
        ("tensorrt", "fp32", True, "fp32"),
        ("tensorrt", "int8", True, "fp16"),  # quantized on a GPU: fp16, what transformers users run there
    ],
)
def test_baseline_precision_matches_each_engine(backend, precision, cuda, want):
    assert baseline_precision(backend, precision, cuda) == want


def test_the_tensorrt_provider_keeps_its_engines_in_the_export(tmp_path):
    """onnxruntime's TensorRT provider caches engines (and timings) in DIR/trt/ort-<gpu>-sm<XY>-trt<v>-<prec>/,
    one directory per GPU, TensorRT version and precision; the other providers get no TensorRT options."""
    from lphi_edge.format.manifest import Manifest
    from lphi_edge.format.shipped import SHIPPED_EXPORTS
    from lphi_edge.runtime.onnx_backend import trt_ep_options

    manifest = Manifest.load(SHIPPED_EXPORTS["shapes-demo"])
    opts = trt_ep_options(manifest, gpu=("NVIDIA Jetson AGX Orin", (8, 7)), trt_version="10.3.0")
    want = manifest.path / "trt" / "ort-nvidia-jetson-agx-orin-sm87-trt10.3.0-fp32"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(want)
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_fp16_enable"] == "False"
    trt, cuda, cpu = providers_for("tensorrt", 1, opts)
    assert trt == ("TensorrtExecutionProvider", {"device_id": "1", **opts})
    assert cuda == ("CUDAExecutionProvider", {"device_id": "1"}) and cpu == "CPUExecutionProvider"
    assert "unknown" in trt_ep_options(manifest)["trt_engine_cache_path"]  # no GPU / TensorRT here: still named
