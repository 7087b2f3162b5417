"""The ``flamby`` node dataset type: a FLamby center's train split, with FLamby's test split.

FLamby's failures (licence not accepted, dataset not downloaded, bad center) must become
:class:`ConfigError` messages that name the fix, and a node must never wait on a licence prompt.
"""

import json
import subprocess
import sys
import textwrap
import time

import flamby.datasets.fed_tcga_brca as fed_tcga_brca
import pytest
import torch
from flamby_double_support import config_file, license_file, synthetic_downloaded

from fedplug import Dataset, get_plugin_manager
from fedplug.errors import ConfigError
from fedplug_flamby import DATASETS, load_flamby

TCGA_SIZES = [(248, 63), (156, 40), (164, 42), (129, 33), (129, 33), (40, 11)]


# --- Fed-TCGA-BRCA centers ----------------------------------------------------------------------


@pytest.mark.parametrize("center", range(6))
def test_each_tcga_center_is_its_flamby_train_split_with_its_test_split(tcga_license, center):
    data = load_flamby(dataset="fed_tcga_brca", center=center)
    n_train, n_test = TCGA_SIZES[center]
    assert isinstance(data, Dataset) and isinstance(data.test, Dataset)
    assert (len(data), len(data.test)) == (n_train, n_test)
    assert data.is_samples and data.test.is_samples
    assert data.tags == ["fed_tcga_brca"] and data.test.tags == ["fed_tcga_brca"]
    assert data.name == f"fed_tcga_brca-center{center}"
    assert data.test.name == f"fed_tcga_brca-center{center}:test"
    assert data.meta == {"flamby_dataset": "fed_tcga_brca", "center": center}
    assert data.test.meta == data.meta
    # the samples are FLamby's own, in FLamby's order
    flamby_train = fed_tcga_brca.FedTcgaBrca(center=center, train=True)
    flamby_test = fed_tcga_brca.FedTcgaBrca(center=center, train=False)
    for mine, theirs in ((data, flamby_train), (data.test, flamby_test)):
        for i in (0, len(theirs) - 1):
            x, y = mine.x[i]
            assert torch.equal(x, theirs[i][0]) and torch.equal(y, theirs[i][1])
    assert data.x.pids == flamby_train.pids and data.test.x.pids == flamby_test.pids


def test_the_tcga_centers_partition_flamby_pooled_splits(tcga_license):
    centers = [load_flamby(dataset="fed_tcga_brca", center=c) for c in range(6)]
    train_ids = [pid for data in centers for pid in data.x.pids]
    test_ids = [pid for data in centers for pid in data.test.x.pids]
    assert len(set(train_ids)) == len(train_ids) == 866
    assert len(set(test_ids)) == len(test_ids) == 222
    assert not set(train_ids) & set(test_ids)


def test_tags_and_name_can_be_chosen(tcga_license):
    data = load_flamby(dataset="fed_tcga_brca", center=5, tags="tcga", name="hospital-x")
    assert data.tags == ["tcga"] and data.test.tags == ["tcga"]
    assert (data.name, data.test.name) == ("hospital-x", "hospital-x:test")
    several = load_flamby(dataset="fed_tcga_brca", center=5, tags=["tcga", "survival"])
    assert several.tags == ["tcga", "survival"]
    assert several.matches(["survival"]) and not several.matches(["fed_tcga_brca"])


def test_split_returns_flamby_test_split_and_refuses_a_test_ratio(tcga_license):
    data = load_flamby(dataset="fed_tcga_brca", center=3)
    for seed in (0, 7, None):
        train, test = data.split(0, seed)
        assert train is data and test is data.test
    with pytest.raises(ConfigError, match=r"own test split \(33 samples\).*test_ratio=0\.2"):
        data.split(0.2, 0)


@pytest.mark.parametrize("center", [6, -1, "2", True, 2.0, None])
def test_a_bad_center_names_the_valid_ones(tcga_license, center):
    with pytest.raises(ConfigError, match=r"fed_tcga_brca has 6 centers, numbered 0 to 5") as info:
        load_flamby(dataset="fed_tcga_brca", center=center)
    assert f"center={center!r}" in str(info.value)


@pytest.mark.parametrize("dataset", ["fed_unknown", "FED_TCGA_BRCA", "", None])
def test_an_unknown_dataset_lists_flamby_datasets(dataset):
    with pytest.raises(ConfigError, match="unknown FLamby dataset") as info:
        load_flamby(dataset=dataset, center=0)
    message = str(info.value)
    assert repr(dataset) in message
    for name in DATASETS:
        assert name in message
    assert set(DATASETS) >= {"fed_tcga_brca", "fed_heart_disease", "fed_isic2019", "fed_ixi"}


def test_an_option_flamby_does_not_take_is_a_config_error(tcga_license):
    with pytest.raises(ConfigError, match=r"FedClass does not take these options \['data_path'\]"):
        load_flamby(dataset="fed_tcga_brca", center=0, data_path="/somewhere")


def test_the_dataset_type_is_registered_as_flamby(tcga_license):
    pm = get_plugin_manager()
    assert pm.dataset_types["flamby"] is load_flamby
    assert pm.dataset_types.owner("flamby") == "flamby"
    data = pm.dataset_types["flamby"](dataset="fed_tcga_brca", center=4)
    assert (len(data), len(data.test)) == TCGA_SIZES[4]


# --- The licence --------------------------------------------------------------------------------


