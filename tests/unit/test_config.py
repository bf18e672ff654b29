"""core.runtime.config: a good file loads; each mistake names its key and what was expected."""
import os

import pytest
import yaml

from core.runtime.config import ConfigError, load_config, read_pin
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "signer.example.yaml"


@pytest.fixture
def base(tmp_path):
    """The shipped example, pointed at certificate files that exist."""
    data = yaml.safe_load(EXAMPLE.read_text())
    for issuer in data["issuers"]:
        cert = tmp_path / f"{issuer['id']}.pem"
        cert.write_text("placeholder")
        issuer["certificate"] = str(cert)
    data["x509"]["profiles"] = str(EXAMPLE.parent / "profiles")
    (tmp_path / "openpgp-ca.asc").write_text("placeholder")
    data["openpgp"]["public_key"] = str(tmp_path / "openpgp-ca.asc")
    return data


def write(tmp_path, data) -> Path:
    path = tmp_path / "signer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_loads(tmp_path, base):
    config = load_config(write(tmp_path, base))
    assert config.node_id == "signer-a"
    assert config.serial.baudrate == 115200
    assert config.issuer("class3").key_label == "class3-key"
    assert config.protocol.max_payload_bytes == 4 * 1024 * 1024


def test_relative_paths_resolve_against_the_file(tmp_path, base):
    base["repository"]["path"] = "repo.sqlite"
    config = load_config(write(tmp_path, base))
    assert config.repository.path == str(tmp_path / "repo.sqlite")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["hsm"].pop("token_label"), "hsm.token_label: missing required key (a string)"),
    (lambda d: d.pop("node_id"), "node_id: missing required key"),
    (lambda d: d["serial"].__setitem__("baudrate", "fast"), "serial.baudrate: expected an integer, got str"),
    (lambda d: d["serial"].__setitem__("baudrate", True), "serial.baudrate: expected an integer, got bool"),
    (lambda d: d["issuers"][1].__setitem__("key_label", 5), "issuers[1].key_label: expected a string, got int"),
    (lambda d: d["hsm"].__setitem__("pin", "1234"), "hsm.pin: unknown key"),
    (lambda d: d.__setitem__("issuers", {"id": "x"}), "issuers: expected a list, got dict"),
    (lambda d: d["serial"].__setitem__("mode", "usb"), "serial.mode: expected 'dev-pty' or 'device'"),
    (lambda d: d["hsm"].pop("pin_env"), "hsm.pin_env or hsm.pin_file: one is required"),
    (lambda d: d["actor_system"].__setitem__("admin_port", 80), "actor_system.admin_port"),
    (lambda d: d["issuers"][0].__setitem__("certificate", "/nonexistent.pem"), "issuers[0].certificate: file"),
    (lambda d: d["openpgp"].__setitem__("signature_type", 0x18), "openpgp.signature_type: expected 16 to 19"),
    (lambda d: d["openpgp"].__setitem__("max_key_bytes", 1023), "openpgp.max_key_bytes: expected 1024 to 2097152"),
    (lambda d: d["openpgp"].__setitem__("max_key_bytes", 2 * 1024 * 1024 + 1),
     "openpgp.max_key_bytes: expected 1024 to 2097152"),
    (lambda d: d["serial"].__setitem__("reopen_max_backoff_s", 0), "reopen_max_backoff_s at least 0.1"),
    (lambda d: d["x509"].__setitem__("profiles", "/nonexistent"), "x509.profiles: folder /nonexistent does not exist"),
    (lambda d: d["x509"].__setitem__("workers", 0), "x509.workers: expected 1 to 16"),
    (lambda d: d["x509"].__setitem__("workers", 17), "x509.workers: expected 1 to 16"),
])
def test_mistakes_name_the_key(tmp_path, base, mutate, message):
    mutate(base)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, base))
    assert message in str(info.value)


def test_x509_workers_default_to_one_cpu_less_than_the_machine_has_but_two_on_two(tmp_path, base, monkeypatch):
    for cpus, workers in ((None, 1), (1, 1), (2, 2), (3, 2), (8, 7), (17, 16), (32, 16)):
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        assert load_config(write(tmp_path, base)).x509.workers == workers
    base["x509"]["workers"] = 3
    assert load_config(write(tmp_path, base)).x509.workers == 3


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_pin_from_env_then_file(tmp_path, base, monkeypatch):
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    pin_file.chmod(0o600)  # a PIN file others may read is refused
    base["hsm"]["pin_file"] = str(pin_file)
    config = load_config(write(tmp_path, base))
    monkeypatch.delenv("SIGNER_HSM_PIN", raising=False)
    assert read_pin(config.hsm) == "from-file"
    monkeypatch.setenv("SIGNER_HSM_PIN", "from-env")
    assert read_pin(config.hsm) == "from-env"


def test_pin_missing_names_the_variable(tmp_path, base, monkeypatch):
    monkeypatch.delenv("SIGNER_HSM_PIN", raising=False)
    config = load_config(write(tmp_path, base))
    with pytest.raises(ConfigError, match="SIGNER_HSM_PIN is not set"):
        read_pin(config.hsm)
