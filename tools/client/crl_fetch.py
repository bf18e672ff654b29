"""Keep a local CRL file current with the least traffic on the link: send the number of the
CRL held, apply the diff the signer answers, check the result byte for byte (sha256) and
its signature against the issuer certificate, then replace the file atomically."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.crl.diff import DiffError, apply_diff
from core.x509.certificate import X509_PARSE_ERRORS, issuer_public_key
from tools.client.library import Response, SignerClient
from tools.client.files import write_atomically

PEM_SUFFIXES = (".pem", ".crl.pem")


@dataclass
class FetchOutcome:
    summary: dict[str, Any]
    error: Response | None = None


def read_crl(path: Path) -> bytes | None:
    """The DER of the CRL in path, or None when there is none usable."""
    try:
        data = path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_crl(data))
    except (OSError, *X509_PARSE_ERRORS):  # a CRL of an unknown version included
        return None
    return crl.public_bytes(Encoding.DER)


def crl_number(der: bytes) -> int | None:
    try:
        return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound):
        return None


def issuer_certificate(client: SignerClient, issuer: str) -> x509.Certificate:
    response = client.call("ca_info")
    for entry in (response.body or {}).get("issuers", []):
        if entry["id"] == issuer:
            return x509.load_der_x509_certificate(entry["certificate"])
    raise ValueError(f"the signer does not list issuer {issuer!r}")


@dataclass
class FetchedCrl:
    """What one fetch_crl exchange gave: the new CRL's DER (None when unchanged or refused)."""
    summary: dict[str, Any]
    der: bytes | None = None
    error: Response | None = None


def fetch_crl(client: SignerClient, issuer: str, held: bytes | None,
              issuer_cert: x509.Certificate | None = None) -> FetchedCrl:
    """One exchange with the signer, no file touched: the DER of a newer CRL than `held`,
    checked byte for byte (sha256), by signature, and for a CRL number above the held one (a
    signer restored from an old backup, or another signer, must not roll a CRL back).
    Raises ValueError when the answer must not be used."""
    body: dict[str, Any] = {"issuer": issuer}
    held_number = crl_number(held) if held is not None else None
    if held_number is not None:
        body["have_number"] = held_number
    response = client.call("fetch_crl", body)
    if not response.ok:
        return FetchedCrl({}, None, response)
    answer = response.answer
    if answer["status"] == "unchanged":
        return FetchedCrl(summary(answer, 0))
    if answer["status"] == "diff":
        if held is None:  # a diff answers a CRL number sent, which comes from a CRL held
            raise ValueError("the signer sent a diff, but no CRL is held to apply it to")
        try:
            der = apply_diff(held, answer["diff"], answer["sha256"])
        except DiffError as exc:
            raise ValueError(str(exc)) from None
        moved = len(answer["diff"])
    else:
        der = answer["crl"]
        moved = len(der)
        if hashlib.sha256(der).hexdigest() != answer["sha256"]:
            raise ValueError("the CRL does not match the signer's sha256")
    crl = x509.load_der_x509_crl(der)
    issuer_cert = issuer_cert or issuer_certificate(client, issuer)
    if not crl.is_signature_valid(issuer_public_key(issuer_cert)):
        raise ValueError("the CRL's signature does not verify with the issuer certificate")
    if held is not None and not x509.load_der_x509_crl(held).is_signature_valid(issuer_public_key(issuer_cert)):
        # The CRL held came from another key: this signer is not the one that CRL belongs to.
        raise ValueError("the CRL held is signed by another key than this issuer certificate's: "
                         "not replaced")
    number = crl_number(der)
    if held_number is not None and (number is None or number <= held_number):
        raise ValueError(f"the signer's CRL number {number} is not above the one held ({held_number}): "
                         "not replaced")
    return FetchedCrl(summary(answer, moved), der)


def fetch_crl_into(client: SignerClient, issuer: str, out: Path,
                   issuer_cert: x509.Certificate | None = None) -> FetchOutcome:
    """Bring `out` up to date. Without `issuer_cert` the issuer's certificate is asked for
    with ca_info (a few KB more on the link) to check the CRL's signature."""
    fetched = fetch_crl(client, issuer, read_crl(out), issuer_cert)
    if fetched.der is not None:
        write_crl(out, fetched.der)
    return FetchOutcome(fetched.summary, fetched.error)


def write_crl(out: Path, der: bytes) -> None:
    """DER, or PEM when the name says so; replaced atomically."""
    data = (x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
            if out.name.endswith(PEM_SUFFIXES) else der)
    write_atomically(out, data)


def summary(answer: dict[str, Any], moved: int) -> dict[str, Any]:
    kept = {"status": answer["status"], "number": answer["number"], "bytes_moved": moved,
            "this_update": answer["this_update"], "next_update": answer["next_update"]}
    if "audit_head" in answer:  # only when this fetch built and signed a new CRL
        kept["audit_head"] = answer["audit_head"]
    return kept
