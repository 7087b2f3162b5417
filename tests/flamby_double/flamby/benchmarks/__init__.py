"""FLamby's benchmark helpers (``flamby.benchmarks``): only ``benchmark_utils.set_seed`` here."""
