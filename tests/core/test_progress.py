"""The per-round progress display: a bar that fits an 80-column terminal without cutting a metric,
plain lines (no carriage returns) where there is no terminal, and a notebook default."""

from __future__ import annotations

import io
import re
import sys
import time
import types

import pytest
from tqdm.utils import disp_len

from fedplug import Experiment
from fedplug.experiment import metrics
from fedplug.experiment.metrics import (
    MIN_BAR_CELLS,
    default_progress,
    in_notebook,
    postfix,
    progress_bar,
    short_number,
)

ROW = {
    "train_loss_mean": 0.51234,
    "validation_global": {
        "accuracy": 0.93,
        "loss": 0.4312,
        "auc": 0.9812,
        "balanced_accuracy": 0.9271,
        "f1": 0.9105,
        "mean squared error": 0.0712,  # a plan's name with spaces is still one word
        "n_samples": 114,
    },
}
FULL = (
    "loss 0.512 acc 0.930 auc 0.981 bal_acc 0.927 f1 0.910 mean_squared_error 0.0712 val_loss 0.431"
)


class Terminal(io.StringIO):
    """What the bar writes, as if to a terminal."""

    def isatty(self) -> bool:
        return True


def frames(text: str) -> list[str]:
    """The successive states of a bar drawn with carriage returns."""
    return [frame for frame in re.split(r"[\r\n]", text) if frame.strip()]


def draw(total: int, rows: list[dict], **options) -> list[str]:
    out = Terminal()
    bar = progress_bar(total, True, file=out, **options)
    for row in rows:
        bar.set_postfix_str(postfix(row))
        bar.update(1)
    bar.close()
    return frames(out.getvalue())


def metric_pairs(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + 2]) for i in range(0, len(words), 2)]


def test_the_metrics_are_short_most_important_first():
    assert postfix(ROW) == FULL
    assert postfix({"train_loss_mean": 0.5, "validation_global": {"n_samples": 0}}) == "loss 0.500"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.51234, "0.512"),
        (5.1234, "5.12"),
        (51.234, "51.2"),
        (512.34, "512"),
        (5123.4, "5123"),
        (0.0001234, "1.23e-04"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (7, "7"),
    ],
)
def test_numbers_get_three_significant_digits(value, text):
    assert short_number(value) == text


@pytest.mark.parametrize("columns", [80, 60])
def test_at_80_columns_the_bar_fits_keeps_its_cells_and_cuts_no_metric(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    drawn = draw(12, [ROW] * 12)
    assert drawn, "the bar wrote nothing"
    full_pairs = metric_pairs(FULL)
    for frame in drawn:
        assert disp_len(frame) <= columns, frame
        match = re.fullmatch(r"rounds (\d+)/12 \|(.*)\| \S+<\S+(?:  (.*))?", frame)
        assert match, frame
        assert disp_len(match.group(2)) >= MIN_BAR_CELLS, frame  # the bar keeps its cells
        shown = metric_pairs(match.group(3) or "")
        # whole "name value" pairs, the first ones, never a name or a number cut short
        assert shown == full_pairs[: len(shown)], frame
    last = drawn[-1]
    assert last.startswith("rounds 12/12 |") and "loss 0.512 acc 0.930" in last


def test_a_wide_terminal_shows_every_metric(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    last = draw(3, [ROW] * 3)[-1]
    assert last.endswith(f"  {FULL}")
    assert disp_len(last) == 200


def test_a_fixed_width_is_kept(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for frame in draw(3, [ROW] * 3, ncols=50):
        assert disp_len(frame) <= 50


def test_a_metric_is_shown_beside_its_own_round():
    # the metrics of round 1 are never drawn beside "0/2", the count of the round before
    for frame in draw(2, [ROW, ROW], ncols=120):
        assert not (frame.startswith("rounds 0/2") and "loss" in frame), frame


def test_the_elapsed_time_ticks_during_a_long_round(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    bar = progress_bar(3, True, file=out)
    time.sleep(2.3)  # a first round that takes its time: the bar is redrawn meanwhile
    bar.close()
    assert any(
        frame.startswith("rounds 0/3 |") and "00:02" in frame for frame in frames(out.getvalue())
    )


def test_without_a_terminal_one_plain_line_per_round(make_nodes, fresh_pm, capsys):
    exp = Experiment(
        nodes=make_nodes(),
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        training_args={"batch_size": 20, "test_ratio": 0.25},
        round_limit=3,
        seed=0,
        plugin_manager=fresh_pm,
        progress=True,
    )
    exp.run()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 3, err
    for index, line in enumerate(lines, start=1):
        assert re.fullmatch(
            rf"round {index}/3  \d+\.\d s  loss \d\.\d+ acc \d\.\d+ val_loss \S+", line
        )


@pytest.mark.parametrize("progress", [False, None])
def test_no_progress_when_off_or_not_a_terminal(make_nodes, fresh_pm, capsys, progress):
    exp = Experiment(
        nodes=make_nodes(),
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        round_limit=2,
        seed=0,
        plugin_manager=fresh_pm,
        progress=progress,
    )
    exp.run()
    assert capsys.readouterr().err == ""


@pytest.fixture
def notebook(monkeypatch):
    """This process as a Jupyter kernel sees itself (IPython's shell with an IPKernelApp)."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    return shell


def test_a_notebook_is_recognised(notebook, monkeypatch):
    assert in_notebook()
    assert default_progress(io.StringIO())  # on, although its output is no terminal
    notebook.config = {}  # a terminal IPython: not a notebook
    assert not in_notebook()
    assert not default_progress(io.StringIO())
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_notebook()


def test_in_a_notebook_the_bar_is_a_widget_or_a_redrawn_line(notebook, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress_bar(2, None, file=None)  # None: on, in a notebook
    assert bar is not None
    for _ in range(2):
        bar.set_postfix_str(postfix(ROW))
        bar.update(1)
    bar.close()
    try:
        from tqdm.notebook import IProgress
    except ImportError:  # pragma: no cover
        IProgress = None
    if IProgress is not None:  # pragma: no cover - with ipywidgets: tqdm's widget
        from tqdm.notebook import tqdm as widget

        assert isinstance(bar, widget)
    else:  # Jupyter redraws a line on "\r": the terminal bar, at 100 columns
        assert not isinstance(bar, metrics.RoundLines)
        drawn = frames(err.getvalue())
        assert "\r" in err.getvalue() and drawn[-1].startswith("rounds 2/2 |")
        assert all(disp_len(frame) <= 100 for frame in drawn)


def test_an_experiment_in_a_notebook_shows_its_progress_by_default(notebook, make_nodes, fresh_pm):
    exp = Experiment(
        nodes=make_nodes(),
        training_plan="numpy-logreg",
        model_args={"n_features": 4},
        round_limit=1,
        plugin_manager=fresh_pm,
    )
    assert exp.progress
