"""QIDO-RS (PS3.18 §10.6): parse -> search over C-FIND -> stream DICOM JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.auth.audit import AuditRecord
from gateway.auth.patient import PATIENT_SCOPE_KEY, answer_is_patients, narrow_to_patient
from gateway.errors import GatewayError
from gateway.query.attributes import QueryLevel
from gateway.query.dicomjson import dataset_to_json, empty_elements, encode_json
from gateway.query.params import MatchType, parse_qido_query
from gateway.routes.common import DICOM_JSON, ServiceRoot, require_json_accept
from gateway.search.engine import Searcher, SearchPlan, plan_search
from gateway.settings import Settings

__all__ = ["search_for_instances", "search_for_series", "search_for_studies"]

logger = logging.getLogger(__name__)

_RETRIEVE_URL = "00081190"
_TOO_MANY = '"The number of results exceeded the maximum supported by the server. Additional results can be requested."'


def _retrieve_url(root: str, dataset: Dataset, level: QueryLevel) -> str | None:
    url = root
    for current, keyword, segment in (
        (QueryLevel.STUDY, "StudyInstanceUID", "studies"),
        (QueryLevel.SERIES, "SeriesInstanceUID", "series"),
        (QueryLevel.IMAGE, "SOPInstanceUID", "instances"),
    ):
        uid = str(dataset.get(keyword, "")).rstrip("\x00 ")
        if not uid:
            return None
        url += f"/{segment}/{uid}"
        if current is level:
            return url
    return None


def _to_json(dataset: Dataset, plan: SearchPlan, root: str, absent: dict[str, Any]) -> dict[str, Any]:
    # A queried attribute is always answered (PS3.18 §10.6.3.3), empty when the PACS had no value.
    result = {**absent, **dataset_to_json(dataset, keep=plan.output_tags)}
    url = _retrieve_url(root, dataset, plan.level)
    if url is not None:
        result[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return dict(sorted(result.items()))


async def _search(request: Request, level: QueryLevel) -> Response:
    require_json_accept(request)
    service: ServiceRoot = request.scope["gateway.service"]
    settings: Settings = request.app.state.settings
    query = parse_qido_query(
        level,
        request.query_params.multi_items(),
        study_uid=request.path_params.get("study"),
        series_uid=request.path_params.get("series"),
    )
    patient: str | None = request.scope.get(PATIENT_SCOPE_KEY)
    if patient is not None:
        narrowed = narrow_to_patient(query, patient)
        if narrowed is None:
            return Response(status_code=204)  # the query names other patients only
        query = narrowed
    named = query.key("PatientID")
    audit: AuditRecord | None = request.scope.get("gateway.audit")
    if audit is not None and named is not None and named.match_type is MatchType.SINGLE:
        audit.patients.add(named.values[0])  # the one patient this search is about
    capped = settings.max_results and (query.limit is None or query.limit > settings.max_results)
    if capped:
        # One more than the cap, to tell "exactly the cap" from "more than the cap".
        query = replace(query, limit=settings.max_results + 1)
    upstream = service.upstream
    caps = await upstream.capabilities.get(upstream.client)
    plan = plan_search(query, caps)
    results = Searcher(upstream.client, caps, plan, settings.fanout_concurrency, upstream.stale_aggregates).search(
        query
    )
    if patient is not None:
        results = _only_patient(results, patient)

    # Gather the first results before committing to a status, so that a PACS failing early is
    # answered with a proper 502/504 rather than a truncated 200.
    window = settings.max_results + 1 if capped else settings.prefetch_results
    first: list[Dataset] = []
    finished = False
    try:
        while len(first) < window:
            first.append(await anext(results))
    except StopAsyncIteration:
        finished = True
    except BaseException:
        await results.aclose()
        raise

    headers: dict[str, str] = {}
    host = request.url.hostname or "gateway"
    warnings = [f'299 {host}: "{text}"' for text in plan.warnings]
    if capped and len(first) > settings.max_results:
        first = first[: settings.max_results]
        warnings.append(f"299 {host}: {_TOO_MANY}")
        finished = True
        await results.aclose()
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    if not first and finished:
        return Response(status_code=204, headers=headers)
    body = _stream_json(first, None if finished else results, plan, service.root_url(request))
    return StreamingResponse(body, media_type=DICOM_JSON, headers=headers)


async def _only_patient(results: AsyncGenerator[Dataset, None], patient: str) -> AsyncGenerator[Dataset, None]:
    """The answers of a patient-bound search, each checked again: the PACS may ignore a key."""
    async with aclosing(results):
        async for dataset in results:
            if answer_is_patients(dataset, patient):
                yield dataset
            else:
                logger.warning(
                    "QIDO-RS: dropped an answer of another patient the PACS matched to PatientID %s", patient
                )


async def _stream_json(
    first: list[Dataset], rest: AsyncIterator[Dataset] | None, plan: SearchPlan, root: str
) -> AsyncIterator[bytes]:
    absent = empty_elements(plan.output_tags or ())
    separator = b"["
    for dataset in first:
        yield separator + encode_json(_to_json(dataset, plan, root, absent))
        separator = b","
    if rest is not None:
        async with aclosing(rest):  # type: ignore[type-var]
            try:
                async for dataset in rest:
                    yield separator + encode_json(_to_json(dataset, plan, root, absent))
                    separator = b","
            except GatewayError as exc:
                # The status line is gone; ending the body early makes the client see a broken
                # answer instead of a short one that looks complete (PS3.4 C.4.1.3.1).
                logger.error("QIDO-RS answer aborted after it started: %s", exc.detail)
                raise
    yield b"]" if separator == b"," else b"[]"


async def search_for_studies(request: Request) -> Response:
    """``GET /studies``."""
    return await _search(request, QueryLevel.STUDY)


async def search_for_series(request: Request) -> Response:
    """``GET /series`` and ``GET /studies/{study}/series``."""
    return await _search(request, QueryLevel.SERIES)


async def search_for_instances(request: Request) -> Response:
    """``GET /instances``, ``GET /studies/{study}/instances`` and ``.../series/{series}/instances``."""
    return await _search(request, QueryLevel.IMAGE)
