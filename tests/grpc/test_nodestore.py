"""The node's SQLite registry: datasets, plan decisions, hash prefixes and concurrent use."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime

import numpy as np
import pytest

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError
from fedplug.planref import source_hash
from fedplug.plugins import get_plugin_manager
from fedplug_grpc.nodestore import SCHEMA_VERSION, NodeStore

SOURCE = "class Plan:\n    pass\n"
SHA = source_hash(SOURCE)


@pytest.fixture
def store(tmp_path):
    return NodeStore(tmp_path / "node.db")


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    return path


# -- the database -------------------------------------------------------------------------------


def test_a_new_store_creates_its_schema_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "node.db"
    NodeStore(path)
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    finally:
        con.close()
    assert {"datasets", "plans"} <= tables


def test_reopening_keeps_the_data(tmp_path):
    NodeStore(tmp_path / "node.db").add_dataset("d", "csv", ["t"], {"path": "x.csv"})
    assert [r.name for r in NodeStore(tmp_path / "node.db").datasets()] == ["d"]


def test_a_database_from_a_newer_fedplug_is_refused(tmp_path):
    path = tmp_path / "node.db"
    NodeStore(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(ConfigError, match=r"schema version 99.*upgrade fedplug"):
        NodeStore(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not SQLite, " * 100)
    with pytest.raises(ConfigError, match=r"cannot use .*notes.txt.* as a node database"):
        NodeStore(path)


# -- datasets -----------------------------------------------------------------------------------


def test_dataset_round_trip(store):
    store.add_dataset("b-set", "csv", ["demo", "tabular"], {"path": "/d.csv", "target": "y"})
    store.add_dataset("a-set", "numpy", ["demo"], {})
    records = store.datasets()
    assert [r.name for r in records] == ["a-set", "b-set"]
    record = records[1]
    assert record.type == "csv"
    assert record.tags == ["demo", "tabular"]
    assert record.options == {"path": "/d.csv", "target": "y"}
    assert datetime.fromisoformat(record.added).tzinfo is not None
    with pytest.raises(AttributeError):
        record.name = "other"  # frozen


def test_a_duplicate_dataset_name_names_the_remove_command(store):
    store.add_dataset("demo", "csv", ["t"], {})
    with pytest.raises(ConfigError, match=r"'demo' is already registered.*dataset remove demo"):
        store.add_dataset("demo", "numpy", ["u"], {})
    assert [r.type for r in store.datasets()] == ["csv"]


@pytest.mark.parametrize("tags", [[], [""], ["ok", "  "], "demo", [3], None])
def test_tags_must_be_a_non_empty_list_of_non_empty_strings(store, tags):
    with pytest.raises(ConfigError, match="tags must be a non-empty list of non-empty strings"):
        store.add_dataset("d", "csv", tags, {})
    assert store.datasets() == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"x": object()}, "cannot be stored as JSON"),
        ({"x": float("nan")}, "cannot be stored as JSON"),
        ({"tags": ["a"]}, r"options \['tags'\] are set by fedplug"),
        ([("path", "x")], "options must be a dict"),
    ],
)
def test_options_must_be_json_keyword_arguments(store, options, match):
    with pytest.raises(ConfigError, match=match):
        store.add_dataset("d", "csv", ["t"], options)


def test_removing_an_unknown_dataset_lists_the_registered_ones(store):
    store.add_dataset("first", "csv", ["t"], {})
    store.add_dataset("second", "csv", ["t"], {})
    with pytest.raises(ConfigError, match=r"no dataset named 'thrid'.*registered: first, second"):
        store.remove_dataset("thrid")
    store.remove_dataset("first")
    assert [r.name for r in store.datasets()] == ["second"]


def test_csv_and_numpy_datasets_load_through_the_plugin_manager(store, csv_file, tmp_path):
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 0, 1, 1, 0]))
    store.add_dataset("hospital-csv", "csv", ["demo"], {"path": str(csv_file), "target": "label"})
    store.add_dataset("hospital-npz", "numpy", ["demo", "arrays"], {"path": str(npz)})
    loaded = store.load_datasets(get_plugin_manager())
    assert all(isinstance(d, Dataset) for d in loaded)
    by_name = {d.name: d for d in loaded}
    assert set(by_name) == {"hospital-csv", "hospital-npz"}
    csv_data = by_name["hospital-csv"]
    assert csv_data.x.shape == (4, 2)
    assert csv_data.y.tolist() == [0, 1, 0, 1]
    assert csv_data.tags == ["demo"]
    assert len(by_name["hospital-npz"]) == 6
    assert by_name["hospital-npz"].tags == ["demo", "arrays"]


def test_a_dataset_whose_file_vanished_gives_a_clear_error(store, csv_file):
    store.add_dataset("demo", "csv", ["t"], {"path": str(csv_file), "target": "label"})
    csv_file.unlink()
    with pytest.raises(ConfigError) as info:
        store.load_datasets(get_plugin_manager())
    message = str(info.value)
    assert message.startswith("dataset 'demo' (type csv) could not be loaded: ")
    assert str(csv_file) in message
    assert "fedplug node dataset remove demo" in message


def test_a_loader_crash_is_described_in_one_line(store, csv_file):
    # csv.reader refuses a number as delimiter with a TypeError: not a fedplug error
    store.add_dataset("d", "csv", ["t"], {"path": str(csv_file), "target": "label", "delimiter": 5})
    with pytest.raises(
        ConfigError, match=r"dataset 'd' \(type csv\) could not be loaded: TypeError"
    ):
        store.load_datasets(get_plugin_manager())


def test_an_unregistered_dataset_type_names_the_available_ones(store):
    store.add_dataset("d", "parquet", ["t"], {})
    with pytest.raises(ConfigError, match=r"\(type parquet\) could not be loaded: .*csv"):
        store.load_datasets(get_plugin_manager())


# -- plans --------------------------------------------------------------------------------------


def test_a_plan_goes_from_pending_to_approved(store):
    assert store.plan_status(SHA) is None
    assert store.record_plan(SHA, "Plan", SOURCE) == "pending"
    assert store.plan_status(SHA) == "pending"
    plan = store.approve_plan(SHA[:8], note="reviewed by J.")
    assert (plan.sha256, plan.status, plan.note, plan.class_name) == (
        SHA,
        "approved",
        "reviewed by J.",
        "Plan",
    )
    assert plan.decided is not None
    assert store.plan_status(SHA) == "approved"
    # seeing the plan again keeps the decision
    assert store.record_plan(SHA, "Plan", SOURCE) == "approved"
    assert store.reject_plan(SHA).status == "rejected"
    assert store.record_plan(SHA, "Plan", SOURCE) == "rejected"


def test_plans_are_listed_and_filtered_by_status(store):
    other = source_hash("class Other:\n    pass\n")
    store.record_plan(SHA, "Plan", SOURCE)
    store.record_plan(other, "Other", "class Other:\n    pass\n")
    store.approve_plan(other)
    assert {p.sha256 for p in store.plans()} == {SHA, other}
    assert [p.sha256 for p in store.plans("approved")] == [other]
    assert [p.sha256 for p in store.plans("pending")] == [SHA]
    assert store.plans("rejected") == []
    assert store.get_plan(SHA).source == SOURCE
    with pytest.raises(ConfigError, match="unknown plan status 'done'"):
        store.plans("done")


def test_a_full_hash_can_be_approved_before_the_plan_arrives(store):
    plan = store.approve_plan(SHA.upper(), note="hash from the researcher")
    assert (plan.sha256, plan.status, plan.class_name, plan.source) == (SHA, "approved", None, None)
    # when it arrives, it runs and its source is kept
    assert store.record_plan(SHA, "Plan", SOURCE) == "approved"
    assert store.get_plan(SHA).source == SOURCE
    assert store.get_plan(SHA).class_name == "Plan"


def test_only_a_full_hash_can_be_approved_in_advance(store):
    with pytest.raises(ConfigError, match=r"no training plan matches.*full 64-digit hash"):
        store.approve_plan(SHA[:12])
    with pytest.raises(ConfigError, match="no training plan matches"):
        store.reject_plan(SHA)
    assert store.plans() == []


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        (SHA[:7], "at least 8 hex digits"),
        ("zzzzzzzzzz", "at least 8 hex digits"),
        ("", "at least 8 hex digits"),
        ("0123456789", "no training plan matches '0123456789'"),
    ],
)
def test_bad_plan_references(store, ref, match):
    store.record_plan(SHA, "Plan", SOURCE)
    with pytest.raises(ConfigError, match=match):
        store.get_plan(ref)


def test_an_ambiguous_prefix_lists_the_candidates(store):
    first, second = "abcdef01" + "0" * 56, "abcdef01" + "1" * 56
    store.record_plan(first, "First", "a")
    store.record_plan(second, "Second", "b")
    with pytest.raises(ConfigError, match="ambiguous") as info:
        store.approve_plan("abcdef01")
    assert "abcdef0100000000 (First)" in str(info.value)
    assert "abcdef0111111111 (Second)" in str(info.value)
    assert store.plan_status(first) == "pending"
    assert store.approve_plan("abcdef011").sha256 == second
    assert store.plan_status(second) == "approved"
    assert store.plan_status(first) == "pending"


def test_record_plan_refuses_a_malformed_hash(store):
    with pytest.raises(ConfigError, match="not a SHA-256"):
        store.record_plan("abc", "Plan", SOURCE)


# -- concurrent use -----------------------------------------------------------------------------


def test_a_second_store_on_the_same_file_sees_the_decisions(tmp_path):
    node, cli = NodeStore(tmp_path / "node.db"), NodeStore(tmp_path / "node.db")
    assert node.record_plan(SHA, "Plan", SOURCE) == "pending"
    cli.approve_plan(SHA[:10])
    assert node.plan_status(SHA) == "approved"
    cli.reject_plan(SHA[:10])
    assert node.plan_status(SHA) == "rejected"


def test_an_approval_is_not_blocked_by_an_open_read(tmp_path):
    path = tmp_path / "node.db"
    store = NodeStore(path)
    store.record_plan(SHA, "Plan", SOURCE)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT status FROM plans").fetchone()[0] == "pending"
        store.approve_plan(SHA)  # in WAL mode a writer does not wait for readers
        # the open read keeps its snapshot; the next one sees the approval
        assert reader.execute("SELECT status FROM plans").fetchone()[0] == "pending"
        reader.execute("COMMIT")
        assert reader.execute("SELECT status FROM plans").fetchone()[0] == "approved"
    finally:
        reader.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "node.db"
    NodeStore(path)
    errors = []

    def write(worker: int) -> None:
        try:
            store = NodeStore(path)
            for i in range(20):
                sha = source_hash(f"# plan {worker}-{i}\n")
                store.record_plan(sha, f"Plan{worker}", "")
                if i % 2:
                    store.approve_plan(sha)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = NodeStore(path)
    assert len(store.plans()) == 120
    assert len(store.plans("approved")) == 60


def test_pending_plans_are_bounded_oldest_out_first(tmp_path):
    """A researcher can ship any number of distinct sources: the node keeps the newest pending
    ones within its bounds, and never forgets an approval or a rejection."""
    store = NodeStore(tmp_path / "node.db", max_pending_plans=5, max_pending_mb=0.01)  # 10 kB
    sources = [f"class Plan{i}:\n    x = {'1' * 3000}\n" for i in range(12)]  # ~3 kB each
    hashes = [source_hash(source) for source in sources]
    store.record_plan(hashes[0], "Plan0", sources[0])
    store.approve_plan(hashes[0])
    for i in range(1, 12):
        assert store.record_plan(hashes[i], f"Plan{i}", sources[i]) == "pending"
    pending = {plan.sha256 for plan in store.plans("pending")}
    assert pending == set(hashes[-3:])  # 3 x 3 kB fit in 10 kB
    assert store.plan_status(hashes[0]) == "approved"
    big = "class Huge:\n    x = '" + "y" * 20_000 + "'\n"
    with pytest.raises(ConfigError, match="more than this node keeps for review"):
        store.record_plan(source_hash(big), "Huge", big)
    assert store.plan_status(source_hash(big)) is None
    assert {plan.sha256 for plan in store.plans("pending")} == set(hashes[-3:])
    # the database does not grow with what is shipped
    for i in range(12, 60):
        source = f"class Plan{i}:\n    x = {'1' * 3000}\n"
        store.record_plan(source_hash(source), f"Plan{i}", source)
    assert len(store.plans("pending")) == 3 and len(store.plans()) == 4


def test_count_bound_of_pending_plans(tmp_path):
    store = NodeStore(tmp_path / "node.db", max_pending_plans=2)
    hashes = []
    for i in range(4):
        source = f"class P{i}:\n    pass\n"
        hashes.append(source_hash(source))
        store.record_plan(hashes[-1], f"P{i}", source)
    assert {plan.sha256 for plan in store.plans("pending")} == set(hashes[-2:])
