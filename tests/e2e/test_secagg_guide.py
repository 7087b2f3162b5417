"""docs/secagg.md runs as written, and bench/secagg.py --quick produces its JSON.

Every ```python block of the guide is a complete script; the ```text block right under one shows
lines it prints. The blocks run one after the other in one child process (torch is imported
once), each from its own file in its own working folder (``runpy``, fresh globals), with the
FLamby test double on the path for the ``flamby_experiment`` block and FLamby's licence state as
a new installation has it (moved aside for the test and restored after it). The
``$ fedplug demo --secagg`` console blocks run as commands and are compared the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "secagg.md"
BENCH = ROOT / "bench" / "secagg.py"
DOUBLE = ROOT / "tests" / "flamby_double"
FENCE = re.compile(r"^```(\S*)\s*$")
# output lines that change from run to run: timings and the demo's output paths
VOLATILE = re.compile(r" in \d+\.\d+ s; results in |^learning curve: ")


def _load(name: str, path: Path):
    # by path: neither the double nor bench/ land on this process's sys.path
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUPPORT = _load("flamby_double_support_for_secagg_guide", DOUBLE / "flamby_double_support.py")
STATE_FILES = [SUPPORT.license_file("fed_tcga_brca")]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != DOUBLE]
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLE), *paths])
    return env


@dataclass
class Block:
    lang: str
    heading: str
    code: str
    expected: str | None  # python blocks: the ```text block that directly follows, if any


def parse_blocks(text: str) -> list[Block]:
    """The guide's fenced blocks, each with the heading above it (python ones with their output)."""
    fenced: list[tuple[str, str, str, int, int]] = []
    heading = "intro"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].startswith("#"):
                heading = lines[i].lstrip("#").strip()
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"unclosed fence opened at line {start + 1} of {GUIDE.name}"
        fenced.append((match.group(1), heading, "\n".join(body) + "\n", start, i))
        i += 1
    blocks = []
    for index, (lang, heading, body, _, end) in enumerate(fenced):
        expected = None
        if lang == "python" and index + 1 < len(fenced):
            next_lang, _, next_body, next_start, _ = fenced[index + 1]
            if next_lang == "text" and not any(s.strip() for s in lines[end + 1 : next_start]):
                expected = next_body
        blocks.append(Block(lang, heading, body, expected))
    return blocks


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


TEXT = GUIDE.read_text()
BLOCKS = parse_blocks(TEXT)
PYTHON = [block for block in BLOCKS if block.lang == "python"]
DEMOS = [
    block
    for block in BLOCKS
    if block.lang == "console" and block.code.startswith("$ fedplug demo --secagg")
]

