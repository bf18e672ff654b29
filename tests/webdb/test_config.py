"""Unit tests of the WebDB client daemon's config (tools/webdb/config.py): loading, defaults,
validation errors naming the dotted key, and the WebDB password from env or file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.runtime.config import ConfigError
from tools.webdb import config as webdb_config
from tools.webdb.config import (WebDbConfig, X509Route, default_routes, load_client_config,
                                read_password)
from tests.support.webdb_fixtures import MARKER


# -- helpers -------------------------------------------------------------------------------

def write_yaml(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "client.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal_config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"signer": {"device": "/dev/ttyS9"},
                            "webdb": {"driver": "sqlite", "path": "web.sqlite"},
                            "state_dir": "state"}
    for section, value in overrides.items():
        data[section] = {**data.get(section, {}), **value} if isinstance(value, dict) else value
    return data


# -- config --------------------------------------------------------------------------------

def test_minimal_config_loads_with_defaults_and_paths_resolved_against_its_folder(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(webdb={"files_root": "www"})))
    assert config.webdb.path == str(tmp_path / "web.sqlite")
    assert config.state_dir == str(tmp_path / "state")
    assert config.webdb.files_root == str(tmp_path / "www")
    assert config.webdb.max_attempts == 3
    assert config.webdb.revoke_marker == MARKER
    assert config.x509.routes == default_routes()
    assert config.source == str((tmp_path / "client.yaml").resolve())
    assert config.route("domaincerts", "ocsp") == X509Route("domaincerts", "ocsp", None, "ocsp")
    assert config.route("orgdomaincerts", "timestamp") == X509Route("orgdomaincerts", "timestamp", None, "timestamp")
    assert [config.x509.issuer_for(r) for r in (1, "2", 3)] == ["root", "class3", None]
    assert config.mail.host == "localhost" and config.mail.port == 25 and config.mail.enabled
    assert config.health.max_clock_skew_s == 120
    assert config.route("orgdomaincerts", "codesign") is None


@pytest.mark.parametrize("overrides, key", [
    ({"webdb": {"colour": "blue"}}, "webdb.colour: unknown key"),
    ({"webdb": {"password": "s3cret"}}, "webdb.password: unknown key"),  # never in the YAML
    ({"colour": "blue"}, "colour: unknown key"),
    ({"webdb": {"driver": "postgres"}}, "webdb.driver: expected 'sqlite' or 'mysql'"),
    ({"webdb": {"driver": "sqlite", "path": None}}, "webdb.path: required"),
    ({"webdb": {"driver": "mysql"}}, "webdb.password_env or webdb.password_file: one is required"),
    ({"webdb": {"batch": "many"}}, "webdb.batch: expected an integer"),
    ({"webdb": {"max_attempts": 0}}, "webdb: poll_interval_s must be > 0"),
    ({"webdb": {"request_id_prefix": "a:b"}}, "webdb.request_id_prefix:"),
    ({"signer": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "signer: expected 0 < backoff_initial_s"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root"},
                          {"table": "emailcerts", "profile": "client-org", "issuer": "class3"}]}},
     "x509.routes[1]: a second route for emailcerts"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root",
                           "variant": "fancy"}]}}, "x509.routes[0].variant: expected one of"),
    ({"x509": {"routes": [{"table": "gpg", "profile": "client", "issuer": "root"}]}},
     "x509.routes[0].table: expected one of"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root", "days": 0}]}},
     "x509.routes[0].days: expected a positive"),
    ({"x509": {"routes": [{"table": "emailcerts", "issuer": "root"}]}}, "x509.routes[0].profile: missing"),
    ({"crl": {"issuers": [{"issuer": "root", "file": "revoke.crl"},
                          {"issuer": "class3", "file": "sub/class3.crl"}]}},
     "crl.issuers[1].file: a file name, not a path"),
    ({"crl": {"issuers": [{"issuer": "root", "file": ".."}]}}, "crl.issuers[0].file:"),
])
def test_config_errors_name_the_dotted_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as caught:
        load_client_config(write_yaml(tmp_path, minimal_config(**overrides)))
    assert str(caught.value).startswith(key), str(caught.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_client_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("webdb: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_client_config(bad)


def test_mysql_config_with_password_env_loads_and_has_no_password_field(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(
        webdb={"driver": "mysql", "path": None, "password_env": "WEBDB_UNIT_PW"})))
    assert config.webdb.driver == "mysql" and config.webdb.password_env == "WEBDB_UNIT_PW"
    assert "password" not in {f for f in WebDbConfig.__dataclass_fields__}


def test_password_from_env_then_file(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    both = WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW", password_file=str(secret_file))
    monkeypatch.setenv("WEBDB_UNIT_PW", "from-env")
    assert read_password(both) == "from-env"
    monkeypatch.setenv("WEBDB_UNIT_PW", "")  # empty counts as unset: the file is used
    assert read_password(both) == "from-file"
    monkeypatch.delenv("WEBDB_UNIT_PW")
    assert read_password(both) == "from-file"
    assert read_password(WebDbConfig(driver="mysql", password_file=str(secret_file))) == "from-file"


def test_password_missing_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WEBDB_UNIT_PW", raising=False)
    with pytest.raises(ConfigError) as caught:
        read_password(WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW"))
    assert str(caught.value).startswith("webdb.password_env:") and "WEBDB_UNIT_PW" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        read_password(WebDbConfig(driver="mysql", password_file=str(tmp_path / "nope")))
    assert str(caught.value).startswith("webdb.password_file: cannot read")


def test_a_jabber_route_can_be_configured(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(x509={"routes": [
        {"table": "domaincerts", "profile": "server", "issuer": "root"},
        {"table": "domaincerts", "profile": "server-jabber", "issuer": "root", "variant": "jabber"}]})))
    assert config.route("domaincerts", "jabber").profile == "server-jabber"



def test_config_module_tables_match_work_tables():
    from tools.webdb.work import CERT_TABLES
    assert webdb_config.TABLES == CERT_TABLES
