"""kascade.gateway: the data plane router (never imports kopf, Kubernetes or Ray).

Modules, in request order:

- ``server``: aiohttp app, routes, config reload, ``main(argv)`` (``kascade gateway``).
- ``config``: the typed config the compiler produces; ``load_config(path)``.
- ``runtime``: a config compiled for serving (regexes, caches, expert state).
- ``request``: validating a chat request; ``errors``: OpenAI-style error bodies.
- ``privacy``: PII detection and redaction.
- ``cache``: exact and semantic response caches; ``shared_cache``: the exact cache
  shared by replicas through Redis.
- ``rules``: pre-generation routing rules.
- ``local``: the local first pass; ``confidence``: reading confidence and the
  (dynamic) threshold; ``pressure``: burn rate and availability behind it.
- ``escalation``: reserve → throttle → call → settle/release, retries and fallback
  chain; ``providers``: OpenAI / Azure / Anthropic adapters; ``breaker``: circuit
  breakers; ``sse``: chunk helpers.
- ``pipeline``: the recipe tying the steps together; ``decision``: what happened to a
  request; ``inbound``: API keys and bounded body reads; ``responses``: JSON and SSE
  answers; ``record``: metrics and the audit line (``metrics``, ``audit``);
  ``status`` and ``feedback`` endpoints.
- ``ledger``: budgets and throttles (memory and Redis backends).
"""
