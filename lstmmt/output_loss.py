"""The output layer and the label-smoothed cross-entropy in one pass over the vocabulary.

For 4,096 target tokens and 8,000 target pieces the logits are a 131 MB matrix. Computed
the usual way (linear layer, then F.cross_entropy) training writes and reads it six times:
the logits, their log-softmax, a zero-filled gradient the target scatters into, the label
smoothing's gradient added to it, and the log-softmax backward. On a CPU those passes
over memory cost as much as a fifth of a training step.

`output_loss` does the output layer in chunks of rows (CHUNK_ELEMENTS), never holding the
whole batch's logits. The loss is the last operation of a training step, so a chunk's
gradient with respect to its logits is known as soon as its forward pass is: softmax minus
the smoothed target distribution. The chunk's share of the gradients of the hidden states,
the weight and the bias is computed right away and its logits are dropped; backward only
scales the stored gradients by the incoming one. The result equals
F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=PAD,
label_smoothing=eps, reduction="sum") up to rounding (tests/test_output_loss.py checks
loss and gradients in float64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lstmmt.tokenizer import PAD

CHUNK_ELEMENTS = {"cpu": 2**23, "cuda": 2**25}
"""Logits per chunk: on a CPU 32 MB in fp32, about 1,050 rows of an 8,000-piece vocabulary.
Each chunk adds its share of the weight gradient (V x H) in one product whose inner size is
the chunk's rows, so fewer, larger chunks multiply more efficiently and re-read that
gradient less often; 2**21 (8 MB, 260 rows, sized to stay in cache) trained 7-11% slower on
a 2-core AVX2 EPYC (CHANGELOG.md, 2026-12-03). A GPU: 4,000 rows."""


def output_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                label_smoothing: float = 0.0) -> Tensor:
    """Summed label-smoothed cross-entropy of logits hidden @ weight.T + bias over the rows
    whose target is not PAD. hidden (N, H), weight (V, H), bias (V,) or None, targets (N,);
    training passes the output layer's inputs and weights (lstmmt/model.py `OutputLayer.loss`)."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _OutputLoss.apply(hidden, weight, bias, targets, label_smoothing, needs_grad)


class _OutputLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                label_smoothing: float, needs_grad: bool) -> Tensor:
        grads = None
        if needs_grad:
            grad_bias = None if bias is None else torch.zeros_like(bias)
            grads = [torch.empty_like(hidden), torch.zeros_like(weight), grad_bias]
        accumulate = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 in the tests
        total = hidden.new_zeros((), dtype=accumulate)
        rows = max(1, CHUNK_ELEMENTS.get(hidden.device.type, CHUNK_ELEMENTS["cuda"]) // weight.size(0))
        for start in range(0, hidden.size(0), rows):
            chunk, chunk_targets = hidden[start : start + rows], targets[start : start + rows]
            logits = torch.nn.functional.linear(chunk, weight, bias).to(accumulate)
            loss, grad_logits = _smoothed_cross_entropy(logits, chunk_targets, label_smoothing)
            total += loss
            if grads is not None:
                grad_logits = grad_logits.to(chunk.dtype)
                grads[0][start : start + rows] = grad_logits @ weight
                if chunk.dtype == weight.dtype:
                    grads[1].addmm_(grad_logits.t(), chunk)
                else:  # under autocast: the product in the low precision, accumulated in the weight's
                    grads[1] += grad_logits.t() @ chunk
                if grads[2] is not None:
                    grads[2] += grad_logits.sum(0)
        ctx.grads = grads
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        return (grad_hidden * grad_total, grad_weight * grad_total,
                None if grad_bias is None else grad_bias * grad_total, None, None, None)


def _smoothed_cross_entropy(logits: Tensor, targets: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Summed loss of fp32 (or fp64) logits (n, V) and its gradient, overwriting the logits.

    With z = logits, a row's loss is logsumexp(z) - (1 - eps) z[target] - eps/V sum(z),
    as in F.cross_entropy with label_smoothing=eps; its gradient is softmax(z) minus the
    smoothed target distribution. Rows whose target is PAD count zero.
    """
    vocab = logits.size(1)
    real = (targets != PAD).unsqueeze(1)
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    target_logit = logits.gather(1, targets.unsqueeze(1))
    row_loss = lse - (1.0 - eps) * target_logit - (eps / vocab) * logits.sum(1, keepdim=True)
    loss = row_loss.masked_fill(~real, 0.0).sum()
    grad = logits.sub_(lse).exp_().sub_(eps / vocab)
    grad.scatter_add_(1, targets.unsqueeze(1), torch.full_like(target_logit, eps - 1.0))
    return loss, grad.mul_(real)
