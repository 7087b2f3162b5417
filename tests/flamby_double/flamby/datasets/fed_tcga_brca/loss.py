"""Fed-TCGA-BRCA's loss: the negative Cox partial log-likelihood, averaged over the batch.

This is FLamby's ``BaselineLoss`` operation for operation (the stack, Python's stable ``sorted``
on decreasing time, then one log-sum-exp per record in a loop), so that values, dtypes and
gradients, exact zeros included, are the ones the real package computes. A vectorised form (e.g.
``logcumsumexp``) is equal in exact arithmetic but not in floating point: it leaves gradients of
order 1e-8 where FLamby's loop gives exact zeros (records after the last event in the sorted
batch, a batch whose only event is its longest time), and Adam's normalisation turns those into
full steps.
"""

import torch
from torch import nn


class BaselineLoss(nn.Module):
    """Cox loss of risk ``scores`` (``(n, 1)``) given ``truth`` = ``[E, T]`` rows (``(n, 2)``).

    As FLamby's: ``scores``, ``E`` and ``T`` are stacked as the columns of one tensor (torch's
    type promotion applies, so ``float64`` truth gives a ``float64`` loss), its rows are sorted
    by decreasing ``T`` with Python's stable ``sorted`` (equal times keep their batch order), and
    record ``i >= 1`` of the sorted batch contributes ``m + log(sum(exp(aux - m)))`` with ``aux =
    scores[:i + 1] - scores[i]`` and ``m = aux.max()``; record 0 contributes 0. The
    contributions are multiplied by ``E`` and averaged over all ``n`` records (a 0-d tensor).
    """

    def __init__(self):
        super().__init__()

    def forward(self, scores, truth):
        # columns: risk score, event, time; rows by decreasing time (a stable sort, as FLamby's)
        table = torch.stack((torch.squeeze(scores, dim=1), truth[:, 0], truth[:, 1]), dim=1)
        table = torch.stack(sorted(table, key=lambda row: -row[2]))
        risk, happened = table[:, 0], table[:, 1]
        terms = torch.zeros(risk.size(0)).to(device=risk.device, dtype=risk.dtype)
        for index in range(1, risk.size(0)):  # the first record's risk set is itself: no term
            shifted = risk[: index + 1] - risk[index]
            peak = shifted.max()
            terms[index] = peak + torch.log((shifted - peak).exp().sum(0))
        return (terms * happened).mean()
