"""Secure aggregation (``fedplug-secagg``'s ``masking`` scheme) against plain FedAvg.

Usage: ``python bench/secagg.py [--quick] [--repeat N] [--rounds N] [--out PATH]``

1. **The scheme's own cost**, for 1M and 10M float32 parameters (two arrays, 1000 columns) with
   3, 10 and 30 nodes (``--quick``: 1M with 3 and 10). ``MaskingScheme`` and its
   ``MaskingNode`` objects are driven directly, with an in-memory ``exchange`` (no transport, no
   encoding), so the numbers are the scheme's alone:

   - ``setup``: ``MaskingScheme.begin_round``, the round's key exchange and share distribution,
     every node's part included (fresh X25519 keys, Shamir splits, share encryption), one node
     after the other as the in-memory exchange runs them;
   - ``mask / node``: ``MaskingNode.mask`` on one node's update (decrypting its shares, the range
     check, quantization to 64-bit fixed point, the self mask and one pairwise mask per peer):
     median over the nodes;
   - ``aggregate``: ``MaskingScheme.add`` for every node (summing masked vectors modulo 2^64);
   - ``unmask``: ``MaskingScheme.result``, the unmask exchange included (the survivors' answers,
     Lagrange interpolation of the secrets, removing the self masks, dividing);
   - ``FedAvg``: ``fedplug.aggregators.FedAverage`` ``begin`` + ``add`` for every node +
     ``result`` on the same updates (what the researcher does without secure aggregation; the
     nodes then do nothing).

   Node updates are generated one at a time from a per-node seed, masked (or added), folded into
   the sum and discarded, so memory stays bounded (the JSON records the peak RSS); generating
   them is not timed. The secure average is checked against FedAvg's (``max diff``). Each case
   runs ``--repeat`` times (default 3, ``--quick`` 1) on the same updates with fresh keys; the
   tables show the medians.

   Bytes per node are encoded message sizes (``fedplug.messages.encode``): the ``TrainReply``
   carrying the masked uint64 vector against the one carrying the float32 parameters, and the
   scheme's own messages: sent (the node's ``SecAggReply`` to the key, share and unmask steps)
   and received (the ``SecAggRequest`` of each of those steps, and what the round's context adds
   to the ``TrainRequest``: every node's public mask key and every encrypted share).

2. **A whole round**: the demo workload (``fedplug_demo.demo.demo_nodes``, 3 hospitals, the ``torch-mlp``
   plan and arguments of ``demo.PLANS["torch"]``, FedAvg, 20 % held out and validated every
   round, as ``fedplug demo``) with ``secagg=True`` and without, in the same run on the same
   nodes: the two experiments take turns round by round (alternating which goes first) after one
   warm-up round each; reported: medians of ``history[i]["durations"]``.

Targets: mask + unmask under 1 s for 1M parameters x 10 nodes (the median per-node mask time
plus the researcher's unmask time: a node masks while the others do, then the researcher
unmasks), and a whole demo round with secure aggregation within 1.5x of one without.
Fed-BioMed's published figure is printed beside (not measured here).

Output: the tables, and ``bench/results/secagg.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedplug import messages as msg
from fedplug.aggregators import FedAverage
from fedplug.plan import Params
from fedplug.report import format_table
from fedplug_secagg import MaskingScheme, SecAggConfig

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "secagg.json"
SIZES = (1_000_000, 10_000_000)
NODE_COUNTS = (3, 10, 30)
QUICK_SIZES = (1_000_000,)
QUICK_NODE_COUNTS = (3, 10)
COLUMNS = 1000  # each model: a (size/1000 - 1) x 1000 weight matrix and a 1000 bias
EXPERIMENT = "bench-secagg"
ROUND = 0
SEED = 20_260_000
ROUNDS = 40  # whole-round comparison: measured rounds per side (after one warm-up round)
QUICK_ROUNDS = 5
REPEAT = 3  # runs of each case of the scheme alone; times are medians

TARGET_SIZE, TARGET_NODES, TARGET_S = 1_000_000, 10, 1.0
RATIO_TARGET = 1.5
FEDBIOMED = (
    "Fed-BioMed (Joye-Libert / LOM secure aggregation): encryption under 10 s; "
    "training overhead < 1% on CPU"
)


# -- the scheme on its own ----------------------------------------------------------------------
def model_spec(size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """A model of ``size`` float32 parameters: a weight matrix and a bias."""
    if size % COLUMNS or size < 2 * COLUMNS:
        raise ValueError(f"size must be a multiple of {COLUMNS}, at least {2 * COLUMNS}")
    return {
        "dense.bias": ((COLUMNS,), "float32"),
        "dense.weight": ((size // COLUMNS - 1, COLUMNS), "float32"),
    }


def node_update(size: int, index: int) -> tuple[Params, int]:
    """Node ``index``'s trained parameters (float32, about N(0, 0.05)) and its sample count; the
    same every time it is asked for."""
    rng = np.random.default_rng([SEED, size, index])
    params = {}
    for name, (shape, dtype) in model_spec(size).items():
        value = rng.standard_normal(shape, dtype=np.dtype(dtype))
        value *= 0.05
        params[name] = value
    return params, 100 + 37 * index


def node_names(n_nodes: int) -> list[str]:
    return [f"node-{i:02d}" for i in range(n_nodes)]


class MemoryExchange:
    """The ``exchange`` of the scheme contract with in-process nodes: each step is handed to
    every node's ``MaskingNode`` in turn; steps and replies are kept, to be measured later."""

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes
        self.log: list[tuple[msg.SecAggData, dict[str, msg.SecAggData]]] = []

    def __call__(
        self, data: msg.SecAggData, names: list[str]
    ) -> tuple[dict[str, msg.SecAggData], dict[str, str]]:
        replies = {name: self.nodes[name].handle(ROUND, data) for name in names}
        self.log.append((data, replies))
        return replies, {}


