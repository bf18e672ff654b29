"""OpenPGP packet framing, ASCII armor and public-key parsing (RFC 4880).

Plain functions over bytes: no I/O, no actors, no HSM. `core.openpgp.certify` builds the CA's keys
and certifications on top of this and re-exports the public names; import from there.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from core.wire.protocol import SignerError

# A user key with thousands of third-party signatures is still well under 1 MiB; anything
# bigger is refused before parsing so hostile input cannot cost unbounded memory or time.
MAX_INPUT_BYTES = 1 << 20

# Packet tags (RFC 4880 section 4.3).
TAG_SIGNATURE = 2
TAG_SECRET_KEY = 5
TAG_PUBLIC_KEY = 6
TAG_SECRET_SUBKEY = 7
TAG_COMPRESSED_DATA = 8
TAG_SYMMETRIC_DATA = 9
TAG_MARKER = 10
TAG_LITERAL_DATA = 11
TAG_TRUST = 12
TAG_USER_ID = 13
TAG_PUBLIC_SUBKEY = 14
TAG_USER_ATTRIBUTE = 17
TAG_PROTECTED_DATA = 18

# Partial body lengths are allowed only for data packets (RFC 4880 section 4.2.2.4).
PARTIAL_LENGTH_TAGS = frozenset(
    {TAG_COMPRESSED_DATA, TAG_SYMMETRIC_DATA, TAG_LITERAL_DATA, TAG_PROTECTED_DATA}
)
MIN_FIRST_PARTIAL_LENGTH = 512

# Public-key algorithm ids (RFC 4880 section 9.1, RFC 6637 section 5, EdDSA as used by GnuPG).
PUBKEY_RSA = 1
PUBKEY_RSA_ENCRYPT_ONLY = 2
PUBKEY_RSA_SIGN_ONLY = 3
PUBKEY_ELGAMAL = 16
PUBKEY_DSA = 17
PUBKEY_ECDH = 18
PUBKEY_ECDSA = 19
PUBKEY_ELGAMAL_SIGN = 20
PUBKEY_EDDSA = 22

# Curve OIDs (RFC 6637 section 11, RFC 4880bis) -> (name as GnuPG prints it, size in bits).
CURVES: dict[bytes, tuple[str, int]] = {
    bytes.fromhex("2a8648ce3d030107"): ("nistp256", 256),
    bytes.fromhex("2b81040022"): ("nistp384", 384),
    bytes.fromhex("2b81040023"): ("nistp521", 521),
    bytes.fromhex("2b2403030208010107"): ("brainpoolP256r1", 256),
    bytes.fromhex("2b240303020801010b"): ("brainpoolP384r1", 384),
    bytes.fromhex("2b240303020801010d"): ("brainpoolP512r1", 512),
    bytes.fromhex("2b8104000a"): ("secp256k1", 256),
    bytes.fromhex("2b06010401da470f01"): ("ed25519", 255),
    bytes.fromhex("2b060104019755010501"): ("cv25519", 255),
    bytes.fromhex("2b6571"): ("ed448", 448),
    bytes.fromhex("2b656f"): ("cv448", 448),
}

ARMOR_KINDS = frozenset({"PUBLIC KEY BLOCK", "PRIVATE KEY BLOCK", "SIGNATURE", "MESSAGE"})
ARMOR_LINE_CHARS = 64  # RFC 4880 section 6.3: at most 76, GnuPG writes 64
CRC24_INIT = 0xB704CE  # RFC 4880 section 6.1
CRC24_POLY = 0x1864CFB


class OpenPgpError(SignerError):
    """Base of every OpenPGP input error; `code` is the stable error code for the protocol.
    A SignerError like every error a client can be answered; str() stays the message alone."""

    code = "openpgp_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return self.message


class MalformedPacket(OpenPgpError):
    code = "openpgp_malformed"


class UnsupportedKey(OpenPgpError):
    code = "openpgp_unsupported_key"


class OversizedInput(OpenPgpError):
    code = "openpgp_oversized"


class SecretKeyMaterial(OpenPgpError):
    code = "openpgp_secret_key"


class MultiplePrimaryKeys(OpenPgpError):
    code = "openpgp_multiple_keys"


class Packet(NamedTuple):
    tag: int
    body: bytes


def check_input_size(data: bytes | str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise OversizedInput(f"{len(data)} bytes of OpenPGP input, limit {max_bytes}")


# --- Packet framing (RFC 4880 section 4.2) -------------------------------------------------


def _take(data: bytes, offset: int, count: int) -> bytes:
    if offset + count > len(data):
        have = len(data) - offset
        raise MalformedPacket(f"truncated: need {count} bytes at offset {offset}, have {have}")
    return data[offset : offset + count]


def _read_old_format_body(data: bytes, offset: int, length_type: int) -> tuple[bytes, int]:
    """Old-format length: 1, 2 or 4 octets, or type 3 = runs to the end of input (4.2.1)."""
    if length_type == 3:
        return data[offset:], len(data)
    width = (1, 2, 4)[length_type]
    length = int.from_bytes(_take(data, offset, width), "big")
    return _take(data, offset + width, length), offset + width + length


def _read_new_length(data: bytes, offset: int) -> tuple[int, int, bool]:
    """One new-format length (4.2.2): (length, offset after it, is_partial)."""
    first = _take(data, offset, 1)[0]
    if first < 192:
        return first, offset + 1, False
    if first < 224:
        second = _take(data, offset + 1, 1)[0]
        return ((first - 192) << 8) + second + 192, offset + 2, False
    if first == 255:
        return int.from_bytes(_take(data, offset + 1, 4), "big"), offset + 5, False
    return 1 << (first & 0x1F), offset + 1, True


def _read_new_format_body(data: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    length, offset, partial = _read_new_length(data, offset)
    if not partial:
        return _take(data, offset, length), offset + length
    if tag not in PARTIAL_LENGTH_TAGS:
        raise MalformedPacket(f"partial body length on packet tag {tag} (RFC 4880 4.2.2.4)")
    if length < MIN_FIRST_PARTIAL_LENGTH:
        raise MalformedPacket(f"first partial body length {length} < 512 (RFC 4880 4.2.2.4)")
    chunks = []
    while partial:
        chunks.append(_take(data, offset, length))
        length, offset, partial = _read_new_length(data, offset + length)
    chunks.append(_take(data, offset, length))  # the last chunk always has a definite length
    return b"".join(chunks), offset + length


def _read_packet(data: bytes, offset: int) -> tuple[Packet, int]:
    header = data[offset]
    if not header & 0x80:
        raise MalformedPacket(f"offset {offset}: packet header without bit 7 (RFC 4880 4.2)")
    if header & 0x40:
        tag = header & 0x3F
        body, end = _read_new_format_body(data, offset + 1, tag)
    else:
        tag = (header >> 2) & 0x0F
        body, end = _read_old_format_body(data, offset + 1, header & 0x03)
    if tag == 0:
        raise MalformedPacket(f"offset {offset}: reserved packet tag 0 (RFC 4880 4.3)")
    return Packet(tag, body), end


def parse_packets(data: bytes, *, max_bytes: int = MAX_INPUT_BYTES) -> list[Packet]:
    """Split a binary OpenPGP packet stream into (tag, body) packets."""
    check_input_size(data, max_bytes)
    packets: list[Packet] = []
    offset = 0
    while offset < len(data):
        packet, offset = _read_packet(data, offset)
        packets.append(packet)
    return packets


def encode_length(length: int) -> bytes:
    """Shortest definite new-format length; subpackets use the same encoding (5.2.3.1)."""
    if length < 192:
        return bytes([length])
    if length < 8384:
        length -= 192
        return bytes([(length >> 8) + 192, length & 0xFF])
    if length < 1 << 32:
        return b"\xff" + length.to_bytes(4, "big")
    raise OversizedInput(f"{length} bytes do not fit an OpenPGP length")


def serialise_packet(tag: int, body: bytes) -> bytes:
    """One packet with a new-format header (4.2.2), which every tag 1..63 can use."""
    if not 0 < tag < 64:
        raise ValueError(f"packet tag {tag} out of range")
    return bytes([0xC0 | tag]) + encode_length(len(body)) + body


def serialise_packets(packets: Iterable[Packet]) -> bytes:
    return b"".join(serialise_packet(tag, body) for tag, body in packets)


# --- ASCII armor (RFC 4880 section 6) ------------------------------------------------------


def _crc24_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return table


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes) -> int:
    crc = CRC24_INIT
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ _CRC24_TABLE[((crc >> 16) ^ byte) & 0xFF]
    return crc


def armor(data: bytes, kind: str = "PUBLIC KEY BLOCK") -> str:
    if kind not in ARMOR_KINDS:
        raise ValueError(f"unknown armor kind {kind!r}")
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i : i + ARMOR_LINE_CHARS] for i in range(0, len(encoded), ARMOR_LINE_CHARS)]
    checksum = base64.b64encode(crc24(data).to_bytes(3, "big")).decode("ascii")
    return "\n".join(
        [f"-----BEGIN PGP {kind}-----", "", *lines, f"={checksum}", f"-----END PGP {kind}-----", ""]
    )


def _armor_body_lines(lines: list[str], expected_kind: str | None) -> list[str]:
    """The lines between the armor header lines' blank line and the tail line (6.2)."""
    try:
        begin = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP "))
    except StopIteration:
        raise MalformedPacket("no '-----BEGIN PGP' armor header line") from None
    kind = lines[begin][len("-----BEGIN PGP ") :].removesuffix("-----")
    if expected_kind is not None and kind != expected_kind:
        raise MalformedPacket(f"armor holds {kind!r}, expected {expected_kind!r}")
    tail = f"-----END PGP {kind}-----"
    if tail not in lines[begin:]:
        raise MalformedPacket(f"missing armor tail line {tail!r}")
    body = lines[begin + 1 : lines.index(tail, begin)]
    # Armor headers ("Key: Value") end at a blank line; some writers omit both (6.2).
    while body and ":" in body[0]:
        body.pop(0)
    if body and body[0] == "":
        body.pop(0)
    return body


