"""Forged C-STOREs against the storage SCP while a real C-MOVE from Orthanc is in flight.

A forger copies what an attacker can see or guess: the PACS's AE title (``ORTHANC``), the gateway
as Move Originator, and message IDs counted up from 1 (what the gateway used to hand out). It
sends instances of another study, extra instances inside the study being retrieved, and copies
of the study's instances with another PatientName, from the PACS's own address (127.0.0.1) and
from another one (127.0.0.2). The client must get exactly the PACS's instances, the cache must
keep the real content, and every forgery must be refused with a failure status and a log line
naming the forger's address.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from gateway.demo.pacs import OrthancPacs, free_port
from gateway.settings import load_settings
from tests.conftest import live_gateway
from tests.images import image

pytestmark = pytest.mark.upstream

STORE_PORT = free_port()
INSTANCES = 80


def study(patient: str, count: int) -> list[Dataset]:
    """One series of `count` small images."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = []
    for number in range(1, count + 1):
        ds = image(np.full((16, 16), number, dtype=np.uint16))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
        ds.PatientName, ds.PatientID, ds.InstanceNumber, ds.SeriesNumber = patient, patient, number, 1
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        instances.append(ds)
    return instances


REAL = study("Real^Patient", INSTANCES)
OTHER = study("Other^Patient", 3)  # on the PACS too: what the forger would slip into the retrieve


def forged_copy(ds: Dataset) -> Dataset:
    copy = deepcopy(ds)
    copy.PatientName = "Forged^Patient"
    return copy


def extra_in_study(ds: Dataset) -> Dataset:
    extra = forged_copy(ds)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return extra


@dataclass
class Forger:
    """Sends forged C-STOREs as ``ORTHANC`` from `address` until stopped; records every status."""

    address: str
    payloads: list[Dataset]
    message_id: int | None = None
    """The message ID to use (an insider's knowledge); None: count up from 1 as an outsider guesses."""
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    associations: int = 0

    def run(self) -> None:
        ae = AE(ae_title="ORTHANC")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for ds in self.payloads:
            ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        message_id = 0
        while not self.stop.is_set():
            assoc = ae.associate("127.0.0.1", STORE_PORT, ae_title="GATEWAY", bind_address=(self.address, 0))
            if not assoc.is_established:
                self.statuses.append(-1)
                continue
            self.associations += 1
            try:
                for ds in self.payloads:
                    message_id = self.message_id or message_id % 400 + 1
                    status = assoc.send_c_store(ds, msg_id=1, originator_aet="GATEWAY", originator_id=message_id)
                    self.statuses.append(int(status.Status) if status else -1)
                    if self.stop.is_set():
                        break
            finally:
                assoc.release()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    destinations = {"GATEWAY": ("127.0.0.1", STORE_PORT)}
    with OrthancPacs(Path(tmp_path_factory.mktemp("orthanc")), move_destinations=destinations) as pacs:
        pacs.store([*REAL, *OTHER])
        yield pacs


@pytest.fixture(scope="module")
def gateway(orthanc: OrthancPacs) -> Iterator[str]:
    settings = load_settings(None, upstream=orthanc.upstream, retrieve="move", store_port=STORE_PORT)
    settings = replace(settings, upstreams=(replace(settings.default_upstream, profile="orthanc"),))
    with live_gateway(settings) as root:
        yield root


