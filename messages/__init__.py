"""Typed messages exchanged by the signer's actors (see docs/actors.md).

Every request that expects an answer carries a `tag` chosen by its sender, and the answer
repeats it: an actor never blocks waiting for a reply, it keeps the pending work keyed by tag
and finishes it when the reply arrives. Errors travel as `{"code", "message"}` dicts so they
can be answered to the client unchanged.
"""
from messages.batch import Batch
from messages.commands import CommandReply, CommandRequest
from messages.hsm import (HsmHealthReply, HsmHealthRequest, HsmSealReply, HsmSealRequest,
                          HsmSignReply, HsmSignRequest)
from messages.link import FrameReceived, FrameToSend, SerialBytesReceived, SerialBytesToSend
from messages.repository import RepoHealthReply, RepoHealthRequest
from messages.system import (ActorStatusReply, ActorStatusRequest, Configure, Configured,
                             StartSigner, SignerStarted, SystemStatusReply,
                             SystemStatusRequest)

__all__ = [
    "Batch", "CommandReply", "CommandRequest", "HsmHealthReply", "HsmHealthRequest", "HsmSealReply",
    "HsmSealRequest", "HsmSignReply", "HsmSignRequest", "FrameReceived", "FrameToSend", "SerialBytesReceived",
    "SerialBytesToSend", "RepoHealthReply", "RepoHealthRequest", "ActorStatusReply",
    "ActorStatusRequest", "Configure", "Configured", "StartSigner", "SignerStarted",
    "SystemStatusReply", "SystemStatusRequest",
]
