"""The ``masking`` scheme driven directly: MaskingScheme (researcher) and MaskingNode (nodes)
talking through an in-memory exchange that carries every step as encoded messages.

Correctness (the unmasked average), privacy (what the researcher sees looks uniform), dropout
recovery, and every refusal of the protocol."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fedplug import messages as msg
from fedplug.errors import ConfigError, MessageError, SecAggError
from fedplug.messages import SecAggData
from fedplug.plan import params_spec
from fedplug_secagg import MaskingNode, MaskingScheme, SecAggConfig, crypto, masking

EXPERIMENT = "exp-secagg-protocol"
# chi-square with 255 degrees of freedom: the statistic above which uniformity is rejected
CHI2_CRITICAL = float(stats.chi2.ppf(0.999, 255))


def wire(message):
    """``message`` as the other side receives it (encoded, then decoded)."""
    return msg.decode(msg.encode(message))


class Federation:
    """A researcher-side MaskingScheme and its nodes, joined by an in-memory ``exchange``.

    ``down[step]`` names nodes that do not answer a step (a lost link); ``tamper(step, node,
    data)`` may change what the researcher relays to a node. A node that refuses a step (raises)
    counts as a failure, as with ``on_node_failure="skip"``."""

    def __init__(self, names, config=None, experiment_id=EXPERIMENT):
        self.scheme = MaskingScheme(config)
        self.nodes: dict[str, MaskingNode] = {
            name: MaskingScheme.node_side(name, experiment_id) for name in names
        }
        self.experiment_id = experiment_id
        self.round = 0
        self.down: dict[str, set[str]] = {}
        self.tamper = None
        self.calls: list[tuple[str, list[str]]] = []
        self.sent: list[tuple[str, str, SecAggData]] = []  # (step, node, its reply)
        self.refusals: dict[str, str] = {}

    def exchange(self, data, nodes):
        self.calls.append((data.step, list(nodes)))
        replies, failures = {}, {}
        for name in nodes:
            if name in self.down.get(data.step, ()):
                failures[name] = "did not answer"
                continue
            relayed = data if self.tamper is None else self.tamper(data.step, name, data)
            request = wire(msg.SecAggRequest(self.experiment_id, self.round, relayed))
            try:
                answer = self.nodes[name].handle(request.round_index, request.data)
            except (SecAggError, MessageError) as exc:
                failures[name] = self.refusals[name] = f"{type(exc).__name__}: {exc}"
                continue
            reply = wire(msg.SecAggReply(self.experiment_id, self.round, name, answer))
            replies[name] = reply.data
            self.sent.append((data.step, name, reply.data))
        return replies, failures

    def begin(self, params, round_index=0):
        self.round = round_index
        spec = params_spec(next(iter(params.values())))
        return self.scheme.begin_round(
            self.experiment_id, round_index, sorted(self.nodes), spec, self.exchange
        )

    def mask(self, name, context, params, n_samples):
        """What node ``name`` sends in its TrainReply (through the wire)."""
        data = self.nodes[name].mask(self.round, wire_context(context), params, n_samples)
        return wire(train_reply(name, self.round, data)).secagg

    def run(self, params, samples, round_index=0, drop=()):
        """One round: set-up, every participant not in ``drop`` masks, then the result."""
        participants, context = self.begin(params, round_index)
        self.masked = {}
        for name in participants:
            if name in drop:
                continue
            self.masked[name] = self.mask(name, context, params[name], samples[name])
            self.scheme.add(name, samples[name], self.masked[name])
        return self.scheme.result(round_index, self.exchange)


def wire_context(context: SecAggData) -> SecAggData:
    """The round context as a node finds it in its TrainRequest."""
    request = msg.TrainRequest(
        EXPERIMENT, 0, msg.PlanRef(name="numpy-logreg"), {}, {}, [], {}, secagg=context
    )
    return wire(request).secagg


def train_reply(node, round_index, data):
    """A TrainReply carrying a masked update, as a node sends it."""
    return msg.TrainReply(EXPERIMENT, round_index, node, {}, 1, 1, 0.0, 0.0, secagg=data)


def random_params(names, shapes, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return {
        node: {
            f"p{i}": (rng.normal(size=shape) * scale).astype(dtype)
            for i, shape in enumerate(shapes)
        }
        for node in names
    }


def weighted_average(params, samples, nodes):
    weights = np.array([samples[n] for n in nodes], dtype=np.float64)
    return {
        key: np.average(
            np.stack([params[n][key].astype(np.float64) for n in nodes]), axis=0, weights=weights
        )
        for key in params[nodes[0]]
    }


def assert_average(result, params, samples, nodes, bits=24):
    expected = weighted_average(params, samples, nodes)
    assert set(result) == set(expected)
    for key, value in expected.items():
        got = result[key]
        reference = params[nodes[0]][key]
        assert got.shape == reference.shape and got.dtype == reference.dtype
        # fixed point: exact to 2^-bits; a float32 result adds its own rounding
        rtol = 2.0**-23 if got.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got.astype(np.float64), value, atol=2.0**-bits, rtol=rtol)


def chi_square_bytes(vector: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(vector.tobytes(), dtype=np.uint8), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


NAMES4 = ["alice", "bob", "carol", "dave"]
SAMPLES4 = {"alice": 120, "bob": 7, "carol": 61, "dave": 300}


# -- correctness --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shapes", [[(5,)], [(3, 4), (4,)], [(2, 3, 4), (), (1,), (7, 1)]], ids=["1d", "2d", "mixed"]
)
def test_the_unmasked_result_is_the_sample_weighted_average(dtype, shapes):
    fed = Federation(NAMES4)
    params = random_params(NAMES4, shapes, dtype)
    result = fed.run(params, SAMPLES4)
    assert_average(result, params, SAMPLES4, NAMES4)
    assert fed.scheme.dropped == []
    assert [step for step, _ in fed.calls] == ["keys", "shares", "unmask"]


@pytest.mark.parametrize("bits", [0, 8, 16, 40])
def test_the_average_is_exact_to_the_configured_precision(bits):
    names = ["a", "b", "c"]
    samples = {"a": 3, "b": 5, "c": 11}
    params = random_params(names, [(200,)], np.float64, seed=3, scale=1.0)
    config = SecAggConfig(precision_bits=bits, clip=8.0)
    result = Federation(names, config).run(params, samples)
    assert_average(result, params, samples, names, bits=bits)
    error = np.max(np.abs(result["p0"] - weighted_average(params, samples, names)["p0"]))
    if bits <= 16:  # fixed point really is in use: coarse precisions are visibly coarse
        assert error > 2.0 ** -(bits + 12)


def test_the_masks_cancel_in_the_sum_up_to_the_self_masks():
    fed = Federation(NAMES4)
    params = random_params(NAMES4, [(50,), (3, 3)], np.float64, seed=1)
    participants, context = fed.begin(params)
    masked = {n: fed.mask(n, context, params[n], SAMPLES4[n]) for n in participants}
    salt = crypto.round_salt(EXPERIMENT, 0)
    total = np.zeros(59, dtype=np.uint64)
    quantized_sum = np.zeros(59, dtype=np.uint64)
    for name in participants:
        scale = SAMPLES4[name] * 2.0**24
        quantized = np.rint(masking.flatten(params[name]) * scale).astype(np.int64).view(np.uint64)
        self_mask = np.zeros(59, dtype=np.uint64)
        seed = crypto.derive(fed.nodes[name]._b, salt, "fedplug-secagg|self")
        crypto.add_mask(self_mask, seed, +1)
        vector = masked[name].arrays["masked"]
        assert vector.dtype == np.uint64 and vector.shape == (59,)
        # alone, a masked vector minus its self mask still carries the pairwise masks
        assert np.count_nonzero(vector - self_mask == quantized) == 0
        total += vector - self_mask
        quantized_sum += quantized
    np.testing.assert_array_equal(total, quantized_sum)  # exact, modulo 2^64


# -- privacy ------------------------------------------------------------------------------------


@pytest.fixture
def seeded_randomness(monkeypatch):
    """Keys and self-mask seeds from a seeded generator, so that the statistical tests below are
    decided once and for all (the masks are still ChaCha20 keystreams under X25519/HKDF keys)."""
    rng = random.Random(20240607)

    def urandom(n):
        return rng.randbytes(n)

    def new_keypair():
        private = X25519PrivateKey.from_private_bytes(rng.randbytes(32))
        return private, private.public_key().public_bytes_raw()

    monkeypatch.setattr(masking, "os", SimpleNamespace(urandom=urandom))
    monkeypatch.setattr(crypto, "new_keypair", new_keypair)


def test_every_masked_vector_and_every_strict_subset_sum_looks_uniform(seeded_randomness):
    fed = Federation(NAMES4)
    # structured parameters: a few distinct values, small magnitudes (very non-uniform bytes)
    params = {
        name: {"w": np.round(np.linspace(-1, 1, 4096) * (i + 1), 2).astype(np.float32)}
        for i, name in enumerate(NAMES4)
    }
    participants, context = fed.begin(params)
    masked = {n: fed.mask(n, context, params[n], SAMPLES4[n]).arrays["masked"] for n in NAMES4}
    assert participants == NAMES4
    for size in range(1, len(NAMES4)):
        for subset in itertools.combinations(NAMES4, size):
            total = np.zeros(4096, dtype=np.uint64)
            for name in subset:
                total += masked[name]
            statistic = chi_square_bytes(total)
            assert statistic < CHI2_CRITICAL, (subset, statistic)
    # for contrast: the same nodes' quantized updates, unmasked, fail the test by far
    for name in NAMES4:
        scale = SAMPLES4[name] * 2.0**24
        plain = np.rint(masking.flatten(params[name]) * scale).astype(np.int64).view(np.uint64)
        assert chi_square_bytes(plain) > 100 * CHI2_CRITICAL


def test_nothing_a_node_sends_in_the_set_up_carries_its_parameters():
    fed = Federation(["a", "b", "c"])
    params = random_params(["a", "b", "c"], [(64,)], np.float64)
    fed.run(params, {"a": 1, "b": 2, "c": 3})
    for step, _, data in fed.sent:
        assert step in ("keys", "shares", "unmask")
        for value in data.arrays.values():
            assert value.dtype == np.uint8  # keys, ciphertexts and shares: bytes only
    shares_step = [data for step, _, data in fed.sent if step == "shares"]
    assert all(len(data.arrays) == 2 for data in shares_step)  # one ciphertext per peer


# -- dropouts -----------------------------------------------------------------------------------


def test_one_dropout_after_the_shares_step_gives_the_average_of_the_survivors():
    fed = Federation(NAMES4)  # t = 3
    params = random_params(NAMES4, [(10,), (2, 2)], np.float64, seed=5)
    result = fed.run(params, SAMPLES4, drop={"carol"})
    survivors = ["alice", "bob", "dave"]
    assert_average(result, params, SAMPLES4, survivors)
    assert fed.scheme.dropped == ["carol"]
    assert fed.calls[-1] == ("unmask", survivors)
    # the survivors revealed carol's mask key shares, and no share of her self mask
    unmask = [data for step, _, data in fed.sent if step == "unmask"]
    assert len(unmask) == 3
    for data in unmask:
        assert "s:carol" in data.arrays and "b:carol" not in data.arrays
        assert {f"b:{n}" for n in survivors} <= set(data.arrays)
        assert not any(key.startswith("s:") and key != "s:carol" for key in data.arrays)


def test_two_dropouts_among_six_with_threshold_four():
    names = [f"n{i}" for i in range(6)]
    samples = {name: 10 * (i + 1) for i, name in enumerate(names)}
    params = random_params(names, [(33,)], np.float32, seed=9)
    fed = Federation(names)
    result = fed.run(params, samples, drop={"n1", "n4"})
    assert fed.scheme.threshold == 4  # ceil(2 * 6 / 3)
    survivors = ["n0", "n2", "n3", "n5"]
    assert_average(result, params, samples, survivors)
    assert fed.scheme.dropped == ["n1", "n4"]


def test_dropouts_below_the_threshold_fail_the_round_without_unmasking():
    names = [f"n{i}" for i in range(6)]
    samples = dict.fromkeys(names, 10)
    params = random_params(names, [(8,)], np.float64)
    fed = Federation(names)  # t = 4
    with pytest.raises(SecAggError, match=r"only 3 of 6 nodes .* below the recovery threshold 4"):
        fed.run(params, samples, drop={"n0", "n2", "n5"})
    assert [step for step, _ in fed.calls] == ["keys", "shares"]  # no unmasking asked
    assert fed.scheme.dropped == []  # and no model produced


def test_a_configured_threshold_is_used_and_checked():
    names = ["a", "b", "c", "d"]
    samples = dict.fromkeys(names, 5)
    params = random_params(names, [(4,)], np.float64)
    fed = Federation(names, SecAggConfig(threshold=4))
    with pytest.raises(SecAggError, match="below the recovery threshold 4"):
        fed.run(params, samples, drop={"d"})
    fed = Federation(names, SecAggConfig(threshold=3))
    result = fed.run(params, samples, drop={"d"})
    assert_average(result, params, samples, ["a", "b", "c"])
    # half of the nodes would do: two halves could then unmask one node's update
    with pytest.raises(SecAggError, match="threshold 2 is not a strict majority of the round's 4"):
        Federation(names, SecAggConfig(threshold=2)).run(params, samples)
    with pytest.raises(SecAggError, match="threshold 5 exceeds the 4 nodes of the round"):
        Federation(names, SecAggConfig(threshold=5)).run(params, samples)


def test_a_single_node_cannot_be_securely_aggregated():
    params = random_params(["solo"], [(3,)], np.float64)
    with pytest.raises(SecAggError, match="at least 2 nodes in a round, got 1"):
        Federation(["solo"]).run(params, {"solo": 3})


@pytest.mark.parametrize("step", ["keys", "shares"])
def test_a_node_failing_during_the_set_up_is_excluded_and_the_set_up_redone(step):
    fed = Federation(NAMES4)
    fed.down[step] = {"bob"}
    params = random_params(NAMES4, [(6,)], np.float64, seed=2)
    participants, context = fed.begin(params)
    rest = ["alice", "carol", "dave"]
    assert participants == rest
    assert context.values["participants"] == rest
    expected_calls = [("keys", NAMES4)] + ([("shares", NAMES4)] if step == "shares" else [])
    assert fed.calls == [*expected_calls, ("keys", rest), ("shares", rest)]
    assert fed.scheme.threshold == 2  # recomputed for the 3 remaining nodes
    assert "bob" in fed.scheme.failures
    assert not any(key.endswith(":bob") or ":bob:" in key for key in context.arrays)
    # the redone key exchange made new keys: none of the first exchange's keys is reused
    keys = [data for s, _, data in fed.sent if s == "keys"]
    first, second = keys[: len(keys) - 3], keys[-3:]
    first_keys = {bytes(d.arrays["s_pk"]) for d in first}
    assert not first_keys & {bytes(d.arrays["s_pk"]) for d in second}
    for name in rest:
        fed.scheme.add(name, SAMPLES4[name], fed.mask(name, context, params[name], SAMPLES4[name]))
    assert_average(fed.scheme.result(0, fed.exchange), params, SAMPLES4, rest)


def test_set_up_failures_down_to_one_node_fail_the_round():
    fed = Federation(["a", "b", "c"])
    fed.down["keys"] = {"b", "c"}
    with pytest.raises(SecAggError, match="at least 2 nodes in a round, got 1"):
        fed.begin(random_params(["a", "b", "c"], [(2,)], np.float64))


# -- the unmask step refuses what would reveal a secret ------------------------------------------


@pytest.fixture
def masked_round():
    """Three nodes after round 0's masking (t = 2); returns the federation."""
    names = ["a", "b", "c"]
    fed = Federation(names)
    params = random_params(names, [(4,)], np.float64)
    participants, context = fed.begin(params)
    for name in participants:
        fed.scheme.add(name, 5, fed.mask(name, context, params[name], 5))
    return fed


