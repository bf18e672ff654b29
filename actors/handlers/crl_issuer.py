"""CrlIssuer handler: `fetch_crl`. See docs/CRLS.md.

A CRL is rebuilt only when the issuer's revocation set changed or the current one is older
than `crl.rebuild_after_fraction` of its lifetime; otherwise the stored CRL is answered and
no signature is made. The client names the CRL it holds; it gets "unchanged", a diff
against that CRL (core.crl.diff), or the full CRL when the signer no longer keeps the base.
Builds for one issuer are serialised: requests arriving during a build wait for it.
"""
from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from actors.base import error_dict
from actors.handlers.handler import HandlerActor, Job
from core.crl.build import assemble_crl, build_tbs_crl, crl_number_for, verify_crl
from core.crl.diff import make_diff
from core.x509.issuers import load_issuers, utc_now
from core.x509.profiles import crl_urls_by_issuer, load_profiles
from core.wire.protocol import SignerError, field
from core.x509.certificate import key_info_of
from messages import HsmSignRequest
from messages.repository import CrlState, StoreCrl

DAY_S = 86400.0


class CrlIssuer(HandlerActor):
    actor_name = "crl_issuer"
    body_fields = frozenset({"issuer", "have_number"})

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.issuers = load_issuers(config)
        self.key_infos = {i: key_info_of(issuer.certificate.public_key()) for i, issuer in self.issuers.items()}
        self.idp_urls = crl_urls_by_issuer(load_profiles(config.x509.profiles))
        self.crl = config.crl
        self.building: dict[str, list[Job]] = {}  # issuer -> requests waiting for its build
        self.builds = 0
        self.diff_cache: dict[tuple[str, int, int], bytes] = {}

    def start(self, job: Job) -> None:
        issuer = field(job.body, "issuer", str)
        if issuer not in self.issuers:
            raise SignerError("unknown_issuer", f"no issuer {issuer!r} (known: {sorted(self.issuers)})")
        job.state.update(issuer=issuer, have=field(job.body, "have_number", int, required=False))
        if issuer in self.building:
            self.building[issuer].append(job)
            return
        lifetime_s = self.crl.lifetime_days * DAY_S
        self.ask(job, "repository",
                 lambda tag: CrlState(tag, issuer, utc_now(), self.crl.grace * DAY_S,
                                      lifetime_s * self.crl.rebuild_after_fraction, job.state["have"]),
                 self.after_state)

    def after_state(self, job: Job, state: dict[str, Any]) -> None:
        if not state["rebuild"]:
            self.answer(job, state["latest"], state["base"])
            return
        issuer = job.state["issuer"]
        if issuer in self.building:  # another request started the same build meanwhile
            self.building[issuer].append(job)
            return
        self.building[issuer] = []
        precise = utc_now()
        now = precise.replace(microsecond=0)
        latest = state["latest"]
        # From the precise clock: two signers building within one second still differ.
        number = crl_number_for(precise, state.get("previous_number", latest["number"] if latest else None))
        try:
            prepared = build_tbs_crl(self.issuers[issuer].certificate, self.key_infos[issuer],
                                     state["entries"], number, now,
                                     now + timedelta(days=self.crl.lifetime_days),
                                     self.crl.hash, self.idp_urls.get(issuer))
        except Exception as exc:
            self.build_failed(job, error_dict(exc))  # free the issuer for the next fetch
            raise
        job.state.update(prepared=prepared, number=number, this_update=now,
                         next_update=now + timedelta(days=self.crl.lifetime_days),
                         digest=state["digest"], base=state["base"])
        self.ask(job, "hsm", lambda tag: HsmSignRequest(tag, self.issuers[issuer].key_label,
                                                        prepared.mechanism, prepared.tbs_der),
                 self.after_signature, on_error=self.build_failed)

    def after_signature(self, job: Job, signature: bytes) -> None:
        state = job.state
        issuer = state["issuer"]
        try:
            der = assemble_crl(state["prepared"], signature)
            verify_crl(der, self.issuers[issuer].certificate)
        except SignerError as exc:
            self.build_failed(job, exc.to_wire())
            raise
        crl = {"issuer": issuer, "number": state["number"], "der": der,
               "this_update": state["this_update"], "next_update": state["next_update"]}
        self.ask(job, "repository",
                 lambda tag: StoreCrl(tag, issuer, state["number"], der, state["this_update"],
                                      state["next_update"], state["digest"], self.crl.keep),
                 lambda job, _: self.built(job, crl), on_error=self.build_failed)

    def built(self, job: Job, crl: dict[str, Any]) -> None:
        self.builds += 1
        waiting = self.building.pop(job.state["issuer"], [])
        self.answer(job, crl, job.state["base"])
        for other in waiting:  # they see the new CRL as current: no second build
            self.step(other, lambda other=other: self.start(other))

    def build_failed(self, job: Job, error: dict[str, str]) -> None:
        for other in self.building.pop(job.state["issuer"], []):
            self.fail(other, error)

    def answer(self, job: Job, crl: dict[str, Any], base: dict[str, Any] | None) -> None:
        body = {"issuer": crl["issuer"], "number": crl["number"],
                "this_update": crl["this_update"].isoformat(), "next_update": crl["next_update"].isoformat(),
                "sha256": hashlib.sha256(crl["der"]).hexdigest()}
        have = job.state["have"]
        if have == crl["number"]:
            body["status"] = "unchanged"
        elif base is not None and have == base["number"]:
            body.update(status="diff", base_number=base["number"], diff=self.diff(crl, base))
        else:
            body.update(status="full", crl=crl["der"])
        self.finish(job, body)

    def diff(self, crl: dict[str, Any], base: dict[str, Any]) -> bytes:
        key = (crl["issuer"], base["number"], crl["number"])
        if key not in self.diff_cache:
            if len(self.diff_cache) > 32:
                self.diff_cache.clear()
            self.diff_cache[key] = make_diff(base["der"], crl["der"])
        return self.diff_cache[key]

    def figures(self) -> dict[str, Any]:
        return dict(super().figures(), builds=getattr(self, "builds", 0))
