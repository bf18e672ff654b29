"""Signing through a PKCS#11 token: the only place the signer touches key material.

One :class:`HsmSession` owns one PyKCS11 session on one token in this process. RSA is
hashed and signed on the token (``CKM_SHAxxx_RSA_PKCS[_PSS]``); ECDSA is hashed here and
signed with plain ``CKM_ECDSA``, which every token offers. :mod:`core.hsm.keys` holds the
mechanism table, key templates and the cryptography key adapters.

Measured pitfalls respected here (shared facts, "SoftHSM2 and PyKCS11"):
- a session is not thread-safe (``sign`` is three C calls): every call holds a lock;
- login is per process and token: ``CKR_USER_ALREADY_LOGGED_IN`` is success (so a second
  HsmSession in a logged-in process is not PIN-checked), and after a logout elsewhere
  key handles fail or keys look missing until we log in again;
- unloading the library while a ``Session`` exists segfaults: it is never unloaded.

The PIN is kept for re-login after a recovery; it is never put in a message or a repr.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any, Callable, TypeVar

import PyKCS11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from PyKCS11 import PyKCS11Error

from core.wire.protocol import SignerError
from core.hsm.keys import (ECDSA, MECHANISMS, RSA_PKCS1, RSA_PSS, HsmEcPrivateKey,
                           HsmRsaPrivateKey, MechanismSpec, ec_public_attributes,
                           ec_public_key, ecdsa_der_signature, key_pair_templates,
                           mechanism_name, rsa_public_attributes, rsa_public_key)

T = TypeVar("T")
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class HsmError(SignerError):
    """A failure of the HSM; `code` is the wire error code (core.wire.errors.ErrorCode). A
    SignerError like every error a client can be answered; str() stays the message alone
    (health and the logs show it)."""

    code = "hsm_unavailable"

    def __init__(self, message: str = "") -> None:
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return self.message


class HsmUnavailable(HsmError):
    code = "hsm_unavailable"


class HsmLoginFailed(HsmError):
    code = "hsm_login_failed"


class HsmKeyNotFound(HsmError):
    code = "hsm_key_not_found"


class HsmTokenNotFound(HsmError):
    code = "hsm_token_not_found"


class HsmMechanismUnsupported(HsmError):
    # The mechanism name comes from the request (or the configuration), so it is reported
    # as a bad request rather than as a failing HSM; no extra wire code is needed.
    code = "bad_request"


def _parse_mechanism(name: str) -> MechanismSpec:
    if name not in MECHANISMS:
        raise HsmMechanismUnsupported(f"unknown signing mechanism {name!r}; "
                                      f"known: {', '.join(MECHANISMS)}")
    return MECHANISMS[name]


def mechanism_for(key_info: dict[str, Any], hash_name: str, pss: bool = False) -> str:
    """The mechanism name for a key (as returned by key_info) and a hash such as "sha256"."""
    if key_info["type"] == "ec":
        if pss:
            raise HsmMechanismUnsupported("PSS padding applies to RSA keys only")
        family = ECDSA
    elif key_info["type"] == "rsa":
        family = RSA_PSS if pss else RSA_PKCS1
    else:
        raise HsmMechanismUnsupported(f"unknown key type {key_info['type']!r}")
    return _parse_mechanism(mechanism_name(hash_name, family)).name


def verify_signature(public_key: PublicKey, mechanism: str, signature: bytes,
                     data: bytes) -> None:
    """Check a signature made with `mechanism`; raise cryptography's InvalidSignature."""
    try:
        _parse_mechanism(mechanism).verify(public_key, signature, data)
    except TypeError as exc:  # an RSA mechanism with an EC key, or the reverse
        raise HsmMechanismUnsupported(str(exc)) from None


