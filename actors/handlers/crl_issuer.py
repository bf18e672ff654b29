"""CrlIssuer handler: `fetch_crl`. See docs/CRLS.md.

A CRL is rebuilt only when the issuer's revocation set changed or the current one is older
than `crl.rebuild_after_fraction` of its lifetime; otherwise the stored CRL is answered and
no signature is made. The client names the CRL it holds; it gets "unchanged", a diff
against that CRL (core.crl.diff), or the full CRL when the signer no longer keeps the base.
Builds for one issuer are serialised: requests arriving during a build wait for it.
The body, the numbering and dating of a new CRL and the answer are plain code in
core/crl/requests.py; this actor holds the messaging and the builds in progress.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from actors.base import error_dict
from actors.handlers.handler import Envelope, HandlerActor, Job
from core.crl.build import assemble_crl, verify_crl
from core.crl.diff import make_diff
from core.crl.requests import CrlBuild, CrlLike, CrlPolicy, FetchCrlRequest, build_crl, crl_answer
from core.wire.protocol import SignerError
from core.x509.certificate import key_info_of
from core.x509.issuers import load_issuers, utc_now
from core.x509.profiles import crl_urls_by_issuer, load_profiles
from messages import HsmSignRequest
from messages.repository import CrlRecord, CrlState, CrlStatus, StoreCrl


@dataclass
class CrlJobState:
    """What a fetch_crl job carries between replies."""
    base: CrlRecord | None = None  # the client's CRL, the diff's base
    build: CrlBuild | None = None  # this request builds the next CRL


CrlJob = Job[FetchCrlRequest, CrlJobState]


class CrlIssuer(HandlerActor[FetchCrlRequest, CrlJobState]):
    actor_name = "crl_issuer"

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.issuers = load_issuers(config)
        self.key_infos = {i: key_info_of(issuer.certificate.public_key()) for i, issuer in self.issuers.items()}
        urls = crl_urls_by_issuer(load_profiles(config.x509.profiles))  # refuses disagreeing profiles
        self.idp_urls = urls if config.crl.issuing_distribution_point else {}
        self.policy = CrlPolicy.of(config.crl)
        self.building: dict[str, list[CrlJob]] = {}  # issuer -> requests waiting for its build
        self.builds = 0
        self.diff_cache: dict[tuple[str, int, int], bytes] = {}

    def parse(self, envelope: Envelope) -> FetchCrlRequest:
        return FetchCrlRequest.parse(envelope.body, self.issuers)

    def new_state(self, request: FetchCrlRequest) -> CrlJobState:
        return CrlJobState()

    def start(self, job: CrlJob) -> None:
        issuer = job.request.issuer
        if issuer in self.building:
            self.building[issuer].append(job)
            return
        policy = self.policy
        self.ask_repository(job, lambda tag: CrlState(tag, issuer, utc_now(), policy.grace_s, policy.max_age_s,
                                                      job.request.have_number),
                            self.after_state)

    def after_state(self, job: CrlJob, status: CrlStatus) -> None:
        job.state.base = status.base
        if not status.rebuild:
            assert status.latest is not None, "the repository rebuilds when there is no CRL"
            self.answer(job, status.latest)
            return
        issuer = job.request.issuer
        if issuer in self.building:  # another request started the same build meanwhile
            self.building[issuer].append(job)
            return
        self.building[issuer] = []
        try:
            build = build_crl(self.issuers[issuer].certificate, self.key_infos[issuer], status.entries or (),
                              status.previous_number, status.digest, self.policy, self.idp_urls.get(issuer),
                              utc_now())
        except Exception as exc:
            self.build_failed(job, error_dict(exc))  # free the issuer for the next fetch
            raise
        job.state.build = build
        self.ask_hsm(job, lambda tag: HsmSignRequest(tag, self.issuers[issuer].key_label, build.tbs.mechanism,
                                                     build.tbs.tbs_der),
                     self.after_signature, on_error=self.build_failed)

    def after_signature(self, job: CrlJob, signature: bytes) -> None:
        build, issuer = job.state.build, job.request.issuer
        assert build is not None
        try:
            der = assemble_crl(build.tbs, signature)
            verify_crl(der, self.issuers[issuer].certificate)
        except SignerError as exc:
            self.build_failed(job, exc.to_wire())
            raise
        crl = CrlRecord(issuer, build.number, der, build.this_update, build.next_update)
        self.ask_repository(job, lambda tag: StoreCrl(tag, issuer, build.number, der, build.this_update,
                                                      build.next_update, build.revocation_digest, self.policy.keep),
                            lambda job, _: self.built(job, crl), on_error=self.build_failed)

    def built(self, job: CrlJob, crl: CrlRecord) -> None:
        self.builds += 1
        waiting = self.building.pop(job.request.issuer, [])
        self.answer(job, crl)
        for other in waiting:  # they see the new CRL as current: no second build
            self.step(other, functools.partial(self.start, other))

    def build_failed(self, job: CrlJob, error: dict[str, str]) -> None:
        for other in self.building.pop(job.request.issuer, []):
            self.fail(other, error)

    def answer(self, job: CrlJob, crl: CrlRecord) -> None:
        self.finish(job, crl_answer(crl, job.state.base, job.request.have_number, self.diff))

    def diff(self, crl: CrlLike, base: CrlLike) -> bytes:
        key = (crl.issuer, base.number, crl.number)
        if key not in self.diff_cache:
            if len(self.diff_cache) > 32:
                self.diff_cache.clear()
            self.diff_cache[key] = make_diff(base.der, crl.der)
        return self.diff_cache[key]

    def figures(self) -> dict[str, Any]:
        return dict(super().figures(), builds=getattr(self, "builds", 0))
