"""Bundles of type searchset (FHIR R5 §3.2.1.3, the same shape in R4)."""

from __future__ import annotations

from typing import Any

__all__ = ["entry", "searchset"]


def entry(full_url: str, resource: dict[str, Any], mode: str = "match") -> dict[str, Any]:
    """One Bundle entry: ``search.mode`` is ``match`` for a result, ``include`` for an _include."""
    return {"fullUrl": full_url, "resource": resource, "search": {"mode": mode}}


def searchset(
    entries: list[dict[str, Any]], *, self_url: str, next_url: str | None = None, total: int | None = None
) -> dict[str, Any]:
    """A searchset Bundle; `total` only when it is known (``_summary=count``, or a last page)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle
