"""The ``tensorboard`` tracker: an experiment's rounds as TensorBoard event files.

Each applied round is one event at ``step = round_index`` holding the round's scalars
(:func:`round_scalars`); the first round also writes the experiment's settings (the HParams
dashboard and a text table); :meth:`Experiment.run`'s end writes the final model to
``<log_dir>/model.npz`` and a text summary. The event file is flushed after each round, so a
running ``tensorboard --logdir runs`` shows the experiment live.

The writer is tensorboard's own ``EventFileWriter`` (what ``torch.utils.tensorboard`` wraps),
with scalars as ``simple_value`` summaries, as ``SummaryWriter.add_scalar`` writes them: float32,
read back by TensorBoard and by ``EventAccumulator.Scalars``.
"""

from __future__ import annotations

import json
import numbers
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from fedplug.errors import ConfigError
from fedplug.experiment.tracking import experiment_settings, round_metrics


def round_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A round's history row as ``{tag: value}`` (core's :func:`round_metrics` names)."""
    return round_metrics(row)


def experiment_params(experiment: Any) -> dict[str, str | int | float | bool]:
    """The experiment's settings, flat (core's :func:`experiment_settings`), as HParams take
    them: JSON for anything nested."""
    return {key: _plain(value) for key, value in experiment_settings(experiment).items()}


def _plain(value: Any) -> str | int | float | bool:
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):  # NumPy's too
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return json.dumps(value, sort_keys=True, default=str)


def _markdown_table(rows: dict[str, Any]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    for key, value in rows.items():
        text = str(value).replace("|", "\\|")
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


class TensorBoardTracker:
    """``Experiment(tracking="tensorboard")`` or ``tracking={"tensorboard": {options}}``.

    :param log_dir: the folder of the event files and the final model (default
        ``runs/<experiment id>``, under the current directory, as ``SummaryWriter``'s).
    :param flush_secs: the writer also flushes on its own at this period (it flushes after each
        round anyway).
    """

    def __init__(
        self, experiment: Any, log_dir: str | Path | None = None, flush_secs: float = 30
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else Path("runs") / experiment.id
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"tracker 'tensorboard': cannot create log_dir {str(self.log_dir)!r}: {exc}"
            ) from None
        self.model_path = self.log_dir / "model.npz"
        self._writer: EventFileWriter | None = EventFileWriter(
            str(self.log_dir), flush_secs=flush_secs
        )
        self._settings_written = False

    def _write(self, step: int, summary: summary_pb2.Summary) -> None:
        if self._writer is None:
            raise RuntimeError("the TensorBoard writer is closed")
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write_settings(self, experiment: Any, step: int) -> None:
        params = experiment_params(experiment)
        self._write(step, hparams_summary.hparams_pb(params, trial_id=experiment.id))
        self._write(step, text_summary.text_pb("experiment/settings", _markdown_table(params)))
        self._settings_written = True

    def round_finished(self, round_index: int, summary: dict[str, Any], experiment: Any) -> None:
        if not self._settings_written:
            self._write_settings(experiment, round_index)
        values = [
            summary_pb2.Summary.Value(tag=tag, simple_value=value)
            for tag, value in round_scalars(summary).items()
        ]
        self._write(round_index, summary_pb2.Summary(value=values))
        self._writer.flush()

    def experiment_finished(self, experiment: Any) -> None:
        experiment.save_model(self.model_path)
        last = experiment.history[-1] if experiment.history else {}
        final = {
            "rounds": experiment.round_index,
            "model": str(self.model_path),
            **{f"validation {k}": v for k, v in (last.get("validation_global") or {}).items()},
        }
        step = max(experiment.round_index - 1, 0)
        self._write(step, text_summary.text_pb("experiment/final", _markdown_table(final)))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
