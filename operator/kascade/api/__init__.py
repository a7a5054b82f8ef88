"""kascade.api: the Kubernetes API of Kascade.

- ``kascade.api.v1alpha1``: the models (single source of truth) and YAML loading.
- ``kascade.api.crdgen``: generates ``crds/`` and ``charts/kascade/crds/`` from the models.
- ``kascade.api.docgen``: generates the field reference in ``docs/api.md``.

This layer imports nothing else of Kascade.
"""
