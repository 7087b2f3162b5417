"""What a round reports: history rows, metrics averaged over nodes, and the progress bar."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import threading
import time
from typing import Any


def mean_over_nodes(per_node: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric of per-node validation results averaged over the nodes that report it with
    test samples, unweighted (FLamby's "mean over clients"); ``Experiment.evaluate()``'s first
    value is such a ``per_node`` dict."""
    reporting = [m for m in per_node.values() if m.get("n_samples")]
    keys = sorted({k for m in reporting for k in m if k != "n_samples"})
    return {
        key: sum(m[key] for m in reporting if key in m) / sum(key in m for m in reporting)
        for key in keys
    }


def weighted_metrics(replies: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict]:
    """Per-node metrics of evaluation replies, and their average weighted by test samples
    (over the metrics every node with test samples reports), with ``n_samples``."""
    per_node = {node: dict(r.metrics, n_samples=r.n_samples) for node, r in sorted(replies.items())}
    total = sum(r.n_samples for r in replies.values())
    overall: dict[str, float] = {}
    if total:
        keys = set.intersection(*(set(r.metrics) for r in replies.values() if r.n_samples))
        for key in sorted(keys):
            overall[key] = (
                sum(r.metrics[key] * r.n_samples for r in replies.values() if r.n_samples) / total
            )
    overall["n_samples"] = total
    return per_node, overall


def train_summary(index: int, replies: dict[str, Any]) -> dict[str, Any]:
    """A round's history row, as far as training goes."""
    samples = {node: r.n_samples for node, r in sorted(replies.items())}
    total = sum(samples.values())
    return {
        "round": index,
        "nodes": sorted(replies),
        "samples": samples,
        "train_loss": {node: r.train_loss for node, r in sorted(replies.items())},
        "train_loss_mean": sum(r.train_loss * r.n_samples for r in replies.values()) / total,
        "node_train_s": {node: r.duration_s for node, r in sorted(replies.items())},
    }


#: the fewest cells the terminal bar keeps: metrics that do not fit beside it are left out
MIN_BAR_CELLS = 10
#: what the progress display calls a validation metric (the rest keep their names)
SHORT_NAMES = {"accuracy": "acc", "balanced_accuracy": "bal_acc", "loss": "val_loss"}
TERMINAL_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{metrics}"


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, JupyterLab, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # a stand-in or broken IPython: no notebook
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def default_progress(stream: Any = None) -> bool:
    """Whether ``Experiment(progress=None)`` shows its progress: when ``stream`` (default:
    stderr) is a terminal, or in a Jupyter notebook (where the bar is a widget)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed stream
        tty = False
    return tty or in_notebook()


def terminal_width(stream: Any = None) -> int:
    """The width of the terminal ``stream`` writes to: ``$COLUMNS`` when set, else the
    terminal's own, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size((stream or sys.stderr).fileno()).columns
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size((80, 24)).columns


