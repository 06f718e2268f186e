"""Native LLaVA-Phi checkpoints: load (single-file or sharded safetensors) and save, no pickle.

A checkpoint directory holds config.json (model_type "llava_phi"), model.safetensors or
model-0000k-of-0000n.safetensors + model.safetensors.index.json, tokenizer files, and optionally
preprocessor_config.json. Loading checks every tensor by name and shape and says which one is wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lphi_edge.atomic import atomic_directory
from lphi_edge.errors import CheckpointError, ConfigError
from lphi_edge.model.config import LlavaPhiConfig
from lphi_edge.model.modeling import LlavaPhiForCausalLM, module_to_native_key, native_to_module_key
from lphi_edge.processing.image import ProcessorConfig
from lphi_edge.processing.tokenizer import tokenizer_files

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
CONFIG_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors some writers keep that carry no learned weights.
_IGNORED_SUFFIXES = ("position_ids", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype {dtype} is not supported: expected one of {sorted(DTYPES)}")
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} is not supported: expected one of {sorted(DTYPES)}") from None


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the index when sharded."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists missing weight shard(s): {', '.join(missing)}")
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    hint = f" (found pickle files {pickles}: convert them to safetensors; pickle is never loaded)" if pickles else ""
    raise CheckpointError(f"no weights in {path}: expected {SINGLE_FILE} or {INDEX_FILE} with shards{hint}")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over safetensors files; a truncated or corrupt file is a CheckpointError."""
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    yield name, sf.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot read weights file {f}: {e} (truncated or not a safetensors file?)") from None


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_checkpoint(
    path: str | os.PathLike, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu"
) -> LlavaPhiForCausalLM:
    """Load a native checkpoint; strict by name and shape (extra non-weight buffers are ignored)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path}")
    torch_dtype = resolve_dtype(dtype)
    config = LlavaPhiConfig.from_dir(path)
    files = weight_files(path)
    with default_dtype(torch_dtype):  # parameters allocated in the target dtype; rotary buffers stay fp32
        model = LlavaPhiForCausalLM(config, init_weights=False)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    unexpected: list[str] = []
    progress = tqdm(total=len(params), desc="loading weights", unit="tensor", disable=len(params) < 200)
    with torch.no_grad():
        for name, tensor in iter_tensors(files):
            key = native_to_module_key(name)
            if key is None or key not in params:
                if not name.endswith(_IGNORED_SUFFIXES):
                    unexpected.append(name)
                continue
            param = params[key]
            if tuple(tensor.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)} from config.json"
                )
            param.copy_(tensor)
            loaded.add(key)
            progress.update(1)
    progress.close()
    missing = [k for k in params if k not in loaded]
    if missing:
        names = [module_to_native_key(k) for k in missing]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor(s) {', '.join(repr(n) for n in names[:5])}{more}")
    if unexpected:
        logger.warning("ignored %d unexpected tensor(s) in %s, e.g. %s", len(unexpected), path, unexpected[:3])
    model.eval()
    return model.to(device)


def processor_config(path: str | os.PathLike, config: LlavaPhiConfig) -> ProcessorConfig:
    return ProcessorConfig.from_dir(
        path, image_size=config.vision.image_size, pad_to_square=config.image_aspect_ratio == "pad"
    )


def save_checkpoint(model: LlavaPhiForCausalLM, out: str | os.PathLike, **options: Any) -> Path:
    """Write `model` in the native layout; `options` are those of `write_native` (tokenizer_dir,
    processor, max_shard_size, overwrite)."""
    state = {k: v.detach() for k, v in model.native_state_dict().items()}
    return write_native(state, model.config.to_dict(dtype=CONFIG_DTYPE[model.dtype]), out, **options)


def write_native(
    state: dict[str, torch.Tensor],
    config: dict,
    out: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    processor: ProcessorConfig | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write natively named tensors + config, atomically: a temporary directory renamed into place
    only when every file is written, so an interrupted save never leaves a checkpoint that looks valid."""
    from huggingface_hub import split_torch_state_dict_into_shards

    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists: choose a new directory or pass overwrite=True")
    with atomic_directory(out) as tmp:
        state = {k: v.to("cpu").contiguous() for k, v in state.items()}
        split = split_torch_state_dict_into_shards(
            state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
        )
        files = split.filename_to_tensors.items()
        for filename, names in tqdm(files, desc="saving", unit="file", disable=len(files) < 2):
            save_file({n: state[n] for n in names}, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if processor is not None:
            (tmp / "preprocessor_config.json").write_text(json.dumps(processor.to_preprocessor_dict(), indent=2))
        if tokenizer_dir is not None:
            for f in tokenizer_files(tokenizer_dir):
                shutil.copy2(f, tmp / f.name)
    return out
