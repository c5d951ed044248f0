{{- /* The app.kubernetes.io/name of the operator's objects (selector labels and the relays' NetworkPolicy). */ -}}
{{- define "relayfleet.name" -}}relayfleet-operator{{- end -}}

{{- /* Namespaced objects: from the release, so two releases never share a name (fullnameOverride wins). */ -}}
{{- define "relayfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "relayfleet" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-relayfleet" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- /* Objects outside the release's namespace (ClusterRole, ClusterRoleBinding, the Roles in watched namespaces):
the release's namespace too, since two releases of the same name may live in different namespaces. */ -}}
{{- define "relayfleet.clusterName" -}}
{{- printf "%s-%s" (include "relayfleet.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relayfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ include "relayfleet.fullname" . }}{{- end -}}
{{- end -}}

{{- define "relayfleet.labels" -}}
app.kubernetes.io/name: {{ include "relayfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: relayfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
