"""Many clients: fedplug-ray against fedplug's local transport and the no-framework floor.

Usage: ``python bench/ray.py [--clients 100 1000 10000] [--rounds 5] [--systems ...]
[--flower-python PATH]`` (``make bench-ray`` runs it all)

Workload: BENCHMARKS.md's W2 recipe (``Linear(20, 2)``, cross-entropy, torch SGD at 0.05, one
epoch of batches of 10 per round, 50 samples per client, 5 rounds) with its clients generated
from their ids (``fedplug_ray.clients.w2_data``), so that any number of them can be made where
they train. Each system runs in a fresh interpreter, one after the other:

- ``floor``: a plain torch loop over the clients in one process (each client loads the global
  weights, trains, its state is summed weighted by its size), the data built before the clock
  starts;
- ``fedplug-local``: ``Experiment`` over in-process nodes, the local transport;
- ``fedplug-ray``: ``Experiment(transport="ray")`` on a Ray instance of this machine (one actor
  per CPU), clients made in the actors by ``fedplug_ray.clients:w2_client``: the researcher
  never holds their data.

Reported per system and client count: seconds per round (the median of rounds 2 to the last;
the first round includes building plans, and for Ray the actors' start), the first round, the
whole run (imports and start-up included), and the researcher's peak RSS (its own process: Ray's
actors are other processes). Ratios to the floor are of the same run. ``flower``: Flower 1.42's
simulation engine (``flwr.simulation.run_simulation``, Ray) on the same recipe and data, Flower's
FedAvg over every client each round, one CPU per client; it runs in its own virtual environment
(Flower pins Ray 2.55.1): ``make bench-ray`` creates ``bench/.venv-flower`` and passes
``--flower-python``; without that option Flower is left out.

Output: the table, and ``bench/results/ray.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# this file is ray.py: as a script, its folder comes first on sys.path and would shadow Ray's
# package for ``import ray``
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
RESULTS = BENCH / "results" / "ray.json"
SEED, ROUND_SEED_STEP = 0, 1_000_003
LAYERS, LR, BATCH = [20, 2], 0.05, 10
SYSTEMS = ("floor", "fedplug-local", "fedplug-ray", "flower")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# -- children -------------------------------------------------------------------------------------
def child_floor(clients: int, rounds: int) -> dict[str, Any]:
    import torch
    from fedplug_ray.clients import w2_data
    from torch import nn

    data = [tuple(torch.from_numpy(a) for a in w2_data(i)) for i in range(clients)]
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(*LAYERS))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    total = sum(len(x) for x, _ in data)
    start, ends = time.monotonic(), []
    for r in range(rounds):
        summed = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for x, y in data:
            model.load_state_dict(global_state)
            generator = torch.Generator().manual_seed(SEED + ROUND_SEED_STEP * (r + 1))
            order = torch.randperm(len(x), generator=generator)
            for b in range(0, len(x), BATCH):
                index = order[b : b + BATCH]
                optimizer.zero_grad()
                loss_fn(model(x[index]), y[index]).backward()
                optimizer.step()
            for k, v in model.state_dict().items():
                summed[k] += v * len(x)
        global_state = {k: v / total for k, v in summed.items()}
        ends.append(time.monotonic())
    return {"start": start, "ends": ends}


def child_fedplug(clients: int, rounds: int, transport: str) -> dict[str, Any]:
    from fedplug_ray.clients import W2_TAGS, w2_client

    from fedplug import Experiment, get_plugin_manager, hookimpl

    ends: list[float] = []

    class Clock:
        @hookimpl
        def fedplug_round_finished(self, round_index: int) -> None:
            ends.append(time.monotonic())

    pm = get_plugin_manager()
    pm.register(Clock(), name="bench-clock")
    if transport == "ray":
        where: dict[str, Any] = {
            "transport": "ray",
            "transport_options": {
                "clients": "fedplug_ray.clients:w2_client",
                "num_clients": clients,
                "init_options": {"num_cpus": os.cpu_count()},
            },
        }
    else:
        where = {"nodes": [w2_client(i) for i in range(clients)]}
    start = time.monotonic()
    with Experiment(
        **where,
        tags=W2_TAGS,
        training_plan="torch-mlp",
        model_args={"layers": LAYERS},
        training_args={"epochs": 1, "batch_size": BATCH, "lr": LR},
        round_limit=rounds,
        seed=SEED,
        progress=False,
        plugin_manager=pm,
    ) as exp:
        built = time.monotonic()
        exp.run()
    return {"start": start, "built": built, "ends": ends}


def w2_data_copy(client_id: int) -> tuple[Any, Any]:
    """``fedplug_ray.clients.w2_data`` for the Flower child, whose virtual environment has no
    fedplug (the parent checks that both give the same data before it measures)."""
    import numpy as np

    w_true = np.random.default_rng(SEED).normal(size=20)
    rng = np.random.default_rng([SEED, client_id])
    x = rng.normal(size=(50, 20)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(x @ w_true)))
    return x, (rng.random(50) < p).astype(np.int64)


def child_flower(clients: int, rounds: int) -> dict[str, Any]:
    """Flower's simulation engine (Ray) on the same recipe: a ClientApp training one epoch of
    W2's client ``partition-id``, a ServerApp running Flower's FedAvg over every client each
    round; rounds are timed by FedAvg's server-side evaluation callback."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch import nn

    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        x, y = (torch.from_numpy(a) for a in w2_data_copy(int(context.node_config["partition-id"])))
        model = nn.Sequential(nn.Linear(*LAYERS))
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
        for b in range(0, len(x), BATCH):
            index = order[b : b + BATCH]
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(x)}),
            }
        )
        return Message(content=content, reply_to=message)

    ends: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Linear(*LAYERS))
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )

        def clock(server_round: int, arrays: Any) -> None:
            ends.append(time.monotonic())

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            evaluate_fn=clock,
        )

    start = time.monotonic()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    # the callback also runs before round 1 (on the initial model): that is the start
    return {"start": ends[0] if len(ends) > rounds else start, "ends": ends[-rounds:]}


