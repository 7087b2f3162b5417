"""TrainingArgs validation, step counts, and the batches a plan trains on."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedplug import ConfigError, TrainingArgs
from fedplug.plan import batch_indices


def test_defaults():
    args = TrainingArgs.from_dict(None)
    assert args == TrainingArgs.from_dict({})
    assert (args.epochs, args.num_updates, args.batch_size) == (None, None, 32)
    assert (args.test_ratio, args.device, args.optimizer_args) == (0.0, "cpu", {})
    assert TrainingArgs.from_dict(args) is args


def test_a_valid_dict_round_trips():
    values = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 1,
        "optimizer_args": {"momentum": 0.9},
        "test_ratio": 0.25,
        "seed": 0,
        "device": "cuda:1",
    }
    args = TrainingArgs.from_dict(values)
    assert args.lr == 1.0 and isinstance(args.lr, float)
    assert TrainingArgs.from_dict(args.to_dict()) == args
    assert args.to_dict() == {**values, "lr": 1.0, "num_updates": None}


@pytest.mark.parametrize("key", ["epochs", "num_updates", "batch_size"])
@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, 2.5, "3", [1]])
def test_counts_must_be_positive_ints(key, value):
    message = f"training argument '{key}' must be a positive int, got {value!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainingArgs.from_dict({key: value})


def test_epochs_and_num_updates_are_exclusive():
    with pytest.raises(ConfigError, match="'epochs' and 'num_updates' are both set") as info:
        TrainingArgs.from_dict({"epochs": 2, "num_updates": 10})
    assert "give only one" in str(info.value)
    assert TrainingArgs.from_dict({"epochs": None, "num_updates": 10}).num_updates == 10


@pytest.mark.parametrize("key", ["epoch", "learning_rate", "batchsize", "loss"])
def test_unknown_keys_are_named(key):
    with pytest.raises(ConfigError, match=f"unknown training argument '{key}'") as info:
        TrainingArgs.from_dict({"epochs": 1, key: 1})
    assert "known arguments:" in str(info.value) and "num_updates" in str(info.value)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), True, "0.1", [0.1]])
def test_bad_learning_rates_are_refused(lr):
    with pytest.raises(ConfigError, match="'lr' must be a positive finite number"):
        TrainingArgs.from_dict({"lr": lr})


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), True, "0.2", None])
def test_test_ratio_must_be_in_zero_one(ratio):
    with pytest.raises(ConfigError, match=r"'test_ratio' must be in \[0, 1\)"):
        TrainingArgs.from_dict({"test_ratio": ratio})


@pytest.mark.parametrize("ratio", [0, 0.0, 0.5, 0.99])
def test_test_ratio_accepts_zero_to_below_one(ratio):
    assert TrainingArgs.from_dict({"test_ratio": ratio}).test_ratio == ratio


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ConfigError, match="'seed' must be a non-negative int"):
        TrainingArgs.from_dict({"seed": seed})


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto", "cuda:0", "cuda:12"])
def test_valid_devices(device):
    assert TrainingArgs.from_dict({"device": device}).device == device


@pytest.mark.parametrize("device", ["gpu", "", "CPU", "mps", 0, None, "cuda:", "cuda:x", "cuda:-1"])
def test_bad_devices_are_refused(device):
    with pytest.raises(ConfigError, match="'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        TrainingArgs.from_dict({"device": device})


@pytest.mark.parametrize("optimizer_args", [[("momentum", 0.9)], "momentum=0.9", {1: 0.9}, None])
def test_bad_optimizer_args_are_refused(optimizer_args):
    with pytest.raises(ConfigError, match="'optimizer_args' must be a dict with str keys"):
        TrainingArgs.from_dict({"optimizer_args": optimizer_args})


# -- steps and batches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "n_samples", "steps"),
    [
        ({}, 100, 4),  # one epoch by default, the last batch partial
        ({"batch_size": 10}, 100, 10),
        ({"epochs": 3, "batch_size": 10}, 95, 30),
        ({"epochs": 2, "batch_size": 64}, 10, 2),
        ({"num_updates": 7, "batch_size": 10}, 1000, 7),
        ({"num_updates": 7, "batch_size": 10}, 3, 7),
    ],
)
def test_num_steps(values, n_samples, steps):
    assert TrainingArgs.from_dict(values).num_steps(n_samples) == steps


@settings(max_examples=80, deadline=None)
@given(
    n_samples=st.integers(1, 150),
    batch_size=st.integers(1, 40),
    epochs=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_each_epoch_covers_every_sample_once(n_samples, batch_size, epochs, seed):
    args = TrainingArgs.from_dict({"epochs": epochs, "batch_size": batch_size})
    batches = list(batch_indices(n_samples, args, np.random.default_rng(seed)))
    per_epoch = math.ceil(n_samples / batch_size)
    assert len(batches) == args.num_steps(n_samples) == epochs * per_epoch
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    for epoch in range(epochs):
        seen = np.concatenate(batches[epoch * per_epoch : (epoch + 1) * per_epoch])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n_samples))


@settings(max_examples=80, deadline=None)
@given(
    n_samples=st.integers(1, 100),
    batch_size=st.integers(1, 40),
    num_updates=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_num_updates_yields_exactly_that_many_batches(n_samples, batch_size, num_updates, seed):
    args = TrainingArgs.from_dict({"num_updates": num_updates, "batch_size": batch_size})
    batches = list(batch_indices(n_samples, args, np.random.default_rng(seed)))
    assert len(batches) == num_updates
    per_pass = math.ceil(n_samples / batch_size)
    for start in range(0, num_updates - per_pass + 1, per_pass):  # every complete pass
        seen = np.concatenate(batches[start : start + per_pass])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n_samples))


def test_batches_are_reshuffled_each_epoch_and_reproducible():
    args = TrainingArgs.from_dict({"epochs": 2, "batch_size": 50})
    first = list(batch_indices(50, args, np.random.default_rng(1)))
    again = list(batch_indices(50, args, np.random.default_rng(1)))
    assert len(first) == 2
    assert not np.array_equal(first[0], first[1])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
