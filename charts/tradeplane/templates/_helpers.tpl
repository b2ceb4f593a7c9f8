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

{{/* The image: pinned by digest when one is given, else by tag (default: appVersion). */}}
{{- define "tradeplane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "tradeplane.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "tradeplane.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
  NATS for one process: the URL (never with credentials in it), and the files it reads
  its credentials and TLS material from, mounted by "tradeplane.natsVolumes".
  Call with (dict "root" $ "identity" "gateway"): the identity whose credentials file
  the process uses; "" for none.
*/}}
{{- define "tradeplane.natsEnv" -}}
{{- $nats := .root.Values.nats }}
- name: TRADEPLANE_NATS
  value: {{ $nats.url | quote }}
{{- if and $nats.credentials.existingSecret .identity }}
- name: TRADEPLANE_CREDENTIALS
  value: /etc/tradeplane/credentials/{{ .identity }}.json
{{- end }}
{{- if or $nats.tls.caSecret $nats.tls.caConfigMap }}
- name: TRADEPLANE_NATS_CA
  value: /etc/tradeplane/nats-ca/ca.crt
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- name: TRADEPLANE_NATS_CERT
  value: /etc/tradeplane/nats-client/tls.crt
- name: TRADEPLANE_NATS_KEY
  value: /etc/tradeplane/nats-client/tls.key
{{- end }}
{{- end }}

{{/*
  The volumes of "tradeplane.natsEnv"'s files. Call with (dict "root" $ "keys" (list
  "gateway.json")): the keys of the credentials Secret this pod may read, and no other.
  Secrets are mode 0440 (decimal 288) with the pod's fsGroup as their group: readable by
  the process's user, not by others.
*/}}
{{- define "tradeplane.natsVolumes" -}}
{{- $nats := .root.Values.nats }}
{{- if and $nats.credentials.existingSecret .keys }}
- name: nats-credentials
  secret:
    secretName: {{ $nats.credentials.existingSecret }}
    defaultMode: 288
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- if $nats.tls.caSecret }}
- name: nats-ca
  secret:
    secretName: {{ $nats.tls.caSecret }}
    defaultMode: 288
    items:
      - key: {{ $nats.tls.caKey }}
        path: ca.crt
{{- else if $nats.tls.caConfigMap }}
- name: nats-ca
  configMap:
    name: {{ $nats.tls.caConfigMap }}
    defaultMode: 292
    items:
      - key: {{ $nats.tls.caKey }}
        path: ca.crt
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- name: nats-client-tls
  secret:
    secretName: {{ $nats.tls.clientCertSecret }}
    defaultMode: 288
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}

{{/* The mounts of "tradeplane.natsVolumes" (same arguments), read-only. */}}
{{- define "tradeplane.natsVolumeMounts" -}}
{{- $nats := .root.Values.nats }}
{{- if and $nats.credentials.existingSecret .keys }}
- name: nats-credentials
  mountPath: /etc/tradeplane/credentials
  readOnly: true
{{- end }}
{{- if or $nats.tls.caSecret $nats.tls.caConfigMap }}
- name: nats-ca
  mountPath: /etc/tradeplane/nats-ca
  readOnly: true
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- name: nats-client-tls
  mountPath: /etc/tradeplane/nats-client
  readOnly: true
{{- end }}
{{- end }}

{{/* The engines' NATS settings for the operator, which puts them on every engine pod. */}}
{{- define "tradeplane.engineNatsEnv" -}}
{{- $nats := .Values.nats }}
{{- with $nats.credentials.existingSecret }}
- name: TRADEPLANE_ENGINE_CREDENTIALS_SECRET
  value: {{ . | quote }}
- name: TRADEPLANE_ENGINE_CREDENTIALS_KEY
  value: engine.json
{{- end }}
{{- with $nats.tls.caSecret }}
- name: TRADEPLANE_ENGINE_NATS_CA_SECRET
  value: {{ . | quote }}
{{- end }}
{{- with $nats.tls.caConfigMap }}
- name: TRADEPLANE_ENGINE_NATS_CA_CONFIGMAP
  value: {{ . | quote }}
{{- end }}
{{- if or $nats.tls.caSecret $nats.tls.caConfigMap }}
- name: TRADEPLANE_ENGINE_NATS_CA_KEY
  value: {{ $nats.tls.caKey | quote }}
{{- end }}
{{- with $nats.tls.clientCertSecret }}
- name: TRADEPLANE_ENGINE_NATS_CLIENT_CERT_SECRET
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The checks the schema cannot make in a way Helm reports well. */}}
{{- define "tradeplane.checkNats" -}}
{{- if and .Values.nats.tls.caSecret .Values.nats.tls.caConfigMap }}
{{- fail "nats.tls: give the CA bundle as caSecret or caConfigMap, not both" }}
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

{{/*
  `--ledger-shards N` for the processes that fund orders or record the journal (gateway,
  recorder, selftest) when the chart runs the ledger; nothing when it does not. A list's
  items, one per line.
*/}}
{{- define "tradeplane.ledgerShardsArgs" -}}
{{- if .Values.ledger.enabled }}
- --ledger-shards
- {{ .Values.ledger.shards | quote }}
{{- end }}
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
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
  Readiness and liveness of a process serving /readyz and /livez beside its metrics
  (gateway, recorder, auth service): ready once its NATS connections are up and it has
  started, live while its event loop turns.
*/}}
{{- define "tradeplane.probes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /livez
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/*
  Spread a stateless Deployment's pods over nodes and zones. Call with (dict "root" $
  "component" "gateway"): the values under that key say how.
*/}}
{{- define "tradeplane.topologySpread" -}}
{{- $spread := (index .root.Values .component).topologySpread }}
{{- if $spread.topologyKeys }}
topologySpreadConstraints:
  {{- range $spread.topologyKeys }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "tradeplane.selectorLabels" $.root | nindent 8 }}
        app.kubernetes.io/component: {{ $.component }}
    matchLabelKeys: [pod-template-hash]
  {{- end }}
{{- end }}
{{- end }}

{{/*
  A PodDisruptionBudget for a Deployment (same arguments as "tradeplane.topologySpread"),
  as its own document.
*/}}
{{- define "tradeplane.podDisruptionBudget" -}}
{{- $budget := (index .root.Values .component).podDisruptionBudget }}
{{- if $budget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tradeplane.fullname" .root }}-{{ .component }}
  labels:
    {{- include "tradeplane.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ $budget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "tradeplane.selectorLabels" .root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/*
  A NetworkPolicy's rules for one tradeplane process. Call with (dict "root" $ "port"
  "metrics" "postgres" true): the named port scraped from the monitoring namespace, and
  whether it may reach PostgreSQL.
*/}}
{{- define "tradeplane.networkRules" -}}
{{- $policy := .root.Values.networkPolicy }}
policyTypes: [Ingress, Egress]
ingress:
  - from:
      - namespaceSelector:
          matchLabels:
            kubernetes.io/metadata.name: {{ $policy.monitoringNamespace }}
    ports:
      - port: {{ .port }}
        protocol: TCP
egress:
  - ports:
      - port: 53
        protocol: UDP
      - port: 53
        protocol: TCP
  - ports:
      {{- range $policy.nats.ports }}
      - port: {{ . }}
        protocol: TCP
      {{- end }}
    {{- with $policy.nats.to }}
    to:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- if .postgres }}
  - ports:
      {{- range $policy.postgres.ports }}
      - port: {{ . }}
        protocol: TCP
      {{- end }}
    {{- with $policy.postgres.to }}
    to:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
  {{- with $policy.extraEgress }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