def unmask(survivors, dropped, round_index=0):
    return SecAggData(
        "masking",
        "unmask",
        {"round": round_index, "survivors": survivors, "dropped": dropped},
    )


def test_a_node_refuses_to_reveal_both_secrets_of_one_node(masked_round):
    node = masked_round.nodes["a"]
    with pytest.raises(SecAggError, match=r"nodes \['b'\] are listed both as survivors and as"):
        node.handle(0, unmask(["a", "b"], ["b"]))
    # the refusal revealed nothing and does not count as an answer
    data = node.handle(0, unmask(["a", "b", "c"], []))
    assert sorted(data.arrays) == ["b:a", "b:b", "b:c"]


def test_a_node_that_did_not_mask_or_is_not_a_survivor_refuses(masked_round):
    with pytest.raises(SecAggError, match="node 'a' sent no masked update in round 0"):
        masked_round.nodes["a"].handle(0, unmask(["b", "c"], ["a"]))
    fresh = Federation(["a", "b", "c"])
    fresh.begin(random_params(["a", "b", "c"], [(4,)], np.float64))  # keys, no masking
    with pytest.raises(SecAggError, match="node 'a' sent no masked update in round 0"):
        fresh.nodes["a"].handle(0, unmask(["a", "b", "c"], []))


def test_a_node_answers_the_unmasking_of_a_round_once(masked_round):
    node = masked_round.nodes["b"]
    first = node.handle(0, unmask(["a", "b"], ["c"]))
    assert sorted(first.arrays) == ["b:a", "b:b", "s:c"]
    with pytest.raises(SecAggError, match="node 'b' already answered the unmasking of round 0"):
        node.handle(0, unmask(["a", "b", "c"], []))  # c's self-mask share as well: refused


