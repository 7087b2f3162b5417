"""The masking scheme's primitives: Shamir sharing over GF(2^521 - 1), ChaCha20 masks over
uint64, X25519 agreement, HKDF derivation and ChaCha20-Poly1305 share encryption."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedplug.errors import SecAggError
from fedplug_secagg import crypto

SECRET = bytes(range(1, 33))


def rebuilt_or_none(shares: dict[int, int]) -> bytes | None:
    """What ``shares`` interpolate to, or None when that is not a 32-byte value at all."""
    try:
        return crypto.combine_shares(shares)
    except SecAggError:
        return None


# -- Shamir -------------------------------------------------------------------------------------


def test_any_threshold_shares_of_five_rebuild_the_secret():
    shares = crypto.split_secret(SECRET, [1, 2, 3, 4, 5], threshold=3)
    assert sorted(shares) == [1, 2, 3, 4, 5]
    assert all(0 <= y < crypto.PRIME for y in shares.values())
    for subset in itertools.combinations(sorted(shares), 3):
        assert crypto.combine_shares({x: shares[x] for x in subset}) == SECRET
    for subset in itertools.combinations(sorted(shares), 4):  # more than t also works
        assert crypto.combine_shares({x: shares[x] for x in subset}) == SECRET
    assert crypto.combine_shares(shares) == SECRET


def test_threshold_minus_one_shares_do_not_rebuild_the_secret():
    shares = crypto.split_secret(SECRET, [1, 2, 3, 4, 5], threshold=3)
    for subset in itertools.combinations(sorted(shares), 2):
        assert rebuilt_or_none({x: shares[x] for x in subset}) != SECRET


def test_shares_are_fresh_randomness_each_split():
    first = crypto.split_secret(SECRET, [1, 2, 3], threshold=2)
    second = crypto.split_secret(SECRET, [1, 2, 3], threshold=2)
    assert all(first[x] != second[x] for x in (1, 2, 3))
    # a single share is not the secret itself
    assert all(crypto.share_bytes(y)[-32:] != SECRET for y in first.values())


def test_a_32_byte_secret_with_leading_zeros_survives():
    secret = b"\x00" * 31 + b"\x07"
    shares = crypto.split_secret(secret, [1, 2, 3], threshold=2)
    assert crypto.combine_shares({1: shares[1], 3: shares[3]}) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    threshold=st.integers(min_value=2, max_value=5),
    extra=st.integers(min_value=0, max_value=3),
    data=st.data(),
)
def test_shamir_property_any_t_rebuild_and_t_minus_one_do_not(secret, threshold, extra, data):
    n = threshold + extra
    shares = crypto.split_secret(secret, list(range(1, n + 1)), threshold)
    chosen = data.draw(
        st.lists(st.sampled_from(range(1, n + 1)), min_size=threshold, max_size=n, unique=True)
    )
    assert crypto.combine_shares({x: shares[x] for x in chosen}) == secret
    fewer = chosen[: threshold - 1]
    assert rebuilt_or_none({x: shares[x] for x in fewer}) != secret


def test_share_bytes_roundtrip_and_shares_outside_the_field_are_refused():
    value = crypto.PRIME - 1
    data = crypto.share_bytes(value)
    assert len(data) == crypto.SHARE_BYTES == 66
    assert crypto.share_int(data) == value
    with pytest.raises(SecAggError, match="outside the field"):
        crypto.share_int(crypto.PRIME.to_bytes(66, "big"))
    with pytest.raises(SecAggError, match="outside the field"):
        crypto.share_int(b"\xff" * 66)
    with pytest.raises(SecAggError, match="a share must be 66 bytes, got 65"):
        crypto.share_int(b"\x01" * 65)


def test_inconsistent_shares_are_refused_not_turned_into_a_wrong_key():
    shares = crypto.split_secret(SECRET, [1, 2, 3], threshold=2)
    # a share replaced by another field element interpolates to a value far beyond 2^256
    forged = {1: shares[1], 2: (shares[2] + 2**300) % crypto.PRIME}
    with pytest.raises(SecAggError, match="inconsistent shares"):
        crypto.combine_shares(forged)


# -- masks --------------------------------------------------------------------------------------


def test_adding_then_subtracting_a_mask_restores_the_vector_exactly():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    vector = original.copy()
    seed = os.urandom(32)
    crypto.add_mask(vector, seed, +1)
    assert np.count_nonzero(vector == original) < 5  # the mask changed (nearly) every word
    crypto.add_mask(vector, seed, -1)
    np.testing.assert_array_equal(vector, original)


def test_a_mask_wraps_modulo_two_to_the_64():
    seed = b"\x01" * 32
    mask = np.zeros(64, dtype=np.uint64)
    crypto.add_mask(mask, seed, +1)
    vector = np.full(64, np.iinfo(np.uint64).max, dtype=np.uint64)
    crypto.add_mask(vector, seed, +1)
    np.testing.assert_array_equal(vector, mask - np.uint64(1))
    negative = np.zeros(64, dtype=np.uint64)
    crypto.add_mask(negative, seed, -1)
    np.testing.assert_array_equal(negative + mask, np.zeros(64, dtype=np.uint64))


def test_different_seeds_give_different_masks_and_the_same_seed_the_same():
    def mask(seed: bytes) -> np.ndarray:
        vector = np.zeros(1000, dtype=np.uint64)
        crypto.add_mask(vector, seed, +1)
        return vector

    a, b = mask(b"\x00" * 32), mask(b"\x00" * 31 + b"\x01")
    assert np.count_nonzero(a == b) == 0
    np.testing.assert_array_equal(a, mask(b"\x00" * 32))


def test_long_masks_are_chunked_consistently():
    chunk = 1 << 20
    seed = b"\x42" * 32
    short = np.zeros(10, dtype=np.uint64)
    crypto.add_mask(short, seed, +1)
    one_chunk = np.zeros(chunk, dtype=np.uint64)
    crypto.add_mask(one_chunk, seed, +1)
    longer = np.zeros(chunk + 1000, dtype=np.uint64)
    crypto.add_mask(longer, seed, +1)
    long = np.zeros(2 * chunk + 3, dtype=np.uint64)
    crypto.add_mask(long, seed, +1)
    np.testing.assert_array_equal(one_chunk[:10], short)
    np.testing.assert_array_equal(longer[:chunk], one_chunk)
    np.testing.assert_array_equal(long[: chunk + 1000], longer)
    # the words after the first chunk are keystream too, not a repeat of the first chunk
    assert np.count_nonzero(long[chunk : chunk + 1000] == long[:1000]) == 0
    # a mask over the whole vector is one keystream: subtracting it restores zeros
    crypto.add_mask(long, seed, -1)
    assert not long.any()


def test_an_empty_vector_takes_a_mask_without_error():
    vector = np.zeros(0, dtype=np.uint64)
    crypto.add_mask(vector, b"\x00" * 32, +1)
    assert vector.size == 0


# -- key agreement and derivation ---------------------------------------------------------------


def test_x25519_agreement_is_symmetric_and_pair_specific():
    a_private, a_public = crypto.new_keypair()
    b_private, b_public = crypto.new_keypair()
    c_private, c_public = crypto.new_keypair()
    assert len(a_public) == crypto.KEY_BYTES
    ab = crypto.agree(a_private, b_public)
    assert ab == crypto.agree(b_private, a_public)
    assert len(ab) == 32
    assert ab != crypto.agree(a_private, c_public)
    assert crypto.agree(c_private, a_public) == crypto.agree(a_private, c_public)
    # from the raw private bytes (what the researcher rebuilds from shares) too
    assert crypto.agree(crypto.private_bytes(b_private), a_public) == ab


def test_agreement_with_a_malformed_public_key_is_a_secagg_error():
    private, _ = crypto.new_keypair()
    with pytest.raises(SecAggError, match="invalid X25519 public key"):
        crypto.agree(private, b"\x01" * 31)


def test_derive_depends_on_secret_salt_and_info():
    secret = b"\x11" * 32
    salt = crypto.round_salt("exp", 0)
    key = crypto.derive(secret, salt, "fedplug-secagg|mask|a|b")
    assert len(key) == 32
    assert key == crypto.derive(secret, salt, "fedplug-secagg|mask|a|b")
    assert key != crypto.derive(secret, crypto.round_salt("exp", 1), "fedplug-secagg|mask|a|b")
    assert key != crypto.derive(secret, crypto.round_salt("other", 0), "fedplug-secagg|mask|a|b")
    assert key != crypto.derive(secret, salt, "fedplug-secagg|mask|a|c")
    assert key != crypto.derive(secret, salt, "fedplug-secagg|share|a|b")
    assert key != crypto.derive(b"\x12" * 32, salt, "fedplug-secagg|mask|a|b")


# -- share encryption ---------------------------------------------------------------------------


def test_encrypt_decrypt_roundtrip_with_a_fresh_nonce():
    key = os.urandom(32)
    plaintext = os.urandom(132)
    blob = crypto.encrypt(key, plaintext, b"exp|0|a|b")
    assert crypto.decrypt(key, blob, b"exp|0|a|b") == plaintext
    assert len(blob) == 12 + len(plaintext) + 16
    assert plaintext not in blob
    assert crypto.encrypt(key, plaintext, b"exp|0|a|b") != blob  # random nonce


@pytest.mark.parametrize("position", [0, 12, 50, -1])
def test_a_tampered_ciphertext_is_refused(position):
    key = os.urandom(32)
    blob = bytearray(crypto.encrypt(key, b"share" * 20, b"aad"))
    blob[position] ^= 0x01
    with pytest.raises(SecAggError, match="failed authentication"):
        crypto.decrypt(key, bytes(blob), b"aad")


def test_wrong_associated_data_or_key_is_refused():
    key = os.urandom(32)
    blob = crypto.encrypt(key, b"share", b"exp|0|a|b")
    with pytest.raises(SecAggError, match="failed authentication"):
        crypto.decrypt(key, blob, b"exp|0|a|c")
    with pytest.raises(SecAggError, match="failed authentication"):
        crypto.decrypt(os.urandom(32), blob, b"exp|0|a|b")
    with pytest.raises(SecAggError, match="too short"):
        crypto.decrypt(key, blob[:27], b"exp|0|a|b")
