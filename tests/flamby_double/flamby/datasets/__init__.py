"""FLamby's datasets: one sub-package per federated dataset (here fed_tcga_brca and fed_synthetic,
and only the ``collate_fn`` of fed_camelyon16 and fed_lidc_idri)."""
