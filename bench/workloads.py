"""Reference workloads W1-W3 of BENCHMARKS.md: fedplug's local transport against the no-framework floor.

Usage: ``python bench/workloads.py [--workloads W1,W2,W3] [--repeat N] [--quick]``

Every measurement is a fresh interpreter launched with ``sys.executable``: ``wl_fedplug.py``
(in-process ``Node`` objects, an ``Experiment``, a ``TorchTrainingPlan`` subclass shipped to the
nodes as source) or ``wl_floor.py`` (a plain torch loop doing the same training in one process).
Both start from the same seeded weights and make the same SGD updates, so they end with the same
model (checked: "same model as floor").

- ``wall_s``: launch to exit of the child (interpreter start, imports, data, nodes, all rounds,
  final accuracy, interpreter exit), measured here.
- ``first_round_s``: launch to the end of the first round; ``s_per_round``: median of the
  per-round times (each round timed in the child on CLOCK_MONOTONIC, which all processes share).
- ``peak_rss_mb``: peak RSS of all the run's processes: ``ru_maxrss`` from ``os.wait4`` (exact,
  largest single process) or the sum over the process tree polled every 50 ms, whichever is larger.
- ``other_cpu_s``: CPU time other processes of the machine used during the run (``/proc/stat``):
  a busy neighbour shows up there; a run it disturbed (more than a quarter of a core) is
  discarded and measured once more.

fedplug runs in three local-transport modes: sequential (the default, ``workers=1``), threads
(``workers`` = one per core) and worker processes (``processes=True``). Configurations run
round-robin, ``--repeat`` times (default 3); tables show medians. Also measured: the wall time of
``import fedplug``, ``fedplug --help`` and ``fedplug plugins`` with every plugin installed.
Output: one JSON line per run, one per configuration (medians), then tables; everything also goes
to ``bench/results/workloads.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "workloads.json"
WORKLOADS = ("W1", "W2", "W3")
NODES = {"W1": 3, "W2": 100, "W3": 4}
CHILDREN = {"fedplug": BENCH / "wl_fedplug.py", "floor": BENCH / "wl_floor.py"}
MODES = ("sequential", "threads", "processes")  # local transport: default, threads, processes
MODE_ARGS = {
    "sequential": [],
    "threads": ["--workers", str(os.cpu_count() or 1)],
    "processes": ["--processes"],
}
STARTUP_REPEAT = 7
RSS_POLL_S = 0.05

# The targets: within 1.5x of the floor on every workload, whole run included; in
# absolute terms on this machine (1.5x the published floor of BENCHMARKS.md):
RATIO_TARGET = 1.5
ABSOLUTE_TARGETS = {"W1": ("wall_s", 2.7), "W2": ("s_per_round", 0.21), "W3": ("s_per_round", 0.44)}
#: every plugin of this repository installed (each one's entry point is loaded)
STARTUP_TARGETS_S = {"import fedplug": 0.5, "fedplug --help": 0.5, "fedplug plugins": 1.5}

# BENCHMARKS.md (2 CPU cores, 23 GiB, no GPU; medians of 3 runs; 2026-11-20). Published numbers,
# NOT measured here: workload, system, wall s, s/round, first round s, peak RSS MB.
REFERENCE = [
    ("W1", "no framework (plain torch)", 1.82, 0.010, 1.60, 381),
    ("W1", "Flower 1.42 simulation (Ray)", 17.97, 0.11, 9.49, 1447),
    ("W1", "Fed-BioMed 6.4.1 (gRPC)", 25.57, 0.29, 0.77, 3658),
    ("W2", "no framework (plain torch)", 2.05, 0.14, 1.55, 305),
    ("W2", "Flower 1.42 simulation (Ray)", 22.01, 1.55, 9.42, 1313),
    ("W2", "Fed-BioMed 6.4.1 (first 20 clients)", 124.72, 1.02, 4.24, 21334),
    ("W3", "no framework (plain torch)", 2.59, 0.29, 1.90, 585),
    ("W3", "Flower 1.42 simulation (Ray)", 17.75, 2.23, 8.70, 2394),
    ("W3", "Fed-BioMed 6.4.1 (gRPC)", 40.81, 4.70, 8.12, 8261),
]

METRICS = (
    "wall_s",
    "s_per_round",
    "first_round_s",
    "peak_rss_mb",
    "accuracy",
    "startup_s",
    "setup_s",
    "rounds_s",
    "finish_s",
    "cpu_s",
    "other_cpu_s",
    "param_l2",
)


@dataclass(frozen=True)
class Config:
    workload: str
    system: str  # "fedplug" | "floor"
    mode: str | None = None  # fedplug's local transport mode, one of MODES

    @property
    def label(self) -> str:
        if self.system == "floor":
            return "floor (plain torch)"
        workers = min(os.cpu_count() or 1, NODES[self.workload])
        return {
            "sequential": "fedplug sequential (workers=1, default)",
            "threads": f"fedplug threads ({workers} workers)",
            "processes": f"fedplug processes ({workers} workers)",
        }[self.mode or "sequential"]

    def command(self) -> list[str]:
        args = MODE_ARGS[self.mode] if self.system == "fedplug" and self.mode else []
        return [sys.executable, str(CHILDREN[self.system]), self.workload, *args]


# -- running children ---------------------------------------------------------------------------
def _busy_cpu_s() -> float | None:
    """CPU seconds all processes of the machine have spent (from /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _tree_rss(pid: int) -> tuple[int, int]:
    """Summed RSS in bytes of ``pid`` and its descendants, and how many processes that is."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, count, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
            count += 1
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                stack.extend(int(child) for child in children)
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return total, count


class _RSSPoller(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.processes = pid, 0, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(RSS_POLL_S):
            rss, count = _tree_rss(self.pid)
            self.peak, self.processes = max(self.peak, rss), max(self.processes, count)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Child:
    returncode: int
    timed_out: bool
    wall_s: float
    launch: float
    peak_rss_mb: float
    largest_process_rss_mb: float
    processes: int
    cpu_s: float
    other_cpu_s: float | None
    stdout: str
    stderr: str


def launch(cmd: list[str], timeout: float) -> Child:
    """Run ``cmd`` (in its own process group) to completion and measure it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy = _busy_cpu_s()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=BENCH, start_new_session=True)
        poller = _RSSPoller(proc.pid)
        poller.start()
        expired = threading.Event()

        def kill_group() -> None:  # the child and any worker processes it started
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Timer(timeout, kill_group)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - start
        finally:
            killer.cancel()
            poller.stop()
        busy_after = _busy_cpu_s()
        with contextlib.suppress(ProcessLookupError):  # orphaned workers of a failed run
            os.killpg(proc.pid, signal.SIGKILL)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        largest = usage.ru_maxrss / 1024  # KiB on Linux
        return Child(
            returncode=proc.returncode,
            timed_out=expired.is_set(),
            wall_s=wall,
            launch=start,
            peak_rss_mb=max(largest, poller.peak / 2**20),
            largest_process_rss_mb=largest,
            processes=max(poller.processes, 1),
            cpu_s=cpu,
            other_cpu_s=None if None in (busy, busy_after) else max(busy_after - busy - cpu, 0.0),
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def measure(config: Config, repeat: int, timeout: float) -> dict[str, Any]:
    """One run of ``config``: the JSON row of its measurements."""
    child = launch(config.command(), timeout)
    row: dict[str, Any] = {
        "kind": "run",
        "workload": config.workload,
        "system": config.system,
        "mode": config.mode,
        "config": config.label,
        "repeat": repeat,
    }
    lines = child.stdout.strip().splitlines()
    if child.timed_out or child.returncode != 0 or not lines:
        error = (
            f"timed out after {timeout:.0f} s (killed)"
            if child.timed_out
            else f"exit status {child.returncode}"
        )
        tail = "\n".join(child.stderr.strip().splitlines()[-12:])
        return {**row, "error": error, "wall_s": child.wall_s, "stderr_tail": tail}
    report = json.loads(lines[-1])
    ends = report["round_ends_mono"]
    rounds = [b - a for a, b in zip([report["run_start_mono"], *ends], ends, strict=False)]
    return {
        **row,
        "workers": report["workers"],
        "wall_s": child.wall_s,
        "s_per_round": statistics.median(rounds),
        "first_round_s": ends[0] - child.launch,
        "accuracy": report["accuracy"],
        "peak_rss_mb": child.peak_rss_mb,
        "largest_process_rss_mb": child.largest_process_rss_mb,
        "processes": child.processes,
        # where the wall time goes: interpreter start, imports, data/nodes/model, rounds, the rest
        "interpreter_s": report["start_mono"] - child.launch,
        "startup_s": report["imported_mono"] - child.launch,
        "setup_s": report["run_start_mono"] - report["imported_mono"],
        "rounds_s": ends[-1] - report["run_start_mono"],
        "finish_s": child.wall_s - (ends[-1] - child.launch),
        "round_s": rounds,
        "cpu_s": child.cpu_s,
        "other_cpu_s": child.other_cpu_s,
        "torch_threads": report["torch_threads"],
        "param_l2": report["param_l2"],
        **({"plan_shipped_as": report["plan_shipped_as"]} if "plan_shipped_as" in report else {}),
    }


def _disturbed(row: dict[str, Any]) -> bool:
    """Whether other processes used more than a quarter of a core during the run."""
    other = row.get("other_cpu_s")
    return other is not None and other > max(0.5, 0.25 * row["wall_s"])


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in ("round_s", "stderr_tail")}


