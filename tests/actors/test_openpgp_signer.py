"""OpenPgpSigner alone, with mock Hsm and Repository peers.

The test plays both peers: it takes the message the actor sent to "REPO" or "HSM", checks
it and delivers the reply. The CA's OpenPGP key is an in-memory cryptography key (RSA-2048
or P-256), its public key block built by core.openpgp.certify; the "HSM" signs with that same key
by the mechanism the actor names. User keys are made once per module by real gpg in a
throwaway home, and every certified key the actor answers is checked by a fresh gpg.
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from actors.handlers.handler import ASK_TIMEOUT_S
from core.wire.requests import request_digest
from actors.handlers.openpgp_signer import OpenPgpSigner
from core.openpgp import certify as openpgp
from messages import CommandRequest, Configure, Configured, HsmSignReply, HsmSignRequest
from messages.repository import LookupRequest, RepoReply, StoreOpenPgpSignature
from tests.support.actor_harness import ActorHarness
from tests.support.handler_playing import CLIENT, assert_quiet, body_of, error_of, play_repo

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
PEERS = {"hsm": "HSM", "repository": "REPO"}
COMMAND = "sign_openpgp"
KEY_LABEL = "pgp-key"
POLICY_URL = "http://www.cacert.org/cps.php"
DAY = 86400
CA_USER_ID = b"Test OpenPGP CA <gpg@cacert.invalid>"
CA_CREATED = 1_700_000_000
ALICE = "Alice <alice@example.org>"
ALICE_WORK = "Alice Work <alice@work.example>"
ALICE_OLD = "Alice Old <alice@old.example>"  # revoked on the "revoked_uid" key
BOB = "Bob <bob@example.org>"
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
MECHANISM_KIND = {"rsa": "rsa-pkcs1", "p256": "ecdsa"}  # "<hash>-<kind>", see core.hsm.session


# --- the CA key and the "HSM" --------------------------------------------------------------

@dataclass(frozen=True)
class Ca:
    kind: str  # "rsa" or "p256"
    key: Any  # the private key the "HSM" holds
    created: int
    path: Path  # the armoured public key block, as openpgp.public_key names it
    fingerprint: str  # uppercase hex

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]


def hsm_sign(key: Any, mechanism: str, data: bytes) -> bytes:
    """What the Hsm actor does: hash `data` and sign it, by the mechanism's name."""
    hash_name, _, kind = mechanism.partition("-")
    algorithm = HASHES[hash_name]()
    if kind == "rsa-pkcs1":
        assert isinstance(key, rsa.RSAPrivateKey), mechanism
        return key.sign(data, padding.PKCS1v15(), algorithm)
    if kind == "ecdsa":
        assert isinstance(key, ec.EllipticCurvePrivateKey), mechanism
        return key.sign(data, ec.ECDSA(algorithm))
    raise AssertionError(f"unexpected mechanism {mechanism}")


def make_ca(folder: Path, kind: str, key: Any) -> Ca:
    block = openpgp.build_public_key_block(key.public_key(), CA_CREATED, CA_USER_ID,
                                           lambda data, mechanism: hsm_sign(key, mechanism, data))
    path = folder / f"openpgp-ca-{kind}.asc"
    path.write_text(openpgp.armor(block))
    body = openpgp.parse_packets(block)[0].body
    return Ca(kind, key, CA_CREATED, path, openpgp.fingerprint_v4(body).hex().upper())


@pytest.fixture(scope="module")
def cas(tmp_path_factory) -> dict[str, Ca]:
    folder = tmp_path_factory.mktemp("openpgp-ca")
    return {"rsa": make_ca(folder, "rsa", rsa.generate_private_key(65537, 2048)),
            "p256": make_ca(folder, "p256", ec.generate_private_key(ec.SECP256R1()))}


@pytest.fixture(params=["rsa", "p256"])
def ca(request, cas) -> Ca:
    return cas[request.param]


def make_config(ca: Ca, **changes: Any) -> SimpleNamespace:
    pgp = dict(key_label=KEY_LABEL, public_key=str(ca.path), created=ca.created, default_days=366,
               max_days=366, signature_type=0x10, policy_url=POLICY_URL, max_key_bytes=1 << 20, max_uids=20, gpg="gpg")
    pgp.update(changes)
    return SimpleNamespace(openpgp=SimpleNamespace(**pgp))


