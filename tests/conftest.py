from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from core.dev.softhsm import init_softhsm_token
from tests.support.helpers import PIN, SO_PIN, TOKEN, SignerProcess, dev_init, signer_config

# One Hypothesis profile for the whole suite. CI is a loaded 2-core box: example generation
# and each example's run can be slow there through no fault of the code, so neither a
# deadline nor the "input generation is slow" / "data too large" health checks may fail a
# test. Explicit @settings(...) in a module start from this profile.
settings.register_profile("signer", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("signer")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory):
    """The one SoftHSM token of the test process (see tests/support/helpers.py)."""
    base = tmp_path_factory.mktemp("softhsm")
    conf = str(base / "softhsm2.conf")
    init_softhsm_token(str(base / "tokens"), conf, TOKEN, SO_PIN, PIN)
    os.environ["SOFTHSM2_CONF"] = conf
    yield {"conf": conf, "token_dir": str(base / "tokens")}


@pytest.fixture(scope="session")
def dev_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA made by `signer dev-init`, shared by the end-to-end tests."""
    return dev_init(tmp_path_factory.mktemp("signer-data"))


@pytest.fixture(scope="module")
def signer(dev_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running signer (its own process tree) for one test module."""
    target = tmp_path_factory.mktemp("signer-run")
    process = SignerProcess(signer_config(dev_data, target), log_dir=target)
    yield process
    process.stop()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the long variants (marked slow): crash, load and fuzz soaks")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
