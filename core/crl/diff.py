"""Binary diffs between two CRLs of one issuer, so a client that holds CRL n fetches CRL m
as a few hundred bytes instead of megabytes over a 115200-baud line.

The diff is a zstandard frame compressed with the base CRL as a raw-content dictionary: the
new CRL is mostly the old one's bytes, which zstd encodes as back-references. Measured on a
100k-entry CRL (4 MB) plus 10 new entries: 940 bytes, 0.08 s to make, 1 ms to apply, at
level 9 (levels below 9 do not search a 4 MB dictionary and give ~2 MB).
"""
from __future__ import annotations

import hashlib

import zstandard

LEVEL = 9
WINDOW_LOG = 27  # 128 MiB: base and target of the largest CRLs fit in the window
MAX_OUTPUT = 1 << 30


class DiffError(Exception):
    code = "crl_diff_failed"


def _dictionary(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def make_diff(base: bytes, target: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, window_log=WINDOW_LOG, source_size=len(target), dict_size=len(base),
        write_content_size=True)
    return zstandard.ZstdCompressor(dict_data=_dictionary(base), compression_params=params).compress(target)


def apply_diff(base: bytes, diff: bytes, expected_sha256: str | None = None) -> bytes:
    """Rebuild the target from base + diff; checks the target's sha256 when given."""
    try:
        target = zstandard.ZstdDecompressor(dict_data=_dictionary(base),
                                            max_window_size=1 << WINDOW_LOG).decompress(
            diff, max_output_size=MAX_OUTPUT)
    except zstandard.ZstdError as exc:
        raise DiffError(f"the diff does not apply to this base: {exc}") from None
    if expected_sha256 is not None and hashlib.sha256(target).hexdigest() != expected_sha256:
        raise DiffError("the rebuilt CRL does not match the signer's sha256")
    return target
