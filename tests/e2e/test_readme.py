"""The README's example experiment runs as written."""

import ast
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_example_experiment_runs_and_learns(tmp_path):
    block = next(
        b for b in python_blocks(README.read_text()) if "Experiment(" in b and "run()" in b
    )
    script = tmp_path / "example.py"
    script.write_text(block)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    metrics = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert metrics["n_samples"] == 3 * 40  # 20 % of 200 samples held out on each of 3 nodes
    assert metrics["accuracy"] > 0.9
