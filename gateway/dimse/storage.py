"""Storage SOP classes and transfer syntaxes the gateway accepts instances in (C-GET and C-MOVE).

An association carries at most 128 presentation contexts (PS3.8 §9.3.2.2). A C-GET needs one for
its Query/Retrieve model, which leaves 127 for the storage SOP classes the gateway takes in the
SCP role: the default is pynetdicom's own selection of the 120 most used ones. A site whose PACS
holds other objects (a vendor's private storage class, say) lists its own in
``storage_sop_classes``.

Each storage context offers the uncompressed syntaxes first and then the compressed ones, so the
PACS can send what it holds without re-encoding it: the gateway stores and streams instances as
they arrive, and decodes only when a client asks for what needs it (frames, rendered images).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts, build_context, build_role
from pynetdicom import sop_class as sop_classes
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext

from gateway.settings import ConfigError, UpstreamSettings

__all__ = [
    "RECEIVED_TRANSFER_SYNTAXES",
    "storage_contexts",
    "storage_roles",
    "storage_sop_classes",
]

RECEIVED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""What the gateway accepts instances in, preferred first."""

_DEFAULT_SOP_CLASSES: tuple[UID, ...] = tuple(UID(str(cx.abstract_syntax)) for cx in StoragePresentationContexts)


def storage_sop_classes(settings: UpstreamSettings) -> tuple[UID, ...]:
    """The storage SOP classes offered for `settings`' upstream; keywords are resolved to UIDs.

    Raises
    ------
    ConfigError
        A keyword that names no SOP class pynetdicom knows.
    """
    if not settings.storage_sop_classes:
        return _DEFAULT_SOP_CLASSES
    resolved: list[UID] = []
    for name in settings.storage_sop_classes:
        uid: str | None = name if name[0].isdigit() else getattr(sop_classes, name, None)
        if uid is None:
            raise ConfigError(f"upstreams.{settings.name}.storage_sop_classes: unknown SOP class {name!r}")
        resolved.append(UID(uid))
    return tuple(dict.fromkeys(resolved))


def storage_contexts(sop_class_uids: tuple[UID, ...]) -> list[PresentationContext]:
    """One presentation context per storage SOP class, offering every received transfer syntax."""
    return [build_context(uid, list(RECEIVED_TRANSFER_SYNTAXES)) for uid in sop_class_uids]


def storage_roles(sop_class_uids: tuple[UID, ...]) -> list[SCP_SCU_RoleSelectionNegotiation]:
    """SCP/SCU role selection (PS3.7 D.3.3.4): the gateway is the storage SCP within a C-GET."""
    return [build_role(uid, scp_role=True) for uid in sop_class_uids]
