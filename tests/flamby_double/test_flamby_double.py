"""The FLamby test double keeps FLamby's contract: data, constants, model, loss, metric, licence."""

import csv
import inspect
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import flamby.datasets.fed_synthetic as fed_synthetic
import flamby.datasets.fed_tcga_brca as fed_tcga_brca
import numpy as np
import pytest
import torch
from flamby import utils
from flamby.datasets.fed_tcga_brca import (
    Baseline,
    BaselineLoss,
    FedTcgaBrca,
    TcgaBrcaRaw,
    get_nb_max_rounds,
    metric,
)
from flamby.datasets.fed_tcga_brca.metric import concordance_index
from flamby_double_support import DOUBLE_ROOT, config_file, license_file, synthetic_downloaded
from torch.utils.data import DataLoader

EXPORTED = {
    "BATCH_SIZE",
    "LR",
    "NUM_CLIENTS",
    "NUM_EPOCHS_POOLED",
    "Optimizer",
    "get_nb_max_rounds",
    "FedClass",
    "metric",
    "Baseline",
    "BaselineLoss",
}
SIZES = [(248, 63), (156, 40), (164, 42), (129, 33), (129, 33), (40, 11)]
DATA_DIR = DOUBLE_ROOT / "flamby" / "datasets" / "fed_tcga_brca" / "data"


def test_flamby_resolves_to_the_double():
    assert Path(utils.__file__).resolve().parent == DOUBLE_ROOT / "flamby"


# --- Fed-TCGA-BRCA data -------------------------------------------------------------------------


@pytest.mark.parametrize("center", range(6))
def test_tcga_sizes_per_center(tcga_license, center):
    train, test = SIZES[center]
    assert len(FedTcgaBrca(center=center, train=True)) == train
    assert len(FedTcgaBrca(center=center, train=False)) == test


def test_tcga_pooled_sizes_and_centers_partition_it(tcga_license):
    pooled_train = FedTcgaBrca(train=True, pooled=True)
    pooled_test = FedTcgaBrca(train=False, pooled=True)
    assert (len(pooled_train), len(pooled_test)) == (866, 222)
    assert len(TcgaBrcaRaw()) == 1096  # brca.csv holds 8 patients that the split leaves out
    for train, pooled in ((True, pooled_train), (False, pooled_test)):
        per_center = [set(FedTcgaBrca(center=c, train=train).pids) for c in range(6)]
        assert sum(map(len, per_center)) == len(set().union(*per_center))  # disjoint
        assert set().union(*per_center) == set(pooled.pids)
    assert not set(pooled_train.pids) & set(pooled_test.pids)


def test_tcga_items_are_the_csv_rows(tcga_license):
    dataset = FedTcgaBrca(center=5, train=False)
    x, y = dataset[0]
    assert x.shape == (39,) and x.dtype == torch.float32
    assert y.shape == (2,) and y.dtype == torch.float32
    with open(DATA_DIR / "brca.csv", newline="") as file:
        rows = {row[0]: row for row in csv.reader(file)}
    with open(DATA_DIR / "train_test_split.csv", newline="") as file:
        wanted = [row["pid"] for row in csv.DictReader(file) if row["fold2"] == "test_5"]
    in_csv_order = [pid for pid in rows if pid in set(wanted)]
    assert dataset.pids == in_csv_order  # FLamby keeps brca.csv's row order
    for i, pid in enumerate(dataset.pids):
        x, y = dataset[i]
        expected = np.array([float(v) for v in rows[pid][1:]])
        np.testing.assert_allclose(x.numpy(), expected[:39], rtol=1e-6)
        np.testing.assert_allclose(y.numpy(), expected[39:], rtol=1e-6)
    # FLamby feeds the covariates unscaled: age in years, then 0/1 one-hot columns.
    features = FedTcgaBrca(train=True, pooled=True).features
    assert features[:, 0].min() >= 20 and features[:, 0].max() <= 100
    assert set(np.unique(features[:, 1:])) <= {0.0, 1.0}


