{{/* Name of the chart, overridable. */}}
{{- define "waitroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "waitroom.fullname" -}}
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

{{- define "waitroom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "waitroom.labels" -}}
helm.sh/chart: {{ include "waitroom.chart" . }}
{{ include "waitroom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "waitroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waitroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* The demo Redis's own labels: its component is redis, so selectors of
the server (the ServiceMonitor's) never pick its objects. */}}
{{- define "waitroom.redisLabels" -}}
helm.sh/chart: {{ include "waitroom.chart" . }}
{{ include "waitroom.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "waitroom.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "waitroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "waitroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "waitroom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "waitroom.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secrets the pods read, comma-separated. */}}
{{- define "waitroom.secretNames" -}}
{{- $names := list }}
{{- with .Values.signingKeys.existingSecret }}{{ $names = append $names . }}{{ end }}
{{- with .Values.apiKeys.existingSecret }}{{ $names = append $names . }}{{ end }}
{{- with .Values.tls.existingSecret }}{{ $names = append $names . }}{{ end }}
{{- with .Values.tls.clientCaSecret }}{{ $names = append $names . }}{{ end }}
{{- if not .Values.redis.enabled }}{{ with .Values.externalRedis.existingSecret }}{{ $names = append $names . }}{{ end }}{{ end }}
{{- join "," $names }}
{{- end }}

{{/* More than one pod can run: a PodDisruptionBudget makes sense. */}}
{{- define "waitroom.multiReplica" -}}
{{- if .Values.autoscaling.enabled }}{{ if gt (int .Values.autoscaling.maxReplicas) 1 }}true{{ end }}{{ else }}{{ if gt (int .Values.replicaCount) 1 }}true{{ end }}{{ end }}
{{- end }}

{{/* The Redis URL: the bundled Redis, or the external one. */}}
{{- define "waitroom.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "waitroom.fullname" .) }}
{{- else }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/* The declared queues as the --queue spec list (queues separated by ";"). */}}
{{- define "waitroom.queues" -}}
{{- $specs := list }}
{{- range .Values.queues }}
{{- $settings := list }}
{{- if .mode }}{{ $settings = append $settings (printf "mode=%s" .mode) }}{{ end }}
{{- if hasKey . "maxActive" }}{{ $settings = append $settings (printf "max_active=%d" (int .maxActive)) }}{{ end }}
{{- if hasKey . "admitPerSecond" }}{{ $settings = append $settings (printf "admit_per_second=%d" (int .admitPerSecond)) }}{{ end }}
{{- if .admissionTtl }}{{ $settings = append $settings (printf "admission_ttl=%s" .admissionTtl) }}{{ end }}
{{- if .heartbeatTimeout }}{{ $settings = append $settings (printf "heartbeat_timeout=%s" .heartbeatTimeout) }}{{ end }}
{{- if .opensAt }}{{ $settings = append $settings (printf "opens_at=%s" .opensAt) }}{{ end }}
{{- if .prequeueWindow }}{{ $settings = append $settings (printf "prequeue_window=%s" .prequeueWindow) }}{{ end }}
{{- if and (hasKey . "shards") (gt (int .shards) 1) }}
{{- if not $.Values.externalRedis.subLines }}{{ fail (printf "queues: %s has shards %d, served only with externalRedis.subLines (a preview)" .id (int .shards)) }}{{ end }}
{{- $settings = append $settings (printf "shards=%d" (int .shards)) }}
{{- end }}
{{- if $settings }}
{{- $specs = append $specs (printf "%s:%s" .id (join "," $settings)) }}
{{- else }}
{{- $specs = append $specs .id }}
{{- end }}
{{- end }}
{{- join ";" $specs }}
{{- end }}

{{/* Seconds of a duration such as 5s, 1m, 500ms (whole seconds, rounded up). */}}
{{- define "waitroom.seconds" -}}
{{- $d := . | toString }}
{{- if hasSuffix "ms" $d }}{{ div (add (trimSuffix "ms" $d | int) 999) 1000 }}
{{- else if hasSuffix "s" $d }}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "h" $d }}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else }}{{ $d | int }}{{ end }}
{{- end }}

{{/* The server's resources: as given, or derived from the stream limit
(values.yaml, `sizing`, states the formula). */}}
{{- define "waitroom.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else }}
{{- $sizing := .Values.sizing }}
{{- $streamsMiB := divf (mulf (float64 .Values.config.maxStreams) (float64 $sizing.memoryPerStreamKiB)) 1024.0 | ceil | int64 }}
{{- $request := add (int64 $sizing.baseMemoryMiB) $streamsMiB }}
{{- $limit := mulf (float64 $request) (float64 $sizing.memoryLimitFactor) | ceil | int64 }}
requests:
  cpu: {{ $sizing.cpu | quote }}
  memory: {{ printf "%dMi" $request }}
limits:
  memory: {{ printf "%dMi" $limit }}
{{- end }}
{{- end }}

{{/* Labels of the `helm test` pod: the release's, with a component of
its own, so neither the Service nor the NetworkPolicy of the server
selects it. */}}
{{- define "waitroom.testLabels" -}}
helm.sh/chart: {{ include "waitroom.chart" . }}
app.kubernetes.io/name: {{ include "waitroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
