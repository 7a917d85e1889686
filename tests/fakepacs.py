"""An in-process Q/R SCP (a real pynetdicom AE) for faults a real PACS won't produce on demand.

It answers Study Root C-FINDs and C-GETs from in-memory instance datasets, hierarchically or
relationally, and can be told to fail: answer a failure status after some results or
sub-operations, hang, or abort. It records every identifier it receives, so tests can check what
the gateway sent upstream, and counts its C-FINDs per level.

Like an archive that writes study-level values when the first series arrives and never again, it
can hold study- and series-level attributes of its own (`held`): it answers and matches those
instead of what its instances say.
"""

from __future__ import annotations

import fnmatch
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

_UNIQUE = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_PARENTS = {"STUDY": [], "SERIES": ["StudyInstanceUID"], "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID"]}


@dataclass
class Fault:
    """What the fake PACS does wrong, and after how many pending responses."""

    kind: str  # "status" | "hang" | "abort"
    after: int = 0
    status: int = 0xA700
    seconds: float = 30.0
    level: str | None = None
    """Only C-FINDs at this QueryRetrieveLevel misbehave (any C-FIND or C-GET when ``None``)."""


@dataclass
class FakePacs:
    """A pynetdicom C-FIND SCP on 127.0.0.1 serving `instances`."""

    instances: list[Dataset]
    relational: bool = False
    fault: Fault | None = None
    ae_title: str = "FAKEPACS"
    received: list[Dataset] = field(default_factory=list)
    associations: int = 0
    cancels: int = 0
    sent: int = 0
    """C-GET sub-operations started so far."""
    gets: int = 0
    """C-GET requests received so far."""
    delay: float = 0.0
    """Seconds to wait before each pending answer (a slow PACS)."""
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    """Serve DICOM TLS with this context (pynetdicom's own TLS server)."""
    held: dict[str, dict[str, object]] = field(default_factory=dict)
    """Attributes the PACS holds for a study or series UID (keyword -> value), answered and matched
    at that level instead of its instances' values: stale aggregates."""
    finds: Counter[str] = field(default_factory=Counter)
    """C-FINDs received, by QueryRetrieveLevel."""
    instances_by_study: bool = False
    """Hierarchical, but an IMAGE C-FIND with the StudyInstanceUID alone answers (as dcmqrscp does)."""
    get_on_unique_key: bool = False
    """C-GET matches the unique key of its level only, ignoring the parent UIDs (PS3.4 C.4.2.2.1 allows it)."""

    def __post_init__(self) -> None:
        self._ae = AE(ae_title=self.ae_title)
        self._ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self._ae.add_supported_context(Verification)
        self._ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        self._ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
        self._ae.maximum_associations = 16
        self._server = None
        self._lock = threading.Lock()

    def __enter__(self) -> FakePacs:
        handlers = [
            (evt.EVT_C_FIND, self._handle_find),
            (evt.EVT_C_GET, self._handle_get),
            (evt.EVT_CONN_OPEN, self._count),
        ]
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        self.port = self._server.server_address[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()

    @property
    def upstream(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def _count(self, event: evt.Event) -> None:
        with self._lock:
            self.associations += 1

    def _handle_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        self.received.append(identifier)
        level = identifier.QueryRetrieveLevel
        with self._lock:
            self.finds[level] += 1
        parents = _PARENTS[level][:1] if level == "IMAGE" and self.instances_by_study else _PARENTS[level]
        if not self.relational and any(not identifier.get(p) for p in parents):
            yield 0x0000, None
            return
        keys = [e for e in identifier if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
        seen: set[str] = set()
        sent = 0
        for instance in self.instances:
            held = self.held.get(str(instance.get(_UNIQUE[level], "")), {}) if level != "IMAGE" else {}
            if not all(_matches(e.keyword, e.value, instance, held) for e in keys if e.VR != "SQ"):
                continue
            uid = instance.get(_UNIQUE[level])
            if uid in seen:
                continue
            seen.add(uid)
            final = self._interruption(event, sent, level)
            if final is not None:
                yield from final
                return
            response = Dataset()
            response.QueryRetrieveLevel = level
            for element in keys:
                value = held.get(element.keyword, instance.get(element.keyword))
                response.add_new(element.tag, element.VR, value if value is not None else None)
            sent += 1
            yield 0xFF00, response
        yield 0x0000, None

    def _handle_get(self, event: evt.Event) -> Iterator[int | tuple[int, Dataset | None]]:
        identifier = event.identifier
        self.received.append(identifier)
        with self._lock:
            self.gets += 1
        keys = [e for e in identifier if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
        if self.get_on_unique_key:
            keys = [e for e in keys if e.keyword == _UNIQUE[identifier.QueryRetrieveLevel]]
        matches = [i for i in self.instances if all(_matches(e.keyword, e.value, i) for e in keys)]
        yield len(matches)
        for sent, instance in enumerate(matches):
            final = self._interruption(event, sent)
            if final is not None:
                yield from final
                return
            with self._lock:
                self.sent += 1
            yield 0xFF00, _with_file_meta(instance)

    def _interruption(
        self, event: evt.Event, sent: int, level: str | None = None
    ) -> list[tuple[int, Dataset | None]] | None:
        """Before each pending answer: the fault's last answers, a slow PACS's delay, a C-CANCEL's."""
        fault = self.fault
        if fault is not None and sent >= fault.after and fault.level in (None, level):
            return list(self._misbehave(event))
        if self.delay:
            time.sleep(self.delay)
        if event.is_cancelled:
            with self._lock:
                self.cancels += 1
            return [(0xFE00, None)]
        return None

    def _misbehave(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        """Fail as the fault says (C-FIND and C-GET alike)."""
        assert self.fault is not None
        if self.fault.kind == "status":
            yield self.fault.status, None
        elif self.fault.kind == "hang":
            time.sleep(self.fault.seconds)
            yield 0x0000, None
        else:
            event.assoc.abort()
            yield 0x0000, None


def _with_file_meta(instance: Dataset) -> Dataset:
    """pynetdicom picks the presentation context of a C-GET sub-operation by the file meta."""
    if "TransferSyntaxUID" not in instance.get("file_meta", FileMetaDataset()):
        instance.file_meta = FileMetaDataset()
        instance.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return instance


def _matches(keyword: str, wanted: object, instance: Dataset, held: dict[str, object] | None = None) -> bool:
    if wanted in (None, "", []):
        return True
    have = (held or {}).get(keyword, instance.get(keyword))
    if have is None:
        return False
    options = [str(w) for w in wanted] if isinstance(wanted, MultiValue | list) else str(wanted).split("\\")
    values = [str(v) for v in have] if isinstance(have, MultiValue | list) else [str(have)]
    if "-" in options[0] and keyword.endswith("Date"):
        low, _, high = options[0].partition("-")
        return any((not low or v >= low) and (not high or v <= high) for v in values)
    return any(fnmatch.fnmatchcase(v, o) for v in values for o in options)
