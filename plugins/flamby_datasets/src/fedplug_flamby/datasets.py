"""FLamby's datasets as fedplug node datasets, and the one place that imports FLamby.

FLamby keeps its datasets as modules ``flamby.datasets.<name>`` that all export the same names:
``FedClass`` (the per-center torch dataset), ``Baseline``, ``BaselineLoss``, ``Optimizer``, ``LR``,
``BATCH_SIZE``, ``NUM_CLIENTS``, ``NUM_EPOCHS_POOLED``, ``get_nb_max_rounds`` and ``metric``
(some add ``collate_fn``). This module imports them on demand and turns FLamby's failures (not
installed, dataset not downloaded, licence not accepted, a requirement missing, numpy 2 where
FLamby's code needs numpy 1) into errors that name the fix, and silences the FutureWarnings that
FLamby's own code causes in pandas (:func:`quiet_flamby_warnings`).

FLamby asks for the acceptance of a dataset's data terms on standard input. A node must never wait
on a prompt, so FLamby code runs here with standard input replaced by an empty stream: a prompt
fails at once and becomes a :class:`~fedplug.errors.ConfigError` naming ``accept_license``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import numbers
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError, PluginError

FLAMBY_REPO = "https://github.com/owkin/FLamby"
INSTALL_HINT = (
    f"pip install git+{FLAMBY_REPO} (FLamby is not on the package index), plus the dataset's "
    "extra requirements (see FLamby's README; e.g. pip install "
    f"'flamby[tcga] @ git+{FLAMBY_REPO}')"
)


@dataclass(frozen=True)
class FlambyDatasetInfo:
    """What fedplug knows about a FLamby dataset beyond its module's exports."""

    name: str
    title: str
    metric: str  # what the dataset's ``metric`` function computes, as a history key
    extra: str  # FLamby's pip extra for the dataset's requirements ("": none needed)
    download: bool  # needs FLamby's download (and preprocessing) scripts before use
    licence_link: str | None  # data terms FLamby asks to accept (None: no licence prompt)
    download_needs: tuple[str, ...] = ()  # packages its download scripts import (pip names)
    # an item reads the same every time (no random augmentation): a node reads the split once
    # and batches by index (fedplug_flamby.batches)
    fixed_items: bool = False


DATASETS: dict[str, FlambyDatasetInfo] = {
    info.name: info
    for info in (
        FlambyDatasetInfo(
            "fed_tcga_brca",
            "Fed-TCGA-BRCA (survival, 6 centers)",
            "c_index",
            "tcga",
            False,
            "https://gdc.cancer.gov/access-data/data-access-processes-and-tools",
            fixed_items=True,
        ),
        FlambyDatasetInfo(
            "fed_heart_disease",
            "Fed-Heart-Disease (classification, 4 centers)",
            "accuracy",
            "heart",
            True,
            "https://archive.ics.uci.edu/ml/datasets/Heart+Disease",
            ("wget",),
            fixed_items=True,
        ),
        FlambyDatasetInfo(
            "fed_ixi",
            "Fed-IXI (brain segmentation, 3 centers)",
            "dice",
            "ixi",
            True,
            "https://brain-development.org/ixi-dataset/",
        ),
        FlambyDatasetInfo(
            "fed_isic2019",
            "Fed-ISIC2019 (dermoscopy classification, 6 centers)",
            "balanced_accuracy",
            "isic2019",
            True,
            "https://challenge.isic-archive.com/data/",
        ),
        FlambyDatasetInfo(
            "fed_camelyon16",
            "Fed-Camelyon16 (slide classification, 2 centers)",
            "auc",
            "cam16",
            True,
            "https://camelyon17.grand-challenge.org/Data/",
        ),
        FlambyDatasetInfo(
            "fed_kits19",
            "Fed-KITS2019 (kidney tumor segmentation, 6 centers)",
            "dice",
            "kits19",
            True,
            "https://kits19.grand-challenge.org/data/",
        ),
        FlambyDatasetInfo(
            "fed_lidc_idri",
            "Fed-LIDC-IDRI (lung nodule segmentation, 4 centers)",
            "dice",
            "lidc",
            True,
            "https://wiki.cancerimagingarchive.net/display/Public/LIDC-IDRI",
        ),
        FlambyDatasetInfo(
            "fed_synthetic",
            "Fed-Synthetic (generated classification)",
            "accuracy",
            "",
            True,
            None,
            fixed_items=True,
        ),
    )
}

# What every FLamby dataset module exports (FLamby's common interface).
_EXPORTS = (
    "FedClass",
    "Baseline",
    "BaselineLoss",
    "Optimizer",
    "LR",
    "BATCH_SIZE",
    "NUM_CLIENTS",
    "NUM_EPOCHS_POOLED",
    "get_nb_max_rounds",
    "metric",
)

