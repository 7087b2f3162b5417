"""A researcher script whose nodes train slowly, for Ctrl-C tests: ``python interrupted.py MODE
CHECKPOINT_DIR`` with MODE ``inline``, ``threads`` or ``processes``. It prints ``round N`` after
each round and, on KeyboardInterrupt, ``interrupted at round N`` and exits with status 130."""

import sys

import numpy as np

from fedplug import Dataset, Experiment, Node
from fedplug.numpy_plan import LogisticRegressionPlan


class SlowPlan(LogisticRegressionPlan):
    """Logistic regression that takes its time (as a real model would)."""

    def train(self, dataset, args):
        import time  # shipped to the nodes as source: imports go inside

        time.sleep(0.4)
        return super().train(dataset, args)


def main(mode: str, checkpoint_dir: str) -> int:
    rng = np.random.default_rng(0)
    nodes = []
    for i in range(3):
        x = rng.normal(size=(40, 4))
        nodes.append(Node(f"hospital-{i}", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=["t"])))
    exp = Experiment(
        nodes=nodes,
        tags=["t"],
        training_plan=SlowPlan,
        model_args={"n_features": 4},
        training_args={"batch_size": 8},
        round_limit=1000,
        seed=0,
        on_node_failure="skip",
        checkpoint_dir=checkpoint_dir,
        workers=3 if mode != "inline" else None,
        processes=mode == "processes",
        progress=False,
    )
    try:
        for _ in range(1000):
            exp.run_once()
            print(f"round {exp.round_index}", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted at round {exp.round_index}", flush=True)
        return 130
    finally:
        exp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
