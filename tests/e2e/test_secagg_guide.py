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
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "secagg.md"
BENCH = ROOT / "bench" / "secagg.py"

# what the guide tests share, by path (see guide_support's docstring)
_spec = importlib.util.spec_from_file_location(
    "guide_support_for_secagg_guide", Path(__file__).with_name("guide_support.py")
)
guide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guide)

STATE_FILES = [guide.SUPPORT.license_file("fed_tcga_brca")]

TEXT = GUIDE.read_text()
BLOCKS = guide.parse_blocks(TEXT, GUIDE.name)
PYTHON = [block for block in BLOCKS if block.lang == "python"]
DEMOS = [
    block
    for block in BLOCKS
    if block.lang == "console" and block.code.startswith("$ fedplug demo --secagg")
]


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    """What each python block printed (or its traceback), from one child process."""
    work = tmp_path_factory.mktemp("secagg-guide")
    return guide.run_python_blocks(PYTHON, work, STATE_FILES)


def test_the_guide_has_its_examples():
    assert len(PYTHON) >= 7
    assert all(block.expected is not None for block in PYTHON)
    assert len(DEMOS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON)), ids=guide.block_ids(PYTHON))
def test_python_block_runs_and_prints_what_the_guide_shows(index, block_results):
    guide.check_block_result(PYTHON[index], block_results[index])


@pytest.mark.slow
@pytest.mark.parametrize("block", DEMOS, ids=[guide.slug(b.code.splitlines()[0]) for b in DEMOS])
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
    missing = guide.missing_lines(expected, printed)
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
    bench = guide.load("secagg_bench_for_guide", BENCH)
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
