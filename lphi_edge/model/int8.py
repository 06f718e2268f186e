"""int8 matmuls for the CPU: the model's linears as W8A8 (int8 weights × int8 activations → int32).

What the torch backend's `dtype="int8"` runs. Weights are rounded once to int8 with one scale per output channel;
activations are rounded at run time with one scale per token (symmetric absmax, the scheme of LLM.int8() without
its outlier split and of SmoothQuant's "per-token dynamic" row, without smoothing), and the product runs as
`torch._int_mm`, which oneDNN executes with the CPU's int8 dot products (AVX-512 VNNI / AMX). On a CPU with those
the int8 product runs at several times the bf16 rate for the same shapes (benchmarks/README.md §10 measures both
in one run); everything that is not a linear (norms, attention, GELU, the patch embedding, lm_head) stays in bf16.

Which linears: every one of the vision encoder's layers, the projector and Phi's decoder layers (those
model/cpu_linear.py pads in bf16; the int8 products pad their rows the same way). lm_head is kept in bf16: it
computes one position per answer token, so int8 buys it nothing in the prompt, and it writes the logits greedy
decoding ranks. What this costs in accuracy is measured, not assumed: shapes-task accuracy, answer agreement with
fp32 and the export gate's per-part cosines (benchmarks/README.md §10); the error of W8A8 grows with activation
outliers, which a real checkpoint has and a random one does not.
"""

from __future__ import annotations

import torch
from torch import nn

from lphi_edge.model.cpu_linear import pad_rows, replace_linears

INT8_MAX = 127


@torch.library.custom_op("lphi_edge::int8_mm", mutates_args=())
def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) × int8 (K, N) → int32 (M, N). An opaque op to torch.compile: inductor fuses the rounding and
    scaling around it and leaves the product to oneDNN (lowered itself, it became a slow generated loop)."""
    return torch._int_mm(a, b)


@int8_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float (R, C) → (int8 (R, C), float32 scale (R, 1)) with x ≈ q · scale, symmetric per row."""
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # (R, 1)
    return torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x · Wᵀ + b with W and x rounded to int8 (W per output channel once, x per token each call).

    Output in x's dtype. Built from a float nn.Linear, whose weights it replaces (no float copy is kept)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.detach())  # (N, K) int8, (N, 1)
        # stored (K, N) in column-major order: `weight_t` is the (K, N) operand _int_mm wants, and one output
        # channel's K weights stay contiguous, which oneDNN reads fastest for a single token (decode)
        self.register_buffer("weight_t", q.t())  # (K, N), strides (1, K)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, N) float32
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)  # (N,) float32 or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., K)
        q, scale = quantize_rows(x.reshape(-1, self.in_features))  # (M, K) int8, (M, 1)
        # rows padded to 16 for oneDNN (model/cpu_linear.py), the product's first M rows kept
        y = int8_mm(pad_rows(q), self.weight_t)[: q.shape[0]].float() * scale * self.weight_scale  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)  # (..., N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linears(model: nn.Module) -> int:
    """Replace the prompt's linears (model/cpu_linear.py's `prompt_linear_parents`) in place with Int8Linear;
    returns how many. The model should already be in its compute dtype (bf16): the int8 weights are rounded from
    the weights as loaded."""
    return replace_linears(model, Int8Linear)


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
