"""FLamby's datasets: one sub-package per federated dataset (here fed_tcga_brca, fed_synthetic)."""