def _request_bytes(data: msg.SecAggData) -> int:
    return len(msg.encode(msg.SecAggRequest(EXPERIMENT, ROUND, data)))


def _reply_bytes(node: str, data: msg.SecAggData) -> int:
    return len(msg.encode(msg.SecAggReply(EXPERIMENT, ROUND, node, data)))


def _train_request_bytes(context: msg.SecAggData | None) -> int:
    request = msg.TrainRequest(
        EXPERIMENT, ROUND, msg.PlanRef(name="plan"), {}, {}, [], {}, secagg=context
    )
    return len(msg.encode(request))


def _train_reply_bytes(node: str, params: Params, n_samples: int, masked: Any) -> int:
    reply = msg.TrainReply(EXPERIMENT, ROUND, node, params, n_samples, 1, 0.0, 0.0, secagg=masked)
    return len(msg.encode(reply))


def secagg_case(size: int, n_nodes: int) -> tuple[dict[str, Any], Params]:
    """One round of the masking scheme on ``n_nodes`` updates of ``size`` parameters."""
    scheme = MaskingScheme(SecAggConfig())
    names = node_names(n_nodes)
    nodes = {name: MaskingScheme.node_side(name, EXPERIMENT) for name in names}
    exchange = MemoryExchange(nodes)
    start = time.perf_counter()
    participants, context = scheme.begin_round(EXPERIMENT, ROUND, names, model_spec(size), exchange)
    setup_s = time.perf_counter() - start
    assert participants == names
    mask_s, add_s = [], 0.0
    for index, name in enumerate(names):
        params, n_samples = node_update(size, index)
        start = time.perf_counter()
        masked = nodes[name].mask(ROUND, context, params, n_samples)
        mask_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        scheme.add(name, n_samples, masked)
        add_s += time.perf_counter() - start
        if index == 0:
            masked_reply = _train_reply_bytes(name, {}, n_samples, masked)
            plain_reply = _train_reply_bytes(name, params, n_samples, None)
        del params, masked
    start = time.perf_counter()
    average = scheme.result(ROUND, exchange)
    unmask_s = time.perf_counter() - start

    (keys, key_replies), (shares, share_replies), (unmask, unmask_replies) = exchange.log
    sent = {
        name: _reply_bytes(name, key_replies[name])
        + _reply_bytes(name, share_replies[name])
        + _reply_bytes(name, unmask_replies[name])
        for name in names
    }
    context_bytes = _train_request_bytes(context) - _train_request_bytes(None)
    received = (
        _request_bytes(keys) + _request_bytes(shares) + context_bytes + _request_bytes(unmask)
    )
    row = {
        "params": size,
        "nodes": n_nodes,
        "threshold": scheme.threshold,
        "setup_s": setup_s,
        "mask_s_per_node": statistics.median(mask_s),
        "mask_s_per_node_max": max(mask_s),
        "mask_s_all_nodes": sum(mask_s),
        "aggregate_s": add_s,
        "unmask_s": unmask_s,
        "mask_plus_unmask_s": statistics.median(mask_s) + unmask_s,
        "bytes_per_node": {
            "plain_reply": plain_reply,
            "masked_reply": masked_reply,
            "protocol_sent": max(sent.values()),
            "protocol_received": received,
            "mask_context_in_train_request": context_bytes,
        },
    }
    return row, average