def test_tcga_dtypes_and_invalid_center(tcga_license):
    x, y = FedTcgaBrca(center=1, X_dtype=torch.float64, y_dtype=torch.float64)[3]
    assert (x.dtype, y.dtype) == (torch.float64, torch.float64)
    with pytest.raises(AssertionError):
        FedTcgaBrca(center=6)
    batch_x, batch_y = next(iter(DataLoader(FedTcgaBrca(), batch_size=8)))
    assert batch_x.shape == (8, 39) and batch_y.shape == (8, 2)


# --- Fed-TCGA-BRCA constants, model, loss, metric -----------------------------------------------


@pytest.mark.parametrize("module", [fed_tcga_brca, fed_synthetic])
def test_modules_export_flamby_names(module):
    assert set(dir(module)) >= EXPORTED


def test_tcga_constants():
    assert fed_tcga_brca.NUM_CLIENTS == 6
    assert fed_tcga_brca.BATCH_SIZE == 8
    assert fed_tcga_brca.NUM_EPOCHS_POOLED == 30
    assert fed_tcga_brca.LR == 0.1
    assert fed_tcga_brca.Optimizer is torch.optim.Adam
    assert fed_tcga_brca.FedClass is FedTcgaBrca
    assert get_nb_max_rounds(100) == 5
    assert get_nb_max_rounds(100, batch_size=16) == (866 // 6 // 16) * 30 // 100


def test_baseline_is_linear_39_to_1():
    model = Baseline()
    assert isinstance(model.fc, torch.nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (39, 1)
    assert model(torch.zeros(5, 39)).shape == (5, 1)


def _cox_loss_by_loop(scores, truth):
    """FLamby's definition, record by record: sort by decreasing time (stably), then each event
    pays log(sum over those at risk of exp(s_k - s_i))."""
    order = sorted(range(len(truth)), key=lambda i: -float(truth[i, 1]))
    s = [float(scores[i, 0]) for i in order]
    e = [float(truth[i, 0]) for i in order]
    total = sum(
        e[i] * np.log(sum(np.exp(s[k] - s[i]) for k in range(i + 1))) for i in range(len(s))
    )
    return total / len(s)


def test_cox_loss_matches_its_definition_with_tied_times():
    generator = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 40):
        scores = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        events = torch.randint(0, 2, (n,), generator=generator).double()
        times = torch.randint(0, 6, (n,), generator=generator).double()  # many ties
        truth = torch.stack([events, times], dim=1)
        loss = BaselineLoss()(scores, truth)
        assert loss.shape == () and torch.isfinite(loss)
        assert loss.item() == pytest.approx(_cox_loss_by_loop(scores, truth), rel=1e-10, abs=1e-12)
    censored = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    assert BaselineLoss()(torch.randn(2, 1), censored).item() == 0.0


def _flamby_loop_float64(scores, truth):
    """FLamby's loss loop written out in numpy float64, with its gradient by hand.

    Rows sorted by decreasing time with Python's stable ``sorted``; record 0 of the sorted batch
    contributes 0, record ``i >= 1`` contributes ``E_i * (m + log(sum_k exp(aux_k - m)))`` with
    ``aux = s[:i + 1] - s[i]`` and ``m = max(aux)``; the loss is the mean over all records. Its
    derivative in ``s_k`` is ``sum over events i >= max(k, 1) of (softmax_i(s[:i + 1])_k - [k ==
    i]) / n``. Returns (loss, gradient in the batch's order as ``(n, 1)``).
    """
    s_in = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64)
    n = len(s_in)
    order = sorted(range(n), key=lambda r: -truth[r, 1])
    s, e = s_in[order], truth[order, 0]
    total, grad_sorted = 0.0, np.zeros(n)
    for i in range(1, n):
        aux = s[: i + 1] - s[i]
        m = aux.max()
        total += e[i] * (m + np.log(np.exp(aux - m).sum()))
        weights = np.exp(aux - m) / np.exp(aux - m).sum()
        weights[i] -= 1.0
        grad_sorted[: i + 1] += e[i] * weights / n
    grad = np.zeros(n)
    grad[order] = grad_sorted
    return total / n, grad.reshape(n, 1)


