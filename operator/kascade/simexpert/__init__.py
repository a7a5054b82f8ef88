"""A simulated cloud expert (and local pool) for tests, demos and benchmarks.

Speaks OpenAI chat completions (JSON and SSE), the Azure OpenAI deployment path and the
Anthropic Messages API. Latency, reported usage, 429 with Retry-After, 5xx and hangs
are set by flags or at runtime through `POST /_sim/config`; what it received is
recorded (`GET /_sim/requests`, optionally a JSONL file) to prove redaction and count
calls. Answers are deterministic.
"""

from kascade.simexpert.server import Settings, build_app, main

__all__ = ["Settings", "build_app", "main"]
