"""A seeded fuzz over every operation of openapi/openapi.json: bad input is never a 5xx.

A hand-written generator (no dependency) fills each operation's path, query and header parameters
with well-formed values taken from the fake PACS's data, or with hostile ones (huge and non-ASCII
numbers, U+FFFD, over-long values, control characters, broken percent escapes, malformed media
ranges), and POST bodies with junk. The gateway, in front of the in-process fake PACS, must
answer every request with a status below 500. The count is bounded and the seed fixed, so a
failure names the request that reproduces it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import live_gateway
from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES, settings_for
from tests.integration.test_hostile_requests import IMAGE

SEED = 20261202
REQUESTS = 2500
SPEC = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "openapi.json").read_text(encoding="utf-8"))


DATA = [*INSTANCES, IMAGE]
UID_KEYWORDS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}

HOSTILE = [
    "",
    " ",
    "*",
    "?",
    "-",
    ",",
    ",,",
    "..",
    "../../etc/passwd",
    "\x00",
    "\x7f",
    "a\tb",
    "A" * 70,
    "9" * 5000,
    "\u0661\u0662",
    "\uff11\uff12",
    "\ufffd",
    "\u202e",
    "\U0001f600",
    "1e999",
    "nan",
    "-1",
    "0",
    "+1",
    "1.2.3",
    "01.2",
    "1" * 65,
    "' OR 1=1 --",
    "<script>",
    "\\",
    "2147483648",
    "18446744073709551616",
    "65536",
    "-32769",
    "20200101-",
    "-20200101",
    "20201301",
    "2020-01-01",
    "235960",
    "20200101120000+2500",
    "1,2,3",
    "0,0",
    "1,-1",
    "99999,99999",
    "30000,30000,0,0,1,1",
    "1,1,1,1,1,1,1",
    "true",
    "all",
    "7FE00010",
    "00000000",
    "FFFFFFFF/0/00000000",
    "Doe^John=\u5c71\u7530",
    "é" * 40,
]
RAW_ESCAPES = ["%FF", "%FE%FF", "%", "%G1", "%C3", "%00", "%2F", "%5C"]
KEYWORDS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "ModalitiesInStudy",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "NumberOfStudyRelatedInstances",
    "PatientAge",
    "PatientWeight",
    "Rows",
    "00100010",
    "0020000D",
    "ReferencedStudySequence.ReferencedSOPInstanceUID",
    "StudyDescription",
    "PixelData",
    "NoSuchKeyword",
    "12345678",
    "ZZZZZZZZ",
]
ACCEPTS = [
    None,
    "*/*",
    "application/dicom+json",
    "application/json",
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/octet-stream"',
    "multipart/related; type=application/octet-stream; transfer-syntax=*",
    'multipart/related; type="image/jls"',
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/*",
    "text/html",
    ";",
    ",;,",
    "*/*;q=abc",
    "*/*;q=2",
    "*/*;q=0",
    "a/b/c",
    "/",
    'multipart/related; type="',
    "multipart/related;;;;",
    "image/jpeg;q=0.5, image/png;q=0.9",
    "x" * 5000,
    "\u00e9/\u00e9",
]
CONTENT_TYPES = [
    'multipart/related; type="application/dicom"; boundary=XX',
    "multipart/related; boundary=XX",
    'multipart/related; type="application/dicom+json"; boundary=XX',
    "application/dicom",
    "application/json",
    'multipart/related; type="application/dicom"; boundary="unterminated',
    'multipart/related; type="application/dicom"; boundary=' + "b" * 80,
    "multipart/related; type=application/dicom; boundary=",
    ";",
    "",
]


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post"):
                found.append((method.upper(), path, operation))
    return found


def _parameters(operation: dict[str, Any]) -> list[dict[str, Any]]:
    resolved = []
    for parameter in operation.get("parameters", []):
        if "$ref" in parameter:
            parameter = SPEC["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        resolved.append(parameter)
    return resolved


class Generator:
    """One seeded stream of requests."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.operations = _operations()

    def hostile(self) -> str:
        value = self.random.choice(HOSTILE)
        if self.random.random() < 0.2:
            value += self.random.choice(HOSTILE)
        return value

    def encoded(self, value: str, safe: str = "") -> str:
        text = quote(value, safe=safe)
        if self.random.random() < 0.1:
            position = self.random.randrange(len(text) + 1)
            text = text[:position] + self.random.choice(RAW_ESCAPES) + text[position:]
        return text

    def path_value(self, name: str, instance: Any) -> str:
        if self.random.random() < 0.75:
            if name in UID_KEYWORDS:
                # Mostly the UIDs of one instance, sometimes another's (a path that does not belong).
                source = instance if self.random.random() < 0.8 else self.random.choice(DATA)
                return str(source[UID_KEYWORDS[name]].value)
            if name == "upstream":
                return self.random.choice(["default", "default", "nope", "a" * 70])
            if name == "frames":
                return self.random.choice(["1", "2", "1,2", "3", "1,1,1", "4", "1,3,2"])
            if name == "tag_path":
                return self.random.choice(["7FE00010", "00100010", "00081155", "7fe00010"])
        return self.hostile()

    def query_value(self, name: str) -> str:
        if self.random.random() < 0.5:
            wellformed = {
                "limit": ["0", "1", "5", "100"],
                "offset": ["0", "1", "3"],
                "fuzzymatching": ["true", "false"],
                "includefield": ["all", "PatientName", "00100020,StudyDescription"],
                "window": ["40,400", "2000,4000,sigmoid", "0,1"],
                "viewport": ["64,64", "10,20,0,0,5,5", "32,32,,,,"],
                "quality": ["1", "50", "100"],
                "annotation": ["patient", "technique"],
            }.get(name, ["CT", "DOE*", "20200101-20201231", "1.2.826.0.1.1", "P1", "1"])
            return self.random.choice(wellformed)
        return self.hostile()

    def request(self) -> tuple[str, str, dict[str, bytes], bytes | None]:
        method, template, operation = self.random.choice(self.operations)
        instance = self.random.choice(DATA)
        url = template
        query: list[str] = []
        headers: dict[str, bytes] = {}
        for parameter in _parameters(operation):
            name, where = parameter["name"], parameter["in"]
            if where == "path":
                url = url.replace("{" + name + "}", self.encoded(self.path_value(name, instance)))
            elif where == "header" and name == "Accept":
                accept = self.random.choice(ACCEPTS) if self.random.random() < 0.5 else None
                if accept is not None:
                    headers["Accept"] = accept.encode()
            elif where == "query" and self.random.random() < 0.4:
                for _ in range(self.random.choice([1, 1, 1, 2])):  # sometimes repeated
                    key = self.random.choice(KEYWORDS) if name == "match" else name
                    query.append(f"{self.encoded(key)}={self.encoded(self.query_value(key), safe=',*')}")
        if self.random.random() < 0.05:
            query.append(self.encoded(self.hostile()) + "=" + self.encoded(self.hostile()))
        if query:
            url += "?" + "&".join(query)
        body = None
        if method == "POST":
            headers["Content-Type"] = self.random.choice(CONTENT_TYPES).encode()
            body = self.post_body()
        return method, url, headers, body

    def post_body(self) -> bytes:
        junk = self.random.randbytes(self.random.choice([0, 1, 10, 200]))
        shapes = [
            junk,
            b"--XX\r\nContent-Type: application/dicom\r\n\r\n" + junk + b"\r\n--XX--\r\n",
            b"--XX\r\nContent-Type: application/dicom\r\n\r\n" + bytes(128) + b"DICM" + junk + b"\r\n--XX--\r\n",
            b"--XX\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\nabc\r\n--XX--",
            b"--XX\r\n\r\n" + junk,
            b"--XX--",
        ]
        return self.random.choice(shapes)