def _structural_zeros(truth):
    """Where FLamby's loop gives an exact zero gradient: record at sorted position ``k`` enters
    only the terms ``i >= max(k, 1)``, so with no event there its gradient is exactly 0."""
    truth = np.asarray(truth, dtype=np.float64)
    n = len(truth)
    order = sorted(range(n), key=lambda r: -truth[r, 1])
    events = truth[order, 0]
    zero_sorted = np.array([not events[max(k, 1) :].any() for k in range(n)])
    zero = np.zeros(n, dtype=bool)
    zero[order] = zero_sorted
    return zero.reshape(n, 1)


def test_cox_loss_equals_flamby_loop_in_float64_values_and_gradients():
    generator = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 8, 8, 8, 8, 25, 60):
        scores = (3 * torch.randn(n, 1, generator=generator, dtype=torch.float64)).requires_grad_()
        events = torch.randint(0, 2, (n,), generator=generator).double()
        times = torch.randint(0, 5, (n,), generator=generator).double()  # many tied times
        truth = torch.stack([events, times], dim=1)
        loss = BaselineLoss()(scores, truth)
        (grad,) = torch.autograd.grad(loss, scores)
        expected_loss, expected_grad = _flamby_loop_float64(scores.detach(), truth)
        assert loss.shape == () and loss.dtype == torch.float64
        assert abs(loss.item() - expected_loss) <= 1e-12
        assert np.abs(grad.numpy() - expected_grad).max() <= 1e-12
        zero = _structural_zeros(truth)
        assert (grad.numpy()[zero] == 0.0).all()  # exact zeros, not 1e-17
        assert (grad.numpy()[~zero] != 0.0).all()


def test_cox_loss_gradient_is_exactly_zero_where_flamby_loop_gives_zero():
    """A logcumsumexp form leaves ~1e-8 gradients in these cases; Adam turns them into steps."""
    generator = torch.Generator().manual_seed(2)
    # (E, T) rows; sorted by decreasing T: the only event has the longest time, so every term
    # of the loss is record 0's (no gradient) or multiplied by E = 0.
    only_first = torch.tensor([[0, 5], [1, 40], [0, 12], [0, 3], [0, 40], [0, 7], [0, 1], [0, 2]])
    # Events among the longer times, then censored records at the shortest times (one tied with
    # an event: in decreasing-time order the event comes first, as in the batch).
    trailing = torch.tensor([[1, 30], [0, 4], [1, 20], [0, 2], [1, 9], [0, 9], [0, 1], [1, 25]])
    all_censored = torch.tensor([[0, 3], [0, 8], [0, 1], [0, 8]])
    for truth in (only_first, trailing, all_censored):
        truth = truth.float()
        for dtype in (torch.float32, torch.float64):
            scores = torch.randn(len(truth), 1, generator=generator, dtype=dtype)
            scores.requires_grad_()
            (grad,) = torch.autograd.grad(BaselineLoss()(scores, truth.to(dtype)), scores)
            zero = torch.from_numpy(_structural_zeros(truth))
            assert torch.equal(grad[zero], torch.zeros_like(grad[zero]))
    # No gradient at all when the only event is the first record of the sorted batch.
    scores = torch.randn(8, 1, generator=generator).requires_grad_()
    (grad,) = torch.autograd.grad(BaselineLoss()(scores, only_first.float()), scores)
    assert torch.equal(grad, torch.zeros_like(grad))
    # A batch of one: loss 0 and a zero gradient (FLamby's loop has no term for it).
    one = torch.randn(1, 1, generator=generator).requires_grad_()
    loss = BaselineLoss()(one, torch.tensor([[1.0, 10.0]]))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, one)
    assert torch.equal(grad, torch.zeros(1, 1))


