"""pkilint's validator walk with the validators each node cannot match left out by type.

pkilint's `ValidatorContainer._validate_rec` asks every validator of a container whether it
matches every node of the document: ~5,000 `match` calls per certificate, about a quarter
of a lint (issue 18's profile). Most validators match only nodes whose ASN.1 value is of one
class (`pdu_class`), and their `match` starts with exactly that `isinstance` test. For those,
whether they can match depends on the node's value type only, so each container keeps, per
value type, the list of its validators that can: the others would have answered False.
Every other test of `match` (path, predicate, extension OID, ...) still runs on every
candidate, candidates keep the container's order, and `validate_wrapper`, the results and
their order are pkilint's own: the findings are the same (tests/unit/test_lint_index.py lints
good and bad certificates both ways and compares every finding).

Only `match` methods known to begin with the `pdu_class` test are filtered on (NodeVisitor's
and the three subclasses below, as of pkilint 0.13.3); a validator with any other `match` is
asked on every node, as before.
"""
from __future__ import annotations

import types
from typing import Any


def _filterable_matches() -> frozenset[Any]:
    from pkilint import document, validation
    from pkilint.pkix import extension
    from pkilint.pkix.certificate import certificate_extension

    return frozenset({document.NodeVisitor.match, validation.TypeMatchingValidator.match,
                      extension.ExtensionCriticalityValidator.match,
                      certificate_extension.ExtendedKeyUsageCriticalityValidator.match})


def _may_match(validator: Any, value_type: type, filterable: frozenset[Any]) -> bool:
    pdu_class = getattr(validator, "_pdu_class", None)
    if pdu_class is None or type(validator).match not in filterable:
        return True
    return issubclass(value_type, pdu_class)


def _indexed_validate_rec(self: Any, node: Any, results: list[Any]) -> None:
    """pkilint's ValidatorContainer._validate_rec, over this node's candidates only."""
    value_type = type(node.pdu)
    candidates = self._candidates_by_type.get(value_type)
    if candidates is None:
        candidates = self._candidates_by_type[value_type] = [
            v for v in self.validators if _may_match(v, value_type, self._filterable)]
    for validator in candidates:
        if validator.match(node):
            result = validator.validate_wrapper(node)
            if isinstance(result, list):
                results += result
            else:
                results.append(result)
    for child_node in node.children.values():
        self._validate_rec(child_node, results)


def index_validators(container: Any) -> None:
    """Give `container` and every container inside it the indexed walk (on these objects
    only: pkilint's classes are not changed)."""
    from pkilint.validation import ValidatorContainer

    filterable = _filterable_matches()
    pending = [container]
    while pending:
        current = pending.pop()
        if type(current)._validate_rec is not ValidatorContainer._validate_rec:
            continue  # a container with a walk of its own keeps it
        current._candidates_by_type = {}
        current._filterable = filterable
        current._validate_rec = types.MethodType(_indexed_validate_rec, current)
        pending.extend(v for v in current.validators if isinstance(v, ValidatorContainer))
