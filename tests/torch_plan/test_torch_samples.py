"""TorchTrainingPlan on datasets that are collections of samples (``Dataset(x=samples, y=None)``):
batches through a DataLoader with the dataset's ``collate_fn``, the same steps and results as on
arrays, and worker processes."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset, default_collate

import fedplug
from fedplug.plan import TrainingArgs
from fedplug_torch.plan import TorchMLPPlan

MLP = {"layers": [8, 16, 2]}


class CountingCollate:
    """The default collation, counting the batches it forms."""

    def __init__(self):
        self.calls = 0
        self.sizes = []

    def __call__(self, batch):
        self.calls += 1
        self.sizes.append(len(batch))
        return default_collate(batch)


def as_samples(x: np.ndarray, y: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.from_numpy(x[i]), torch.tensor(y[i])) for i in range(len(x))]


def args(**values) -> TrainingArgs:
    return TrainingArgs.from_dict({"batch_size": 16, "lr": 0.1, **values})


def twin_plans(seed: int = 0) -> tuple[TorchMLPPlan, TorchMLPPlan]:
    torch.manual_seed(seed)
    first = TorchMLPPlan(MLP)
    second = TorchMLPPlan(MLP)
    second.set_parameters(first.get_parameters())
    return first, second


def test_num_updates_counts_steps_exactly_through_the_collate_fn(task):
    x, y = task(50, seed=0)
    collate = CountingCollate()
    data = fedplug.Dataset(as_samples(x, y), None, ["t"], "coll", collate_fn=collate)
    plan = TorchMLPPlan(MLP)
    result = plan.train(data, args(num_updates=10, seed=0))
    # 50 samples in batches of 16 (16, 16, 16, 2), over and over until 10 steps
    assert (result.n_samples, result.n_steps) == (50, 10)
    assert collate.calls == 10
    assert collate.sizes == [16, 16, 16, 2] * 2 + [16, 16]


@pytest.mark.parametrize(("epochs", "batch_size"), [(1, 16), (2, 16), (3, 7), (1, 64)])
def test_epochs_count_ceil_n_over_batch_steps_per_epoch(task, epochs, batch_size):
    x, y = task(50, seed=1)
    collate = CountingCollate()
    torch_dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    data = fedplug.Dataset(torch_dataset, None, ["t"], "torch-dataset", collate_fn=collate)
    result = TorchMLPPlan(MLP).train(data, args(epochs=epochs, batch_size=batch_size, seed=0))
    expected = epochs * math.ceil(50 / batch_size)
    assert result.n_steps == expected and collate.calls == expected
    assert sum(collate.sizes) == 50 * epochs  # every sample once per epoch
    assert result.n_samples == 50


def test_training_on_samples_decreases_the_loss_as_on_arrays(task):
    x, y = task(120, seed=2)
    on_arrays, on_samples = twin_plans()
    arrays = fedplug.Dataset(x, y, ["t"], "arrays")
    collate = CountingCollate()
    coll = fedplug.Dataset(as_samples(x, y), None, ["t"], "coll", collate_fn=collate)
    whole = args(batch_size=500)
    before = on_arrays.evaluate(arrays, whole)["loss"]
    assert on_samples.evaluate(coll, whole)["loss"] == pytest.approx(before, rel=1e-6)

    for round_index in range(5):
        training = args(epochs=1, seed=round_index)
        on_arrays.train(arrays, training)
        on_samples.train(coll, training)
    assert collate.calls == 5 * math.ceil(120 / 16) + 1
    decrease_arrays = before - on_arrays.evaluate(arrays, whole)["loss"]
    decrease_samples = before - on_samples.evaluate(coll, whole)["loss"]
    assert decrease_arrays > 0.25  # from about 0.70 to about 0.39
    assert decrease_samples == pytest.approx(decrease_arrays, rel=0.1)


def test_training_on_samples_is_reproducible_by_seed(task):
    x, y = task(70, seed=4)
    coll = fedplug.Dataset(as_samples(x, y), None, ["t"], "coll")
    first, second = twin_plans(seed=5)
    for plan in (first, second):
        for round_index in range(3):
            plan.train(coll, args(epochs=1, seed=100 + round_index))
    for name, value in first.get_parameters().items():
        np.testing.assert_array_equal(second.get_parameters()[name], value)
    third, _ = twin_plans(seed=5)
    for round_index in range(3):
        third.train(coll, args(epochs=1, seed=200 + round_index))  # another shuffling
    assert not np.array_equal(
        third.get_parameters()["0.weight"], first.get_parameters()["0.weight"]
    )


def test_evaluating_samples_equals_evaluating_the_same_arrays(task):
    x, y = task(77, seed=3)
    plan = TorchMLPPlan(MLP)
    collate = CountingCollate()
    coll = fedplug.Dataset(as_samples(x, y), None, ["t"], "coll", collate_fn=collate)
    arrays = fedplug.Dataset(x, y, ["t"], "arrays")
    for batch_size in (1, 10, 77, 500):
        on_samples = plan.evaluate(coll, args(batch_size=batch_size))
        on_arrays = plan.evaluate(arrays, args(batch_size=batch_size))
        assert set(on_samples) == set(on_arrays) == {"loss", "accuracy"}
        assert on_samples["loss"] == pytest.approx(on_arrays["loss"], rel=1e-5)
        assert on_samples["accuracy"] == pytest.approx(on_arrays["accuracy"], abs=1e-12)
    # evaluation batches go through the collate_fn too, in order
    assert collate.calls == 77 + math.ceil(77 / 10) + 1 + 1
    xs, ys = zip(*plan.evaluation_batches(coll, args(batch_size=30)), strict=True)
    np.testing.assert_array_equal(torch.cat(xs).numpy(), x)
    np.testing.assert_array_equal(torch.cat(ys).numpy(), y)


def test_an_experiment_on_sample_collections_runs_in_worker_processes(task):
    def nodes(prefix: str) -> list[fedplug.Node]:
        made = []
        for i in range(2):
            x, y = task(60, seed=10 + i)
            data = fedplug.Dataset(
                as_samples(x, y), None, ["samples"], f"coll-{i}", collate_fn=default_collate
            )
            made.append(fedplug.Node(f"{prefix}-{i}", data))
        return made

    def experiment(prefix: str, **kwargs) -> fedplug.Experiment:
        return fedplug.Experiment(
            nodes=nodes(prefix),
            tags=["samples"],
            training_plan="torch-mlp",
            model_args=MLP,
            training_args={"batch_size": 16, "epochs": 1, "lr": 0.1, "test_ratio": 0.25},
            round_limit=2,
            seed=0,
            **kwargs,
        )

    with experiment("p", processes=True, workers=2) as spawned:
        history = spawned.run()
        assert spawned.transport.processes and len(spawned.transport._procs) == 2
    assert len(history) == 2
    assert history[-1]["samples"] == {"p-0": 45, "p-1": 45}
    assert {node: m["n_samples"] for node, m in history[-1]["validation"].items()} == {
        "p-0": 15,
        "p-1": 15,
    }
    assert set(history[-1]["validation_mean"]) == {"loss", "accuracy"}

    in_process = experiment("t")
    in_process.run()
    # the same seed gives the same model, in worker processes or in this one
    for name, value in in_process.global_params.items():
        np.testing.assert_array_equal(spawned.global_params[name], value)
    assert history[-1]["train_loss"] == pytest.approx(
        {"p-" + k[2:]: v for k, v in in_process.history[-1]["train_loss"].items()}
    )
