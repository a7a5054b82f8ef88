"""kascade.serving: the Ray Serve model app of a LocalModelPool.

Public entry points (import the modules, not names):

- ``kascade.serving.app.build_app(args)``: the Ray Serve application builder named in a
  RayService ``serveConfigV2`` (``import_path: kascade.serving.app:build_app``).
- ``kascade.serving.config.PoolServingConfig``: its typed ``args`` (camelCase JSON),
  produced by the compiler from a LocalModelPool.
- ``kascade.serving.deployment``: the Ray Serve options derived from a config.
- ``kascade.serving.sources.resolve_source``: model URIs to verified local files.

This package imports nothing of ``kascade.api`` but its bounds (``kascade.api.limits``,
standard library only) and no Kubernetes clients; Ray, llama.cpp
and vLLM are imported only by ``app`` and the runtime modules. See docs/serving.md.
"""
