"""Certificate profiles: what a certificate request may ask for and what the issued
certificate contains.

Layout: one YAML file per profile in a folder (``config/profiles/<name>.yaml``). The file
name without ``.yaml`` must equal the profile's ``name`` field, so an operator looking for
profile ``server`` finds exactly one file to read. Files whose name starts with ``.`` or
``_`` are ignored (editor backups, disabled profiles).

A profile file (every key below is known; any other key is an error)::

    name: server                      # equals the file name
    issuers:                          # every CA that may issue it, [a-z0-9_-]+ ids
      root:
        crl_distribution_point: http://crl.cacert.org/revoke.crl
        ocsp_url: http://ocsp.cacert.org
      class3:
        crl_distribution_point: http://crl.cacert.org/class3-revoke.crl
        ocsp_url: http://ocsp.cacert.org
    allowed_subject_attributes: [commonName]
    allowed_san_types: [dns]          # subset of dns, email, xmpp; may be empty
    max_validity_days: 730
    default_validity_days: 180
    max_sans: 100                     # optional; SANs per certificate (limit_exceeded above it)
    max_subject_attributes: 10        # optional; subject attributes per request
    allowed_keys:                     # at least one of rsa / ec
      rsa: {min_bits: 2048, max_bits: 8192}
      ec: [secp256r1, secp384r1]
    allowed_hashes: [sha256, sha384, sha512]
    extensions:
      basic_constraints: {ca: false}  # optional; always critical CA:FALSE, ca: true is refused
      key_usage: [digitalSignature, keyEncipherment, keyAgreement]   # always critical
      extended_key_usage: [serverAuth, clientAuth, 1.2.3.4]           # names or dotted OIDs
      extended_key_usage_critical: false
      certificate_policies:
        - {oid: 1.3.6.1.4.1.18506.4.4, cps: "http://www.cacert.org/cps.php"}
      ocsp_no_check: false            # id-pkix-ocsp-nocheck, for OCSP responder certificates

The old form, one issuer per file (``issuer: root`` with ``crl_distribution_point`` and
``ocsp_url`` under ``extensions``), is still read, as ``issuers`` with that one entry: in
CAcert every profile exists under each root, and one file per (profile, issuer) pair made
the copies drift apart. Mixing the two forms is an error that says what to move.

Subject and authority key identifiers are always added and not configurable. The key usage
list is what the profile permits; a certificate gets the subset its key can do
(keyEncipherment only for RSA, keyAgreement only for EC: RFC 4055 and RFC 8813), because the
old CAcert signer listed all three for every key.

Every error raises ProfileError naming the profile (its file name) and the field path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, overload
from urllib.parse import urlsplit

import yaml

# Subject attributes in the order they appear in an issued certificate's subject.
SUBJECT_ATTRIBUTE_NAMES = ("countryName", "stateOrProvinceName", "localityName",
                           "organizationName", "organizationalUnitName", "commonName",
                           "emailAddress")
SAN_TYPES = ("dns", "email", "xmpp")
HASH_NAMES = ("sha256", "sha384", "sha512")
EC_CURVE_NAMES = ("secp256r1", "secp384r1", "secp521r1")
# Below this the loader refuses a profile: nobody should be able to configure weak keys.
MIN_RSA_BITS = 2048
# What one request may ask for, unless the profile says otherwise: a certificate with
# thousands of names costs every other request its time (docs/SECURITY.md, request limits).
DEFAULT_MAX_SANS = 100
DEFAULT_MAX_SUBJECT_ATTRIBUTES = 10

KEY_USAGE_NAMES = ("digitalSignature", "nonRepudiation", "keyEncipherment",
                   "dataEncipherment", "keyAgreement", "encipherOnly", "decipherOnly")
# keyCertSign and cRLSign would need CA:TRUE, which an end-entity profile never has.
CA_ONLY_KEY_USAGES = ("keyCertSign", "cRLSign")

EXTENDED_KEY_USAGE_OIDS = {
    "serverAuth": "1.3.6.1.5.5.7.3.1",
    "clientAuth": "1.3.6.1.5.5.7.3.2",
    "codeSigning": "1.3.6.1.5.5.7.3.3",
    "emailProtection": "1.3.6.1.5.5.7.3.4",
    "timeStamping": "1.3.6.1.5.5.7.3.8",
    "OCSPSigning": "1.3.6.1.5.5.7.3.9",
    "msCodeInd": "1.3.6.1.4.1.311.2.1.21",
    "msCodeCom": "1.3.6.1.4.1.311.2.1.22",
    "msSGC": "1.3.6.1.4.1.311.10.3.3",
    "msEFS": "1.3.6.1.4.1.311.10.3.4",
    "nsSGC": "2.16.840.1.113730.4.1",
}

_ISSUER_ID = re.compile(r"[a-z0-9_-]+")
_DOTTED_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class ProfileError(ValueError):
    def __init__(self, profile: str, field: str, problem: str) -> None:
        super().__init__(f"profile {profile!r} field {field!r}: {problem}")
        self.profile = profile
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class KeyPolicy:
    rsa_min_bits: int | None          # None: RSA keys are not allowed
    rsa_max_bits: int | None
    ec_curves: tuple[str, ...]        # empty: EC keys are not allowed


@dataclass(frozen=True)
class PolicyInformation:
    oid: str
    cps_url: str | None


@dataclass(frozen=True)
class ExtensionsProfile:
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]          # dotted OIDs, in profile order
    extended_key_usage_critical: bool
    certificate_policies: tuple[PolicyInformation, ...]
    ocsp_no_check: bool


@dataclass(frozen=True)
class IssuerUrls:
    """What a profile's certificates say about one issuer: where its CRL and OCSP are."""
    crl_distribution_point: str | None
    ocsp_url: str | None


