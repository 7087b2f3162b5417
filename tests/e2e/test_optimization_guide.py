"""docs/optimization.md runs as written: every ```python block is a complete script, the ```text
block right under one shows lines it prints, and the algorithm table covers the demo's algorithms."""

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "optimization.md"
FENCE = re.compile(r"^```(\S*)\s*$")

# demo name -> the algorithm's name in the guide's table
ALGORITHM_NAMES = {
    "fedavg": "FedAvg",
    "fedavgm": "FedAvgM",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "scaffold": "Scaffold",
}


@dataclass
class Block:
    heading: str
    code: str
    expected: str | None  # the ```text block that directly follows, if any


def parse_blocks(text: str) -> list[Block]:
    """The guide's ```python blocks, each with the heading above it and its output block."""
    fenced: list[tuple[str, str, str, int, int]] = []  # (lang, heading, body, start, end line)
    heading = "intro"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if match is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            i += 1
            continue
        start = i
        body = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"unclosed fence opened at line {start + 1} of {GUIDE.name}"
        fenced.append((match.group(1), heading, "\n".join(body) + "\n", start, i))
        i += 1
    blocks = []
    for index, (lang, heading, body, _, end) in enumerate(fenced):
        if lang != "python":
            continue
        expected = None
        if index + 1 < len(fenced):
            next_lang, _, next_body, next_start, _ = fenced[index + 1]
            between = lines[end + 1 : next_start]
            if next_lang == "text" and all(not line.strip() for line in between):
                expected = next_body
        blocks.append(Block(heading, body, expected))
    return blocks


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


BLOCKS = parse_blocks(GUIDE.read_text())


def test_the_guide_has_python_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"{i}-{slug(block.heading)}" for i, block in enumerate(BLOCKS)]
)
def test_python_block_runs(block, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(block.code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"block under '{block.heading}' failed:\n{result.stderr}\nstdout:\n{result.stdout}"
    )
    if block.expected is not None:
        printed = {line.rstrip() for line in result.stdout.splitlines()}
        missing = [
            line for line in block.expected.splitlines() if line.strip() and line not in printed
        ]
        assert not missing, (
            f"the output shown under the block in '{block.heading}' differs from what it prints;"
            f"\nnot printed: {missing}\nprinted:\n{result.stdout}"
        )


def table_rows(text: str) -> dict[str, str]:
    """Rows of the algorithm table, by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in ALGORITHM_NAMES.values():
            rows[cells[0]] = line
    return rows


def test_the_algorithm_table_has_a_row_per_demo_algorithm_with_its_settings():
    from fedplug.demo import ALGORITHMS

    assert set(ALGORITHMS) == set(ALGORITHM_NAMES)
    rows = table_rows(GUIDE.read_text())
    assert set(rows) == set(ALGORITHM_NAMES.values())
    for key, name in ALGORITHM_NAMES.items():
        row = rows[name]
        assert f"`--algorithm {key}`" in row
        assert "`fedavg`" in row  # the demo's aggregator
        recipe = ALGORITHMS[key]
        if recipe.researcher is None:
            assert "agg_optimizer=Optimizer(" not in row
        else:
            assert f"agg_optimizer=Optimizer(lr={recipe.researcher['lr']}" in row
        if recipe.node is not None:
            assert f'"lr": {recipe.node["lr"]}' in row
        for side in (recipe.node, recipe.researcher):
            for kind in ("modules", "regularizers"):
                for spec in (side or {}).get(kind, []):
                    name_, config = (spec, {}) if isinstance(spec, str) else spec
                    assert f'"{name_}"' in row, f"{name}: {name_} missing"
                    for setting, value in config.items():
                        assert f'"{setting}": {value}' in row, f"{name}: {setting} missing"
