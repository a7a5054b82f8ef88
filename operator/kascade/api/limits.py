"""Bounds shared by the CRDs, the gateway config and the serving config.

One constant per bound, read by the v1alpha1 models (and so by the generated CRDs) and by
``kascade.gateway.config`` and ``kascade.serving.config``: an object the API server
accepts can never fail compilation for a range, length or name-shape reason.
``tests/unit/api/test_api_limits.py`` walks every bounded field of the gateway and
serving configs and proves each bound is the CRD's.

Standard library only: the data plane imports this module without the API's models.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- names

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""An RFC 1123 label. Plain RE2/Python common subset: used as a CRD ``pattern`` (Go) and
with ``re.fullmatch`` (Python)."""

DNS1123_LABEL_MAX = 63

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""An RFC 1123 subdomain (the name of most Kubernetes objects)."""

DNS1123_SUBDOMAIN_MAX = 253

POOL_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A LocalModelPool name: an RFC 1035 label (it names Services of KubeRay's)."""

POOL_NAME_MAX = 40
"""KubeRay appends suffixes of up to 23 characters to the RayService name for the
RayCluster, its pods and services; 40 keeps every derived name within 63."""

# --------------------------------------------------------------------------- money

USD_MAX = 9_000_000.0
"""Largest USD amount anywhere (budget limits, prices, per-request caps). The ledger
counts integer nano-USD, exact in Redis Lua's doubles up to 2**53 nanos (about
9,007,199 USD)."""

# --------------------------------------------------------------------------- experts

MAX_RETRIES = 10
"""Retries after the first attempt; the gateway makes at most ``MAX_RETRIES + 1`` attempts."""

ENDPOINT = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
"""An expert's base URL: http(s), a host, an optional path; no query or fragment."""

ENDPOINT_MAX = 2048

# --------------------------------------------------------------------------- pools

CONTEXT_LENGTH_MIN = 128
CONTEXT_LENGTH_MAX = 1_048_576

MAX_CONCURRENT_PER_REPLICA = 1024
"""Requests one replica generates at once."""

QUEUE_SLOTS_PER_CONCURRENT = 2
"""Requests that may wait in one replica's queue per concurrent slot (the API bounds
queueing by time; the replica also needs a length bound)."""

MAX_QUEUED_PER_REPLICA = MAX_CONCURRENT_PER_REPLICA * QUEUE_SLOTS_PER_CONCURRENT

MAX_QUEUE_WAIT_MILLIS = 600_000

SHA256 = r"^[a-f0-9]{64}$"
"""A SHA-256 digest: 64 lowercase hexadecimal digits."""

BUILTIN_MODEL_NAMES = ("gemma3-270m", "smollm2-135m-instruct")
"""Models shipped with Kascade (``builtin://NAME``); equal to the keys of
``kascade.serving.sources.BUILTIN_MODELS`` (a unit test holds them together)."""
