{{/*
The operator's permissions, listed once. Least privilege: explicit verbs and resources,
never "*". Secrets are read-only (the operator wires them by name into gateways; it
never creates, copies or updates them).
*/}}

{{/* Rules on namespaced resources: in a ClusterRole or in a Role per watched namespace. */}}
{{- define "kascade.rbac.namespacedRules" -}}
# The Kascade kinds: read and watch, patch for kopf's annotations and finalizers.
# Never create, update or delete: their spec belongs to users and GitOps.
- apiGroups: ["kascade.io"]
  resources: ["localmodelpools", "cloudexperts", "routingpolicies", "tenants"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kascade.io"]
  resources: ["localmodelpools/status", "cloudexperts/status", "routingpolicies/status", "tenants/status"]
  verbs: ["get", "patch", "update"]
# Children: one RayService per LocalModelPool.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Autoscaling sets the worker group's replicas on the RayService's RayClusters directly
# (KubeRay does not propagate a replicas-only RayService edit to a running cluster).
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
# Children: the gateway of each namespace.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The in-memory ledger's checkpoint volume: never deleted by the operator (spend).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Secrets: `get` only, to check that an expert's credentials and a tenant's keys Secret
# exist (it counts keys, never logs or copies them); Secrets are wired into gateways by
# name, never listed, watched or written.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Children: the NetworkPolicy that admits callers to each gateway.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Events about the objects it reconciles (kopf posts core/v1 events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Gateway endpoints, to reach each gateway replica's status endpoint (spend mirroring).
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Rules on cluster-scoped resources: always in a ClusterRole. Read only. */}}
{{- define "kascade.rbac.clusterRules" -}}
# Whether the KubeRay and Prometheus Operator CRDs are installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf resolves namespace patterns by watching namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
