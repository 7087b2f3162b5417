"""What the plugin says when FLamby's own code meets this environment: Fed-Heart-Disease's
``np.NaN`` under numpy 2, its ``wget`` requirement (FLamby's ``heart`` extra), and the pandas
FutureWarnings FLamby's code causes.

The test double has no Fed-Heart-Disease: a stand-in module ``flamby.datasets.fed_heart_disease``
is imported here through an import hook, and fails the way FLamby's does (its code really runs
``np.NaN``, or an ``import wget`` of a package that is not installed)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

import numpy as np
import pytest

from fedplug.errors import ConfigError, PluginError
from fedplug_flamby import dataset_module, load_flamby

NAME = "flamby.datasets.fed_heart_disease"

# FLamby's common exports, enough for dataset_module's check
HEADER = """
import numpy as np
import torch

BATCH_SIZE, LR, NUM_CLIENTS, NUM_EPOCHS_POOLED = 4, 0.001, 4, 50
Baseline = BaselineLoss = Optimizer = None


def get_nb_max_rounds(num_updates):
    return 1


def metric(y_true, y_pred):
    return float(((y_pred > 0.5) == y_true).mean())
"""

SOURCES = {
    # FLamby's data loading: df.replace("?", np.NaN), as in its HeartDiseaseRaw
    "numpy2": HEADER
    + """
class FedClass:
    def __init__(self, center=0, train=True, pooled=False):
        self.features = [["63", "?"]]
        self.features = [[np.NaN if v == "?" else v for v in row] for row in self.features]
""",
    # the module imports a requirement of the heart extra that is not installed
    "wget": "import wget_not_installed_here as wget\n" + HEADER,
    # data loading whose pandas calls are deprecated: pandas attributes the FutureWarning to
    # its caller, FLamby's module
    "future": HEADER
    + """
import warnings


class FedClass:
    def __init__(self, center=0, train=True, pooled=False):
        warnings.warn("Downcasting behavior in `replace` is deprecated", FutureWarning, 1)
        self.x = torch.zeros(4, 13)
        self.y = torch.tensor([0.0, 1.0, 0.0, 1.0])

    def __len__(self):
        return 4

    def __getitem__(self, index):
        warnings.warn("Series.__getitem__ treating keys as positions", FutureWarning, 1)
        return self.x[index], self.y[index]
""",
    # not downloaded: FLamby's error when its dataset_location.yaml is missing
    "absent": HEADER
    + """
class FedClass:
    def __init__(self, center=0, train=True, pooled=False):
        raise ValueError("It seems the dataset fed_heart_disease was not downloaded")
""",
}


class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, source: str) -> None:
        self.source = source

    def find_spec(self, fullname, path, target=None):
        if fullname == NAME:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if "wget_not_installed_here" in self.source:  # what `import wget` raises without it
            raise ModuleNotFoundError("No module named 'wget'", name="wget")
        exec(compile(self.source, f"<{NAME}>", "exec"), module.__dict__)


@pytest.fixture
def heart(monkeypatch):
    """``heart(kind)``: the stand-in Fed-Heart-Disease of ``kind`` is what imports."""
    import flamby.datasets

    def install(kind: str) -> None:
        monkeypatch.setattr(sys, "meta_path", [StandIn(SOURCES[kind]), *sys.meta_path])

    yield install
    sys.modules.pop(NAME, None)
    if hasattr(flamby.datasets, "fed_heart_disease"):
        delattr(flamby.datasets, "fed_heart_disease")


@pytest.mark.skipif(np.__version__.startswith("1."), reason="np.NaN exists in numpy 1")
def test_numpy_2_on_heart_disease_says_to_pin_numpy_below_2(heart):
    heart("numpy2")
    with pytest.raises(PluginError) as info:
        load_flamby(dataset="fed_heart_disease", center=0)
    text = str(info.value)
    assert "`np.NaN` was removed in the NumPy 2.0 release" in text  # numpy's own words
    assert f"this environment has numpy {np.__version__}" in text
    assert 'pip install "numpy<2"' in text


def test_other_attribute_errors_of_flamby_are_not_disguised(heart, monkeypatch):
    heart("absent")
    module = dataset_module("fed_heart_disease")

    def broken(**options):
        raise AttributeError("'NoneType' object has no attribute 'iloc'")

    monkeypatch.setattr(module, "FedClass", broken)
    with pytest.raises(AttributeError, match="iloc"):
        load_flamby(dataset="fed_heart_disease", center=0)


def test_a_missing_requirement_names_the_package_to_install(heart):
    heart("wget")
    with pytest.raises(PluginError) as info:
        dataset_module("fed_heart_disease")
    text = str(info.value)
    assert "cannot be imported (No module named 'wget')" in text
    assert "install what it lacks: pip install wget, or all of the dataset's requirements" in text
    assert "flamby[heart]" in text


def test_not_downloaded_says_the_download_script_needs_wget(heart):
    heart("absent")
    with pytest.raises(ConfigError) as info:
        load_flamby(dataset="fed_heart_disease", center=0)
    text = str(info.value)
    assert "dataset_creation_scripts.download --output-folder DIR" in text
    assert "Its download script imports wget (FLamby's 'heart' extra): pip install wget" in text


def test_flambys_future_warnings_are_silenced_and_others_are_not(heart):
    heart("future")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        data = load_flamby(dataset="fed_heart_disease", center=0)
        assert len(data) == 4 and data.metrics.keys() == {"accuracy"}
        data.x[0]  # lazily loaded samples warn too, while a node trains
        warnings.warn("the user's own deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen if w.category is FutureWarning] == [
        "the user's own deprecation"
    ]