def test_a_node_refuses_unmasking_outside_the_round_or_below_threshold(masked_round):
    node = masked_round.nodes["c"]
    with pytest.raises(SecAggError, match="names nodes that were not in the round"):
        node.handle(0, unmask(["a", "c"], ["mallory"]))
    with pytest.raises(SecAggError, match="only 1 survivors, below the threshold 2"):
        node.handle(0, unmask(["c"], ["a", "b"]))
    with pytest.raises(SecAggError, match="has keys for round 0, not for round 1"):
        node.handle(1, unmask(["a", "b", "c"], [], round_index=1))
    with pytest.raises(MessageError, match="'survivors' repeats a node"):
        node.handle(0, unmask(["a", "c", "c"], []))


def test_the_researcher_refuses_malformed_or_unexpected_masked_updates():
    fed = Federation(["a", "b", "c"])
    params = random_params(["a", "b", "c"], [(4,)], np.float64)
    _, context = fed.begin(params)
    data = fed.mask("a", context, params["a"], 5)
    with pytest.raises(SecAggError, match="unexpected masked update from 'mallory'"):
        fed.scheme.add("mallory", 5, data)
    short = SecAggData("masking", "masked", {}, {"masked": np.zeros(3, dtype=np.uint64)})
    with pytest.raises(MessageError, match=r"uint64 \(4,\)"):
        fed.scheme.add("a", 5, short)
    as_float = SecAggData("masking", "masked", {}, {"masked": np.zeros(4)})
    with pytest.raises(MessageError, match="float64"):
        fed.scheme.add("a", 5, as_float)
    with pytest.raises(SecAggError, match="reported 0 training samples"):
        fed.scheme.add("a", 0, data)
    fed.scheme.add("a", 5, data)
    with pytest.raises(SecAggError, match="unexpected masked update from 'a'"):
        fed.scheme.add("a", 5, data)