def median_row(config: Config, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    row: dict[str, Any] = {
        "kind": "median",
        "workload": config.workload,
        "system": config.system,
        "mode": config.mode,
        "config": config.label,
        "n": len(good),
    }
    if not good:
        return {**row, "error": runs[-1]["error"] if runs else "not run"}
    row["workers"] = good[0]["workers"]
    for key in METRICS:
        values = [r[key] for r in good if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    return row


def startup_times(repeat: int, timeout: float) -> dict[str, Any]:
    """Median wall time of ``import fedplug``, ``fedplug --help`` and ``fedplug plugins`` (and
    of a bare interpreter), with every plugin of this repository installed."""
    script = Path(sys.executable).parent / "fedplug"
    fedplug = [str(script)]
    if not script.exists():
        code = "import sys; from fedplug.cli import main; sys.exit(main())"
        fedplug = [sys.executable, "-c", code]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import fedplug": [sys.executable, "-c", "import fedplug"],
        "fedplug --help": [*fedplug, "--help"],
        "fedplug plugins": [*fedplug, "plugins"],
    }
    results = {}
    for name, cmd in commands.items():
        launch(cmd, timeout)  # warm the page cache and the bytecode caches
        times = []
        for _ in range(repeat):
            child = launch(cmd, timeout)
            if child.returncode != 0:
                raise SystemExit(f"{name} failed:\n{child.stderr}")
            times.append(child.wall_s)
        results[name] = {"median_s": statistics.median(times), "runs_s": times}
    return results


def check_w1_split() -> None:
    """The floor's copy of W1's data and split must be fedplug_demo.demo's, index for index."""
    import numpy as np
    import wl_common

    from fedplug_demo.demo import label_skew_split, load_breast_cancer

    x, y = load_breast_cancer()
    bx, by = wl_common.breast_cancer()
    ours = wl_common.w1_node_indices(by, wl_common.SEED)
    theirs = label_skew_split(y, 3, wl_common.SEED)
    same = np.array_equal(x, bx) and np.array_equal(y, by)
    same = same and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    if not same:
        raise SystemExit("bench/wl_common.py's W1 data or split differs from fedplug_demo.demo's")


# -- reporting ----------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *map(line, cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3f}" if value >= 0.01 else f"{value:.4f}"
    return str(value)


def _ratio(row: dict[str, Any] | None, base: dict[str, Any] | None, key: str) -> float | None:
    if row is None or base is None or row.get(key) is None or not base.get(key):
        return None
    return row[key] / base[key]


def _x(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}x"
    return text if limit is None else f"{text} {'ok' if value <= limit else 'OVER'}"


def _find(summary: list[dict[str, Any]], workload: str, system: str, mode: str | None) -> Any:
    for row in summary:
        if (row["workload"], row["system"], row["mode"]) == (workload, system, mode):
            return None if "error" in row else row
    return None


def report_tables(summary: list[dict[str, Any]], startup: dict[str, Any]) -> dict[str, list]:
    """The rows of every table (also saved in the JSON)."""
    measured, targets, modes, errors = [], [], [], []
    for row in summary:
        floor = _find(summary, row["workload"], "floor", None)
        if "error" in row:
            measured.append([row["workload"], row["config"], "ERROR", *["-"] * 11])
            errors.append(f"{row['workload']} {row['config']}: {row['error']}")
            continue
        fedplug = row["system"] == "fedplug"
        same_model = None
        if fedplug and floor is not None:
            diff = abs(row["param_l2"] - floor["param_l2"]) / floor["param_l2"]
            same_model = f"{'yes' if diff < 1e-4 else 'NO'} ({diff:.0e})"
        measured.append(
            [
                row["workload"],
                row["config"],
                row["wall_s"],
                row["s_per_round"],
                row["first_round_s"],
                row["peak_rss_mb"],
                row["accuracy"],
                _x(_ratio(row, floor, "wall_s"), RATIO_TARGET) if fedplug else "-",
                _x(_ratio(row, floor, "s_per_round"), RATIO_TARGET) if fedplug else "-",
                same_model,
                row["startup_s"],
                row["setup_s"],
                row["finish_s"],
                row["other_cpu_s"],
            ]
        )

    for workload in WORKLOADS:
        floor = _find(summary, workload, "floor", None)
        default = _find(summary, workload, "fedplug", "sequential")
        threads = _find(summary, workload, "fedplug", "threads")
        if default is None and threads is None:
            continue
        metric, limit = ABSOLUTE_TARGETS[workload]
        # (what, metric, compared to the floor?, bound)
        checks = [(f"{metric} <= {limit} s", metric, False, limit)]
        for key in dict.fromkeys((metric, "wall_s")):
            checks.append((f"{key} <= {RATIO_TARGET}x floor", key, True, RATIO_TARGET))
        for what, key, relative, bound in checks:
            cells: list[Any] = [workload, what]
            for row in (default, threads):
                value = _ratio(row, floor, key) if relative else (row or {}).get(key)
                if value is None:
                    cells += ["-", "-"]
                else:
                    shown = f"{value:.2f}x" if relative else f"{value:.3f} s"
                    cells += [shown, "met" if value <= bound else "NOT MET"]
            targets.append(cells)
    for name, value in startup.items():
        if name in STARTUP_TARGETS_S:
            bound = STARTUP_TARGETS_S[name]
            met = "met" if value["median_s"] < bound else "NOT MET"
            targets.append(
                [
                    "start-up",
                    f"{name} < {bound} s",
                    f"{value['median_s']:.3f} s",
                    met,
                    "",
                    "",
                ]
            )

    for workload in WORKLOADS:
        sequential = _find(summary, workload, "fedplug", "sequential")
        rows = [r for r in summary if r["workload"] == workload and r["system"] == "fedplug"]
        good = [r for r in rows if "error" not in r]
        best_round = min(good, key=lambda r: r["s_per_round"])["mode"] if good else None
        best_wall = min(good, key=lambda r: r["wall_s"])["mode"] if good else None
        for row in sorted(rows, key=lambda r: MODES.index(r["mode"])):
            if "error" in row:
                modes.append([workload, row["mode"], "-", "ERROR", *["-"] * 6])
                continue
            fastest = [
                what
                for what, best in (("s/round", best_round), ("wall", best_wall))
                if best == row["mode"]
            ]
            modes.append(
                [
                    workload,
                    row["mode"],
                    row["workers"],
                    row["wall_s"],
                    row["s_per_round"],
                    row["first_round_s"],
                    row["peak_rss_mb"],
                    _x(_ratio(row, sequential, "wall_s")),
                    _x(_ratio(row, sequential, "s_per_round")),
                    ", ".join(fastest) or "",
                ]
            )
    return {"measured": measured, "targets": targets, "modes": modes, "errors": errors}


def print_report(parts: dict[str, list], startup: dict[str, Any], meta: dict[str, Any]) -> None:
    print(
        f"\n## Measured here: {meta['machine']}; medians of {meta['repeat']} runs, each a fresh "
        "process"
    )
    print(
        table(
            [
                "workload",
                "system",
                "wall s",
                "s/round",
                "first round s",
                "peak RSS MB",
                "accuracy",
                "wall vs floor",
                "s/round vs floor",
                "same model as floor (rel. diff of param norm)",
                "start+imports s",
                "setup s",
                "after last round s",
                "other procs CPU s",
            ],
            parts["measured"],
        )
    )
    for error in parts["errors"]:
        print(f"ERROR: {error}")
    print(
        f"\n## Targets of the issue: within {RATIO_TARGET}x of the no-framework floor on every "
        "workload, whole run included"
    )
    print(
        table(
            [
                "workload",
                "target",
                "fedplug default (sequential)",
                "status",
                "fedplug threads",
                "status",
            ],
            parts["targets"],
        )
    )
    print(f"\n## Start-up: median wall time of {STARTUP_REPEAT} fresh processes")
    print(table(["command", "wall s"], [[name, v["median_s"]] for name, v in startup.items()]))
    if parts["modes"]:
        print("\n## Local transport: sequential (default, workers=1) vs threads vs processes")
        print(
            table(
                [
                    "workload",
                    "mode",
                    "workers",
                    "wall s",
                    "s/round",
                    "first round s",
                    "peak RSS MB",
                    "wall vs sequential",
                    "s/round vs sequential",
                    "fastest",
                ],
                parts["modes"],
            )
        )
    print(
        "\n## Published reference numbers from BENCHMARKS.md -- NOT measured here (same kind of "
        "machine: 2 cores, 23 GiB; 2026-11-20)"
    )
    print(
        table(
            ["workload", "system", "wall s", "s/round", "first round s", "peak RSS MB"],
            [[*r[:2], *(f"{v:,}" for v in r[2:])] for r in REFERENCE],
        )
    )


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated subset of W1,W2,W3 (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument("--quick", action="store_true", help="one run per configuration")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="fedplug local-transport modes to run (default: all of "
        f"{','.join(MODES)}; sequential is the default mode)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=45.0,
        help="seconds before a run is killed; a configuration that timed out is "
        "not repeated (default 45)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    args = parser.parse_args(argv)
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or set(args.workloads) - set(WORKLOADS):
        parser.error(f"--workloads takes a comma-separated subset of {','.join(WORKLOADS)}")
    args.modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    if args.quick:
        args.repeat = 1
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(BENCH))
    check_w1_split()
    cores = os.cpu_count() or 1
    configs = []
    for workload in args.workloads:
        configs.append(Config(workload, "floor"))
        for mode in args.modes:  # threads are sequential when there is one core or one node
            if mode != "threads" or min(cores, NODES[workload]) > 1:
                configs.append(Config(workload, "fedplug", mode))
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"warning: load average {load:.2f} before the benchmark: other processes will make "
            "the numbers noisy (see the 'other procs CPU s' column)",
            file=sys.stderr,
        )

    started = time.monotonic()
    # warm the page cache and bytecode caches (torch is ~1 GB of files); not measured
    launch([sys.executable, "-c", "import torch, fedplug_torch.plan, fedplug_demo.demo"], 120)
    startup = startup_times(STARTUP_REPEAT, args.timeout)
    runs: dict[Config, list[dict[str, Any]]] = {c: [] for c in configs}
    discarded: list[dict[str, Any]] = []
    for repeat in range(args.repeat):  # round-robin, so that drift hits every configuration
        for config in configs:
            if any(r.get("error", "").startswith("timed out") for r in runs[config]):
                continue
            row = measure(config, repeat, args.timeout)
            if _disturbed(row):  # another process took CPU meanwhile: measure once more
                row["discarded"] = "other processes used the CPU during this run"
                discarded.append(row)
                print(json.dumps(_brief(row)), flush=True)
                row = measure(config, repeat, args.timeout)
            runs[config].append(row)
            print(json.dumps(_brief(row)), flush=True)
    summary = [median_row(c, runs[c]) for c in configs]
    for row in summary:
        print(json.dumps(row), flush=True)
    meta = {
        "machine": f"{cores} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {_version('torch')}",
        "repeat": args.repeat,
        "cpu_count": cores,
        "fedplug": _version("fedplug"),
        "fedplug-torch": _version("fedplug-torch"),
        "loadavg_before": load,
        "workloads": args.workloads,
        "modes": args.modes,
        "ratio_target": RATIO_TARGET,
        "absolute_targets": ABSOLUTE_TARGETS,
        "startup_targets_s": STARTUP_TARGETS_S,
    }
    parts = report_tables(summary, startup)
    print_report(parts, startup, meta)
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s; JSON in {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reference = [
        dict(
            zip(
                ("workload", "system", "wall_s", "s_per_round", "first_round_s", "peak_rss_mb"),
                r,
                strict=True,
            )
        )
        for r in REFERENCE
    ]
    document = {
        "meta": meta,
        "startup": startup,
        "runs": [row for config in configs for row in runs[config]],
        "discarded_runs": discarded,
        "summary": summary,
        "tables": parts,
        "reference_published_not_measured": reference,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any("error" in row for row in summary) else 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
