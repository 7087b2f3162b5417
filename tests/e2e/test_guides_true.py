"""README.md and docs/*.md claim only what the installed code does.

Each check reads every guide and fails naming the file and line of each false claim:

- no sentence says that something is not built, not available or not implemented *yet*, is
  coming soon, or waits for a later release or issue (such sentences went stale before: the
  history of the guides had three);
- every ``fedplug COMMAND ...`` in a code span, a shell block or a shown output is a command of
  ``fedplug --help``, every deeper word a sub-command (``fedplug node dataset add --help``
  succeeds), and every ``--option`` right after it one that the command's help lists;
- every ``transport="..."``, ``aggregator="..."``, ``training_plan="..."`` and
  ``model_class="..."`` names a registered transport, aggregator or training plan, and every
  optimizer module in ``Optimizer(modules=[...], regularizers=[...])`` a registered one (names
  a guide itself registers in its example code, and those of examples/, count as registered; a
  name the guide shows being refused, in an error message, is left alone);
- the keywords given to ``Experiment``, ``Optimizer``, ``Node``, ``Dataset`` and
  ``LocalTransport`` in python blocks and code spans are parameters of them, and every literal
  ``training_args`` dict is accepted by ``TrainingArgs.from_dict``.
"""

import ast
import inspect
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import fedplug
from fedplug.errors import FedplugError
from fedplug.plan import TrainingArgs
from fedplug.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

