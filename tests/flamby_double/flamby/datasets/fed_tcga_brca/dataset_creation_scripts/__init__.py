"""Fed-TCGA-BRCA's creation folder: where ``license_agreement_fed_tcga_brca`` records acceptance."""