# -- what a node refuses to mask ----------------------------------------------------------------


def test_a_node_refuses_parameters_beyond_clip_and_clips_nothing():
    fed = Federation(["a", "b"], SecAggConfig(clip=4.0))
    params = random_params(["a", "b"], [(3,), (2,)], np.float64, scale=0.5)
    params["a"]["p1"][1] = -4.5
    original = {k: v.copy() for k, v in params["a"].items()}
    _, context = fed.begin(params)
    with pytest.raises(SecAggError, match=r"parameter 'p1' reaches 4\.5, beyond the") as info:
        fed.nodes["a"].mask(0, context, params["a"], 10)
    assert "+-4" in str(info.value) and "nothing is clipped silently" in str(info.value)
    for key, value in original.items():
        np.testing.assert_array_equal(params["a"][key], value)
    params["a"]["p1"][1] = 4.0  # exactly clip is allowed
    data = fed.nodes["a"].mask(0, context, params["a"], 10)
    assert data.arrays["masked"].shape == (5,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_node_refuses_non_finite_parameters(bad):
    fed = Federation(["a", "b"])
    params = random_params(["a", "b"], [(3,)], np.float32)
    params["b"]["p0"][2] = bad
    _, context = fed.begin(params)
    with pytest.raises(SecAggError, match="node 'b': parameter 'p0' reaches"):
        fed.nodes["b"].mask(0, context, params["b"], 3)


def test_sample_counts_that_would_overflow_fixed_point_are_refused():
    config = SecAggConfig(clip=2.0**20, precision_bits=26)
    assert config.max_samples() == 2**17 - 1  # (2^63 - 1) // 2^46
    names = ["a", "b", "c"]
    params = {n: {"w": np.array([2.0**20, -(2.0**20), 1.5])} for n in names}
    # at the bound, the largest values still come back exactly
    fed = Federation(names, config)
    result = fed.run(params, {"a": 43690, "b": 43690, "c": 43691})
    np.testing.assert_array_equal(result["w"], [2.0**20, -(2.0**20), 1.5])
    # one more sample in total: refused before any unmasking
    fed = Federation(names, config)
    with pytest.raises(SecAggError, match=r"131072 samples in total overflow 64-bit fixed point"):
        fed.run(params, {"a": 43691, "b": 43690, "c": 43691})
    assert [step for step, _ in fed.calls] == ["keys", "shares"]
    # a single node beyond the bound refuses to mask
    fed = Federation(names, config)
    _, context = fed.begin(params)
    with pytest.raises(SecAggError, match=r"node 'a': 131072 samples x clip .* overflows"):
        fed.nodes["a"].mask(0, context, params["a"], 2**17)


def test_a_node_refuses_to_mask_without_samples():
    fed = Federation(["a", "b"])
    params = random_params(["a", "b"], [(3,)], np.float64)
    _, context = fed.begin(params)
    with pytest.raises(SecAggError, match="trained on 0 samples"):
        fed.nodes["a"].mask(0, context, params["a"], 0)


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": 0}, "clip must be a positive number, got 0"),
        ({"clip": -1.0}, "clip must be a positive number"),
        ({"clip": math.nan}, "clip must be a positive number, got nan"),
        ({"clip": math.inf}, "clip must be a positive number, got inf"),
        ({"clip": True}, "clip must be a positive number, got True"),
        ({"clip": "10"}, "clip must be a positive number, got '10'"),
        ({"precision_bits": -1}, r"precision_bits must be an int in \[0, 52\], got -1"),
        ({"precision_bits": 53}, r"precision_bits must be an int in \[0, 52\], got 53"),
        ({"precision_bits": 16.0}, "precision_bits must be an int"),
        ({"precision_bits": True}, "precision_bits must be an int"),
        ({"clip": 2.0**20, "precision_bits": 42}, "leaves no room for sample weights"),
        ({"threshold": 1}, r"threshold must be an int >= 2 \(or None\), got 1"),
        ({"threshold": 3.0}, "threshold must be an int >= 2"),
        ({"threshold": True}, "threshold must be an int >= 2"),
        ({"scheme": "homomorphic"}, "SecAggConfig is the 'masking' scheme's, got scheme="),
    ],
)
def test_secagg_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**kwargs)


