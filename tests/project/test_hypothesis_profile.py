"""The suite's one Hypothesis profile (tests/conftest.py) is loaded: on a loaded 2-core CI
box neither a deadline nor the slow-generation health checks may fail a test (issue 12.12)."""
from hypothesis import HealthCheck, settings


def test_the_signer_profile_is_the_default():
    current = settings.default
    assert current.deadline is None
    assert {HealthCheck.too_slow, HealthCheck.data_too_large} <= set(current.suppress_health_check)
    assert settings.get_profile("signer") == current

