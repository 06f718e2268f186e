"""The prompt's linears on the CPU run on rows padded to a multiple of 16 (model/cpu_linear.py)."""

from __future__ import annotations

import torch
from torch import nn

from lphi_edge.model.cpu_linear import RowPaddedLinear, pad_linear_rows, pad_rows
from lphi_edge.model.int8 import Int8Linear


def test_pad_rows_pads_the_prompts_row_counts_and_leaves_decode_steps_alone():
    for m, padded in [(577, 592), (697, 704), (64, 64), (65, 80), (704, 704), (1, 1), (63, 63)]:
        x = torch.randn(m, 8)
        y = pad_rows(x)
        assert y.shape == (padded, 8), m
        assert torch.equal(y[:m], x) and not y[m:].any()


def test_row_padded_linear_gives_the_linears_rows():
    """Same parameters (shared, not copied), same output shape, the bf16 product of each row within bf16 rounding
    of the unpadded one (which oneDNN may accumulate in another order)."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 160).to(torch.bfloat16)
    padded = RowPaddedLinear.from_linear(lin)
    assert padded.weight is lin.weight and padded.bias is lin.bias
    assert padded.state_dict().keys() == lin.state_dict().keys()
    for shape in [(1, 577, 96), (2, 35, 96), (1, 1, 96)]:  # 577 and 70 rows padded, one row not
        x = torch.randn(*shape, generator=g).to(torch.bfloat16)
        got, ref = padded(x), lin(x)
        assert got.shape == ref.shape == (*shape[:-1], 160)
        torch.testing.assert_close(got, ref, rtol=1.6e-2, atol=2e-2)
        exact = x.double() @ lin.weight.double().T + lin.bias.double()
        assert (got.double() - exact).abs().max() < 0.05  # every row is its own row's product, not a neighbour's


def test_int8_products_on_padded_rows_are_exact():
    """int8 × int8 → int32 sums are exact whatever the kernel: 70 tokens at once (padded to 80) equal each token
    alone (one row: not padded)."""
    g = torch.Generator().manual_seed(1)
    q = Int8Linear(nn.Linear(64, 48))
    x = torch.randn(70, 64, generator=g)
    rows = torch.cat([q(x[i : i + 1]) for i in range(70)])
    assert torch.equal(q(x), rows)


def test_compiled_padding_does_not_recompile_for_other_lengths():
    """A graph compiled with symbolic lengths pads by (-M) % 16 without testing M: one graph serves the prompt's
    697 positions, a 10-position follow-up and a multiple of 16."""
    from torch._dynamo.testing import CompileCounter

    lin = RowPaddedLinear.from_linear(nn.Linear(32, 24))
    counter = CompileCounter()
    fn = torch.compile(lin, backend=counter, dynamic=True)
    for m in (697, 10, 704, 65):
        x = torch.randn(1, m, 32)
        torch.testing.assert_close(fn(x), nn.functional.linear(x, lin.weight, lin.bias))
    assert counter.frame_count == 1


def test_pad_linear_rows_covers_the_encoder_projector_and_decoder_not_lm_head():
    from lphi_edge.format.shipped import resolve_model_dir
    from lphi_edge.model.checkpoint import load_checkpoint
    from lphi_edge.runtime.torch_backend import TorchBackend

    model = load_checkpoint(resolve_model_dir("shapes-demo"), dtype="bf16")
    linears = sum(type(m) is nn.Linear for m in model.modules())
    keys = model.state_dict().keys()
    assert pad_linear_rows(model) == linears - 1  # all but lm_head
    assert model.state_dict().keys() == keys
    assert type(model.language_model.lm_head) is nn.Linear
    assert isinstance(model.vision_tower.encoder.layers[0].mlp.fc1, RowPaddedLinear)
    assert isinstance(model.mm_projector[0], RowPaddedLinear)
    assert isinstance(model.language_model.model.layers[0].self_attn.q_proj, RowPaddedLinear)
    assert pad_linear_rows(model) == 0  # already padded: nothing wrapped twice
    # the torch backend pads on the CPU in bf16 only: fp32 stays the reference's own modules
    fp32 = TorchBackend(load_checkpoint(resolve_model_dir("shapes-demo"), dtype="fp32"))
    assert not any(isinstance(m, RowPaddedLinear) for m in fp32.model.modules())
    bf16 = TorchBackend(load_checkpoint(resolve_model_dir("shapes-demo"), dtype="bf16"))
    assert isinstance(bf16.model.mm_projector[0], RowPaddedLinear)


def test_vision_attention_pads_its_queries_and_answers_every_row():
    """The CPU vision attention pads the queries' rows (577 → 592): the result has T rows, each within bf16
    rounding of fp32 attention for that query, for padded (577, 70) and unpadded (48) lengths."""
    from lphi_edge.model.cpu_attention import attention_bf16

    g = torch.Generator().manual_seed(2)
    for t in (577, 70, 48):
        q, k, v = (torch.randn(1, t, 4, 32, generator=g).to(torch.bfloat16).transpose(1, 2) for _ in range(3))
        exact = torch.softmax((q.double() * 32**-0.5) @ k.double().transpose(-1, -2), dim=-1) @ v.double()
        got = attention_bf16(q, k, v, 32**-0.5)
        assert got.shape == (1, 4, t, 32) and got.is_contiguous()
        assert (got.double() - exact).abs().max() < 0.02, t
