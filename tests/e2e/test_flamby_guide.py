"""docs/flamby.md runs as written, and examples/flamby_tcga.py reproduces the benchmark row.

Every ```python block of the guide is a complete script; the ```text block right under one shows
lines it prints. The blocks run with the FLamby test double (tests/flamby_double) on the path,
all in one child process to pay torch's import once: each block runs from its own file in its own
working folder (``runpy``, fresh globals), with FLamby's state as a new installation has it (no
accepted licence, no generated Fed-Synthetic), so a block that passes here runs on its own.
FLamby's state files in the double are moved aside for the test and restored after it
(flamby_double_support.stashed). The `$ fedplug demo --flamby` console blocks run as commands
and are compared the same way.
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
GUIDE = ROOT / "docs" / "flamby.md"
DOUBLE = ROOT / "tests" / "flamby_double"
EXAMPLE = ROOT / "examples" / "flamby_tcga.py"
FENCE = re.compile(r"^```(\S*)\s*$")
# output lines that change from run to run: timings and the demo's output paths
VOLATILE = re.compile(r" in \d+\.\d+ s; results in |^learning curve: ")


def _load_support():
    # by path, so that the double does not land on this process's sys.path
    spec = importlib.util.spec_from_file_location(
        "flamby_double_support_for_guide", DOUBLE / "flamby_double_support.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUPPORT = _load_support()
STATE_FILES = [
    SUPPORT.license_file("fed_tcga_brca"),
    SUPPORT.config_file("fed_synthetic", False),
    SUPPORT.config_file("fed_synthetic", True),
]


def flamby_state_stashed():
    """FLamby's state files in the double: moved aside, and exactly restored afterwards."""
    return SUPPORT.stashed(*STATE_FILES)


def child_env(with_flamby: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != DOUBLE]
    if with_flamby:
        paths.insert(0, str(DOUBLE))
    env["PYTHONPATH"] = os.pathsep.join(paths)
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
    if block.lang == "console" and block.code.startswith("$ fedplug demo --flamby")
]

# Runs the guide's python blocks one after the other: argv = blocks.json, work folder, results.json
RUNNER = r"""
import contextlib, io, json, os, runpy, sys, traceback
from pathlib import Path

blocks = json.loads(Path(sys.argv[1]).read_text())
work = Path(sys.argv[2])
state = [Path(p) for p in json.loads(sys.argv[4])]
from fedplug.node import local_nodes

results = []
for i, code in enumerate(blocks):
    for path in state:  # a new FLamby installation: no licence accepted, nothing generated
        if path.exists():
            path.unlink()
    folder = work / f"block{i}"
    folder.mkdir()
    os.chdir(folder)
    script = folder / "example.py"  # a file, as a reader runs it (plans ship their source)
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
    work = tmp_path_factory.mktemp("flamby-guide")
    blocks_file, results_file = work / "blocks.json", work / "results.json"
    blocks_file.write_text(json.dumps([block.code for block in PYTHON]))
    state = json.dumps([str(path) for path in STATE_FILES])
    command = [sys.executable, "-c", RUNNER, str(blocks_file), str(work), str(results_file), state]
    with flamby_state_stashed():
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
    assert len(PYTHON) >= 12
    assert len(DEMOS) >= 3


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
@pytest.mark.parametrize(
    "block", DEMOS, ids=[slug(b.code.splitlines()[0]) for b in DEMOS]
)  # fmt: skip
def test_demo_command_prints_what_the_guide_shows(block, tmp_path):
    command_line, _, comment = block.code.splitlines()[0].removeprefix("$ ").partition("#")
    argv = shlex.split(command_line)
    assert argv[0] == "fedplug"
    with_flamby = "not installed" not in comment
    command = [sys.executable, "-m", "fedplug.cli", *argv[1:], "--out", str(tmp_path / "out")]
    with flamby_state_stashed():
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=child_env(with_flamby),
            capture_output=True,
            text=True,
            timeout=120,
        )
    printed = result.stdout + result.stderr
    assert result.returncode == (0 if with_flamby else 2), printed
    expected = "\n".join(block.code.splitlines()[1:])
    if "--json" in argv:  # one JSON line: compare everything but the time taken
        shown, got = json.loads(expected), json.loads(result.stdout)
        shown.pop("seconds"), got.pop("seconds")
        assert got == shown
    else:
        missing = missing_lines(expected, printed)
        assert not missing, f"not printed: {missing}\nprinted:\n{printed}"


def table_rows(section: str, names: list[str]) -> dict[str, str]:
    """Rows of the markdown table of ``section`` whose first cell is one of ``names`` (in
    backticks)."""
    body = TEXT.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].strip("`") in names:
            rows[cells[0].strip("`")] = line
    return rows


def test_the_dataset_table_has_every_flamby_dataset_with_its_metric():
    from fedplug_flamby.datasets import DATASETS

    rows = table_rows("The datasets", list(DATASETS))
    assert set(rows) == set(DATASETS)
    for name, info in DATASETS.items():
        assert f"(`{info.metric}`)" in rows[name], name


def test_the_algorithm_table_has_every_preset_with_its_settings():
    from fedplug_flamby import ALGORITHMS

    rows = table_rows("Algorithms", list(ALGORITHMS))
    assert set(rows) == set(ALGORITHMS)
    for name, recipe in ALGORITHMS.items():
        cells = [cell.strip() for cell in rows[name].strip().strip("|").split("|")]
        assert cells[1] == f"`{json.dumps(recipe.node)}`", name
        if recipe.researcher is None:
            assert cells[2].startswith("none"), name
        else:
            assert cells[2] == f"`{json.dumps(recipe.researcher)}`", name
        assert cells[4] == recipe.what, name


def test_the_benchmark_table_quotes_flambys_published_values():
    example = _load_example()
    body = TEXT.split("\n## Benchmark\n", 1)[1]
    for method, value in example.PUBLISHED.items():
        assert re.search(rf"^{method} .*  {value:.3f}$", body, re.M), method


def _load_example():
    spec = importlib.util.spec_from_file_location("flamby_tcga_example_for_guide", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_example_reproduces_flambys_benchmark_row(tmp_path):
    command = [sys.executable, str(EXAMPLE), "--seeds", "1", "--json", "--accept-license"]
    with flamby_state_stashed():
        result = subprocess.run(
            command, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    methods = ["pooled", *(f"local {i}" for i in range(6))]
    methods += ["fedavg", "fedprox", "scaffold", "fedadam", "fedyogi"]
    assert list(document["methods"]) == methods
    for method, row in document["methods"].items():
        assert len(row["per_seed"]) == 1, method
        assert 0.5 <= row["mean"] <= 1.0, (method, row)
    assert document["metric"] == "c_index" and document["num_updates"] == 100


def test_the_example_says_how_to_install_flamby_when_it_is_missing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--seeds", "1"],
        cwd=tmp_path,
        env=child_env(with_flamby=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "FLamby is not installed" in result.stderr
    assert "pip install git+https://github.com/owkin/FLamby" in result.stderr
