"""The Docker image's start and health commands, run as the image runs them (no container engine needed).

The Dockerfile is read for its ENV, ENTRYPOINT, CMD and HEALTHCHECK; the same command lines run
here with the same environment, except that GATEWAY_HOST is 127.0.0.1 (tests listen on loopback
only) and GATEWAY_CONFIG points at a file of the test's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.demo.samples import generate_sample_studies
from tests.conftest import free_port

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
COMMAND = Path(sys.executable).parent / "dicomweb-gateway"


def _instructions() -> dict[str, str]:
    """The final stage's instructions by name (the last of each), continuation lines joined."""
    text = DOCKERFILE.read_text().split("\nFROM ")[-1]
    joined = re.sub(r"\\\n\s*", " ", text)
    found: dict[str, str] = {}
    for line in joined.splitlines():
        name, _, rest = line.strip().partition(" ")
        if name.isupper() and not line.startswith("#"):
            found[name] = found.get(name, "") + " " + rest if name == "ENV" else rest
    return found


def _image_environment() -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(_instructions()["ENV"]))


def _exec_form(text: str) -> list[str]:
    command: list[str] = json.loads(text)
    return command


def _image_command(*extra: str) -> list[str]:
    entrypoint, cmd = _exec_form(_instructions()["ENTRYPOINT"]), _exec_form(_instructions()["CMD"])
    assert entrypoint == ["dicomweb-gateway"]
    return [str(COMMAND), *entrypoint[1:], *(extra or cmd)]


def _healthcheck() -> list[str]:
    text = _instructions()["HEALTHCHECK"]
    command = _exec_form(text[text.index("CMD") + 3 :].strip())
    assert command[0] == "dicomweb-gateway"
    return [str(COMMAND), *command[1:]]


def _environment(config: Path, **variables: str) -> dict[str, str]:
    image = _image_environment()
    assert image["GATEWAY_HOST"] == "0.0.0.0" and image["GATEWAY_CONFIG"] == "/etc/dicomweb-gateway/gateway.toml"
    keep = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    return keep | image | {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_CONFIG": str(config)} | variables


@contextmanager
def _running(command: list[str], env: dict[str, str], banner: str, timeout: float = 60) -> Iterator[list[str]]:
    """Run `command` until its stdout prints a line containing `banner`; yields the lines so far.

    Its log (stderr) goes to a file, so that a chatty process never blocks on a full pipe.
    """
    log = Path(env["GATEWAY_CONFIG"]).with_suffix(".log")
    with (
        log.open("w") as stderr,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True) as process,
    ):
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        lines: list[str] = []
        try:
            deadline = time.monotonic() + timeout
            while not any(banner in line for line in lines):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{command} did not start:\n{''.join(lines)}{log.read_text()}")
                line = process.stdout.readline()
                if line:
                    lines.append(line)
                else:
                    time.sleep(0.05)
            time.sleep(0.5)
            while line := process.stdout.readline():
                lines.append(line)
            yield lines
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _health(env: dict[str, str]) -> int:
    return subprocess.run(_healthcheck(), env=env, capture_output=True, timeout=30).returncode


def test_image_runs_from_environment_variables_alone(tmp_path: Path) -> None:
    placeholder = tmp_path / "gateway.toml"
    placeholder.write_text("# Mount the gateway's configuration here, or set GATEWAY_* variables (see the README).\n")
    port = free_port()
    env = _environment(
        placeholder, GATEWAY_UPSTREAM="PACS@127.0.0.1:9", GATEWAY_PORT=str(port), GATEWAY_LOG_FORMAT="json"
    )
    with _running(_image_command(), env, "serving DICOMweb at") as lines:
        assert f"http://127.0.0.1:{port}/dicom-web" in lines[-1]
        assert _health(env) == 0
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"X-Request-ID": "container-1"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["X-Request-ID"] == "container-1"
            assert json.load(response)["upstreams"] == {
                "default": f"http://127.0.0.1:{port}/dicom-web/upstreams/default"
            }
    assert _health(env) == 1  # stopped
    records = [json.loads(line) for line in placeholder.with_suffix(".log").read_text().splitlines()]
    assert {"time", "level", "logger", "message", "request_id", "upstream"} <= set(records[0])
    assert any(r["request_id"] == "container-1" and r["logger"] == "uvicorn.access" for r in records)


def test_mounted_configuration_port_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nport = {port}\nae_title = "FROMFILE"\n'
        '[upstreams.main]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 9\n'
    )
    env = _environment(config)
    with _running(_image_command(), env, "serving DICOMweb at") as lines:
        assert f"http://127.0.0.1:{port}/dicom-web" in lines[-1]
        assert _health(env) == 0


def test_busy_port_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("")
    port = free_port()
    env = _environment(config, GATEWAY_UPSTREAM="PACS@127.0.0.1:9", GATEWAY_PORT=str(port))
    with _running(_image_command(), env, "serving DICOMweb at"):
        second = subprocess.run(_image_command(), env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 3
    assert second.stdout == ""  # no banner for a gateway that never listened
    assert second.stderr.strip().splitlines() == [
        f"dicomweb-gateway: cannot listen on 127.0.0.1:{port}: the port is in use "
        "(choose another with --port, GATEWAY_PORT or [gateway] port)"
    ]


@pytest.mark.upstream("qrscp")
def test_demo_runs_and_its_printed_client_example_works(tmp_path: Path) -> None:
    config = tmp_path / "unused.toml"
    config.write_text("")
    port = free_port()
    env = _environment(config, GATEWAY_PORT=str(port))
    with _running(_image_command("demo", "--studies", "3"), env, "Press Ctrl-C to stop.", timeout=120) as lines:
        text = "".join(lines)
        start = next(i for i, line in enumerate(lines) if "with dicomweb-client" in line)
        example = [line.strip() for line in lines[start + 1 : start + 3]]
        assert example[0].startswith("from dicomweb_client import DICOMwebClient")
        namespace: dict[str, object] = {}
        exec("\n".join(example), namespace)  # the two lines exactly as printed
        studies, instances = namespace["studies"], namespace["instances"]
        expected = [s for s in generate_sample_studies(3) if s.patient_name.lower().startswith("doe")]
        assert isinstance(studies, list) and len(studies) == len(expected) > 0
        first = generate_sample_studies(3)[0]
        assert isinstance(instances, list) and len(instances) == first.instance_count
        assert f"http://127.0.0.1:{port}/dicom-web" in text
        assert _health(env) == 0  # the image's health check, with the demo's configuration
