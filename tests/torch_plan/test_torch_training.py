"""TorchTrainingPlan driven directly: steps, data loaders, parameters, learning rates, devices."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fedplug
from fedplug.plan import TrainingArgs
from fedplug.plugins import active
from fedplug_torch import TorchAdapter, TorchTrainingPlan


class LinearPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.add_dependency(["import torch", "from torch import nn"])


class SGDRegressionPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Linear(3, 1)
        self.loss = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        self.add_dependency(["import torch", "from torch import nn"])

    def training_step(self, data, target):
        return self.loss(self.model(data).squeeze(1), target)


class FedplugSGDRegressionPlan(SGDRegressionPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.optimizer = fedplug.Optimizer(lr=0.01)


class FedplugAdamPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = fedplug.Optimizer(lr=0.01, modules=["adam"])
        self.add_dependency(["import torch", "from torch import nn", "import fedplug"])


class BatchNormPlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        self.add_dependency(["import torch", "from torch import nn"])


class LoaderPlan(TorchTrainingPlan):
    """Trains on the first 50 samples of the node's data through a DataLoader."""

    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.add_dependency(
            [
                "import torch",
                "from torch import nn",
                "from torch.utils.data import DataLoader, TensorDataset",
            ]
        )

    def training_data(self, dataset, args):
        x = torch.as_tensor(dataset.x[:50])
        y = torch.as_tensor(dataset.y[:50])
        return DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)


def _args(**values) -> TrainingArgs:
    return TrainingArgs.from_dict(values)


def _dataset(task, n_samples=100, seed=0) -> fedplug.Dataset:
    return fedplug.Dataset(*task(n_samples, seed))


def _regression_data(n_samples=8):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_samples, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    return fedplug.Dataset(x, y)


def _manual_sgd_step(plan, dataset, lr):
    """The parameters after one full-batch gradient step of ``lr``, computed outside the plan."""
    model = plan.model
    x, y = torch.as_tensor(dataset.x), torch.as_tensor(dataset.y)
    model.zero_grad()
    plan.loss(model(x).squeeze(1), y).backward()
    expected = {name: (p - lr * p.grad).detach().clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return expected


# -- steps ---------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n_samples=st.integers(1, 90),
    batch_size=st.integers(1, 40),
    epochs=st.integers(1, 3),
)
def test_epochs_train_ceil_n_over_batch_steps_per_epoch(n_samples, batch_size, epochs):
    rng = np.random.default_rng(n_samples)
    data = fedplug.Dataset(
        rng.normal(size=(n_samples, 8)).astype(np.float32), rng.integers(0, 2, n_samples)
    )
    plan = LinearPlan()

    result = plan.train(data, _args(epochs=epochs, batch_size=batch_size, seed=0))

    assert result.n_steps == math.ceil(n_samples / batch_size) * epochs
    assert result.n_samples == n_samples
    assert math.isfinite(result.loss)


@pytest.mark.parametrize("num_updates", [1, 3, 4, 11])
def test_num_updates_trains_exactly_that_many_steps(task, num_updates):
    plan = LinearPlan()  # 100 samples in batches of 32: 4 batches per pass

    result = plan.train(_dataset(task), _args(num_updates=num_updates, batch_size=32, seed=1))

    assert result.n_steps == num_updates
    assert result.n_samples == 100


def test_neither_epochs_nor_num_updates_means_one_epoch(task):
    result = LinearPlan().train(_dataset(task), _args(batch_size=30))

    assert result.n_steps == 4


def test_optimizer_steps_match_reported_steps(task):
    plan = LinearPlan()
    plan.optimizer = torch.optim.Adam(plan.parameters(), lr=0.01)

    plan.train(_dataset(task), _args(num_updates=5, batch_size=16))
    plan.train(_dataset(task), _args(epochs=2, batch_size=50))

    steps = {float(state["step"]) for state in plan.optimizer.state.values()}
    assert steps == {5.0 + 2 * 2}


# -- training_data -------------------------------------------------------------------------------


