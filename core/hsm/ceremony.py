"""The key ceremony: CA keys and certificates made on the HSM, one step at a time.

A ceremony file (YAML, docs/configuration.md "The ceremony file") names the token and a
list of steps; `signer ceremony --config FILE STEP...` runs the named steps in order.
Step kinds (docs/operations.md "Key ceremony"):

- ``key``: generate a CA key pair on the token (sensitive, not extractable, sign only);
- ``root``: a self-signed root certificate with a key on the token;
- ``csr``: a certificate signing request with a key on the token;
- ``subordinate`` / ``cross``: a CA certificate for a CSR's key (or a key on the token),
  signed by an issuer key on the token;
- ``import``: an existing CA key (PEM, maybe passphrase-protected) stored on the token like
  a generated one, after checking it is the key of the given CA certificate.

Every step is idempotent: what exists and fits the inputs is reported ("exists") and left
alone; something else under the same key label or output file is refused (CeremonyError),
never overwritten. A step that makes something, or is refused, appends one JSON line to the
ceremony log (time, step, inputs' SHA-256, outputs' fingerprints). Nothing secret is written:
certificates, CSRs and public keys only.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import PyKCS11
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from core.runtime.config import ConfigError, HsmConfig, IssuerConfig, build, read_pin, read_private_file
from core.hsm.session import HsmError, HsmSession
from core.hsm.keys import EC_PARAMS

LOG_NAME = "ceremony-log.jsonl"
CERT_FILE_MODE = 0o644  # certificates, CSRs, public keys: nothing secret

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384")
_CURVES = {"p256": "secp256r1", "p384": "secp384r1"}
CaHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
HASHES: dict[str, type[CaHash]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384,
                                   "sha512": hashes.SHA512}
# Subject attribute names accepted in a ceremony file, in the usual short forms.
NAME_ATTRIBUTES = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
                   "L": NameOID.LOCALITY_NAME, "O": NameOID.ORGANIZATION_NAME,
                   "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
                   "emailAddress": NameOID.EMAIL_ADDRESS}
# The private key's attributes every CA key on the token must have.
REQUIRED_FLAGS = {"sensitive": True, "extractable": False, "sign": True,
                  "decrypt": False, "unwrap": False, "derive": False}


_Loaded = TypeVar("_Loaded")


class CeremonyError(Exception):
    """A step cannot run or is refused; the message says why and changes nothing."""


# -- the ceremony file -------------------------------------------------------------------

@dataclass(frozen=True)
class KeyStep:
    name: str
    kind: str
    key_label: str
    key_type: str  # one of KEY_TYPES
    public_key: str | None = None  # output: its public half, PEM


@dataclass(frozen=True)
class RootStep:
    name: str
    kind: str
    key_label: str
    subject: dict[str, Any]
    certificate: str  # output
    validity_days: int
    hash: str = "sha256"
    path_length: int | None = None


@dataclass(frozen=True)
class CsrStep:
    name: str
    kind: str
    key_label: str
    subject: dict[str, Any]
    csr: str  # output
    hash: str = "sha256"


@dataclass(frozen=True)
class SignStep:
    """`subordinate` or `cross`: the subject key and name come from `csr`, or from a key on
    the same token (`subject_key_label`) and `subject`."""
    name: str
    kind: str
    issuer_certificate: str
    issuer_key_label: str
    certificate: str  # output
    validity_days: int
    csr: str | None = None
    subject_key_label: str | None = None
    subject: dict[str, Any] | None = None
    hash: str = "sha256"
    path_length: int | None = None
    crl_url: str | None = None
    ocsp_url: str | None = None
    policy_oids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportStep:
    name: str
    kind: str
    key_file: str  # PEM private key (PKCS#8 or traditional, maybe encrypted)
    certificate: str  # the CA certificate the key must belong to
    key_label: str
    passphrase_file: str | None = None  # else a prompt at a terminal
    public_key: str | None = None  # output: its public half, PEM


Step = KeyStep | RootStep | CsrStep | SignStep | ImportStep
STEP_KINDS: dict[str, type[Step]] = {"key": KeyStep, "root": RootStep, "csr": CsrStep,
                               "subordinate": SignStep, "cross": SignStep, "import": ImportStep}
# Per step class: its fields that are paths (resolved against the ceremony file's folder).
_PATH_FIELDS = ("public_key", "certificate", "csr", "issuer_certificate", "key_file",
                "passphrase_file")


@dataclass(frozen=True)
class CeremonyFile:
    hsm: HsmConfig
    steps: list[Any]  # mappings, built per kind by load_ceremony
    log: str = LOG_NAME  # the ceremony log, relative to the file's folder
    issuers: list[IssuerConfig] = field(default_factory=list)  # the snippet to print
    source: str = ""


@dataclass(frozen=True)
class Ceremony:
    hsm: HsmConfig
    steps: dict[str, Step]
    log: Path
    issuers: list[IssuerConfig]
    source: Path
    digest: str  # SHA-256 of the ceremony file, recorded in every log line


def load_ceremony(path: str | os.PathLike[str]) -> Ceremony:
    """Read and check a ceremony file; ConfigError naming the key on any mistake."""
    path = Path(path).resolve()
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read ceremony file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"ceremony file {path} is not valid YAML: {exc}") from None
    base = path.parent
    top = build(CeremonyFile, data, "", base)
    if not top.hsm.pin_env and not top.hsm.pin_file:
        raise ConfigError("hsm.pin_env or hsm.pin_file: one is required (the PIN is never in the YAML)")
    steps: dict[str, Step] = {}
    for i, item in enumerate(top.steps):
        where = f"steps[{i}]"
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in STEP_KINDS:
            raise ConfigError(f"{where}.kind: expected one of {', '.join(STEP_KINDS)}, got {kind!r}")
        # Paths resolved in the mapping: build() checks the types of the resolved values
        # (only strings are resolved, so a wrong type is reported as written).
        item = {key: _resolve(base, value) if key in _PATH_FIELDS and isinstance(value, str) else value
                for key, value in item.items()}
        step = build(STEP_KINDS[kind], item, where, base)
        check_step(step, where)
        if step.name in steps:
            raise ConfigError(f"{where}.name: duplicate step name {step.name!r}")
        steps[step.name] = step
    return Ceremony(hsm=top.hsm, steps=steps, log=Path(_resolve(base, top.log)),
                    issuers=top.issuers, source=path, digest=hashlib.sha256(raw).hexdigest())


def _resolve(base: Path, value: str) -> str:
    return value if os.path.isabs(value) else os.path.normpath(base / value)


def check_step(step: Step, where: str) -> None:
    """Checks across a step's fields (types were checked while building)."""
    if isinstance(step, KeyStep) and step.key_type not in KEY_TYPES:
        raise ConfigError(f"{where}.key_type: expected one of {', '.join(KEY_TYPES)}, "
                          f"got {step.key_type!r}")
    hash_name = getattr(step, "hash", "sha256")
    if hash_name not in HASHES:
        raise ConfigError(f"{where}.hash: expected one of {', '.join(HASHES)}, got {hash_name!r}")
    if getattr(step, "validity_days", 1) < 1:
        raise ConfigError(f"{where}.validity_days: expected at least 1")
    subject = getattr(step, "subject", None)
    if subject is not None:
        subject_name(subject, f"{where}.subject")
    if isinstance(step, SignStep):
        if (step.csr is None) == (step.subject_key_label is None):
            raise ConfigError(f"{where}: give either csr or subject_key_label (with subject)")
        if step.subject_key_label is not None and step.subject is None:
            raise ConfigError(f"{where}.subject: required with subject_key_label")
        if step.csr is not None and step.subject is not None:
            raise ConfigError(f"{where}.subject: the subject comes from the CSR; remove it")
        for oid in step.policy_oids:
            try:
                x509.ObjectIdentifier(oid)
            except ValueError:
                raise ConfigError(f"{where}.policy_oids: {oid!r} is not an OID") from None


