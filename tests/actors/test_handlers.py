"""Health, CaInfo and Supervisor actors, each alone with mock peers."""
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from thespian.actors import ChildActorExited, WakeupMessage

from actors.handlers.ca_info import CaInfo
from actors.handlers.health import PART_TIMEOUT_S, Health
from actors.supervisor import CHILDREN, STATUS_TIMEOUT_S, Supervisor
from actors.handlers.x509_signer import X509Signer
from messages import (ActorStatusReply, ActorStatusRequest, CommandReply, CommandRequest, Configure,
                      Configured, HsmHealthReply, HsmHealthRequest, RepoHealthReply,
                      RepoHealthRequest, SignerStarted, StartSigner, SystemStatusReply,
                      SystemStatusRequest)
from tests.support.actor_harness import ActorHarness


def make_ca(path, days):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {days}")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert


@pytest.fixture
def config(tmp_path):
    make_ca(tmp_path / "root.pem", 3650)
    make_ca(tmp_path / "short.pem", 10)
    (tmp_path / "pgp.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n...")
    return SimpleNamespace(
        node_id="node-t",
        issuers=[SimpleNamespace(id="root", certificate=str(tmp_path / "root.pem"), key_label="r"),
                 SimpleNamespace(id="short", certificate=str(tmp_path / "short.pem"), key_label="s")],
        openpgp=SimpleNamespace(public_key=str(tmp_path / "pgp.asc"), created=1234),
        health=SimpleNamespace(ca_expiry_warning_days=30))


PEERS = {"hsm": "HSM", "repository": "REPO"}


def ask_health(h):
    h.deliver(CommandRequest(7, "id", "health", {}), "D")
    (_, hsm_request), = h.take(HsmHealthRequest)
    (_, repo_request), = h.take(RepoHealthRequest)
    return hsm_request, repo_request


def test_health_collects_parts_and_flags_expiring_ca(config):
    h = ActorHarness(Health, config, PEERS)
    hsm_request, repo_request = ask_health(h)
    h.deliver(RepoHealthReply(repo_request.tag, {"quick_check": "ok", "counts": {}}), "REPO")
    assert not h.take(CommandReply)  # still waiting for the HSM
    h.deliver(HsmHealthReply(hsm_request.tag, {"token": "t", "logged_in": True,
                                                "test_signature_ms": 1.5}), "HSM")
    (address, reply), = h.take(CommandReply)
    body = reply.body
    assert address == "D" and reply.tag == 7
    assert body["hsm"]["ok"] and body["repository"]["ok"]
    assert {c["id"]: c["ok"] for c in body["ca_certificates"]} == {"root": True, "short": False}
    assert body["healthy"] is False and "issuer short" in body["problems"][0]
    assert body["node_id"] == "node-t" and body["time"].startswith(str(datetime.now(timezone.utc).year))


def test_health_unhealthy_on_hsm_error_and_on_timeout(config):
    config.issuers.pop()  # only the long-lived CA
    h = ActorHarness(Health, config, PEERS)
    hsm_request, repo_request = ask_health(h)
    h.deliver(HsmHealthReply(hsm_request.tag, {}, error={"code": "hsm_unavailable", "message": "gone"}))
    h.deliver(RepoHealthReply(repo_request.tag, {"quick_check": "ok"}))
    (_, reply), = h.take(CommandReply)
    assert reply.body["healthy"] is False and reply.body["hsm"]["error"]["code"] == "hsm_unavailable"

    # A hung HSM: the deadline passes with no reply.
    hsm_request, repo_request = ask_health(h)
    h.deliver(RepoHealthReply(repo_request.tag, {"quick_check": "ok"}))
    h.pass_time(PART_TIMEOUT_S - 0.5)
    assert not h.take(CommandReply)  # not before the part's deadline
    h.pass_time(0.6)
    (_, reply), = h.take(CommandReply)
    assert reply.body["hsm"]["error"]["code"] == "timeout" and not reply.body["healthy"]


def test_health_all_good(config):
    config.issuers.pop()
    h = ActorHarness(Health, config, PEERS)
    hsm_request, repo_request = ask_health(h)
    h.deliver(HsmHealthReply(hsm_request.tag, {"logged_in": True}))
    h.deliver(RepoHealthReply(repo_request.tag, {"quick_check": "ok"}))
    (_, reply), = h.take(CommandReply)
    assert reply.body["healthy"] is True and reply.body["problems"] == []


def test_ca_info_returns_der_and_openpgp(config):
    h = ActorHarness(CaInfo, config, {})
    h.deliver(CommandRequest(3, "i", "ca_info", {}), "D")
    (_, reply), = h.take(CommandReply)
    ids = [i["id"] for i in reply.body["issuers"]]
    assert ids == ["root", "short"]
    cert = x509.load_der_x509_certificate(reply.body["issuers"][0]["certificate"])
    assert cert.subject.rfc4514_string() == "CN=Test CA 3650"
    assert reply.body["openpgp"]["created"] == 1234