def test_training_data_dataloader_counts_its_dataset_and_batches(task):
    plan = LoaderPlan()

    by_epochs = plan.train(_dataset(task, 100), _args(epochs=3, batch_size=16))
    by_updates = plan.train(_dataset(task, 100), _args(num_updates=9, batch_size=16))

    assert by_epochs.n_samples == 50
    assert by_epochs.n_steps == 3 * math.ceil(50 / 16)
    assert by_updates.n_samples == 50
    assert by_updates.n_steps == 9


def test_training_data_dataloader_works_in_an_experiment(make_nodes, tags):
    exp = fedplug.Experiment(
        nodes=make_nodes(3, n_samples=100),
        tags=tags,
        training_plan=LoaderPlan,
        training_args={"epochs": 2, "batch_size": 16, "test_ratio": 0.2},
        round_limit=2,
        seed=0,
        progress=False,
    )

    history = exp.run()

    assert history[-1]["samples"] == {f"node-{i}": 50 for i in range(3)}
    assert "accuracy" in history[-1]["validation_global"]


# -- parameters ----------------------------------------------------------------------------------


def test_get_set_parameters_round_trip_includes_batchnorm_buffers(task):
    trained = BatchNormPlan()
    trained.train(_dataset(task), _args(epochs=2, batch_size=20, seed=0))
    params = trained.get_parameters()

    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(params)
    assert int(params["1.num_batches_tracked"]) == 10
    assert not np.allclose(params["1.running_mean"], 0.0)

    fresh = BatchNormPlan()
    assert not np.array_equal(fresh.get_parameters()["1.running_mean"], params["1.running_mean"])
    fresh.set_parameters(params)

    state = fresh.model.state_dict()
    for name, value in params.items():
        assert state[name].dtype == trained.model.state_dict()[name].dtype
        np.testing.assert_array_equal(state[name].numpy(), value)
    fresh.model.eval()
    trained.model.eval()
    x = torch.as_tensor(task(10, 5)[0])
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(x), trained.model(x))


def test_set_parameters_accepts_read_only_arrays_without_warning():
    params = BatchNormPlan().get_parameters()
    for value in params.values():
        value.setflags(write=False)
    plan = BatchNormPlan()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.set_parameters(params)

    for name, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, params[name])


def test_batchnorm_plan_trains_over_several_rounds_in_an_experiment(make_nodes, tags):
    exp = fedplug.Experiment(
        nodes=make_nodes(2, n_samples=100),
        tags=tags,
        training_plan=BatchNormPlan,
        training_args={"epochs": 1, "batch_size": 20, "test_ratio": 0.2},
        round_limit=2,
        seed=0,
        progress=False,
    )
    initial_mean = exp.global_params["1.running_mean"].copy()

    history = exp.run()

    assert len(history) == 2
    assert exp.global_params["1.num_batches_tracked"].shape == ()
    assert int(exp.global_params["1.num_batches_tracked"]) == 2 * 4
    assert not np.allclose(exp.global_params["1.running_mean"], initial_mean)


def test_parameters_are_numpy_copies(task):
    plan = LinearPlan()
    params = plan.get_parameters()
    snapshot = {name: value.copy() for name, value in params.items()}

    assert all(isinstance(value, np.ndarray) for value in params.values())
    for value in params.values():
        value += 100.0
    for name, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, snapshot[name])

    plan.train(_dataset(task), _args(num_updates=2, lr=0.5))
    again = plan.get_parameters()
    assert not np.array_equal(again["0.weight"], snapshot["0.weight"])
    np.testing.assert_array_equal(params["0.weight"], snapshot["0.weight"] + 100.0)


def test_parameter_buffers_are_the_models_own_storage_batchnorm_buffers_included(task):
    """A node writes received parameters into these: writing them is loading the model."""
    source = BatchNormPlan()
    source.train(_dataset(task), _args(epochs=1, batch_size=20, seed=0))
    plan = BatchNormPlan()
    buffers = plan.parameter_buffers()
    expected = source.get_parameters()
    assert {n: (b.shape, b.dtype) for n, b in buffers.items()} == {
        n: (v.shape, v.dtype) for n, v in expected.items()
    }
    assert all(b.flags.c_contiguous and b.flags.writeable for b in buffers.values())
    for name, value in expected.items():
        buffers[name][...] = value
    for name, value in plan.get_parameters().items():
        np.testing.assert_array_equal(value, expected[name])
    x = torch.as_tensor(task(10, 5)[0])
    plan.model.eval()
    source.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plan.model(x), source.model(x))


