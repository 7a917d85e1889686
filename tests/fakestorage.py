"""An in-process storage SCP (a real pynetdicom AE) for C-STORE faults a real PACS won't produce on demand.

It stores what it receives in memory and answers each C-STORE with the status configured for
that SOP instance (success by default): a warning (B000, B007), a refusal (A700), or an abort of
the association instead of any answer, once or every time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class FakeStoragePacs:
    """A C-STORE SCP on 127.0.0.1 accepting `sop_classes` in `transfer_syntaxes`."""

    statuses: dict[str, int] = field(default_factory=dict)
    """SOPInstanceUID -> the status to answer; anything else is stored with 0x0000."""
    abort_on: dict[str, int] = field(default_factory=dict)
    """SOPInstanceUID -> how many times to abort the association when it arrives (-1: always)."""
    sop_classes: tuple[str, ...] = (CT_IMAGE_STORAGE,)
    transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ae_title: str = "FAKESTORE"
    stored: dict[str, Dataset] = field(default_factory=dict)
    """What was stored (success or warning), by SOPInstanceUID."""
    received: list[str] = field(default_factory=list)
    """Every SOPInstanceUID a C-STORE arrived for, in order, repeats included."""
    associations: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._ae = AE(ae_title=self.ae_title)
        for sop_class in self.sop_classes:
            self._ae.add_supported_context(sop_class, list(self.transfer_syntaxes))
        self._ae.add_supported_context(Verification)
        self._ae.maximum_associations = 16
        self._server = None
        self._lock = threading.Lock()

    def __enter__(self) -> FakeStoragePacs:
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_CONN_OPEN, self._count)]
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
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

    def _handle_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        uid = str(dataset.SOPInstanceUID)
        with self._lock:
            self.received.append(uid)
            aborts = self.abort_on.get(uid, 0)
            if aborts:
                self.abort_on[uid] = aborts - 1 if aborts > 0 else aborts
        if aborts:
            event.assoc.abort()
            return 0x0000  # never reaches the requestor: the association is gone
        status = self.statuses.get(uid, 0x0000)
        if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
            with self._lock:
                self.stored[uid] = dataset
        return status
