{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "pgsluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "pgsluice.fullname" -}}
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

{{- define "pgsluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "pgsluice.labels" -}}
helm.sh/chart: {{ include "pgsluice.chart" . }}
{{ include "pgsluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgsluice
{{- end }}

{{/* Labels that select the pods; never change them on an installed release. */}}
{{- define "pgsluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgsluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret holding PGSLUICE_AUTH_USERS ("" when there is none). */}}
{{- define "pgsluice.secretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.users }}
{{- printf "%s-users" (include "pgsluice.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The pgsluice.yaml the ConfigMap holds: .Values.config with the listen
addresses taken from the Service ports and auth.method from .Values.auth.
*/}}
{{- define "pgsluice.config" -}}
{{- $host := required "config.primary.host is required: the PostgreSQL primary's host name or address" .Values.config.primary.host -}}
{{- if and (ne .Values.auth.method "trust") (not .Values.auth.existingSecret) (not .Values.auth.users) -}}
{{- fail "auth.users or auth.existingSecret is required unless auth.method is trust" -}}
{{- end -}}
{{- $fixed := dict "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.service.adminPort))) "auth" (dict "method" .Values.auth.method) -}}
{{- $cfg := mustMergeOverwrite (deepCopy .Values.config) $fixed -}}
{{- toYaml $cfg }}
{{- end }}

{{/* "name:password,..." from .Values.auth.users, refusing what the env format cannot carry. */}}
{{- define "pgsluice.usersEnv" -}}
{{- $out := list -}}
{{- range $i, $u := .Values.auth.users -}}
{{- if or (not $u.name) (contains ":" $u.name) (contains "," $u.name) -}}
{{- fail (printf "auth.users[%d].name must be set and contain neither ':' nor ','" $i) -}}
{{- end -}}
{{- if contains "," (toString $u.password) -}}
{{- fail (printf "auth.users[%d].password must not contain ','" $i) -}}
{{- end -}}
{{- $out = append $out (printf "%s:%s" $u.name (toString $u.password)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end }}