@pytest.fixture
def signer(ca) -> ActorHarness:
    """The actor with the parametrized CA key (RSA-2048 or P-256)."""
    return ActorHarness(OpenPgpSigner, make_config(ca), PEERS)


@pytest.fixture
def rsa_signer(cas) -> ActorHarness:
    """For behaviour that does not depend on the CA key's algorithm."""
    return ActorHarness(OpenPgpSigner, make_config(cas["rsa"]), PEERS)


# --- gpg ----------------------------------------------------------------------------------

class Gpg:
    """gpg in its own short-lived home (short path: the agent socket must fit sockaddr_un)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="aot-", dir="/tmp"))
        # Without a fixed s2k-count gpg-agent calibrates it for every key it protects.
        (self.home / "gpg-agent.conf").write_text("s2k-count 65536\n")

    def __call__(self, *args: str, input: bytes | None = None) -> bytes:
        result = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--yes",
                                 "--pinentry-mode", "loopback", "--passphrase", "", *args],
                                input=input, capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
        return result.stdout

    def fingerprint(self, user_id: str) -> str:
        listing = self("--with-colons", "--list-keys", f"={user_id}").decode()
        return re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE)[1]

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True,
                       check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass(frozen=True)
class UserKeys:
    fingerprint: str  # Alice's
    two_uids: bytes  # ALICE and ALICE_WORK, binary
    two_uids_armored: str
    revoked_uid: bytes  # ALICE, ALICE_WORK and the revoked ALICE_OLD
    secret: bytes  # Alice's secret key
    bob: bytes  # another key, for "two keys"


@pytest.fixture(scope="module")
def user_keys() -> UserKeys:
    gpg = Gpg()
    try:
        gpg("--quick-gen-key", ALICE, "ed25519", "default", "never")
        fpr = gpg.fingerprint(ALICE)
        gpg("--quick-add-uid", fpr, ALICE_WORK)
        two_uids = gpg("--export", fpr)
        two_uids_armored = gpg("--armor", "--export", fpr).decode()
        gpg("--quick-add-uid", fpr, ALICE_OLD)
        gpg("--quick-revoke-uid", fpr, ALICE_OLD)
        revoked_uid = gpg("--export", fpr)
        secret = gpg("--export-secret-keys", fpr)
        gpg("--quick-gen-key", BOB, "ed25519", "default", "never")
        bob = gpg("--export", gpg.fingerprint(BOB))
        return UserKeys(fpr, two_uids, two_uids_armored, revoked_uid, secret, bob)
    finally:
        gpg.close()


def ca_signatures(ca: Ca, armoured: str) -> dict[str, list[list[str]]]:
    """uid -> colon records of the CA's signatures on it, as `gpg --check-sigs` reports them
    in a fresh home holding only the CA key and the certified key."""
    gpg = Gpg()
    try:
        gpg("--import", str(ca.path))
        gpg("--import", input=armoured.encode())
        listing = gpg("--with-colons", "--check-sigs").decode()
    finally:
        gpg.close()
    sigs: dict[str, list[list[str]]] = {}
    uid, on_user_key = None, False
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            uid, on_user_key = None, fields[4] != ca.key_id  # not the CA key's self-signature
        elif fields[0] == "uid":
            uid = fields[9]
        elif fields[0] in ("sub", "uat"):
            uid = None
        elif fields[0] == "sig" and on_user_key and fields[4] == ca.key_id:
            assert uid is not None, line  # a CA signature on the key itself or a subkey
            sigs.setdefault(uid, []).append(fields)
    return sigs


# --- playing the peers ----------------------------------------------------------------------


def request(h: ActorHarness, body: dict[str, Any], tag: int = 1, request_id: str = "rid-1") -> None:
    h.deliver(CommandRequest(tag, request_id, COMMAND, body), CLIENT)


def reach_hsm(h: ActorHarness, body: dict[str, Any]) -> dict[str, HsmSignRequest]:
    """Request a certification and answer the lookup: uid -> the HsmSignRequest for it."""
    request(h, body)
    lookup = play_repo(h, LookupRequest, None)
    assert lookup.request_id == "rid-1"
    sent = h.take(HsmSignRequest)
    assert all(address == "HSM" for address, _ in sent)
    by_uid: dict[str, HsmSignRequest] = {}
    for _, sign in sent:
        # RFC 4880 5.2.4: the certified user id is hashed as 0xB4, 4-octet length, the id.
        uids = [u for u in body["uids"] if b"\xb4" + len(u.encode()).to_bytes(4, "big") + u.encode() in sign.data]
        assert len(uids) == 1 and uids[0] not in by_uid, (uids, list(by_uid))
        by_uid[uids[0]] = sign
    assert_quiet(h)  # nothing is stored before every signature is back
    return by_uid


def answer_hsm(h: ActorHarness, ca: Ca, sign: HsmSignRequest, error: dict | None = None) -> None:
    signature = None if error else hsm_sign(ca.key, sign.mechanism, sign.data)
    h.deliver(HsmSignReply(sign.tag, signature, error), "HSM")


def certify(h: ActorHarness, ca: Ca, body: dict[str, Any], reverse: bool = False
            ) -> tuple[dict[str, HsmSignRequest], StoreOpenPgpSignature, dict[str, Any]]:
    """The whole certification: (HSM requests by uid, the store request, the client's answer)."""
    signs = reach_hsm(h, body)
    for sign in (reversed if reverse else list)(list(signs.values())):
        answer_hsm(h, ca, sign)
    store = play_repo(h, StoreOpenPgpSignature, None)
    return signs, store, body_of(h)


# --- the happy path ------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["hsm_in_order", "hsm_reversed"])
def test_certifies_both_uids_and_gpg_verifies_them(signer, ca, user_keys, reverse):
    body = {"key": user_keys.two_uids, "uids": [ALICE, ALICE_WORK]}
    before = datetime.now(timezone.utc)
    signs, store, answer = certify(signer, ca, body, reverse)
    after = datetime.now(timezone.utc)

    assert sorted(signs) == sorted([ALICE, ALICE_WORK])
    for sign in signs.values():  # the CA key's default hash is SHA-256 for RSA and P-256
        assert (sign.key_label, sign.mechanism) == (KEY_LABEL, f"sha256-{MECHANISM_KIND[ca.kind]}")

    assert (store.request_id, store.command) == ("rid-1", COMMAND)
    assert store.request_digest == request_digest(COMMAND, body)
    assert store.fingerprint == user_keys.fingerprint
    assert store.uids == [ALICE, ALICE_WORK]
    assert before + timedelta(days=366, seconds=-2) <= store.expires_at <= after + timedelta(days=366, seconds=1)
    assert store.result == answer

    assert answer["key"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert openpgp.dearmor(answer["key"]) == store.signed_key
    assert answer["fingerprint"] == user_keys.fingerprint
    assert answer["certified_uids"] == [ALICE, ALICE_WORK]
    assert answer["expires_at"] == store.expires_at.isoformat()
    assert answer["signer_fingerprint"] == ca.fingerprint
    assert "replayed" not in answer
    assert POLICY_URL.encode() in store.signed_key
    assert_quiet(signer)
    assert len(signer.actor.pending) == 0

    sigs = ca_signatures(ca, answer["key"])
    assert sorted(sigs) == sorted([ALICE, ALICE_WORK])
    for uid, records in sigs.items():
        (record,) = records
        assert record[1] == "!", (uid, record)  # good signature
        assert int(record[6]) - int(record[5]) == 366 * DAY
        assert record[10] == "10x"  # generic certification, exportable
        assert record[15] == "8"  # SHA-256


def test_only_requested_uids_on_the_key_are_certified(rsa_signer, cas, user_keys):
    body = {"key": user_keys.two_uids, "uids": [ALICE_WORK, "Mallory <m@evil.example>"]}
    signs, store, answer = certify(rsa_signer, cas["rsa"], body)
    assert list(signs) == [ALICE_WORK]
    assert store.uids == answer["certified_uids"] == [ALICE_WORK]
    sigs = ca_signatures(cas["rsa"], answer["key"])
    assert list(sigs) == [ALICE_WORK] and sigs[ALICE_WORK][0][1] == "!"


def test_days_and_digest_flow_into_the_signature(signer, ca, user_keys):
    # The key as armoured text this time: the actor takes both forms.
    body = {"key": user_keys.two_uids_armored, "uids": [ALICE], "days": 30, "digest": "sha512"}
    before = datetime.now(timezone.utc)
    signs, store, answer = certify(signer, ca, body)
    assert signs[ALICE].mechanism == f"sha512-{MECHANISM_KIND[ca.kind]}"
    assert abs(store.expires_at - (before + timedelta(days=30))) < timedelta(seconds=3)
    (record,) = ca_signatures(ca, answer["key"])[ALICE]
    assert record[1] == "!", record
    assert int(record[6]) - int(record[5]) == 30 * DAY
    assert record[15] == "10"  # SHA-512


# --- idempotency ---------------------------------------------------------------------------

def test_known_request_id_with_same_content_is_replayed(rsa_signer, user_keys):
    body = {"key": user_keys.two_uids, "uids": [ALICE, ALICE_WORK]}
    stored = {"key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...", "fingerprint": user_keys.fingerprint,
              "certified_uids": [ALICE, ALICE_WORK], "expires_at": "2030-01-01T00:00:00+00:00",
              "signer_fingerprint": "AB" * 20}
    request(rsa_signer, body)
    play_repo(rsa_signer, LookupRequest, {"command": COMMAND, "request_digest": request_digest(COMMAND, body),
                                          "result": stored})
    assert body_of(rsa_signer) == dict(stored, replayed=True)
    assert_quiet(rsa_signer)  # no HsmSignRequest, no store
    assert len(rsa_signer.actor.pending) == 0


@pytest.mark.parametrize("command, digest_of", [
    (COMMAND, lambda body: request_digest(COMMAND, dict(body, days=30))),  # other content
    ("sign_x509", lambda body: request_digest(COMMAND, body)),  # the id was used for another command
], ids=["other_digest", "other_command"])
def test_known_request_id_with_other_content_is_a_conflict(rsa_signer, user_keys, command, digest_of):
    body = {"key": user_keys.two_uids, "uids": [ALICE]}
    request(rsa_signer, body)
    play_repo(rsa_signer, LookupRequest, {"command": command, "request_digest": digest_of(body), "result": {}})
    assert error_of(rsa_signer)["code"] == "request_id_conflict"
    assert_quiet(rsa_signer)


# --- refusals ------------------------------------------------------------------------------

GARBAGE = random.Random(20240229).randbytes(500)

REFUSALS = [  # (id, body changes, code, a word the message must hold, checked after the lookup)
    ("revoked_uid", lambda k: {"key": k.revoked_uid, "uids": [ALICE, ALICE_OLD]}, "openpgp_uid_revoked", "Old", True),
    ("no_uid_on_key", lambda k: {"uids": ["Nobody <nobody@example.org>"]}, "openpgp_no_uid", "Nobody", True),
    ("secret_key", lambda k: {"key": k.secret}, "openpgp_secret_key", "secret", True),
    ("two_keys", lambda k: {"key": k.two_uids + k.bob}, "openpgp_multiple_keys", "primary keys", True),
    ("garbage", lambda k: {"key": GARBAGE}, "openpgp_malformed", "", True),
    ("days_0", lambda k: {"days": 0}, "bad_request", "days", False),
    ("days_over_max", lambda k: {"days": 367}, "validity_too_long", "366", False),
    ("digest_md5", lambda k: {"digest": "md5"}, "hash_not_allowed", "md5", False),
    ("unknown_field", lambda k: {"policy_url": "http://evil.example"}, "bad_request", "policy_url", False),
    ("uids_empty", lambda k: {"uids": []}, "bad_request", "uids", False),
    ("uids_missing", lambda k: {"uids": None}, "bad_request", "uids", False),
    ("key_missing", lambda k: {"key": None}, "bad_request", "key", False),
    # issue 11.4: 5,000 uids kept the only Hsm actor busy for 60 s; now refused before gpg
    ("uids_5000", lambda k: {"uids": [f"User {i} <u{i}@example.org>" for i in range(5000)]},
     "limit_exceeded", "openpgp.max_uids", False),
    # issue 12.4: RFC 9580's sample v6 certificate (appendix A.3), stored in tests/vectors/
    ("v6_key", lambda k: {"key": (VECTORS / "openpgp-v6-rfc9580-a3.asc").read_text()},
     "openpgp_unsupported_key", "v6", True),
]


@pytest.mark.parametrize("changes, code, named, after_lookup", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_refusals_reach_no_hsm(rsa_signer, user_keys, changes, code, named, after_lookup):
    body = {k: v for k, v in dict({"key": user_keys.two_uids, "uids": [ALICE]}, **changes(user_keys)).items()
            if v is not None}
    request(rsa_signer, body)
    lookups = rsa_signer.take(LookupRequest)
    # Body checks come before the request-id lookup; the key itself is judged after it.
    assert len(lookups) == (1 if after_lookup else 0), lookups
    for _, lookup in lookups:
        rsa_signer.deliver(RepoReply(lookup.tag, None), "REPO")
    error = error_of(rsa_signer)
    assert error["code"] == code and named in error["message"], error
    assert_quiet(rsa_signer)  # no HsmSignRequest, no store
    assert len(rsa_signer.actor.pending) == 0


def test_signer_without_openpgp_key_refuses(cas, user_keys):
    h = ActorHarness(OpenPgpSigner, SimpleNamespace(openpgp=None), PEERS)
    request(h, {"key": user_keys.two_uids, "uids": [ALICE]})
    assert error_of(h)["code"] == "unknown_command"
    assert_quiet(h)


# --- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize("failing_first", [True, False], ids=["error_first", "error_last"])
def test_one_failed_hsm_signature_fails_the_job_once(rsa_signer, cas, user_keys, failing_first):
    signs = reach_hsm(rsa_signer, {"key": user_keys.two_uids, "uids": [ALICE, ALICE_WORK]})
    error = {"code": "hsm_unavailable", "message": "token removed"}
    order = [(signs[ALICE_WORK], error), (signs[ALICE], None)]
    for sign, err in order if failing_first else reversed(order):
        answer_hsm(rsa_signer, cas["rsa"], sign, err)
    assert error_of(rsa_signer) == error  # exactly one CommandReply
    assert_quiet(rsa_signer)  # no StoreOpenPgpSignature
    assert len(rsa_signer.actor.pending) == 0


def test_two_failed_hsm_signatures_answer_the_client_once(rsa_signer, cas, user_keys):
    signs = reach_hsm(rsa_signer, {"key": user_keys.two_uids, "uids": [ALICE, ALICE_WORK]})
    first = {"code": "hsm_unavailable", "message": "token removed"}
    answer_hsm(rsa_signer, cas["rsa"], signs[ALICE], first)
    answer_hsm(rsa_signer, cas["rsa"], signs[ALICE_WORK], {"code": "hsm_error", "message": "again"})
    assert error_of(rsa_signer) == first
    assert_quiet(rsa_signer)


def test_an_hsm_that_never_answers_one_uid_times_out_once(rsa_signer, cas, user_keys):
    signs = reach_hsm(rsa_signer, {"key": user_keys.two_uids, "uids": [ALICE, ALICE_WORK]})
    answer_hsm(rsa_signer, cas["rsa"], signs[ALICE])
    rsa_signer.pass_time(ASK_TIMEOUT_S - 1)
    assert_quiet(rsa_signer)  # not before the deadline
    rsa_signer.pass_time(1.1)
    assert error_of(rsa_signer)["code"] == "hsm_unavailable"
    assert_quiet(rsa_signer)
    # A reply after the deadline finds no job: the client is not answered twice, nothing stored.
    answer_hsm(rsa_signer, cas["rsa"], signs[ALICE_WORK])
    assert_quiet(rsa_signer)


def test_store_error_reaches_the_client(rsa_signer, cas, user_keys):
    signs = reach_hsm(rsa_signer, {"key": user_keys.two_uids, "uids": [ALICE]})
    answer_hsm(rsa_signer, cas["rsa"], signs[ALICE])
    error = {"code": "repository_error", "message": "disk full"}
    play_repo(rsa_signer, StoreOpenPgpSignature, error=error)
    assert error_of(rsa_signer) == error
    assert_quiet(rsa_signer)


def test_a_signature_that_does_not_verify_is_not_stored(signer, ca, user_keys):
    signs = reach_hsm(signer, {"key": user_keys.two_uids, "uids": [ALICE]})
    # A well-formed signature by another key of the same type (a wrong key label, say).
    other = rsa.generate_private_key(65537, 2048) if ca.kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    sign = signs[ALICE]
    signer.deliver(HsmSignReply(sign.tag, hsm_sign(other, sign.mechanism, sign.data)), "HSM")
    assert signer.take(StoreOpenPgpSignature) == []
    assert error_of(signer)["code"] == "signature_invalid"


# --- configuration ---------------------------------------------------------------------------

def test_configured_public_key_with_other_creation_time_fails_configure(cas):
    ca = cas["rsa"]
    h = ActorHarness(OpenPgpSigner)
    h.deliver(Configure("openpgp_signer", make_config(ca, created=ca.created + 1), PEERS), "supervisor")
    (address, configured), = h.take(Configured)
    assert address == "supervisor"
    assert configured.ok is False
    assert str(ca.created) in configured.error and str(ca.created + 1) in configured.error
    assert_quiet(h)


def test_configured_public_key_with_its_creation_time_configures(cas):
    h = ActorHarness(OpenPgpSigner)
    h.deliver(Configure("openpgp_signer", make_config(cas["p256"]), PEERS), "supervisor")
    (_, configured), = h.take(Configured)
    assert configured.ok is True and configured.error is None
    assert h.actor.ca.fingerprint.hex().upper() == cas["p256"].fingerprint


# --- limits and odd inputs (issues 11.4, 12.5) ------------------------------------------------

def test_a_request_with_max_uids_uids_is_certified(rsa_signer, cas):
    gpg = Gpg()
    try:
        uids = [f"User {i} <u{i}@example.org>" for i in range(20)]
        gpg("--quick-gen-key", uids[0], "ed25519", "default", "never")
        fpr = gpg.fingerprint(uids[0])
        for uid in uids[1:]:
            gpg("--quick-add-uid", fpr, uid)
        key = gpg("--export", fpr)
    finally:
        gpg.close()
    signs, _, answer = certify(rsa_signer, cas["rsa"], {"key": key, "uids": uids})
    assert len(signs) == 20 and answer["certified_uids"] == uids
    sigs = ca_signatures(cas["rsa"], answer["key"])
    assert sorted(sigs) == sorted(uids) and all(s[0][1] == "!" for s in sigs.values())


def test_armour_with_a_utf8_comment_header_is_certified(rsa_signer, cas):
    text = (VECTORS / "openpgp-utf8-comment.asc").read_text(encoding="utf-8")
    assert "Comment: Schl\u00fcssel" in text
    uid = "Comment Tester <comment@example.org>"
    for key in (text, text.encode("utf-8")):
        rsa_signer.sent.clear()
        _, _, answer = certify(rsa_signer, cas["rsa"], {"key": key, "uids": [uid]})
        sigs = ca_signatures(cas["rsa"], answer["key"])
        assert list(sigs) == [uid] and sigs[uid][0][1] == "!"


def test_name_only_and_comment_uids_are_certified_like_any_other(rsa_signer, cas):
    """Issue 15.7: the web side keeps uids with a verified name and no address (and
    `Name (comment) <email>`); the signer certifies every requested uid on the key, a key
    whose only uid has no address too, and gpg --check-sigs verifies each."""
    gpg = Gpg()
    try:
        name_only, commented = "Alice Example", "Alice Example (work) <alice@work.example>"
        gpg("--quick-gen-key", name_only, "ed25519", "default", "never")
        fpr = gpg.fingerprint(name_only)
        only_name = gpg("--export", fpr)
        gpg("--quick-add-uid", fpr, commented)
        both = gpg("--export", fpr)
    finally:
        gpg.close()
    for key, uids in ((only_name, [name_only]), (both, [name_only, commented])):
        signer = ActorHarness(OpenPgpSigner, make_config(cas["rsa"]), PEERS)
        _, store, answer = certify(signer, cas["rsa"], {"key": key, "uids": uids})
        assert store.uids == answer["certified_uids"] == uids
        sigs = ca_signatures(cas["rsa"], answer["key"])
        assert sorted(sigs) == sorted(uids)
        assert all(records[0][1] == "!" for records in sigs.values()), sigs