def test_adam_training_keeps_flambys_exact_zero_gradients(tcga_license):
    """Adam (lr 0.1, eps 1e-8) training on TCGA batches, as FLamby's benchmark trains: where
    FLamby's loop gives an exactly zero gradient (the bias, or a one-hot covariate, when the
    batch's gradients cancel exactly), a form leaving 1e-8 there would let Adam take a full
    step; the double's loss leaves the weight in place."""
    data = FedTcgaBrca(center=3, train=True)  # 129 records: the last batch has 1
    torch.manual_seed(0)
    model = Baseline()
    optimizer = fed_tcga_brca.Optimizer(model.parameters(), lr=fed_tcga_brca.LR)
    loader = DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    exact_zeros = 0  # zero gradients that are not the structural ones (all scores' zero)
    initial = model.fc.weight.detach().clone()
    never_moved = torch.ones_like(initial, dtype=torch.bool)
    for _ in range(3):
        for X, y in loader:
            optimizer.zero_grad()
            scores = model(X)
            scores.retain_grad()
            loss = BaselineLoss()(scores, y)
            loss.backward()
            expected, _ = _flamby_loop_float64(scores.detach(), y)
            assert loss.item() == pytest.approx(expected, rel=1e-5)
            if scores.grad.any():
                exact_zeros += int((model.fc.bias.grad == 0).sum())
            never_moved &= model.fc.weight.grad == 0
            optimizer.step()
            # Adam moves a weight only once its gradient has been non-zero: exact zeros matter.
            assert torch.equal(model.fc.weight[never_moved], initial[never_moved])
    assert exact_zeros > 0


def test_cox_loss_dtype_follows_flamby_stack():
    """FLamby stacks scores, E and T into one tensor: torch's promotion decides the dtype."""
    truth = torch.tensor([[1.0, 3.0], [0.0, 2.0], [1.0, 1.0]])
    scores32 = torch.randn(3, 1)
    assert BaselineLoss()(scores32, truth).dtype == torch.float32
    assert BaselineLoss()(scores32, truth.double()).dtype == torch.float64
    assert BaselineLoss()(scores32.double(), truth).dtype == torch.float64
    expected, _ = _flamby_loop_float64(scores32, truth)
    assert BaselineLoss()(scores32, truth).item() == pytest.approx(expected, rel=1e-6)


def test_cox_loss_decreases_with_the_dataset_optimizer(tcga_license):
    torch.manual_seed(0)
    data = FedTcgaBrca(train=True, pooled=True)
    X = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.stack([data[i][1] for i in range(len(data))])
    model, loss_fn = Baseline(), BaselineLoss()
    optimizer = fed_tcga_brca.Optimizer(model.parameters(), lr=fed_tcga_brca.LR)
    with torch.no_grad():
        before = loss_fn(model(X), y).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(model(X), y)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(X), y).item()
    assert np.isfinite(before) and after < before


def _naive_c_index(times, scores, events):
    """lifelines' pairwise rules: comparable when the earlier exit is an event (same time: only
    event vs censored); concordant when the longer-lived has the higher score; ties count 1/2."""
    correct = tied = pairs = 0
    for a, b in itertools.combinations(range(len(times)), 2):
        if times[a] > times[b] or (times[a] == times[b] and not events[a]):
            a, b = b, a  # a exits first (or is the event in a same-time tie)
        if not events[a] or (times[a] == times[b] and events[b]):
            continue
        pairs += 1
        correct += scores[b] > scores[a]
        tied += scores[b] == scores[a]
    return (correct + tied / 2) / pairs