def test_configure_failure_is_reported(tmp_path):
    h = ActorHarness(CaInfo)
    bad = SimpleNamespace(issuers=[SimpleNamespace(id="x", certificate=str(tmp_path / "no.pem"), key_label="k")],
                          openpgp=None)
    h.deliver(Configure("ca_info", bad, {}), "supervisor")
    (_, configured), = h.take(Configured)
    assert not configured.ok and "cannot load certificate" in configured.error


WITHOUT_SYNC = [name for name in CHILDREN if name != "sync"]  # sync only when configured


def started_supervisor(x509_workers: int = 1):
    h = ActorHarness(Supervisor)
    config = SimpleNamespace(sync=None, x509=SimpleNamespace(workers=x509_workers), node_id="node-a",
                             repository=SimpleNamespace(path="repository.sqlite"))  # status names both
    h.deliver(StartSigner(config), "system")
    configures = h.take(Configure)
    if x509_workers == 1:
        assert [m.name for _, m in configures] == WITHOUT_SYNC
    return h, configures


def test_supervisor_runs_a_pool_of_x509_signers_each_restarted_on_its_own():
    h, configures = started_supervisor(x509_workers=3)
    names = [m.name for _, m in configures]
    pool = ["x509_signer", "x509_signer_2", "x509_signer_3"]
    assert names == WITHOUT_SYNC[:WITHOUT_SYNC.index("x509_signer")] + pool + WITHOUT_SYNC[WITHOUT_SYNC.index("x509_signer") + 1:]
    assert [cls for cls, address in h.created if address in [h.actor.children[n] for n in pool]] == [X509Signer] * 3
    old = h.actor.children["x509_signer_2"]
    h.deliver(ChildActorExited(old), "admin")
    (delay, payload), = h.wakeups[-1:]
    h.deliver(WakeupMessage(delay, payload))
    new = h.actor.children["x509_signer_2"]
    assert new != old and h.created[-1] == (X509Signer, new)
    assert h.actor.restarts == dict.fromkeys(names, 0) | {"x509_signer_2": 1}


def test_supervisor_starts_wires_and_reports():
    h, configures = started_supervisor()
    addresses = configures[0][1].addresses
    assert set(addresses) == set(WITHOUT_SYNC)
    for name in WITHOUT_SYNC:
        h.deliver(Configured(name, name != "hsm", "hsm: wrong PIN" if name == "hsm" else None), addresses[name])
    (address, started), = h.take(SignerStarted)
    assert address == "system" and not started.ok and started.errors == ["hsm: wrong PIN"]


def test_supervisor_restarts_a_crashed_child_and_rewires():
    h, configures = started_supervisor()
    old = configures[0][1].addresses["health"]
    h.deliver(ChildActorExited(old), "admin")
    (delay, payload), = h.wakeups[-1:]
    h.deliver(WakeupMessage(delay, payload))
    again = h.take(Configure)
    new = h.actor.children["health"]
    assert new != old
    assert [(m.name, m.first) for a, m in again if a == new] == [("health", True)]
    assert all(not m.first and m.addresses["health"] == new for a, m in again if a != new)
    assert h.actor.restarts["health"] == 1


def test_supervisor_status_has_a_record_per_actor_even_when_one_hangs():
    h, configures = started_supervisor()
    h.deliver(SystemStatusRequest(), "admin")
    requests = h.take(ActorStatusRequest)
    assert len(requests) == len(WITHOUT_SYNC)
    for address, request in requests:
        if "hsm" not in address:
            h.deliver(ActorStatusReply(request.tag, {"alive": True, "messages": 1}), address)
    assert not h.take(SystemStatusReply)
    h.pass_time(STATUS_TIMEOUT_S - 0.5)
    assert not h.take(SystemStatusReply)
    h.pass_time(0.6)
    (_, reply), = h.take(SystemStatusReply)
    by_name = {r["name"]: r for r in reply.records}
    assert set(by_name) == set(WITHOUT_SYNC) | {"supervisor"}
    assert by_name["hsm"]["alive"] is False and by_name["health"]["alive"] is True
    assert all("restarts" in r for r in reply.records)


def test_supervisor_tells_health_which_child_is_down_until_it_is_configured_again():
    h, configures = started_supervisor()
    health = configures[0][1].addresses["health"]
    old = configures[0][1].addresses["revoker"]
    h.deliver(ChildActorExited(old), "admin")
    (address, told), = h.take(Configure)
    assert address == health and not told.first and told.down == ("revoker",)
    (delay, payload), = h.wakeups[-1:]
    h.deliver(WakeupMessage(delay, payload))
    h.take(Configure)
    h.deliver(Configured("revoker", True), h.actor.children["revoker"])
    (address, told), = h.take(Configure)
    assert address == health and told.down == ()


def test_health_reports_actors_that_are_down(config):
    h = ActorHarness(Health, config, PEERS)
    h.deliver(Configure("health", config, PEERS, first=False, down=("revoker",)), "supervisor")
    hsm_request, repo_request = ask_health(h)
    h.deliver(HsmHealthReply(hsm_request.tag, {"logged_in": True}))
    h.deliver(RepoHealthReply(repo_request.tag, {"quick_check": "ok"}))
    (_, reply), = h.take(CommandReply)
    assert not reply.body["healthy"] and reply.body["actors_down"] == ["revoker"]
    assert "actors not running (being restarted): revoker" in reply.body["problems"]
