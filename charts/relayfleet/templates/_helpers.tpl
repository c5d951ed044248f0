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

{{- /* What selects the operator's pods (Deployment, PodDisruptionBudget, spread constraints). */ -}}
{{- define "relayfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relayfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The operator pods' labels: podLabels, then the chart's (which win, so the selector always matches). */ -}}
{{- define "relayfleet.podLabels" -}}
{{- $labels := merge (include "relayfleet.labels" . | fromYaml) (deepCopy .Values.podLabels) -}}
{{- toYaml $labels -}}
{{- end -}}

{{- /* Non-empty when the operator pods peer (replicaCount > 1): peering CRD, RBAC, PDB, rolling updates. */ -}}
{{- define "relayfleet.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{- /* The example SmtpRelay's name (relay.enabled): relay.name, else <fullname>-relay, within the CRD's 52. */ -}}
{{- define "relayfleet.relayName" -}}
{{- .Values.relay.name | default (printf "%s-relay" (include "relayfleet.fullname" .)) | trunc 52 | trimSuffix "-" -}}
{{- end -}}