def short_number(value: Any) -> str:
    """``value`` with 3 significant digits and no exponent where it can: 0.512, 5.12, 51.2, 512,
    5123; integers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size == 0:
        return "0"
    if size < 1e-3 or size >= 1e6:
        return f"{value:.2e}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(size)))}f}"


def postfix(row: dict[str, Any]) -> str:
    """A round's metrics as the progress display shows them: ``loss 0.512 acc 0.930
    val_loss 0.431`` (the mean train loss, then the global validation metrics, their loss last),
    most important first so that a narrow terminal drops the last ones whole."""
    parts = [("loss", row["train_loss_mean"])]
    validation = {k: v for k, v in row.get("validation_global", {}).items() if k != "n_samples"}
    for key in sorted(validation, key=lambda k: (k == "loss", k)):
        name = "_".join(SHORT_NAMES.get(key, key).split())  # one word, whatever the plan says
        parts.append((name, validation[key]))
    return " ".join(f"{name} {short_number(value)}" for name, value in parts)


def fit_metrics(text: str, width: int) -> str:
    """The leading ``name value`` pairs of ``text`` that fit in ``width`` columns: pairs are
    dropped whole from the end, never cut."""
    from tqdm.utils import disp_len

    words = text.split()
    pairs = [" ".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    while pairs and disp_len(" ".join(pairs)) > width:
        pairs.pop()
    return " ".join(pairs)


def progress_bar(
    total: int, enabled: bool | None, *, file: Any = None, ncols: int | None = None
) -> Any:
    """The per-round progress display of ``Experiment.run``, written to ``file`` (default:
    stderr), or None when not ``enabled`` (None: :func:`default_progress`). It has tqdm's
    ``set_postfix_str(text)`` (``text``: :func:`postfix`), ``update(n)`` and ``close()``.

    In a Jupyter notebook it is tqdm's widget (with ipywidgets installed); on a terminal a bar
    that fits the terminal's width (``ncols``: a fixed width), keeps at least
    :data:`MIN_BAR_CELLS` cells and drops whole metrics that do not fit; elsewhere (a log file,
    a pipe) one plain line per round, without carriage returns."""
    file = sys.stderr if file is None else file
    if enabled is None:
        enabled = default_progress(file)
    if not enabled:
        return None
    if file is sys.stderr and in_notebook():
        bar = _notebook_bar(total)
        if bar is not None:
            return bar
        return _terminal_bar(total, file, ncols or 100)  # Jupyter renders "\r" in its output
    if ncols is not None or default_progress(file):
        return _terminal_bar(total, file, ncols)
    return RoundLines(total, file)


def _notebook_bar(total: int) -> Any:
    try:
        from tqdm.notebook import IProgress, tqdm
    except ImportError:
        return None
    if IProgress is None:  # no ipywidgets: tqdm's widget would raise
        return None
    return tqdm(total=total, desc="rounds", unit="round", leave=True)


def _terminal_bar(total: int, file: Any, ncols: int | None) -> Any:
    from tqdm import tqdm

    class TerminalBar(tqdm):
        """tqdm's bar on one terminal line: the elapsed time ticks during a long round."""

        def __init__(self) -> None:
            self.fixed_ncols = ncols
            super().__init__(
                total=total,
                desc="rounds",
                unit="round",
                file=file,
                ncols=ncols or terminal_width(file),
                bar_format=TERMINAL_FORMAT,
                mininterval=0,
                leave=True,
            )
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, name="fedplug-progress", daemon=True)
            self._ticker.start()

        def _tick(self) -> None:
            while not self._stop.wait(1.0):
                with contextlib.suppress(Exception):  # a closed stream: nothing more to show
                    self.refresh()

        @property
        def format_dict(self) -> dict[str, Any]:
            values = super().format_dict
            if self.fixed_ncols is None and not self.disable:
                values["ncols"] = self.ncols = terminal_width(self.fp)
            metrics = values.get("postfix") or ""
            if values.get("ncols") and metrics:
                bare = self.format_meter(
                    **{**values, "bar_format": TERMINAL_FORMAT.replace("{bar}", ""), "ncols": None},
                    metrics="",
                )
                room = values["ncols"] - len(bare) - MIN_BAR_CELLS - 2
                metrics = fit_metrics(metrics, room) if room > 0 else ""
            values["metrics"] = f"  {metrics}" if metrics else ""
            return values

        def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
            # shown with the next update(), never beside the count of the round before
            super().set_postfix_str(s, refresh=refresh)

        def close(self) -> None:
            stop = getattr(self, "_stop", None)
            if stop is not None:
                stop.set()
                if self._ticker is not threading.current_thread():
                    self._ticker.join()
            super().close()

    return TerminalBar()


class RoundLines:
    """Progress where there is no terminal (a log, a pipe, CI): one plain line per round."""

    def __init__(self, total: int, file: Any) -> None:
        self.total, self.file, self.n = total, file, 0
        self.text = ""
        self.last = time.perf_counter()

    def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
        self.text = s

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        line = f"round {self.n}/{self.total}  {seconds:.1f} s"
        print(f"{line}  {self.text}" if self.text else line, file=self.file, flush=True)

    def close(self) -> None:
        pass
