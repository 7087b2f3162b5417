"""FLamby's ``fed_lidc_idri/dataset.py``: here only ``collate_fn``.

A LIDC-IDRI item is ``(X, y)``: ``S`` patches sampled from one CT scan and the matching masks,
each of shape ``(S, D, W, H)`` (or already ``(S, 1, D, W, H)``).
"""

import torch


def collate_fn(dataset_elements_list):
    """Batch the patches of ``B`` scans, as FLamby's ``collate_fn``.

    ``dataset_elements_list``: ``[(X, y), ...]`` (length ``B``). The ``X`` and the ``y`` are
    concatenated along their first dimension (``(B * S, D, W, H)``); a channel dimension is added
    (``(B * S, 1, D, W, H)``) unless the result already has 5 dimensions.
    """
    scans = torch.cat([scan for scan, _ in dataset_elements_list])
    masks = torch.cat([mask for _, mask in dataset_elements_list])
    if scans.ndim == 5:  # the channel dimension is there already
        return scans, masks
    return scans.unsqueeze(1), masks.unsqueeze(1)
