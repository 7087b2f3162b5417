"""Fed-TCGA-BRCA's loss: the negative Cox partial log-likelihood, averaged over the batch."""

import torch
from torch import nn


class BaselineLoss(nn.Module):
    """Cox loss of risk ``scores`` (``(n, 1)``) given ``truth`` = ``[E, T]`` rows (``(n, 2)``).

    With the batch ordered by decreasing time ``T`` (a stable order: equal times keep their batch
    order, as FLamby's ``sorted`` does), record ``i`` contributes ``E_i * (log(sum_{k <= i}
    exp(s_k)) - s_i)``, i.e. its score against the scores of everyone still at risk; the loss is
    the mean over all ``n`` records (censored records count as zeros), a 0-d tensor.
    """

    def forward(self, scores, truth):
        scores = scores.reshape(-1)
        events = truth[:, 0].to(scores.dtype)
        order = torch.argsort(-truth[:, 1], stable=True)
        scores, events = scores[order], events[order]
        loss = (torch.logcumsumexp(scores, dim=0) - scores) * events
        return loss.mean()
