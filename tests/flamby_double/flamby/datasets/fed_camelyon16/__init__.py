"""Fed-Camelyon16 (FLamby's ``fed_camelyon16``): only its ``collate_fn`` in this double.

The double has no Camelyon16 slides, model or metric; it provides the batching helper that
FLamby's package exports (``from flamby.datasets.fed_camelyon16 import collate_fn``).
"""

from flamby.datasets.fed_camelyon16.dataset import collate_fn

__all__ = ["collate_fn"]
