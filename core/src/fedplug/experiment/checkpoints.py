"""Files an experiment writes and reads: model files and resumable states (checkpoints).

Both are ``.npz`` archives with a JSON description and no pickle: arrays as arrays, everything
else as JSON. A state is written to a temporary file, then renamed, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.errors import ConfigError
from fedplug.plan import Params


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The most recent ``round-NNNNN.npz`` in ``directory``, or None."""
    found = sorted(Path(directory).glob("round-*.npz"))
    return found[-1] if found else None


def write_model(path: str | Path, params: Params, meta: dict[str, Any]) -> Path:
    path = Path(path)
    arrays = {f"param:{name}": value for name, value in params.items()}
    with path.open("wb") as handle:
        np.savez(
            handle, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays
        )
    return path


def load_params(path: str | Path) -> Params:
    """Parameters from a file written by :meth:`Experiment.save_model`."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path} is not a fedplug model file (not an .npz archive)")
    with data:
        if "__meta__" not in data.files:
            raise ConfigError(f"{path} is not a fedplug model file (no __meta__ entry)")
        try:
            return {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read model file {path}: {exc}") from exc


def write_state(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a state atomically: to ``path.tmp``, then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, __state__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    tmp.replace(path)
    return path


def read_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"cannot read experiment state {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile) or "__state__" not in data.files:
        raise ConfigError(f"{path} is not a fedplug experiment state (see save_state)")
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as exc:  # e.g. a truncated file
            raise ConfigError(f"cannot read experiment state {path}: {exc}") from exc
    return arrays, json.loads(arrays.pop("__state__").tobytes())


def experiment_of(path: str | Path) -> str | None:
    """The experiment id a checkpoint belongs to (reading its description only), or None when
    the file is not a readable fedplug state."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(data["__state__"].tobytes()).get("experiment_id")
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None


def check_checkpoint_dir(directory: Path, experiment_id: str) -> None:
    """Refuse a checkpoint folder that holds another experiment's checkpoints: saving there
    would prune them away or, later, resume the wrong experiment from them."""
    others = {}
    for path in sorted(directory.glob("round-*.npz")):
        owner = experiment_of(path)
        if owner != experiment_id:
            others[path.name] = owner
    if others:
        shown = ", ".join(
            f"{name} (experiment {owner})" for name, owner in list(others.items())[:3]
        )
        raise ConfigError(
            f"checkpoint_dir {directory} holds checkpoints of another experiment: {shown}; "
            "give this experiment a folder of its own, resume that experiment with "
            "Experiment.load_checkpoint, or remove its files"
        )


def secagg_setting(saved: dict[str, Any], pm: Any) -> Any:
    """``Experiment(secagg=...)`` from a checkpoint: the scheme's name, or its settings object
    rebuilt from its fields by the registered scheme's ``settings_class`` (a checkpoint names
    no class to import)."""
    if saved.get("settings") is None:
        return saved["scheme"]
    scheme = pm.secagg_schemes[saved["scheme"]]
    settings_class = getattr(scheme, "settings_class", None)
    if settings_class is None or not dataclasses.is_dataclass(settings_class):
        raise ConfigError(
            f"secure-aggregation scheme {saved['scheme']!r} declares no settings_class to "
            "rebuild its settings from a checkpoint; pass secagg= to load_checkpoint"
        )
    try:
        return settings_class(**saved["settings"])
    except TypeError as exc:
        raise ConfigError(
            f"the checkpoint's secure-aggregation settings do not fit: {exc}"
        ) from exc


def transport_setting(saved: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The transport's registered name and options from a checkpoint's settings, in the form
    of this release (``{"name", "options"}``) or the earlier one (``{"kind": "grpc", "server":
    ..., ...}``). None: the experiment was given a transport object or in-process nodes only."""
    saved = dict(saved)
    if "kind" in saved:  # written before transports came from plugins
        kind = saved.pop("kind")
        return kind, (saved if kind != "local" else {})
    return saved.get("name"), dict(saved.get("options") or {})
