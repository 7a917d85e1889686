"""What each upstream's C-FIND can do: configured, or learned by probing it.

With ``profile = "auto"`` the gateway asks the PACS a handful of small C-FINDs (each cancelled
after its first answers) the first time it is queried:

- a SERIES query without StudyInstanceUID: an answer -> relational queries work;
- the first study's PatientName with its case swapped: still found -> PN matching ignores case;
- the first series' Modality as a list with a value that cannot exist: still found -> list
  matching works;
- the first study's UID in a list with a UID that cannot exist: still found -> UID list matching
  works (pynetdicom's qrscp answers 0xC320);
- an IMAGE query with the first study's UID alone: answers carrying a series UID and a Modality
  -> a study's instances can be counted by one C-FIND (dcmqrscp and qrscp do it).

An empty PACS answers none of these; the flags then stay unknown (treated as unsupported, which
is always correct, only slower) and the probe runs again on a later query. Flags set in the
configuration always win over probed ones.

Whether the PACS's ModalitiesInStudy and counts can be trusted is never probed: a PACS that
answers them may answer values written when the first series arrived (requirement G5), and no
answer tells a fresh value from a stale one.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import replace

import anyio
from pydicom.dataset import Dataset

from gateway.dimse.client import UpstreamClient
from gateway.errors import UpstreamError, UpstreamFailureStatus
from gateway.query.attributes import QueryLevel, tag
from gateway.query.identifier import build_identifier
from gateway.query.params import MatchKey, MatchType
from gateway.settings import Capabilities, UpstreamSettings

__all__ = ["CapabilityTracker"]

logger = logging.getLogger(__name__)

_REPROBE_AFTER = 30.0
_IMPOSSIBLE_UID = "2.25.0"
"""A valid UID no instance has (the UUID-derived root with the nil UUID)."""


def _key(keyword: str, vr: str, value: str) -> MatchKey:
    return MatchKey((tag(keyword),), keyword, vr, MatchType.SINGLE, (value,))


async def _answers(client: UpstreamClient, level: QueryLevel, keys: list[MatchKey], returns: list[str]) -> bool:
    """Whether a probe query finds anything; a failure status counts as "no" (dcmqrscp answers
    C000 to a SERIES query without StudyInstanceUID)."""
    try:
        return bool(await _first(client, level, keys, returns))
    except UpstreamFailureStatus:
        return False


async def _first(
    client: UpstreamClient, level: QueryLevel, keys: list[MatchKey], returns: list[str], count: int = 1
) -> list[Dataset]:
    found: list[Dataset] = []
    identifier = build_identifier(level, keys, [tag(k) for k in returns])
    async with aclosing(client.find(identifier)) as responses:  # type: ignore[type-var]
        async for dataset in responses:
            found.append(dataset)
            if len(found) >= count:
                break
    return found


async def probe(client: UpstreamClient) -> Capabilities:
    """Learn what the upstream's C-FIND does, from its own answers (see the module docstring)."""
    studies = await _first(client, QueryLevel.STUDY, [], ["StudyInstanceUID", "PatientName"], 5)
    if not studies:
        return Capabilities()
    relational = await _answers(client, QueryLevel.SERIES, [], ["SeriesInstanceUID"])

    case_insensitive: bool | None = None
    named = next((ds for ds in studies if any(c.isalpha() for c in str(ds.get("PatientName", "")))), None)
    if named is not None:
        name = str(named.PatientName)
        study = _key("StudyInstanceUID", "UI", named.StudyInstanceUID)
        exact = await _first(client, QueryLevel.STUDY, [study, _key("PatientName", "PN", name)], ["StudyInstanceUID"])
        swapped = await _first(
            client, QueryLevel.STUDY, [study, _key("PatientName", "PN", name.swapcase())], ["StudyInstanceUID"]
        )
        case_insensitive = bool(exact) and bool(swapped)

    list_matching: bool | None = None
    study = _key("StudyInstanceUID", "UI", studies[0].StudyInstanceUID)
    series = await _first(client, QueryLevel.SERIES, [study], ["SeriesInstanceUID", "Modality"])
    if series and series[0].get("Modality"):
        impossible = MatchKey((tag("Modality"),), "Modality", "CS", MatchType.LIST, (series[0].Modality, "ZZ"))
        list_matching = await _answers(client, QueryLevel.SERIES, [study, impossible], ["SeriesInstanceUID"])

    uids = MatchKey(study.path, study.keyword, "UI", MatchType.LIST, (*study.values, _IMPOSSIBLE_UID))
    uid_list_matching = await _answers(client, QueryLevel.STUDY, [uids], ["StudyInstanceUID"])
    instances_by_study = await _instances_by_study(client, study)

    return Capabilities(
        relational=relational,
        list_matching=list_matching,
        case_insensitive_pn=case_insensitive,
        uid_list_matching=uid_list_matching,
        instances_by_study=instances_by_study,
    )


async def _instances_by_study(client: UpstreamClient, study: MatchKey) -> bool:
    """Whether an IMAGE C-FIND by StudyInstanceUID alone answers instances with their series and Modality."""
    returns = ["SeriesInstanceUID", "Modality", "SOPInstanceUID"]
    try:
        found = await _first(client, QueryLevel.IMAGE, [study], returns)
    except UpstreamFailureStatus:
        return False
    return bool(found) and all(str(found[0].get(keyword, "")).strip() for keyword in returns)


class CapabilityTracker:
    """The current capabilities of one upstream."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._current = settings.configured_capabilities
        self._lock = anyio.Lock()
        self._next_probe = 0.0

    @property
    def current(self) -> Capabilities:
        """What is known now (``None`` flags are treated as unsupported)."""
        return self._current

    async def get(self, client: UpstreamClient) -> Capabilities:
        """The capabilities to plan a query with; probes the PACS first when that is due."""
        if self._settings.profile != "auto" or self._current.complete or time.monotonic() < self._next_probe:
            return self._current
        async with self._lock:
            if time.monotonic() >= self._next_probe and not self._current.complete:
                self._next_probe = time.monotonic() + _REPROBE_AFTER
                try:
                    probed = await probe(client)
                except UpstreamError as exc:
                    logger.warning("upstream %s: capability probe failed: %s", self._settings.name, exc.detail)
                else:
                    self._current = replace(probed.merged(self._settings.capabilities))
                    logger.info("upstream %s: capabilities %s", self._settings.name, self._current)
        return self._current
