"""X.509 benchmark, in one run:
  - certificates per second end to end over an unthrottled pty (class3 = RSA-2048 issuer),
    pipelined (distinct keys and names), with each --workers count of X509Signers (x509.workers), each run next to the
    raw RSA-2048 signatures per second on the same token measured right after it;
  - CRL build + HSM signature for 100k and 1M entries next to cryptography's own builder
    signing with an in-memory key (the reference: cryptography makes and encodes the
    entries; core.crl.build writes the entries' DER itself and the HSM signs the TBS);
  - diff bytes for a 100k-entry CRL after k new revocations.

    .venv/bin/python bench/bench_x509.py [--certs 300] [--workers 1 2] [--repeat 1]
                                         [--crl-sizes 100000 1000000] [--diff-k 1 10 100 1000]
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_spine import raw_hsm_rate  # noqa: E402
from bench.profile_x509 import request_csrs, sign_bodies, warm_up, with_x509_workers  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402
from core.crl.build import REASON_NAMES  # noqa: E402


def certificates_per_second(client: SignerClient, csrs: list[bytes], count: int) -> float:
    warm_up(client, sign_bodies(csrs, "class3", 60, first=10**6))
    bodies = sign_bodies(csrs, "class3", count)
    started = time.perf_counter()
    ids = [client.send("sign_x509", body) for body in bodies]
    for request_id in ids:
        response = client.wait_for(request_id, timeout=300)
        assert response.ok, response.error
    return count / (time.perf_counter() - started)


def entries(count: int) -> list[tuple[int, datetime, int | None]]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return sorted((secrets.randbits(127) | 1 << 127, now - timedelta(seconds=i), (None, 1, 4)[i % 3])
                  for i in range(count))


def cryptography_entries(revoked: list[tuple[int, datetime, int | None]]) -> list:
    """The reference's entries: the fastest way we know to make cryptography's
    RevokedCertificate objects (the constructor, not the chained setters; one shared
    extension list per reason). core.crl.build used this until it wrote the entries' DER."""
    from cryptography import x509

    shared = {None: [], 0: []}
    for code in (1, 2, 3, 4, 5, 6, 9, 10):
        flag = x509.CRLReason(x509.ReasonFlags(REASON_NAMES[code]))
        shared[code] = [x509.Extension(x509.CRLReason.oid, False, flag)]
    new_entry = x509.RevokedCertificateBuilder
    return [new_entry(serial, revoked_at, shared[reason]).build() for serial, revoked_at, reason in revoked]


def crl_timings(data: Path, sizes: list[int]) -> list[tuple[int, float, float, int]]:
    import yaml
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    from core.crl.build import assemble_crl, build_tbs_crl, verify_crl
    from core.hsm.session import HsmSession
    from core.x509.certificate import key_info_of

    config = yaml.safe_load((data / "signer.yaml").read_text())
    os.environ["SOFTHSM2_CONF"] = str(data / config["hsm"]["softhsm_conf"])
    pin = (data / config["hsm"]["pin_file"]).read_text().strip()
    issuer = x509.load_pem_x509_certificate((data / "ca" / "class3.pem").read_bytes())
    info = key_info_of(issuer.public_key())
    memory_key = rsa.generate_private_key(public_exponent=65537, key_size=info["bits"])
    results = []
    with HsmSession(config["hsm"]["module"], config["hsm"]["token_label"], pin) as session:
        for size in sizes:
            revoked = entries(size)
            now = datetime.now(timezone.utc)
            started = time.perf_counter()
            prepared = build_tbs_crl(issuer, info, revoked, 1, now, now + timedelta(days=7), "sha256",
                                     "http://crl.example/class3.crl")
            der = assemble_crl(prepared, session.sign("class3-key", prepared.mechanism, prepared.tbs_der))
            ours = time.perf_counter() - started
            verify_crl(der, issuer)
            started = time.perf_counter()
            x509.CertificateRevocationListBuilder(
                issuer_name=issuer.subject, last_update=now, next_update=now + timedelta(days=7),
                revoked_certificates=cryptography_entries(revoked)).sign(memory_key, hashes.SHA256())
            raw = time.perf_counter() - started
            results.append((size, ours, raw, len(der)))
    return results


def diff_sizes(ks: list[int], size: int = 100_000) -> list[tuple[int, int, float]]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from core.crl.build import assemble_crl, build_tbs_crl
    from core.crl.diff import make_diff
    from core.x509.certificate import key_info_of

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))

    def crl(revoked, number):
        prepared = build_tbs_crl(cert, key_info_of(key.public_key()), revoked, number, now,
                                 now + timedelta(days=7), "sha256", "http://crl.example/x.crl")
        return assemble_crl(prepared, key.sign(prepared.tbs_der, padding.PKCS1v15(), hashes.SHA256()))

    base_entries = entries(size)
    base = crl(base_entries, 1)
    results = []
    for k in ks:
        target = crl(sorted(base_entries + entries(k)), 2)
        started = time.perf_counter()
        diff = make_diff(base, target)
        results.append((k, len(diff), time.perf_counter() - started))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="x509.workers to measure")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over --workers (the machine's load varies)")
    parser.add_argument("--crl-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--diff-k", type=int, nargs="*", default=[1, 10, 100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dev_init(Path(tmp) / "data")
        csrs = request_csrs()  # distinct keys and names, as real requests (profile_x509.request_csrs)
        # Each signer run gets its own reference: the raw HSM rate measured right after it
        # (the signer stopped, the token free), so a change in the machine's load between
        # runs moves both figures.
        runs: list[tuple[int, float, float]] = []  # (workers, certificates/s, raw signatures/s)
        for round_number in range(args.repeat):
            for workers in args.workers:
                run_dir = Path(tmp) / f"run-{round_number}-{workers}"
                run_dir.mkdir()
                signer = SignerProcess(with_x509_workers(signer_config(data, run_dir), workers), log_dir=run_dir)
                try:
                    with SignerClient(signer.client_path, timeout=120) as client:
                        cert_rate = certificates_per_second(client, csrs, args.certs)
                finally:
                    signer.stop()
                runs.append((workers, cert_rate, raw_hsm_rate(data, "class3-key")))
        crls = crl_timings(data, args.crl_sizes)
    for workers, cert_rate, hsm_rate in runs:
        print(f"sign_x509 end to end over the pty (RSA-2048 issuer, pipelined), {workers} X509Signer "
              f"worker(s): {cert_rate:7.1f} certificates/s = {cert_rate / hsm_rate:.3f} of the raw HSM rate "
              f"({hsm_rate:,.0f} RSA-2048 signatures/s straight on the token, one process, right after)")
    for workers in args.workers:
        shares = [rate / raw for w, rate, raw in runs if w == workers]
        print(f"  {workers} worker(s): {min(shares):.3f}-{max(shares):.3f} of the raw HSM rate over {len(shares)} run(s)")
    for size, ours, raw, length in crls:
        print(f"CRL {size:>9,} entries: throwaway-TBS + HSM sign {ours:6.2f} s | cryptography builder "
              f"+ in-memory key {raw:6.2f} s | ratio {ours / raw:4.2f} | {length / 1e6:5.1f} MB")
    for k, length, seconds in diff_sizes(args.diff_k):
        print(f"diff of a 100,000-entry CRL after {k:>5} new revocations: {length:>8,} bytes ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