def subject_name(subject: dict[str, Any], where: str = "subject") -> x509.Name:
    """An X.509 name from a mapping of short attribute names, in the file's order."""
    if not subject:
        raise ConfigError(f"{where}: expected a non-empty mapping")
    attributes = []
    for key, value in subject.items():
        if key not in NAME_ATTRIBUTES:
            raise ConfigError(f"{where}.{key}: unknown attribute "
                              f"(expected one of: {', '.join(NAME_ATTRIBUTES)})")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{key}: expected a non-empty string")
        try:
            attributes.append(x509.NameAttribute(NAME_ATTRIBUTES[key], value))
        except ValueError as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
    return x509.Name(attributes)


# -- fingerprints and files --------------------------------------------------------------

def spki_sha256(public_key: Any) -> str:
    return hashlib.sha256(public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def certificate_fingerprints(cert: x509.Certificate) -> dict[str, str]:
    return {"sha256": cert.fingerprint(hashes.SHA256()).hex(),
            "spki_sha256": spki_sha256(cert.public_key())}


def file_sha256(path: str | os.PathLike[str]) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise CeremonyError(f"cannot read {path}: {exc.strerror}") from None


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data`, refusing if it exists (even when created meanwhile):
    written to a private temporary name, then hard-linked into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise CeremonyError(f"refusing to overwrite {path}: it appeared while writing") from None
    finally:
        os.unlink(tmp)


def _read_pem(path: str, load: Callable[[bytes], _Loaded], what: str) -> _Loaded:
    try:
        return load(Path(path).read_bytes())
    except OSError as exc:
        raise CeremonyError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CeremonyError(f"{path} is not a PEM {what}: {exc}") from None


def read_certificate(path: str) -> x509.Certificate:
    return _read_pem(path, x509.load_pem_x509_certificate, "certificate")


def read_csr(path: str) -> x509.CertificateSigningRequest:
    return _read_pem(path, x509.load_pem_x509_csr, "CSR")


# -- running steps -----------------------------------------------------------------------

@dataclass
class StepResult:
    step: str
    kind: str
    made: bool  # False: everything already existed and fits
    inputs: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 of the file
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> fingerprints


class CeremonyRunner:
    """Runs steps on one open HsmSession, prints what it finds and makes through `out`,
    and appends made and refused steps to the ceremony log."""

    def __init__(self, session: HsmSession, log_path: Path, out: Callable[[str], None] = print,
                 file_mode: int = CERT_FILE_MODE, ceremony_digest: str | None = None,
                 passphrase_prompt: Callable[[str], str] | None = None) -> None:
        self.session = session
        self.log_path = log_path
        self.out = out
        self.file_mode = file_mode
        self.ceremony_digest = ceremony_digest
        self.prompt = passphrase_prompt or _prompt_passphrase

    def run(self, step: Step) -> StepResult:
        result = StepResult(step.name, step.kind, made=False)
        if self.ceremony_digest:
            result.inputs["ceremony_file"] = self.ceremony_digest
        handlers: dict[type[Step], Callable[[Any, StepResult], None]] = {
            KeyStep: self._key, RootStep: self._root, CsrStep: self._csr,
            SignStep: self._sign, ImportStep: self._import}
        handler = handlers[type(step)]
        try:
            handler(step, result)
        except (CeremonyError, HsmError, ConfigError) as exc:
            self._log(result, error=f"{type(exc).__name__}: {exc}")
            raise CeremonyError(f"step {step.name!r} ({step.kind}): {exc}") from None
        if result.made:
            self._log(result)
        for name, prints in result.outputs.items():
            self.out(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in prints.items()))
        return result

    def _log(self, result: StepResult, error: str | None = None) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "step": result.step, "kind": result.kind,
                  "result": "refused" if error else "made",
                  "token": self.session.token_label,
                  "inputs": result.inputs, "outputs": result.outputs}
        if error:
            record["error"] = error
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                     self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)  # nothing secret in it (the umask may be 077)
            os.write(fd, line)  # one write: a line is never interleaved with another
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- keys on the token -----------------------------------------------------------------

    def token_key(self, label: str, what: str = "key") -> Any:
        """The public key of a CA key on the token, after checking its private half is
        sensitive, not extractable and sign only."""
        if not self.session.has_key(label):
            raise CeremonyError(f"no {what} labelled {label!r} on token "
                                f"{self.session.token_label!r} (run its key or import step first)")
        flags = self.session.key_flags(label)
        wrong = {k: flags[k] for k, v in REQUIRED_FLAGS.items() if flags[k] != v}
        if wrong:
            raise CeremonyError(f"key {label!r} on the token has unsafe attributes {wrong} "
                                f"(a CA key must be {REQUIRED_FLAGS})")
        return self.session.public_key(label)

    def _key(self, step: KeyStep, result: StepResult) -> None:
        if self.session.has_key(step.key_label):
            public = self.token_key(step.key_label)
            if key_type_of(public) != step.key_type:
                raise CeremonyError(f"the token already holds a different key labelled "
                                    f"{step.key_label!r} ({key_type_of(public)}, not "
                                    f"{step.key_type}); refusing to replace it")
            self.out(f"step {step.name}: key {step.key_label!r} ({step.key_type}) "
                     "already on the token, nothing to do")
        else:
            self.out(f"generating {step.key_type} key {step.key_label} on the token")
            kind, size = step.key_type.split("-")
            if kind == "rsa":
                self.session.generate_rsa_key(step.key_label, int(size))
            else:
                self.session.generate_ec_key(step.key_label, _CURVES[size])
            result.made = True
            public = self.token_key(step.key_label)
        result.outputs[f"key {step.key_label}"] = {"spki_sha256": spki_sha256(public)}
        if step.public_key:
            self._public_key_file(step.public_key, public, result)

    def _public_key_file(self, path: str, public: Any, result: StepResult) -> None:
        pem = public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        if not self._existing_file_matches(Path(path), pem):
            write_new_file(Path(path), pem, self.file_mode)
            result.made = True
        result.outputs[path] = {"spki_sha256": spki_sha256(public)}

    def _existing_file_matches(self, path: Path, content: bytes) -> bool:
        """True if path holds exactly content; False if it does not exist; refused else."""
        if not path.exists() and not path.is_symlink():
            return False
        if path.read_bytes() == content:
            return True
        raise CeremonyError(f"refusing to overwrite {path}: it holds other content")

    # -- certificates and CSRs ---------------------------------------------------------------

    def _existing_certificate(self, step_name: str, path: Path, subject: Any, public: Any,
                              issuer: Any) -> Any:
        """The certificate already at `path` when it is the one this step would make (same
        subject, key and issuer; `issuer` None: self-signed), None when there is none;
        CeremonyError when another certificate is there (never overwritten)."""
        if not (path.exists() or path.is_symlink()):
            return None
        cert = read_certificate(str(path))
        problems = _certificate_problems(cert, subject, public, cert if issuer is None else issuer)
        if problems:
            raise CeremonyError(f"refusing to overwrite {path}: it holds another "
                                f"certificate ({'; '.join(problems)})")
        self.out(f"step {step_name}: {path.name} exists and fits, nothing to do")
        return cert

    def _root(self, step: RootStep, result: StepResult) -> None:
        public = self.token_key(step.key_label)
        subject = subject_name(step.subject)
        path = Path(step.certificate)
        cert = self._existing_certificate(step.name, path, subject, public, issuer=None)
        if cert is None:
            self.out(f"issuing {path.name} through the HSM")
            key = self.session.private_key(step.key_label, step.hash)
            cert = ca_certificate(subject, public, None, key, timedelta(days=step.validity_days),
                                  step.path_length, HASHES[step.hash]())
            _check_issued(cert, cert)
            write_new_file(path, cert.public_bytes(serialization.Encoding.PEM), self.file_mode)
            result.made = True
        result.outputs[step.certificate] = certificate_fingerprints(cert)

    def _csr(self, step: CsrStep, result: StepResult) -> None:
        public = self.token_key(step.key_label)
        subject = subject_name(step.subject)
        path = Path(step.csr)
        if path.exists() or path.is_symlink():
            csr = read_csr(step.csr)
            problems = []
            if not csr.is_signature_valid:
                problems.append("its signature does not verify")
            if spki_sha256(csr.public_key()) != spki_sha256(public):
                problems.append(f"it is not for key {step.key_label!r}")
            if csr.subject != subject:
                problems.append(f"its subject is {csr.subject.rfc4514_string()}")
            if problems:
                raise CeremonyError(f"refusing to overwrite {path}: it holds another CSR "
                                    f"({'; '.join(problems)})")
            self.out(f"step {step.name}: {path.name} exists and fits, nothing to do")
        else:
            self.out(f"signing {path.name} through the HSM")
            key = self.session.private_key(step.key_label, step.hash)
            csr = (x509.CertificateSigningRequestBuilder().subject_name(subject)
                   .sign(key, HASHES[step.hash]()))
            if not csr.is_signature_valid:
                raise CeremonyError("the token's signature on the CSR does not verify")
            write_new_file(path, csr.public_bytes(serialization.Encoding.PEM), self.file_mode)
            result.made = True
        result.outputs[step.csr] = {"sha256": hashlib.sha256(
            csr.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "spki_sha256": spki_sha256(public)}

    def _sign(self, step: SignStep, result: StepResult) -> None:
        issuer = read_certificate(step.issuer_certificate)
        result.inputs[step.issuer_certificate] = file_sha256(step.issuer_certificate)
        issuer_public = self.token_key(step.issuer_key_label, "issuer key")
        if spki_sha256(issuer_public) != spki_sha256(issuer.public_key()):
            raise CeremonyError(f"issuer key {step.issuer_key_label!r} is not the key of "
                                f"{step.issuer_certificate}")
        if step.csr is not None:
            result.inputs[step.csr] = file_sha256(step.csr)
            csr = read_csr(step.csr)
            if not csr.is_signature_valid:
                raise CeremonyError(f"the signature of {step.csr} does not verify")
            subject, public = csr.subject, csr.public_key()
        else:
            assert step.subject_key_label is not None and step.subject is not None
            subject, public = subject_name(step.subject), self.token_key(step.subject_key_label)
        path = Path(step.certificate)
        cert = self._existing_certificate(step.name, path, subject, public, issuer)
        if cert is None:
            self.out(f"issuing {path.name} through the HSM")
            key = self.session.private_key(step.issuer_key_label, step.hash)
            cert = ca_certificate(subject, public, issuer, key,
                                  timedelta(days=step.validity_days), step.path_length,
                                  HASHES[step.hash](), crl_url=step.crl_url,
                                  ocsp_url=step.ocsp_url, policy_oids=step.policy_oids)
            _check_issued(cert, issuer)
            write_new_file(path, cert.public_bytes(serialization.Encoding.PEM), self.file_mode)
            result.made = True
        result.outputs[step.certificate] = certificate_fingerprints(cert)

    # -- import ------------------------------------------------------------------------

    def _import(self, step: ImportStep, result: StepResult) -> None:
        cert = read_certificate(step.certificate)
        result.inputs[step.certificate] = file_sha256(step.certificate)
        result.inputs[step.key_file] = file_sha256(step.key_file)
        wanted = spki_sha256(cert.public_key())
        if self.session.has_key(step.key_label):
            public = self.token_key(step.key_label)
            if spki_sha256(public) != wanted:
                raise CeremonyError(f"the token already holds a different key labelled "
                                    f"{step.key_label!r} (SPKI {spki_sha256(public)}, the "
                                    f"certificate's is {wanted}); refusing to replace it")
            self.out(f"step {step.name}: the key of {Path(step.certificate).name} is already "
                     f"on the token as {step.key_label!r}, nothing to do")
        else:
            private = self._load_private_key(step)
            if spki_sha256(private.public_key()) != wanted:
                raise CeremonyError(f"the key in {step.key_file} does not match certificate "
                                    f"{step.certificate} (key SPKI "
                                    f"{spki_sha256(private.public_key())}, certificate SPKI "
                                    f"{wanted}); nothing imported")
            self.out(f"importing the key of {Path(step.certificate).name} as "
                     f"{step.key_label} (sensitive, not extractable, sign only)")
            key_type, public_attributes, private_material = pkcs11_key_attributes(private)
            del private
            self.session.import_key_pair(step.key_label, key_type, public_attributes,
                                         private_material)
            result.made = True
            public = self.token_key(step.key_label)
            _check_token_signs_for(self.session, step.key_label, cert)
        result.outputs[f"key {step.key_label}"] = {"spki_sha256": spki_sha256(public)}
        result.outputs[step.certificate] = certificate_fingerprints(cert)
        if step.public_key:
            self._public_key_file(step.public_key, public, result)

    def _load_private_key(self, step: ImportStep) -> Any:
        try:
            data = Path(step.key_file).read_bytes()
        except OSError as exc:
            raise CeremonyError(f"cannot read key file {step.key_file}: {exc.strerror}") from None
        passphrase = None
        if b"ENCRYPTED" in data:  # PKCS#8 "ENCRYPTED PRIVATE KEY" or a traditional Proc-Type
            if step.passphrase_file:
                text = read_private_file(step.passphrase_file, "passphrase_file")
                passphrase = text.splitlines()[0] if text else ""  # its first line, like openssl
            else:
                passphrase = self.prompt(f"passphrase of {step.key_file}: ")
        try:
            key = serialization.load_pem_private_key(
                data, passphrase.encode() if passphrase is not None else None)
        except TypeError:
            raise CeremonyError(f"{step.key_file} is passphrase-protected: give "
                                "passphrase_file or run at a terminal") from None
        except ValueError:
            # cryptography says "Bad decrypt. Incorrect password?" or "Could not deserialize"
            raise CeremonyError(f"cannot load the private key in {step.key_file}: wrong "
                                "passphrase, or not a PEM private key") from None
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise CeremonyError(f"{step.key_file}: only RSA and EC keys can be imported, "
                                f"not {type(key).__name__}")
        return key


def _prompt_passphrase(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise CeremonyError("the key is passphrase-protected: give passphrase_file, or run "
                            "at a terminal to be asked")
    return getpass.getpass(prompt)


def key_type_of(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-{public.key_size}"
    return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(public.curve.name,
                                                                        public.curve.name)


def pkcs11_key_attributes(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                          ) -> tuple[int, list[tuple[int, Any]], list[tuple[int, Any]]]:
    """(CKK_*, public attributes, private material) of a key pair to store on a token."""
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 2048:
            raise CeremonyError(f"an RSA CA key needs at least 2048 bits, not {private.key_size}")
        n = private.private_numbers()
        pub = n.public_numbers

        def big(value: int) -> tuple[int, ...]:
            return tuple(value.to_bytes((value.bit_length() + 7) // 8, "big"))
        public = [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA), (PyKCS11.CKA_MODULUS, big(pub.n)),
                  (PyKCS11.CKA_PUBLIC_EXPONENT, big(pub.e))]
        material = [(PyKCS11.CKA_MODULUS, big(pub.n)), (PyKCS11.CKA_PUBLIC_EXPONENT, big(pub.e)),
                    (PyKCS11.CKA_PRIVATE_EXPONENT, big(n.d)), (PyKCS11.CKA_PRIME_1, big(n.p)),
                    (PyKCS11.CKA_PRIME_2, big(n.q)), (PyKCS11.CKA_EXPONENT_1, big(n.dmp1)),
                    (PyKCS11.CKA_EXPONENT_2, big(n.dmq1)), (PyKCS11.CKA_COEFFICIENT, big(n.iqmp))]
        return PyKCS11.CKK_RSA, public, material
    curve = private.curve.name
    if curve not in EC_PARAMS:
        raise CeremonyError(f"unsupported curve {curve}; supported: {', '.join(EC_PARAMS)}")
    params = tuple(EC_PARAMS[curve])
    point = private.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    size = (private.curve.key_size + 7) // 8
    scalar = private.private_numbers().private_value.to_bytes(size, "big")
    public = [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC), (PyKCS11.CKA_EC_PARAMS, params),
              (PyKCS11.CKA_EC_POINT, tuple(_der_octet_string(point)))]
    material = [(PyKCS11.CKA_EC_PARAMS, params), (PyKCS11.CKA_VALUE, tuple(scalar))]
    return PyKCS11.CKK_EC, public, material


def _der_octet_string(value: bytes) -> bytes:
    length = len(value)
    encoded = bytes([length]) if length < 0x80 else bytes([0x81, length])
    return b"\x04" + encoded + value


def _check_token_signs_for(session: HsmSession, label: str, cert: x509.Certificate) -> None:
    """A test signature by the stored key that verifies with the certificate's key."""
    data = secrets.token_bytes(32)
    key = session.private_key(label)
    public = cert.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey) and isinstance(key, rsa.RSAPrivateKey):
            public.verify(key.sign(data, padding.PKCS1v15(), hashes.SHA256()), data,
                          padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey) and isinstance(key, ec.EllipticCurvePrivateKey):
            public.verify(key.sign(data, ec.ECDSA(hashes.SHA256())), data, ec.ECDSA(hashes.SHA256()))
        else:
            raise InvalidSignature("the stored key and the certificate's key are of different types")
    except InvalidSignature:
        raise CeremonyError(f"a test signature of the stored key {label!r} does not verify "
                            "with the certificate") from None


# -- certificates --------------------------------------------------------------------------

def ca_certificate(subject: x509.Name, public_key: Any, issuer_cert: x509.Certificate | None,
                   signing_key: Any, validity: timedelta, path_length: int | None,
                   algorithm: CaHash | None = None, crl_url: str | None = None,
                   ocsp_url: str | None = None, policy_oids: Sequence[str] = ()) -> x509.Certificate:
    """A CA certificate (self-signed when issuer_cert is None), signed by signing_key."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    issuer_name = issuer_cert.subject if issuer_cert else subject
    issuer_public = issuer_cert.public_key() if issuer_cert else public_key
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer_name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + validity)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               # from_issuer_public_key(issuer_public), by way of the same key identifier
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                   x509.SubjectKeyIdentifier.from_public_key(issuer_public)), critical=False))
    if crl_url:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
    if ocsp_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    if policy_oids:
        builder = builder.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(x509.ObjectIdentifier(o), None) for o in policy_oids]),
            critical=False)
    return builder.sign(signing_key, algorithm or hashes.SHA256())


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CeremonyError(f"the token's signature on the new certificate does not verify "
                            f"({exc or type(exc).__name__}); nothing written") from None


def _certificate_problems(cert: x509.Certificate, subject: x509.Name, public: Any,
                          issuer: x509.Certificate) -> list[str]:
    """Why an existing certificate is not the one this step would make (empty: it is)."""
    problems = []
    if cert.subject != subject:
        problems.append(f"subject {cert.subject.rfc4514_string()}")
    if spki_sha256(cert.public_key()) != spki_sha256(public):
        problems.append("another public key")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"not issued by {issuer.subject.rfc4514_string()}")
    return problems


# -- the whole command -------------------------------------------------------------------

def issuers_snippet(session: HsmSession, issuers: list[IssuerConfig]) -> str:
    """The `issuers:` configuration for the signer, for the issuers whose certificate
    exists; each certificate is checked against its key on the token."""
    entries = []
    for issuer in issuers:
        if not os.path.exists(issuer.certificate):
            continue
        cert = read_certificate(issuer.certificate)
        if not session.has_key(issuer.key_label):
            raise CeremonyError(f"issuers: no key {issuer.key_label!r} on the token for "
                                f"{issuer.certificate}")
        if spki_sha256(session.public_key(issuer.key_label)) != spki_sha256(cert.public_key()):
            raise CeremonyError(f"issuers: key {issuer.key_label!r} is not the key of "
                                f"{issuer.certificate}")
        entries.append({"id": issuer.id, "certificate": issuer.certificate,
                        "key_label": issuer.key_label})
    return yaml.safe_dump({"issuers": entries}, sort_keys=False)


def open_session(hsm: HsmConfig) -> HsmSession:
    if hsm.softhsm_conf:
        # The PKCS#11 library reads SOFTHSM2_CONF once, when this process first loads it.
        os.environ["SOFTHSM2_CONF"] = hsm.softhsm_conf
    session = HsmSession(hsm.module, hsm.token_label, read_pin(hsm))
    session.open()
    return session


def run_ceremony(path: str | os.PathLike[str], step_names: list[str],
                 out: Callable[[str], None] = print,
                 passphrase_prompt: Callable[[str], str] | None = None) -> list[StepResult]:
    """`signer ceremony`: load the file, run the named steps in order (all of them for
    ["all"]), then print the issuers snippet. Stops at the first refused step."""
    ceremony = load_ceremony(path)
    names = list(ceremony.steps) if step_names == ["all"] else step_names
    unknown = [n for n in names if n not in ceremony.steps]
    if unknown:
        raise CeremonyError(f"no step named {unknown[0]!r} in {ceremony.source} "
                            f"(steps: {', '.join(ceremony.steps)})")
    session = open_session(ceremony.hsm)
    try:
        runner = CeremonyRunner(session, ceremony.log, out=out, ceremony_digest=ceremony.digest,
                                passphrase_prompt=passphrase_prompt)
        results = [runner.run(ceremony.steps[name]) for name in names]
        if ceremony.issuers:
            out("issuers configuration for signer.yaml:")
            out(issuers_snippet(session, ceremony.issuers).rstrip("\n"))
    finally:
        session.close()
    return results


def command(args: Any) -> int:
    """`signer ceremony`: 0 when every step ran or found its work done, 1 when a step was
    refused or the HSM failed, 2 when the ceremony file (or the PIN file) is wrong; the
    message goes to standard error, and nothing was overwritten."""
    from core.runtime.process_hardening import harden_process

    harden_process()  # no core dump of a process that holds the PIN or an imported key
    try:
        run_ceremony(args.config, args.steps)
    except ConfigError as exc:
        print(f"signer ceremony: {exc}", file=sys.stderr)
        return 2
    except (CeremonyError, HsmError) as exc:
        print(f"signer ceremony: {exc}", file=sys.stderr)
        return 1
    return 0
