"""Real clients through the gateway: Orthanc's DICOMweb plugin as a client, OHIF's request patterns,
and person names with non-ASCII characters in front of Orthanc.

- Orthanc as a client: a second Orthanc names the gateway in ``DicomWeb.Servers`` (how many sites
  push to and pull from a DICOMweb server); the gateway fronts dcmtk's dcmqrscp. Its searches, its
  pulls and its pushes (``Transfer-Encoding: chunked``, a 73-character boundary) are checked
  against what dcmqrscp holds, asked by C-FIND.
- OHIF: ``includefield`` with Modality at study level, UID lists joined with backslashes, frames
  with an unquoted ``transfer-syntax=*``, a burst of parallel frame requests, against Orthanc and
  dcmqrscp.
- ``PatientName=M?ller^J*`` in front of Orthanc, whose C-FIND does not match ``?`` against a
  multi-byte character, with patients stored in UTF-8 (ISO_IR 192) and Latin-1 (ISO_IR 100).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.settings import load_settings
from tests.conftest import live_gateway
from tests.images import image, ramp

pytestmark = pytest.mark.upstream

STUDIES = generate_sample_studies(6, seed=21)
PUSHED = generate_sample_studies(2, seed=22)  # only in the client Orthanc, until it pushes them
FRAMES = 120


def named_patients() -> list[Dataset]:
    """One single-instance study per patient name; the character set each is stored in is its own."""
    patients = [
        ("Müller^Jürgen", "ISO_IR 192"),
        ("Möller^Jan", "ISO_IR 100"),
        ("Miller^John", ""),
        ("Mueller^Jo", ""),  # two characters where M?ller has one: must not match
        ("Müller^Anna", "ISO_IR 192"),  # J* does not match Anna
    ]
    datasets = []
    for number, (name, charset) in enumerate(patients, start=1):
        ds = image(ramp(8, 8))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            ds.SOPClassUID,
            ds.SOPInstanceUID,
        )
        if charset:
            ds.SpecificCharacterSet = charset
        ds.PatientName, ds.PatientID = name, f"NAMED{number}"
        datasets.append(ds)
    return datasets


def multiframe_series() -> list[Dataset]:
    """One instance of FRAMES frames, for the burst of frame requests a viewer sends."""
    ds = image(ramp(32, 32, frames=FRAMES))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PatientID = "FRAMES"
    return [ds]


NAMED = named_patients()
MULTIFRAME = multiframe_series()


@pytest.fixture(scope="module")
def pacs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPacs]]:
    """Orthanc (with the named patients) and dcmqrscp, both holding the sample studies and the multi-frame image."""
    with contextlib.ExitStack() as stack:
        orthanc = stack.enter_context(OrthancPacs(Path(tmp_path_factory.mktemp("orthanc"))))
        orthanc.store([*iter_sample_datasets(STUDIES), *MULTIFRAME, *NAMED])
        dcmqrscp = stack.enter_context(DcmqrscpPacs(Path(tmp_path_factory.mktemp("dcmqrscp"))))
        dcmqrscp.store([*iter_sample_datasets(STUDIES), *MULTIFRAME])
        yield {"orthanc": orthanc, "dcmqrscp": dcmqrscp}


@contextlib.contextmanager
def gateway_for(pacs: LocalPacs, profile: str) -> Iterator[str]:
    settings = load_settings(None, upstream=pacs.upstream)
    settings = replace(settings, upstreams=(replace(settings.default_upstream, profile=profile),))
    with live_gateway(settings) as root:
        yield root


def find_uids(pacs: LocalPacs, level: str, unique: str, **keys: str) -> set[str]:
    """What the PACS itself holds: the `unique` values of a C-FIND at `level`."""
    ae = AE(ae_title="CHECKER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    setattr(identifier, unique, "")
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    assert assoc.is_established
    try:
        found = set()
        for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            assert status, "no answer to the checking C-FIND"
            if status.Status in (0xFF00, 0xFF01) and answer is not None:
                found.add(str(getattr(answer, unique)))
        return found
    finally:
        assoc.release()


def held_instances(pacs: LocalPacs, study_uid: str) -> set[str]:
    """The SOP Instance UIDs of a study the PACS holds, asked level by level (dcmqrscp is hierarchical)."""
    held: set[str] = set()
    for series_uid in find_uids(pacs, "SERIES", "SeriesInstanceUID", StudyInstanceUID=study_uid):
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        held |= find_uids(pacs, "IMAGE", "SOPInstanceUID", **keys)
    return held


def tag_values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [value for result in results for value in result.get(tag, {}).get("Value", [])]


# -- Orthanc's DICOMweb plugin as a client of the gateway ------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_client(
    pacs_pool: dict[str, LocalPacs], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OrthancPacs, str]]:
    """A second Orthanc whose DICOMweb client knows the gateway (in front of dcmqrscp) as "gateway"."""
    with gateway_for(pacs_pool["dcmqrscp"], "dcmqrscp") as root:
        client = OrthancPacs(
            Path(tmp_path_factory.mktemp("orthanc-client")), ae_title="CLIENT", dicomweb_servers={"gateway": root}
        )
        with client:
            client.store(iter_sample_datasets(PUSHED))
            yield client, root


def orthanc_values(results: list[dict[str, Any]], tag: str) -> list[str]:
    """A tag's values in the answers Orthanc's DICOMweb client relays (its own format: values as strings)."""
    return [result[tag]["Value"] for result in results if "Value" in result.get(tag, {})]


def orthanc_rest(client: OrthancPacs, path: str, body: object) -> Any:
    response = httpx.post(f"{client.http_url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_orthanc_searches_through_the_gateway(
    orthanc_client: tuple[OrthancPacs, str], pacs_pool: dict[str, LocalPacs]
) -> None:
    client, _ = orthanc_client
    studies = orthanc_rest(client, "/dicom-web/servers/gateway/qido", {"Uri": "/studies"})
    held = find_uids(pacs_pool["dcmqrscp"], "STUDY", "StudyInstanceUID")
    assert set(orthanc_values(studies, "0020000D")) == held and len(studies) == len(held)
    study = STUDIES[0]
    series = orthanc_rest(client, "/dicom-web/servers/gateway/qido", {"Uri": f"/studies/{study.study_uid}/series"})
    assert set(orthanc_values(series, "0020000E")) == find_uids(
        pacs_pool["dcmqrscp"], "SERIES", "SeriesInstanceUID", StudyInstanceUID=study.study_uid
    )


def test_orthanc_pulls_studies_through_the_gateway(
    orthanc_client: tuple[OrthancPacs, str], pacs_pool: dict[str, LocalPacs]
) -> None:
    client, _ = orthanc_client
    wanted = STUDIES[1:3]
    orthanc_rest(client, "/dicom-web/servers/gateway/retrieve", {"Resources": [{"Study": s.study_uid} for s in wanted]})
    for study in wanted:
        held = held_instances(pacs_pool["dcmqrscp"], study.study_uid)
        pulled = orthanc_rest(
            client, "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study.study_uid}}
        )
        uids = set()
        for orthanc_id in pulled:
            tags = httpx.get(f"{client.http_url}/instances/{orthanc_id}/simplified-tags", timeout=30).json()
            uids.add(tags["SOPInstanceUID"])
        assert uids == held and len(held) == study.instance_count


def test_orthanc_pushes_a_study_through_the_gateway_into_the_pacs(
    orthanc_client: tuple[OrthancPacs, str], pacs_pool: dict[str, LocalPacs]
) -> None:
    client, _ = orthanc_client
    study = PUSHED[0]
    (orthanc_id,) = orthanc_rest(
        client, "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study.study_uid}}
    )
    assert find_uids(pacs_pool["dcmqrscp"], "STUDY", "StudyInstanceUID", StudyInstanceUID=study.study_uid) == set()
    # Orthanc sends the body chunked, with a boundary of two UUIDs (73 characters).
    orthanc_rest(client, "/dicom-web/servers/gateway/stow", {"Resources": [orthanc_id], "Synchronous": True})
    expected = {series.instance_uid(n) for series in study.series for n in range(1, series.instance_count + 1)}
    assert held_instances(pacs_pool["dcmqrscp"], study.study_uid) == expected


# -- OHIF's request patterns --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["orthanc", "dcmqrscp"])
def ohif_gateway(request: pytest.FixtureRequest, pacs_pool: dict[str, LocalPacs]) -> Iterator[str]:
    with gateway_for(pacs_pool[request.param], request.param) as root:
        yield root


def test_study_list_with_includefield_modality(ohif_gateway: str) -> None:
    # OHIF's study list asks for these fields by tag.
    response = httpx.get(f"{ohif_gateway}/studies", params={"limit": "101", "includefield": "00081030,00080060"})
    assert response.status_code == 200
    by_uid = {result["0020000D"]["Value"][0]: result for result in response.json()}
    for study in STUDIES:
        result = by_uid[study.study_uid]
        assert result["00081030"]["Value"] == [study.description]
        assert sorted(result["00080061"]["Value"]) == list(study.modalities)
        assert set(result.get("00080060", {}).get("Value", [])) <= set(study.modalities)


def test_several_study_uids_joined_with_a_backslash(ohif_gateway: str) -> None:
    wanted = [STUDIES[0].study_uid, STUDIES[3].study_uid]
    response = httpx.get(f"{ohif_gateway}/studies", params={"StudyInstanceUID": "\\".join(wanted)})
    assert response.status_code == 200
    assert sorted(tag_values(response.json(), "0020000D")) == sorted(wanted)
    series_uids = [STUDIES[0].series[0].series_uid, STUDIES[0].series[-1].series_uid]
    response = httpx.get(
        f"{ohif_gateway}/studies/{STUDIES[0].study_uid}/series", params={"SeriesInstanceUID": "\\".join(series_uids)}
    )
    assert sorted(tag_values(response.json(), "0020000E")) == sorted(set(series_uids))


def test_a_burst_of_parallel_frame_requests_as_ohif_sends_them(ohif_gateway: str) -> None:
    (ds,) = MULTIFRAME
    url = (
        f"{ohif_gateway}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/"
    )
    accept = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}  # unquoted, as OHIF
    pixels = np.asarray(ds.pixel_array)
    expected = [pixels[n].tobytes() for n in range(FRAMES)]

    def frame(number: int) -> tuple[int, bytes]:
        response = httpx.get(f"{url}{number}", headers=accept, timeout=120)
        body = response.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0] if response.status_code == 200 else b""
        return response.status_code, body

    with ThreadPoolExecutor(max_workers=FRAMES) as pool:
        parallel = list(pool.map(frame, range(1, FRAMES + 1)))
    assert [status for status, _ in parallel] == [200] * FRAMES
    sequential = [frame(number) for number in (1, FRAMES // 2, FRAMES)]
    assert [body for _, body in parallel] == expected
    assert [body for _, body in sequential] == [expected[0], expected[FRAMES // 2 - 1], expected[FRAMES - 1]]

    # The scrape counts them under the route's template, with the DIMSE operations that served them.
    scrape = httpx.get(ohif_gateway.rsplit("/", 1)[0] + "/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }
    route = "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"
    requests = samples[
        ("gateway_http_request_duration_seconds_count", (("method", "GET"), ("route", route), ("status", "200")))
    ]
    assert requests >= FRAMES + 3
    assert (
        samples[
            (
                "gateway_dimse_operation_duration_seconds_count",
                (("kind", "get"), ("outcome", "success"), ("upstream", "default")),
            )
        ]
        >= 1
    )
    assert str(ds.SOPInstanceUID) not in scrape


# -- Person names with non-ASCII characters in front of Orthanc ---------------------------------------------


def test_question_mark_matches_a_non_ascii_character_in_front_of_orthanc(pacs_pool: dict[str, LocalPacs]) -> None:
    orthanc = pacs_pool["orthanc"]
    assert isinstance(orthanc, OrthancPacs)
    # Orthanc's own C-FIND matches '?' against one byte: it finds Miller, but neither Müller nor Möller.
    assert find_uids(orthanc, "STUDY", "PatientID", PatientName="M?ller^J*") == {"NAMED3"}
    with gateway_for(orthanc, "orthanc") as root:
        response = httpx.get(f"{root}/studies", params={"PatientName": "M?ller^J*"})
        assert response.status_code == 200
        names = sorted(result["00100010"]["Value"][0]["Alphabetic"] for result in response.json())
        assert names == ["Miller^John", "Möller^Jan", "Müller^Jürgen"]
        exact = httpx.get(f"{root}/studies", params={"PatientName": "Müller^Jürgen"}).json()
        assert tag_values(exact, "00100020") == ["NAMED1"]
    # Orthanc holds the names as they were stored, whatever their character set.
    held = httpx.post(
        f"{orthanc.http_url}/tools/find",
        json={"Level": "Patient", "Query": {"PatientID": "NAMED*"}, "Expand": True},
        timeout=30,
    ).json()
    assert sorted(p["MainDicomTags"]["PatientName"] for p in held) == sorted(str(ds.PatientName) for ds in NAMED)
