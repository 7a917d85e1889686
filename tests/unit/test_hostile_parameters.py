"""Hostile numbers, media ranges and values: each a 400 (or 406) naming what is wrong, never a 500 or a 502."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest, NotAcceptable
from gateway.numbers import parse_integer
from gateway.query.attributes import QueryLevel
from gateway.query.params import parse_qido_query
from gateway.wado.accept import parse_accept
from gateway.wado.frames import negotiate_frame_encoding, parse_frame_numbers
from gateway.wado.instances import negotiate_instances
from gateway.wado.render import parse_render_options

HUGE = "9" * 5000  # past Python's 4,300-digit limit of int()
ARABIC_INDIC = "\u0661\u0662"  # "12" in Arabic-Indic digits
FULLWIDTH = "\uff11\uff12"  # "12" in fullwidth digits


@pytest.mark.parametrize("text", [HUGE, ARABIC_INDIC, FULLWIDTH, "1_000", "0x10", "", " ", "-", "+1", "1.0", "١"])
def test_parse_integer_takes_ascii_digits_only_and_not_too_many(text: str) -> None:
    with pytest.raises(BadRequest, match="limit"):
        parse_integer(text, "limit")


def test_parse_integer_accepts_plain_numbers() -> None:
    assert parse_integer(" 42 ", "limit") == 42
    assert parse_integer("-7", "viewport", signed=True) == -7
    assert parse_integer("123456789", "limit") == 123456789
    with pytest.raises(BadRequest, match="more than 9 digits"):
        parse_integer("1234567890", "limit")


@pytest.mark.parametrize("header", [";", " ; ", ";q=1", ",;", "/", "a/", "/b", "; type=image/jpeg"])
def test_an_accept_header_without_a_media_range_is_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest, match="Accept"):
        parse_accept(header)


@pytest.mark.parametrize("header", [";", ";q=1"])
def test_negotiators_answer_400_for_a_malformed_accept(header: str) -> None:
    with pytest.raises(BadRequest):
        negotiate_frame_encoding(header, "1.2.840.10008.1.2.1")  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        negotiate_instances(header)
    with pytest.raises(BadRequest):
        parse_render_options([], header)


@pytest.mark.parametrize("text", [HUGE, ARABIC_INDIC, FULLWIDTH, f"1,{HUGE}", "1,,2", "0"])
def test_frame_numbers_are_ascii_positive_integers(text: str) -> None:
    with pytest.raises(BadRequest, match="frame number"):
        parse_frame_numbers(text)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("viewport", f"{HUGE},10"),
        ("viewport", f"10,10,0,0,{HUGE},5"),
        ("viewport", f"{ARABIC_INDIC},10"),
        ("quality", HUGE),
        ("quality", FULLWIDTH),
        ("window", f"{HUGE},100"),
        ("window", f"{ARABIC_INDIC},100"),
    ],
)
def test_render_numbers_are_ascii_and_bounded(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name):
        parse_render_options([(name, value)], None)


def _qido(*params: tuple[str, str]) -> None:
    parse_qido_query(QueryLevel.STUDY, list(params))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("limit", HUGE)], "limit"),
        ([("offset", ARABIC_INDIC)], "offset"),
        ([("limit", FULLWIDTH)], "limit"),
        ([("StudyDate", "\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661")], "StudyDate"),
        ([("NumberOfStudyRelatedInstances", ARABIC_INDIC)], "NumberOfStudyRelatedInstances"),
        ([("NumberOfStudyRelatedInstances", HUGE)], "NumberOfStudyRelatedInstances"),
        ([("PatientAge", "\u0660\u0664\u0665Y")], "PatientAge"),
    ],
)
def test_non_ascii_and_huge_numbers_in_a_query_are_bad_requests(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        _qido(*params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("PatientID", "A" * 65)], "at most 64 characters"),
        ([("AccessionNumber", "A" * 17)], "at most 16 characters"),
        ([("PatientName", "D" * 65)], "at most 64 characters per component group"),
        ([("PatientName", "Doe=" + "D" * 65)], "at most 64 characters per component group"),
        ([("ModalitiesInStudy", "CT," + "M" * 17)], "at most 16 characters"),
        ([("StudyDescription", "a\ufffdb")], "not valid UTF-8"),
        ([("PatientName", "\ufffd*")], "not valid UTF-8"),
        ([("ModalitiesInStudy", "ct")], "upper case"),
        ([("ModalitiesInStudy", "C\u00c9")], "ASCII"),
        ([("StudyID", "\x85")], "control characters"),
        ([("00280010", "70000")], "outside the range of US"),
        ([("00280010", "-1")], "outside the range of US"),
    ],
)
def test_values_the_vr_cannot_hold_are_bad_requests(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_qido_query(QueryLevel.IMAGE, params)


def test_values_at_the_vr_limits_are_accepted() -> None:
    query = parse_qido_query(
        QueryLevel.IMAGE,
        [
            ("PatientID", "A" * 64),
            ("PatientName", "D" * 64 + "=" + "\u5c71" * 10),
            ("AccessionNumber", "A" * 16),
            ("ModalitiesInStudy", "CT,MR"),
            ("StudyDescription", "K\u00f6rper*"),
            ("00280010", "65535"),
        ],
    )
    assert query.key("PatientID") is not None and query.key("Rows") is not None


def test_a_not_acceptable_json_resource_stays_a_406() -> None:
    with pytest.raises(NotAcceptable):
        negotiate_instances("text/html")


@pytest.mark.anyio
async def test_an_unexpected_failure_is_a_generic_500_whose_reference_is_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    from gateway.app import create_app
    from gateway.routes import qido
    from gateway.settings import load_settings

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyError("secret internals at 0x7f")

    monkeypatch.setattr(qido, "parse_qido_query", explode)
    app = create_app(load_settings(None, upstream="PACS@127.0.0.1:9"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/dicom-web/studies")
    assert response.status_code == 500
    body = response.json()
    assert "KeyError" not in response.text and "secret" not in response.text
    assert body["title"] == "Internal error" and body["reference"] in body["detail"]
    assert any(body["reference"] in record.getMessage() and record.exc_info for record in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize("length", ["9" * 5000, "\u00b2", "99999999999999999999999"])
async def test_a_content_length_no_server_would_pass_is_not_a_500(length: str) -> None:
    import httpx

    from gateway.app import create_app
    from gateway.settings import load_settings

    app = create_app(load_settings(None, upstream="PACS@127.0.0.1:9"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    content_type = b'multipart/related; type="application/dicom"; boundary=X'
    headers = {"Content-Type": content_type, "Content-Length": length.encode()}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.post("/dicom-web/studies", content=b"--X--", headers=headers)
    assert response.status_code < 500, response.text


@pytest.mark.parametrize(
    "name", ["PixelData", "7FE00010", "EncapsulatedDocument", "00420011", "RedPaletteColorLookupTableData"]
)
def test_includefield_of_bulk_data_is_a_bad_request(name: str) -> None:
    with pytest.raises(BadRequest, match="bulk data"):
        parse_qido_query(QueryLevel.IMAGE, [("includefield", f"PatientName,{name}")])


def test_includefield_of_sequences_and_ambiguous_non_bulk_vrs_is_accepted() -> None:
    query = parse_qido_query(QueryLevel.IMAGE, [("includefield", "SmallestImagePixelValue,ReferencedSeriesSequence")])
    assert len(query.include_tags) == 2
