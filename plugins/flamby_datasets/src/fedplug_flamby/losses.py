"""Batched forms of FLamby losses that loop over a batch's records in Python.

Fed-TCGA-BRCA's ``BaselineLoss`` (the negative Cox partial log-likelihood) sorts a batch's rows by
decreasing time with Python's ``sorted`` and computes one log-sum-exp per record in a loop: about
60 small tensor operations per batch of 8, and as many autograd nodes to run backwards, which is
most of a training step's time. :class:`CoxLoss` computes the same terms for the whole batch at
once: a stable ``torch.sort`` (the same order as ``sorted``, equal times keeping their batch
order), the risk differences of every record to the records before it in a lower-triangular
matrix, each row's maximum (``amax``, whose gradient splits between equal maxima as FLamby's
``max()`` does) and log-sum-exp, record 0's term held at zero as FLamby's loop leaves it.

The values and gradients are FLamby's up to float rounding (a sum over a row of the matrix
adds the same numbers as FLamby's sum over a slice, but may group them otherwise); gradients that
FLamby's loop leaves at exactly zero (records after the last event of the sorted batch) are
exactly zero here too, since masked entries and event-free terms pass no gradient. Plans train
with it by default (``model_args={"loss": "batched"}``); ``"flamby"`` trains with the dataset's
own ``BaselineLoss``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _lower(n: int) -> np.ndarray:
    """The records at or before each record (row i: columns 0..i), cached per batch size."""
    mask = _LOWER.get(n)
    if mask is None:
        mask = _LOWER[n] = np.tril(np.ones((n, n), dtype=bool))
    return mask


_LOWER: dict[int, np.ndarray] = {}


class _CoxTerms(torch.autograd.Function):
    """The loss and its gradient in closed form: with ``p_i`` the softmax of the risks of records
    ``0..i`` (sorted), ``d loss / d s_k = (sum_i E_i p_i[k] - E_k) / n`` over records ``i >= 1``
    (record 0's term is zero). One forward, one backward, no graph of small operations; on a
    CPU the arithmetic runs in numpy (a batch is a few dozen numbers: torch's per-operation cost
    would dominate), on a GPU in torch."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(scores.dtype, truth.dtype)  # as FLamby's torch.stack
        on_cpu = scores.device.type == "cpu"
        if on_cpu:
            lib = np
            s = scores.detach().numpy()[:, 0].astype(dtype_np(dtype), copy=False)
            t = truth.detach().numpy().astype(dtype_np(dtype), copy=False)
            order = np.argsort(-t[:, 1], kind="stable")
            r, e = s[order], t[order, 0]
            shifted = np.where(_lower(len(r)), r[None, :] - r[:, None], -np.inf)
            peak = shifted.max(axis=1, keepdims=True)
        else:
            lib = torch
            s, t = scores.detach()[:, 0].to(dtype), truth.detach().to(dtype)
            order = torch.sort(-t[:, 1], stable=True).indices
            r, e = s[order], t[order, 0]
            n = r.size(0)
            earlier = torch.ones(n, n, dtype=torch.bool, device=r.device).tril()
            shifted = (r.unsqueeze(0) - r.unsqueeze(1)).masked_fill_(~earlier, float("-inf"))
            peak = shifted.amax(dim=1, keepdim=True)
        weights = lib.exp(shifted - peak)
        total = weights.sum(1)
        terms = peak[:, 0] + lib.log(total)
        terms[0] = 0  # the first record's risk set is itself
        happened = e.copy() if on_cpu else e.clone()
        happened[0] = 0
        ctx.on_cpu, ctx.order, ctx.shape, ctx.dtype = on_cpu, order, scores.shape, scores.dtype
        ctx.softmax, ctx.happened = weights / total[:, None], happened
        if on_cpu:  # numpy's mean, without its wrapper: the sum over the batch, divided by n
            return torch.from_numpy(np.asarray(np.add.reduce(terms * e) / len(e)))
        return (terms * e).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        softmax, happened, order = ctx.softmax, ctx.happened, ctx.order
        n = softmax.shape[0]
        if ctx.on_cpu:
            sorted_grad = (happened @ softmax - happened) * (grad.item() / n)
            out = np.empty_like(sorted_grad)
            out[order] = sorted_grad
            return torch.from_numpy(out).to(ctx.dtype).reshape(ctx.shape), None
        sorted_grad = (happened @ softmax - happened) * (grad / n)
        out = torch.empty_like(sorted_grad).index_copy_(0, order, sorted_grad)
        return out.to(ctx.dtype).reshape(ctx.shape), None


_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {}


def dtype_np(dtype: torch.dtype) -> np.dtype:
    """numpy's dtype for a torch dtype."""
    found = _NUMPY_DTYPES.get(dtype)
    if found is None:
        found = _NUMPY_DTYPES[dtype] = torch.empty((), dtype=dtype).numpy().dtype
    return found


class CoxLoss(nn.Module):
    """Mean over the batch of ``E_i * (log sum_{j <= i} exp(s_j) - s_i)``, rows ordered by
    decreasing time ``T`` (``truth = [E, T]``), the first row's term zero; ``scores`` ``(n, 1)``."""

    def forward(self, scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return _CoxTerms.apply(scores, truth)


#: FLamby datasets whose BaselineLoss has a batched form here
BATCHED_LOSSES: dict[str, type[nn.Module]] = {"fed_tcga_brca": CoxLoss}
