"""Request bodies parsed once into typed, frozen values (core/*/requests.py), and the CRL
policy the CrlIssuer applies (core/crl/requests.py). The actor tests drive the same code
through the handlers; these pin the checks' order and messages without an actor."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from core.crl.requests import CrlPolicy, FetchCrlRequest, build_crl, crl_answer
from core.openpgp.requests import SignOpenPgpRequest
from core.wire.protocol import SignerError
from core.wire.requests import CaInfoRequest, HealthRequest, request_digest
from core.x509.certificate import key_info_of
from core.x509.profiles import load_profiles
from core.x509.requests import RevokeX509Request, SignX509Request, parse_pairs
from messages.repository import CrlRecord
from tests.support.fixtures_shared import write_test_ca

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
ISSUERS = {"root", "class3"}
NOW = datetime(2026, 11, 27, 10, 4, 24, 123456, tzinfo=timezone.utc)


def refusal(parse, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(SignerError) as raised:
        parse(*args, **kwargs)
    return raised.value.code, raised.value.message


def sign(**body):
    return SignX509Request.parse(dict({"issuer": "root", "profile": "server", "csr": b"DER"}, **body),
                                 PROFILES, ISSUERS)


# -- sign_x509 ------------------------------------------------------------------------------

def test_a_sign_x509_body_becomes_a_frozen_typed_request():
    request = sign(subject={"CN": "www.example.org"}, sans=["dns:www.example.org", ["dns", "example.org"]])
    assert request.profile is PROFILES["server"] and request.issuer == "root" and request.csr == b"DER"
    assert request.spkac is None and request.hash == "sha256" and request.days is None
    assert request.subject == (("CN", "www.example.org"),)
    assert request.sans == (("dns", "www.example.org"), ("dns", "example.org"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.days = 3  # type: ignore[misc]


def test_sign_x509_refuses_unknown_fields_first():
    code, message = refusal(sign, extensions=["basicConstraints"], profile="nope")
    assert code == "bad_request"
    assert message == ("unknown field(s) ['extensions'] for sign_x509; it takes "
                       "['csr', 'days', 'hash', 'issuer', 'profile', 'sans', 'spkac', 'subject']")


@pytest.mark.parametrize("changes, expected", [
    ({"profile": 5}, ("bad_request", "field 'profile' must be str, got int")),
    ({"profile": "nope", "issuer": "nope"}, ("unknown_profile", "no profile 'nope' (known: "
                                                               f"{sorted(PROFILES)})")),
    ({"issuer": "nope"}, ("unknown_issuer", "no issuer 'nope' (known: ['class3', 'root'])")),
    ({"profile": "client", "issuer": "class3", "days": "x"}, None),  # both issue client: only days is wrong
    ({"sans": ["dns:a"] * 101, "csr": None}, ("limit_exceeded", None)),  # counted before the key request
    ({"spkac": "AAAA"}, ("bad_request", "give exactly one of the fields 'csr' and 'spkac'")),
    ({"csr": None}, ("bad_request", "give exactly one of the fields 'csr' and 'spkac'")),
    ({"csr": "PEM text"}, ("bad_request", "field 'csr' must be bytes, got str")),
    ({"sans": [["dns"]]}, ("bad_request", "field 'sans': each entry must be a [type, value] pair of strings")),
    ({"days": 0}, ("bad_request", "field 'days' must be positive")),
    ({"days": True}, ("bad_request", "field 'days' must be int, got bool")),
    ({"days": 731}, ("validity_too_long", "profile 'server' allows at most 730 days, not 731")),
])
def test_sign_x509_checks_in_the_documented_order(changes, expected):
    code, message = refusal(sign, **changes)
    if expected is None:
        assert (code, message) == ("bad_request", "field 'days' must be int, got str")
        return
    assert code == expected[0]
    assert expected[1] is None or message == expected[1]


def test_a_profile_names_its_issuers():
    body = {"issuer": "sub", "profile": "server", "csr": b"DER"}  # a configured issuer no profile names
    code, message = refusal(SignX509Request.parse, body, PROFILES, ISSUERS | {"sub"})
    assert (code, message) == ("unknown_issuer", "profile 'server' is not issued by 'sub' "
                                                 f"(its issuers: {list(PROFILES['server'].issuers)})")


def test_pairs_come_in_three_forms():
    assert parse_pairs({"CN": "a", "O": "b"}, "subject") == (("CN", "a"), ("O", "b"))
    assert parse_pairs(["CN:a:b", ("O", "c")], "subject") == (("CN", "a:b"), ("O", "c"))
    with pytest.raises(SignerError, match="field 'subject'"):
        parse_pairs(["no colon"], "subject")


# -- revoke_x509 ----------------------------------------------------------------------------

def revoke(**body):
    return RevokeX509Request.parse(dict({"issuer": "root", "serial": "0x00AB:CD:EF"}, **body), ISSUERS, NOW)


def test_a_revoke_x509_body_is_normalised():
    request = revoke(reason="keyCompromise")
    assert (request.issuer, request.serial_hex, request.reason) == ("root", "abcdef", 1)
    assert request.revoked_at == NOW.replace(microsecond=0)
    assert revoke(time=1700000000, reason=0).revoked_at == datetime.fromtimestamp(1700000000, timezone.utc)
    assert revoke().reason is None


@pytest.mark.parametrize("changes, code, text", [
    ({"extra": 1}, "bad_request", "unknown field(s) ['extra'] for revoke_x509"),
    ({"issuer": "nope"}, "unknown_issuer", "no issuer 'nope'"),
    ({"serial": "xyz"}, "bad_request", "is not a hexadecimal serial"),
    ({"serial": "0"}, "bad_request", "must be a positive integer of at most 20 octets"),
    ({"reason": True}, "bad_request", "field 'reason' must be str or int, got bool"),
    ({"reason": 8}, "invalid_reason", "removeFromCRL"),
    ({"time": "2026-11-27T10:00:00"}, "bad_request", "needs a time zone"),
    ({"time": (NOW + timedelta(minutes=6)).isoformat()}, "bad_request", "cannot be dated in the future"),
    ({"time": "1999-12-31T23:59:59Z"}, "bad_request", "cannot be dated before 2000-01-01"),
])
def test_revoke_x509_refusals(changes, code, text):
    got_code, message = refusal(revoke, **changes)
    assert got_code == code and text in message


# -- fetch_crl and the CRL policy -----------------------------------------------------------

def test_a_fetch_crl_body():
    assert FetchCrlRequest.parse({"issuer": "root", "have_number": 7}, ISSUERS) == FetchCrlRequest("root", 7)
    assert FetchCrlRequest.parse({"issuer": "root", "have_number": None}, ISSUERS).have_number is None
    assert refusal(FetchCrlRequest.parse, {"issuer": "x"}, ISSUERS)[0] == "unknown_issuer"
    assert refusal(FetchCrlRequest.parse, {"issuer": "root", "have_number": "7"}, ISSUERS) == (
        "bad_request", "field 'have_number' must be int, got str")
    assert refusal(FetchCrlRequest.parse, {"issuer": "root", "base": 1}, ISSUERS)[1].startswith(
        "unknown field(s) ['base'] for fetch_crl")


def test_the_crl_policy_figures():
    policy = CrlPolicy.of(SimpleNamespace(lifetime_days=7, grace=14.0, rebuild_after_fraction=0.5, keep=10,
                                          hash="sha256"))
    assert policy.grace_s == 14 * 86400 and policy.max_age_s == 3.5 * 86400


def test_a_new_crl_is_numbered_above_the_previous_and_dated_in_whole_seconds(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    cert, _ = write_test_ca(tmp_path, "root", key)
    policy = CrlPolicy(7, 14, 0.5, 10, "sha256")
    previous = 2 ** 62  # far above the clock's nanoseconds
    build = build_crl(cert, key_info_of(key.public_key()), [(0xABC, NOW, 1)], previous, "digest", policy,
                      "http://crl.example/root.crl", NOW)
    assert build.number == previous + 1 == build.tbs.number
    assert build.this_update == NOW.replace(microsecond=0)
    assert build.next_update == build.this_update + timedelta(days=7)
    assert build.revocation_digest == "digest"
    unnumbered = build_crl(cert, key_info_of(key.public_key()), (), None, "d", policy, None, NOW)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert unnumbered.number == (NOW - epoch) // timedelta(microseconds=1) * 1000  # the precise clock's ns


def crl(number: int, der: bytes) -> CrlRecord:
    return CrlRecord("root", number, der, NOW, NOW + timedelta(days=7))


@pytest.mark.parametrize("have, base, status", [
    (200, None, "unchanged"), (100, 100, "diff"), (100, None, "full"), (None, None, "full"), (50, 100, "full")])
def test_the_crl_answer(have, base, status):
    current = crl(200, b"new")
    answer = crl_answer(current, crl(base, b"old") if base else None, have,
                        lambda new, old: b"diff:" + old.der + b">" + new.der)
    assert answer["status"] == status and answer["number"] == 200 and answer["issuer"] == "root"
    assert answer["this_update"] == NOW.isoformat()
    assert ("crl" in answer, "diff" in answer) == (status == "full", status == "diff")
    if status == "diff":
        assert (answer["base_number"], answer["diff"]) == (100, b"diff:old>new")


# -- sign_openpgp, health, ca_info ----------------------------------------------------------

PGP = SimpleNamespace(max_uids=2, default_days=366, max_days=366)
CA = SimpleNamespace(default_hash="sha384")


def test_a_sign_openpgp_body():
    request = SignOpenPgpRequest.parse({"key": b"k", "uids": ["A <a@example.org>"]}, PGP, CA)
    assert request == SignOpenPgpRequest(b"k", ("A <a@example.org>",), 366, "sha384")


@pytest.mark.parametrize("body, settings, code, text", [
    ({"key": b"k", "uids": ["a"], "x": 1}, None, "bad_request", "unknown field(s) ['x'] for sign_openpgp"),
    ({"key": b"k", "uids": ["a"]}, None, "unknown_command", "no OpenPGP CA key configured"),
    ({"key": 5, "uids": ["a"]}, PGP, "bad_request", "field 'key' must be bytes or str, got int"),
    ({"key": b"k", "uids": ["a", "b", "c"]}, PGP, "limit_exceeded", "openpgp.max_uids"),
    ({"key": b"k", "uids": [""]}, PGP, "bad_request", "non-empty list of user id strings"),
    ({"key": b"k", "uids": ["a"], "days": 367}, PGP, "validity_too_long", "367 is outside 1..366"),
    ({"key": b"k", "uids": ["a"], "days": 0}, PGP, "bad_request", "0 is outside 1..366"),
    ({"key": b"k", "uids": ["a"], "digest": "md5"}, PGP, "hash_not_allowed", "'md5' is not one of"),
])
def test_sign_openpgp_refusals(body, settings, code, text):
    got_code, message = refusal(SignOpenPgpRequest.parse, body, settings, CA if settings else None)
    assert got_code == code and text in message


def test_health_and_ca_info_ignore_any_fields():
    assert HealthRequest.parse({"anything": 1}) == HealthRequest()
    assert CaInfoRequest.parse({"anything": 1}) == CaInfoRequest()


def test_the_request_digest_covers_content_not_key_order():
    assert request_digest("sign_x509", {"a": 1, "b": {"c": 2, "d": 3}}) == \
        request_digest("sign_x509", {"b": {"d": 3, "c": 2}, "a": 1})
    assert request_digest("sign_x509", {"a": 1}) != request_digest("sign_openpgp", {"a": 1})
    assert request_digest("sign_x509", {"hash": "sha256"}) != request_digest("sign_x509", {})