# Errors after which a fresh session (and login, and key lookup) may succeed. Calls are
# serialised, so CKR_OPERATION_ACTIVE can only be an operation that a failure left open.
_SESSION_ERRORS = frozenset({
    PyKCS11.CKR_SESSION_HANDLE_INVALID, PyKCS11.CKR_SESSION_CLOSED,
    PyKCS11.CKR_USER_NOT_LOGGED_IN, PyKCS11.CKR_OBJECT_HANDLE_INVALID,
    PyKCS11.CKR_KEY_HANDLE_INVALID, PyKCS11.CKR_OPERATION_ACTIVE,
})
# Errors of the library or device as a whole: re-initialise the library first. Measured:
# processes that start SoftHSM at the same instant see CKR_GENERAL_ERROR until they do.
_LIBRARY_ERRORS = frozenset({
    PyKCS11.CKR_DEVICE_REMOVED, PyKCS11.CKR_TOKEN_NOT_PRESENT,
    PyKCS11.CKR_CRYPTOKI_NOT_INITIALIZED, PyKCS11.CKR_GENERAL_ERROR,
})
_RECOVERABLE = _SESSION_ERRORS | _LIBRARY_ERRORS
_PIN_REJECTED = frozenset({
    PyKCS11.CKR_PIN_INCORRECT, PyKCS11.CKR_PIN_INVALID, PyKCS11.CKR_PIN_LEN_RANGE,
    PyKCS11.CKR_PIN_LOCKED, PyKCS11.CKR_PIN_EXPIRED,
})
_MECHANISM_REJECTED = frozenset({
    PyKCS11.CKR_MECHANISM_INVALID, PyKCS11.CKR_MECHANISM_PARAM_INVALID,
    PyKCS11.CKR_KEY_TYPE_INCONSISTENT, PyKCS11.CKR_KEY_FUNCTION_NOT_PERMITTED,
})


class _Module:
    """A loaded PKCS#11 module, shared by every HsmSession of the process.

    Never unloaded: PyKCS11 unloads the library when its last PyKCS11Lib is collected,
    and a Session used after that segfaults. `generation` counts re-initialisations:
    after C_Finalize + C_Initialize the token may hand out the same session and object
    handle numbers again, so a handle from an older generation must never be used.
    """

    _loaded: dict[str, _Module] = {}
    _lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.lib = PyKCS11.PyKCS11Lib().load(path)
        self.generation = 0

    @classmethod
    def get(cls, path: str) -> _Module:
        with cls._lock:
            if path not in cls._loaded:
                try:
                    cls._loaded[path] = cls(path)
                except PyKCS11Error as exc:
                    raise HsmUnavailable(f"cannot load PKCS#11 module {path}: "
                                         f"{_ckr(exc)}") from None
            return cls._loaded[path]

    def reinitialise(self) -> None:
        """C_Finalize + C_Initialize: ends every session of this process on the module."""
        with self._lock:
            self.lib.lib.C_Finalize()  # CKR_CRYPTOKI_NOT_INITIALIZED is fine here
            self.generation += 1
            rv = self.lib.lib.C_Initialize()
            if rv not in (PyKCS11.CKR_OK, PyKCS11.CKR_CRYPTOKI_ALREADY_INITIALIZED):
                raise PyKCS11Error(rv)


def _ckr(exc: PyKCS11Error) -> str:
    name: str = PyKCS11.CKR.get(exc.value, f"0x{exc.value:08X}")  # PyKCS11 has no type hints
    return name


def _close_quietly(session: PyKCS11.Session) -> None:
    try:
        session.closeSession()
    except PyKCS11Error:
        pass  # already gone: closing is all we wanted


def _translate(exc: PyKCS11Error, what: str) -> HsmError:
    """The typed error for a PKCS#11 failure that a recovery cannot fix."""
    if exc.value in _MECHANISM_REJECTED:
        return HsmMechanismUnsupported(f"{what}: the token refused: {_ckr(exc)}")
    return HsmUnavailable(f"{what} failed: {_ckr(exc)}")


