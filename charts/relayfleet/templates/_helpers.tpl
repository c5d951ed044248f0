{{- define "relayfleet.name" -}}relayfleet-operator{{- end -}}

{{- define "relayfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ include "relayfleet.name" . }}{{- end -}}
{{- end -}}

{{- define "relayfleet.labels" -}}
app.kubernetes.io/name: {{ include "relayfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: relayfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
