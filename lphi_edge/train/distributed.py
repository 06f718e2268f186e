"""Scale-out for `lphi-train`: torch.distributed + FSDP2 (`fully_shard`), one code path from 1 to N processes.

Why FSDP2 and not DeepSpeed ZeRO: it is part of torch (nothing to compile or pin beside torch==2.13.0), it
runs on CPU with gloo, so the exact multi-process path is tested on this machine and runs with NCCL on
A100s unchanged, it shards frozen and trainable parameters alike (stage 1 trains 0.3 % of the weights), and
its full state dicts (`torch.distributed.checkpoint.state_dict`) make checkpoints independent of the
number of processes: a run checkpointed on 8 GPUs resumes on 4.

Started by `torchrun` (WORLD_SIZE / RANK / LOCAL_RANK in the environment), or as a plain single process.
Multi-node: `torchrun --nnodes N --node_rank R --master_addr HOST ...`; the output directory must be on a
filesystem every node sees (checkpoints are written by rank 0 and read by every rank on resume).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lphi_edge.errors import ConfigError

logger = logging.getLogger(__name__)

# the repeated blocks, each its own FSDP unit (all-gathered one at a time in forward and backward)
SHARDED_BLOCKS = ("CLIPEncoderLayer", "PhiDecoderLayer")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank / world size, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} outside world size {self.world_size}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float) -> float:
        """Sum of a number over all processes."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, obj: object) -> list[object] | None:
        """Every rank's object on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[object] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """From torchrun's environment (or none: one process). device: auto | cpu | cuda.
    NCCL on CUDA, gloo on CPU; each process takes the GPU of its LOCAL_RANK."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"TrainConfig.device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device is cuda but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
        logger.info("rank %d of %d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistContext(rank, world, local, dev)


def shutdown() -> None:
    """Leave the process group (after the last collective), so every rank exits cleanly."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_model(model: nn.Module) -> None:
    """FSDP2: each transformer block of the vision tower and the LM is a unit; the root (patch / word
    embeddings, projector, final norm, lm_head) is the last one. Parameters stay fp32 (autocast computes
    in bf16 where asked), gradients are reduce-scattered and averaged over ranks."""
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in model.modules() if type(m).__name__ in SHARDED_BLOCKS]
    if not blocks:
        raise RuntimeError(f"no {SHARDED_BLOCKS} blocks found to shard: transformers' module names changed?")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    logger.info("FSDP2: %d blocks + root sharded", len(blocks))


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Unsharded trainable weights (and optimizer state) on rank 0's CPU, keyed by parameter name: the same
    whatever the number of processes. Frozen weights are left out (they are the starting checkpoint's).
    Every rank must call it (it all-gathers); other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_sd = get_model_state_dict(model, options=options)
    opt_sd = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_sd, opt_sd


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, torch.Tensor], opt_sd: dict
) -> None:
    """Inverse of full_state_dicts: every rank passes the full (trainable) state; each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, opt_sd, options=options)
