"""`fetch_crl`: its request body parsed once into a typed, frozen value, and the CRL policy
the CrlIssuer handler applies (docs/CRLS.md): when a CRL is due for a rebuild (asked of the
repository with these figures), how a new one is numbered and dated, and what the client
is answered (unchanged, a diff against the CRL it holds, or the full CRL)."""
from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Collection, Protocol, Sequence

from cryptography import x509

from core.crl.build import PreparedCrl, build_tbs_crl, crl_number_for
from core.wire.protocol import SignerError, field
from core.wire.requests import refuse_unknown_fields

DAY_S = 86400.0


@dataclass(frozen=True)
class FetchCrlRequest:
    """A `fetch_crl` body: the issuer id and the number of the CRL the client holds."""
    issuer: str
    have_number: int | None
    COMMAND: ClassVar[str] = "fetch_crl"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"issuer", "have_number"})

    @classmethod
    def parse(cls, body: dict[str, Any], issuers: Collection[str]) -> FetchCrlRequest:
        refuse_unknown_fields(cls.COMMAND, body, cls.FIELDS)
        issuer = field(body, "issuer", str)
        if issuer not in issuers:
            raise SignerError("unknown_issuer", f"no issuer {issuer!r} (known: {sorted(issuers)})")
        return cls(issuer, field(body, "have_number", int, required=False))


@dataclass(frozen=True)
class CrlPolicy:
    """The `crl` settings as the handler uses them."""
    lifetime_days: float
    grace_days: float  # an expired certificate's revocation stays listed this long
    rebuild_after_fraction: float  # an unchanged CRL is rebuilt when older than this part of its life
    keep: int  # CRLs kept per issuer (the bases of diffs)
    hash: str

    @classmethod
    def of(cls, settings: Any) -> CrlPolicy:
        return cls(settings.lifetime_days, settings.grace, settings.rebuild_after_fraction, settings.keep,
                   settings.hash)

    @property
    def grace_s(self) -> float:
        return self.grace_days * DAY_S

    @property
    def max_age_s(self) -> float:
        """Older than this, a CRL is rebuilt even if no revocation changed."""
        return self.lifetime_days * DAY_S * self.rebuild_after_fraction


@dataclass(frozen=True)
class CrlBuild:
    """A CRL built with a throwaway key, waiting for the HSM's signature: its TBS, number,
    times and the digest of the revocation set it lists."""
    tbs: PreparedCrl
    number: int
    this_update: datetime.datetime
    next_update: datetime.datetime
    revocation_digest: str


def build_crl(issuer_cert: x509.Certificate, issuer_key_info: dict[str, Any],
              entries: Sequence[tuple[int, datetime.datetime, int | None]], previous_number: int | None,
              revocation_digest: str, policy: CrlPolicy, idp_url: str | None,
              precise_now: datetime.datetime) -> CrlBuild:
    """The next CRL: numbered from the precise clock (two signers building within one second
    still differ) and above `previous_number` (this signer's and the peer's newest), dated
    from the clock in whole seconds, valid `lifetime_days`."""
    now = precise_now.replace(microsecond=0)
    number = crl_number_for(precise_now, previous_number)
    next_update = now + datetime.timedelta(days=policy.lifetime_days)
    tbs = build_tbs_crl(issuer_cert, issuer_key_info, list(entries), number, now, next_update, policy.hash,
                        idp_url)
    return CrlBuild(tbs, number, now, next_update, revocation_digest)


class CrlLike(Protocol):
    @property
    def issuer(self) -> str: ...
    @property
    def number(self) -> int: ...
    @property
    def der(self) -> bytes: ...
    @property
    def this_update(self) -> datetime.datetime: ...
    @property
    def next_update(self) -> datetime.datetime: ...


def crl_answer(crl: CrlLike, base: CrlLike | None, have_number: int | None,
               diff: Callable[[CrlLike, CrlLike], bytes]) -> dict[str, Any]:
    """The answer to `fetch_crl` (docs/protocol.md): `unchanged` when the client holds the
    current CRL, a `diff` when it holds `base`, else the `full` CRL."""
    body: dict[str, Any] = {"issuer": crl.issuer, "number": crl.number,
                            "this_update": crl.this_update.isoformat(),
                            "next_update": crl.next_update.isoformat(),
                            "sha256": hashlib.sha256(crl.der).hexdigest()}
    if have_number == crl.number:
        body["status"] = "unchanged"
    elif base is not None and have_number == base.number:
        body.update(status="diff", base_number=base.number, diff=diff(crl, base))
    else:
        body.update(status="full", crl=crl.der)
    return body
