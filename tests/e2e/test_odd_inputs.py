"""Odd but well-formed input to a running signer gets its documented answer, never
internal_error (issue 12.7, 12.8): deeply nested bodies, CRL numbers outside SQLite's range."""
from __future__ import annotations

import pytest

from core.wire.framing import encode_frame
from core.wire.protocol import MAX_NESTING_DEPTH
from tests.unit.test_protocol import nested_request
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(signer):
    with SignerClient(signer.client_path, timeout=60) as c:
        yield c


@pytest.mark.parametrize("levels", [600, 2000])
def test_deeply_nested_request_is_a_bad_request_and_the_signer_goes_on(client, levels):
    client.write_raw(encode_frame(nested_request(f"deep-{levels}", levels)))
    answer = client.receive(timeout=60)
    assert answer.error["code"] == "bad_request", answer
    assert f"more than {MAX_NESTING_DEPTH} levels" in answer.error["message"]
    # 600 levels decode, so the answer carries the id; 2000 are past msgpack's decoder.
    assert answer.request_id == (f"deep-{levels}" if levels < 1024 else None)
    assert client.call("health", timeout=60).ok


@pytest.mark.parametrize("have_number", [2**63, 2**64 - 1, -2**63])
def test_crl_number_no_stored_crl_can_have_gets_the_full_crl(client, have_number):
    answer = client.call("fetch_crl", {"issuer": "root", "have_number": have_number}, timeout=120)
    assert answer.ok, answer.error
    assert answer.body["status"] == "full" and answer.body["crl"]
