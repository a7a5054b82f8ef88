"""Embedded mode end to end: ``kascade up`` on the quickstart with the real model,
a real simulated expert process, and the real gateway."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.testkit import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "quickstart"
KASCADE = [sys.executable, "-m", "kascade.cli"]


def test_invalid_yaml_fails_before_anything_starts(tmp_path: Path) -> None:
    for f in QUICKSTART.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    bad = (tmp_path / "pool.yaml").read_text().replace("min: 1\n    max: 1", "min: 3\n    max: 1")
    (tmp_path / "pool.yaml").write_text(bad)
    state_dir = tmp_path / "state"
    port = str(free_port())
    # -X importtime lists every module imported, on stderr: Ray's must not be there.
    command = [sys.executable, "-X", "importtime", *KASCADE[1:], "up", "-f", str(tmp_path)]
    proc = subprocess.run(
        [*command, "--port", port, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    imported = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    message = "\n".join(line for line in proc.stderr.splitlines() if line not in imported)
    assert "pool.yaml" in message
    assert "LocalModelPool/smollm2" in message
    assert "spec.replicas" in message
    assert "nothing was started" in message
    # Nothing started, observably: Ray was never imported (let alone started), no state
    # directory was made, no "Starting" line was printed.
    assert imported, "the import log is missing: the check below would prove nothing"
    assert not [line for line in imported if re.search(r"\|\s+ray(\.|$)", line)]
    assert not state_dir.exists()
    assert "Starting Ray" not in proc.stdout


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"KASCADE_TEST_MARKER={marker}".encode() in environ:
            found.append(int(entry.name))
    return found


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return (
                reply.status,
                {k.lower(): v for k, v in reply.headers.items()},
                json.loads(reply.read()),
            )
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())


@pytest.fixture
def running_quickstart(tmp_path: Path) -> Iterator[tuple[str, Path, str, subprocess.Popen[bytes]]]:
    marker = uuid.uuid4().hex
    sim_port, gw_port, serve_port = free_port(), free_port(), free_port()
    record = tmp_path / "sim-record.jsonl"
    for f in QUICKSTART.glob("*.yaml"):
        text = f.read_text().replace("127.0.0.1:9100", f"127.0.0.1:{sim_port}")
        (tmp_path / f.name).write_text(text)
    env = {
        **os.environ,
        "KASCADE_TEST_MARKER": marker,
        "KASCADE_SECRET_SIM_EXPERT_KEY_API_KEY": "sim-test-key",
    }
    sim = subprocess.Popen(
        [*KASCADE, "sim-expert", "--port", str(sim_port), "--record", str(record)], env=env
    )
    up = subprocess.Popen(
        [
            *KASCADE,
            "up",
            "-f",
            str(tmp_path),
            "--port",
            str(gw_port),
            "--serve-port",
            str(serve_port),
            "--state-dir",
            str(tmp_path / "state"),
            "--num-cpus",
            "2",
        ],
        env=env,
        start_new_session=True,
    )
    try:
        wait_for_port(sim_port, timeout=30)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert up.poll() is None, f"kascade up exited with {up.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/readyz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        yield f"http://127.0.0.1:{gw_port}", record, marker, up
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        sim.terminate()
        sim.wait(timeout=10)


@pytest.mark.serving
def test_quickstart_routes_locally_escalates_caches_and_redacts(
    running_quickstart: tuple[str, Path, str, subprocess.Popen[bytes]],
) -> None:
    base, record, marker, up = running_quickstart
    url = f"{base}/v1/chat/completions"
    prompts = [
        "What is the capital of France?",
        "Say hello.",
        "What color is the sky on a clear day?",
        "Name a fruit that is yellow.",
        "xq zvlk prrt wmmb ghhj qq zzt?",
        "Explain the Riemann hypothesis and its implications for prime gaps in detail.",
        "Translate 'good morning' into French.",
        "kkdj fjwo qpow eiru tyty zmzm?",
        "What is 2 plus 2?",
        "List three planets.",
        "Mail me at jane.doe@example.com or call +1 415 555 0134 about the gibberish qwpx zzkv.",
        "What is the capital of France?",  # exact cache hit
        "Tell me a short joke.",
        "Wrrk plox zzv ntt qqp?",
        "What is water made of?",
        "Write one sentence about cats.",
        "Who wrote Hamlet?",
        "Qzpx vvtr lkkm ooiu?",
        "Count from one to five.",
        "Say hello.",  # exact cache hit
    ]
    routes, redacted = [], []
    for prompt in prompts:
        status, headers, body = _post(
            url,
            {
                "model": "quickstart",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 32,
                "temperature": 0,
            },
        )
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
        routes.append(headers["x-kascade-route"])
        if headers.get("x-kascade-privacy", "").startswith("redacted"):
            redacted.append(prompt)
    assert "local" in routes
    assert "expert:sim-gpt" in routes
    assert routes[11] == "cache"
    assert routes[19] == "cache"
    assert redacted, "the request with an email and a phone number was not redacted"
    received = record.read_text()
    assert "jane.doe@example.com" not in received
    assert "555 0134" not in received
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'kascade_cache_hits_total{kind="exact"} 2.0' in metrics
    assert 'route="expert:sim-gpt"' in metrics or 'expert="sim-gpt"' in metrics

    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=90) == 0
    deadline = time.monotonic() + 30
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(1)
    leftovers = [p for p in _processes_with(marker) if p != os.getpid()]
    sim_pids = {p for p in leftovers if b"sim-expert" in Path(f"/proc/{p}/cmdline").read_bytes()}
    assert set(leftovers) - sim_pids == set(), f"processes left behind: {leftovers}"