@contextlib.contextmanager
def forging(*forgers: Forger) -> Iterator[None]:
    threads = [threading.Thread(target=f.run, name=f"forger-{f.address}", daemon=True) for f in forgers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for forger in forgers:
            forger.stop.set()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


def retrieve_while_forging(client: DICOMwebClient, *forgers: Forger) -> None:
    """Two retrieves of the real study while `forgers` are at it; each brings exactly the PACS's instances."""
    study_uid = str(REAL[0].StudyInstanceUID)
    expected = {str(ds.SOPInstanceUID): str(ds.PatientName) for ds in REAL}
    with forging(*forgers):
        while any(len(forger.statuses) < 3 for forger in forgers):
            threading.Event().wait(0.01)  # every forger is at it before the retrieves start
        for _ in range(2):
            retrieved = client.retrieve_study(study_uid)
            assert {str(ds.SOPInstanceUID): str(ds.PatientName) for ds in retrieved} == expected
            assert len(retrieved) == INSTANCES
    for forger in forgers:
        assert forger.associations >= 1 and forger.statuses, forger.address


def assert_cache_holds_the_real_content(client: DICOMwebClient, gateway: str, *forgers: Forger) -> dict[str, int]:
    study_uid = str(REAL[0].StudyInstanceUID)
    for ds in (REAL[0], REAL[1], REAL[2], REAL[-1]):
        metadata = client.retrieve_instance_metadata(study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        assert metadata["00100010"]["Value"][0]["Alphabetic"] == "Real^Patient"
    health = httpx.get(gateway.rsplit("/dicom-web", 1)[0] + "/health", timeout=10).json()
    refused = sum(status != 0x0000 for forger in forgers for status in forger.statuses)
    assert health["refused_instances"]["storage_scp"] >= refused > 0
    cache: dict[str, int] = health["caches"]["default"]
    assert cache["instances"] == INSTANCES
    return cache


def test_guessed_message_ids_get_nothing_in(gateway: str, caplog: pytest.LogCaptureFixture) -> None:
    client = DICOMwebClient(url=gateway)
    # A first retrieve fills the cache with the real instances.
    assert len(client.retrieve_study(str(REAL[0].StudyInstanceUID))) == INSTANCES
    same_host = Forger("127.0.0.1", [OTHER[0], forged_copy(REAL[0]), extra_in_study(REAL[1])])
    elsewhere = Forger("127.0.0.2", [extra_in_study(REAL[1]), forged_copy(REAL[2]), OTHER[1]])
    with caplog.at_level(logging.WARNING, logger="gateway"):
        retrieve_while_forging(client, same_host, elsewhere)
    for forger in (same_host, elsewhere):
        assert set(forger.statuses) == {0x0124}, forger.address  # nothing forged was ever acknowledged
        assert f"from ORTHANC@{forger.address}: no C-MOVE in flight has message ID" in caplog.text
    assert assert_cache_holds_the_real_content(client, gateway, same_host, elsewhere)["conflicts"] == 0


def test_a_known_message_id_is_not_enough(
    gateway: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An insider who sees the move's message ID (DIMSE is not encrypted) still gets nothing served.

    From another address everything is refused; from the PACS's own address an instance of
    another study is refused, and a forged copy of a cached instance is taken in by the storage
    SCP but never replaces the cached copy.
    """
    monkeypatch.setattr("gateway.dimse.storescp.secrets.randbelow", lambda _: 4241)  # every move: ID 4242
    client = DICOMwebClient(url=gateway)
    assert len(client.retrieve_study(str(REAL[0].StudyInstanceUID))) == INSTANCES
    same_host = Forger("127.0.0.1", [OTHER[0], forged_copy(REAL[0])], message_id=4242)
    elsewhere = Forger("127.0.0.2", [extra_in_study(REAL[1]), forged_copy(REAL[2]), OTHER[1]], message_id=4242)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        retrieve_while_forging(client, same_host, elsewhere)
    assert set(elsewhere.statuses) == {0x0124}
    assert "from ORTHANC@127.0.0.2: 127.0.0.2 is not an address upstream default sends from" in caplog.text
    assert set(same_host.statuses) <= {0x0124, 0x0000} and 0x0124 in same_host.statuses
    assert "from ORTHANC@127.0.0.1: it is of study" in caplog.text
    cache = assert_cache_holds_the_real_content(client, gateway, same_host, elsewhere)
    if 0x0000 in same_host.statuses:  # a forged copy arrived while a move was in flight
        assert cache["conflicts"] >= 1 and "other content than the cached copy" in caplog.text
