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
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "flamby.md"
EXAMPLE = ROOT / "examples" / "flamby_tcga.py"

# what the guide tests share, by path (see guide_support's docstring)
_spec = importlib.util.spec_from_file_location(
    "guide_support_for_flamby_guide", Path(__file__).with_name("guide_support.py")
)
guide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guide)
STATE_FILES = [
    guide.SUPPORT.license_file("fed_tcga_brca"),
    guide.SUPPORT.config_file("fed_synthetic", False),
    guide.SUPPORT.config_file("fed_synthetic", True),
]


def flamby_state_stashed():
    """FLamby's state files in the double: moved aside, and exactly restored afterwards."""
    return guide.SUPPORT.stashed(*STATE_FILES)


TEXT = GUIDE.read_text()
BLOCKS = guide.parse_blocks(TEXT, GUIDE.name)
PYTHON = [block for block in BLOCKS if block.lang == "python"]
DEMOS = [
    block
    for block in BLOCKS
    if block.lang == "console" and block.code.startswith("$ fedplug demo --flamby")
]


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    """What each python block printed (or its traceback), from one child process."""
    work = tmp_path_factory.mktemp("flamby-guide")
    return guide.run_python_blocks(PYTHON, work, STATE_FILES)


def test_the_guide_has_its_examples():
    assert len(PYTHON) >= 12
    assert len(DEMOS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON)), ids=guide.block_ids(PYTHON))
def test_python_block_runs_and_prints_what_the_guide_shows(index, block_results):
    guide.check_block_result(PYTHON[index], block_results[index])


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", DEMOS, ids=[guide.slug(b.code.splitlines()[0]) for b in DEMOS]
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
            env=guide.child_env(with_flamby),
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
        missing = guide.missing_lines(expected, printed)
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
    example = guide.load("flamby_tcga_example_for_guide", EXAMPLE)
    body = TEXT.split("\n## Benchmark\n", 1)[1]
    for method, value in example.PUBLISHED.items():
        assert re.search(rf"^{method} .*  {value:.3f}$", body, re.M), method


@pytest.mark.slow
def test_the_example_reproduces_flambys_benchmark_row(tmp_path):
    command = [sys.executable, str(EXAMPLE), "--seeds", "1", "--json", "--accept-license"]
    with flamby_state_stashed():
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=guide.child_env(),
            capture_output=True,
            text=True,
            timeout=300,
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
        env=guide.child_env(with_flamby=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "FLamby is not installed" in result.stderr
    assert "pip install git+https://github.com/owkin/FLamby" in result.stderr
