"""Datasets, the built-in csv and numpy loaders, and the demo's data helpers."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from fedplug import ConfigError, Dataset
from fedplug.datasets import load_csv, load_numpy
from fedplug_demo.demo import TAGS, demo_nodes, label_skew_split, load_breast_cancer


@pytest.fixture(scope="module")
def breast_cancer():
    return load_breast_cancer()


# -- the demo's data ----------------------------------------------------------------------------


def test_the_embedded_breast_cancer_data(breast_cancer):
    x, y = breast_cancer
    assert x.shape == (569, 30) and x.dtype == np.float32
    assert y.shape == (569,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1} and y.sum() == 357
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-4)


def assert_partition(parts, n):
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))  # every sample exactly once


def test_three_nodes_get_the_w1_split(breast_cancer):
    _, y = breast_cancer
    parts = label_skew_split(y, 3)
    assert [len(part) for part in parts] == [181, 189, 199]
    shares = [y[part].mean() for part in parts]
    assert shares == pytest.approx([0.27, 0.68, 0.90], abs=0.01)
    assert_partition(parts, len(y))


@pytest.mark.parametrize("n_nodes", [1, 2, 4, 5, 7, 10, 56])
def test_other_node_counts_use_every_sample_once(breast_cancer, n_nodes):
    _, y = breast_cancer
    parts = label_skew_split(y, n_nodes)
    assert len(parts) == n_nodes
    assert_partition(parts, len(y))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    shares = [y[part].mean() for part in parts]
    # the benign share grows from node to node, up to one sample of rounding per node
    jitter = 1.5 / min(sizes)
    assert all(later >= earlier - jitter for earlier, later in pairwise(shares))
    if n_nodes > 1:
        assert shares[-1] - shares[0] > 0.5


@pytest.mark.parametrize("n_nodes", [0, -1, 57])
def test_impossible_node_counts_are_refused(breast_cancer, n_nodes):
    with pytest.raises(ConfigError, match="nodes must be between 1 and 56"):
        label_skew_split(breast_cancer[1], n_nodes)


def test_the_split_depends_on_the_seed_only(breast_cancer):
    _, y = breast_cancer
    same = zip(label_skew_split(y, 3, seed=1), label_skew_split(y, 3, seed=1), strict=True)
    assert all(np.array_equal(a, b) for a, b in same)
    other = label_skew_split(y, 3, seed=2)
    assert [len(part) for part in other] == [181, 189, 199]
    assert not np.array_equal(other[0], label_skew_split(y, 3, seed=1)[0])


def test_demo_nodes(breast_cancer):
    nodes = demo_nodes(3)
    try:
        assert [node.name for node in nodes] == ["hospital-1", "hospital-2", "hospital-3"]
        assert [len(node.datasets[0]) for node in nodes] == [181, 189, 199]
        assert all(node.datasets[0].tags == TAGS for node in nodes)
    finally:
        for node in nodes:
            node.stop()


# -- Dataset --------------------------------------------------------------------------------------


def test_x_and_y_must_have_the_same_length():
    with pytest.raises(ConfigError, match="x has 3 rows but y has 2"):
        Dataset(np.zeros((3, 2)), np.zeros(2), name="bad")


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        ([], True),
        (None, True),
        (["a"], True),
        (["a", "b"], True),
        (["c"], False),
        (["a", "c"], False),
    ],
)
def test_tags_select_datasets_carrying_all_of_them(wanted, matches):
    assert Dataset(np.zeros((1, 1)), np.zeros(1), tags=["a", "b"]).matches(wanted) is matches


def test_split_is_reproducible_disjoint_and_complete():
    data = Dataset(np.arange(40).reshape(20, 2), np.arange(20), tags=["t"], name="d")
    train, test = data.split(0.25, seed=3)
    assert (len(train), len(test)) == (15, 5)
    np.testing.assert_array_equal(np.sort(np.concatenate([train.y, test.y])), np.arange(20))
    np.testing.assert_array_equal(train.x[:, 0] // 2, train.y)  # rows stay aligned
    assert (train.name, test.name, train.tags) == ("d:train", "d:test", ["t"])
    again, _ = data.split(0.25, seed=3)
    np.testing.assert_array_equal(again.y, train.y)
    assert data.split(0.0, seed=3) == (data, None)
    with pytest.raises(ConfigError, match="leaves none for training"):
        Dataset(np.zeros((3, 1)), np.zeros(3), name="tiny").split(0.9, seed=0)


# -- csv ------------------------------------------------------------------------------------------


def test_load_csv(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text("age,label,weight\n30,1,70.5\n40,0,80\n50,1,90.25\n")
    data = load_csv(path=str(path), target="label", tags=["t"])
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x, [[30, 70.5], [40, 80], [50, 90.25]])
    np.testing.assert_array_equal(data.y, [1, 0, 1])
    assert (data.tags, data.name) == (["t"], "patients.csv")


def test_load_csv_keeps_a_real_valued_target_and_other_delimiters(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("y;a\n0.5;1\n1.5;2\n")
    data = load_csv(path=str(path), target="y", delimiter=";", name="reg")
    assert data.y.dtype == np.float64
    np.testing.assert_array_equal(data.y, [0.5, 1.5])
    assert data.name == "reg"


def test_a_missing_target_column_names_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("age,weight,outcome\n1,2,0\n")
    with pytest.raises(ConfigError, match="has no column 'label'; columns: age, weight, outcome"):
        load_csv(path=str(path), target="label")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,label\n1,yes\n", "non-numeric value"),
        ("", "empty file"),
        ("a,b,label\n", "d.csv"),  # a header and no rows
        ("a,b,label\n1,2,0\n3,4\n", "d.csv"),  # a short row
        ("a,b,label\n1,2\n3,4\n", "d.csv"),  # every row short
        ("label,b,c\n0,2\n1,4\n", "d.csv"),  # every row short, target first
    ],
)
def test_malformed_csv_files_are_config_errors(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_csv(path=str(path), target="label")


def test_a_missing_csv_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read CSV dataset"):
        load_csv(path=str(tmp_path / "nope.csv"), target="label")


# -- numpy ----------------------------------------------------------------------------------------


def test_load_numpy_from_arrays_and_from_npz(tmp_path):
    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])
    data = load_numpy(x=x.tolist(), y=y, tags=["t"])
    np.testing.assert_array_equal(data.x, x)
    assert (data.tags, data.name) == (["t"], "numpy")
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    data = load_numpy(path=str(path))
    np.testing.assert_array_equal(data.y, y)
    assert data.name == str(path)


def test_load_numpy_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs either 'path' or both 'x' and 'y'"):
        load_numpy(x=np.zeros((2, 2)))
    np.savez(tmp_path / "no_y.npz", x=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match=r"no_y\.npz"):
        load_numpy(path=str(tmp_path / "no_y.npz"))
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ConfigError, match=r"objects\.npz"):  # pickled arrays are not loaded
        load_numpy(path=str(tmp_path / "objects.npz"))
    with pytest.raises(ConfigError, match=r"missing\.npz"):
        load_numpy(path=str(tmp_path / "missing.npz"))
    with pytest.raises(ConfigError, match="x has 2 rows but y has 3"):
        load_numpy(x=np.zeros((2, 2)), y=np.zeros(3))


def test_loaders_are_the_registered_dataset_types(fresh_pm):
    assert fresh_pm.dataset_types["csv"] is load_csv
    assert fresh_pm.dataset_types["numpy"] is load_numpy


# -- non-finite values are refused when the data are added (issue 17) ----------------------------


def test_a_nan_in_x_is_refused_with_its_row_and_column():
    x = np.zeros((10, 3))
    x[4, 2] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ConfigError) as info:
        Dataset(x, np.zeros(10), name="ward-3")
    text = str(info.value)
    assert text.startswith("dataset 'ward-3': x holds nan at row 4, column 2 (counting from 0;")
    assert "2 non-finite values in all" in text
    assert "check_finite=False" in text


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_target_is_refused_with_its_row(bad):
    y = np.zeros(6)
    y[5] = bad
    with pytest.raises(
        ConfigError, match=rf"dataset 'd': y holds {bad} at row 5 \(counting from 0\)"
    ):
        Dataset(np.zeros((6, 2), dtype=np.float32), y, name="d")


def test_a_non_finite_value_in_an_image_is_refused_with_its_position():
    x = np.zeros((5, 1, 4, 4), dtype=np.float32)
    x[3, 0, 2, 1] = np.inf
    with pytest.raises(ConfigError, match=r"x holds inf at row 3, position \(0, 2, 1\)"):
        Dataset(x, np.zeros(5, dtype=np.int64), name="scans")


def test_a_non_finite_value_far_in_a_large_array_is_found(monkeypatch):
    monkeypatch.setattr("fedplug.datasets._SCAN_ELEMENTS", 8)  # scanned 2 rows at a time
    x = np.ones((101, 4))
    x[100, 3] = -np.inf
    with pytest.raises(ConfigError, match=r"x holds -inf at row 100, column 3 \(counting from 0\)"):
        Dataset(x, np.zeros(101), name="d")


def test_the_test_split_and_loaded_arrays_are_checked_too(tmp_path):
    x = np.ones((4, 2))
    x[1, 1] = np.nan
    with pytest.raises(ConfigError, match="dataset 'held-out': x holds nan at row 1, column 1"):
        Dataset(np.ones((4, 2)), np.zeros(4), test=Dataset(x, np.zeros(4), name="held-out"))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(4))
    with pytest.raises(ConfigError, match="x holds nan at row 1, column 1"):
        load_numpy(path=str(tmp_path / "d.npz"))


def test_finite_integer_and_sample_data_pass_and_the_check_can_be_turned_off():
    Dataset(np.arange(6).reshape(3, 2), np.arange(3))  # integers cannot be NaN
    Dataset([(np.array([np.nan]), 0)])  # samples load lazily: not scanned
    x = np.ones((8, 2))
    x[0, 0] = np.nan
    data = Dataset(x, np.zeros(8), name="imputed-by-the-plan", check_finite=False)
    train, test = data.split(0.25, seed=0)  # its splits do not scan again
    assert len(train) == 6 and len(test) == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b,label\n1,2,0\n3,,1\n", r"line 3, column 'b' \(column 2\) is empty"),
        ("a,b,label\n1,2,0\n3,4,\n", r"line 3, column 'label' \(column 3\) is empty"),
        (
            "a,b,label\n1,2,0\n3,n/a,1\n",
            r"line 3, column 'b' \(column 2\) holds 'n/a', a non-numeric",
        ),
        (
            "a,b,label\n1,NaN,0\n",
            r"line 2, column 'b' \(column 2\) holds 'NaN', which is not a fini",
        ),
        ("a,b,label\n1,2,0\n\n3,-inf,1\n", r"line 4, column 'b' \(column 2\) holds '-inf'"),
        ("a,b,label\n1,2,0\n3,1e39,1\n", r"line 3, column 'b' \(column 2\) holds '1e39', beyond"),
    ],
)
def test_a_bad_csv_cell_is_named_by_line_and_column(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_csv(path=str(path), target="label")
    assert "remove" not in str(info.value)  # nothing was stored, nothing to remove


def test_blank_lines_in_a_csv_are_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\n\n2,1\n\n")
    data = load_csv(path=str(path), target="label")
    np.testing.assert_array_equal(data.y, [0, 1])
