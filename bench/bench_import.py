"""Takeover rates (issue 14.4, docs/MIGRATION.md), in one run on this machine:
  - raw SQLite: rows/s of a bare executemany into a table shaped like `certificates`, one
    transaction, the repository's pragmas (WAL, synchronous=FULL): the ceiling;
  - import: index lines/s of `import_openssl_ca` on an `openssl ca` folder of N lines
    (default 1,000,000; a fraction with their newcerts/ file, 10 % revoked, the last CRL
    listing the revocations), and the time it takes;
  - catch-up: events/s a peer applies those events at (Repository.apply_peer_events, every
    event's Ed25519 signature and body checked), in batches of `sync.batch` (200), with the
    signatures verified by --workers worker processes (core/sync/signature_worker.py; the
    signer's default: one per CPU beyond the first, at most 2). Beside it, on the first
    events: the same batches with every signature verified inline (--inline events, the
    way before issue 14.4), and one transaction per event (--per-event events, before
    batches). NATS is not in these figures: they measure the repository's side of catch-up.

The folder is written by this script (index lines as `openssl ca` writes them; the
certificates built with cryptography, signed by a P-256 issuer: `openssl ca` itself would
take hours for 1M). Signing the events (what the origin's Sync does on publishing) is not
timed.

    .venv/bin/python bench/bench_import.py [--lines 1000000] [--der-fraction 0.1] [--workers N]
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from core.sync.event_signing import sign_event  # noqa: E402
from core.repository.openssl_ca_import import import_openssl_ca  # noqa: E402
from core.sync.peer_validation import PeerValidator  # noqa: E402
from core.sync.signature_worker import default_count  # noqa: E402
from core.repository.store import Repository  # noqa: E402

NOW = datetime.now(timezone.utc).replace(microsecond=0)
PAGE = 10_000  # events read, signed and handed on per page (memory stays flat)


def openssl_time(moment: datetime) -> str:
    return moment.strftime("%y%m%d%H%M%SZ")


def write_old_ca(folder: Path, lines: int, der_fraction: float
                 ) -> tuple[x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Old CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(NOW - timedelta(days=7300)).not_valid_after(NOW + timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (folder / "newcerts").mkdir(parents=True)
    every_der = max(1, round(1 / der_fraction)) if der_fraction > 0 else 0
    revoked = []
    with open(folder / "index.txt", "w") as index:
        for number in range(1, lines + 1):
            serial = format(0x100000 + number, "X")
            not_after = NOW + timedelta(days=number % 1000 - 300)
            revocation = ""
            if number % 10 == 0:
                revoked_at = NOW - timedelta(days=number % 300 + 1)
                revocation = f"{openssl_time(revoked_at)},keyCompromise"
                revoked.append(x509.RevokedCertificateBuilder(0x100000 + number, revoked_at, [
                    x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(x509.ReasonFlags.key_compromise))]).build())
            status = "R" if revocation else ("V" if not_after > NOW else "E")
            index.write(f"{status}\t{openssl_time(not_after)}\t{revocation}\t{serial}\tunknown"
                        f"\t/CN=user{number}.example.org\n")
            if every_der and number % every_der == 0:
                cert = (x509.CertificateBuilder()
                        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"user{number}.example.org")]))
                        .issuer_name(name).public_key(leaf_key).serial_number(0x100000 + number)
                        .not_valid_before(not_after - timedelta(days=730)).not_valid_after(not_after)
                        .sign(key, hashes.SHA256()))
                (folder / "newcerts" / f"{serial}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (folder / "serial").write_text(format(0x100000 + lines + 1, "X") + "\n")
    (folder / "crlnumber").write_text("1A2B\n")
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=name, last_update=NOW, next_update=NOW + timedelta(days=7),
        extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(0x1A2A))],
        revoked_certificates=revoked).sign(key, hashes.SHA256())
    crl_path = folder / "last.crl"
    crl_path.write_bytes(crl.public_bytes(Encoding.DER))
    return ca, crl_path


def raw_sqlite_rate(path: Path, rows: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (issuer TEXT, serial TEXT, subject TEXT, not_before TEXT,"
               " not_after TEXT, der BLOB, PRIMARY KEY (issuer, serial))")
    data = [("root", format(0x100000 + n, "x"), f"/CN=user{n}.example.org",
             "1970-01-01T00:00:00Z", "2030-01-01T00:00:00Z", None) for n in range(rows)]
    started = time.perf_counter()
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", data)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return rows / elapsed


def catch_up(source: Repository, peer: Repository, validator: PeerValidator,
             key: Ed25519PrivateKey, batch: int, limit: int | None,
             mark: int = 0) -> tuple[int, float, float]:
    """(events applied, seconds spent applying, seconds spent on the first `mark` events
    (rounded up to a page)) replaying `source`'s log into `peer`."""
    seq, applied, spent, at_mark = 0, 0, 0.0, 0.0
    while limit is None or applied < limit:
        page = source.events_after(seq, PAGE if limit is None else min(PAGE, limit - applied))
        if not page:
            break
        seq = page[-1]["seq"]
        for event in page:
            event["signature"] = sign_event(key, event)
        started = time.perf_counter()
        if batch > 1:
            for start in range(0, len(page), batch):
                outcomes, waiting = peer.apply_peer_events(page[start:start + batch], validator)
                assert waiting is None and "quarantined" not in outcomes, (waiting, outcomes)
        else:
            for event in page:
                assert peer.apply_peer_event(event, validator) == "applied"
        spent += time.perf_counter() - started
        applied += len(page)
        if applied - len(page) < mark <= applied:
            at_mark = spent
    return applied, spent, at_mark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--der-fraction", type=float, default=0.1,
                        help="share of index lines with their newcerts/ file")
    parser.add_argument("--batch", type=int, default=200, help="events per catch-up batch (sync.batch)")
    parser.add_argument("--per-event", type=int, default=5_000,
                        help="events applied the old way (one transaction each), for comparison")
    parser.add_argument("--inline", type=int, default=100_000,
                        help="events applied in batches with every signature verified inline, for comparison")
    parser.add_argument("--workers", type=int, default=default_count(),
                        help="signature worker processes (default: %(default)s on this machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        ca, crl_path = write_old_ca(root / "ca", args.lines, args.der_fraction)
        print(f"old CA folder: {args.lines:,} index lines, {args.der_fraction:.0%} with newcerts/,"
              f" 10 % revoked ({time.perf_counter() - started:.0f} s to write)")
        raw = raw_sqlite_rate(root / "raw.sqlite", args.lines)
        print(f"raw SQLite insert: {raw:,.0f} rows/s (one transaction, WAL, synchronous=FULL)")

        source = Repository(str(root / "a.sqlite"), "signer-a")
        started = time.perf_counter()
        summary = import_openssl_ca(source, "root", ca, root / "ca", crl_path)
        took = time.perf_counter() - started
        assert summary.certificates == args.lines and not summary.refused, summary.as_dict()
        print(f"import: {args.lines / took:,.0f} index lines/s: {args.lines:,} lines in {took:.0f} s"
              f" ({summary.records_with_der:,} with DER, {summary.revocations:,} revocations)"
              f" -> {source.last_event_seq():,} events")

        key = Ed25519PrivateKey.generate()
        inline = PeerValidator({"signer-a": key.public_key()}, {"root": ca}, None)
        old_way = Repository(str(root / "per-event.sqlite"), "signer-c")
        count, spent, _ = catch_up(source, old_way, inline, key, 1, args.per_event)
        print(f"catch-up, one transaction per event (before batches): {count / spent:,.0f} events/s"
              f" ({count:,} events)")
        inline_peer = Repository(str(root / "inline.sqlite"), "signer-d")
        count, spent, _ = catch_up(source, inline_peer, inline, key, args.batch, args.inline)
        inline_rate = count / spent
        print(f"catch-up, batches of {args.batch}, signatures verified inline (before issue 14.4):"
              f" {inline_rate:,.0f} events/s ({count:,} events)")
        validator = PeerValidator({"signer-a": key.public_key()}, {"root": ca}, None,
                                  workers=args.workers)
        peer = Repository(str(root / "b.sqlite"), "signer-b")
        count, spent, at_mark = catch_up(source, peer, validator, key, args.batch, None, args.inline)
        validator.close()
        first = f"; its first {min(args.inline, count):,} events: {min(args.inline, count) / at_mark:,.0f} events/s" \
            if at_mark else ""
        print(f"catch-up, batches of {args.batch}, signatures verified by {args.workers} worker"
              f" process(es): {count / spent:,.0f} events/s ({count:,} events in {spent:.0f} s{first})")
        assert peer.content_digest() == source.content_digest()
        print("peer content digest equals the importer's")


if __name__ == "__main__":
    main()
