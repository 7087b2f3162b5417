"""The cryptographic primitives of the masking scheme, all from the ``cryptography`` package.

- key agreement: X25519;
- key derivation: HKDF-SHA256, salted with the experiment and round, bound to the pair of nodes;
- mask expansion: the ChaCha20 stream cipher keyed by a derived seed, read as uint64 words;
- share encryption: ChaCha20-Poly1305 (authenticated; a tampered share is refused);
- secret sharing: Shamir over the prime field GF(2^521 - 1), with ``secrets`` randomness.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedplug.errors import SecAggError

KEY_BYTES = 32
PRIME = 2**521 - 1  # a Mersenne prime: room for a 256-bit secret in one field element
SHARE_BYTES = 66  # ceil(521 / 8)
_NONCE = b"\x00" * 16  # each ChaCha20 key expands exactly one mask, so a fixed nonce is safe
_CHUNK_WORDS = 1 << 20  # expand masks 8 MB at a time (bounded scratch memory)


def new_keypair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


@functools.cache
def _probe_key() -> X25519PrivateKey:
    """One key per process to test peers' public keys with (its secrets are never used)."""
    return X25519PrivateKey.generate()


def valid_public_key(public: bytes) -> bool:
    """Whether ``public`` is an X25519 public key a peer can agree with: 32 bytes, and not a
    low-order point (all zeros, for one), whose shared secret would be all zeros."""
    if len(public) != KEY_BYTES:
        return False
    try:  # any scalar tells: X25519 scalars are multiples of 8, which zero every low-order point
        _probe_key().exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError:
        return False
    return True


def participants_digest(participants: list[str]) -> str:
    """A short fingerprint of a round's participant list, bound into every encrypted share: a
    node decrypts a peer's shares only if both were given the same list."""
    joined = "\x00".join(participants).encode()
    return hashlib.sha256(b"fedplug-secagg|participants|" + joined).hexdigest()[:32]


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes_raw()


def agree(private: X25519PrivateKey | bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer's public key (32 bytes)."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError as exc:
        raise SecAggError(f"invalid X25519 public key: {exc}") from None


def derive(secret: bytes, salt: bytes, info: str) -> bytes:
    """A 32-byte key from ``secret`` by HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info.encode()).derive(
        secret
    )


def round_salt(experiment_id: str, round_index: int) -> bytes:
    return hashlib.sha256(f"fedplug-secagg|{experiment_id}|{round_index}".encode()).digest()


def add_mask(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """Add (``sign`` +1) or subtract (-1) the mask that ``seed`` expands to, in place, modulo
    2^64. The mask is ChaCha20's keystream read as little-endian uint64 words."""
    n = vector.size
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    zeros = bytes(8 * min(n, _CHUNK_WORDS))
    for start in range(0, n, _CHUNK_WORDS):
        words = min(_CHUNK_WORDS, n - start)
        mask = np.frombuffer(encryptor.update(zeros[: 8 * words]), dtype="<u8")
        target = vector[start : start + words]
        if sign > 0:
            np.add(target, mask, out=target)
        else:
            np.subtract(target, mask, out=target)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    if len(blob) < 12 + 16:
        raise SecAggError("an encrypted share is too short to be one")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:12], blob[12:], associated)
    except InvalidTag:
        raise SecAggError(
            "an encrypted share failed authentication (tampered, or meant for another node)"
        ) from None


def split_secret(secret: bytes, xs: list[int], threshold: int) -> dict[int, int]:
    """Shamir shares of ``secret`` at the points ``xs``: any ``threshold`` of them rebuild it,
    fewer reveal nothing."""
    value = int.from_bytes(secret, "big")
    coefficients = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = y
    return shares


def combine_shares(shares: dict[int, int], size: int = KEY_BYTES) -> bytes:
    """The secret at x = 0 from ``shares`` (Lagrange interpolation)."""
    secret = 0
    points = list(shares.items())
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (-xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * size):
        raise SecAggError("the shares do not rebuild a valid secret (inconsistent shares)")
    return secret.to_bytes(size, "big")


def share_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_int(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise SecAggError(f"a share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecAggError("a share lies outside the field")
    return value
