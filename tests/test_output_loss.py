"""The fused output layer + loss equals linear + F.cross_entropy, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lstmmt import output_loss as fused
from lstmmt.tokenizer import PAD


def inputs(rows=37, hidden=6, vocab=11, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, dtype=dtype, generator=generator, requires_grad=True)
    w = torch.randn(vocab, hidden, dtype=dtype, generator=generator, requires_grad=True)
    b = torch.randn(vocab, dtype=dtype, generator=generator, requires_grad=True)
    targets = torch.randint(1, vocab, (rows,), generator=generator)
    targets[::5] = PAD
    return h, w, b, targets


def reference(h, w, b, targets, eps):
    return F.cross_entropy(F.linear(h, w, b), targets, ignore_index=PAD, label_smoothing=eps, reduction="sum")


@pytest.mark.parametrize("eps", [0.0, 0.1])
# 4 rows a chunk (the last one short), one chunk exactly, one large chunk
@pytest.mark.parametrize("chunk", [11 * 4, 11 * 37, 10**6])
@pytest.mark.parametrize("with_bias", [True, False])
def test_loss_and_gradients_equal_cross_entropy(monkeypatch, eps, chunk, with_bias):
    monkeypatch.setitem(fused.CHUNK_ELEMENTS, "cpu", chunk)
    h, w, b, targets = inputs()
    bias = b if with_bias else None
    expected = reference(h, w, bias, targets, eps)
    expected_grads = torch.autograd.grad(expected * 0.7, [h, w] + ([b] if with_bias else []))
    got = fused.output_loss(h, w, bias, targets, eps)
    got_grads = torch.autograd.grad(got * 0.7, [h, w] + ([b] if with_bias else []))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_pad_rows_get_no_gradient():
    h, w, b, targets = inputs()
    fused.output_loss(h, w, b, targets, 0.1).backward()
    assert h.grad[targets == PAD].abs().max() == 0
    assert h.grad[targets != PAD].abs().min(dim=1).values.gt(0).all()


def test_without_grad_it_only_computes_the_loss():
    h, w, b, targets = inputs(dtype=torch.float32)
    with torch.no_grad():
        loss = fused.output_loss(h, w, b, targets, 0.1)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(h, w, b, targets, 0.1).detach())


def test_under_bf16_autocast_it_stays_close_and_keeps_fp32_weight_gradients():
    h, w, b, targets = inputs(rows=64, hidden=32, vocab=50, dtype=torch.float32)
    expected = reference(h, w, b, targets, 0.1)
    expected_grad_w, = torch.autograd.grad(expected, [w])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.output_loss(h, w, b, targets, 0.1)
    got_grad_w, = torch.autograd.grad(got, [w])
    assert got.dtype == torch.float32 and got_grad_w.dtype == torch.float32
    torch.testing.assert_close(got, expected.detach(), rtol=2e-2, atol=0)
    torch.testing.assert_close(got_grad_w, expected_grad_w, rtol=5e-2, atol=5e-2)
