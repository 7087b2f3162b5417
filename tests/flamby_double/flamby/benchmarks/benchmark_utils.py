"""``flamby.benchmarks.benchmark_utils.set_seed``: FLamby's benchmark seeds every generator
(Python's, numpy's global, torch's CPU and CUDA ones) and asks cuDNN for deterministic kernels
before each run (``fed_benchmark.py``: after building a strategy, before ``run()``)."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
