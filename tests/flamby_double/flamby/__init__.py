"""Test double of FLamby (github.com/owkin/FLamby), for fedplug's tests.

FLamby is not on the package index. This package implements the parts of its module contract that
fedplug relies on (``flamby.utils`` and the ``flamby.datasets.<name>`` modules for ``fed_tcga_brca``
and ``fed_synthetic``, plus the ``collate_fn`` of ``fed_camelyon16`` and ``fed_lidc_idri``), written
from FLamby's public source and behaviour (the same operations where numerics matter), over the real
Fed-TCGA-BRCA data that FLamby ships. Only ``tests/flamby_double`` has to be on ``sys.path`` for
``import flamby`` to resolve to it.
"""