@dataclass(frozen=True)
class Profile:
    name: str
    issuers: dict[str, IssuerUrls]    # issuer id -> its URLs, in the order written
    allowed_subject_attributes: frozenset[str]
    allowed_san_types: frozenset[str]
    max_validity_days: int
    default_validity_days: int
    allowed_keys: KeyPolicy
    allowed_hashes: tuple[str, ...]
    extensions: ExtensionsProfile
    max_sans: int = DEFAULT_MAX_SANS
    max_subject_attributes: int = DEFAULT_MAX_SUBJECT_ATTRIBUTES

    def urls_for(self, issuer_id: str) -> IssuerUrls:
        """The URLs of an issuer the profile names; KeyError for any other (a caller must
        have refused that issuer before building anything)."""
        return self.issuers[issuer_id]


_REQUIRED = object()


class _Mapping:
    """A YAML mapping being read; knows the profile and its own path for error messages,
    and refuses keys nobody read (a typo must not silently drop an extension)."""

    def __init__(self, profile: str, path: str, value: Any) -> None:
        self.profile, self.path = profile, path
        if not isinstance(value, dict):
            self.fail_here(f"must be a mapping, got {type(value).__name__}")
        self._value = value
        self._read: set[Any] = set()

    def field_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail_here(self, problem: str) -> NoReturn:
        raise ProfileError(self.profile, self.path or "<file>", problem)

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ProfileError(self.profile, self.field_path(key), problem)

    def get(self, key: str, kind: type, default: Any = _REQUIRED) -> Any:
        self._read.add(key)
        if key not in self._value or self._value[key] is None:
            if default is _REQUIRED:
                self.fail(key, "is required")
            return default
        value = self._value[key]
        # bool is an int in Python; a YAML 'yes' must not pass as a number of days.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}")
        return value

    @overload
    def mapping(self, key: str) -> _Mapping: ...
    @overload
    def mapping(self, key: str, default: dict[str, Any]) -> _Mapping: ...
    @overload
    def mapping(self, key: str, default: None) -> _Mapping | None: ...

    def mapping(self, key: str, default: Any = _REQUIRED) -> _Mapping | None:
        value = self.get(key, dict, default)
        return None if value is None else _Mapping(self.profile, self.field_path(key), value)

    def names(self, key: str, allowed: tuple[str, ...] | None, what: str,
              default: Any = _REQUIRED) -> tuple[str, ...]:
        """A list of distinct strings, each checked against `allowed` (None: any)."""
        items = self.get(key, list, default)
        seen: list[str] = []
        for index, item in enumerate(items):
            item_path = f"{key}[{index}]"
            if not isinstance(item, str):
                self.fail(item_path, f"must be a string, got {type(item).__name__} {item!r}")
            if allowed is not None and item not in allowed:
                self.fail(item_path, f"unknown {what} {item!r}")
            if item in seen:
                self.fail(item_path, f"duplicate {what} {item!r}")
            seen.append(item)
        return tuple(seen)

    def url(self, key: str) -> str | None:
        value: str | None = self.get(key, str, None)
        if value is not None and not _is_http_url(value):
            self.fail(key, f"not an http(s) URL: {value!r}")
        return value

    def items(self) -> list[tuple[Any, Any]]:
        """Every entry, as written (a mapping whose keys are data, not field names)."""
        self._read.update(self._value)
        return list(self._value.items())

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self._value if k not in self._read)
        if unknown:
            self.fail(unknown[0], "unknown key")