def child(system: str, clients: int, rounds: int) -> None:
    began = float(os.environ.get("BENCH_LAUNCH", time.monotonic()))
    if system == "floor":
        timing = child_floor(clients, rounds)
    elif system == "flower":
        timing = child_flower(clients, rounds)
    else:
        timing = child_fedplug(clients, rounds, system.removeprefix("fedplug-"))
    ends, start = timing["ends"], timing.get("built", timing["start"])
    per_round = [b - a for a, b in zip([start, *ends], ends, strict=False)]
    print(
        json.dumps(
            {
                "system": system,
                "clients": clients,
                "rounds": len(ends),
                "s_per_round": statistics.median(per_round[1:]) if len(per_round) > 1 else None,
                "first_round_s": per_round[0],
                "wall_s": ends[-1] - began,
                "researcher_peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


# -- the parent -----------------------------------------------------------------------------------
def measure(
    system: str, clients: int, rounds: int, timeout: float, python: str = sys.executable
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_LAUNCH": repr(time.monotonic()), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [python, __file__, "--child", system, str(clients), str(rounds)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"system": system, "clients": clients, "error": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"system": system, "clients": clients, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def table(rows: list[dict[str, Any]]) -> str:
    from fedplug.report import format_table

    floors = {r["clients"]: r for r in rows if r["system"] == "floor" and "error" not in r}
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([str(r["clients"]), r["system"], "-", "-", "-", "-", r["error"][:60]])
            continue
        floor = floors.get(r["clients"])
        ratio = f"{r['s_per_round'] / floor['s_per_round']:.2f}x" if floor else "-"
        cells.append(
            [
                str(r["clients"]),
                r["system"],
                f"{r['s_per_round']:.3f}",
                f"{r['first_round_s']:.2f}",
                f"{r['wall_s']:.1f}",
                f"{r['researcher_peak_rss_mb']:.0f}",
                ratio,
            ]
        )
    headers = ["clients", "system", "s/round", "first round s", "wall s", "peak RSS MB", "vs floor"]
    return format_table(headers, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--flower-python",
        help="the python of a virtual environment with flwr[simulation]==1.42.0 and torch "
        "(Flower pins another Ray than fedplug-ray); without it Flower is not measured",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        system, clients, rounds = args.child
        child(system, int(clients), int(rounds))
        return 0
    systems = [s for s in args.systems if s != "flower" or args.flower_python]
    if "flower" in systems:
        from fedplug_ray.clients import w2_data

        for client_id in (0, 1, 9999):  # the Flower child's copy of the generator agrees
            ours, copy = w2_data(client_id), w2_data_copy(client_id)
            if not all((a == b).all() for a, b in zip(ours, copy, strict=True)):
                raise SystemExit("bench/ray.py's copy of w2_data differs from fedplug_ray's")
    rows = []
    for clients in args.clients:
        for system in systems:
            python = args.flower_python if system == "flower" else sys.executable
            row = measure(system, clients, args.rounds, args.timeout, python)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    document = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}",
        "recipe": {"layers": LAYERS, "lr": LR, "batch_size": BATCH, "rounds": args.rounds},
        "rows": rows,
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
