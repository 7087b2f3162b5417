"""fedplug in a real Jupyter kernel (nbclient + ipykernel), as a researcher uses it: the README's
example, a plan class defined in a cell and one that subclasses a plan from an earlier cell,
results as a table the notebook renders and learning curves shown inline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

README = Path(__file__).resolve().parents[2] / "README.md"


def run_notebook(cells: list[str], cwd: Path) -> list[list[dict]]:
    """Execute ``cells`` in a fresh python3 kernel; return each cell's outputs."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return [cell.outputs for cell in notebook.cells]


def text_of(outputs: list[dict]) -> str:
    parts = []
    for output in outputs:
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
def test_the_readme_example_runs_in_a_notebook_and_shows_its_results(tmp_path):
    example = next(
        block
        for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
        if "Experiment(" in block and "run()" in block
    )
    outputs = run_notebook([example, "exp.results()", "exp.plot()"], tmp_path)
    printed = text_of(outputs[0])
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", printed).group(1))
    assert accuracy > 0.9, printed
    # the rounds' progress shows in the notebook by default (a bar Jupyter redraws in place)
    progress = "".join(o["text"] for o in outputs[0] if o.get("name") == "stderr")
    assert "\rrounds 5/5 |" in progress and "acc " in progress, progress
    [table] = [o for o in outputs[1] if o.get("output_type") == "execute_result"]
    html = table["data"]["text/html"]
    assert html.startswith("<table>") and html.count("<tr>") == 6  # header and 5 rounds
    assert "<th>val_accuracy</th>" in html
    assert any("image/png" in o.get("data", {}) for o in outputs[2]), outputs[2]


@pytest.mark.slow
def test_a_plan_subclassing_a_plan_from_an_earlier_cell_ships_to_the_nodes(tmp_path):
    cells = [
        """
import numpy as np
import torch
from torch import nn
from fedplug import Dataset, Experiment, Node
from fedplug_torch import TorchTrainingPlan

class BasePlan(TorchTrainingPlan):
    def __init__(self, model_args=None):
        super().__init__(model_args)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=self.lr())
        self.add_dependency(["import torch", "from torch import nn"])

    def lr(self):
        return 0.01
""",
        """
class FasterPlan(BasePlan):
    def lr(self):
        return 0.2
""",
        """
rng = np.random.default_rng(1)
nodes = []
for i in range(2):
    x = rng.normal(size=(120, 4)).astype(np.float32)
    nodes.append(Node(f"site-{i}", Dataset(x, (x[:, 0] > 0).astype(np.int64), tags=["nb"])))
exp = Experiment(nodes=nodes, tags=["nb"], model_class=FasterPlan, round_limit=3, seed=0,
                 training_args={"batch_size": 16, "test_ratio": 0.25})
exp.run()
print("source ships both classes:", "class BasePlan" in exp.plan_ref.source,
      "class FasterPlan" in exp.plan_ref.source)
print("accuracy", exp.history[-1]["validation_global"]["accuracy"])
""",
    ]
    outputs = run_notebook(cells, tmp_path)
    printed = text_of(outputs[2])
    assert "source ships both classes: True True" in printed, printed
    assert float(re.search(r"accuracy ([0-9.]+)", printed).group(1)) > 0.8, printed


@pytest.mark.slow
def test_the_tracking_guide_reads_back_a_notebook_experiment(tmp_path):
    """The README's example with MLflow tracking turned on, then docs/tracking.md's read-back
    snippet in the next cell, as a researcher checks their run."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "Experiment(" in b and "run()" in b)
    assert example.count("round_limit=5,") == 1
    example = example.replace("round_limit=5,", 'round_limit=5, tracking="mlflow",')
    guide = (README.parent / "docs" / "tracking.md").read_text()
    read_back = next(
        b for b in re.findall(r"```python\n(.*?)```", guide, flags=re.S) if "MlflowClient" in b
    )
    check = "print(run.info.status, len(losses), sorted(p.name for p in Path('.').glob('*.npz')))"
    outputs = run_notebook([example, read_back, "from pathlib import Path\n" + check], tmp_path)
    assert text_of(outputs[2]).split() == ["FINISHED", "5", "['model.npz']"], outputs[2]
