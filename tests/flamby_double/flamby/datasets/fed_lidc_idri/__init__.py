"""Fed-LIDC-IDRI (FLamby's ``fed_lidc_idri``): only its ``collate_fn`` in this double.

The double has no CT scans, VNet model or DICE metric; it provides the batching helper that
FLamby's package exports (``from flamby.datasets.fed_lidc_idri import collate_fn``).
"""

from flamby.datasets.fed_lidc_idri.dataset import collate_fn

__all__ = ["collate_fn"]
