"""Hostile requests through a live gateway in front of the fake PACS: each a precise 4xx, nothing malformed upstream.

- A path naming a series or instance under a study it does not belong to is a 404, also when the
  PACS (like this fake one, with ``get_on_unique_key``) retrieves on the unique key alone.
- Output sizes, frame counts and decoding work are bounded per request (400 above).
- Malformed numbers, media ranges and values are 400s, and the PACS never sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest
from pydicom.dataset import Dataset

from gateway.settings import Settings
from tests.conftest import live_gateway
from tests.fakepacs import FakePacs
from tests.images import image, ramp
from tests.integration.test_faults import INSTANCES, settings_for

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_1, SERIES_1 = "1.2.826.0.1.1", "1.2.826.0.1.1.1"
STUDY_2 = "1.2.826.0.1.2"
HUGE = "9" * 5000


def multiframe() -> Dataset:
    """A 3-frame 64x48 native image, as a CT instance (the SOP class the fake PACS sends)."""
    ds = image(ramp(64, 48, frames=3))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.9", "1.2.826.0.9.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.9.1.1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
    return ds


IMAGE = multiframe()
INSTANCE_URL = f"/studies/{IMAGE.StudyInstanceUID}/series/{IMAGE.SeriesInstanceUID}/instances/{IMAGE.SOPInstanceUID}"


@contextmanager
def gateway(pacs: FakePacs, **gateway_options: object) -> Iterator[tuple[str, Settings]]:
    settings = replace(settings_for(pacs.upstream), cache_max_bytes=50_000_000, **gateway_options)  # type: ignore[arg-type]
    with live_gateway(settings) as root:
        yield root, settings


@pytest.fixture(scope="module")
def unique_key_pacs() -> Iterator[tuple[FakePacs, str]]:
    with FakePacs([*INSTANCES, IMAGE], get_on_unique_key=True) as pacs, gateway(pacs) as (root, _):
        yield pacs, root


@pytest.mark.parametrize(
    "path",
    [
        f"/studies/{STUDY_2}/series/{SERIES_1}/metadata",
        f"/studies/{STUDY_2}/series/{SERIES_1}",
        f"/studies/{STUDY_2}/series/{SERIES_1}/instances/{SERIES_1}.1",
        f"/studies/{STUDY_2}/series/{SERIES_1}/instances/{SERIES_1}.1/metadata",
        f"/studies/{STUDY_2}/series/{SERIES_1}/rendered",
        f"/studies/{STUDY_2}/series/{SERIES_1}/thumbnail",
        f"/studies/{STUDY_1}/series/1.2.826.0.1.1.2/instances/{SERIES_1}.1/metadata",
        f"/studies/{IMAGE.StudyInstanceUID}/series/{SERIES_1}/instances/{IMAGE.SOPInstanceUID}/frames/1",
        f"/studies/{STUDY_2}/series/{IMAGE.SeriesInstanceUID}/instances/{IMAGE.SOPInstanceUID}/rendered",
    ],
)
def test_a_series_or_instance_under_another_study_is_a_404(unique_key_pacs: tuple[FakePacs, str], path: str) -> None:
    _, root = unique_key_pacs
    for attempt in ("cache miss", "after the right study was cached"):
        response = httpx.get(root + path, timeout=20)
        assert response.status_code == 404, (attempt, response.text)
        assert response.json()["title"] == "Not found"
        right = httpx.get(f"{root}/studies/{STUDY_1}/series/{SERIES_1}/metadata", timeout=20)
        assert right.status_code == 200 and len(right.json()) == 2


def test_the_right_study_still_answers_every_instance(unique_key_pacs: tuple[FakePacs, str]) -> None:
    _, root = unique_key_pacs
    retrieved = httpx.get(f"{root}/studies/{STUDY_1}/series/{SERIES_1}", timeout=20)
    assert retrieved.status_code == 200 and retrieved.content.count(b"Content-Type: application/dicom") == 2
    frames = httpx.get(root + INSTANCE_URL + "/frames/2", timeout=20)
    assert frames.status_code == 200 and len(frames.content) > 64 * 48 * 2


@pytest.fixture(scope="module")
def bounded() -> Iterator[tuple[FakePacs, str]]:
    limits = {"max_frames_per_request": 2, "max_rendered_size": 100, "max_decoded_pixels": 64 * 48 + 1}
    with FakePacs([*INSTANCES, IMAGE]) as pacs, gateway(pacs, **limits) as (root, _):
        yield pacs, root


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/frames/1,2,3", "max_frames_per_request"),
        ("/frames/1,1,1,1,1,1", "max_frames_per_request"),
        ("/rendered", "max_frames_per_request"),
        ("/rendered?viewport=30000,30000", "max_rendered_size"),
        ("/rendered?viewport=101,10", "max_rendered_size"),
        ("/thumbnail?viewport=99999,99999", "max_rendered_size"),
        ("/frames/1,2/rendered", "max_decoded_pixels"),
        (f"/frames/1/rendered?viewport={HUGE},10", "viewport"),
        (f"/frames/{HUGE}", "frame number"),
        (f"/frames/1/rendered?quality={HUGE}", "quality"),
        ("/frames/\u0661", "frame number"),
    ],
)
def test_work_above_a_bound_is_a_400_naming_it(bounded: tuple[FakePacs, str], path: str, message: str) -> None:
    _, root = bounded
    response = httpx.get(root + INSTANCE_URL + path, timeout=20)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_work_within_the_bounds_is_answered(bounded: tuple[FakePacs, str]) -> None:
    _, root = bounded
    # Native frames are not decoded: two of them are within every bound.
    assert httpx.get(root + INSTANCE_URL + "/frames/1,2", timeout=20).status_code == 200
    assert httpx.get(root + INSTANCE_URL + "/frames/2/rendered?viewport=100,100", timeout=20).status_code == 200
    assert httpx.get(root + INSTANCE_URL + "/thumbnail", timeout=20).status_code == 200


def test_frames_above_the_bound_are_refused_before_anything_is_retrieved(bounded: tuple[FakePacs, str]) -> None:
    pacs, root = bounded
    before = len(pacs.received)
    other = INSTANCE_URL.replace(".9.1.1", ".9.1.7")
    assert httpx.get(root + other + "/frames/1,2,3", timeout=20).status_code == 400
    assert httpx.get(root + other + "/rendered?viewport=5000,10", timeout=20).status_code == 400
    assert len(pacs.received) == before


@pytest.mark.parametrize(
    "path",
    [
        INSTANCE_URL + "/frames/1",
        INSTANCE_URL + "/rendered",
        INSTANCE_URL + "/thumbnail",
        INSTANCE_URL,
        f"/studies/{IMAGE.StudyInstanceUID}",
        INSTANCE_URL + "/bulkdata/7FE00010",
        INSTANCE_URL + "/metadata",
        "/studies",
    ],
)
@pytest.mark.parametrize("accept", [";", "; q=1", ",;,"])
def test_an_accept_header_without_a_media_range_is_a_4xx(bounded: tuple[FakePacs, str], path: str, accept: str) -> None:
    _, root = bounded
    response = httpx.get(root + path, headers={"Accept": accept}, timeout=20)
    assert response.status_code in (400, 406), response.text
    assert response.json()["status"] == response.status_code


@pytest.mark.parametrize(
    "query",
    [
        f"limit={HUGE}",
        f"offset={HUGE}",
        "limit=\u0661\u0662",
        "limit=\uff11",
        "StudyDate=\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661",
        "PatientID=" + "A" * 65,
        "AccessionNumber=" + "A" * 17,
        "PatientName=%FF%FE",
        "StudyDescription=a%C3",
        "ModalitiesInStudy=ct",
        f"NumberOfStudyRelatedInstances={HUGE}",
    ],
)
def test_malformed_query_values_are_400s_that_never_reach_the_pacs(bounded: tuple[FakePacs, str], query: str) -> None:
    pacs, root = bounded
    before = len(pacs.received)
    response = httpx.get(f"{root}/studies?{query}", timeout=20)
    assert response.status_code == 400, response.text
    assert len(pacs.received) == before


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/studies", "GET, POST"),
        (f"/studies/{IMAGE.StudyInstanceUID}", "GET, POST"),
        (INSTANCE_URL, "GET"),
        (INSTANCE_URL + "/metadata", "GET"),
        (INSTANCE_URL + "/frames/1", "GET"),
        (INSTANCE_URL + "/rendered", "GET"),
        (f"/studies/{IMAGE.StudyInstanceUID}/series", "GET"),
    ],
)
def test_head_on_a_dicomweb_resource_is_a_405_that_costs_the_pacs_nothing(
    bounded: tuple[FakePacs, str], path: str, allowed: str
) -> None:
    pacs, root = bounded
    before, associations = len(pacs.received), pacs.associations
    response = httpx.head(root + path, timeout=20)
    assert response.status_code == 405 and response.headers["allow"] == allowed
    assert (len(pacs.received), pacs.associations) == (before, associations)
    assert httpx.head(root.rsplit("/", 1)[0] + "/health", timeout=20).status_code == 200
