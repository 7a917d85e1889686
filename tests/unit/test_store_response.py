"""The Store Instances Response Module and the status of PS3.18 Table 10.5.3-1."""

from __future__ import annotations

from gateway.stow.response import Failed, OtherFailure, Stored, store_response, store_status

CT = "1.2.840.10008.5.1.4.1.1.2"
OK = Stored(CT, "1.2.3.1", "http://gw/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.1")
COERCED = Stored(CT, "1.2.3.2", "http://gw/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.2", 0xB000)
REFUSED = Failed(CT, "1.2.3.3", 0xA700)


def test_statuses() -> None:
    assert store_status([OK], [], []) == 200
    assert store_status([OK, COERCED], [], []) == 202  # a warning is never plain success
    assert store_status([OK], [REFUSED], []) == 202
    assert store_status([OK], [], [OtherFailure(0xC000)]) == 202
    assert store_status([], [REFUSED], [OtherFailure(0xC000)]) == 409


def test_response_dataset() -> None:
    body = store_response("http://gw/dicom-web/studies/1.2", [OK, COERCED], [REFUSED], [OtherFailure(0xC000)])
    assert body["00081190"] == {"vr": "UR", "Value": ["http://gw/dicom-web/studies/1.2"]}
    (failed,) = body["00081198"]["Value"]
    assert failed == {
        "00081150": {"vr": "UI", "Value": [CT]},
        "00081155": {"vr": "UI", "Value": ["1.2.3.3"]},
        "00081197": {"vr": "US", "Value": [0xA700]},
    }
    ok, coerced = body["00081199"]["Value"]
    assert ok["00081190"]["Value"] == [OK.retrieve_url] and "00081196" not in ok
    assert coerced["00081196"] == {"vr": "US", "Value": [45056]}
    assert body["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0xC000]}}]


def test_response_without_failures_or_study() -> None:
    body = store_response(None, [OK], [], [])
    assert body["00081190"] == {"vr": "UR"}  # Type 2: present, empty when the instances span studies
    assert set(body) == {"00081190", "00081199"}
