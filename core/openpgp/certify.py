"""OpenPGP for the CA: the CA's public key block and v4 certifications of user ids.

The CA key lives on an HSM that is reached by message, so signing is split in three steps:
`prepare_certification` builds exactly the bytes RFC 4880 section 5.2.4 hashes, the HSM
hashes and signs them with `PreparedSignature.mechanism`, and `assemble_signature_packet`
turns its answer into a signature packet. User keys are taken apart with
`split_transferable_key` and put back, with the new certifications, by
`insert_certifications`. Packet framing, armor and key parsing live in
`core.openpgp.packets`; their public names are re-exported here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.openpgp.packets import (  # re-exported API (`X as X`: public names)
    CURVES as CURVES,
    MAX_INPUT_BYTES as MAX_INPUT_BYTES,
    PUBKEY_DSA as PUBKEY_DSA,
    PUBKEY_ECDH as PUBKEY_ECDH,
    PUBKEY_ECDSA as PUBKEY_ECDSA,
    PUBKEY_EDDSA as PUBKEY_EDDSA,
    PUBKEY_ELGAMAL as PUBKEY_ELGAMAL,
    PUBKEY_RSA as PUBKEY_RSA,
    TAG_MARKER as TAG_MARKER,
    TAG_PUBLIC_KEY as TAG_PUBLIC_KEY,
    TAG_PUBLIC_SUBKEY as TAG_PUBLIC_SUBKEY,
    TAG_SECRET_KEY as TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY as TAG_SECRET_SUBKEY,
    TAG_SIGNATURE as TAG_SIGNATURE,
    TAG_TRUST as TAG_TRUST,
    TAG_USER_ATTRIBUTE as TAG_USER_ATTRIBUTE,
    TAG_USER_ID as TAG_USER_ID,
    MalformedPacket as MalformedPacket,
    MultiplePrimaryKeys as MultiplePrimaryKeys,
    OpenPgpError as OpenPgpError,
    OversizedInput as OversizedInput,
    Packet as Packet,
    PublicKeyInfo as PublicKeyInfo,
    SecretKeyMaterial as SecretKeyMaterial,
    UnsupportedKey as UnsupportedKey,
    armor as armor,
    crc24 as crc24,
    dearmor as dearmor,
    encode_length as encode_length,
    encode_mpi as encode_mpi,
    parse_packets as parse_packets,
    parse_public_key_body as parse_public_key_body,
    read_mpi as read_mpi,
    require_v4_key as require_v4_key,
    serialise_packet as serialise_packet,
    serialise_packets as serialise_packets,
)

# Hash algorithm ids (RFC 4880 section 9.4).
HASH_IDS = {"sha256": 8, "sha384": 9, "sha512": 10}

# Certification signature types (RFC 4880 section 5.2.1).
SIG_GENERIC_CERTIFICATION = 0x10
SIG_PERSONA_CERTIFICATION = 0x11
SIG_CASUAL_CERTIFICATION = 0x12
SIG_POSITIVE_CERTIFICATION = 0x13
CERTIFICATION_TYPES = range(SIG_GENERIC_CERTIFICATION, SIG_POSITIVE_CERTIFICATION + 1)

# Signature subpacket types (RFC 4880 section 5.2.3.1; 33 from RFC 4880bis).
SUBPACKET_CREATION_TIME = 2
SUBPACKET_EXPIRATION_TIME = 3
SUBPACKET_ISSUER = 16
SUBPACKET_PREFERRED_HASHES = 21
SUBPACKET_POLICY_URI = 26
SUBPACKET_KEY_FLAGS = 27
SUBPACKET_ISSUER_FINGERPRINT = 33

KEY_FLAG_CERTIFY = 0x01  # RFC 4880 section 5.2.3.21
KEY_FLAG_SIGN = 0x02
CA_PREFERRED_HASHES = ("sha512", "sha384", "sha256")

# Curves the CA key may use: cryptography's curve name -> (OpenPGP curve name, default hash).
# RFC 6637 section 12.2.2 wants a hash as strong as the curve, and gpg 2.2 enforces it.
CA_CURVES = {"secp256r1": ("nistp256", "sha256"), "secp384r1": ("nistp384", "sha384")}
CA_RSA_DEFAULT_HASH = "sha256"
_CURVE_OIDS = {name: oid for oid, (name, _) in CURVES.items()}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Signer = Callable[[bytes, str], bytes]  # (data to hash and sign, HSM mechanism) -> signature


def _u32(value: int) -> bytes:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"{value} does not fit a 4-octet OpenPGP field")
    return value.to_bytes(4, "big")


# --- Keys and fingerprints (RFC 4880 sections 5.5.2 and 12.2) -------------------------------


def public_key_packet_body(public_key: PublicKey, created: int) -> bytes:
    """v4 public-key packet body; `created` is part of the fingerprint, so store it."""
    header = bytes([4]) + _u32(created)
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return header + bytes([PUBKEY_RSA]) + encode_mpi(numbers.n) + encode_mpi(numbers.e)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in CA_CURVES:
            raise UnsupportedKey(f"curve {public_key.curve.name} is not supported for the CA key")
        oid = _CURVE_OIDS[CA_CURVES[public_key.curve.name][0]]
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        material = bytes([len(oid)]) + oid + encode_mpi(int.from_bytes(point, "big"))
        return header + bytes([PUBKEY_ECDSA]) + material
    raise UnsupportedKey(f"{type(public_key).__name__} is not supported for the CA key")


def public_key_from_body(body: bytes) -> PublicKey:
    """The cryptography public key of a v4 RSA or ECDSA (P-256/P-384) key packet body: the
    inverse of public_key_packet_body, used to check the HSM's signatures."""
    algorithm, offset = body[5], 6
    if algorithm == PUBKEY_RSA:
        n, offset = read_mpi(body, offset)
        e, _ = read_mpi(body, offset)
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    if algorithm == PUBKEY_ECDSA:
        oid = body[offset + 1:offset + 1 + body[offset]]
        point, _ = read_mpi(body, offset + 1 + body[offset])
        curve = {"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1()}.get(CURVES.get(oid, ("",))[0])
        if curve is None:
            raise UnsupportedKey(f"curve OID {oid.hex()} is not supported for the CA key")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    raise UnsupportedKey(f"public-key algorithm {algorithm} is not supported for the CA key")


def _key_hash_material(key_body: bytes) -> bytes:
    """How a key is hashed for fingerprints (12.2) and signatures (5.2.4)."""
    if len(key_body) >= 1 << 16:
        raise MalformedPacket("public-key packet longer than 65535 bytes")
    return b"\x99" + len(key_body).to_bytes(2, "big") + key_body


def _user_id_hash_material(user_id: bytes) -> bytes:
    return b"\xb4" + _u32(len(user_id)) + user_id  # RFC 4880 section 5.2.4


def fingerprint_v4(key_body: bytes) -> bytes:
    require_v4_key(key_body)
    return hashlib.sha1(_key_hash_material(key_body)).digest()


def key_id(fingerprint: bytes) -> bytes:
    """A v4 key id is the low 64 bits of the fingerprint (12.2)."""
    return fingerprint[-8:]


# --- Certification signatures (RFC 4880 section 5.2) ---------------------------------------


@dataclass(frozen=True)
class PreparedSignature:
    """A signature waiting for the HSM: sign `hashed_data` with `mechanism`, then assemble."""

    hashed_data: bytes  # key + user id + signed_part + trailer, as 5.2.4 hashes them
    mechanism: str
    pubkey_algo: int
    signed_part: bytes  # version .. hashed subpackets: the packet body starts with it
    unhashed_subpackets: bytes
    hash_left16: bytes  # 5.2.3: lets a verifier reject a wrong key quickly


def _subpacket(kind: int, data: bytes) -> bytes:
    """One signature subpacket (5.2.3.1); its length counts the type octet."""
    return encode_length(1 + len(data)) + bytes([kind]) + data


def _with_length2(data: bytes) -> bytes:
    if len(data) >= 1 << 16:
        raise OversizedInput("signature subpacket area longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _mechanism(pubkey_algo: int, hash_name: str) -> str:
    if hash_name not in HASH_IDS:
        raise ValueError(f"hash {hash_name!r} is not one of {sorted(HASH_IDS)}")
    if pubkey_algo == PUBKEY_RSA:
        return f"{hash_name}-rsa-pkcs1"
    if pubkey_algo == PUBKEY_ECDSA:
        return f"{hash_name}-ecdsa"
    raise UnsupportedKey(f"the CA cannot sign with public-key algorithm {pubkey_algo}")


def _check_hash_strength(signer_key_body: bytes, hash_name: str) -> None:
    """gpg 2.2 rejects an ECDSA signature whose hash is shorter than the curve (P-384 with
    SHA-256: "requires a 384 bit or larger hash"), as RFC 6637 section 12.2.2 advises."""
    info = parse_public_key_body(signer_key_body)
    if info.algorithm != PUBKEY_ECDSA or info.bits is None:
        return
    needed_bits = min(info.bits, 512)
    if hashlib.new(hash_name).digest_size * 8 < needed_bits:
        raise ValueError(
            f"{info.curve_name} signatures need a hash of at least {needed_bits} bits, not {hash_name}"
        )


def _certification_subpackets(
    created: int,
    expires_after_seconds: int | None,
    policy_url: str | None,
    issuer_fpr: bytes,
    self_signature_extras: bool,
) -> bytes:
    subpackets = [_subpacket(SUBPACKET_CREATION_TIME, _u32(created))]  # required by 5.2.3.4
    if expires_after_seconds is not None:
        if expires_after_seconds <= 0:  # 0 would mean "never expires" (5.2.3.10): say None
            raise ValueError("expires_after_seconds must be positive or None")
        subpackets.append(_subpacket(SUBPACKET_EXPIRATION_TIME, _u32(expires_after_seconds)))
    if policy_url is not None:
        subpackets.append(_subpacket(SUBPACKET_POLICY_URI, policy_url.encode("utf-8")))
    if self_signature_extras:
        flags = bytes([KEY_FLAG_CERTIFY | KEY_FLAG_SIGN])
        hashes = bytes(HASH_IDS[name] for name in CA_PREFERRED_HASHES)
        subpackets.append(_subpacket(SUBPACKET_KEY_FLAGS, flags))
        subpackets.append(_subpacket(SUBPACKET_PREFERRED_HASHES, hashes))
    subpackets.append(_subpacket(SUBPACKET_ISSUER_FINGERPRINT, b"\x04" + issuer_fpr))
    return b"".join(subpackets)


def prepare_certification(
    signer_key_body: bytes,
    signer_algo: int,
    target_key_body: bytes,
    user_id: bytes,
    sig_type: int,
    created: int,
    expires_after_seconds: int | None,
    hash_name: str,
    policy_url: str | None,
    issuer_fpr: bytes,
    self_signature_extras: bool = False,
) -> PreparedSignature:
    """A certification (types 0x10..0x13) of `user_id` on `target_key_body` by the signer."""
    if sig_type not in CERTIFICATION_TYPES:
        raise ValueError(f"signature type {sig_type:#x} is not a certification")
    if signer_key_body[5:6] != bytes([signer_algo]):
        raise ValueError(f"signer_algo {signer_algo} does not match the signer's key packet")
    if fingerprint_v4(signer_key_body) != issuer_fpr:
        raise ValueError("issuer_fpr is not the fingerprint of the signer's key packet")
    if self_signature_extras and target_key_body != signer_key_body:
        raise ValueError("key flags and hash preferences belong on a self-signature only")
    mechanism = _mechanism(signer_algo, hash_name)
    _check_hash_strength(signer_key_body, hash_name)
    subpackets = _certification_subpackets(
        created, expires_after_seconds, policy_url, issuer_fpr, self_signature_extras
    )
    signed_part = bytes([4, sig_type, signer_algo, HASH_IDS[hash_name]]) + _with_length2(subpackets)
    trailer = b"\x04\xff" + _u32(len(signed_part))  # 5.2.4: version, 0xFF, hashed length
    hashed_data = (
        _key_hash_material(target_key_body) + _user_id_hash_material(user_id) + signed_part + trailer
    )
    return PreparedSignature(
        hashed_data=hashed_data,
        mechanism=mechanism,
        pubkey_algo=signer_algo,
        signed_part=signed_part,
        # The issuer key id is not needed for verification, so unhashed is fine (5.2.3.5).
        unhashed_subpackets=_subpacket(SUBPACKET_ISSUER, key_id(issuer_fpr)),
        hash_left16=hashlib.new(hash_name, hashed_data).digest()[:2],
    )


def _signature_mpis(pubkey_algo: int, hsm_signature: bytes) -> bytes:
    """RSA: m^d mod n as one MPI; ECDSA: r and s as two MPIs (5.2.2, RFC 6637 section 7)."""
    if pubkey_algo == PUBKEY_RSA:
        if not hsm_signature:
            raise ValueError("empty RSA signature from the HSM")
        return encode_mpi(int.from_bytes(hsm_signature, "big"))
    r, s = decode_dss_signature(hsm_signature)  # the HSM answers DER, OpenPGP wants MPIs
    return encode_mpi(r) + encode_mpi(s)


def assemble_signature_packet(prepared: PreparedSignature, hsm_signature: bytes) -> bytes:
    """The whole signature packet (header included) from the HSM's answer."""
    body = (
        prepared.signed_part
        + _with_length2(prepared.unhashed_subpackets)
        + prepared.hash_left16
        + _signature_mpis(prepared.pubkey_algo, hsm_signature)
    )
    return serialise_packet(TAG_SIGNATURE, body)


def default_hash(public_key: PublicKey) -> str:
    """SHA-256, or a hash as strong as the curve (RFC 6637 section 12.2.2)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return CA_CURVES[public_key.curve.name][1]
    return CA_RSA_DEFAULT_HASH


def build_public_key_block(
    public_key: PublicKey, created: int, user_id: bytes, sign: Signer, *, hash_name: str | None = None
) -> bytes:
    """The CA's binary transferable public key: key packet, user id, positive self-signature."""
    key_body = public_key_packet_body(public_key, created)
    if hash_name is None:
        hash_name = default_hash(public_key)
    prepared = prepare_certification(
        key_body, key_body[5], key_body, user_id, SIG_POSITIVE_CERTIFICATION, created,
        None, hash_name, None, fingerprint_v4(key_body), self_signature_extras=True,
    )  # fmt: skip
    self_signature = assemble_signature_packet(prepared, sign(prepared.hashed_data, prepared.mechanism))
    return (
        serialise_packet(TAG_PUBLIC_KEY, key_body) + serialise_packet(TAG_USER_ID, user_id) + self_signature
    )


# --- User keys (RFC 4880 section 11.1) -----------------------------------------------------


@dataclass(frozen=True)
class KeyComponent:
    """A user id, user attribute or subkey, with the signature packet bodies that follow it."""

    tag: int
    body: bytes
    signatures: tuple[bytes, ...]


@dataclass(frozen=True)
class TransferableKey:
    primary_key: bytes  # public-key packet body
    key_signatures: tuple[bytes, ...]  # direct-key and revocation signatures on the primary
    components: tuple[KeyComponent, ...]  # in input order

    @property
    def user_ids(self) -> list[KeyComponent]:
        return [c for c in self.components if c.tag == TAG_USER_ID]

    @property
    def subkeys(self) -> list[KeyComponent]:
        return [c for c in self.components if c.tag == TAG_PUBLIC_SUBKEY]

    @property
    def fingerprint(self) -> bytes:
        return fingerprint_v4(self.primary_key)


_COMPONENT_TAGS = frozenset({TAG_USER_ID, TAG_USER_ATTRIBUTE, TAG_PUBLIC_SUBKEY})
# Trust packets are local to a keyring (5.10) and marker packets carry nothing (5.8).
_DROPPED_TAGS = frozenset({TAG_TRUST, TAG_MARKER})


def _refuse_foreign_key_material(packets: list[Packet]) -> None:
    tags = [packet.tag for packet in packets]
    if TAG_SECRET_KEY in tags or TAG_SECRET_SUBKEY in tags:
        raise SecretKeyMaterial("input holds secret key material: send the public key only")
    if tags.count(TAG_PUBLIC_KEY) > 1:
        raise MultiplePrimaryKeys(f"input holds {tags.count(TAG_PUBLIC_KEY)} primary keys, expected one")


def split_transferable_key(data: bytes, *, max_bytes: int = MAX_INPUT_BYTES) -> TransferableKey:
    """One binary transferable public key, taken apart into its components."""
    packets = parse_packets(data, max_bytes=max_bytes)
    _refuse_foreign_key_material(packets)
    packets = [packet for packet in packets if packet.tag not in _DROPPED_TAGS]
    if not packets or packets[0].tag != TAG_PUBLIC_KEY:
        raise MalformedPacket("a transferable public key starts with a public-key packet (11.1)")
    require_v4_key(packets[0].body)
    key_signatures: list[bytes] = []
    components: list[tuple[int, bytes, list[bytes]]] = []
    for tag, body in packets[1:]:
        if tag == TAG_SIGNATURE:
            (components[-1][2] if components else key_signatures).append(body)
        elif tag in _COMPONENT_TAGS:
            if tag == TAG_PUBLIC_SUBKEY:
                require_v4_key(body)
            components.append((tag, body, []))
        else:
            raise MalformedPacket(f"packet tag {tag} does not belong in a public key (11.1)")
    if not any(tag == TAG_USER_ID for tag, _, _ in components):
        raise MalformedPacket("a transferable public key needs a user id packet (11.1)")
    return TransferableKey(
        primary_key=packets[0].body,
        key_signatures=tuple(key_signatures),
        components=tuple(KeyComponent(tag, body, tuple(sigs)) for tag, body, sigs in components),
    )


def _signature_body(signature_packet: bytes) -> bytes:
    packets = parse_packets(signature_packet)
    if len(packets) != 1 or packets[0].tag != TAG_SIGNATURE:
        raise ValueError("a certification must be exactly one signature packet")
    return packets[0].body


def insert_certifications(key: TransferableKey, certifications: Mapping[bytes, bytes]) -> bytes:
    """The key re-serialised, each certified user id followed by its new signature packet."""
    new_signatures = {uid: _signature_body(packet) for uid, packet in certifications.items()}
    unknown = set(new_signatures) - {component.body for component in key.user_ids}
    if unknown:
        raise ValueError(f"user ids not on this key: {sorted(unknown)!r}")
    packets = [Packet(TAG_PUBLIC_KEY, key.primary_key)]
    packets += [Packet(TAG_SIGNATURE, body) for body in key.key_signatures]
    for component in key.components:
        packets.append(Packet(component.tag, component.body))
        packets += [Packet(TAG_SIGNATURE, body) for body in component.signatures]
        if component.tag == TAG_USER_ID and component.body in new_signatures:
            packets.append(Packet(TAG_SIGNATURE, new_signatures[component.body]))
    return serialise_packets(packets)