def test_max_samples_is_an_int_for_every_accepted_config():
    """A config that validates must give a usable overflow bound: a tiny clip is either refused
    or has a (huge) integer bound, not an OverflowError from int(inf)."""
    for clip in (2.0**-40, 1e-200, 1e-300):
        try:
            config = SecAggConfig(clip=clip)
        except ConfigError:
            continue
        assert isinstance(config.max_samples(), int)
        assert config.max_samples() > 10**9


def test_the_masking_scheme_takes_only_its_own_config():
    assert MaskingScheme().config == SecAggConfig()
    with pytest.raises(ConfigError, match="the masking scheme takes a SecAggConfig"):
        MaskingScheme({"clip": 1.0})


# -- what the researcher relays -----------------------------------------------------------------


def test_a_node_refuses_relayed_keys_that_are_not_its_own():
    fed = Federation(["a", "b", "c"])
    _, other_public = crypto.new_keypair()

    def swap_own_key(step, node, data):
        if step == "shares" and node == "b":
            arrays = dict(data.arrays, **{"s_pk:b": np.frombuffer(other_public, np.uint8)})
            return SecAggData(data.scheme, data.step, data.values, arrays)
        return data

    fed.tamper = swap_own_key
    participants, _ = fed.begin(random_params(["a", "b", "c"], [(2,)], np.float64))
    assert "the keys relayed for node 'b' are not the ones it made" in fed.refusals["b"]
    assert participants == ["a", "c"]  # b was dropped and the set-up redone


