"""Datasets as collections of samples, datasets with their own test split, and how experiments
validate on them (``validate=None``/``True``, the unweighted ``validation_mean``)."""

from __future__ import annotations

import numpy as np
import pytest

from fedplug import ConfigError, Dataset, Experiment, Node, NodeError
from fedplug.datasets import Subset


def samples(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """``n`` ``(features, label)`` pairs, as a torch-style dataset would hold them."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=3), int(i % 2)) for i in range(n)]


def collate(batch):
    return batch


# --- Sample collections -------------------------------------------------------------------------


def test_a_list_of_samples_is_a_dataset():
    items = samples(10)
    data = Dataset(items, None, ["t"], "list")
    assert data.is_samples and len(data) == 10
    assert data.x[3] is items[3]
    assert data.test is None and data.collate_fn is None and data.meta == {}
    arrays = Dataset(np.zeros((4, 2)), np.zeros(4), ["t"], "arrays")
    assert not arrays.is_samples


@pytest.mark.parametrize("x", [5, None, iter([(1, 2)]), {1, 2}])
def test_without_y_x_must_support_len_and_indexing(x):
    with pytest.raises(
        ConfigError,
        match=r"dataset 'bad': without y, x must be a collection of \(input, target\) samples "
        r"supporting len\(\) and indexing, got " + type(x).__name__,
    ):
        Dataset(x, None, [], "bad")


def test_an_array_without_targets_is_not_taken_for_a_sample_collection():
    with pytest.raises(ConfigError, match="dataset 'arr': x is an array but y is missing"):
        Dataset(np.zeros((6, 3)), None, [], "arr")


def test_test_must_be_a_dataset():
    with pytest.raises(ConfigError, match="dataset 'd': test must be a Dataset, got"):
        Dataset(samples(4), None, [], "d", test=samples(2))


def test_subset_views_samples_without_copying():
    items = samples(8)
    subset = Subset(items, np.array([5, 0, 7]))
    assert len(subset) == 3
    assert [subset[i] for i in range(3)] == [items[5], items[0], items[7]]
    assert subset[1] is items[0]
    assert subset.index.dtype == np.int64
    nested = Subset(subset, [2, 0])
    assert nested[0] is items[7] and nested[1] is items[5]
    with pytest.raises(IndexError):
        subset[3]


def test_splitting_a_sample_collection_is_reproducible_disjoint_and_complete():
    items = samples(50)
    data = Dataset(items, None, ["t"], "coll", collate_fn=collate, meta={"site": 1})
    train, test = data.split(0.2, seed=4)
    assert (len(train), len(test)) == (40, 10)
    for part, suffix in ((train, ":train"), (test, ":test")):
        assert part.is_samples and isinstance(part.x, Subset) and part.x.samples is items
        assert part.name == "coll" + suffix
        assert part.tags == ["t"] and part.collate_fn is collate and part.meta == {"site": 1}
        assert part.test is None
    train_ids, test_ids = set(train.x.index.tolist()), set(test.x.index.tolist())
    assert not train_ids & test_ids and train_ids | test_ids == set(range(50))
    assert [train.x[i] for i in range(40)] == [items[i] for i in train.x.index]

    again_train, again_test = data.split(0.2, seed=4)
    assert again_test.x.index.tolist() == test.x.index.tolist()
    assert again_train.x.index.tolist() == train.x.index.tolist()
    _, other = data.split(0.2, seed=5)
    assert other.x.index.tolist() != test.x.index.tolist()


def test_split_edge_cases_of_a_sample_collection():
    data = Dataset(samples(10), None, [], "small")
    train, test = data.split(0.0, seed=0)
    assert train is data and test is None
    train, test = data.split(0.04, seed=0)  # rounds to no test sample
    assert train is data and test is None
    with pytest.raises(
        ConfigError, match=r"dataset 'small' has 10 samples: test_ratio=0\.99 leaves"
    ):
        data.split(0.99, seed=0)


def test_arrays_names_the_plan_and_the_dataset():
    x, y = np.zeros((3, 2)), np.zeros(3)
    got = Dataset(x, y, [], "arr").arrays("SomePlan")
    assert got[0] is x and got[1] is y
    with pytest.raises(ConfigError) as info:
        Dataset(samples(3), None, [], "coll").arrays("SomePlan")
    assert str(info.value) == (
        "SomePlan trains on arrays (x, y), but dataset 'coll' is a collection of samples (list); "
        "use a plan that loads samples in batches, such as a TorchTrainingPlan"
    )


# --- A predefined test split --------------------------------------------------------------------


def test_a_predefined_test_split_is_returned_and_never_drawn_again():
    test = Dataset(samples(6, seed=1), None, ["t"], "site:test")
    data = Dataset(samples(20), None, ["t"], "site", test=test)
    for seed in (0, 1, None):
        train, held_out = data.split(0, seed)
        assert train is data and held_out is test
    with pytest.raises(
        ConfigError,
        match=r"dataset 'site' comes with its own test split \(6 samples\), so test_ratio=0.25 "
        r"does not apply; set test_ratio=0",
    ):
        data.split(0.25, 0)
    arrays = Dataset(
        np.ones((5, 2)), np.ones(5), [], "a", test=Dataset(np.ones((2, 2)), np.ones(2))
    )
    assert arrays.split(0, 0)[1] is arrays.test


# --- Experiments: array plans refuse sample collections; validation -----------------------------


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x @ np.array([1.5, -2.0, 0.5, 1.0]) > 0).astype(np.int64)


def logreg(nodes, tags, **kwargs) -> Experiment:
    settings = {
        "training_plan": "numpy-logreg",
        "model_args": {"n_features": 4},
        "training_args": {"batch_size": 16, "epochs": 1},
        "round_limit": 2,
        "seed": 0,
    }
    settings.update(kwargs)
    return Experiment(nodes=nodes, tags=tags, **settings)


def test_an_array_plan_refuses_a_sample_collection_naming_the_dataset():
    tag = "samples-refused"
    nodes = [
        Node("arrays-node", Dataset(*separable(40, 0), [tag], "arrays-data")),
        Node(
            "samples-node", Dataset(list(zip(*separable(40, 1), strict=True)), None, [tag], "coll")
        ),
    ]
    exp = logreg(nodes, [tag])
    with pytest.raises(NodeError) as info:
        exp.run_once()
    assert info.value.node == "samples-node"
    assert (
        "ConfigError: LogisticRegressionPlan trains on arrays (x, y), but dataset 'coll' is a "
        "collection of samples (list)" in str(info.value)
    )
    skipping = logreg(nodes, [tag], on_node_failure="skip")
    row = skipping.run_once()
    assert row["nodes"] == ["arrays-node"]
    assert "dataset 'coll' is a collection of samples" in row["failures"]["samples-node"]


def test_validate_none_validates_only_with_a_test_ratio():
    tag = "validate-none"
    nodes = [Node(f"n{i}", Dataset(*separable(60, i), [tag], f"d{i}")) for i in range(2)]
    quiet = logreg(nodes, [tag]).run()
    assert all("validation" not in row and "validation_mean" not in row for row in quiet)
    split = logreg(nodes, [tag], training_args={"batch_size": 16, "test_ratio": 0.25}).run()
    assert all(set(row["validation"]) == {"n0", "n1"} for row in split)
    assert all(row["validation"]["n0"]["n_samples"] == 15 for row in split)
    off = logreg(nodes, [tag], training_args={"batch_size": 16, "test_ratio": 0.25}, validate=False)
    assert all("validation" not in row for row in off.run())


def test_validate_true_uses_each_node_own_test_split_and_the_unweighted_mean():
    tag = "validate-true"
    sizes = {"big": 90, "small": 10}
    nodes = [
        Node(
            name,
            Dataset(
                *separable(100, i),
                [tag],
                name,
                test=Dataset(*separable(size, 100 + i), [tag], f"{name}:test"),
            ),
        )
        for i, (name, size) in enumerate(sizes.items())
    ]
    nodes.append(Node("no-test", Dataset(*separable(50, 9), [tag], "no-test")))
    # without validate, a test_ratio of 0 means no validation, even with predefined test splits
    assert all("validation" not in row for row in logreg(nodes, [tag]).run())

    history = logreg(nodes, [tag], validate=True, round_limit=3).run()
    assert len(history) == 3
    for row in history:
        per_node = row["validation"]
        assert per_node["big"]["n_samples"] == 90 and per_node["small"]["n_samples"] == 10
        assert per_node["no-test"] == {"n_samples": 0}  # nothing to validate on
        for key in ("accuracy", "loss"):
            unweighted = (per_node["big"][key] + per_node["small"][key]) / 2
            weighted = (90 * per_node["big"][key] + 10 * per_node["small"][key]) / 100
            assert row["validation_mean"][key] == pytest.approx(unweighted, rel=1e-12)
            assert row["validation_global"][key] == pytest.approx(weighted, rel=1e-12)
        assert set(row["validation_mean"]) == {"accuracy", "loss"}
        assert row["validation_global"]["n_samples"] == 100
    assert history[-1]["validation_mean"]["accuracy"] > 0.8
    assert (
        history[-1]["validation_mean"]["accuracy"] != history[-1]["validation_global"]["accuracy"]
    )


def test_a_test_ratio_with_predefined_test_splits_fails_on_the_node():
    tag = "validate-ratio"
    data = Dataset(*separable(40, 0), [tag], "own", test=Dataset(*separable(8, 1), [tag]))
    exp = logreg(
        [Node("own-split", data)], [tag], training_args={"batch_size": 8, "test_ratio": 0.2}
    )
    with pytest.raises(NodeError, match=r"comes with its own test split .* set test_ratio=0"):
        exp.run_once()


def test_validate_every_k_rounds_and_bad_values():
    tag = "validate-k"
    nodes = [Node("k", Dataset(*separable(40, 0), [tag], "k", test=Dataset(*separable(8, 1))))]
    history = logreg(nodes, [tag], validate=2, round_limit=5).run()
    assert ["validation" in row for row in history] == [False, True, False, True, True]
    for bad in (-1, "yes", 1.5):
        with pytest.raises(ConfigError, match="validate must be a bool or a non-negative int"):
            logreg(nodes, [tag], validate=bad)