_STDIN_LOCK = threading.RLock()


def plan_class_name(dataset: str) -> str:
    """The registered plan class of a dataset: ``fed_tcga_brca`` -> ``FedTcgaBrcaPlan``."""
    return "".join(part.capitalize() for part in dataset.split("_")) + "Plan"


def dataset_info(name: Any) -> FlambyDatasetInfo:
    """The catalogue entry of a FLamby dataset; a :class:`ConfigError` lists the known names."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(
            f"unknown FLamby dataset {name!r}; FLamby's datasets are {', '.join(DATASETS)}"
        )
    return DATASETS[name]


def import_flamby() -> ModuleType:
    """``flamby``, or a :class:`PluginError` saying how to install it."""
    try:
        return importlib.import_module("flamby")
    except ImportError as exc:
        raise PluginError(f"FLamby is not installed ({exc}); install it: {INSTALL_HINT}") from None


def dataset_module(name: str) -> ModuleType:
    """``flamby.datasets.<name>``, checked for FLamby's common exports."""
    info = dataset_info(name)
    import_flamby()
    quiet_flamby_warnings()
    try:
        with no_stdin():
            module = importlib.import_module(f"flamby.datasets.{name}")
    except ImportError as exc:
        raise PluginError(import_failure_message(info, exc)) from None
    except AttributeError as exc:
        if not removed_in_numpy2(exc):
            raise
        raise PluginError(numpy2_message(name, exc)) from None
    missing = [export for export in _EXPORTS if not hasattr(module, export)]
    if missing:
        raise PluginError(
            f"flamby.datasets.{name} lacks {missing}, which every FLamby dataset exports; "
            f"is this FLamby's package? (install: {INSTALL_HINT})"
        )
    return module


@contextlib.contextmanager
def no_stdin() -> Iterator[None]:
    """Run FLamby code with an empty standard input (a prompt fails at once instead of waiting)
    and with its prints captured."""
    with _STDIN_LOCK:
        saved = sys.stdin
        sys.stdin = io.StringIO("")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            sys.stdin = saved


def accept_licence(name: str) -> None:
    """Record acceptance of the dataset's data terms the way FLamby does (its own
    ``flamby.utils.accept_license``, answered "yes"), so that no prompt ever appears."""
    info = dataset_info(name)
    if info.licence_link is None:
        return
    utils = importlib.import_module("flamby.utils")
    with _STDIN_LOCK:
        saved = sys.stdin
        sys.stdin = io.StringIO("yes\n")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                utils.accept_license(info.licence_link, name)
        finally:
            sys.stdin = saved


def center_datasets(
    name: str,
    center: int,
    *,
    accept_license: bool = False,
    data_path: str | None = None,
    debug: bool = False,
) -> tuple[Any, Any, ModuleType]:
    """FLamby's (train, test) torch datasets of one center, and the dataset module."""
    info = dataset_info(name)
    module = dataset_module(name)
    n_centers = int(module.NUM_CLIENTS)
    if isinstance(center, numbers.Integral) and not isinstance(center, bool):
        center = int(center)
    if isinstance(center, bool) or not isinstance(center, int) or not 0 <= center < n_centers:
        raise ConfigError(
            f"{name} has {n_centers} centers, numbered 0 to {n_centers - 1}; got center={center!r}"
        )
    if accept_license:
        accept_licence(name)
    options: dict[str, Any] = {}
    if data_path is not None:
        options["data_path"] = data_path
    if debug:
        options["debug"] = True
    splits = []
    for train in (True, False):
        try:
            with no_stdin():
                splits.append(module.FedClass(center=center, train=train, pooled=False, **options))
        except EOFError:
            raise ConfigError(
                f"FLamby asks for acceptance of the {name} data terms ({info.licence_link}) "
                "before first use, and a node never waits on a prompt. Read the terms, then "
                "accept them: accept_license=True in Python, or --accept-license on the command "
                "line"
            ) from None
        except SystemExit:
            raise ConfigError(
                f"FLamby stopped while loading {name}: its data terms were refused"
            ) from None
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(not_ready_message(name, exc)) from None
        except TypeError as exc:
            raise ConfigError(
                f"{name}'s FedClass does not take these options {sorted(options)}: {exc}"
            ) from None
        except AttributeError as exc:
            if not removed_in_numpy2(exc):
                raise
            raise PluginError(numpy2_message(name, exc)) from None
        except ImportError as exc:  # a requirement FLamby imports only when it loads the data
            raise PluginError(import_failure_message(info, exc)) from None
    return splits[0], splits[1], module