# Runs the guide's python blocks one after the other: argv = blocks.json, work folder,
# results.json, FLamby state files (JSON)
RUNNER = r"""
import contextlib, io, json, os, runpy, sys, traceback
from pathlib import Path

blocks = json.loads(Path(sys.argv[1]).read_text())
work = Path(sys.argv[2])
state = [Path(p) for p in json.loads(sys.argv[4])]
from fedplug.node import local_nodes

results = []
for i, code in enumerate(blocks):
    for path in state:  # a new FLamby installation: no licence accepted
        if path.exists():
            path.unlink()
    folder = work / f"block{i}"
    folder.mkdir()
    os.chdir(folder)
    script = folder / "example.py"
    script.write_text(code)
    out = io.StringIO()
    error = None
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except BaseException:
            error = traceback.format_exc()
    for node in local_nodes():
        node.stop()
    results.append({"stdout": out.getvalue(), "error": error})
Path(sys.argv[3]).write_text(json.dumps(results))
"""


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    """What each python block printed (or its traceback), from one child process."""
    work = tmp_path_factory.mktemp("secagg-guide")
    blocks_file, results_file = work / "blocks.json", work / "results.json"
    blocks_file.write_text(json.dumps([block.code for block in PYTHON]))
    state = json.dumps([str(path) for path in STATE_FILES])
    command = [sys.executable, "-c", RUNNER, str(blocks_file), str(work), str(results_file), state]
    with SUPPORT.stashed(*STATE_FILES):
        result = subprocess.run(
            command, cwd=work, env=child_env(), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, f"the block runner failed:\n{result.stderr}"
    return json.loads(results_file.read_text())


def missing_lines(expected: str, printed: str) -> list[str]:
    lines = {line.rstrip() for line in printed.splitlines()}
    return [
        line
        for line in expected.splitlines()
        if line.strip() and not VOLATILE.search(line) and line.rstrip() not in lines
    ]


def test_the_guide_has_its_examples():
    assert len(PYTHON) >= 7
    assert all(block.expected is not None for block in PYTHON)
    assert len(DEMOS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "index", range(len(PYTHON)), ids=[f"{i}-{slug(b.heading)}" for i, b in enumerate(PYTHON)]
)
def test_python_block_runs_and_prints_what_the_guide_shows(index, block_results):
    block, result = PYTHON[index], block_results[index]
    assert result["error"] is None, (
        f"block under '{block.heading}' failed:\n{result['error']}\nstdout:\n{result['stdout']}"
    )
    if block.expected is not None:
        missing = missing_lines(block.expected, result["stdout"])
        assert not missing, (
            f"the output shown under the block in '{block.heading}' differs from what it prints;"
            f"\nnot printed: {missing}\nprinted:\n{result['stdout']}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("block", DEMOS, ids=[slug(b.code.splitlines()[0]) for b in DEMOS])
def test_demo_command_prints_what_the_guide_shows(block, tmp_path):
    command_line = block.code.splitlines()[0].removeprefix("$ ")
    argv = shlex.split(command_line)
    assert argv[0] == "fedplug"
    command = [sys.executable, "-m", "fedplug.cli", *argv[1:], "--out", str(tmp_path / "out")]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    printed = result.stdout + result.stderr
    expected = "\n".join(block.code.splitlines()[1:])
    refused = expected.startswith("fedplug: error:")
    assert result.returncode == (2 if refused else 0), printed
    missing = missing_lines(expected, printed)
    assert not missing, f"not printed: {missing}\nprinted:\n{printed}"
    if refused:
        assert not (tmp_path / "out").exists()  # refused before any round


def section(title: str) -> str:
    """The text under the guide's ``## title`` heading, up to the next one (outside fences)."""
    lines, inside, fenced = [], False, False
    for line in TEXT.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            inside = line == f"## {title}"
            continue
        if inside:
            lines.append(line)
    assert lines, f"no section {title!r} in {GUIDE.name}"
    return "\n".join(lines)


def test_the_benchmark_section_has_every_case_and_fedbiomeds_figure():
    bench = _load("secagg_bench_for_guide", BENCH)
    body = section("Benchmark")
    assert bench.FEDBIOMED in body
    for size in bench.SIZES:
        for n_nodes in bench.NODE_COUNTS:
            rows = re.findall(rf"^{size:,} +{n_nodes} +\S", body, re.M)
            assert len(rows) == 2, (size, n_nodes)  # the time table and the bytes table
    assert "target: mask + unmask for 1,000,000 params x 10 nodes" in body
    assert "target: demo round with secagg / without" in body


def test_the_guide_shows_the_refusals():
    """The refusals appear in the outputs the block tests compare with the product's."""
    body = section("What is protected, and what is not")
    assert (
        "SecAggError: secure aggregation cannot be used with optimizer module 'scaffold-client'"
        in body
    )
    assert "SecAggError: secure aggregation computes only a weighted sum" in body
    assert "(nothing is clipped silently)" in body


@pytest.mark.slow
def test_the_quick_benchmark_writes_its_rows(tmp_path):
    out = tmp_path / "secagg.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["meta"]["quick"] is True
    cases = document["cases"]
    assert [(row["params"], row["nodes"]) for row in cases] == [(1_000_000, 3), (1_000_000, 10)]
    for row in cases:
        for key in ("setup_s", "mask_s_per_node", "aggregate_s", "unmask_s", "fedavg_s"):
            assert row[key] > 0, (row["nodes"], key)
        assert row["mask_plus_unmask_s"] == pytest.approx(row["mask_s_per_node"] + row["unmask_s"])
        assert row["max_abs_diff_vs_fedavg"] < 1e-6  # the secure average is FedAvg's
        sizes = row["bytes_per_node"]
        assert sizes["masked_reply"] == pytest.approx(2 * sizes["plain_reply"], rel=1e-3)
        assert 0 < sizes["protocol_sent"] < sizes["protocol_received"]
    assert cases[0]["threshold"] == 2 and cases[1]["threshold"] == 7
    whole = document["whole_round"]
    assert whole["rounds"] == 5
    for side in ("plain", "secagg"):
        assert whole[side]["round_s"] > 0 and whole[side]["train_s"] > 0
    # the same training, to fixed-point precision: at most a test sample may tip
    assert whole["secagg"]["accuracy"] == pytest.approx(whole["plain"]["accuracy"], abs=0.02)
    assert whole["max_abs_param_diff"] < 1e-5
    assert whole["ratio"] == pytest.approx(whole["secagg"]["round_s"] / whole["plain"]["round_s"])
    assert set(document["targets"]) == {"mask_plus_unmask", "whole_round_ratio"}
    assert document["published"]["Fed-BioMed"] in result.stdout
    assert "target: mask + unmask" in result.stdout
