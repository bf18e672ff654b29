"""The indexed validator walk (core/x509/lint_index.py) gives exactly pkilint's results.

Each certificate of a varied corpus (every profile as the signer builds it, hand-made
certificates full of findings, undecodable bytes: tests/support/lint_corpus.py) is validated
by pkilint's own walk and by the indexed one: every ValidationResult (validator, node,
findings and messages) must be the same, in the same order, not only the ERROR findings the
signer acts on."""
from __future__ import annotations

import pytest

from core.x509 import certificate as xb
from tests.support.lint_corpus import CORPUS, everything


@pytest.fixture(scope="module")
def linters(monkeypatch_module):
    monkeypatch_module.setattr(xb, "index_validators", lambda container: None)
    plain = xb.PkixLinter()
    monkeypatch_module.undo()
    return plain, xb.PkixLinter()


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_the_corpus_is_varied():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("label,der", CORPUS, ids=[label for label, _ in CORPUS])
def test_indexed_walk_gives_pkilints_results(linters, label, der):
    plain, indexed = linters
    assert not hasattr(plain._validator, "_candidates_by_type")  # really pkilint's own walk
    expected = everything(plain, der)
    assert everything(indexed, der) == expected
    assert indexed.lint(der, "DEBUG") == plain.lint(der, "DEBUG")


def test_the_corpus_has_findings_of_every_severity_the_signer_acts_on(linters):
    plain, _ = linters
    severities = {f.severity for _, der in CORPUS for f in plain.lint(der, "DEBUG")}
    assert {"ERROR", "FATAL", "WARNING"} <= severities


def test_the_index_leaves_validators_out(linters):
    """It is not a walk that merely asks everyone (which would also give equal results)."""
    _, indexed = linters
    for _, der in CORPUS[:3]:
        indexed.lint(der)
    container = indexed._validator
    kept = [len(candidates) for candidates in container._candidates_by_type.values()]
    assert kept and min(kept) < len(container.validators)
