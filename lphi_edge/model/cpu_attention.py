"""The vision tower's attention on the CPU in bf16 (and under int8 linears): two matmuls and a softmax in bf16.

Why not SDPA: PyTorch's CPU flash attention runs CLIP-L/336's 16 heads × 577 × 64 in bf16 no faster than in fp32
on a CPU with AVX-512 BF16 but no AMX, about twice as slow as the same attention written as two oneDNN bf16
matmuls with the softmax in bf16 (measured: benchmarks/results/NOTES.md, "int8 matmuls for the prompt"). Left to
inductor, those three ops compiled into code as slow as SDPA, so they run as one op that torch.compile does not
look into. The attention weights are rounded to bf16 before multiplying the values, as transformers' "eager"
attention rounds them (the error against fp32 attention is eager's).

Registered with transformers' AttentionInterface as VISION_ATTENTION; CLIP's vision attention has no mask.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface

from lphi_edge.model.cpu_linear import pad_rows

VISION_ATTENTION = "lphi_cpu_bf16"


@torch.library.custom_op("lphi_edge::attention_bf16", mutates_args=())
def attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k, v (B, H, T, Dh) → (B, H, T, Dh): softmax(q·kᵀ·scale)·v without a mask, in the inputs' dtype. The
    queries' rows are padded like the linears' (model/cpu_linear.py: 577 → 592, both products faster); each
    query's row of the result depends on that query alone, so the first T rows are the answer."""
    t = q.shape[-2]
    weights = torch.softmax((pad_rows(q) * scale) @ k.transpose(-1, -2), dim=-1)  # (B, H, T + p, T)
    return (weights @ v)[..., :t, :].contiguous()  # (B, H, T, Dh), contiguous as the fake promises


@attention_bf16.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous, as the matmul's output (q itself is usually a transposed view)


def _vision_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (B, H, T, Dh) each → ((B, T, H, Dh), no weights)."""
    if attention_mask is not None or dropout:
        raise ValueError(f"{VISION_ATTENTION} attention takes no mask and no dropout (inference of a vision tower)")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return attention_bf16(query, key, value, scale).transpose(1, 2).contiguous(), None


AttentionInterface.register(VISION_ATTENTION, _vision_attention)


def use_cpu_vision_attention(model: nn.Module) -> None:
    """Run a LlavaPhiForCausalLM's vision attention as `attention_bf16` (the model on the CPU in bf16)."""
    model.config.vision._attn_implementation = VISION_ATTENTION
