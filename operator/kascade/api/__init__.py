"""kascade.api: the Kubernetes API of Kascade.

- ``kascade.api.v1alpha1``: the models (single source of truth) and YAML loading.
- ``kascade.api.crdgen``: generates ``crds/`` and ``charts/kascade/crds/`` from the models.
- ``kascade.api.docgen``: generates the field reference in ``docs/api.md``.
- ``kascade.api.limits``: bounds shared by the CRDs and the data plane's configs.
- ``kascade.api.wire``: the ``x-kascade-*`` headers and body fields shared by the
  gateway, the serving replicas and the simulated expert.

This layer imports nothing else of Kascade.
"""
