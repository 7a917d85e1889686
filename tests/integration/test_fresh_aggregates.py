"""Never stale (requirement G5): ModalitiesInStudy and the counts come from the series the PACS holds now.

The in-process PACS here holds its own study-level values, written when a study's first series
(CT, 3 instances) arrived and never re-aggregated after a PT series (2 instances) joined it: it
answers and matches ModalitiesInStudy ``CT``, 1 series and 3 instances. It also holds a stale
series count. The gateway must answer from the series and instances, count the disagreement in
``/health``, and pass the PACS's values through only for an upstream configured as trusted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from gateway.settings import Capabilities, Settings, load_settings
from tests.conftest import live_gateway
from tests.fakepacs import FakePacs, Fault

PET_CT = "1.2.826.0.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_SERIES = f"{PET_CT}.1"
PT_SERIES = f"{PET_CT}.2"


def instance(study: str, series: int, number: int, modality: str, patient: str = "P1") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.{series}"
    ds.SOPInstanceUID = f"{study}.{series}.{number}"
    ds.SOPClassUID = CT_IMAGE if modality == "CT" else PET_IMAGE
    ds.Modality = modality
    ds.PatientName = f"Patient^{patient}"
    ds.PatientID = patient
    ds.StudyDate = "20240101"
    ds.SeriesNumber = series
    ds.InstanceNumber = number
    return ds


def pacs_content(ct_only_studies: int) -> tuple[list[Dataset], dict[str, dict[str, object]]]:
    """The PET/CT study with stale study-level values, and `ct_only_studies` CT studies whose
    held values are right (2 instances each)."""
    instances = [instance(PET_CT, 1, n, "CT") for n in (1, 2, 3)] + [instance(PET_CT, 2, n, "PT") for n in (1, 2)]
    held: dict[str, dict[str, object]] = {
        PET_CT: {
            "ModalitiesInStudy": "CT",
            "NumberOfStudyRelatedSeries": 1,
            "NumberOfStudyRelatedInstances": 3,
            "SOPClassesInStudy": CT_IMAGE,
        },
        CT_SERIES: {"NumberOfSeriesRelatedInstances": 1},
    }
    for index in range(ct_only_studies):
        study = f"1.2.826.0.3.{index + 1}"
        instances += [instance(study, 1, n, "CT", patient=f"C{index}") for n in (1, 2)]
        held[study] = {"ModalitiesInStudy": "CT", "NumberOfStudyRelatedSeries": 1, "NumberOfStudyRelatedInstances": 2}
    return instances, held


def settings_for(pacs: FakePacs, profile: str, **capabilities: bool) -> Settings:
    settings = load_settings(None, upstream=pacs.upstream)
    upstream = replace(settings.default_upstream, profile=profile, capabilities=Capabilities(**capabilities))
    return replace(settings, upstreams=(upstream,))


@contextmanager
def gateway(pacs: FakePacs, profile: str = "auto", **capabilities: bool) -> Iterator[str]:
    with live_gateway(settings_for(pacs, profile, **capabilities)) as root:
        yield root


def get(url: str, **params: object) -> list[dict[str, Any]]:
    response = httpx.get(url, params=params, timeout=20)  # type: ignore[arg-type]
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def value(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def by_uid(results: list[dict[str, Any]], tag: str = "0020000D") -> dict[str, dict[str, Any]]:
    return {value(r, tag): r for r in results}


def health(root: str) -> dict[str, Any]:
    return httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()  # type: ignore[no-any-return]


def assert_fresh_pet_ct(result: dict[str, Any]) -> None:
    assert result["00080061"]["Value"] == ["CT", "PT"]
    assert value(result, "00201206") == 2
    assert value(result, "00201208") == 5


@pytest.mark.parametrize("relational", [True, False], ids=["relational", "hierarchical"])
def test_stale_pacs_gets_fresh_answers_and_the_disagreement_is_counted(relational: bool) -> None:
    instances, held = pacs_content(3)
    # profile "auto": probing learns what the C-FIND does; answering the aggregates earns no trust.
    with FakePacs(instances, relational=relational, held=held) as pacs, gateway(pacs) as root:
        found = get(f"{root}/studies", ModalitiesInStudy="PT")
        assert list(by_uid(found)) == [PET_CT]
        assert_fresh_pet_ct(found[0])

        everything = by_uid(get(f"{root}/studies"))
        assert len(everything) == 4
        assert_fresh_pet_ct(everything[PET_CT])
        for uid, result in everything.items():
            if uid != PET_CT:
                assert result["00080061"]["Value"] == ["CT"] and value(result, "00201208") == 2

        both = by_uid(get(f"{root}/studies", ModalitiesInStudy="CT,PT"))
        assert len(both) == 4
        assert_fresh_pet_ct(both[PET_CT])

        by_class = get(f"{root}/studies", SOPClassesInStudy=PET_IMAGE)
        assert list(by_uid(by_class)) == [PET_CT]
        assert set(by_class[0]["00080062"]["Value"]) == {CT_IMAGE, PET_IMAGE}

        series = by_uid(get(f"{root}/studies/{PET_CT}/series"), "0020000E")
        assert {uid: value(r, "00201209") for uid, r in series.items()} == {CT_SERIES: 3, PT_SERIES: 2}
        relational_series = by_uid(get(f"{root}/series", Modality="CT", PatientID="P1"), "0020000E")
        assert value(relational_series[CT_SERIES], "00201209") == 3
        assert_fresh_pet_ct(relational_series[CT_SERIES])  # /series carries the study's attributes

        # Only the PET/CT study disagrees, counted once per request whose answers carried its
        # values: four study searches, and (hierarchical) /series, whose STUDY C-FIND carries them.
        assert health(root)["stale_aggregates"] == {"default": 4 if relational else 5}


def test_trusted_upstream_passes_the_pacs_values_through() -> None:
    instances, held = pacs_content(3)
    with FakePacs(instances, relational=True, held=held) as pacs, gateway(pacs, "orthanc") as root:
        # The PACS matched on its own (stale) ModalitiesInStudy: trusted, so the study is missed.
        assert get(f"{root}/studies", ModalitiesInStudy="PT") == []
        result = by_uid(get(f"{root}/studies"))[PET_CT]
        assert result["00080061"]["Value"] == ["CT"]
        assert value(result, "00201206") == 1 and value(result, "00201208") == 3
        assert health(root)["stale_aggregates"] == {"default": 0}
        assert pacs.finds["IMAGE"] == 0


def test_configuration_can_withdraw_the_trust_of_a_profile() -> None:
    instances, held = pacs_content(1)
    with (
        FakePacs(instances, relational=True, held=held) as pacs,
        gateway(pacs, "orthanc", trusted_aggregates=False) as root,
    ):
        found = get(f"{root}/studies", ModalitiesInStudy="PT")
        assert list(by_uid(found)) == [PET_CT]
        assert_fresh_pet_ct(found[0])


def c_finds(studies: int, path: str, **params: object) -> tuple[dict[str, int], int]:
    """C-FINDs per level for one request in front of a relational PACS with `studies` CT studies
    (and the PET/CT one), and the number of results."""
    instances, held = pacs_content(studies)
    with (
        FakePacs(instances, relational=True, held=held) as pacs,
        gateway(pacs, "orthanc", trusted_aggregates=False) as root,
    ):
        results = get(f"{root}{path}", **params)
        return dict(pacs.finds), len(results)


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        # SERIES on Modality=CT, STUDY by UID list, then the page's SERIES and IMAGE by UID list.
        ("/studies", {"ModalitiesInStudy": "CT"}, {"SERIES": 2, "STUDY": 1, "IMAGE": 1}),
        # The default study list: STUDY, then the page's SERIES and IMAGE by UID list.
        ("/studies", {}, {"STUDY": 1, "SERIES": 1, "IMAGE": 1}),
        # All series with their study's attributes: SERIES, then IMAGE and SERIES by UID list.
        ("/series", {"Modality": "CT"}, {"SERIES": 2, "IMAGE": 1}),
    ],
)
def test_c_finds_do_not_grow_with_the_number_of_studies(
    path: str, params: dict[str, object], expected: dict[str, int]
) -> None:
    few, few_results = c_finds(4, path, **params)
    many, many_results = c_finds(40, path, **params)
    assert many_results > few_results
    assert few == many == expected


def test_only_the_page_gets_aggregates() -> None:
    instances, held = pacs_content(40)
    with (
        FakePacs(instances, relational=True, held=held) as pacs,
        gateway(pacs, "orthanc", trusted_aggregates=False) as root,
    ):
        page = get(f"{root}/studies", limit=3, offset=5)
        assert len(page) == 3
        image_queries = [q for q in pacs.received if q.QueryRetrieveLevel == "IMAGE"]
        assert len(image_queries) == 1
        assert sorted(image_queries[0].StudyInstanceUID) == sorted(value(r, "0020000D") for r in page)


def test_hierarchical_pacs_counts_instances_of_the_page_only() -> None:
    instances, held = pacs_content(10)
    with FakePacs(instances, relational=False, held=held) as pacs, gateway(pacs, "legacy") as root:
        page = get(f"{root}/studies", ModalitiesInStudy="CT", limit=2)
        assert len(page) == 2
        # The modalities of every candidate study (one SERIES C-FIND each, hierarchical), the
        # instances of the page's series only.
        assert pacs.finds["SERIES"] <= 11
        assert pacs.finds["IMAGE"] == sum(value(r, "00201206") for r in page)


def test_failure_while_deriving_is_a_502() -> None:
    instances, held = pacs_content(3)
    fault = Fault("status", after=1, status=0xA700, level="IMAGE")
    with (
        FakePacs(instances, relational=True, held=held, fault=fault) as pacs,
        gateway(pacs, "orthanc", trusted_aggregates=False) as root,
    ):
        response = httpx.get(f"{root}/studies", timeout=10)
    assert response.status_code == 502
    assert response.json()["dimseStatus"] == "0xA700"


def hierarchical_answers(by_study: bool, path: str, **params: object) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The answer to one request in front of a hierarchical PACS (7 studies; the PET/CT one with
    stale values) that does or does not answer an IMAGE C-FIND by study alone, and its C-FINDs."""
    instances, held = pacs_content(6)
    with (
        FakePacs(instances, relational=False, held=held, instances_by_study=by_study) as pacs,
        gateway(pacs, "legacy", instances_by_study=by_study) as root,
    ):
        return get(f"{root}{path}", **params), dict(pacs.finds)


