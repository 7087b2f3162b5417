"""FLamby's own runs, seed for seed: ``flamby_experiment(batch_order="flamby",
hyperparameters="flamby", variants="flamby")`` against FLamby's strategies (the double's
``flamby.strategies``: FLamby's loop, its ``DataLoaderWithMemory`` and its global-generator
shuffles, as FLamby's benchmark seeds them), and the pieces that make it so: the replayed batch
order, the batched Cox loss, FLamby's Scaffold as a regularizer, the split read once."""

from __future__ import annotations

import copy
from unittest import mock

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
    strategy built over shuffled DataLoaders, set_seed(seed) again, run(). On the CPU, as on a
    machine without a GPU (FLamby's clients move to cuda:0 whenever torch sees one)."""
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
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
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


# -- the batched Cox loss -------------------------------------------------------------------------
def cox_batches(count=400, seed=0):
    rng = torch.Generator().manual_seed(seed)
    for _ in range(count):
        n = int(torch.randint(1, 12, (), generator=rng))
        scores = torch.randn(n, 1, generator=rng) * 3
        event = (torch.rand(n, generator=rng) < 0.3).float()
        time = torch.randint(0, 6, (n,), generator=rng).float()  # equal times: the stable order
        yield scores, torch.stack([event, time], dim=1)


def value_and_grad(loss_fn, scores, truth):
    scores = scores.clone().requires_grad_()
    value = loss_fn(scores, truth)
    value.backward()
    return value.detach(), scores.grad


def test_the_batched_cox_loss_is_flambys_up_to_rounding_with_its_exact_zeros(tcga_license):
    from flamby.datasets.fed_tcga_brca import BaselineLoss

    from fedplug_flamby.losses import CoxLoss

    zeros = 0
    for scores, truth in cox_batches():
        theirs, their_grad = value_and_grad(BaselineLoss(), scores, truth)
        ours, our_grad = value_and_grad(CoxLoss(), scores, truth)
        assert ours.dtype == theirs.dtype and our_grad.shape == their_grad.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-7)
        # records after the last event of the sorted batch: no gradient at all, in both
        order = sorted(range(len(truth)), key=lambda i: -float(truth[i, 1]))
        events = [k for k, i in enumerate(order) if truth[i, 0] == 1]
        after = [i for k, i in enumerate(order) if not events or k > events[-1]]
        assert all(their_grad[i] == 0 and our_grad[i] == 0 for i in after)
        zeros += len(after)
    assert zeros > 100  # the case was exercised


def test_the_batched_cox_loss_promotes_as_flambys_stack(tcga_license):
    from flamby.datasets.fed_tcga_brca import BaselineLoss

    from fedplug_flamby.losses import CoxLoss

    scores, truth = next(cox_batches(count=1, seed=3))
    truth = truth.double()  # float64 truth: FLamby's stack computes in float64
    theirs, their_grad = value_and_grad(BaselineLoss(), scores, truth)
    ours, our_grad = value_and_grad(CoxLoss(), scores, truth)
    assert theirs.dtype == ours.dtype == torch.float64
    assert our_grad.dtype == their_grad.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)


def test_the_plan_batches_the_loss_unless_its_optimizer_is_adaptive(tcga_license):
    """Batched where rounding stays rounding (SGD, with or without FedProx or Scaffold); FLamby's
    own operations under Adam, which makes full steps of rounding-sized gradients."""
    from flamby.datasets.fed_tcga_brca import BaselineLoss

    from fedplug_flamby import flamby_plan
    from fedplug_flamby.losses import CoxLoss

    plan_class = flamby_plan(DATASET)
    sgd = {"lr": 0.1, "regularizers": [["fedprox", {"alpha": 0.1}]]}
    assert isinstance(plan_class().loss, BaselineLoss)  # the dataset's own: Adam at 0.1
    assert isinstance(plan_class({"optimizer": sgd}).loss, CoxLoss)
    assert isinstance(
        plan_class({"optimizer": {"lr": 0.1, "modules": ["adam"]}}).loss, BaselineLoss
    )
    assert isinstance(plan_class({"loss": "batched"}).loss, CoxLoss)
    assert isinstance(plan_class({"optimizer": sgd, "loss": "flamby"}).loss, BaselineLoss)
    with pytest.raises(Exception, match="model_args loss must be one of auto, batched, flamby"):
        plan_class({"loss": "fast"})


