{{/* Names and labels shared by every template. */}}

{{/* The chart label: name-version, as Helm's own starter chart does. */}}
{{- define "axoneme.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; `component` names the part (agent, operator, etcd, config, rbac). */}}
{{- define "axoneme.labels" -}}
helm.sh/chart: {{ include "axoneme.chart" .root }}
app.kubernetes.io/name: axoneme-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: axoneme
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Labels that select a component's pods (stable across upgrades). */}}
{{- define "axoneme.selectorLabels" -}}
app.kubernetes.io/name: axoneme-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* An image reference: repository:tag, the tag defaulting to appVersion. */}}
{{- define "axoneme.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{/* The managed etcd's name and its client URLs. */}}
{{- define "axoneme.etcd.name" -}}axoneme-etcd{{- end }}

{{- define "axoneme.etcd.scheme" -}}
{{ .Values.etcd.tls.enabled | ternary "https" "http" }}
{{- end }}

{{- define "axoneme.etcd.endpoints" -}}
{{- if .Values.etcd.endpoints -}}
{{ join "," .Values.etcd.endpoints }}
{{- else -}}
{{- $scheme := include "axoneme.etcd.scheme" . -}}
{{- $name := include "axoneme.etcd.name" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.managed.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc:2379" $scheme $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{ join "," $urls }}
{{- end -}}
{{- end }}

{{/* Where components mount the etcd client TLS Secret. */}}
{{- define "axoneme.etcd.tlsDir" -}}/etc/axoneme/etcd-tls{{- end }}

{{/*
The RBAC of a component from files/rbac/<component>.yaml — the one source
the e2e tests also apply as it is — with the release's namespace and the
chart's labels.
*/}}
{{- define "axoneme.rbac" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($root.Files.Get (printf "files/rbac/%s.yaml" $component)) -1 }}
{{- $obj := fromYaml $doc }}
{{- if $obj.kind }}
{{- $meta := $obj.metadata }}
{{- if eq $obj.kind "ServiceAccount" }}
{{- $_ := set $meta "namespace" $root.Release.Namespace }}
{{- end }}
{{- if hasKey $meta "namespace" }}
{{- $_ := set $meta "namespace" $root.Release.Namespace }}
{{- end }}
{{- $_ := set $meta "labels" (include "axoneme.labels" (dict "root" $root "component" $component) | fromYaml) }}
{{- range $s := ($obj.subjects | default list) }}
{{- $_ := set $s "namespace" $root.Release.Namespace }}
{{- end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot say clearly: a malformed CIDR gets a message
naming the value and the expected form (a schema pattern would print the
regular expression instead).
*/}}
{{- define "axoneme.validate" -}}
{{- $v4 := "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$" -}}
{{- $v6 := "^[0-9a-fA-F:]*:[0-9a-fA-F:]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$" -}}
{{- range $i, $c := .Values.ipam.operator.clusterPoolIPv4PodCIDRList }}
{{- if not (regexMatch $v4 $c) }}
{{- fail (printf "ipam.operator.clusterPoolIPv4PodCIDRList[%d]: %q is not an IPv4 CIDR (a.b.c.d/N with N from 0 to 32)" $i $c) }}
{{- end }}
{{- end }}
{{- range $i, $c := .Values.ipam.operator.clusterPoolIPv6PodCIDRList }}
{{- if not (regexMatch $v6 $c) }}
{{- fail (printf "ipam.operator.clusterPoolIPv6PodCIDRList[%d]: %q is not an IPv6 CIDR (x:x::x/N with N from 0 to 128)" $i $c) }}
{{- end }}
{{- end }}
{{- end }}
