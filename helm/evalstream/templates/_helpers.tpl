{{/* Names, labels, images and the environment every evalstream container shares. */}}

{{- define "evalstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evalstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: evalstream.component (dict "root" $ "component" "judge-rules"). */}}
{{- define "evalstream.component" -}}
{{- printf "%s-%s" (include "evalstream.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evalstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evalstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "evalstream.labels" -}}
{{ include "evalstream.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: evalstream
{{- end -}}

{{/* Labels the Prometheus Operator selects on, beside the chart's own. */}}
{{- define "evalstream.monitoringLabels" -}}
{{ include "evalstream.labels" . }}
{{- with .root.Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "evalstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "evalstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An evalstream image: evalstream.image (dict "root" $ "image" .Values.exporter.image). */}}
{{- define "evalstream.image" -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion (default .root.Values.image.tag .image.tag)) -}}
{{- end -}}

{{/* A settings map as environment variables: evalstream.settingsEnv (dict "prefix" "EVALSTREAM_JUDGE_"
     "settings" .settings). Strings go as they are; numbers, booleans, lists and maps as JSON. */}}
{{- define "evalstream.settingsEnv" -}}
{{- range $key, $value := .settings }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "%s%s" $.prefix (upper $key) }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ toJson $value | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* EVALSTREAM_KAFKA_*: bootstrap, protocol, SASL (password from a Secret) and the TLS CA file. */}}
{{- define "evalstream.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
- name: EVALSTREAM_KAFKA_BOOTSTRAP
  value: {{ $k.bootstrap | quote }}
- name: EVALSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.security_protocol | quote }}
- name: EVALSTREAM_KAFKA_CLIENT_ID
  value: {{ $k.client_id | quote }}
{{- if $k.sasl_mechanism }}
- name: EVALSTREAM_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl_mechanism | quote }}
- name: EVALSTREAM_KAFKA_SASL_USERNAME
  value: {{ $k.sasl_username | quote }}
- name: EVALSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl_password_secret.name }}
      key: {{ $k.sasl_password_secret.key }}
{{- end }}
{{- if $k.ssl_ca_secret.name }}
- name: EVALSTREAM_KAFKA_SSL_CAFILE
  value: /etc/evalstream/kafka-ca/{{ $k.ssl_ca_secret.key }}
{{- end }}
{{- end -}}

{{- define "evalstream.kafkaVolumeMounts" -}}
{{- if .Values.kafka.ssl_ca_secret.name }}
- name: kafka-ca
  mountPath: /etc/evalstream/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "evalstream.kafkaVolumes" -}}
{{- if .Values.kafka.ssl_ca_secret.name }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.ssl_ca_secret.name }}
    items:
      - key: {{ .Values.kafka.ssl_ca_secret.key }}
        path: {{ .Values.kafka.ssl_ca_secret.key }}
{{- end }}
{{- end -}}

{{/* The judge endpoints of the enabled tiers, as EVALSTREAM_PIPELINE_JUDGES wants them. */}}
{{- define "evalstream.judgeEndpoints" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $tier, $name := dict "0" "rules" "1" "encoder" "2" "llm" }}
{{- if (index $root.Values.judges $name).enabled }}
{{- $out = append $out (printf "%s=%s.%s.svc:%v" $tier (include "evalstream.component" (dict "root" $root "component" (printf "judge-%s" $name))) $root.Release.Namespace $root.Values.judgeService.grpcPort) }}
{{- end }}
{{- end }}
{{- join "," $out -}}
{{- end -}}