def fedavg_case(size: int, n_nodes: int) -> tuple[dict[str, Any], Params]:
    """FedAverage on the same updates as :func:`secagg_case`."""
    aggregator = FedAverage()
    initial = {name: np.zeros(shape, dtype) for name, (shape, dtype) in model_spec(size).items()}
    start = time.perf_counter()
    aggregator.begin(initial)
    seconds = time.perf_counter() - start
    for index, name in enumerate(node_names(n_nodes)):
        params, n_samples = node_update(size, index)
        start = time.perf_counter()
        aggregator.add(name, params, n_samples)
        seconds += time.perf_counter() - start
        del params
    start = time.perf_counter()
    average = aggregator.result()
    seconds += time.perf_counter() - start
    return {"fedavg_s": seconds}, average


TIMES = ("setup_s", "mask_s_per_node", "mask_s_per_node_max", "mask_s_all_nodes", "aggregate_s")
TIMES += ("unmask_s", "mask_plus_unmask_s", "fedavg_s")


def one_case(size: int, n_nodes: int, repeat: int) -> dict[str, Any]:
    """The scheme and FedAvg on the same updates, ``repeat`` times; times are medians."""
    runs = []
    for _ in range(repeat):
        row, secure = secagg_case(size, n_nodes)
        plain_row, plain = fedavg_case(size, n_nodes)
        row.update(plain_row)
        row["max_abs_diff_vs_fedavg"] = max(
            float(np.max(np.abs(secure[name].astype(np.float64) - plain[name]))) for name in plain
        )
        del secure, plain
        runs.append(row)
    row = runs[0]
    for key in TIMES:
        row[key] = statistics.median(run[key] for run in runs)
    row["max_abs_diff_vs_fedavg"] = max(run["max_abs_diff_vs_fedavg"] for run in runs)
    row["repeats"] = repeat
    return row


def scheme_cases(
    sizes: tuple[int, ...], node_counts: tuple[int, ...], repeat: int
) -> list[dict[str, Any]]:
    secagg_case(2 * COLUMNS, 3)  # warm-up: imports and first calls
    rows = []
    for size in sizes:
        for n_nodes in node_counts:
            start = time.perf_counter()
            row = one_case(size, n_nodes, repeat)
            print(
                f"  {size:>10,} params x {n_nodes:2} nodes: mask {row['mask_s_per_node']:.3f} "
                f"s/node, unmask {row['unmask_s']:.3f} s, FedAvg {row['fedavg_s']:.3f} s "
                f"({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
            )
            rows.append(row)
    return rows