def test_parameter_buffers_are_none_when_a_tensor_is_not_contiguous():
    plan = LinearPlan()
    weight = plan.model[0].weight
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t()  # same values, transposed storage
    assert not weight.is_contiguous()
    assert plan.parameter_buffers() is None


# -- learning rate and optimizer_args ------------------------------------------------------------


def test_lr_training_argument_overrides_a_torch_optimizer():
    plan = SGDRegressionPlan()
    data = _regression_data()
    expected = _manual_sgd_step(plan, data, lr=0.5)

    plan.train(data, _args(num_updates=1, batch_size=len(data), lr=0.5))

    assert plan.optimizer.param_groups[0]["lr"] == 0.5
    for name, param in plan.model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])


def test_lr_training_argument_overrides_a_fedplug_optimizer():
    plan = FedplugSGDRegressionPlan()
    data = _regression_data()
    expected = _manual_sgd_step(plan, data, lr=0.5)

    plan.train(data, _args(num_updates=1, batch_size=len(data), lr=0.5))

    assert plan.optimizer.lr == 0.5
    for name, param in plan.model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])


def test_without_lr_argument_the_plan_learning_rate_is_kept():
    plan = SGDRegressionPlan()
    data = _regression_data()
    expected = _manual_sgd_step(plan, data, lr=0.01)

    plan.train(data, _args(num_updates=1, batch_size=len(data)))

    assert plan.optimizer.param_groups[0]["lr"] == 0.01
    for name, param in plan.model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])


def test_optimizer_args_apply_to_torch_param_groups():
    plan = SGDRegressionPlan()

    plan.train(
        _regression_data(),
        _args(num_updates=1, optimizer_args={"momentum": 0.9, "weight_decay": 0.01}),
    )

    for group in plan.optimizer.param_groups:
        assert group["momentum"] == 0.9
        assert group["weight_decay"] == 0.01
    assert all("momentum_buffer" in state for state in plan.optimizer.state.values())


def test_unknown_optimizer_args_key_is_a_config_error_naming_it():
    plan = SGDRegressionPlan()

    with pytest.raises(fedplug.ConfigError, match="'betas_typo'") as info:
        plan.train(_regression_data(), _args(num_updates=1, optimizer_args={"betas_typo": 1}))

    assert "SGD" in str(info.value)


def test_optimizer_args_with_a_fedplug_optimizer_is_a_config_error():
    plan = FedplugSGDRegressionPlan()

    with pytest.raises(fedplug.ConfigError, match="optimizer_args"):
        plan.train(_regression_data(), _args(num_updates=1, optimizer_args={"momentum": 0.9}))


def test_default_optimizer_is_sgd_at_the_lr_argument():
    plan = SGDRegressionPlan()
    plan.optimizer = None
    data = _regression_data()
    expected = _manual_sgd_step(plan, data, lr=0.2)

    plan.train(data, _args(num_updates=1, batch_size=len(data), lr=0.2))

    assert isinstance(plan.optimizer, torch.optim.SGD)
    for name, param in plan.model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])


# -- fedplug.Optimizer through the fedplug_model_adapter hook ------------------------------------


class _AdapterSpy:
    """Sees every fedplug_model_adapter call before the real plugins answer."""

    def __init__(self):
        self.models = []

    @fedplug.hookimpl(tryfirst=True)
    def fedplug_model_adapter(self, model):
        self.models.append(model)