def test_without_the_licence_loading_names_accept_license_and_records_nothing():
    assert not license_file().exists()
    with pytest.raises(ConfigError) as info:
        load_flamby(dataset="fed_tcga_brca", center=0)
    message = str(info.value)
    assert "accept_license=True" in message and "--accept-license" in message
    assert "gdc.cancer.gov" in message  # the terms to read
    assert not license_file().exists()


def test_without_the_licence_a_node_process_with_an_open_stdin_fails_at_once(tmp_path, child_env):
    """A node started with a pipe on standard input that never closes (a service manager, a
    parent process): FLamby's prompt would wait forever; the dataset type fails at once."""
    code = textwrap.dedent(
        """
        import json
        from fedplug.errors import ConfigError
        from fedplug_flamby import load_flamby
        try:
            load_flamby(dataset="fed_tcga_brca", center=0)
        except ConfigError as exc:
            print(json.dumps({"error": str(exc)}))
        else:
            print(json.dumps({"error": None}))
        """
    )
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    start = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,  # left open: never written to, never closed
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
            env=child_env(),
        )
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("load_flamby waited on standard input for the licence prompt")
        finally:
            process.stdin.close()
    assert time.monotonic() - start < 60
    assert returncode == 0, err.read_text()
    report = json.loads(out.read_text().strip().splitlines()[-1])
    assert report["error"] is not None
    assert "accept_license=True" in report["error"] and "--accept-license" in report["error"]
    assert not license_file().exists()


def test_accept_license_records_flamby_acceptance_file_and_loads():
    assert not license_file().exists()
    data = load_flamby(dataset="fed_tcga_brca", center=1, accept_license=True)
    assert (len(data), len(data.test)) == TCGA_SIZES[1]
    assert license_file().exists()
    assert license_file().name == "license_agreement_fed_tcga_brca"
    # once accepted, FLamby asks nothing: loading without the option works
    assert len(load_flamby(dataset="fed_tcga_brca", center=2)) == TCGA_SIZES[2][0]


# --- Fed-Synthetic: a dataset that must be downloaded first -------------------------------------


def test_a_dataset_not_downloaded_names_the_download_script():
    assert not config_file("fed_synthetic").exists()
    with pytest.raises(ConfigError, match="FLamby dataset fed_synthetic is not ready") as info:
        load_flamby(dataset="fed_synthetic", center=0)
    message = str(info.value)
    assert "flamby/datasets/fed_synthetic/dataset_creation_scripts/" in message
    assert "python -m flamby.datasets.fed_synthetic.dataset_creation_scripts.download" in message
    assert "dataset_location.yaml" in message
    assert "not downloaded" in message  # FLamby's own explanation is kept


def test_a_downloaded_synthetic_dataset_loads_with_its_generated_sizes(tmp_path):
    # The double's generator: 1000 records over 4 centers, each split 66% / 34% (165 / 85).
    with synthetic_downloaded(tmp_path / "synthetic"):
        centers = [load_flamby(dataset="fed_synthetic", center=c) for c in range(4)]
        with pytest.raises(ConfigError, match="fed_synthetic has 4 centers, numbered 0 to 3"):
            load_flamby(dataset="fed_synthetic", center=4)
    assert [(len(d), len(d.test)) for d in centers] == [(165, 85)] * 4
    assert centers[2].tags == ["fed_synthetic"]
    assert centers[2].meta == {"flamby_dataset": "fed_synthetic", "center": 2}
    x, y = centers[0].x[0]
    assert x.shape == (10,) and y.shape == (1,)


def test_other_generation_sizes_and_data_path(tmp_path):
    folder = tmp_path / "small"
    with synthetic_downloaded(folder, n_samples=120, n_centers=3):
        data = load_flamby(dataset="fed_synthetic", center=2)
    assert (len(data), len(data.test)) == (26, 14)  # 40 records per center
    assert not config_file("fed_synthetic").exists()
    # without a recorded location, FLamby reads the folder it is given
    by_path = load_flamby(dataset="fed_synthetic", center=2, data_path=str(folder))
    assert (len(by_path), len(by_path.test)) == (26, 14)
    for i in range(len(data.test)):
        assert torch.equal(by_path.test.x[i][0], data.test.x[i][0])


def test_a_synthetic_experiment_trains_with_accuracy_and_the_module_collate_fn(
    tmp_path, monkeypatch
):
    """A second FLamby dataset end to end: its own metric name, and the dataset module's
    ``collate_fn`` (FLamby defines one for some datasets) batches the samples on every node."""
    import flamby.datasets.fed_synthetic as fed_synthetic
    from torch.utils.data import default_collate

    from fedplug_flamby import flamby_experiment, flamby_results

    calls = []

    def collate_fn(batch):
        calls.append(len(batch))
        return default_collate(batch)

    monkeypatch.setattr(fed_synthetic, "collate_fn", collate_fn, raising=False)
    with synthetic_downloaded(tmp_path / "synthetic"):
        exp = flamby_experiment("fed_synthetic", num_updates=20, round_limit=3, seed=0)
        assert exp.flamby_metric == "accuracy" and len(exp.nodes) == 4
        history = exp.run()
    results = flamby_results(history, "accuracy")
    assert sorted(results["per_center"]) == ["center0", "center1", "center2", "center3"]
    first = history[0]["validation_mean"]["accuracy"]
    assert results["mean"] > max(first, 1 / 3)  # better than chance (3 classes) and than round 1
    # 3 rounds x 4 nodes x 20 training batches of 8, plus the evaluation batches
    assert calls.count(8) >= 3 * 4 * 20