_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "a mapping"}


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and value.isascii()
            and not any(c.isspace() for c in value))


def _read_key_policy(keys: _Mapping) -> KeyPolicy:
    rsa = keys.mapping("rsa", None)
    min_bits = max_bits = None
    if rsa is not None:
        min_bits = rsa.get("min_bits", int)
        max_bits = rsa.get("max_bits", int)
        if min_bits < MIN_RSA_BITS:
            rsa.fail("min_bits", f"must be at least {MIN_RSA_BITS}, got {min_bits}")
        if max_bits < min_bits:
            rsa.fail("max_bits", f"is below min_bits ({max_bits} < {min_bits})")
        rsa.finish()
    curves = keys.names("ec", EC_CURVE_NAMES, "curve", ())
    keys.finish()
    if rsa is None and not curves:
        keys.fail_here("allows no key type: give rsa, ec or both")
    return KeyPolicy(min_bits, max_bits, curves)


def _read_key_usage(extensions: _Mapping) -> tuple[str, ...]:
    usages = extensions.names("key_usage", KEY_USAGE_NAMES + CA_ONLY_KEY_USAGES, "key usage")
    for index, usage in enumerate(usages):
        if usage in CA_ONLY_KEY_USAGES:
            extensions.fail(f"key_usage[{index}]", f"{usage} needs CA:TRUE, which is refused")
    if not usages:
        extensions.fail("key_usage", "must name at least one key usage")
    if {"encipherOnly", "decipherOnly"} & set(usages) and "keyAgreement" not in usages:
        extensions.fail("key_usage", "encipherOnly/decipherOnly need keyAgreement")
    return usages


def _read_extended_key_usage(extensions: _Mapping) -> tuple[str, ...]:
    entries = extensions.names("extended_key_usage", None, "extended key usage", ())
    oids = []
    for index, entry in enumerate(entries):
        oid = EXTENDED_KEY_USAGE_OIDS.get(entry, entry)
        if not _DOTTED_OID.fullmatch(oid):
            extensions.fail(f"extended_key_usage[{index}]",
                            f"unknown extended key usage {entry!r} (neither a known name nor a dotted OID)")
        if oid in oids:
            extensions.fail(f"extended_key_usage[{index}]", f"duplicate extended key usage {oid}")
        oids.append(oid)
    return tuple(oids)


