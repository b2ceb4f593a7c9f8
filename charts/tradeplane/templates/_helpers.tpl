{{/* The chart's name. */}}
{{- define "tradeplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: release-chart, or just release when it already says it. */}}
{{- define "tradeplane.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "tradeplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard labels of every resource. */}}
{{- define "tradeplane.labels" -}}
helm.sh/chart: {{ include "tradeplane.chart" . }}
{{ include "tradeplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels that select a release's pods (with a component added per workload). */}}
{{- define "tradeplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tradeplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "tradeplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "tradeplane.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "tradeplane.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The NATS URL as an environment variable: from a Secret, or the plain URL. */}}
{{- define "tradeplane.natsEnv" -}}
- name: TRADEPLANE_NATS
{{- if .Values.nats.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.existingSecret }}
      key: url
{{- else }}
  value: {{ .Values.nats.url | quote }}
{{- end }}
{{- end }}

{{/* The PostgreSQL DSN as an environment variable, from its Secret. */}}
{{- define "tradeplane.postgresEnv" -}}
- name: TRADEPLANE_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgres.existingSecret }}
      key: {{ .Values.postgres.secretKey }}
{{- end }}

{{/* The hardened security context of every tradeplane container. */}}
{{- define "tradeplane.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* The pod security context of every tradeplane pod. */}}
{{- define "tradeplane.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}
