"""docs/optimization.md runs as written: every ```python block is a complete script, the ```text
block right under one shows lines it prints, and the algorithm table covers the demo's algorithms."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "optimization.md"

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


# what the guide tests share, by path (see guide_support's docstring)
_spec = importlib.util.spec_from_file_location(
    "guide_support_for_optimization_guide", Path(__file__).with_name("guide_support.py")
)
guide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guide)


BLOCKS = [b for b in guide.parse_blocks(GUIDE.read_text(), GUIDE.name) if b.lang == "python"]


def test_the_guide_has_python_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=guide.block_ids(BLOCKS))
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
    from fedplug_demo.demo import ALGORITHMS

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