#: import names whose pip package has another name
_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "PIL": "Pillow",
    "yaml": "PyYAML",
}


def import_failure_message(info: FlambyDatasetInfo, exc: ImportError) -> str:
    """What to install when FLamby's dataset module (or its data loading) fails to import."""
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    text = f"FLamby is installed but its dataset {info.name!r} cannot be imported ({exc}); "
    if missing and missing != "flamby":
        package = _PIP_NAMES.get(missing, missing)
        text += f"install what it lacks: pip install {package}, or all of "
    else:
        text += "install "
    return text + f"the dataset's requirements: {_pip_command(info)}"


def removed_in_numpy2(exc: AttributeError) -> bool:
    """True for numpy 2's error on the names it removed (``np.NaN``, ``np.float_``, ...)."""
    return "removed in the NumPy 2.0 release" in str(exc)


def numpy2_message(name: str, exc: AttributeError) -> str:
    import numpy

    return (
        f"FLamby's {name} code uses a numpy name that numpy 2 removed ({exc}), and this "
        f"environment has numpy {numpy.__version__}. FLamby's code needs numpy 1 for this "
        'dataset: pip install "numpy<2" in this environment and on every node that serves the '
        "dataset (then restart those nodes)"
    )


def quiet_flamby_warnings() -> None:
    """Silence the FutureWarnings that FLamby's code causes in pandas (and other libraries
    deprecating what FLamby calls): they concern FLamby's source, not the user's, and would
    otherwise be printed by every node. pandas attributes them to its caller, FLamby's module,
    which this filter matches; FutureWarnings of any other code are untouched."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"flamby(\.|$)")


def _pip_command(info: FlambyDatasetInfo) -> str:
    if not info.extra:
        return f"pip install git+{FLAMBY_REPO}"
    return f"pip install 'flamby[{info.extra}] @ git+{FLAMBY_REPO}'"


def not_ready_message(name: str, exc: BaseException) -> str:
    info = dataset_info(name)
    how = (
        f"download (and preprocess) it once on this machine with the scripts in "
        f"flamby/datasets/{name}/dataset_creation_scripts/ (e.g. python -m "
        f"flamby.datasets.{name}.dataset_creation_scripts.download --output-folder DIR); FLamby "
        f"then records DIR in that folder's dataset_location.yaml. See "
        f"{FLAMBY_REPO}/tree/main/flamby/datasets/{name}"
        if info.download
        else f"reinstall FLamby with the dataset's requirements: {_pip_command(info)}"
    )
    if info.download_needs:
        needs = " ".join(info.download_needs)
        how += (
            f". Its download script imports {', '.join(info.download_needs)} (FLamby's "
            f"{info.extra!r} extra): pip install {needs}"
        )
    text = str(exc).strip().rstrip(".")
    return f"FLamby dataset {name} is not ready on this machine: {text}. To fix it, {how}"


def load_flamby(
    *,
    dataset: str,
    center: int,
    tags: list[str] | str | None = None,
    name: str = "",
    accept_license: bool = False,
    data_path: str | None = None,
    debug: bool = False,
) -> Dataset:
    """Center ``center`` of FLamby dataset ``dataset`` as a node dataset (the ``flamby`` dataset
    type): its train split to train on, its test split (``Dataset.test``) to validate on.

    :param tags: what experiments select it by (default: the dataset's name).
    :param accept_license: record acceptance of the dataset's data terms (FLamby otherwise asks
        on standard input, which a node never does).
    :param data_path: where FLamby's download put the data, when not its recorded location.
    :param debug: FLamby's small debug version of the dataset.
    """
    train, test, module = center_datasets(
        dataset, center, accept_license=accept_license, data_path=data_path, debug=debug
    )
    tags = [tags] if isinstance(tags, str) else list(tags or [dataset])
    label = name or f"{dataset}-center{center}"
    collate_fn = getattr(module, "collate_fn", None)
    meta = {"flamby_dataset": dataset, "center": center}
    # the dataset's metric, for plans that declare none (a TorchTrainingPlan written by hand
    # around FLamby's Baseline evaluates with it, as the registered plans do)
    metrics = {dataset_info(dataset).metric: module.metric}
    if len(train) == 0:
        raise ConfigError(f"{label}: FLamby's train split of center {center} is empty")
    test_split = Dataset(
        test, None, tags, f"{label}:test", collate_fn=collate_fn, meta=meta, metrics=metrics
    )
    return Dataset(
        train,
        None,
        tags,
        label,
        test=test_split if len(test) else None,
        collate_fn=collate_fn,
        meta=meta,
        metrics=metrics,
    )
