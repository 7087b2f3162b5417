"""What the tests of an executed guide (docs/flamby.md, docs/secagg.md) share.

A guide's fenced blocks with the heading above each (a ```python block with the ```text block
right under it, the lines it prints), and a runner that executes the python blocks one after the
other in one child process (torch is imported once): each block from its own file in its own
working folder (``runpy``, fresh globals), with the FLamby test double (tests/flamby_double) on
the path and FLamby's state files as a new installation has them (moved aside for the run and
restored after it: flamby_double_support.stashed).

The test files load this module by path (pytest runs with ``--import-mode=importlib``), as they
load the double's support module: nothing lands on this process's ``sys.path``.
"""

# no ``from __future__ import annotations``: with string annotations, @dataclass looks this
# module up in sys.modules, where loading it by path does not put it
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "flamby_double"
FENCE = re.compile(r"^```(\S*)\s*$")
# output lines that change from run to run: timings and the demo's output paths
VOLATILE = re.compile(r" in \d+\.\d+ s; results in |^learning curve: ")


def load(name: str, path: Path):
    """The module at ``path``, by path: neither the double nor bench/ land on sys.path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUPPORT = load("flamby_double_support_for_guides", DOUBLE / "flamby_double_support.py")


def child_env(with_flamby: bool = True) -> dict[str, str]:
    """This process's environment, with the FLamby double first on PYTHONPATH (or not on it)."""
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


def parse_blocks(text: str, name: str) -> list[Block]:
    """The fenced blocks of guide ``name``, each with the heading above it (python ones with
    their output)."""
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
        assert i < len(lines), f"unclosed fence opened at line {start + 1} of {name}"
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


def block_ids(blocks: list[Block]) -> list[str]:
    """Test ids for python blocks: their position and the heading above them."""
    return [f"{i}-{slug(b.heading)}" for i, b in enumerate(blocks)]


def missing_lines(expected: str, printed: str) -> list[str]:
    """The lines of ``expected`` (but blank and volatile ones) that ``printed`` lacks."""
    lines = {line.rstrip() for line in printed.splitlines()}
    return [
        line
        for line in expected.splitlines()
        if line.strip() and not VOLATILE.search(line) and line.rstrip() not in lines
    ]


# Runs the guide's python blocks one after the other: argv = blocks.json, work folder,
# results.json, FLamby state files (JSON)
RUNNER = r"""
import contextlib, io, json, os, runpy, sys, traceback
from pathlib import Path

blocks = json.loads(Path(sys.argv[1]).read_text())
work = Path(sys.argv[2])
state = [Path(p) for p in json.loads(sys.argv[4])]

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
    results.append({"stdout": out.getvalue(), "error": error})
Path(sys.argv[3]).write_text(json.dumps(results))
"""


def run_python_blocks(blocks: list[Block], work: Path, state_files: list[Path]) -> list[dict]:
    """What each of ``blocks`` printed (or its traceback), from one child process run in
    ``work``, with FLamby's ``state_files`` removed before each block and restored after all."""
    blocks_file, results_file = work / "blocks.json", work / "results.json"
    blocks_file.write_text(json.dumps([block.code for block in blocks]))
    state = json.dumps([str(path) for path in state_files])
    command = [sys.executable, "-c", RUNNER, str(blocks_file), str(work), str(results_file), state]
    with SUPPORT.stashed(*state_files):
        result = subprocess.run(
            command, cwd=work, env=child_env(), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, f"the block runner failed:\n{result.stderr}"
    return json.loads(results_file.read_text())


def check_block_result(block: Block, result: dict) -> None:
    """The block ran without an error and printed the lines the guide shows under it."""
    assert result["error"] is None, (
        f"block under '{block.heading}' failed:\n{result['error']}\nstdout:\n{result['stdout']}"
    )
    if block.expected is not None:
        missing = missing_lines(block.expected, result["stdout"])
        assert not missing, (
            f"the output shown under the block in '{block.heading}' differs from what it prints;"
            f"\nnot printed: {missing}\nprinted:\n{result['stdout']}"
        )
