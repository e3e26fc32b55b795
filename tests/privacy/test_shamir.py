"""Shamir secret sharing: any t shares reconstruct, t-1 reveal nothing, tampering is caught."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedray.privacy.lib import shamir


def _points(shares: list[bytes]) -> list[tuple[int, int]]:
    return [(shamir.share_index(s), int.from_bytes(s[8:], "big")) for s in shares]


def test_every_t_subset_reconstructs():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 3, range(1, 6))
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(subset) == secret
    assert shamir.combine(shares) == secret  # more than t, all consistent


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_random_secrets_thresholds_and_indices(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs)
    picked = data.draw(st.permutations(shares))[:t]
    assert shamir.combine(picked) == secret
    assert {shamir.share_index(s) for s in shares} == set(xs)
    assert all(shamir.share_threshold(s) == t for s in shares)


def test_fewer_than_t_shares_raise():
    shares = shamir.split(b"k" * 32, 4, range(1, 8))
    with pytest.raises(ValueError, match="at least 4 are needed"):
        shamir.combine(shares[:3])
    with pytest.raises(ValueError, match="at least 4 are needed"):
        shamir.combine([shares[0]] * 4)  # duplicates do not count twice


def test_t_minus_1_shares_are_consistent_with_every_secret():
    """Information-theoretic hiding: t-1 shares plus any claimed secret fit one polynomial."""
    secret = secrets.token_bytes(32)
    t = 4
    shares = shamir.split(secret, t, range(1, 8))
    known = _points(shares[: t - 1])
    # Interpolating only t-1 points (as if the threshold were t-1) gives some other value.
    assert shamir._lagrange_at(known, 0) != int.from_bytes(secret, "big")
    for claimed in (bytes(32), b"\xff" * 32, secrets.token_bytes(32)):
        # The polynomial through (0, claimed) and the t-1 real shares yields a valid t-th share.
        x_t = 7
        y_t = shamir._lagrange_at([(0, int.from_bytes(claimed, "big")), *known], x_t)
        forged = shamir._encode(t, x_t, 32, y_t)
        assert shamir.combine([*shares[: t - 1], forged]) == claimed


def test_tampered_share_gives_a_wrong_value_or_is_detected():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 3, range(1, 6))
    # A small chosen change to one of exactly t shares: a different secret, not detectable here
    # (callers check a commitment, see secagg_core).
    low = bytearray(shares[1])
    low[-1] ^= 0x01
    assert shamir.combine([shares[0], bytes(low), shares[2]]) != secret
    # Random garbage in a share: the reconstruction leaves the 256-bit range and is rejected.
    y = secrets.randbelow(shamir.PRIME)
    garbage = shares[1][:8] + y.to_bytes(66, "big")
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine([shares[0], garbage, shares[2]])
    # More than t shares: any altered one is caught by the consistency check, whatever its place.
    for bad in (bytes(low), garbage):
        for pos in range(4):
            subset = [shares[0], shares[2], shares[3]]
            subset.insert(pos, bad)
            with pytest.raises(ValueError, match="inconsistent"):
                shamir.combine(subset)


def test_shares_of_different_secrets_do_not_mix():
    a = shamir.split(b"a" * 32, 2, range(1, 4))
    b = shamir.split(b"b" * 32, 2, range(1, 4))
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine([a[0], b[1], a[2]])
    c = shamir.split(b"c" * 32, 3, range(1, 4))
    with pytest.raises(ValueError, match="disagree"):
        shamir.combine([a[0], c[1]])
    with pytest.raises(ValueError, match="two different shares"):
        shamir.combine([a[0], b[0]])


def test_fresh_randomness_per_split():
    one = shamir.split(b"s" * 32, 2, [1, 2])
    two = shamir.split(b"s" * 32, 2, [1, 2])
    assert one != two


@pytest.mark.parametrize(
    ("secret", "t", "xs", "match"),
    [
        (b"", 1, [1], "1..64 bytes"),
        (b"x" * 65, 1, [1], "1..64 bytes"),
        (b"x", 0, [1], "threshold=0"),
        (b"x", 3, [1, 2], "threshold=3"),
        (b"x", 1, [0], "distinct integers"),
        (b"x", 1, [1, 1], "distinct integers"),
    ],
)
def test_bad_split_input(secret, t, xs, match):
    with pytest.raises(ValueError, match=match):
        shamir.split(secret, t, xs)


def test_malformed_shares_and_secret_not_in_messages():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 2, [1, 2])
    with pytest.raises(ValueError, match="74 bytes") as err:
        shamir.combine([shares[0][:-1], shares[1]])
    assert secret.hex() not in str(err.value)
    with pytest.raises(ValueError, match="no shares"):
        shamir.combine([])
    bad_version = b"\x09" + shares[0][1:]
    with pytest.raises(ValueError, match="version"):
        shamir.combine([bad_version, shares[1]])