def test_a_node_refuses_a_tampered_or_misdirected_share():
    fed = Federation(["a", "b", "c"])
    params = random_params(["a", "b", "c"], [(2,)], np.float64)
    _, context = fed.begin(params)
    table = context.arrays["shares"]  # sender by recipient, in the order a, b, c

    def with_table(changed):
        return SecAggData(
            context.scheme, context.step, context.values, {**context.arrays, "shares": changed}
        )

    tampered = table.copy()
    tampered[1, 0, 20] ^= 0xFF  # b's share for a
    with pytest.raises(SecAggError, match="cannot read 'b''s shares: tampered with"):
        fed.nodes["a"].mask(0, with_table(tampered), params["a"], 4)
    misdirected = table.copy()
    misdirected[1, 0] = table[1, 2]  # b's share for c handed to a instead
    with pytest.raises(SecAggError, match="cannot read 'b''s shares"):
        fed.nodes["a"].mask(0, with_table(misdirected), params["a"], 4)
    missing = {k: v for k, v in context.arrays.items() if k != "shares"}
    with pytest.raises(
        MessageError, match=r"the shares table must be a uint8 array of shape \(3, 3, 160\)"
    ):
        fed.nodes["a"].mask(0, SecAggData("masking", "mask", context.values, missing), {}, 4)
    with pytest.raises(MessageError, match="the shares table must be"):
        fed.nodes["a"].mask(0, with_table(table[:2]), params["a"], 4)
    # the genuine context still works
    assert fed.nodes["a"].mask(0, context, params["a"], 4).step == "masked"