@pytest.fixture(scope="module")
def gateway_root() -> Iterator[str]:
    with FakePacs(DATA) as pacs:
        settings = replace(settings_for(pacs.upstream), cache_max_bytes=50_000_000, http_body_timeout=5.0)
        with live_gateway(settings) as root:
            yield root.removesuffix("/dicom-web")


def test_no_request_built_from_the_openapi_operations_is_a_5xx(gateway_root: str) -> None:
    generator = Generator(SEED)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    skipped = 0
    with httpx.Client(base_url=gateway_root, timeout=30) as client:
        for number in range(REQUESTS):
            method, url, headers, body = generator.request()
            try:
                response = client.request(method, url, headers=headers, content=body)
            except httpx.LocalProtocolError:
                skipped += 1  # a header value httpx itself refuses to send (control characters)
                continue
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"#{number} {method} {url} {headers} -> {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400:
                media_type = response.headers["content-type"].split(";")[0].strip()
                assert media_type.endswith("json"), (number, method, url)
                assert "Error" not in str(response.json().get("detail", "")).split(":")[0], (number, url)
    assert not failures, "\n".join(failures[:20])
    assert skipped < REQUESTS // 10
    # The generator reaches past validation too: answers, not just 4xx.
    assert sum(count for status, count in statuses.items() if status < 300) > REQUESTS // 20, statuses
    assert {400, 404, 406} <= set(statuses), statuses
