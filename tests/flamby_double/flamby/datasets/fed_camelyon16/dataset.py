"""FLamby's ``fed_camelyon16/dataset.py``: here only ``collate_fn``.

A Camelyon16 item is ``(X, y, perm)``: ``X`` the ``(n_tiles, 2048)`` tile features of one slide
(``n_tiles`` varies), ``y`` its 0-d label and ``perm`` a fixed permutation of its tiles.
"""

import torch


def collate_fn(dataset_elements_list, max_tiles=10000):
    """Batch slides with uneven numbers of tiles, as FLamby's ``collate_fn``.

    ``dataset_elements_list``: ``[(X, y, perm), ...]`` (length ``n``). Returns ``(X, y)``: ``X``
    of shape ``(n, max_tiles, m)`` and ``X``'s dtype, slide ``i`` holding its first
    ``min(max_tiles, n_tiles)`` tiles in ``perm`` order and zeros after; ``y`` of shape
    ``(n, 1)`` and ``y``'s dtype.
    """
    features, label, _ = dataset_elements_list[0]
    batch = torch.zeros(
        (len(dataset_elements_list), max_tiles, features.size(1)), dtype=features.dtype
    )
    labels = torch.empty((len(dataset_elements_list), 1), dtype=label.dtype)
    for row, (tiles, target, order) in enumerate(dataset_elements_list):
        kept = min(max_tiles, tiles.shape[0])
        batch[row, :kept, :] = tiles[order[:kept], :]
        labels[row] = target
    return batch, labels