def dearmor(
    text: str | bytes, *, expected_kind: str | None = None, max_bytes: int = MAX_INPUT_BYTES
) -> bytes:
    """Decode the first armored block in `text`, checking its CRC24 when present (6.2)."""
    # Base64 is 4/3 of the data, plus line breaks and headers.
    check_input_size(text, 2 * max_bytes)
    if isinstance(text, bytes):
        # Armor header values are UTF-8 (RFC 4880 6.2: "Comment: Schlüssel" is valid); the
        # base64 body must still be ASCII, which b64decode checks below.
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("armored text is not UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    body = _armor_body_lines(lines, expected_kind)
    checksum = None
    if body and body[-1].startswith("=") and len(body[-1]) == 5:  # "=" + base64 of 3 octets
        checksum = body.pop()[1:]
    try:
        data = base64.b64decode("".join(body), validate=True)
        expected_crc = None if checksum is None else base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPacket("invalid base64 in armor") from None
    if expected_crc is not None and expected_crc != crc24(data).to_bytes(3, "big"):
        raise MalformedPacket("armor CRC24 mismatch")
    return data


# --- Public-key packet bodies (RFC 4880 section 5.5.2) -------------------------------------


@dataclass(frozen=True)
class PublicKeyInfo:
    """What a key policy needs to know about one v4 public key or subkey."""

    created: int
    algorithm: int
    algorithm_name: str  # "rsa", "dsa", "elgamal", "ecdh", "ecdsa" or "eddsa"
    bits: int | None  # modulus / prime p size, or curve size; None for an unknown curve
    curve_oid: bytes | None = None
    curve_name: str | None = None  # None for an unknown curve or a non-EC algorithm


# Integer-based algorithms: name and the number of MPIs in the key; the first one sets the size.
_INTEGER_ALGORITHMS = {
    PUBKEY_RSA: ("rsa", 2),  # n, e
    PUBKEY_RSA_ENCRYPT_ONLY: ("rsa", 2),
    PUBKEY_RSA_SIGN_ONLY: ("rsa", 2),
    PUBKEY_ELGAMAL: ("elgamal", 3),  # p, g, y
    PUBKEY_ELGAMAL_SIGN: ("elgamal", 3),
    PUBKEY_DSA: ("dsa", 4),  # p, q, g, y
}
_CURVE_ALGORITHMS = {PUBKEY_ECDH: "ecdh", PUBKEY_ECDSA: "ecdsa", PUBKEY_EDDSA: "eddsa"}


def read_mpi(data: bytes, offset: int) -> tuple[bytes, int]:
    """The magnitude bytes of one MPI (3.2) and the offset after it."""
    bit_count = int.from_bytes(_take(data, offset, 2), "big")
    byte_count = (bit_count + 7) // 8
    return _take(data, offset + 2, byte_count), offset + 2 + byte_count


def encode_mpi(value: int) -> bytes:
    if value < 0:
        raise ValueError("an MPI is unsigned")
    bit_count = value.bit_length()
    return bit_count.to_bytes(2, "big") + value.to_bytes((bit_count + 7) // 8, "big")


def require_v4_key(body: bytes) -> None:
    if not body:
        raise MalformedPacket("empty public-key packet")
    if body[0] in (2, 3):
        raise UnsupportedKey("v3 keys are not supported (MD5 fingerprints, RFC 4880 5.5.2)")
    if body[0] != 4:
        raise UnsupportedKey(f"public-key packet version {body[0]} is not supported")


def _read_curve_key(body: bytes, offset: int, algorithm: int) -> tuple[bytes, int]:
    """Curve OID (length-prefixed, RFC 6637 section 9), point MPI, and ECDH's KDF parameters."""
    oid_length = _take(body, offset, 1)[0]
    if oid_length in (0, 0xFF):
        raise MalformedPacket(f"reserved curve OID length {oid_length} (RFC 6637 9)")
    oid = _take(body, offset + 1, oid_length)
    _, offset = read_mpi(body, offset + 1 + oid_length)
    if algorithm == PUBKEY_ECDH:
        kdf_length = _take(body, offset, 1)[0]
        _take(body, offset + 1, kdf_length)
        offset += 1 + kdf_length
    return oid, offset


def parse_public_key_body(body: bytes) -> PublicKeyInfo:
    """Algorithm and size of a v4 public-key or public-subkey packet body."""
    require_v4_key(body)
    header = _take(body, 0, 6)
    created, algorithm = int.from_bytes(header[1:5], "big"), header[5]
    if algorithm in _INTEGER_ALGORITHMS:
        name, mpi_count = _INTEGER_ALGORITHMS[algorithm]
        values, offset = [], 6
        for _ in range(mpi_count):
            value, offset = read_mpi(body, offset)
            values.append(value)
        info = PublicKeyInfo(created, algorithm, name, int.from_bytes(values[0], "big").bit_length())
    elif algorithm in _CURVE_ALGORITHMS:
        oid, offset = _read_curve_key(body, 6, algorithm)
        curve_name, bits = CURVES.get(oid, (None, None))
        info = PublicKeyInfo(created, algorithm, _CURVE_ALGORITHMS[algorithm], bits, oid, curve_name)
    else:
        raise UnsupportedKey(f"public-key algorithm {algorithm} is not supported")
    if offset != len(body):
        raise MalformedPacket(f"{len(body) - offset} bytes after the key material")
    return info
