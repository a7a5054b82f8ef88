{{/*
Names, labels and small derived values shared by the templates.
*/}}

{{- define "kascade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, followed by the chart name unless the release name
already contains it. Truncated to 63 characters (the DNS label limit).
*/}}
{{- define "kascade.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kascade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kascade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kascade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kascade.labels" -}}
helm.sh/chart: {{ include "kascade.chart" . }}
{{ include "kascade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kascade
{{- end }}

{{- define "kascade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kascade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from a component's image values; the tag defaults to appVersion.
Usage: include "kascade.image" (dict "image" .Values.operator.image "chart" .Chart)
*/}}
{{- define "kascade.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Cross-field checks that JSON Schema cannot express. Fails rendering with a message
that names the values and what would be accepted.
*/}}
{{- define "kascade.validate" -}}
{{- $gw := .Values.gateway }}
{{- $op := .Values.operator }}
{{- if and (not $op.leaderElection.enabled) (gt (int $op.replicas) 1) }}
{{- fail (printf "operator.replicas is %d but operator.leaderElection.enabled is false: without leader election every replica would act. Enable it, or set operator.replicas=1" (int $op.replicas)) }}
{{- end }}
{{- if and (not $gw.redisUrl) (gt (int $gw.replicas) 1) }}
{{- fail (printf "gateway.replicas is %d but gateway.redisUrl is empty: more than one gateway replica needs Redis, or budgets and throttles would be counted per replica. Set gateway.redisUrl, or keep gateway.replicas and gateway.hpa.maxReplicas at 1" (int $gw.replicas)) }}
{{- end }}
{{- if lt (int $gw.hpa.maxReplicas) (int $gw.replicas) }}
{{- fail (printf "gateway.hpa.maxReplicas (%d) must be at least gateway.replicas (%d)" (int $gw.hpa.maxReplicas) (int $gw.replicas)) }}
{{- end }}
{{- if and (not $gw.redisUrl) (gt (int $gw.hpa.maxReplicas) 1) }}
{{- fail (printf "gateway.hpa.maxReplicas is %d but gateway.redisUrl is empty: more than one gateway replica needs Redis, or budgets and throttles would be counted per replica. Set gateway.redisUrl, or keep gateway.replicas and gateway.hpa.maxReplicas at 1" (int $gw.hpa.maxReplicas)) }}
{{- end }}
{{- if and .Values.kuberay.required (not (.Capabilities.APIVersions.Has "ray.io/v1/RayService")) }}
{{- fail "kuberay.required is true but this cluster does not serve ray.io/v1 RayService: install KubeRay first (see docs/install.md), or set kuberay.required=false" }}
{{- end }}
{{- end }}