def _read_policies(extensions: _Mapping) -> tuple[PolicyInformation, ...]:
    policies = []
    for index, entry in enumerate(extensions.get("certificate_policies", list, [])):
        policy = _Mapping(extensions.profile,
                          extensions.field_path(f"certificate_policies[{index}]"), entry)
        oid = policy.get("oid", str)
        if not _DOTTED_OID.fullmatch(oid):
            policy.fail("oid", f"not a dotted OID: {oid!r}")
        policies.append(PolicyInformation(oid, policy.url("cps")))
        policy.finish()
    return tuple(policies)


def _read_issuer_urls(entry: _Mapping) -> IssuerUrls:
    return IssuerUrls(entry.url("crl_distribution_point"), entry.url("ocsp_url"))


def _read_issuers(top: _Mapping, extensions: _Mapping) -> dict[str, IssuerUrls]:
    """`issuers`, or the old one-issuer form (`issuer` plus the URLs under `extensions`)."""
    old_issuer = top.get("issuer", str, None)
    if old_issuer is not None:
        if top.get("issuers", dict, None) is not None:
            top.fail("issuer", "give either issuers (one entry per issuer) or the old issuer, not both: "
                               f"move issuer {old_issuer!r} into issuers")
        if not _ISSUER_ID.fullmatch(old_issuer):
            top.fail("issuer", f"must match [a-z0-9_-]+, got {old_issuer!r}")
        # Read from `extensions`, which _read_extensions finishes (refusing unknown keys).
        return {old_issuer: _read_issuer_urls(extensions)}
    for key in ("crl_distribution_point", "ocsp_url"):
        if extensions.get(key, object, None) is not None:
            extensions.fail(key, f"with issuers, write it per issuer as issuers.<id>.{key}")
    issuers = top.mapping("issuers")
    entries = issuers.items()
    if not entries:
        issuers.fail_here("must name at least one issuer")
    result = {}
    for issuer_id, entry in entries:
        if not (isinstance(issuer_id, str) and _ISSUER_ID.fullmatch(issuer_id)):
            issuers.fail(str(issuer_id), f"must match [a-z0-9_-]+, got {issuer_id!r}")
        # `root:` with nothing after it (null) is an issuer without either URL, like `root: {}`.
        urls = _Mapping(issuers.profile, issuers.field_path(issuer_id), {} if entry is None else entry)
        result[issuer_id] = _read_issuer_urls(urls)
        urls.finish()
    return result


def _read_extensions(extensions: _Mapping) -> ExtensionsProfile:
    constraints = extensions.mapping("basic_constraints", {})
    if constraints.get("ca", bool, False):
        constraints.fail("ca", "end-entity profiles must have ca: false")
    constraints.finish()
    result = ExtensionsProfile(
        key_usage=_read_key_usage(extensions),
        extended_key_usage=_read_extended_key_usage(extensions),
        extended_key_usage_critical=extensions.get("extended_key_usage_critical", bool, False),
        certificate_policies=_read_policies(extensions),
        ocsp_no_check=extensions.get("ocsp_no_check", bool, False),
    )
    # RFC 3161 2.3: a time-stamping certificate's extended key usage must be critical.
    if (EXTENDED_KEY_USAGE_OIDS["timeStamping"] in result.extended_key_usage
            and not result.extended_key_usage_critical):
        extensions.fail("extended_key_usage_critical", "must be true with timeStamping")
    extensions.finish()
    return result


