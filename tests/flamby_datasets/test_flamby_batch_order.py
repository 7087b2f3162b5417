"""FLamby's own runs, seed for seed: ``flamby_experiment(batch_order="flamby",
hyperparameters="flamby", variants="flamby")`` against FLamby's strategies (the double's
``flamby.strategies``: FLamby's loop, its ``DataLoaderWithMemory`` and its global-generator
shuffles, as FLamby's benchmark seeds them), and the pieces that make it so: the replayed batch
order, the batched Cox loss, FLamby's Scaffold as a regularizer, the split read once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedplug_flamby.batches import FlambyOrder, loader_batches

DATASET = "fed_tcga_brca"


# -- the batch order ------------------------------------------------------------------------------
class Indices(torch.utils.data.Dataset):
    """Items are their own index: a DataLoader's batches show the order it read."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def flamby_loop_batches(sizes, batch_size, num_updates, rounds, seed):
    """What FLamby's strategies read: each client's DataLoaderWithMemory (made before the
    benchmark's set_seed), then the clients one after the other, ``num_updates`` batches each."""
    from flamby.benchmarks.benchmark_utils import set_seed
    from flamby.strategies.utils import DataLoaderWithMemory

    loaders = [
        DataLoaderWithMemory(
            torch.utils.data.DataLoader(Indices(n), batch_size=batch_size, shuffle=True)
        )
        for n in sizes
    ]
    set_seed(seed)
    seen = {(r, c): [] for r in range(rounds) for c in range(len(sizes))}
    for r in range(rounds):
        for c, loader in enumerate(loaders):
            for _ in range(num_updates):
                # DataLoaderWithMemory unpacks (X, y): read the iterator as it does
                try:
                    batch = next(loader._iterator)
                except StopIteration:
                    loader._reset_iterator()
                    batch = next(loader._iterator)
                seen[(r, c)].append(batch.tolist())
    return seen


@pytest.mark.parametrize(
    ("sizes", "batch_size", "num_updates"),
    [
        ((248, 156, 164, 129, 129, 40), 8, 100),  # Fed-TCGA-BRCA's centers
        ((7, 30, 1), 4, 3),  # passes that end inside a round, and a one-batch client
        ((17, 9), 8, 5),  # passes longer than a round: one spans several rounds
    ],
)
def test_each_center_replays_its_own_share_of_flambys_global_shuffles(
    sizes, batch_size, num_updates
):
    rounds = 4
    seen = flamby_loop_batches(sizes, batch_size, num_updates, rounds, seed=43)
    for position in range(len(sizes)):
        order = FlambyOrder(43, tuple(sizes), position, batch_size, num_updates)
        for r in range(rounds):
            mine = [batch.tolist() for batch in order.batches(r)]
            assert mine == seen[(r, position)], (position, r)


def test_fedplugs_own_order_is_what_a_seeded_dataloader_draws():
    for n, steps in ((248, 100), (40, 31), (41, 12), (8, 5)):
        torch_generator = torch.Generator().manual_seed(7)
        mine_generator = torch.Generator().manual_seed(7)
        loader = torch.utils.data.DataLoader(
            Indices(n), batch_size=8, shuffle=True, generator=torch_generator
        )
        expected = []
        while len(expected) < steps:
            for batch in loader:
                expected.append(batch.tolist())
                if len(expected) == steps:
                    break
        got = [b.tolist() for b in loader_batches(n, 8, steps, mine_generator)]
        assert got == expected
        # and the generator is left where the DataLoader leaves it
        assert torch.equal(torch_generator.get_state(), mine_generator.get_state())


# -- FLamby's strategies, seed for seed -----------------------------------------------------------
def flamby_strategy(name, seed, num_updates, nrounds, **options):
    """FLamby's benchmark for one strategy: the model made right after set_seed(seed), the
    strategy built over shuffled DataLoaders, set_seed(seed) again, run()."""
    import flamby.strategies as strategies
    from flamby.benchmarks.benchmark_utils import set_seed
    from flamby.datasets import fed_tcga_brca as flamby

    set_seed(seed)
    init = flamby.Baseline()
    loaders = [
        torch.utils.data.DataLoader(
            flamby.FedClass(center=c, train=True), batch_size=flamby.BATCH_SIZE, shuffle=True
        )
        for c in range(flamby.NUM_CLIENTS)
    ]
    cls = {"fedavg": strategies.FedAvg, "fedprox": strategies.FedProx}.get(name)
    cls = cls or strategies.Scaffold
    strategy = cls(
        loaders,
        copy.deepcopy(init),
        flamby.BaselineLoss(),
        torch.optim.SGD,
        num_updates=num_updates,
        nrounds=nrounds,
        **options,
    )
    set_seed(seed)
    model = strategy.run()[0]
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# FLamby's settings for Fed-TCGA-BRCA (config_tcga_brca.json), as its strategies take them
FLAMBY_SETTINGS = {
    "fedavg": {"learning_rate": 0.1},
    "fedprox": {"learning_rate": 0.1, "mu": 0.1},
    "scaffold": {"learning_rate": 0.01, "server_learning_rate": 1.0},
}


@pytest.mark.parametrize(
    ("algorithm", "loss"),
    [("fedavg", "batched"), ("fedprox", "batched"), ("scaffold", "batched"), ("fedavg", "flamby")],
)
def test_fedplug_gives_flambys_own_result_for_every_seed(tcga_license, algorithm, loss):
    from fedplug_flamby import flamby_experiment

    num_updates, rounds = 60, 3  # passes of centers 0-2 span rounds; center 5 makes 12 passes
    for seed in (0, 43):
        theirs = flamby_strategy(algorithm, seed, num_updates, rounds, **FLAMBY_SETTINGS[algorithm])
        with flamby_experiment(
            DATASET,
            num_updates,
            round_limit=rounds,
            algorithm=algorithm,
            hyperparameters="flamby",
            variants="flamby",
            batch_order="flamby",
            seed=seed,
            validate=False,
            progress=False,
            model_args={"loss": loss} if loss == "flamby" else None,
        ) as exp:
            exp.run()
            ours = {k: np.asarray(v) for k, v in exp.global_params.items()}
        assert set(ours) == set(theirs)
        for key in theirs:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-6, err_msg=key)
