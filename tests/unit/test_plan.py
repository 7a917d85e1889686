"""plan_search: which keys the PACS gets, which the gateway checks, which levels are queried."""

from __future__ import annotations

from dataclasses import replace

from gateway.query.attributes import QueryLevel, tag
from gateway.query.params import parse_qido_query
from gateway.search.engine import plan_search
from gateway.settings import PROFILES, Capabilities

CAPABLE = PROFILES["orthanc"]
LEGACY = PROFILES["legacy"]


def keywords(keys) -> set[str]:
    return {k.keyword for k in keys}


def test_legacy_pacs_gets_no_modalities_in_study_and_gateway_matches_it() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "CT,PT"), ("PatientID", "P1")])
    plan = plan_search(query, LEGACY)
    assert plan.levels == (QueryLevel.STUDY,)
    assert keywords(plan.upstream_keys[QueryLevel.STUDY]) == {"PatientID"}
    assert keywords(plan.local_keys[QueryLevel.STUDY]) == {"ModalitiesInStudy", "PatientID"}
    assert tag("ModalitiesInStudy") in plan.return_tags[QueryLevel.STUDY]


def test_capable_pacs_gets_every_key() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "CT,PT"), ("PatientName", "doe*")])
    plan = plan_search(query, CAPABLE)
    assert keywords(plan.upstream_keys[QueryLevel.STUDY]) == {"ModalitiesInStudy", "PatientName"}


def test_case_sensitive_pacs_gets_no_person_name() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("PatientName", "doe*")])
    assert keywords(plan_search(query, LEGACY).upstream_keys[QueryLevel.STUDY]) == set()


def test_relational_series_query_fans_out_on_a_hierarchical_pacs() -> None:
    query = parse_qido_query(QueryLevel.SERIES, [("Modality", "PT"), ("PatientID", "P1")])
    plan = plan_search(query, LEGACY)
    assert plan.levels == (QueryLevel.STUDY, QueryLevel.SERIES)
    assert keywords(plan.upstream_keys[QueryLevel.STUDY]) == {"PatientID"}
    assert keywords(plan.upstream_keys[QueryLevel.SERIES]) == {"Modality"}
    # /series answers carry the study attributes too (PS3.18 Table 10.6.3-4)
    assert plan.output_tags is not None and tag("PatientName") in plan.output_tags


def test_relational_series_query_is_direct_on_a_relational_pacs() -> None:
    query = parse_qido_query(QueryLevel.SERIES, [("Modality", "PT")])
    plan = plan_search(query, CAPABLE)
    assert plan.levels == (QueryLevel.SERIES,)


def test_series_of_a_study_is_one_hierarchical_query() -> None:
    query = parse_qido_query(QueryLevel.SERIES, [], study_uid="1.2.3")
    plan = plan_search(query, LEGACY)
    assert plan.levels == (QueryLevel.SERIES,)
    assert keywords(plan.upstream_keys[QueryLevel.SERIES]) == {"StudyInstanceUID"}
    assert plan.output_tags is not None and tag("PatientName") not in plan.output_tags


def test_instances_of_a_study_go_through_its_series() -> None:
    query = parse_qido_query(QueryLevel.IMAGE, [], study_uid="1.2.3")
    plan = plan_search(query, LEGACY)
    assert plan.levels == (QueryLevel.SERIES, QueryLevel.IMAGE)


def test_all_instances_fan_out_from_studies() -> None:
    plan = plan_search(parse_qido_query(QueryLevel.IMAGE, []), LEGACY)
    assert plan.levels == (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)


def test_combined_date_time_is_left_to_the_pacs() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("StudyDate", "20200101-20200102"), ("StudyTime", "2300-0100")])
    plan = plan_search(query, LEGACY)
    assert keywords(plan.local_keys[QueryLevel.STUDY]) == set()


def test_fuzzy_matching_unsupported_is_a_warning() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("fuzzymatching", "true")])
    assert plan_search(query, LEGACY).warnings == ("fuzzymatching not supported",)
    assert plan_search(parse_qido_query(QueryLevel.STUDY, []), LEGACY).warnings == ()


def test_includefield_all_returns_everything() -> None:
    plan = plan_search(parse_qido_query(QueryLevel.STUDY, [("includefield", "all")]), LEGACY)
    assert plan.output_tags is None
    assert tag("StudyDescription") in plan.return_tags[QueryLevel.STUDY]


def test_question_mark_is_widened_upstream_and_matched_exactly_here() -> None:
    # Orthanc's C-FIND does not match '?' against a multi-byte character (M?ller vs Müller in UTF-8).
    query = parse_qido_query(QueryLevel.STUDY, [("PatientName", "M?ller^J*"), ("PatientID", "??-1")])
    plan = plan_search(query, CAPABLE)
    sent = {k.keyword: k.values for k in plan.upstream_keys[QueryLevel.STUDY]}
    assert sent == {"PatientName": ("M*ller^J*",), "PatientID": ("*-1",)}
    checked = {k.keyword: k.values for k in plan.local_keys[QueryLevel.STUDY]}
    assert checked == {"PatientName": ("M?ller^J*",), "PatientID": ("??-1",)}


def test_nested_keys_are_sent_as_given_since_they_are_not_rechecked() -> None:
    query = parse_qido_query(QueryLevel.SERIES, [("00400275.00401001", "RP?")])
    (key,) = plan_search(query, CAPABLE).upstream_keys[QueryLevel.SERIES]
    assert key.values == ("RP?",)


def test_uid_lists_go_upstream_only_where_they_work() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("StudyInstanceUID", "1.2.3\\1.2.4")])
    assert keywords(plan_search(query, CAPABLE).upstream_keys[QueryLevel.STUDY]) == {"StudyInstanceUID"}
    assert keywords(plan_search(query, PROFILES["dcmqrscp"]).upstream_keys[QueryLevel.STUDY]) == {"StudyInstanceUID"}
    qrscp = plan_search(query, PROFILES["qrscp"])
    assert keywords(qrscp.upstream_keys[QueryLevel.STUDY]) == set()
    assert keywords(qrscp.local_keys[QueryLevel.STUDY]) == {"StudyInstanceUID"}


def test_untrusted_modalities_in_study_is_matched_through_a_series_query_on_a_relational_pacs() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "PT"), ("PatientID", "P1")])
    fresh = replace(CAPABLE, trusted_aggregates=False)
    plan = plan_search(query, fresh)
    assert plan.modality_series_key is not None and plan.modality_series_key.values == ("PT",)
    assert keywords(plan.upstream_keys[QueryLevel.STUDY]) == {"PatientID"}
    # Trusted: the PACS matches it itself. Hierarchical: the gateway matches the derived values.
    assert plan_search(query, CAPABLE).modality_series_key is None
    assert plan_search(query, LEGACY).modality_series_key is None
    assert plan_search(parse_qido_query(QueryLevel.STUDY, [("PatientID", "P1")]), fresh).modality_series_key is None


def test_probed_capabilities_never_trust_the_pacs_aggregates() -> None:
    probed = Capabilities(
        relational=True, list_matching=True, case_insensitive_pn=True, uid_list_matching=True, instances_by_study=True
    )
    assert probed.complete and not probed.trusted_aggregates
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "CT,PT")])
    assert keywords(plan_search(query, probed).upstream_keys[QueryLevel.STUDY]) == set()