STALE = re.compile(
    r"""
    \bnot\s+(?:\w+\s+)?(?:built|available|implemented|supported|ready|written|released|shipped
        |done|there|wired\s+up)\s+yet\b
    | \bnot\s+yet\s+(?:\w+\s+)?(?:built|available|implemented|supported|ready|written|released
        |shipped|done|there)\b
    | \bnot\s+implemented\b
    | \bcoming\s+soon\b
    | \b(?:a|in\s+a)\s+(?:later|future|coming)\s+(?:issue|release|version)\b
    | \b(?:is|are)\s+(?:still\s+)?planned\b
    | \bwork\s+in\s+progress\b
    | \b(?:TODO|TBD|FIXME)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
# what the guides once said, and sentences that must stay allowed
STALE_BEFORE = [
    "fedplug's remote deployment, which is not built yet (see [Nodes](#nodes)).",
    "the gRPC transport of fedplug's design (not\nbuilt yet, a later issue) as well.",
    "comes with it: the plugin is not available yet, and",
    "Model export is coming soon.",
    "Differential privacy is not implemented yet.",
]
STALE_NEVER = [
    "is not approved on this node; its code was not run.",
    "they still work for one release, with a `DeprecationWarning`.",
    "A node that reconnects takes part again from the next round.",
    "raise NotImplementedError",
]

SHELL = {"bash", "sh", "shell", "console", "text", ""}
CHECKED_CALLS = {
    name: getattr(fedplug, name)
    for name in ("Experiment", "Optimizer", "Node", "Dataset", "LocalTransport")
}
NAMED = {  # keyword given a string -> the registry its value must be in
    "transport": "transports",
    "aggregator": "aggregators",
    "training_plan": "training_plans",
    "model_class": "training_plans",
}
OPTIMIZER_LISTS = ("modules", "regularizers")
WORD = r"[a-z][a-z-]*(?![\w.-])"
COMMAND = re.compile(rf"(?<![\w.\[\"'-])fedplug((?:[ \t]+{WORD}(?:\|{WORD})*)+)")
OPTION = re.compile(r"--[a-z][a-z0-9-]*")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
KEYWORD_STRING = re.compile(
    r"\b(transport|aggregator|training_plan|model_class)\s*=\s*\"([^\"]+)\""
)
# sub-commands whose further --options are not theirs: they go to a dataset type's loader
LOADER_OPTIONS = {("node", "dataset", "add")}


@dataclass
class Block:
    lang: str
    line: int  # the line of the block's first line of code, in the file
    text: str


@dataclass
class Guide:
    path: Path
    text: str
    blocks: list[Block]
    spans: list[tuple[int, str]]  # (line, code) of inline code spans outside blocks

    def where(self, line: int) -> str:
        return f"{self.path.relative_to(ROOT)}:{line}"


def read_guide(path: Path) -> Guide:
    lines = path.read_text().splitlines()
    blocks, spans, prose = [], [], []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            lang, indent = stripped[3:].strip(), len(lines[i]) - len(lines[i].lstrip())
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            blocks.append(Block(lang, start + 1, "\n".join(body) + "\n"))
        else:
            prose.append((i + 1, lines[i]))
        i += 1
    # code spans may wrap over two lines of a paragraph
    text = "\n".join(line for _, line in prose)
    numbers = [number for number, _ in prose]
    for match in SPAN.finditer(text):
        spans.append((numbers[text.count("\n", 0, match.start())], match.group(1)))
    return Guide(path, path.read_text(), blocks, spans)


GUIDE_LIST = [read_guide(path) for path in GUIDES]
IDS = [guide.path.name for guide in GUIDE_LIST]


def line_of(text: str, offset: int, first: int = 1) -> int:
    return first + text.count("\n", 0, offset)


# -- stale sentences ------------------------------------------------------------------------


def stale_claims(guide: Guide) -> list[str]:
    return [
        f"{guide.where(line_of(guide.text, m.start()))}: {' '.join(m.group(0).split())!r}"
        for m in STALE.finditer(guide.text)
    ]


def test_the_stale_claim_pattern_catches_what_the_guides_once_said():
    for sentence in STALE_BEFORE:
        assert STALE.search(sentence), sentence
    for sentence in STALE_NEVER:
        assert not STALE.search(sentence), sentence


@pytest.mark.parametrize("guide", GUIDE_LIST, ids=IDS)
def test_no_guide_says_something_is_not_built_yet(guide):
    found = stale_claims(guide)
    assert not found, (
        "a guide says that something is missing or coming; say what exists instead (or, if it "
        "truly does not exist, what to use meanwhile, without 'yet'):\n" + "\n".join(found)
    )


# -- fedplug commands -------------------------------------------------------------------------


def command_mentions(guide: Guide) -> list[tuple[int, tuple[str, ...], list[str]]]:
    """``(line, words, options)`` for every ``fedplug WORD...`` in a code span, in a shell
    block (comments left out), or in a shown output (``text`` block) where it starts a line or a
    code span (not in a table's prose); ``a|b`` alternatives give one mention each."""
    sources = [(b.line, b.text, b.lang == "text") for b in guide.blocks if b.lang in SHELL]
    sources += [(line, span, False) for line, span in guide.spans]
    mentions = []
    for first, original, output in sources:
        text = original.replace("\\\n", "  ")  # continuation lines joined, offsets kept
        if not output:  # shell comments, the same length in blanks
            text = re.sub(r"(?m)(^|\s)#.*$", lambda m: " " * len(m.group(0)), text)
        for match in COMMAND.finditer(text):
            before = text[: match.start()]
            if re.search(r"\b(?:from|import)\W*$", before):
                continue  # python: `from fedplug import ...`
            if output and not re.search(r"(?:^|\n)[ \t$]*$|`$", before):
                continue
            rest = text[match.end() :].split("\n", 1)[0]
            options = []
            for token in rest.split():
                if token.startswith("#") or token in ("|", "||", "&&", ";", "&"):
                    break  # the end of this command
                found = OPTION.match(token.lstrip("[("))
                if found:
                    options.append(found.group(0))
            words = match.group(1).split()
            paths: list[tuple[str, ...]] = [()]
            for word in words:
                paths = [(*path, choice) for path in paths for choice in word.split("|")]
            line = line_of(original, match.start(), first)
            mentions += [(line, path, options) for path in paths]
    return mentions


def fedplug_help(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedplug", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def top_level_commands() -> set[str]:
    result = fedplug_help()
    assert result.returncode == 0, result.stderr
    commands = set()
    listing = result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    for line in listing.splitlines():
        if re.match(r"^ {4}\S", line):
            commands.add(line.split()[0])
    assert {"plugins", "optimizers"} <= commands, result.stdout
    return commands


@pytest.fixture(scope="module")
def help_texts() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    return {}


@pytest.mark.parametrize("guide", GUIDE_LIST, ids=IDS)
def test_every_fedplug_command_in_the_guides_exists(guide, top_level_commands, help_texts):
    problems = []
    for line, path, options in command_mentions(guide):
        where = guide.where(line)
        if path[0] not in top_level_commands:
            problems.append(
                f"{where}: `fedplug {' '.join(path)}`: there is no command {path[0]!r} "
                f"(fedplug --help lists {', '.join(sorted(top_level_commands))})"
            )
            continue
        # the longest prefix that is a command: further words may be its positional arguments
        for size in range(len(path), 0, -1):
            if path[:size] not in help_texts:
                help_texts[path[:size]] = fedplug_help(*path[:size])
            result = help_texts[path[:size]]
            if result.returncode == 0:
                break
        if size < len(path) and "invalid choice" in help_texts[path[: size + 1]].stderr:
            problems.append(
                f"{where}: `fedplug {' '.join(path)}`: {path[size]!r} is not a sub-command of "
                f"`fedplug {' '.join(path[:size])}`"
            )
            continue
        if path[:size] in LOADER_OPTIONS:
            continue
        unknown = [o for o in options if not re.search(rf"{re.escape(o)}\b", result.stdout)]
        if unknown:
            problems.append(
                f"{where}: `fedplug {' '.join(path[:size])}` has no option {', '.join(unknown)}"
            )
    assert not problems, "\n".join(problems)


def test_the_command_check_sees_the_commands_of_the_guides():
    mentions = {path for guide in GUIDE_LIST for _, path, _ in command_mentions(guide)}
    assert ("node", "dataset", "add") in mentions
    assert ("certs", "init") in mentions
    assert ("plugins",) in mentions and ("optimizers",) in mentions


# -- registered names, keywords and training arguments ----------------------------------------


def python_sources(guide: Guide) -> list[tuple[int, str]]:
    """``(first line, code)`` of the python blocks, and of the code spans that parse."""
    sources = [(b.line, b.text) for b in guide.blocks if b.lang == "python"]
    for line, span in guide.spans:
        if "(" in span or "=" in span:
            try:
                ast.parse(span)
            except SyntaxError:
                continue
            sources.append((line, span))
    return sources


def parsed(guide: Guide):
    """``(first line, tree)`` of every python source of the guide that parses."""
    trees = []
    for line, code in python_sources(guide):
        try:
            trees.append((line, ast.parse(code)))
        except SyntaxError:  # a fragment (e.g. a call's arguments only)
            continue
    return trees


def call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def registered_in_examples() -> set[str]:
    """Names registered with ``register("name", ...)`` by the code of examples/ and of every
    guide's python blocks (a plugin the guide writes)."""
    names = set()
    sources = [p.read_text() for p in (ROOT / "examples").rglob("*.py")]
    sources += [code for guide in GUIDE_LIST for _, code in python_sources(guide)]
    for source in sources:
        names.update(re.findall(r"\bregister\(\s*\"([^\"]+)\"", source))
    return names


def shown_refused(guide: Guide, name: str) -> bool:
    """Whether the guide shows ``name`` refused in an error message."""
    return any(
        f"'{name}'" in line and ("Error" in line or "error:" in line)
        for line in guide.text.splitlines()
    )


@pytest.fixture(scope="module")
def known():
    pm = get_plugin_manager()
    extra = registered_in_examples()
    return {
        registry: set(getattr(pm, registry)) | extra
        for registry in ("transports", "aggregators", "training_plans", "optimizer_modules")
    }


def option_names(node: ast.AST) -> list[str]:
    """Module names in a ``modules=[...]`` list: strings, or the first item of (name, config)."""
    names = []
    if isinstance(node, (ast.List, ast.Tuple)):
        for item in node.elts:
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                names.append(item.value)
            elif (
                isinstance(item, (ast.Tuple, ast.List))
                and item.elts
                and isinstance(item.elts[0], ast.Constant)
                and isinstance(item.elts[0].value, str)
            ):
                names.append(item.elts[0].value)
    return names


@pytest.mark.parametrize("guide", GUIDE_LIST, ids=IDS)
def test_the_names_the_guides_use_are_registered(guide, known):
    problems = []
    for first, text in [(b.line, b.text) for b in guide.blocks] + guide.spans:
        for match in KEYWORD_STRING.finditer(text):
            keyword, name = match.groups()
            registry = NAMED[keyword]
            if name not in known[registry] and not shown_refused(guide, name):
                problems.append(
                    f"{guide.where(line_of(text, match.start(), first))}: {keyword}={name!r} is "
                    f"not registered (registered {registry.replace('_', ' ')}: "
                    f"{', '.join(sorted(known[registry]))})"
                )
    for first, tree in parsed(guide):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and call_name(node) == "Optimizer"):
                continue
            for keyword in node.keywords:
                if keyword.arg not in OPTIMIZER_LISTS:
                    continue
                for name in option_names(keyword.value):
                    if name not in known["optimizer_modules"] and not shown_refused(guide, name):
                        problems.append(
                            f"{guide.where(first + node.lineno - 1)}: optimizer module "
                            f"{name!r} is not registered (`fedplug optimizers` lists them)"
                        )
    assert not problems, "\n".join(problems)


def accepted_keywords(target) -> set[str] | None:
    """The keywords ``target`` accepts, or None when it takes any (``**kwargs``)."""
    params = inspect.signature(target).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@pytest.mark.parametrize("guide", GUIDE_LIST, ids=IDS)
def test_the_keywords_and_training_arguments_of_the_guides_are_accepted(guide):
    problems = []
    for first, tree in parsed(guide):
        for node in ast.walk(tree):
            values = []
            if isinstance(node, ast.Call):
                name = call_name(node)
                if name in CHECKED_CALLS:
                    accepted = accepted_keywords(CHECKED_CALLS[name])
                    for keyword in node.keywords:
                        if keyword.arg is None or accepted is None:
                            continue
                        if keyword.arg not in accepted:
                            problems.append(
                                f"{guide.where(first + node.lineno - 1)}: {name}() takes no "
                                f"keyword {keyword.arg!r} (it takes {', '.join(sorted(accepted))})"
                            )
                values = [k.value for k in node.keywords if k.arg == "training_args"]
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "training_args" for t in node.targets
            ):
                values = [node.value]
            for value in values:
                try:
                    args = ast.literal_eval(value)
                except ValueError:  # built from variables: nothing to check here
                    continue
                if not isinstance(args, dict) or Ellipsis in args.values():
                    continue  # a sketch, with `...` for values
                try:
                    TrainingArgs.from_dict(args)
                except FedplugError as exc:
                    problems.append(f"{guide.where(first + value.lineno - 1)}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_python_checks_see_the_calls_of_the_guides():
    calls = {
        call_name(node)
        for guide in GUIDE_LIST
        for _, tree in parsed(guide)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert {"Experiment", "Optimizer", "Node", "Dataset"} <= calls
