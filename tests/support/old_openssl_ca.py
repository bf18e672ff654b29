"""A CA run the way CAcert's old signer ran its roots: an `openssl ca` database (index.txt,
newcerts/, serial, crlnumber) driven by real `openssl ca` commands, for the import tests."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509

_CA_CONFIG = """\
[ca]
default_ca = old
[old]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 7
policy = policy_any
unique_subject = no
x509_extensions = leaf
crl_extensions = crl_ext
[policy_any]
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
authorityKeyIdentifier = keyid
[sub_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[crl_ext]
authorityKeyIdentifier = keyid:always
"""


def openssl(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {result.stderr}")
    return result.stdout


def openssl_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


class OldCa:
    """One root of the old signer. `parent` None: self-signed (CAcert's root); else signed
    by the parent's `openssl ca` (CAcert's class 3 under the root)."""

    def __init__(self, folder: Path, name: str, first_serial: str, first_crl_number: str,
                 parent: "OldCa | None" = None) -> None:
        self.dir, self.name = folder, name
        folder.mkdir(parents=True)
        (folder / "newcerts").mkdir()
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text(first_serial + "\n")
        (folder / "crlnumber").write_text(first_crl_number + "\n")
        self.config = folder / "ca.cnf"
        self.config.write_text(_CA_CONFIG.format(dir=folder))
        self.key = folder / "ca.key"
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", str(self.key))
        subject = f"/O=Old CA/CN={name}"
        if parent is None:
            openssl("req", "-x509", "-new", "-key", str(self.key), "-subj", subject, "-days",
                    "7300", "-out", str(self.cert_path), "-addext",
                    "basicConstraints=critical,CA:TRUE", "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign", "-addext",
                    "subjectKeyIdentifier=hash")
        else:
            csr = folder / "ca.csr"
            openssl("req", "-new", "-key", str(self.key), "-subj", subject, "-out", str(csr))
            openssl("ca", "-batch", "-config", str(parent.config), "-in", str(csr), "-out",
                    str(self.cert_path), "-days", "3650", "-extensions", "sub_ca", "-notext")

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def issue(self, cn: str, not_before: datetime | None = None,
              not_after: datetime | None = None) -> x509.Certificate:
        csr, out = self.dir / f"{cn}.csr", self.dir / f"{cn}.crt"
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(self.dir / f"{cn}.key"), "-subj", f"/CN={cn}",
                "-out", str(csr))
        validity = (["-days", "365"] if not_after is None else
                    ["-startdate", openssl_time(not_before or not_after - timedelta(days=365)),
                     "-enddate", openssl_time(not_after)])
        openssl("ca", "-batch", "-config", str(self.config), "-in", str(csr), "-out", str(out),
                *validity)
        return x509.load_pem_x509_certificate(out.read_bytes())

    def revoke(self, cn: str, reason: str | None) -> None:
        extra = [] if reason is None else ["-crl_reason", reason]
        openssl("ca", "-config", str(self.config), "-revoke", str(self.dir / f"{cn}.crt"), *extra)

    def gencrl(self, out: Path, der: bool = True) -> x509.CertificateRevocationList:
        pem = self.dir / "last-crl.pem"
        openssl("ca", "-config", str(self.config), "-gencrl", "-out", str(pem))
        if der:
            openssl("crl", "-in", str(pem), "-outform", "DER", "-out", str(out))
        else:
            out.write_bytes(pem.read_bytes())
        return x509.load_pem_x509_crl(pem.read_bytes())

    def newcerts_file(self, serial: int) -> Path:
        text = format(serial, "X")
        return self.dir / "newcerts" / f"{text.zfill(len(text) + len(text) % 2)}.pem"
