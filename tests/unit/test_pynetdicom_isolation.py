"""The gateway's pynetdicom settings stay on its own associations: another pynetdicom user in the
same process (here a plain C-STORE SCP and SCU, as a test or an embedding application has) keeps
pynetdicom's behaviour. Before, ``STORE_RECV_CHUNKED_DATASET`` was set for the whole process: such
an SCP got its instances as temporary files it did not know to delete.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pynetdicom._config
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from gateway.dimse import pynetdicom_internals, sockets
from gateway.dimse.sockets import SocketProfile, TunedAE


def ct_instance(number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "ISOLATED"
    ds.InstanceNumber = number
    return ds


def test_a_plain_pynetdicom_store_scp_in_the_same_process_is_unaffected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the gateway sets up when it starts: its sockets, its AEs and their settings.
    sockets.install()
    TunedAE(ae_title="GATEWAY", socket_profile=SocketProfile.BULK)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where chunked receives would land
    received: list[Dataset] = []
    paths: list[bool] = []

    def on_store(event: evt.Event) -> int:
        try:
            paths.append(event.dataset_path.exists())
        except AttributeError:  # not received into a file: pynetdicom's default
            paths.append(False)
        received.append(event.dataset)
        return 0x0000

    scp = AE(ae_title="PLAINSCP")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        scu = AE(ae_title="PLAINSCU")
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 5
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="PLAINSCP")
        assert assoc.is_established
        sent = [ct_instance(n) for n in (1, 2, 3)]
        try:
            for ds in sent:
                assert assoc.send_c_store(ds).Status == 0x0000
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert [ds.SOPInstanceUID for ds in received] == [ds.SOPInstanceUID for ds in sent]
    assert [ds.InstanceNumber for ds in received] == [1, 2, 3]
    assert paths == [False, False, False]
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_the_settings_read_false_outside_the_gateway_and_true_within() -> None:
    TunedAE(ae_title="GATEWAY")
    outside: list[bool] = []
    thread = threading.Thread(target=lambda: outside.append(bool(pynetdicom._config.STORE_RECV_CHUNKED_DATASET)))
    thread.start()
    thread.join(5)
    assert outside == [False]
    assert not pynetdicom._config.STORE_SEND_CHUNKED_DATASET
    assert pynetdicom._config.LOG_REQUEST_IDENTIFIERS
    with pynetdicom_internals.on_gateway_behalf():
        assert pynetdicom._config.STORE_SEND_CHUNKED_DATASET
        assert not pynetdicom._config.LOG_REQUEST_IDENTIFIERS
