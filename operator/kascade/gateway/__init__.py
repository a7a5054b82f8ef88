"""kascade.gateway: the data plane router (never imports kopf, Kubernetes or Ray).

Subpackages, in request order:

- ``endpoints``: the aiohttp ``server`` (routes, config reload, ``main(argv)`` for
  ``kascade gateway``), ``inbound`` checks (API keys, bounded body reads), ``errors``
  (OpenAI-style error bodies), ``responses`` (JSON and SSE answers), ``sse`` (chunk
  helpers), and the ``status`` and ``feedback`` endpoints.
- ``route``: ``request`` validation, pre-generation ``rules``, the ``local`` first
  pass, ``confidence`` and the (dynamic) threshold with ``pressure`` (burn rate and
  availability behind it), ``decision`` (what happened to a request) and the
  ``pipeline`` recipe tying the steps together.
- ``privacy``: PII detection and redaction (``redaction``).
- ``cache``: exact and semantic response caches (``memory``) and the exact cache
  shared by replicas through Redis (``shared``).
- ``experts``: ``escalation`` (reserve → throttle → call → settle/release, retries,
  fallback chain), ``providers`` (OpenAI / Azure / Anthropic adapters), ``breaker``.
- ``ledger``: budgets and throttles (memory and Redis backends).
- ``observe``: ``metrics``, ``audit`` and the ``record`` step writing both.

Top-level modules: ``config`` (the typed config the compiler produces;
``load_config(path)``) and ``runtime`` (a config compiled for serving).
"""