def test_a_node_refuses_a_context_for_participants_it_did_not_exchange_keys_with():
    fed = Federation(["a", "b", "c"])
    params = random_params(["a", "b", "c"], [(2,)], np.float64)
    _, context = fed.begin(params)
    values = dict(context.values, participants=["a", "b", "c", "mallory"])
    with pytest.raises(SecAggError, match="do not match its key exchange"):
        fed.nodes["a"].mask(0, SecAggData("masking", "mask", values, context.arrays), {}, 4)
    values = dict(context.values, round=1)
    with pytest.raises(SecAggError, match="has keys for round 0, not for round 1"):
        fed.nodes["a"].mask(1, SecAggData("masking", "mask", values, context.arrays), {}, 4)


def test_keys_are_fresh_every_round():
    names = ["a", "b", "c"]
    fed = Federation(names)
    params = random_params(names, [(16,)], np.float64)
    samples = dict.fromkeys(names, 4)
    fed.run(params, samples, round_index=0)
    keys0 = {n: d.arrays for s, n, d in fed.sent if s == "keys"}
    masked0 = {n: v.arrays["masked"].copy() for n, v in fed.masked.items()}
    fed.sent.clear()
    result = fed.run(params, samples, round_index=1)
    keys1 = {n: d.arrays for s, n, d in fed.sent if s == "keys"}
    for name in names:
        for kind in ("c_pk", "s_pk"):
            assert bytes(keys0[name][kind]) != bytes(keys1[name][kind])
        # the same parameters are masked differently in another round
        assert np.count_nonzero(masked0[name] == fed.masked[name].arrays["masked"]) == 0
    assert_average(result, params, samples, names)


def test_a_node_refuses_a_key_exchange_it_is_not_part_of():
    node = MaskingScheme.node_side("eve", EXPERIMENT)
    keys = {"round": 0, "participants": ["a", "b"], "threshold": 2}
    with pytest.raises(SecAggError, match="node 'eve' is not among the round's participants"):
        node.handle(0, SecAggData("masking", "keys", keys))
    keys = {"round": 0, "participants": ["a", "eve"], "threshold": 3}
    with pytest.raises(SecAggError, match="threshold 3 is not between 2 and the 2 participants"):
        node.handle(0, SecAggData("masking", "keys", keys))
    with pytest.raises(SecAggError, match="speaks scheme 'masking', got 'other'"):
        node.handle(0, SecAggData("other", "keys", keys))
    with pytest.raises(SecAggError, match="unknown step 'reveal-all'"):
        node.handle(0, SecAggData("masking", "reveal-all", keys))
    assert node.round is None  # the refusals created no keys