def _mb(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


def _kb(count: int) -> str:
    return f"{count / 1e3:.1f} kB"


def time_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "params",
        "nodes",
        "t",
        "setup s",
        "mask s/node",
        "aggregate s",
        "unmask s",
        "mask+unmask s",
        "FedAvg s",
        "max diff",
    ]
    body = [
        [
            f"{row['params']:,}",
            row["nodes"],
            row["threshold"],
            row["setup_s"],
            row["mask_s_per_node"],
            row["aggregate_s"],
            row["unmask_s"],
            row["mask_plus_unmask_s"],
            row["fedavg_s"],
            f"{row['max_abs_diff_vs_fedavg']:.1e}",
        ]
        for row in rows
    ]
    return format_table(headers, body)


def bytes_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "params",
        "nodes",
        "plain reply",
        "masked reply",
        "x",
        "protocol sent",
        "protocol received",
    ]
    body = []
    for row in rows:
        b = row["bytes_per_node"]
        body.append(
            [
                f"{row['params']:,}",
                row["nodes"],
                _mb(b["plain_reply"]),
                _mb(b["masked_reply"]),
                f"{b['masked_reply'] / b['plain_reply']:.2f}",
                _kb(b["protocol_sent"]),
                _kb(b["protocol_received"]),
            ]
        )
    return format_table(headers, body)


# -- a whole round through Experiment -----------------------------------------------------------
def whole_round(rounds: int) -> dict[str, Any]:
    """The demo's rounds with and without secure aggregation, taking turns on the same nodes."""
    from fedplug import Experiment
    from fedplug_demo.demo import PLANS, TAGS, demo_nodes

    plan, _, model_args, training_args = PLANS["torch"]
    nodes = demo_nodes(3, 0)
    experiments = {
        secure: Experiment(
            nodes=nodes,
            tags=TAGS,
            training_plan=plan,
            model_args=model_args,
            training_args={**training_args, "test_ratio": 0.2},
            seed=0,
            progress=False,
            secagg=secure,
        )
        for secure in (False, True)
    }
    durations: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        for index in range(rounds + 1):
            order = (False, True) if index % 2 else (True, False)
            for secure in order:
                row = experiments[secure].run_once()
                if index:  # round 0 is the warm-up: plans built, first calls
                    durations[secure].append(row["durations"])
    finally:
        for node in nodes:
            node.stop()
    result: dict[str, Any] = {"rounds": rounds, "warmup_rounds": 1}
    for secure, label in ((False, "plain"), (True, "secagg")):
        history = experiments[secure].history
        result[label] = {
            key: statistics.median(d[key] for d in durations[secure])
            for key in ("round_s", "train_s", "aggregate_s", "validate_s")
        }
        result[label]["accuracy"] = history[-1]["validation_global"]["accuracy"]
    result["ratio"] = result["secagg"]["round_s"] / result["plain"]["round_s"]
    plain, secure = (experiments[s].global_params for s in (False, True))
    result["max_abs_param_diff"] = max(
        float(np.max(np.abs(plain[name] - secure[name]))) for name in plain
    )
    return result


def round_table(result: dict[str, Any]) -> str:
    headers = ["demo round", "s per round", "train s", "aggregate s", "validate s", "accuracy"]
    body = [
        [
            label,
            result[key]["round_s"],
            result[key]["train_s"],
            result[key]["aggregate_s"],
            result[key]["validate_s"],
            result[key]["accuracy"],
        ]
        for key, label in (("plain", "without secagg"), ("secagg", "secagg=True"))
    ]
    return format_table(headers, body)


