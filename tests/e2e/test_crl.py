"""CRLs end to end: the grace period, numbers across restarts, and the diff transfer of a
100,000-entry CRL after 10 new revocations. The repository is filled in bulk before the
signer starts (as a signer with a long history would have it); everything after goes over
the pty."""
from __future__ import annotations

import json
import secrets
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from core.repository.store import Repository
from tests.support.helpers import SignerProcess, run_tool, signer_config
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e
NOW = datetime.now(timezone.utc).replace(microsecond=0)
BULK = 100_000


def cert_row(issuer: str, serial: int, not_after: datetime) -> dict:
    return {"issuer": issuer, "serial": format(serial, "x"), "request_id": f"bulk-{serial:x}",
            "profile": "server", "subject": "CN=bulk", "not_before": not_after - timedelta(days=365),
            "not_after": not_after, "der": b"\x30\x00"}


def new_serial() -> int:
    return secrets.randbits(127) | 1 << 127


@pytest.fixture(scope="module")
def world(dev_data, tmp_path_factory):
    """A repository with history: expired revoked certificates inside and outside the grace
    period for `root`, 100k revoked and 10 live certificates for `class3`."""
    target = tmp_path_factory.mktemp("crl-run")
    config = signer_config(dev_data, target)
    repo = Repository(str(target / "repository.sqlite"), "history")
    serials = {"in_grace": new_serial(), "past_grace": new_serial(), "live_revoked": new_serial(),
               "root_spare": new_serial()}
    repo.bulk_insert_certificates([
        cert_row("root", serials["in_grace"], NOW - timedelta(days=3)),
        cert_row("root", serials["past_grace"], NOW - timedelta(days=30)),
        cert_row("root", serials["live_revoked"], NOW + timedelta(days=100)),
        cert_row("root", serials["root_spare"], NOW + timedelta(days=100))])
    repo.bulk_insert_revocations([{"issuer": "root", "serial": format(serials[k], "x"), "reason": 1,
                                   "revoked_at": NOW - timedelta(days=40)}
                                  for k in ("in_grace", "past_grace", "live_revoked")])
    bulk = [new_serial() for _ in range(BULK)]
    spare = [new_serial() for _ in range(10)]
    repo.bulk_insert_certificates(cert_row("class3", s, NOW + timedelta(days=200)) for s in bulk + spare)
    repo.bulk_insert_revocations({"issuer": "class3", "serial": format(s, "x"), "reason": None,
                                  "revoked_at": NOW - timedelta(days=1)} for s in bulk)
    repo.close()
    signer = SignerProcess(config, log_dir=target)
    state = {"config": config, "signer": signer, "serials": serials, "spare": spare, "dir": target}
    yield state
    state["signer"].stop()


def fetch(signer, issuer: str, out: Path, *extra: str) -> dict:
    result = run_tool("signer-client", "--port", signer.client_path, "--timeout", "120", "--json",
                      "fetch-crl", "--issuer", issuer, "--out", str(out), *extra, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def crl_serials(path: Path) -> set[int]:
    return {entry.serial_number for entry in x509.load_der_x509_crl(path.read_bytes())}


def openssl_verifies(crl: Path, ca: Path) -> None:
    result = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(ca),
                             "-noout", "-verify"], capture_output=True, text=True)
    assert result.returncode == 0 and "verify OK" in result.stdout + result.stderr, result.stderr


def test_grace_period_keeps_recently_expired_and_drops_old(world, dev_data, tmp_path):
    out = tmp_path / "root.crl"
    fetch(world["signer"], "root", out)
    listed = crl_serials(out)
    s = world["serials"]
    assert s["in_grace"] in listed and s["live_revoked"] in listed
    assert s["past_grace"] not in listed
    openssl_verifies(out, dev_data / "ca" / "root.pem")


def test_crl_numbers_increase_across_restarts(world, tmp_path):
    out = tmp_path / "root.crl"
    first = fetch(world["signer"], "root", out)["number"]
    world["signer"].stop()
    world["signer"] = SignerProcess(world["config"], log_dir=world["dir"])
    with SignerClient(world["signer"].client_path, timeout=30) as client:
        assert client.call("revoke_x509", {"issuer": "root",
                                           "serial": format(world["serials"]["root_spare"], "x")}).ok
    second = fetch(world["signer"], "root", out)
    assert second["status"] == "diff" and second["number"] > first
    assert world["serials"]["root_spare"] in crl_serials(out)


def link_bytes(signer) -> int:
    """Bytes moved both ways on the signer's serial port so far."""
    record = next(r for r in signer.status() if r["name"] == "serial_link")
    return record["bytes_in"] + record["bytes_out"]


def test_100k_crl_after_10_revocations_moves_under_3kb(world, dev_data, tmp_path):
    signer, out = world["signer"], tmp_path / "class3.crl"
    full = fetch(signer, "class3", out)
    assert full["status"] == "full" and full["bytes_moved"] > 3_000_000
    with SignerClient(signer.client_path, timeout=60) as client:
        for serial in world["spare"]:
            assert client.call("revoke_x509", {"issuer": "class3", "serial": format(serial, "x"),
                                               "reason": "superseded"}).ok
    before = link_bytes(signer)
    diff = fetch(signer, "class3", out, "--ca-cert", str(dev_data / "ca" / "class3.pem"))
    moved_on_link = link_bytes(signer) - before
    print(f"\n100k-entry CRL, 10 new revocations: diff {diff['bytes_moved']} bytes, "
          f"{moved_on_link} bytes on the link (request and answer frames)")
    assert diff["status"] == "diff" and moved_on_link < 3000
    assert len(crl_serials(out)) == BULK + 10
    openssl_verifies(out, dev_data / "ca" / "class3.pem")


def test_a_class3_certificate_verifies_against_both_crls_of_its_chain(world, dev_data, tmp_path):
    """openssl verify -crl_check_all: the root's CRL carries a critical issuing distribution
    point, so the class3 certificate (made by dev-init) must name that same CRL; then a
    revocation in the class3 CRL is seen through the whole chain. Last in this module: it
    revokes one certificate."""
    signer = world["signer"]
    key, csr, leaf = tmp_path / "k.pem", tmp_path / "r.csr", tmp_path / "leaf.pem"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", "/CN=x"], check=True, capture_output=True)
    issued = run_tool("signer-client", "--port", signer.client_path, "--timeout", "120", "--json", "sign-x509",
                      "--issuer", "class3", "--profile", "server", "--csr", str(csr), "--san",
                      "dns:chain.example.org", "--out", str(leaf), timeout=180)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    ca = dev_data / "ca"

    def verify() -> subprocess.CompletedProcess:
        crls = []
        for issuer in ("root", "class3"):
            der, pem = tmp_path / f"{issuer}.crl", tmp_path / f"{issuer}.crl.pem"
            fetch(signer, issuer, der)
            subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(der), "-out", str(pem)], check=True)
            crls += ["-CRLfile", str(pem)]
        return subprocess.run(["openssl", "verify", "-crl_check_all", "-CAfile", str(ca / "root.pem"),
                               "-untrusted", str(ca / "class3.pem"), *crls, str(leaf)],
                              capture_output=True, text=True)
    good = verify()
    assert good.returncode == 0 and f"{leaf}: OK" in good.stdout, good.stdout + good.stderr
    serial = format(x509.load_pem_x509_certificate(leaf.read_bytes()).serial_number, "x")
    revoked = run_tool("signer-client", "--port", signer.client_path, "--timeout", "120", "revoke-x509",
                       "--issuer", "class3", "--serial", serial, timeout=180)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    bad = verify()
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
