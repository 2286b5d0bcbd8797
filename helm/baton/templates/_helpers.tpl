{{/*
Names.
*/}}
{{- define "baton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name, or "<release>-baton" when the release name does not
contain the chart name. Kept to 40 characters: pod names add "-<ordinal>", the
StatefulSet's controller-revision-hash label adds 11 more, and Service names add "-peers".
*/}}
{{- define "baton.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "baton.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "baton.labels" -}}
helm.sh/chart: {{ include "baton.chart" . }}
app.kubernetes.io/name: {{ include "baton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: baton
{{- end }}

{{/*
The StatefulSet's pods (the Raft members). The component label keeps the scale-down
Job's pod out of the Services and the PodDisruptionBudget. (Pod templates carry
baton.labels plus the component label, which together hold these.)
*/}}
{{- define "baton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "baton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "baton.scaleDownSelectorLabels" -}}
app.kubernetes.io/name: {{ include "baton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scale-down
{{- end }}

{{- define "baton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "baton.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "baton.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Service and Secret names.
*/}}
{{- define "baton.peersService" -}}
{{- printf "%s-peers" (include "baton.fullname" .) }}
{{- end }}

{{- define "baton.adminService" -}}
{{- printf "%s-admin" (include "baton.fullname" .) }}
{{- end }}

{{- define "baton.adminSecret" -}}
{{- default (printf "%s-admin-token" (include "baton.fullname" .)) .Values.admin.existingSecret }}
{{- end }}

{{- define "baton.adminSecretKey" -}}
{{- if .Values.admin.existingSecret }}{{ .Values.admin.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{- define "baton.peerTLSSecret" -}}
{{- default (printf "%s-peer-tls" (include "baton.fullname" .)) .Values.peerTLS.existingSecret }}
{{- end }}

{{- define "baton.smtpTLSSecret" -}}
{{- default (printf "%s-smtp-tls" (include "baton.fullname" .)) .Values.smtp.tls.existingSecret }}
{{- end }}

{{- define "baton.usersSecret" -}}
{{- default (printf "%s-users" (include "baton.fullname" .)) .Values.smtp.users.existingSecret }}
{{- end }}

{{- define "baton.usersSecretKey" -}}
{{- if .Values.smtp.users.existingSecret }}{{ .Values.smtp.users.existingSecretKey }}{{ else }}users.toml{{ end }}
{{- end }}

{{- define "baton.dkimSecret" -}}
{{- default (printf "%s-dkim" (include "baton.fullname" .)) .Values.dkim.existingSecret }}
{{- end }}

{{/* Whether SMTP users are configured (a users file is mounted). */}}
{{- define "baton.usersEnabled" -}}
{{- if or .Values.smtp.users.existingSecret .Values.smtp.users.list }}true{{ end }}
{{- end }}

{{/* Whether the submission listener exists: it needs SMTP TLS and users (batond refuses
a submission listener without [[smtp.user]]). */}}
{{- define "baton.submissionEnabled" -}}
{{- if and .Values.smtp.tls.enabled (include "baton.usersEnabled" .) }}true{{ end }}
{{- end }}

{{/* The file name of a DKIM key entry in its Secret. */}}
{{- define "baton.dkimFile" -}}
{{- default (printf "%s.%s.pem" .domain .selector) .secretKey }}
{{- end }}

{{/*
A member's DNS name through the headless Service: baton.peerHost (dict "root" $
"pod" "<name or ${POD_NAME}>").
*/}}
{{- define "baton.peerHost" -}}
{{- $root := .root }}
{{- printf "%s.%s.%s.svc.%s" .pod (include "baton.peersService" $root) $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{/*
TOML rendering of a values tree: baton.toml.table (dict "path" "a.b" "table" MAP
"array" BOOL). Keys become snake_case (dnsServers → dns_servers); scalars and lists of
scalars are written as JSON, which is valid TOML for strings, numbers, booleans and
arrays; maps become [tables] and lists of maps [[arrays of tables]]; null values and
empty maps are left out. Scalars come first, as TOML requires.
*/}}
{{- define "baton.toml.key" -}}
{{- $k := snakecase . }}
{{- if regexMatch "^[A-Za-z0-9_-]+$" $k }}{{ $k }}{{ else }}{{ toJson $k }}{{ end }}
{{- end }}

{{- define "baton.toml.isTables" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{- define "baton.toml.table" -}}
{{- $path := .path }}
{{- if $path }}

{{ if .array }}[[{{ $path }}]]{{ else }}[{{ $path }}]{{ end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "baton.toml.isTables" $v)) }}
{{ include "baton.toml.key" $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- $sub := include "baton.toml.key" $k }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}
{{- if and (kindIs "map" $v) $v }}
{{- include "baton.toml.table" (dict "path" $sub "table" $v) }}
{{- else if include "baton.toml.isTables" $v }}
{{- range $item := $v }}
{{- include "baton.toml.table" (dict "path" $sub "table" $item "array" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The batond config (TOML). baton.config (dict "root" $ "join" BOOL): with join false the
cluster.join list (the only part that depends on `replicas`) is left out; the pod
template's checksum is taken over that form, so scaling restarts no pod.
*/}}
{{- define "baton.config" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $fullname := include "baton.fullname" $root }}
{{- $node := dict "id_from_hostname" true "data_dir" "/var/lib/baton" }}
{{- $cluster := dict
      "listen" (printf "0.0.0.0:%d" (int $v.ports.raft))
      "advertise" (printf "%s:%d" (include "baton.peerHost" (dict "root" $root "pod" "${POD_NAME}")) (int $v.ports.raft))
      "bootstrap" true }}
{{- if .join }}
{{- $join := list }}
{{- range $i := until (int $v.replicas) }}
{{- $join = append $join (printf "%s:%d" (include "baton.peerHost" (dict "root" $root "pod" (printf "%s-%d" $fullname $i))) (int $v.ports.raft)) }}
{{- end }}
{{- $_ := set $cluster "join" $join }}
{{- end }}
{{- if $v.peerTLS.enabled }}
{{- $_ := set $cluster "tls_cert" "/etc/baton/peer/${POD_NAME}.crt" }}
{{- $_ := set $cluster "tls_key" "/etc/baton/peer/${POD_NAME}.key" }}
{{- $_ := set $cluster "tls_ca" "/etc/baton/peer/ca.crt" }}
{{- else }}
{{- $_ := set $cluster "insecure" true }}
{{- end }}
{{- $tls := $v.smtp.tls.enabled }}
{{- $listeners := list }}
{{- $modes := list (list "relay" $v.ports.smtp) }}
{{- if include "baton.submissionEnabled" $root }}
{{- $modes = append $modes (list "submission" $v.ports.submission) }}
{{- end }}
{{- if $tls }}
{{- $modes = append $modes (list "implicit-tls" $v.ports.smtps) }}
{{- end }}
{{- range $m := $modes }}
{{- $l := dict "address" (printf "0.0.0.0:%d" (int (index $m 1))) "mode" (index $m 0) "proxy_protocol" $v.service.proxyProtocol }}
{{- if $v.service.proxyProtocol }}
{{- $_ := set $l "proxy_trusted" $v.service.proxyTrusted }}
{{- end }}
{{- if eq (index $m 0) "relay" }}
{{- $_ := set $l "relay_networks" $v.smtp.relayNetworks }}
{{- end }}
{{- if $tls }}
{{- $_ := set $l "tls_cert" "/etc/baton/tls/tls.crt" }}
{{- $_ := set $l "tls_key" "/etc/baton/tls/tls.key" }}
{{- end }}
{{- $listeners = append $listeners $l }}
{{- end }}
{{- $smtp := dict "listener" $listeners }}
{{- if include "baton.usersEnabled" $root }}
{{- $_ := set $smtp "users_file" "/etc/baton/users/users.toml" }}
{{- end }}
{{- $owned := dict
      "node" $node
      "cluster" $cluster
      "smtp" $smtp
      "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.ports.admin)) "token" "${BATON_ADMIN_TOKEN}")
      "http" (dict "listen" (printf "0.0.0.0:%d" (int $v.ports.http))) }}
{{- $dkim := list }}
{{- range $k := $v.dkim.keys }}
{{- $d := dict "domain" $k.domain "selector" $k.selector "key_file" (printf "/etc/baton/dkim/%s" (include "baton.dkimFile" $k)) }}
{{- if $k.algorithm }}{{ $_ := set $d "algorithm" $k.algorithm }}{{ end }}
{{- if $k.tenants }}{{ $_ := set $d "tenants" $k.tenants }}{{ end }}
{{- if $k.headers }}{{ $_ := set $d "headers" $k.headers }}{{ end }}
{{- $dkim = append $dkim $d }}
{{- end }}
{{- if $dkim }}{{ $_ := set $owned "dkim" $dkim }}{{ end }}
{{- $cfg := merge $owned (deepCopy $v.config) -}}
# batond config rendered by the Helm chart {{ include "baton.chart" $root }} for release {{ $root.Release.Name }}.
# ${NAME} is replaced by environment variable NAME when batond reads it (POD_NAME,
# BATON_ADMIN_TOKEN from the pod spec); the node id is the pod's ordinal + 1.
{{- include "baton.toml.table" (dict "path" "" "table" $cfg) }}
{{- with $v.extraConfig }}

# extraConfig
{{ . }}
{{- end }}
{{- end }}