# -- report -------------------------------------------------------------------------------------
def targets(rows: list[dict[str, Any]], whole: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for row in rows:
        if (row["params"], row["nodes"]) == (TARGET_SIZE, TARGET_NODES):
            found["mask_plus_unmask"] = {
                "params": TARGET_SIZE,
                "nodes": TARGET_NODES,
                "mask_s_per_node": row["mask_s_per_node"],
                "unmask_s": row["unmask_s"],
                "seconds": row["mask_plus_unmask_s"],
                "target_s": TARGET_S,
                "met": row["mask_plus_unmask_s"] < TARGET_S,
            }
    found["whole_round_ratio"] = {
        "ratio": whole["ratio"],
        "overhead_ms": 1000 * (whole["secagg"]["round_s"] - whole["plain"]["round_s"]),
        "target": RATIO_TARGET,
        "met": whole["ratio"] <= RATIO_TARGET,
    }
    return found


def target_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    if "mask_plus_unmask" in found:
        t = found["mask_plus_unmask"]
        lines.append(
            f"target: mask + unmask for {t['params']:,} params x {t['nodes']} nodes = median "
            f"mask per node {t['mask_s_per_node']:.3f} s + researcher unmask (result(), unmask "
            f"exchange included) {t['unmask_s']:.3f} s = {t['seconds']:.3f} s "
            f"(< {t['target_s']:g} s: {'met' if t['met'] else 'NOT met'})"
        )
    r = found["whole_round_ratio"]
    lines.append(
        f"target: demo round with secagg / without = {r['ratio']:.2f}x, "
        f"{r['overhead_ms']:+.1f} ms per round (<= {r['target']:g}x: "
        f"{'met' if r['met'] else 'NOT met'})"
    )
    lines.append(f"published, not measured here: {FEDBIOMED}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1M parameters, 3 and 10 nodes")
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"demo rounds per side (default {ROUNDS})"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"runs of each case (default {REPEAT}, quick 1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    sizes, node_counts = (QUICK_SIZES, QUICK_NODE_COUNTS) if args.quick else (SIZES, NODE_COUNTS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    repeat = args.repeat or (1 if args.quick else REPEAT)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes make the seconds noisy",
              file=sys.stderr)  # fmt: skip
    started = time.perf_counter()
    rows = scheme_cases(sizes, node_counts, repeat)
    whole = whole_round(rounds)
    found = targets(rows, whole)
    config = SecAggConfig()

    print(
        f"\n## the masking scheme alone (clip {config.clip:g}, precision_bits "
        f"{config.precision_bits}, default threshold t); seconds"
    )
    print(time_table(rows))
    print("\n## bytes per node and round (encoded messages)")
    print(bytes_table(rows))
    print(
        f"\n## a whole demo round (3 hospitals, torch-mlp, FedAvg, validation every round); "
        f"medians of {rounds} rounds per side, taking turns"
    )
    print(round_table(whole))
    print(
        f"largest parameter difference with / without secagg after {rounds + 1} rounds: "
        f"{whole['max_abs_param_diff']:.1e}"
    )
    print()
    for line in target_lines(found):
        print(line)

    document = {
        "meta": {
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
            f"Python {platform.python_version()}",
            "versions": {
                dist: _version(dist)
                for dist in ("fedplug", "fedplug-secagg", "fedplug-torch", "cryptography", "numpy")
            },
            "quick": args.quick,
            "loadavg_before": load,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "config": {
            "clip": config.clip,
            "precision_bits": config.precision_bits,
            "threshold": "default: max(2, ceil(2n/3))",
        },
        "cases": rows,
        "whole_round": whole,
        "targets": found,
        "published": {"Fed-BioMed": FEDBIOMED},
        "tables": {
            "time": time_table(rows),
            "bytes": bytes_table(rows),
            "whole_round": round_table(whole),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"\nbenchmark took {document['meta']['seconds']:.0f} s (peak RSS "
        f"{document['meta']['peak_rss_mb']:.0f} MB); JSON in {args.out}"
    )
    return 0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
