"""pkilint's nested values decoded once per distinct value, not once per certificate.

pkilint decodes each certificate's DER into pyasn1 objects, then decodes every value that
is DER inside DER (extension values, name attribute values, algorithm parameters) with a
`ValueDecoder`: about a fifth of a lint (issue 18's profile: 2.34 -> 1.90 ms per lint of
certificates with distinct keys and names). Most of those values are the same in every
certificate of an issuer and profile: the issuer's name attributes, the authority key
identifier, basic constraints, key usages, extended key usages, CRL distribution points,
authority information access, policies. Decoding is a function of the bytes and the schema
object alone, so a value already decoded with the same schema object is taken from a small
cache instead of being decoded again.

What stays pkilint's own: the node that holds the value is made for each document, every
validator runs on it, a value that fails to decode is never cached (it fails with
pkilint's own error each time), and decoders of another kind (a subclass with its own
`decode_value`, such as the subject public key's) are left alone. Sharing a decoded value
between documents is safe because what pkilint 0.13 keeps on one depends on its bytes alone:
nothing calls `setComponent*` or assigns into a value, and the one attribute it sets
(`SctListExtensionDecodingValidator`: `decoded`, the parsed SCT list, read back by
`SctListElementCountValidator`) is computed from the same bytes that key the cache, and
set again in each document before it is read. tests/unit/test_lint_cache.py compares every
ValidationResult with and without the cache, SCT lists included.

Bounded: CAPACITY values of at most MAX_BYTES bytes each, the least recently used dropped.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

CAPACITY = 256
# The values worth keeping (issuer name attributes, AKI, CRL DP, AIA, policies) are tens to
# a few hundred bytes; a large value is a request's own (a SAN of 100 names: ~3 KiB). Kept
# values cost memory: at most ~5 MiB per worker at this bound, ~16 MiB at 4 KiB (measured
# with 256 distinct 1 KiB / 3 KiB SANs).
MAX_BYTES = 1024


class DecodedValues:
    """(schema object, DER bytes) -> the pyasn1 value pkilint decoded from them."""

    def __init__(self, capacity: int = CAPACITY, max_bytes: int = MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        # The schema object is kept beside the value so that its id() cannot be reused.
        self._values: OrderedDict[tuple[int, bytes], tuple[Any, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, schema: Any, substrate: bytes) -> Any | None:
        key = (id(schema), substrate)
        entry = self._values.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._values.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, schema: Any, substrate: bytes, value: Any) -> None:
        if len(substrate) > self.max_bytes:
            return
        self._values[(id(schema), substrate)] = (schema, value)
        if len(self._values) > self.capacity:
            self._values.popitem(last=False)


def _cached_decode_value(decoder: Any, values: DecodedValues) -> Any:
    """`decoder.decode_value`, answering from `values` when it can."""
    from pkilint import document

    pkilint_decode_value = decoder.decode_value

    def decode_value(node: Any, type_node: Any, value_node: Any, pdu_type: Any) -> Any:
        if any(value_node.children):  # decoded already in this document: pkilint's own path
            return pkilint_decode_value(node, type_node, value_node, pdu_type)
        substrate = bytes(decoder.retrieve_substrate(value_node))
        value = values.get(pdu_type, substrate)
        if value is None:
            decoded = pkilint_decode_value(node, type_node, value_node, pdu_type)  # raises as pkilint does
            values.put(pdu_type, substrate, decoded.pdu)
            return decoded
        return document.create_and_append_node_from_pdu(value_node.document, value, value_node)

    return decode_value


def cache_decoded_values(container: Any, values: DecodedValues) -> None:
    """Give every plain ValueDecoder under `container` the cache (on these objects only:
    pkilint's classes are not changed)."""
    from pkilint import document
    from pkilint.validation import DecodingValidator, ValidatorContainer

    pending = [container]
    while pending:
        current = pending.pop()
        for validator in current.validators:
            if isinstance(validator, ValidatorContainer):
                pending.append(validator)
                continue
            decoder = getattr(validator, "decode_func", None) if isinstance(validator, DecodingValidator) else None
            if (not isinstance(decoder, document.ValueDecoder)
                    or type(decoder).decode_value is not document.ValueDecoder.decode_value
                    or "decode_value" in vars(decoder)):  # another kind, or given already
                continue
            # An instance attribute: called as decoder.decode_value(...) without self.
            decoder.decode_value = _cached_decode_value(decoder, values)
