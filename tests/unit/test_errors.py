"""core/wire/errors.py: the one error vocabulary. The wire table (core.wire.protocol.ERROR_CODES) and
the WebDB daemon's failure classes come from it; docs/webdb-client.md's failure table must
say the same class for every code it names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.wire.errors import ErrorCode, RetryClass, retry_class
from core.wire.protocol import ERROR_CODES
from tools.webdb.work import classify

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_failure_classes() -> dict[str, str]:
    """Code (or `prefix_*`) -> class, from the Failures table of docs/webdb-client.md."""
    text = (DOCS / "webdb-client.md").read_text()
    table = text[text.index("| Class | Codes |"):]
    found = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| **"):
            break
        klass, codes = re.match(r"\| \*\*(\w+)\*\*[^|]*\| ([^|]*)\|", line).groups()
        codes = re.sub(r"\([^)]*\)", "", codes)  # "(a route's `days` ...)" explains, names no code
        for code in re.findall(r"`([a-z_0-9*]+)`", codes):
            found[code] = klass
    return found


def test_the_wire_table_is_the_enum():
    assert ERROR_CODES == {code.value: code.meaning for code in ErrorCode}
    assert all(isinstance(code.retry, RetryClass) and code.meaning for code in ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_the_daemon_classifies_every_code_as_the_enum_says(code):
    assert classify(code.value) == code.retry.value


def test_an_unknown_code_is_worth_a_bounded_retry():
    assert retry_class("some_future_code") is RetryClass.RETRY and classify("x") == "retry"


def test_the_documented_failure_classes_match_the_enum():
    documented = documented_failure_classes()
    assert documented, "no failure table found"
    for name, klass in documented.items():
        matching = [c for c in ErrorCode if c.value == name
                    or (name.endswith("*") and c.value.startswith(name[:-1]))]
        assert matching, f"docs name {name!r}, which is no error code"
        assert {c.retry.value for c in matching} == {klass}, name
    covered = {c for c in ErrorCode for name in documented
               if c.value == name or (name.endswith("*") and c.value.startswith(name[:-1]))}
    # Frame errors come without an id (the daemon sees line noise): documented below the table.
    undocumented = {c.value for c in set(ErrorCode) - covered if c.retry is not RetryClass.WAIT}
    assert undocumented == set(), undocumented
