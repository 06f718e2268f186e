"""Bad checkpoints and bad input: one clear line, non-zero exit, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lphi_edge.errors import CheckpointError
from lphi_edge.model.checkpoint import load_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "lphi_edge" / "assets" / "sample_frame.png"


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(ckpt: Path, fn) -> None:
    f = ckpt / "model.safetensors"
    state = load_file(str(f))
    fn(state)
    save_file(state, str(f), metadata={"format": "pt"})


def edit_config(ckpt: Path, fn) -> None:
    f = ckpt / "config.json"
    d = json.loads(f.read_text())
    fn(d)
    f.write_text(json.dumps(d))


def ask_argv(model: Path | str, *extra: str, image: Path | str = SAMPLE, prompt: str = "What is this?") -> list[str]:
    return ["--model", str(model), "--image", str(image), "--prompt", prompt, "--max-new-tokens", "4", *extra]


def lphi_ask_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """The installed console script in its own process."""
    exe = Path(sys.executable).with_name("lphi-ask")
    return subprocess.run([str(exe), *ask_argv(*args, **kwargs)], capture_output=True, text=True)


@pytest.fixture
def lphi_ask(capsys):
    """lphi-ask's main() in this process (fast); returns a CompletedProcess-like result."""
    from lphi_edge.cli.ask import main

    def call(*args, **kwargs):
        capsys.readouterr()
        rc = main(ask_argv(*args, **kwargs))
        out = capsys.readouterr()
        return subprocess.CompletedProcess([], rc, out.out, out.err)

    return call


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # bad input, not an internal error (1)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lphi-ask: error: ")
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def _missing_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _truncated(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garbage_header(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\xff" * 64)


def _missing_tensor(d: Path) -> None:
    edit_weights(d, lambda s: s.pop("model.layers.1.mlp.fc2.weight"))


def _misshaped(d: Path) -> None:
    edit_weights(d, lambda s: s.__setitem__("model.mm_projector.0.weight", torch.zeros(80, 47)))


def _no_lm_head_bias(d: Path) -> None:
    edit_weights(d, lambda s: s.pop("lm_head.bias"))


def _unknown_type(d: Path) -> None:
    edit_config(d, lambda c: c.__setitem__("model_type", "llama"))


def _broken_json(d: Path) -> None:
    (d / "config.json").write_text("{ nope")


def _pickle_only(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _missing_shard(d: Path) -> None:
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )


CASES = {
    "missing weights file": (_missing_weights, ["no weights", "model.safetensors"]),
    "truncated weights file": (_truncated, ["cannot read weights file", "model.safetensors"]),
    "garbage weights file": (_garbage_header, ["cannot read weights file"]),
    "missing tensor": (_missing_tensor, ["missing tensor", "'model.layers.1.mlp.fc2.weight'"]),
    "mis-shaped tensor": (_misshaped, ["'model.mm_projector.0.weight'", "(80, 47)", "expected (80, 48)"]),
    "lm_head bias missing": (_no_lm_head_bias, ["'lm_head.bias'"]),
    "unknown model_type": (_unknown_type, ["unknown model_type 'llama'", "llava_phi"]),
    "broken config.json": (_broken_json, ["config.json", "not valid JSON"]),
    "pickle weights": (_pickle_only, ["pickle", "pytorch_model.bin"]),
    "missing shard": (_missing_shard, ["missing weight shard", "model-00002-of-00002.safetensors"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint(tiny_ckpt, tmp_path, case, lphi_ask):
    breaker, fragments = CASES[case]
    d = copy(tiny_ckpt, tmp_path / "m")
    breaker(d)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d)
    for frag in fragments:
        assert frag in str(err.value)
    assert_one_line_error(lphi_ask(d), *fragments)


def test_cli_bad_inputs(tiny_ckpt, tmp_path, lphi_ask):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(lphi_ask(tiny_ckpt, image=text), "cannot read image", "notes.txt")
    assert_one_line_error(lphi_ask(tiny_ckpt, image=tmp_path / "nope.png"), "image file not found")
    assert_one_line_error(lphi_ask(tiny_ckpt, prompt="   "), "prompt is empty")
    assert_one_line_error(lphi_ask(tiny_ckpt, prompt="word " * 400), "does not fit the context", "context length 256")
    assert_one_line_error(lphi_ask(tmp_path / "absent"), "model not found")
    assert_one_line_error(lphi_ask(tiny_ckpt, "--max-new-tokens", "0"), "max_new_tokens")
    assert_one_line_error(lphi_ask(tiny_ckpt, "--temperature", "-1"), "temperature")
    assert_one_line_error(lphi_ask(tiny_ckpt, "--device", "tpu"), "device must be 'cpu' or 'cuda'", "got 'tpu'")
    assert_one_line_error(lphi_ask(tiny_ckpt, "--threads", "0"), "--threads must be an integer in 1..")
    if not torch.cuda.is_available():
        assert_one_line_error(lphi_ask(tiny_ckpt, "--device", "cuda"), "no CUDA GPU")


def test_console_script_errors_in_its_own_process(tiny_ckpt, tmp_path):
    d = copy(tiny_ckpt, tmp_path / "m")
    _truncated(d)
    assert_one_line_error(lphi_ask_process(d), "cannot read weights file")


def test_cli_success_prints_answer_and_timings(tiny_ckpt):
    proc = lphi_ask_process(tiny_ckpt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "[torch fp32 cpu]" in proc.stderr and "ttft" in proc.stderr