def test_fedplug_optimizer_steps_a_torch_model_through_the_adapter_hook(task):
    pm = fedplug.get_plugin_manager()
    spy = _AdapterSpy()
    pm.register(spy, name="adapter-spy")
    with active(pm):  # as a node does while it builds and trains a plan
        plan = FedplugAdamPlan()
    assert plan.optimizer.plugin_manager is pm
    data = _dataset(task, 200)
    before = plan.evaluate(data, _args())

    assert isinstance(pm.model_adapter(plan.model), TorchAdapter)
    spy.models.clear()
    for _ in range(3):
        plan.train(data, _args(epochs=1, batch_size=20, seed=0))
    after = plan.evaluate(data, _args())

    assert spy.models and all(model is plan.model for model in spy.models)
    assert isinstance(plan.optimizer.adapter(plan.model, pm), TorchAdapter)
    assert after["loss"] < 0.7 * before["loss"]
    assert after["accuracy"] > before["accuracy"]


def test_fedplug_adam_state_grows_across_train_calls(task):
    plan = FedplugAdamPlan()
    data = _dataset(task, 64)
    steps = []
    for lr in (None, 0.02, 0.02):
        plan.train(data, _args(num_updates=3, lr=lr))
        (name, state), *_ = plan.optimizer.get_state()["modules"]
        assert name == "adam"
        steps.append(state["steps"])

    assert steps == [3, 6, 9]
    assert plan.optimizer.lr == 0.02


def test_torch_adapter_reads_gradients_and_applies_updates_in_place():
    model = nn.Linear(3, 2)
    adapter = TorchAdapter(model)
    model(torch.ones(4, 3)).sum().backward()
    grads = adapter.gradients()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    torch.testing.assert_close(grads.coefs["weight"], torch.full((2, 3), 4.0))
    adapter.apply_updates(grads * -0.5)

    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name] - 0.5 * param.grad)
    assert set(adapter.get_weights().coefs) == {"weight", "bias"}


# -- device --------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_device_moves_the_model_to_the_gpu(task):
    plan = LinearPlan()
    data = _dataset(task)
    result = plan.train(data, _args(num_updates=2, device="cuda"))
    assert plan.device.type == "cuda"
    assert next(plan.model.parameters()).device.type == "cuda"
    assert result.n_steps == 2
    assert all(value.dtype == np.float32 for value in plan.get_parameters().values())
    assert "accuracy" in plan.evaluate(data, _args(device="cuda"))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_a_gpu_asked_for_on_a_node_without_one_is_an_error_not_a_fallback(
    task, monkeypatch, device
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = LinearPlan()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning-and-carry-on either
        with pytest.raises(fedplug.ConfigError, match=rf"device='{device}' asks for a GPU") as info:
            plan.train(_dataset(task), _args(num_updates=1, device=device))
    assert "device='auto'" in str(info.value)  # the fallback, when one is wanted
    assert plan.model is None or next(plan.model.parameters()).device.type == "cpu"


def test_a_gpu_number_the_node_does_not_have_is_an_error(task, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        fedplug.ConfigError, match=r"device='cuda:2' asks for GPU 2, but this node has 2"
    ):
        LinearPlan().train(_dataset(task), _args(num_updates=1, device="cuda:2"))


def test_auto_device_falls_back_to_the_cpu_without_a_gpu(task, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = LinearPlan()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = plan.train(_dataset(task), _args(num_updates=2, device="auto"))
    assert result.n_steps == 2 and plan.device.type == "cpu"


def test_auto_device_uses_cuda_only_when_available(task):
    plan = LinearPlan()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.train(_dataset(task), _args(num_updates=1, device="auto"))

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(plan.model.parameters()).device.type == expected


# -- plan mistakes -------------------------------------------------------------------------------


def test_plan_without_model_is_a_plan_error():
    plan = TorchTrainingPlan()

    with pytest.raises(fedplug.PlanError, match=r"must be a torch\.nn\.Module"):
        plan.get_parameters()


def test_plan_with_a_non_optimizer_is_a_plan_error(task):
    plan = LinearPlan()
    plan.optimizer = "adam"

    with pytest.raises(fedplug.PlanError, match=r"torch\.optim optimizer or a fedplug\.Optimizer"):
        plan.train(_dataset(task), _args(num_updates=1))


def test_non_scalar_training_step_is_a_plan_error(task):
    plan = LinearPlan()
    plan.loss = nn.CrossEntropyLoss(reduction="none")

    with pytest.raises(fedplug.PlanError, match="scalar tensor"):
        plan.train(_dataset(task), _args(num_updates=1))