# -- settings refused with the fix ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_order": "flamby"}, "give seed="),
        ({"batch_order": "flamby", "seed": 0, "epochs": 1}, "give num_updates, not epochs"),
        ({"batch_order": "random", "seed": 0}, "batch_order must be one of fedplug, flamby"),
        ({"hyperparameters": "flamby"}, "applies to an algorithm"),
        ({"hyperparameters": "flamby", "algorithm": "fedavgm"}, "not of 'fedavgm'"),
        ({"hyperparameters": "best", "algorithm": "fedavg"}, "must be 'fedplug' or 'flamby'"),
        ({"model_args": {"batch_order": "flamby"}}, "give batch_order as flamby_experiment's"),
    ],
)
def test_reproduction_settings_are_checked_before_anything_runs(tcga_license, options, message):
    from fedplug_flamby import flamby_experiment

    with pytest.raises(Exception, match=message):
        flamby_experiment(DATASET, 10, progress=False, **options)


def test_a_plan_given_another_centers_order_refuses_to_train(tcga_license):
    """A node whose split is not the size the researcher counted would draw other batches:
    it says so instead of training on a stream that is not FLamby's."""
    from fedplug import TrainingArgs
    from fedplug_flamby import flamby_nodes, flamby_plan

    node = flamby_nodes(DATASET, [5])[0]
    try:
        order = {"order": "flamby", "seed": 0, "centers": [[5, 41]]}
        plan = flamby_plan(DATASET)({"batch_order": order})
        args = TrainingArgs.from_dict({"batch_size": 8, "num_updates": 3})
        with pytest.raises(Exception, match="expects center 5 to train on 41 samples"):
            plan.train(node.datasets[0], args)
        plan = flamby_plan(DATASET)({"batch_order": {**order, "centers": [[0, 248]]}})
        with pytest.raises(Exception, match=r"lists centers \[0\], and this node's dataset"):
            plan.train(node.datasets[0], args)
    finally:
        node.stop()


def test_deployed_centers_are_counted_from_the_researchers_flamby(tcga_license):
    """With deployed nodes the researcher counts each center's train split itself."""
    from fedplug_flamby.experiment import _train_sizes

    assert _train_sizes(DATASET, None, [DATASET], False) == [
        [0, 248],
        [1, 156],
        [2, 164],
        [3, 129],
        [4, 129],
        [5, 40],
    ]


@pytest.mark.parametrize("order", ["fedplug", "flamby"])
def test_a_split_read_once_trains_as_flambys_item_by_item_reads(tcga_license, monkeypatch, order):
    """Tabular centers are read once and batched by index; the model trained is the one that
    FLamby's __getitem__ through a DataLoader gives, batch for batch."""
    import dataclasses

    from fedplug import TrainingArgs
    from fedplug_flamby import datasets, flamby_nodes, flamby_plan

    node = flamby_nodes(DATASET, [5])[0]
    data = node.datasets[0]
    model_args = {}
    if order == "flamby":
        model_args["batch_order"] = {"order": "flamby", "seed": 3, "centers": [[5, len(data)]]}
    args = TrainingArgs.from_dict({"batch_size": 8, "num_updates": 12, "seed": 11})

    def trained(fixed_items: bool):
        info = dataclasses.replace(datasets.DATASETS[DATASET], fixed_items=fixed_items)
        monkeypatch.setitem(datasets.DATASETS, DATASET, info)
        torch.manual_seed(0)
        plan = flamby_plan(DATASET)(model_args)
        for round_index in range(3):
            plan.round_index = round_index
            plan.train(data, args)
        return plan, plan.get_parameters()

    try:
        once, read_once = trained(True)
        every, read_each_time = trained(False)
    finally:
        node.stop()
    assert once._split is not None and every._split is None  # the paths taken
    for key in read_once:
        np.testing.assert_array_equal(read_once[key], read_each_time[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU that torch can use")
def test_on_a_gpu_the_split_lives_there_and_the_run_is_the_cpus(tcga_license):
    from fedplug_flamby import flamby_experiment, flamby_nodes

    nodes = flamby_nodes(DATASET)
    runs = {}
    try:
        for device in ("cpu", "cuda"):
            with flamby_experiment(
                DATASET,
                20,
                round_limit=2,
                algorithm="fedavg",
                batch_order="flamby",
                seed=1,
                nodes=nodes,
                validate=False,
                progress=False,
                training_args={"device": device},
            ) as exp:
                exp.run()
                runs[device] = {k: np.asarray(v) for k, v in exp.global_params.items()}
                sessions = exp.transport.nodes["center0"]._sessions
        split = list(sessions.values())[-1].plan._split  # the last experiment's: on the GPU
        assert split[2].device.type == "cuda"  # the center's tensors, read once, on the GPU
    finally:
        for node in nodes:
            node.stop()
    for key in runs["cpu"]:
        np.testing.assert_allclose(runs["cuda"][key], runs["cpu"][key], rtol=0, atol=1e-5)
