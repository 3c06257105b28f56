{{- define "tenantwatch.labels" -}}
app.kubernetes.io/name: tenantwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tenantwatch.selector" -}}
app.kubernetes.io/name: tenantwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
