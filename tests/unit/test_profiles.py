"""The shipped profiles load and mean what the old CAcert signer meant; every broken
profile is refused with a message naming the profile and the field."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from core.x509.profiles import EXTENDED_KEY_USAGE_OIDS as EKU
from core.x509.profiles import IssuerUrls, ProfileError, check_issuers, crl_urls_by_issuer, load_profiles, parse_profile

PROFILE_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
SHIPPED = {"client", "client-org", "client-codesign", "server", "server-org", "server-jabber",
           "ocsp", "timestamp"}


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(PROFILE_DIR)


def raw(name: str) -> dict:
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


def test_shipped_profiles_load(profiles):
    assert set(profiles) == SHIPPED
    for profile in profiles.values():
        assert profile.max_validity_days <= 730
        assert profile.allowed_hashes == ("sha256", "sha384", "sha512")
        assert [p.oid for p in profile.extensions.certificate_policies] == ["1.3.6.1.4.1.18506.4.4"]
        # Every profile under both roots, with the CRLs where CAcert really publishes them.
        ocsp = None if profile.name == "ocsp" else "http://ocsp.cacert.org"
        assert profile.issuers == {
            "root": IssuerUrls("http://crl.cacert.org/revoke.crl", ocsp),
            "class3": IssuerUrls("http://crl.cacert.org/class3-revoke.crl", ocsp)}, profile.name
    assert crl_urls_by_issuer(profiles) == {"root": "http://crl.cacert.org/revoke.crl",
                                            "class3": "http://crl.cacert.org/class3-revoke.crl"}


def test_shipped_extended_key_usages(profiles):
    names = {oid: name for name, oid in EKU.items()}
    by_profile = {name: {names[oid] for oid in profile.extensions.extended_key_usage}
                  for name, profile in profiles.items()}
    client = {"emailProtection", "clientAuth", "msEFS", "msSGC", "nsSGC"}
    server = {"serverAuth", "clientAuth", "msSGC", "nsSGC"}
    assert by_profile == {
        "client": client, "client-org": client,
        "client-codesign": client | {"codeSigning", "msCodeInd", "msCodeCom"},
        "server": server, "server-org": server, "server-jabber": server,
        "ocsp": {"OCSPSigning"}, "timestamp": {"timeStamping"}}
    assert profiles["timestamp"].extensions.extended_key_usage_critical
    assert profiles["ocsp"].extensions.ocsp_no_check
    assert "xmpp" in profiles["server-jabber"].allowed_san_types
    assert "xmpp" not in profiles["server"].allowed_san_types
    # What the web application sends on organisation server rows (type 6, 8, 9): an
    # organisation's subject and an XmppAddr next to every DNS name.
    org_subject = {"commonName", "organizationName", "organizationalUnitName", "localityName",
                   "stateOrProvinceName", "countryName"}
    for name in ("server-org", "ocsp", "timestamp"):
        assert profiles[name].allowed_san_types == {"dns", "xmpp"}, name
        assert profiles[name].allowed_subject_attributes == org_subject, name


def test_profiles_are_frozen(profiles):
    with pytest.raises(dataclasses.FrozenInstanceError):
        profiles["server"].max_validity_days = 9999
    with pytest.raises(dataclasses.FrozenInstanceError):
        profiles["server"].issuers["root"].ocsp_url = "http://evil.example"


def test_dotted_oid_extended_key_usage():
    document = raw("server")
    document["extensions"]["extended_key_usage"] = ["serverAuth", "1.3.6.1.4.1.99999.1"]
    assert parse_profile("server", document).extensions.extended_key_usage == (
        EKU["serverAuth"], "1.3.6.1.4.1.99999.1")


def _set(document: dict, path: str, value) -> None:
    """Set a dotted path ("extensions.key_usage[1]"); a value of DELETE removes the key."""
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    for part in parents:
        document = document[int(part)] if part.isdigit() else document[part]
    key = int(last) if last.isdigit() else last
    if value is DELETE:
        del document[key]
    else:
        document[key] = value


DELETE = object()

BROKEN = [  # (path to change, new value, field named in the error, words in the problem)
    ("colour", "blue", "colour", "unknown key"),
    ("issuers", DELETE, "issuers", "is required"),
    ("issuers", {}, "issuers", "at least one issuer"),
    ("issuers", ["root"], "issuers", "must be a mapping"),
    ("issuers", {"Class 3": {}}, "issuers.Class 3", "must match"),
    ("issuers.root.crl_url", "http://x.example/a.crl", "issuers.root.crl_url", "unknown key"),
    ("issuers.root", ["http://x.example/a.crl"], "issuers.root", "must be a mapping"),
    ("issuer", "root", "issuer", "not both: move issuer 'root' into issuers"),
    ("extensions.crl_distribution_point", "http://crl.cacert.org/revoke.crl",
     "extensions.crl_distribution_point", "issuers.<id>.crl_distribution_point"),
    ("extensions.ocsp_url", "http://ocsp.cacert.org", "extensions.ocsp_url", "issuers.<id>.ocsp_url"),
    ("name", "other", "name", "must equal the file name"),
    ("max_validity_days", "730", "max_validity_days", "must be an integer"),
    ("max_validity_days", True, "max_validity_days", "must be an integer"),
    ("max_validity_days", 0, "max_validity_days", "must be positive"),
    ("default_validity_days", 731, "default_validity_days", "between 1 and 730"),
    ("allowed_subject_attributes[0]", "serialNumber", "allowed_subject_attributes[0]",
     "unknown subject attribute 'serialNumber'"),
    ("allowed_subject_attributes", ["commonName", "commonName"], "allowed_subject_attributes[1]",
     "duplicate"),
    ("allowed_san_types", ["dns", "uri"], "allowed_san_types[1]", "unknown SAN type 'uri'"),
    ("allowed_hashes", ["sha256", "sha1"], "allowed_hashes[1]", "unknown hash 'sha1'"),
    ("allowed_hashes", [], "allowed_hashes", "at least one"),
    ("allowed_keys.rsa.min_bits", 1024, "allowed_keys.rsa.min_bits", "at least 2048"),
    ("allowed_keys.rsa.max_bits", 1999, "allowed_keys.rsa.max_bits", "below min_bits"),
    ("allowed_keys.rsa.exponent", 3, "allowed_keys.rsa.exponent", "unknown key"),
    ("allowed_keys.ec", ["secp256k1"], "allowed_keys.ec[0]", "unknown curve 'secp256k1'"),
    ("allowed_keys", {}, "allowed_keys", "allows no key type"),
    ("allowed_keys", [2048], "allowed_keys", "must be a mapping"),
    ("extensions.basic_constraints.ca", True, "extensions.basic_constraints.ca", "ca: false"),
    ("extensions.basic_constraints.path_length", 0, "extensions.basic_constraints.path_length",
     "unknown key"),
    ("extensions.key_usage[1]", "foo", "extensions.key_usage[1]", "unknown key usage 'foo'"),
    ("extensions.key_usage[0]", "keyCertSign", "extensions.key_usage[0]", "needs CA:TRUE"),
    ("extensions.key_usage", [], "extensions.key_usage", "at least one"),
    ("extensions.key_usage", ["digitalSignature", "encipherOnly"], "extensions.key_usage",
     "need keyAgreement"),
    ("extensions.key_usage", "digitalSignature", "extensions.key_usage", "must be a list"),
    ("extensions.extended_key_usage[0]", "fooAuth", "extensions.extended_key_usage[0]",
     "unknown extended key usage 'fooAuth'"),
    ("extensions.extended_key_usage[0]", 42, "extensions.extended_key_usage[0]", "must be a string"),
    ("extensions.extended_key_usage", ["serverAuth", "1.3.6.1.5.5.7.3.1"],
     "extensions.extended_key_usage[1]", "duplicate"),
    ("extensions.extended_key_usage", ["timeStamping"], "extensions.extended_key_usage_critical",
     "must be true"),
    ("issuers.class3.crl_distribution_point", "ftp://crl.cacert.org/revoke.crl",
     "issuers.class3.crl_distribution_point", "not an http(s) URL"),
    ("issuers.root.ocsp_url", "http://", "issuers.root.ocsp_url", "not an http(s) URL"),
    ("issuers.root.ocsp_url", "http://ocsp.cacert.org/a b", "issuers.root.ocsp_url", "not an http(s) URL"),
    ("extensions.certificate_policies[0].oid", "cacert", "extensions.certificate_policies[0].oid",
     "not a dotted OID"),
    ("extensions.certificate_policies[0].cps", "www.cacert.org",
     "extensions.certificate_policies[0].cps", "not an http(s) URL"),
    ("extensions.certificate_policies[0].notice", "hi",
     "extensions.certificate_policies[0].notice", "unknown key"),
    ("extensions.subject_alt_name", True, "extensions.subject_alt_name", "unknown key"),
    ("extensions.ocsp_no_check", "yes please", "extensions.ocsp_no_check", "must be true or false"),
    ("extensions", DELETE, "extensions", "is required"),
]


@pytest.mark.parametrize("path, value, field, problem", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_profile_names_profile_and_field(path, value, field, problem, tmp_path):
    document = copy.deepcopy(raw("client"))
    _set(document, path, value)
    (tmp_path / "client.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ProfileError) as raised:
        load_profiles(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"profile 'client' field '{field}': "), message
    assert problem in message
    assert (raised.value.profile, raised.value.field) == ("client", field)


def test_email_attribute_needs_email_san():
    document = raw("client")
    document["allowed_san_types"] = []
    with pytest.raises(ProfileError, match="field 'allowed_subject_attributes'.*emailAddress"):
        parse_profile("client", document)


@pytest.mark.parametrize("content, problem", [
    ("- just\n- a list\n", "must be a mapping"),
    ("name: [unclosed\n", "cannot read"),
    ("", "must be a mapping, got NoneType"),
])
def test_unreadable_files_name_the_profile(content, problem, tmp_path):
    (tmp_path / "server.yaml").write_text(content)
    with pytest.raises(ProfileError, match=rf"profile 'server' field '<file>': .*{problem}"):
        load_profiles(tmp_path)


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "_disabled.yaml").write_text(yaml.safe_dump(raw("server")))
    with pytest.raises(ProfileError, match="no \\*.yaml profiles"):
        load_profiles(tmp_path)


def old_form(name: str, issuer: str) -> dict:
    """A shipped profile written as before issue 15: one issuer, its URLs under extensions."""
    document = raw(name)
    urls = document.pop("issuers")[issuer] or {}
    document["issuer"] = issuer
    document["extensions"].update(urls)
    return document


@pytest.mark.parametrize("name, issuer", [("client", "class3"), ("ocsp", "root")])
def test_old_one_issuer_form_still_loads(name, issuer):
    new = parse_profile(name, raw(name))
    old = parse_profile(name, old_form(name, issuer))
    assert old.issuers == {issuer: new.issuers[issuer]}
    assert dataclasses.replace(old, issuers=new.issuers) == new


@pytest.mark.parametrize("path, value, field, problem", [
    ("issuer", "Class 3", "issuer", "must match"),
    ("issuers", {"root": {}}, "issuer", "not both"),
    ("extensions.crl_distribution_point", "ldap://x", "extensions.crl_distribution_point", "not an http(s) URL"),
    ("extensions.ocsp_urls", "http://x.example", "extensions.ocsp_urls", "unknown key"),
])
def test_broken_old_form_names_the_field(path, value, field, problem):
    document = old_form("client", "root")
    _set(document, path, value)
    with pytest.raises(ProfileError) as raised:
        parse_profile("client", document)
    assert (raised.value.field, problem in raised.value.problem) == (field, True), str(raised.value)


def test_issuer_without_urls(profiles):
    document = raw("server")
    document["issuers"] = {"root": None, "class3": {}}
    assert parse_profile("server", document).issuers == {"root": IssuerUrls(None, None),
                                                          "class3": IssuerUrls(None, None)}


def test_every_named_issuer_must_be_configured(profiles):
    assert check_issuers(profiles, {"root", "class3", "spare"}) is profiles
    with pytest.raises(ProfileError, match=r"field 'issuers.class3': unknown issuer 'class3' \(configured: \['root'\]\)"):
        check_issuers(profiles, {"root"})


def test_profiles_of_one_issuer_must_agree_on_its_crl(profiles):
    document = raw("server")
    document["issuers"]["class3"]["crl_distribution_point"] = "http://crl.cacert.org/class3.crl"
    changed = {**profiles, "server": parse_profile("server", document)}
    with pytest.raises(ProfileError) as raised:
        crl_urls_by_issuer(changed)
    assert raised.value.field == "issuers.class3.crl_distribution_point"
    assert "differs from 'http://crl.cacert.org/class3-revoke.crl'" in raised.value.problem