def without_urls(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`results` without RetrieveURL (it names the gateway's port)."""
    return [{tag: element for tag, element in r.items() if tag != "00081190"} for r in results]


def test_hierarchical_pacs_counts_a_study_by_one_image_c_find() -> None:
    per_series, per_series_finds = hierarchical_answers(False, "/studies")
    by_study, by_study_finds = hierarchical_answers(True, "/studies")
    assert without_urls(by_study) == without_urls(per_series)
    assert_fresh_pet_ct(by_uid(by_study)[PET_CT])
    assert value(by_uid(by_study)[PET_CT], "00201208") == 5
    # One SERIES C-FIND per study, then one IMAGE C-FIND per series (the PET/CT study has two);
    # with instances_by_study one IMAGE C-FIND per study, which names the series and their Modality.
    assert per_series_finds == {"STUDY": 1, "SERIES": 7, "IMAGE": 8}
    assert by_study_finds == {"STUDY": 1, "IMAGE": 7}


@pytest.mark.parametrize("by_study", [False, True], ids=["per-series", "by-study"])
def test_hierarchical_pacs_matches_modalities_with_one_c_find_per_study(by_study: bool) -> None:
    answers, finds = hierarchical_answers(by_study, "/studies", ModalitiesInStudy="PT")
    assert [value(r, "0020000D") for r in answers] == [PET_CT]
    assert_fresh_pet_ct(answers[0])
    assert value(answers[0], "00201208") == 5
    # The modalities of every study by one SERIES C-FIND each, then the match's instances by one
    # IMAGE C-FIND per series; or (by study) one IMAGE C-FIND per study, which gives both.
    assert finds == ({"STUDY": 1, "IMAGE": 7} if by_study else {"STUDY": 1, "SERIES": 7, "IMAGE": 2})


@pytest.mark.parametrize("by_study", [False, True], ids=["per-series", "by-study"])
def test_hierarchical_series_search_runs_its_study_c_finds_together_in_order(by_study: bool) -> None:
    answers, finds = hierarchical_answers(by_study, "/series", Modality="CT")
    # Every study's series, in the PACS's order: the PET/CT study's CT series first, then one per CT study.
    assert [value(r, "0020000E") for r in answers] == [CT_SERIES] + [f"1.2.826.0.3.{i}.1" for i in range(1, 7)]
    assert value(answers[0], "00201209") == 3
    assert_fresh_pet_ct(answers[0])
    # A SERIES C-FIND per study finds the series; the study attributes each answer carries take a
    # second one per study, or (by study) an IMAGE C-FIND per study that also counts the series.
    assert finds == ({"STUDY": 1, "SERIES": 7, "IMAGE": 7} if by_study else {"STUDY": 1, "SERIES": 14, "IMAGE": 8})