def parse_profile(file_name: str, document: Any) -> Profile:
    """Validate one parsed YAML document; `file_name` (without .yaml) names it in errors."""
    top = _Mapping(file_name, "", document)
    name = top.get("name", str)
    if name != file_name:
        top.fail("name", f"must equal the file name {file_name!r}, got {name!r}")
    extensions_document = top.mapping("extensions")
    issuers = _read_issuers(top, extensions_document)
    attributes = top.names("allowed_subject_attributes", SUBJECT_ATTRIBUTE_NAMES,
                           "subject attribute")
    san_types = top.names("allowed_san_types", SAN_TYPES, "SAN type")
    # RFC 5280 4.1.2.6 (and pkilint): a subject emailAddress must also be an rfc822Name SAN.
    if "emailAddress" in attributes and "email" not in san_types:
        top.fail("allowed_subject_attributes", "emailAddress needs 'email' in allowed_san_types")
    max_days = top.get("max_validity_days", int)
    if max_days < 1:
        top.fail("max_validity_days", f"must be positive, got {max_days}")
    default_days = top.get("default_validity_days", int)
    if not 1 <= default_days <= max_days:
        top.fail("default_validity_days", f"must be between 1 and {max_days}, got {default_days}")
    limits = {key: top.get(key, int, default) for key, default in
              (("max_sans", DEFAULT_MAX_SANS), ("max_subject_attributes", DEFAULT_MAX_SUBJECT_ATTRIBUTES))}
    for key, value in limits.items():
        if value < 1:
            top.fail(key, f"must be positive, got {value}")
    key_policy = _read_key_policy(top.mapping("allowed_keys"))
    hashes = top.names("allowed_hashes", HASH_NAMES, "hash")
    if not hashes:
        top.fail("allowed_hashes", "must name at least one hash")
    extensions = _read_extensions(extensions_document)
    top.finish()
    return Profile(name, issuers, frozenset(attributes), frozenset(san_types), max_days,
                   default_days, key_policy, hashes, extensions, **limits)


def load_profile(path: Path) -> Profile:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(path.stem, "<file>", f"cannot read {path}: {exc}") from None
    return parse_profile(path.stem, document)


def load_profiles(folder: str | Path) -> dict[str, Profile]:
    """Load every ``*.yaml`` profile in `folder`, keyed by name. An empty folder is an
    error: a signer without profiles can issue nothing and should not start."""
    paths = sorted(p for p in Path(folder).glob("*.yaml") if not p.name.startswith((".", "_")))
    if not paths:
        raise ProfileError("<none>", "<file>", f"no *.yaml profiles in {folder}")
    return {profile.name: profile for profile in map(load_profile, paths)}


def check_issuers(profiles: dict[str, Profile], issuer_ids: set[str]) -> dict[str, Profile]:
    """Every issuer a profile names is configured; returns the profiles unchanged."""
    for profile in profiles.values():
        for issuer_id in profile.issuers:
            if issuer_id not in issuer_ids:
                raise ProfileError(profile.name, _issuer_field(profile, issuer_id),
                                   f"unknown issuer {issuer_id!r} (configured: {sorted(issuer_ids)})")
    return profiles


def _issuer_field(profile: Profile, issuer_id: str, key: str | None = None) -> str:
    """Where an issuer's entry is written, for error messages (both forms read the same)."""
    return f"issuers.{issuer_id}" + (f".{key}" if key else "")


def crl_urls_by_issuer(profiles: dict[str, Profile]) -> dict[str, str]:
    """The one CRL distribution point of each issuer. One CRL per issuer covers all its
    profiles (docs/CRLS.md), so profiles under one issuer must agree on the URL: the CRL's
    issuing distribution point has to match the certificates' distribution point."""
    urls: dict[str, tuple[str, str]] = {}
    for profile in sorted(profiles.values(), key=lambda p: p.name):
        for issuer_id, issuer_urls in profile.issuers.items():
            url = issuer_urls.crl_distribution_point
            if url is None:
                continue
            seen = urls.setdefault(issuer_id, (url, profile.name))
            if seen[0] != url:
                raise ProfileError(profile.name, _issuer_field(profile, issuer_id, "crl_distribution_point"),
                                   f"{url!r} differs from {seen[0]!r} in profile {seen[1]!r} of the same issuer")
    return {issuer: url for issuer, (url, _) in urls.items()}
