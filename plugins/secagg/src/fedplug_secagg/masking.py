"""The ``masking`` scheme: pairwise additive masking with dropout recovery (SecAgg-style).

Each round, among participants P (sorted names; node ``u`` has Shamir point x_u = its position+1):

1. ``keys``: every node makes two fresh X25519 key pairs (``c`` to encrypt shares, ``s`` to agree
   on masks) and a fresh 32-byte self-mask seed ``b``; it sends the two public keys.
2. ``shares``: the researcher relays all public keys; every node Shamir-splits its ``s`` private key
   and ``b`` (threshold t) and encrypts each peer's pair of shares to that peer
   (X25519(c) -> HKDF -> ChaCha20-Poly1305); the researcher only relays the ciphertexts.
3. ``mask`` (in the TrainRequest): every node quantizes its sample-weighted parameters to fixed
   point, adds the self mask PRG(b) and, for each peer v, +PRG(s_uv) if v's name sorts after its
   own and -PRG(s_uv) otherwise, where s_uv = HKDF(X25519(s_u, s_v), experiment, round, pair) and
   PRG is ChaCha20; it sends only the masked uint64 vector (and its sample count, in clear).
4. ``unmask``: the researcher sums the masked vectors (the pairwise masks of survivors cancel)
   and asks the survivors for their share of ``b`` of each survivor and of ``s`` of each dropped
   node - never both for one node; with t shares it removes the self masks and the dropped nodes'
   pairwise masks, and divides by the total sample count.

Keys are fresh every round: a dropped node's revealed ``s`` key then uncovers no other round.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedplug.errors import AggregationError, ConfigError, MessageError, NodeError, SecAggError
from fedplug.messages import SecAggData, TrainReply
from fedplug.plan import Params, params_spec
from fedplug.secagg import SecAggNode, SecAggScheme
from fedplug_secagg import crypto

#: ``exchange(data, nodes)``: a step of the scheme sent to ``nodes``; their answers and failures
Exchange = Callable[[SecAggData, list[str]], tuple[dict[str, SecAggData], dict[str, str]]]

SCHEME = "masking"
_MIN_SAMPLES = 2**16  # settings must leave room for at least this many training samples
#: an encrypted pair of shares: nonce, two field elements, authentication tag
SHARE_BLOB_BYTES = 12 + 2 * crypto.SHARE_BYTES + 16


@dataclass(frozen=True)
class SecAggConfig:
    """Settings of the ``masking`` scheme.

    :param clip: the largest parameter magnitude a node may send; a node whose parameters exceed
        it refuses the round (nothing is clipped silently).
    :param precision_bits: fixed point: a value travels as ``round(value * n_samples *
        2**precision_bits)``; the average is exact to about ``2**-precision_bits``.
    :param threshold: the shares needed to recover from dropouts (default ``ceil(2n/3)`` of the
        round's n nodes, at least 2); below it the round fails and the model is unchanged. It
        must be a strict majority of the round's nodes (nodes refuse less).
    """

    scheme: str = SCHEME
    clip: float = 2.0**12
    precision_bits: int = 24
    threshold: int | None = None

    def __post_init__(self) -> None:
        if self.scheme != SCHEME:
            raise ConfigError(
                f"SecAggConfig is the {SCHEME!r} scheme's, got scheme={self.scheme!r}"
            )
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise ConfigError(f"clip must be a positive number, got {self.clip!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a positive number, got {self.clip!r}")
        bits = self.precision_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 52:
            raise ConfigError(f"precision_bits must be an int in [0, 52], got {bits!r}")
        if self.max_samples() < _MIN_SAMPLES:
            raise ConfigError(
                f"clip={self.clip} with precision_bits={bits} leaves no room for sample weights "
                f"in 64-bit fixed point: at most {self.max_samples()} training samples in all "
                f"(at least {_MIN_SAMPLES} needed); lower one of them"
            )
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 2):
            raise ConfigError(f"threshold must be an int >= 2 (or None), got {t!r}")

    def threshold_for(self, n_nodes: int) -> int:
        if n_nodes < 2:
            raise SecAggError(
                f"secure aggregation needs at least 2 nodes in a round, got {n_nodes}: the "
                "'sum' of one node is its update"
            )
        t = self.threshold if self.threshold is not None else max(2, math.ceil(2 * n_nodes / 3))
        if t > n_nodes:
            raise SecAggError(f"threshold {t} exceeds the {n_nodes} nodes of the round")
        if 2 * t <= n_nodes:
            raise SecAggError(
                f"threshold {t} is not a strict majority of the round's {n_nodes} nodes: the "
                "researcher could then ask two halves of them for the two secrets of one node "
                "and unmask its update; nodes refuse it (use at least "
                f"{n_nodes // 2 + 1}, or the default)"
            )
        return t

    def max_samples(self) -> int:
        """The largest total sample count whose weighted sum cannot overflow 64-bit fixed point."""
        step = max(1, math.ceil(self.clip * 2.0**self.precision_bits))
        return (2**63 - 1) // step


def _bytes(array: Any, what: str) -> bytes:
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise MessageError(f"{what} must be a 1-d uint8 array, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _share_table(participants: list[str], shares: dict[str, SecAggData]) -> np.ndarray:
    """The round's encrypted shares as one ``(n, n, SHARE_BLOB_BYTES)`` uint8 array, sender by
    recipient in the participants' order (the diagonal is zeros): one array in the training
    request instead of n(n-1), each node reading its own column."""
    index = {name: i for i, name in enumerate(participants)}
    table = np.zeros((len(participants), len(participants), SHARE_BLOB_BYTES), np.uint8)
    for sender, data in shares.items():
        for recipient in participants:
            if recipient == sender:
                continue
            blob = data.arrays.get(f"to:{recipient}")
            if blob is None:
                raise SecAggError(f"node {sender!r} sent no share for {recipient!r}")
            blob = np.asarray(blob)
            if blob.dtype != np.uint8 or blob.shape != (SHARE_BLOB_BYTES,):
                raise SecAggError(
                    f"node {sender!r} sent a share for {recipient!r} that is not "
                    f"{SHARE_BLOB_BYTES} bytes ({blob.dtype} {blob.shape})"
                )
            table[index[sender], index[recipient]] = blob
    return table


def _names(values: dict[str, Any], key: str) -> list[str]:
    names = values.get(key)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MessageError(f"secure-aggregation field {key!r} must be a list of node names")
    if len(set(names)) != len(names):
        raise MessageError(f"secure-aggregation field {key!r} repeats a node")
    return names


def _pair_info(kind: str, a: str, b: str) -> str:
    return f"fedplug-secagg|{kind}|{a}|{b}"


def _is_public_key(value: Any) -> bool:
    arr = np.asarray(value) if value is not None else None
    return (
        arr is not None
        and arr.dtype == np.uint8
        and arr.shape == (crypto.KEY_BYTES,)
        and crypto.valid_public_key(arr.tobytes())
    )


def flatten(params: Params) -> np.ndarray:
    """Parameters in sorted-name order as one float64 vector."""
    return np.concatenate(
        [np.asarray(params[name], dtype=np.float64).ravel() for name in sorted(params)]
    )


# -- node side ----------------------------------------------------------------------------------


class MaskingNode(SecAggNode):
    """One node's state in one experiment (the current round's keys and received shares)."""

    def __init__(self, node: str, experiment_id: str) -> None:
        self.node = node
        self.experiment_id = experiment_id
        self.round: int | None = None
        self.participants: list[str] = []
        self.threshold = 0
        self._c: Any = None
        self._s: Any = None
        self._b = b""
        self._peer_s: dict[str, bytes] = {}
        self._peer_c: dict[str, bytes] = {}
        self._own_shares: tuple[int, int] = (0, 0)
        self._received: dict[str, tuple[int, int]] = {}  # sender -> (share of s, share of b)
        self._masked_round: int | None = None
        self._revealed: str | None = None  # the round whose unmasking this node answered

    def _check_round(self, round_index: int, values: dict[str, Any]) -> None:
        if self.round is None or round_index != self.round or values.get("round") != self.round:
            raise SecAggError(
                f"node {self.node!r} has keys for round {self.round}, not for round "
                f"{round_index}; the researcher must run the round's key exchange first"
            )

    def handle(self, round_index: int, data: SecAggData) -> SecAggData:
        if data.scheme != SCHEME:
            raise SecAggError(f"node {self.node!r} speaks scheme {SCHEME!r}, got {data.scheme!r}")
        if data.step == "keys":
            return self._keys(round_index, data.values)
        if data.step == "shares":
            return self._shares(round_index, data)
        if data.step == "unmask":
            return self._unmask(round_index, data.values)
        raise SecAggError(f"unknown step {data.step!r} of the {SCHEME!r} scheme")

    def _keys(self, round_index: int, values: dict[str, Any]) -> SecAggData:
        participants = _names(values, "participants")
        threshold = values.get("threshold")
        if self.node not in participants:
            raise SecAggError(f"node {self.node!r} is not among the round's participants")
        if not (isinstance(threshold, int) and 2 <= threshold <= len(participants)):
            raise SecAggError(
                f"threshold {threshold!r} is not between 2 and the {len(participants)} participants"
            )
        if 2 * threshold <= len(participants):  # two disjoint quorums could unmask one node
            raise SecAggError(
                f"node {self.node!r} refuses threshold {threshold}: not a strict majority of the "
                f"{len(participants)} participants"
            )
        if values.get("round") != round_index:
            raise MessageError("the key exchange names another round than its message")
        self.round, self.participants, self.threshold = round_index, participants, threshold
        self._c, c_pk = crypto.new_keypair()
        self._s, s_pk = crypto.new_keypair()
        self._b = os.urandom(crypto.KEY_BYTES)
        self._received, self._peer_s, self._peer_c = {}, {}, {}
        self._masked_round = None
        self._revealed = None  # new keys: a retried round may be unmasked again
        return SecAggData(
            SCHEME, "keys", {"round": round_index}, {"c_pk": _u8(c_pk), "s_pk": _u8(s_pk)}
        )

    def _share_key(self, peer: str, sender: str, recipient: str) -> bytes:
        secret = crypto.agree(self._c, self._peer_c[peer])
        salt = crypto.round_salt(self.experiment_id, self.round)
        return crypto.derive(secret, salt, _pair_info("share", sender, recipient))

    def _aad(self, sender: str, recipient: str) -> bytes:
        """What a share from ``sender`` to ``recipient`` is bound to: the experiment, the round,
        the pair, and the participant list this node was given (so that a node reads a peer's
        shares only when both saw the same list: SecAgg's consistency check)."""
        digest = crypto.participants_digest(self.participants)
        return f"{self.experiment_id}|{self.round}|{sender}|{recipient}|{digest}".encode()

    def _shares(self, round_index: int, data: SecAggData) -> SecAggData:
        self._check_round(round_index, data.values)
        for peer in self.participants:
            self._peer_c[peer] = _bytes(data.arrays.get(f"c_pk:{peer}"), f"c_pk of {peer!r}")
            self._peer_s[peer] = _bytes(data.arrays.get(f"s_pk:{peer}"), f"s_pk of {peer!r}")
            if not (
                crypto.valid_public_key(self._peer_c[peer])
                and crypto.valid_public_key(self._peer_s[peer])
            ):
                raise SecAggError(f"the key relayed for node {peer!r} is not a valid X25519 key")
        own_c = self._c.public_key().public_bytes_raw()
        own_s = self._s.public_key().public_bytes_raw()
        if self._peer_c[self.node] != own_c or self._peer_s[self.node] != own_s:
            raise SecAggError(f"the keys relayed for node {self.node!r} are not the ones it made")
        xs = {name: i + 1 for i, name in enumerate(self.participants)}
        s_shares = crypto.split_secret(
            crypto.private_bytes(self._s), list(xs.values()), self.threshold
        )
        b_shares = crypto.split_secret(self._b, list(xs.values()), self.threshold)
        arrays = {}
        for peer, x in xs.items():
            pair = (s_shares[x], b_shares[x])
            if peer == self.node:
                self._own_shares = pair
                continue
            plaintext = crypto.share_bytes(pair[0]) + crypto.share_bytes(pair[1])
            key = self._share_key(peer, self.node, peer)
            aad = self._aad(self.node, peer)
            arrays[f"to:{peer}"] = _u8(crypto.encrypt(key, plaintext, aad))
        return SecAggData(SCHEME, "shares", {"round": round_index}, arrays)

    def mask(
        self, round_index: int, context: SecAggData, params: Params, n_samples: int
    ) -> SecAggData:
        self._check_round(round_index, context.values)
        if context.step != "mask":
            raise SecAggError(
                f"expected the 'mask' step in a training request, got {context.step!r}"
            )
        peers = _names(context.values, "participants")
        if self.node not in peers or not set(peers) <= set(self.participants):
            raise SecAggError(f"the round's participants {peers} do not match its key exchange")
        if len(peers) < self.threshold:
            raise SecAggError(
                f"only {len(peers)} nodes take part in the round, below the threshold "
                f"{self.threshold}; refusing to send a masked update"
            )
        clip = context.values.get("clip")
        bits = context.values.get("precision_bits")
        config = SecAggConfig(clip=clip, precision_bits=bits)
        # the shares addressed to this node: its column of the table
        table = np.asarray(context.arrays.get("shares"))
        if table.dtype != np.uint8 or table.shape != (len(peers), len(peers), SHARE_BLOB_BYTES):
            raise MessageError(
                f"the shares table must be a uint8 array of shape ({len(peers)}, {len(peers)}, "
                f"{SHARE_BLOB_BYTES}), got {table.dtype} {table.shape}"
            )
        me = peers.index(self.node)
        for i, sender in enumerate(peers):
            if sender == self.node:
                continue
            blob = table[i, me].tobytes()
            key = self._share_key(sender, sender, self.node)
            try:
                plain = crypto.decrypt(key, blob, self._aad(sender, self.node))
            except SecAggError:
                raise SecAggError(
                    f"node {self.node!r} cannot read {sender!r}'s shares: tampered with, or the "
                    "researcher gave the two nodes different participant lists; refusing to "
                    "send a masked update"
                ) from None
            size = crypto.SHARE_BYTES
            self._received[sender] = (
                crypto.share_int(plain[:size]),
                crypto.share_int(plain[size:]),
            )
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0:
            raise SecAggError(
                f"node {self.node!r} trained on {n_samples!r} samples; nothing to send"
            )
        if n_samples > config.max_samples():
            raise SecAggError(
                f"node {self.node!r}: {n_samples} samples x clip {config.clip} x 2^{bits} overflows "
                "64-bit fixed point; lower clip or precision_bits"
            )
        for name in sorted(params):
            values = np.asarray(params[name], dtype=np.float64)
            peak = float(np.max(np.abs(values))) if values.size else 0.0
            if not peak <= config.clip:  # also catches NaN
                raise SecAggError(
                    f"node {self.node!r}: parameter {name!r} reaches {peak:.6g}, beyond the "
                    f"secure-aggregation range +-{config.clip:g}; raise SecAggConfig(clip=...) "
                    "(nothing is clipped silently)"
                )
        scale = float(n_samples) * 2.0**bits
        vector = np.rint(flatten(params) * scale).astype(np.int64).view(np.uint64)
        crypto.add_mask(
            vector,
            crypto.derive(
                self._b, crypto.round_salt(self.experiment_id, self.round), "fedplug-secagg|self"
            ),
            +1,
        )
        salt = crypto.round_salt(self.experiment_id, self.round)
        for peer in peers:
            if peer == self.node:
                continue
            secret = crypto.agree(self._s, self._peer_s[peer])
            low, high = sorted((self.node, peer))
            seed = crypto.derive(secret, salt, _pair_info("mask", low, high))
            crypto.add_mask(vector, seed, +1 if peer > self.node else -1)
        self._masked_round = round_index
        return SecAggData(SCHEME, "masked", {"round": round_index}, {"masked": vector})

    def _unmask(self, round_index: int, values: dict[str, Any]) -> SecAggData:
        self._check_round(round_index, values)
        survivors = _names(values, "survivors")
        dropped = _names(values, "dropped")
        if set(survivors) & set(dropped):
            raise SecAggError(
                f"nodes {sorted(set(survivors) & set(dropped))} are listed both as survivors and "
                "as dropped; refusing to reveal both of their secrets"
            )
        if not set(survivors) | set(dropped) <= set(self.participants):
            raise SecAggError("the unmasking names nodes that were not in the round")
        if self.node not in survivors or self._masked_round != round_index:
            raise SecAggError(f"node {self.node!r} sent no masked update in round {round_index}")
        if len(survivors) < self.threshold:
            raise SecAggError(
                f"only {len(survivors)} survivors, below the threshold {self.threshold}; "
                "refusing to reveal shares"
            )
        if self._revealed == f"{round_index}":
            raise SecAggError(
                f"node {self.node!r} already answered the unmasking of round {round_index}"
            )
        arrays = {}
        for name in survivors:
            share = (
                self._own_shares[1]
                if name == self.node
                else self._received.get(name, (None, None))[1]
            )
            if share is not None:
                arrays[f"b:{name}"] = _u8(crypto.share_bytes(share))
        for name in dropped:
            share = self._received.get(name, (None, None))[0]
            if share is not None:
                arrays[f"s:{name}"] = _u8(crypto.share_bytes(share))
        self._revealed = f"{round_index}"
        return SecAggData(SCHEME, "unmask", {"round": round_index}, arrays)


# -- researcher side ----------------------------------------------------------------------------


class MaskingScheme(SecAggScheme):
    """The researcher side: relays keys and shares, sums masked vectors, unmasks."""

    name = SCHEME
    settings_class = SecAggConfig

    def __init__(self, config: SecAggConfig | None = None) -> None:
        if config is None:
            config = SecAggConfig()
        if not isinstance(config, SecAggConfig):
            raise ConfigError(f"the masking scheme takes a SecAggConfig, got {config!r}")
        super().__init__(config)
        self.config: SecAggConfig = config
        #: why nodes dropped out of the current round's secure-aggregation steps (node -> reason)
        self.failures: dict[str, str] = {}
        self.participants: list[str] = []  # of the current round, once begin_round ran
        self.threshold: int | None = None
        self.dropped: list[str] = []  # nodes whose masks the last result() removed

    @classmethod
    def node_side(cls, node: str, experiment_id: str) -> MaskingNode:
        return MaskingNode(node, experiment_id)

    def run_round(self, round: Any) -> Params:
        """The round's training under the scheme: key exchange among the selected nodes,
        training requests carrying the round's context, masked replies summed as they arrive,
        then unmasking (recovering from nodes that dropped out)."""
        nodes, context = self.begin_round(
            round.experiment_id, round.index, round.nodes, round.spec, round.exchange
        )
        for node in round.nodes:
            if node not in nodes:
                reason = self.failures.get(node, "no reason given")
                round.fail(node, f"dropped out of the secure-aggregation set-up: {reason}")

        def fold(node: str, reply: TrainReply) -> None:
            if reply.secagg is None or reply.params:
                raise MessageError(
                    f"node {node!r} replied without a masked update to a secure-aggregation request"
                )
            try:
                self.add(node, reply.n_samples, reply.secagg)
            except (SecAggError, MessageError, AggregationError) as exc:
                raise NodeError(node, f"{type(exc).__name__}: {exc}") from None

        round.train(nodes, fold, secagg=context)
        average = self.result(round.index, round.exchange)
        if params_spec(average) != round.spec:
            raise SecAggError(
                f"secure aggregation returned parameters {params_spec(average)}, expected "
                f"{round.spec}; the global model is unchanged"
            )
        for node, reason in self.failures.items():
            round.fail(node, f"secure aggregation: {reason}")
        return average

    def begin_round(
        self,
        experiment_id: str,
        round_index: int,
        nodes: list[str],
        spec: dict[str, tuple[tuple[int, ...], str]],
        exchange: Exchange,
    ) -> tuple[list[str], SecAggData]:
        self.experiment_id, self.round = experiment_id, round_index
        self.failures = {}
        self.spec = dict(sorted(spec.items()))
        self.size = sum(math.prod(shape) for shape, _ in self.spec.values())
        participants = sorted(nodes)
        failures: dict[str, str] = {}
        while True:  # a node failing during the key exchange: exchange again without it
            threshold = self.config.threshold_for(len(participants))
            keys, failed = exchange(
                SecAggData(
                    SCHEME,
                    "keys",
                    {"round": round_index, "participants": participants, "threshold": threshold},
                ),
                participants,
            )
            failures.update(failed)
            if failed:
                participants = sorted(keys)
                continue
            failed = {}
            public = {}
            for node, data in keys.items():
                c_pk, s_pk = data.arrays.get("c_pk"), data.arrays.get("s_pk")
                if not all(_is_public_key(key) for key in (c_pk, s_pk)):
                    # excluded, named: one bad key would make every honest node fail the shares
                    failed[node] = "sent an invalid X25519 public key (malformed or low-order)"
                    continue
                public[f"c_pk:{node}"], public[f"s_pk:{node}"] = np.asarray(c_pk), np.asarray(s_pk)
            if failed:
                failures.update(failed)
                participants = sorted(set(keys) - set(failed))
                continue
            shares, failed = exchange(
                SecAggData(SCHEME, "shares", {"round": round_index}, public), participants
            )
            failures.update(failed)
            if failed:
                participants = sorted(shares)
                continue
            break
        self.participants = participants
        self.threshold = threshold
        self.s_public = {node: public[f"s_pk:{node}"].tobytes() for node in participants}
        arrays: dict[str, np.ndarray] = {f"s_pk:{n}": public[f"s_pk:{n}"] for n in participants}
        arrays["shares"] = _share_table(participants, shares)
        self.failures.update(failures)
        self._total = np.zeros(self.size, dtype=np.uint64)
        self._samples: dict[str, int] = {}
        context = SecAggData(
            SCHEME,
            "mask",
            {
                "round": round_index,
                "participants": participants,
                "clip": float(self.config.clip),
                "precision_bits": self.config.precision_bits,
            },
            arrays,
        )
        return participants, context

    def add(self, node: str, n_samples: int, data: SecAggData) -> None:
        if node not in self.participants or node in self._samples:
            raise SecAggError(f"unexpected masked update from {node!r}")
        masked = data.arrays.get("masked")
        if data.step != "masked" or masked is None:
            raise MessageError(f"node {node!r} sent no masked vector")
        if masked.dtype != np.uint64 or masked.shape != (self.size,):
            raise MessageError(
                f"node {node!r} sent a masked vector of {masked.dtype} {masked.shape}, expected "
                f"uint64 ({self.size},)"
            )
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0:
            raise SecAggError(f"node {node!r} reported {n_samples!r} training samples")
        np.add(self._total, masked, out=self._total)  # modulo 2^64
        self._samples[node] = n_samples

    def result(self, round_index: int, exchange: Exchange) -> Params:
        survivors = sorted(self._samples)
        dropped = sorted(set(self.participants) - set(survivors))
        total_samples = sum(self._samples.values())
        if total_samples > self.config.max_samples():
            raise SecAggError(
                f"{total_samples} samples in total overflow 64-bit fixed point at clip "
                f"{self.config.clip} and 2^{self.config.precision_bits}; lower one of them"
            )
        if len(survivors) < self.threshold:
            raise SecAggError(
                f"only {len(survivors)} of {len(self.participants)} nodes sent their masked "
                f"update, below the recovery threshold {self.threshold}; the round fails and the "
                f"global model is unchanged (dropped: {dropped})"
            )
        answers, failed = exchange(
            SecAggData(
                SCHEME,
                "unmask",
                {"round": round_index, "survivors": survivors, "dropped": dropped},
            ),
            survivors,
        )
        self.failures.update(failed)
        if len(answers) < self.threshold:
            raise SecAggError(
                f"only {len(answers)} of {len(survivors)} surviving nodes answered the unmasking "
                f"({failed}), below the threshold "
                f"{self.threshold}; the round fails and the global model is unchanged"
            )
        xs = {name: i + 1 for i, name in enumerate(self.participants)}
        salt = crypto.round_salt(self.experiment_id, self.round)
        total = self._total
        for name in survivors:
            b = crypto.combine_shares(self._collect_shares(answers, f"b:{name}", xs))
            crypto.add_mask(total, crypto.derive(b, salt, "fedplug-secagg|self"), -1)
        for name in dropped:
            s_private = crypto.combine_shares(self._collect_shares(answers, f"s:{name}", xs))
            for peer in survivors:
                secret = crypto.agree(s_private, self.s_public[peer])
                low, high = sorted((name, peer))
                seed = crypto.derive(secret, salt, _pair_info("mask", low, high))
                # ``peer`` added +mask when ``name`` sorts after it, -mask otherwise
                crypto.add_mask(total, seed, -1 if name > peer else +1)
        average = total.view(np.int64).astype(np.float64)
        average /= float(total_samples) * 2.0**self.config.precision_bits
        out: Params = {}
        position = 0
        for name, (shape, dtype) in self.spec.items():
            count = math.prod(shape)
            out[name] = average[position : position + count].reshape(shape).astype(np.dtype(dtype))
            position += count
        self.dropped = dropped
        return out

    def _collect_shares(
        self, answers: dict[str, SecAggData], key: str, xs: dict[str, int]
    ) -> dict[int, int]:
        shares = {}
        for node, data in answers.items():
            if key in data.arrays:
                shares[xs[node]] = crypto.share_int(_bytes(data.arrays[key], key))
            if len(shares) == self.threshold:
                return shares
        raise SecAggError(
            f"only {len(shares)} shares of {key.split(':', 1)[1]!r}'s "
            f"{'self mask' if key.startswith('b:') else 'mask key'} arrived, below the threshold "
            f"{self.threshold}; the round fails and the global model is unchanged"
        )
