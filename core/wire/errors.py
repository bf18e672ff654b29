"""The signer's one error vocabulary: every error code it sends, with its meaning and what a
client should do about it. The wire string is the member's value; docs/protocol.md's error
table, core.wire.protocol.ERROR_CODES, the client library and the WebDB daemon's failure classes
(tools/webdb/work.py `classify`) all come from here, and tests/project/test_docs_match_code.py fails
when the documented table and this enum differ.
"""
from __future__ import annotations

from enum import Enum


class RetryClass(str, Enum):
    """What a client does with a request that got the code (docs/webdb-client.md#failures)."""
    ROW = "row"  # the request itself is wrong: give it up, do not retry
    RETRY = "retry"  # perhaps the request, perhaps not: retry a bounded number of times
    WAIT = "wait"  # the request did not get through or is still in flight: resend, uncounted
    SIGNER = "signer"  # the signer cannot sign anything now (HSM, repository): back off
    SETUP = "setup"  # this kind of request does not fit this signer's configuration


class ErrorCode(str, Enum):
    """An error code: `.value` is the wire string, `.retry` its RetryClass, `.meaning` the
    documented meaning."""

    retry: RetryClass
    meaning: str

    def __new__(cls, wire: str, retry: RetryClass, meaning: str) -> "ErrorCode":
        member = str.__new__(cls, wire)
        member._value_ = wire
        member.retry = retry
        member.meaning = meaning
        return member

    BAD_COBS = ("bad_cobs", RetryClass.WAIT,
        "the frame's COBS encoding is invalid")
    BAD_CRC = ("bad_crc", RetryClass.WAIT,
        "the frame's CRC32 does not match its payload")
    FRAME_TOO_SHORT = ("frame_too_short", RetryClass.WAIT,
        "the decoded frame is shorter than its 4-byte CRC32")
    FRAME_TOO_LARGE = ("frame_too_large", RetryClass.WAIT,
        "the frame exceeds the payload size limit; its bytes were dropped")
    BAD_MSGPACK = ("bad_msgpack", RetryClass.WAIT,
        "the payload is not one complete msgpack object")
    BAD_ENVELOPE = ("bad_envelope", RetryClass.WAIT,
        "the payload is not a map with valid v, id, cmd and body fields")
    UNSUPPORTED_VERSION = ("unsupported_version", RetryClass.SETUP,
        "the protocol version is not one the signer speaks")
    UNKNOWN_COMMAND = ("unknown_command", RetryClass.SETUP,
        "no handler exists for the command name")
    BAD_REQUEST = ("bad_request", RetryClass.ROW,
        "a body field is missing, has the wrong type or an invalid value")
    DUPLICATE_REQUEST = ("duplicate_request", RetryClass.WAIT,
        "a request with this id is still being processed")
    REQUEST_ID_CONFLICT = ("request_id_conflict", RetryClass.ROW,
        "the id was used before for a different request")
    HANDLER_UNAVAILABLE = ("handler_unavailable", RetryClass.WAIT,
        "the handler crashed or did not answer; the request may be retried")
    INTERNAL_ERROR = ("internal_error", RetryClass.RETRY,
        "an unexpected failure inside the signer; the request may be retried")
    HSM_UNAVAILABLE = ("hsm_unavailable", RetryClass.SIGNER,
        "the HSM could not sign (session, token or device failure)")
    HSM_LOGIN_FAILED = ("hsm_login_failed", RetryClass.SIGNER,
        "the HSM rejected the PIN")
    HSM_TOKEN_NOT_FOUND = ("hsm_token_not_found", RetryClass.SIGNER,
        "no token with the configured label is present")
    HSM_KEY_NOT_FOUND = ("hsm_key_not_found", RetryClass.SIGNER,
        "the configured key is not on the token")
    REPOSITORY_ERROR = ("repository_error", RetryClass.SIGNER,
        "the repository could not complete the operation")
    UNKNOWN_ISSUER = ("unknown_issuer", RetryClass.SETUP,
        "the issuer id is not configured, or the profile does not name it among its `issuers`")
    UNKNOWN_PROFILE = ("unknown_profile", RetryClass.SETUP,
        "no certificate profile has this name")
    MALFORMED_CSR = ("malformed_csr", RetryClass.ROW,
        "the key request is not a DER PKCS#10 request (`csr`) or not base64 of a DER SignedPublicKeyAndChallenge (`spkac`)")
    BAD_CSR_SIGNATURE = ("bad_csr_signature", RetryClass.ROW,
        "the key request's signature does not verify (no proof of possession)")
    KEY_TOO_WEAK = ("key_too_weak", RetryClass.ROW,
        "the key is smaller than the profile allows")
    KEY_TYPE_NOT_ALLOWED = ("key_type_not_allowed", RetryClass.ROW,
        "the key type or curve is not allowed by the profile")
    ATTRIBUTE_NOT_ALLOWED = ("attribute_not_allowed", RetryClass.ROW,
        "a subject attribute is not allowed by the profile")
    SAN_TYPE_NOT_ALLOWED = ("san_type_not_allowed", RetryClass.ROW,
        "a subjectAltName type is not allowed by the profile")
    VALIDITY_TOO_LONG = ("validity_too_long", RetryClass.SETUP,
        "the validity exceeds the profile's maximum or the issuer's lifetime")
    HASH_NOT_ALLOWED = ("hash_not_allowed", RetryClass.ROW,
        "a signature hash is not allowed: the certificate's by the profile, or the key request's own (MD5, SHA-1)")
    LIMIT_EXCEEDED = ("limit_exceeded", RetryClass.ROW,
        "the request asks for more items than a configured limit allows; nothing was done")
    LINT_FAILED = ("lint_failed", RetryClass.ROW,
        "pkilint found ERROR or FATAL findings in the certificate; nothing was signed")
    SIGNATURE_INVALID = ("signature_invalid", RetryClass.SIGNER,
        "the HSM's signature did not verify with the issuer's key; nothing was issued")
    CRL_BUILD_FAILED = ("crl_build_failed", RetryClass.SIGNER,
        "the CRL could not be built from the stored revocations; nothing was signed")
    INVALID_REASON = ("invalid_reason", RetryClass.ROW,
        "not an RFC 5280 CRLReason name or code usable in a CRL")
    UNKNOWN_SERIAL = ("unknown_serial", RetryClass.ROW,
        "no issued certificate has this serial for this issuer")
    DUPLICATE_SERIAL = ("duplicate_serial", RetryClass.RETRY,
        "a serial collided with an existing one (retry)")
    OPENPGP_MALFORMED = ("openpgp_malformed", RetryClass.ROW,
        "the OpenPGP key is not a well-formed transferable public key")
    OPENPGP_OVERSIZED = ("openpgp_oversized", RetryClass.ROW,
        "the OpenPGP key is larger than the configured limit")
    OPENPGP_SECRET_KEY = ("openpgp_secret_key", RetryClass.ROW,
        "the input holds secret key material; send the public key only")
    OPENPGP_MULTIPLE_KEYS = ("openpgp_multiple_keys", RetryClass.ROW,
        "the input holds more than one primary key")
    OPENPGP_UNSUPPORTED_KEY = ("openpgp_unsupported_key", RetryClass.ROW,
        "the key's version or algorithm is not supported (v3, DSA, ElGamal, ...)")
    OPENPGP_WEAK_KEY = ("openpgp_weak_key", RetryClass.ROW,
        "the key is too weak (RSA below 2048 bits)")
    OPENPGP_KEY_REVOKED = ("openpgp_key_revoked", RetryClass.ROW,
        "the primary key is revoked")
    OPENPGP_KEY_EXPIRED = ("openpgp_key_expired", RetryClass.ROW,
        "the primary key has expired")
    OPENPGP_UID_REVOKED = ("openpgp_uid_revoked", RetryClass.ROW,
        "a requested user id is revoked on the key")
    OPENPGP_NO_UID = ("openpgp_no_uid", RetryClass.ROW,
        "none of the requested user ids is on the key")
    TIMEOUT = ("timeout", RetryClass.SIGNER,
        "inside a health answer only: that part of the signer did not answer in time")


_BY_WIRE: dict[str, ErrorCode] = {member.value: member for member in ErrorCode}


def retry_class(code: str) -> RetryClass:
    """The class of a wire code; an unknown (newer) code is worth a bounded retry."""
    member = _BY_WIRE.get(code)
    return member.retry if member is not None else RetryClass.RETRY
