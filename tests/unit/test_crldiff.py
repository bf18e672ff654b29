"""core.crl.diff: diffs rebuild the target exactly, and refuse the wrong base."""
import hashlib
import os

import pytest

from core.crl.diff import DiffError, apply_diff, make_diff


def test_round_trip_small_change_is_small():
    base = os.urandom(200_000)
    target = base[:50_000] + os.urandom(40) + base[50_000:150_000] + base[150_100:]
    diff = make_diff(base, target)
    assert len(diff) < 1000
    assert apply_diff(base, diff, hashlib.sha256(target).hexdigest()) == target


def test_wrong_base_or_checksum_is_refused():
    base, target = os.urandom(10_000), os.urandom(10_000)
    diff = make_diff(base, target)
    with pytest.raises(DiffError):
        apply_diff(base, diff, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(DiffError):
        apply_diff(base, b"not a zstd frame")