def test_concordance_index_follows_lifelines_conventions():
    rng = np.random.default_rng(0)
    for n in (2, 5, 30, 120):
        times = rng.integers(0, 10, n).astype(float)
        scores = rng.integers(0, 4, n).astype(float)  # tied predictions too
        events = rng.integers(0, 2, n).astype(float)
        events[0] = 1.0
        times[0] = -1.0  # at least one admissible pair
        assert concordance_index(times, scores, events) == pytest.approx(
            _naive_c_index(times, scores, events)
        )
    assert concordance_index([1, 2, 3], [1, 2, 3]) == 1.0  # all events by default
    assert concordance_index([1, 2, 3], [3, 2, 1]) == 0.0
    # Same time: event vs censored is a pair, two events are not.
    assert concordance_index([2, 2], [0, 1], [1, 0]) == 1.0
    with pytest.raises(ZeroDivisionError):
        concordance_index([2, 2], [0, 1], [1, 1])
    with pytest.raises(ZeroDivisionError):
        concordance_index([1, 2], [0, 1], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        concordance_index([1, 2], [np.nan, 1])


def test_metric_returns_numpy_float64_like_lifelines():
    y_true = np.array([[1, 5], [0, 3], [1, 2], [1, 7], [0, 9]], dtype=np.float32)
    pred = np.array([[0.1], [0.3], [0.5], [0.2], [0.0]], dtype=np.float32)
    value = metric(y_true, pred)
    assert type(value) is np.float64
    times, events = y_true[:, 1].astype(float), y_true[:, 0].astype(float)
    assert value == _naive_c_index(times, -pred.ravel().astype(float), events)
    assert type(concordance_index([1, 2, 3], [1, 2, 3])) is np.float64
    assert type(concordance_index([1, 2, 3], [1, 1, 1])) is np.float64  # all tied: 0.5
    with pytest.raises(ValueError, match="Event times and predictions must have the same shape"):
        concordance_index([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"Event times can only be 1-dimensional: \(n,\)"):
        concordance_index(np.ones((2, 2)), np.ones((2, 2)))


def test_metric_on_risk_scores(tcga_license):
    data = FedTcgaBrca(train=False, pooled=True)
    y_true = np.stack([data[i][1].numpy() for i in range(len(data))])
    constant = np.full((len(data), 1), 0.3, dtype=np.float32)
    assert metric(y_true, constant) == 0.5
    assert np.array_equal(y_true[:, 1], np.round(y_true[:, 1]))  # times in whole days
    # Higher risk exactly for shorter times, and for the event when an event and a censoring
    # share a time (such a pair is admissible, so equal risks there would count 1/2).
    risk = -(y_true[:, 1:2] - 0.5 * y_true[:, 0:1])
    assert metric(y_true, risk) == 1.0
    assert metric(y_true, -risk) == 0.0


def test_pooled_baseline_reaches_flamby_pooled_c_index(tcga_license):
    train = FedTcgaBrca(train=True, pooled=True)
    test = FedTcgaBrca(train=False, pooled=True)
    loader = DataLoader(test, batch_size=fed_tcga_brca.BATCH_SIZE, shuffle=False)
    scores = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model, loss_fn = Baseline(), BaselineLoss()
        optimizer = fed_tcga_brca.Optimizer(model.parameters(), lr=fed_tcga_brca.LR)
        batches = DataLoader(
            train,
            batch_size=fed_tcga_brca.BATCH_SIZE,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        for _ in range(5):
            for X, y in batches:
                optimizer.zero_grad()
                loss_fn(model(X), y).backward()
                optimizer.step()
        scores.append(utils.evaluate_model_on_tests(model, [loader], metric)["client_test_0"])
    # FLamby's published pooled figure is 0.676 (mean over client test sets, 30 epochs).
    assert np.median(scores) >= 0.6, scores


# --- collate_fn of fed_camelyon16 and fed_lidc_idri ----------------------------------------------


def test_camelyon16_collate_fn_pads_and_orders_tiles_like_flamby():
    from flamby.datasets.fed_camelyon16 import collate_fn
    from flamby.datasets.fed_camelyon16.dataset import collate_fn as in_dataset

    assert collate_fn is in_dataset
    signature = inspect.signature(collate_fn)
    assert list(signature.parameters) == ["dataset_elements_list", "max_tiles"]
    assert signature.parameters["max_tiles"].default == 10000
    slide_a = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # 3 tiles of 4 features
    slide_b = torch.arange(100, 120, dtype=torch.float32).reshape(5, 4)  # 5 tiles
    perm_a, perm_b = np.array([2, 0, 1]), np.array([4, 3, 2, 1, 0])
    batch = [(slide_a, torch.tensor(1.0), perm_a), (slide_b, torch.tensor(0.0), perm_b)]
    X, y = collate_fn(batch, max_tiles=4)
    assert X.shape == (2, 4, 4) and X.dtype == torch.float32
    assert torch.equal(X[0, :3], slide_a[perm_a]) and torch.equal(X[0, 3], torch.zeros(4))
    assert torch.equal(X[1], slide_b[perm_b[:4]])  # cut at max_tiles, in perm order
    assert y.shape == (2, 1) and y.dtype == torch.float32 and y.flatten().tolist() == [1.0, 0.0]
    X, y = collate_fn([(slide_a.double(), torch.tensor(1, dtype=torch.int64), perm_a)])
    assert X.shape == (1, 10000, 4) and X.dtype == torch.float64 and y.dtype == torch.int64
    assert torch.equal(X[0, :3], slide_a[perm_a].double()) and not X[0, 3:].any()


def test_lidc_idri_collate_fn_concatenates_patches_like_flamby():
    from flamby.datasets.fed_lidc_idri import collate_fn
    from flamby.datasets.fed_lidc_idri.dataset import collate_fn as in_dataset

    assert collate_fn is in_dataset
    assert list(inspect.signature(collate_fn).parameters) == ["dataset_elements_list"]
    generator = torch.Generator().manual_seed(0)
    scans = [torch.randn(2, 3, 4, 5, generator=generator) for _ in range(3)]  # S=2 patches
    masks = [torch.randint(0, 2, (2, 3, 4, 5), generator=generator) for _ in range(3)]
    X, y = collate_fn(list(zip(scans, masks, strict=True)))
    assert X.shape == (6, 1, 3, 4, 5) and y.shape == (6, 1, 3, 4, 5)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(X[:, 0], torch.cat(scans)) and torch.equal(y[:, 0], torch.cat(masks))
    with_channel = [(s.unsqueeze(1), m.unsqueeze(1)) for s, m in zip(scans, masks, strict=True)]
    X5, y5 = collate_fn(with_channel)  # already 5-D: kept as is
    assert torch.equal(X5, X) and torch.equal(y5, y)


# --- Licence ------------------------------------------------------------------------------------


def test_without_licence_a_closed_stdin_raises_and_records_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(EOFError):
        FedTcgaBrca()
    assert not license_file().exists()


def test_refusing_the_licence_exits(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    with pytest.raises(SystemExit):
        FedTcgaBrca()
    assert not license_file().exists()
    assert "gdc.cancer.gov" in capsys.readouterr().out


def test_accepting_the_licence_records_it_once(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("maybe\nYes\n"))
    assert len(FedTcgaBrca(center=5)) == 40  # asked twice, then accepted
    path = license_file()
    assert path.exists() and path.stat().st_size == 0
    assert path.parent.name == "dataset_creation_scripts"
    assert path.name == "license_agreement_fed_tcga_brca"

    def no_input(prompt=""):
        raise AssertionError("asked again although the licence was accepted")

    monkeypatch.setattr("builtins.input", no_input)
    assert len(FedTcgaBrca(center=5, train=False)) == 11


def test_accept_license_rejects_unknown_datasets():
    with pytest.raises(AssertionError, match="not valid"):
        utils.accept_license("https://example.org", "fed_unknown")


def test_without_licence_a_process_with_no_stdin_fails_instead_of_hanging(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(DOUBLE_ROOT)}
    code = "from flamby.datasets.fed_tcga_brca import FedTcgaBrca; FedTcgaBrca()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "EOFError" in done.stderr
    assert not license_file().exists()


# --- Dataset location (config) ------------------------------------------------------------------


def test_missing_location_raises_like_flamby(capsys):
    with pytest.raises(ValueError, match="not found for either normal or debug mode"):
        fed_synthetic.FedSynthetic()
    assert "WARNING USING DEBUG MODE DATASET" in capsys.readouterr().out
    with pytest.raises(ValueError, match="config file not found for debug mode"):
        fed_synthetic.FedSynthetic(debug=True)
    with pytest.raises(FileNotFoundError, match="Could not find the config"):
        fed_synthetic.get_nb_max_rounds(100)
    with pytest.raises(ValueError, match="is not a valid path"):
        fed_synthetic.FedSynthetic(data_path="/nonexistent/flamby-double")
    with pytest.raises(AssertionError, match="not valid"):
        utils.get_config_file_path("fed_unknown", False)


def test_unfinished_download_or_preprocessing_raises(tmp_path):
    config, path = utils.create_config(str(tmp_path), False, "fed_synthetic")
    assert path == str(config_file("fed_synthetic"))
    assert config == {
        "dataset_path": os.path.realpath(tmp_path),
        "download_complete": False,
        "preprocessing_complete": False,
    }
    with pytest.raises(ValueError, match="only partially downloaded"):
        utils.check_dataset_from_config("fed_synthetic", False)
    utils.write_value_in_config(path, "download_complete", True)
    with pytest.raises(ValueError, match="preprocessing for dataset fed_synthetic is not"):
        utils.check_dataset_from_config("fed_synthetic", False)
    utils.write_value_in_config(path, "preprocessing_complete", True)
    assert utils.check_dataset_from_config("fed_synthetic", False)["dataset_path"] == str(
        os.path.realpath(tmp_path)
    )
    with pytest.raises(ValueError, match="is not recognized as a folder"):
        utils.create_config(str(tmp_path / "missing"), False, "fed_synthetic")
    with pytest.raises(FileNotFoundError):
        utils.write_value_in_config(str(tmp_path / "none.yaml"), "k", 1)


def test_config_reads_pyyaml_style_files(tmp_path):
    path = tmp_path / "dataset_location.yaml"
    path.write_text(
        "dataset_path: /data/synthetic\ndownload_complete: true\nn_samples: 1000\n"
        "noise_heterogeneity: null\nsnr: 3.0\nname: 'a b'\n"
    )
    assert utils.read_config(str(path)) == {
        "dataset_path": "/data/synthetic",
        "download_complete": True,
        "n_samples": 1000,
        "noise_heterogeneity": None,
        "snr": 3.0,
        "name": "a b",
    }


# --- Fed-Synthetic ------------------------------------------------------------------------------


def test_synthetic_dataset_contract(tmp_path):
    with synthetic_downloaded(tmp_path / "synthetic") as path:
        assert path == config_file("fed_synthetic")
        assert fed_synthetic.NUM_CLIENTS == 4
        assert fed_synthetic.FedClass is fed_synthetic.FedSynthetic
        assert fed_synthetic.Optimizer is torch.optim.Adam
        assert fed_synthetic.get_nb_max_rounds(100) == (1000 // 4 // 8) * 10 // 100
        sizes = [
            (len(fed_synthetic.FedSynthetic(c, True)), len(fed_synthetic.FedSynthetic(c, False)))
            for c in range(fed_synthetic.NUM_CLIENTS)
        ]
        assert sizes == [(165, 85)] * 4
        pooled = fed_synthetic.FedSynthetic(train=True, pooled=True)
        assert len(pooled) == 660
        x, y = pooled[0]
        assert x.shape == (10,) and x.dtype == torch.float32
        assert y.shape == (1,) and y.dtype == torch.float32
        with pytest.raises(AssertionError):
            fed_synthetic.FedSynthetic(center=4)

        torch.manual_seed(0)
        model, loss_fn = fed_synthetic.Baseline(), fed_synthetic.BaselineLoss()
        optimizer = fed_synthetic.Optimizer(model.parameters(), lr=fed_synthetic.LR)
        for X, y in DataLoader(pooled, batch_size=fed_synthetic.BATCH_SIZE, shuffle=True):
            optimizer.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            optimizer.step()
        assert loss.shape == () and torch.isfinite(loss)
        test = DataLoader(fed_synthetic.FedSynthetic(train=False, pooled=True), batch_size=64)
        accuracy = utils.evaluate_model_on_tests(model, [test], fed_synthetic.metric)
        assert accuracy["client_test_0"] > 0.8
    assert not config_file("fed_synthetic").exists()


def test_synthetic_generation_is_deterministic_and_readable_by_path(tmp_path):
    with synthetic_downloaded(tmp_path / "a", n_samples=120, n_centers=3):
        first = fed_synthetic.FedSynthetic(center=2, train=False)
    with synthetic_downloaded(tmp_path / "b", n_samples=120, n_centers=3):
        second = fed_synthetic.FedSynthetic(center=2, train=False)
    assert len(first) == len(second) == 14  # 40 records: 26 train, 14 test
    for i in range(len(first)):  # FLamby's __getitem__ asserts the index: no iteration protocol
        assert torch.equal(first[i][0], second[i][0]) and torch.equal(first[i][1], second[i][1])
    by_path = fed_synthetic.FedSynthetic(center=2, train=False, data_path=str(tmp_path / "a"))
    assert torch.equal(torch.stack(by_path.features), torch.stack(first.features))


def test_synthetic_metric_is_argmax_accuracy():
    y_true = np.array([[0.0], [1.0], [2.0], [1.0]])
    y_pred = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.0, 0.6, 0.4]])
    assert fed_synthetic.metric(y_true, y_pred) == 0.75