# -- a deviating researcher and a hostile node (issue 16, items 11 and 12) ----------------------


def test_nodes_refuse_a_threshold_that_is_not_a_strict_majority():
    node = MaskingScheme.node_side("a", EXPERIMENT)
    keys = {"round": 0, "participants": ["a", "b", "c", "d"], "threshold": 2}
    with pytest.raises(SecAggError, match="refuses threshold 2: not a strict majority"):
        node.handle(0, SecAggData("masking", "keys", keys))
    assert node.handle(0, SecAggData("masking", "keys", {**keys, "threshold": 3})).step == "keys"


def test_nodes_given_different_participant_lists_refuse_to_mask():
    """A deviating researcher (driving the nodes by hand) tells node c that the round is a, b, c
    while a, b and d are told a, b, c, d, so that it can later claim d dropped to c only. The
    shares bind each sender's list: every node finds the views differ at the mask step and
    sends nothing."""
    full, narrow = ["a", "b", "c", "d"], ["a", "b", "c"]
    nodes = {name: MaskingScheme.node_side(name, EXPERIMENT) for name in full}
    views = {name: narrow if name == "c" else full for name in full}
    public = {}
    for name, node in nodes.items():
        keys = {"round": 0, "participants": views[name], "threshold": len(views[name]) // 2 + 1}
        answer = node.handle(0, SecAggData("masking", "keys", keys))
        public[f"c_pk:{name}"], public[f"s_pk:{name}"] = (
            answer.arrays["c_pk"],
            answer.arrays["s_pk"],
        )
    shares = {}
    for name, node in nodes.items():
        relayed = {k: v for k, v in public.items() if k.split(":")[1] in views[name]}
        answer = node.handle(0, SecAggData("masking", "shares", {"round": 0}, relayed))
        for key, blob in answer.arrays.items():  # "to:PEER"
            shares[name, key[3:]] = blob
    refused = {}
    params = random_params(full, [(3,)], np.float64)
    for name, node in nodes.items():
        view = views[name]  # the table of the shares each sender of the view made for this node
        table = np.zeros((len(view), len(view), masking.SHARE_BLOB_BYTES), np.uint8)
        for i, sender in enumerate(view):
            if (sender, name) in shares:
                table[i, view.index(name)] = shares[sender, name]
        arrays = {"shares": table}
        values = {"round": 0, "participants": views[name], "clip": 4096.0, "precision_bits": 24}
        with pytest.raises((SecAggError, MessageError)) as info:
            node.mask(0, SecAggData("masking", "mask", values, arrays), params[name], 5)
        refused[name] = str(info.value)
    assert sorted(refused) == full  # nobody sent a masked update
    for name in ("a", "b", "c"):  # the shares of a peer with another view do not open
        assert "different participant lists" in refused[name], refused[name]
    assert "cannot read 'c''s shares" in refused["d"]  # c, told d is not there, sent d none


def test_a_node_sending_a_low_order_key_is_excluded_and_named():
    names = ["a", "b", "c", "d"]
    fed = Federation(names)
    real = fed.nodes["d"].handle

    def zero_keys(round_index, data):
        answer = real(round_index, data)
        if data.step == "keys":
            zeros = np.zeros(crypto.KEY_BYTES, np.uint8)
            return SecAggData(
                answer.scheme, answer.step, answer.values, {"c_pk": zeros, "s_pk": zeros}
            )
        return answer

    fed.nodes["d"].handle = zero_keys
    samples = dict.fromkeys(names, 5)
    params = random_params(names, [(3,)], np.float64)
    result = fed.run(params, samples)
    assert_average(result, params, samples, ["a", "b", "c"])
    assert "invalid X25519 public key" in fed.scheme.failures["d"]
    assert crypto.valid_public_key(bytes(32)) is False
    assert crypto.valid_public_key(X25519PrivateKey.generate().public_key().public_bytes_raw())
