"""declearn's own optimizer plug-ins, by their declearn names, as import paths: declearn is
imported only when one of them is used (it takes seconds to load).

The list follows the declearn release fedplug supports; ``tests/core/test_optimizer_modules.py``
checks it against declearn's own registry.
"""

from __future__ import annotations

from fedplug.hookspecs import Register, hookimpl

_MODULES = "declearn.optimizer.modules"
_REGULARIZERS = "declearn.optimizer.regularizers"
_SCHEDULERS = "declearn.optimizer.schedulers"

DECLEARN_PLUGINS: dict[str, str] = {
    # OptiModule: gradient transforms, and auxiliary-variable pairs (Scaffold)
    "adagrad": f"{_MODULES}:AdaGradModule",
    "adam": f"{_MODULES}:AdamModule",
    "ewma": f"{_MODULES}:EWMAModule",
    "gaussian-noise": f"{_MODULES}:GaussianNoiseModule",
    "l2-clipping": f"{_MODULES}:L2Clipping",
    "l2-global-clipping": f"{_MODULES}:L2GlobalClipping",
    "momentum": f"{_MODULES}:MomentumModule",
    "rmsprop": f"{_MODULES}:RMSPropModule",
    "scaffold-client": f"{_MODULES}:ScaffoldClientModule",
    "scaffold-server": f"{_MODULES}:ScaffoldServerModule",
    "yogi": f"{_MODULES}:YogiModule",
    "yogi-momentum": f"{_MODULES}:YogiMomentumModule",
    # Regularizer: loss penalties
    "fedprox": f"{_REGULARIZERS}:FedProxRegularizer",
    "lasso": f"{_REGULARIZERS}:LassoRegularizer",
    "ridge": f"{_REGULARIZERS}:RidgeRegularizer",
    # Scheduler: learning-rate (and weight-decay) schedules
    "cosine-annealing": f"{_SCHEDULERS}:CosineAnnealing",
    "cosine-annealing-warm-restarts": f"{_SCHEDULERS}:CosineAnnealingWarmRestarts",
    "cyclic-exp-range": f"{_SCHEDULERS}:CyclicExpRange",
    "cyclic-triangular": f"{_SCHEDULERS}:CyclicTriangular",
    "exponential-decay": f"{_SCHEDULERS}:ExponentialDecay",
    "inverse-scaling": f"{_SCHEDULERS}:InverseScaling",
    "linear-decay": f"{_SCHEDULERS}:LinearDecay",
    "piecewise-decay": f"{_SCHEDULERS}:PiecewiseDecay",
    "polynomial-decay": f"{_SCHEDULERS}:PolynomialDecay",
    "warmup": f"{_SCHEDULERS}:Warmup",
    "warmup-rounds": f"{_SCHEDULERS}:WarmupRounds",
}


@hookimpl
def fedplug_register_optimizer_modules(register: Register) -> None:
    for name, path in DECLEARN_PLUGINS.items():
        register(name, path)