class HsmSession:
    """One logged-in PKCS#11 session on the token `token_label`; not for sharing across
    processes, and calls from several threads are serialised."""

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin
        self._module: _Module | None = None
        self._generation = -1  # of the module when the session was opened
        self._slot: int | None = None
        self._session: PyKCS11.Session | None = None
        self._handles: dict[tuple[int, str], PyKCS11.CK_OBJECT_HANDLE] = {}
        self._key_types: dict[str, int] = {}  # CKK_* of each private key used
        self._public_keys: dict[str, PublicKey] = {}
        self._lock = threading.RLock()
        self.signatures = 0
        self.recoveries = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:  # no PIN
        return (f"HsmSession(module_path={self.module_path!r}, "
                f"token_label={self.token_label!r}, open={self.is_open})")

    def __enter__(self) -> HsmSession:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- session life cycle ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def open(self) -> None:
        """Load the module, open a RW session on the token and log in (one retry)."""
        self._call("open", lambda: None)

    def close(self) -> None:
        """Close the session; the login stays with the process, the library stays loaded."""
        with self._lock:
            self._drop_stale_session()
            session, self._session = self._session, None
            self._forget_handles()
            if session is not None:
                _close_quietly(session)

    def _ensure_open(self) -> None:
        self._drop_stale_session()
        if self._session is not None:
            return
        if self._module is None:
            self._module = _Module.get(self.module_path)
        self._generation = self._module.generation
        self._slot = self._find_slot()
        session = self._lib.openSession(
            self._slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        try:
            self._login(session)
        except BaseException:
            _close_quietly(session)  # never keep a session that is not logged in
            raise
        self._session = session

    def _drop_stale_session(self) -> None:
        """Forget, without closing, a session from before a re-initialisation of the
        module by any HsmSession: its handle numbers may now belong to someone else."""
        if self._module is not None and self._generation != self._module.generation:
            self._session = None
            self._forget_handles()

    @property
    def _lib(self) -> PyKCS11.PyKCS11Lib:
        assert self._module is not None
        return self._module.lib

    def _find_slot(self) -> int:
        slots: list[int] = self._lib.getSlotList(tokenPresent=True)
        for slot in slots:
            if self._lib.getTokenInfo(slot).label.strip() == self.token_label:
                return slot
        raise HsmTokenNotFound(f"no token labelled {self.token_label!r} "
                               f"in {self.module_path}")

    def _login(self, session: PyKCS11.Session) -> None:
        try:
            session.login(self._pin)
        except PyKCS11Error as exc:
            # Login is per process and token: another session may have done it already.
            if exc.value == PyKCS11.CKR_USER_ALREADY_LOGGED_IN:
                return
            if exc.value in _PIN_REJECTED:
                raise HsmLoginFailed(f"token {self.token_label!r} rejected the PIN "
                                     f"({_ckr(exc)})") from None
            raise

    def _forget_handles(self) -> None:
        self._handles.clear()
        self._key_types.clear()
        self._public_keys.clear()

    # -- recovery ------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run operation on an open session; after a recoverable failure, start over on a
        new session and retry once. A second failure is HsmUnavailable (or typed)."""
        with self._lock:
            try:
                self._ensure_open()
                return operation()
            except PyKCS11Error as exc:
                self.last_error = f"{what}: {_ckr(exc)}"
                if exc.value not in _RECOVERABLE:
                    raise _translate(exc, what) from None
                reinitialise = exc.value in _LIBRARY_ERRORS
            except HsmTokenNotFound as exc:
                # SoftHSM scans its token directory only at C_Initialize, and a token seen
                # during a concurrent start-up may be missing: re-initialise and look again.
                self.last_error = f"{what}: {exc}"
                reinitialise = True
            except HsmError as exc:
                self.last_error = f"{what}: {exc}"
                raise
            self.recoveries += 1
            try:
                self._restart(reinitialise)
                return operation()
            except PyKCS11Error as exc:
                self.last_error = f"{what} after recovery: {_ckr(exc)}"
                raise HsmUnavailable(f"{what} failed after one recovery: "
                                     f"{_ckr(exc)}") from None
            except HsmError as exc:
                self.last_error = f"{what} after recovery: {exc}"
                raise

    def _restart(self, reinitialise_library: bool) -> None:
        self.close()
        if reinitialise_library and self._module is not None:
            self._module.reinitialise()
            self._ensure_open()
            return
        try:
            self._ensure_open()
        except (PyKCS11Error, HsmTokenNotFound) as exc:
            # A session error can hide a token that is gone. Measured: when the token's
            # files vanish or become unreadable, the key handle fails with
            # CKR_OBJECT_HANDLE_INVALID, then C_GetTokenInfo on the old slot fails with
            # CKR_GENERAL_ERROR; only a re-initialisation rescans the token directory
            # (and then reports the token missing, or finds it again).
            if self._module is None or (isinstance(exc, PyKCS11Error)
                                        and exc.value not in _LIBRARY_ERRORS):
                raise
            self.close()
            self._module.reinitialise()
            self._ensure_open()

    # -- keys ----------------------------------------------------------------------------

    def _handle(self, object_class: int, label: str) -> PyKCS11.CK_OBJECT_HANDLE:
        """The cached handle of the one object of this class and label on the token."""
        key = (object_class, label)
        if key not in self._handles:
            found = self._find([(PyKCS11.CKA_CLASS, object_class), (PyKCS11.CKA_LABEL, label)])
            kind = "private" if object_class == PyKCS11.CKO_PRIVATE_KEY else "public"
            if not found:
                raise HsmKeyNotFound(f"no {kind} key labelled {label!r} "
                                     f"on token {self.token_label!r}")
            if len(found) > 1:
                # Signing with the wrong one of two keys would be a silent CA disaster.
                raise HsmError(f"{len(found)} {kind} keys labelled {label!r} "
                               f"on token {self.token_label!r}")
            self._handles[key] = found[0]
        return self._handles[key]

    def has_key(self, label: str) -> bool:
        """True if the token holds a private key with this label."""
        return self._call("has_key", lambda: bool(self._find([
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, label)])))

    def _find(self, template: list[tuple[int, Any]]) -> list[PyKCS11.CK_OBJECT_HANDLE]:
        """findObjects that tells "not logged in" and "token gone" from "not there":
        private objects are invisible after a logout elsewhere, which a fresh login fixes."""
        assert self._session is not None
        found: list[Any] = self._session.findObjects(template)
        if not found:
            if not self._session_logged_in():
                raise PyKCS11Error(PyKCS11.CKR_USER_NOT_LOGGED_IN)
            # Measured: when the token's files vanish or become unreadable, findObjects
            # still answers, with nothing, and the session still looks logged in;
            # C_GetTokenInfo fails (CKR_GENERAL_ERROR), which the recovery turns into a
            # re-initialisation and then hsm_token_not_found.
            assert self._slot is not None
            self._lib.getTokenInfo(self._slot)
        return found

    def _session_logged_in(self) -> bool:
        assert self._session is not None
        return self._session.getSessionInfo().state in (
            PyKCS11.CKS_RO_USER_FUNCTIONS, PyKCS11.CKS_RW_USER_FUNCTIONS)

    def public_key(self, key_label: str) -> PublicKey:
        """The public half of the key pair `key_label`, read from its public key object."""
        def read() -> PublicKey:
            if key_label not in self._public_keys:
                self._public_keys[key_label] = self._read_public_key(key_label)
            return self._public_keys[key_label]
        return self._call("public_key", read)

    def _read_public_key(self, label: str) -> PublicKey:
        assert self._session is not None
        handle = self._handle(PyKCS11.CKO_PUBLIC_KEY, label)
        key_type = self._session.getAttributeValue(handle, [PyKCS11.CKA_KEY_TYPE])[0]
        attributes = {PyKCS11.CKK_RSA: [PyKCS11.CKA_MODULUS, PyKCS11.CKA_PUBLIC_EXPONENT],
                      PyKCS11.CKK_EC: [PyKCS11.CKA_EC_PARAMS, PyKCS11.CKA_EC_POINT]}
        if key_type not in attributes:
            raise HsmError(f"key {label!r} has unsupported key type {key_type}")
        first, second = (bytes(value) for value in self._session.getAttributeValue(
            handle, attributes[key_type], allAsBinary=True))
        if key_type == PyKCS11.CKK_RSA:
            return rsa_public_key(modulus=first, exponent=second)
        try:
            return ec_public_key(ec_params=first, ec_point=second)
        except ValueError as exc:
            raise HsmError(f"key {label!r}: {exc}") from None

    def key_info(self, key_label: str) -> dict[str, Any]:
        """{"type": "rsa"|"ec", "bits": int, "curve": "secp256r1"|"secp384r1"|None}."""
        public = self.public_key(key_label)
        if isinstance(public, rsa.RSAPublicKey):
            return {"type": "rsa", "bits": public.key_size, "curve": None}
        return {"type": "ec", "bits": public.curve.key_size, "curve": public.curve.name}

    def private_key(self, key_label: str, hash_name: str = "sha256",
                    ) -> HsmRsaPrivateKey | HsmEcPrivateKey:
        """A cryptography private key whose sign() signs here; hash_name is the default
        hash the caller means to use, checked now so a bad configuration fails early."""
        public = self.public_key(key_label)
        mechanism_for(self.key_info(key_label), hash_name)
        if isinstance(public, rsa.RSAPublicKey):
            return HsmRsaPrivateKey(self, key_label, public, hash_name)
        return HsmEcPrivateKey(self, key_label, public, hash_name)

    # -- signing -------------------------------------------------------------------------

    def sign(self, key_label: str, mechanism: str, data: bytes) -> bytes:
        """Sign the whole to-be-signed `data` (not a digest) with the token key."""
        spec = _parse_mechanism(mechanism)

        def sign_once() -> bytes:
            assert self._session is not None
            handle = self._handle(PyKCS11.CKO_PRIVATE_KEY, key_label)
            self._check_key_type(key_label, handle, spec)
            if spec.family != ECDSA:
                return bytes(self._session.sign(handle, data, spec.pkcs11()))
            digest = hashlib.new(spec.hash.name, data).digest()
            return ecdsa_der_signature(bytes(self._session.sign(handle, digest,
                                                                spec.pkcs11())))

        signature = self._call(f"sign with {key_label!r}", sign_once)
        if not signature:  # a token bug, not a signature; never hand it to a builder
            raise HsmUnavailable(f"token returned an empty signature with {key_label!r}")
        self.signatures += 1
        return signature

    def _check_key_type(self, label: str, handle: PyKCS11.CK_OBJECT_HANDLE,
                        spec: MechanismSpec) -> None:
        """Measured: SoftHSM accepts CKM_ECDSA on an RSA key, returns an empty signature
        and leaves the operation active, so the pairing is checked here first."""
        assert self._session is not None
        if label not in self._key_types:
            self._key_types[label] = self._session.getAttributeValue(
                handle, [PyKCS11.CKA_KEY_TYPE])[0]
        wanted = PyKCS11.CKK_EC if spec.family == ECDSA else PyKCS11.CKK_RSA
        if self._key_types[label] != wanted:
            raise HsmMechanismUnsupported(f"{spec.name} does not apply to key {label!r} "
                                          f"({PyKCS11.CKK.get(self._key_types[label])})")

    def health(self, key_label: str, mechanism: str) -> dict[str, Any]:
        """Make and verify a real test signature; raise the typed error if it fails."""
        data = os.urandom(32)
        started = time.perf_counter()
        signature = self.sign(key_label, mechanism, data)
        elapsed_ms = (time.perf_counter() - started) * 1000
        try:
            verify_signature(self.public_key(key_label), mechanism, signature, data)
        except InvalidSignature:
            self.last_error = f"health: test signature with {key_label!r} did not verify"
            raise HsmUnavailable(self.last_error) from None
        return {"token": self.token_label, "logged_in": self.logged_in(),
                "test_signature_ms": elapsed_ms, "mechanism": mechanism, "ok": True}

    def logged_in(self) -> bool:
        """Whether this process is logged in to the token (per PKCS#11, not per session)."""
        return self._call("session info", self._session_logged_in)

    # -- key generation ------------------------------------------------------------------

    def generate_rsa_key(self, label: str, bits: int) -> rsa.RSAPublicKey:
        """Generate a non-extractable RSA key pair on the token; return its public key."""
        key = self._generate(label, PyKCS11.CKK_RSA, rsa_public_attributes(bits),
                             PyKCS11.MechanismRSAGENERATEKEYPAIR)
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    def generate_ec_key(self, label: str, curve: str) -> ec.EllipticCurvePublicKey:
        """Generate a non-extractable EC key pair ("secp256r1"/"secp384r1") on the token."""
        key = self._generate(label, PyKCS11.CKK_EC, ec_public_attributes(curve),
                             PyKCS11.MechanismECGENERATEKEYPAIR)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def _generate(self, label: str, key_type: int, public_attributes: list[tuple[int, Any]],
                  mechanism: PyKCS11.Mechanism) -> PublicKey:
        public_template, private_template = key_pair_templates(
            label, hashlib.sha1(label.encode()).digest(), key_type, public_attributes)

        def generate() -> None:
            assert self._session is not None
            # Checked inside the retried operation, so a retry after a half-finished
            # attempt refuses instead of creating a second key with the same label.
            self._refuse_existing_label(label)
            self._session.generateKeyPair(public_template, private_template, mechanism)

        self._call(f"generate {label!r}", generate)
        return self.public_key(label)

    def import_key_pair(self, label: str, key_type: int,
                        public_attributes: list[tuple[int, Any]],
                        private_material: list[tuple[int, Any]]) -> PublicKey:
        """Store an existing key pair on the token with the same templates as a generated
        one (private half sensitive, not extractable, sign only); `public_attributes` are
        CKA_KEY_TYPE and the public values, `private_material` the private values."""
        public_template, private_template = key_pair_templates(
            label, hashlib.sha1(label.encode()).digest(), key_type, public_attributes)
        private_template = private_template + private_material

        def store() -> None:
            assert self._session is not None
            self._refuse_existing_label(label)
            self._session.createObject(public_template)
            self._session.createObject(private_template)

        self._call(f"import {label!r}", store)
        return self.public_key(label)

    def _refuse_existing_label(self, label: str) -> None:
        if self._find([(PyKCS11.CKA_LABEL, label)]):
            raise HsmError(f"a key labelled {label!r} already exists "
                           f"on token {self.token_label!r}")

    # The attributes that make a CA key "sign only, never leaves the token".
    KEY_FLAGS = {"sensitive": PyKCS11.CKA_SENSITIVE, "extractable": PyKCS11.CKA_EXTRACTABLE,
                 "sign": PyKCS11.CKA_SIGN, "decrypt": PyKCS11.CKA_DECRYPT,
                 "unwrap": PyKCS11.CKA_UNWRAP, "derive": PyKCS11.CKA_DERIVE,
                 "always_sensitive": PyKCS11.CKA_ALWAYS_SENSITIVE,
                 "never_extractable": PyKCS11.CKA_NEVER_EXTRACTABLE,
                 "local": PyKCS11.CKA_LOCAL}

    def key_flags(self, label: str) -> dict[str, bool]:
        """The private key's KEY_FLAGS as read from the token (local: generated there)."""
        def read() -> dict[str, bool]:
            assert self._session is not None
            handle = self._handle(PyKCS11.CKO_PRIVATE_KEY, label)
            values = self._session.getAttributeValue(handle, list(self.KEY_FLAGS.values()))
            return {name: bool(value) for name, value in zip(self.KEY_FLAGS, values)}
        return self._call(f"read attributes of {label!r}", read)
