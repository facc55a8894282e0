{{/* Names, labels and the settings every template shares. */}}

{{- define "cloudpods.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cloudpods.fullname" -}}
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

{{/* "<fullname>-<suffix>", within the 63 characters of a DNS label. */}}
{{- define "cloudpods.child" -}}
{{- printf "%s-%s" (include "cloudpods.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "cloudpods.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "cloudpods.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "cloudpods.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudpods
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator"). */}}
{{- define "cloudpods.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudpods.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cloudpods.componentLabels" -}}
{{ include "cloudpods.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cloudpods.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "cloudpods.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "cloudpods.tag" .) -}}
{{- end -}}

{{- define "cloudpods.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "cloudpods.child" (dict "root" . "suffix" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cloudpods.apiServiceAccount" -}}
{{- if .Values.api.serviceAccount.create -}}
{{- default (include "cloudpods.child" (dict "root" . "suffix" "api")) .Values.api.serviceAccount.name -}}
{{- else -}}
{{- required "api.serviceAccount.name is required when api.serviceAccount.create is false" .Values.api.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace the API writes CloudPods into. */}}
{{- define "cloudpods.apiNamespace" -}}
{{- .Values.api.cloudpodNamespace | default .Release.Namespace -}}
{{- end -}}

{{/* The leader election's id (also the Lease's name): one per release by default. */}}
{{- define "cloudpods.electionId" -}}
{{- .Values.operator.leaderElection.id | default (printf "%s-operator" (include "cloudpods.fullname" .)) -}}
{{- end }}

{{/* Whether the leader additionally holds a coordination.k8s.io Lease ("true" or empty). */}}
{{- define "cloudpods.leaseEnabled" -}}
{{- if and .Values.operator.leaderElection.enabled .Values.operator.leaderElection.lease.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Secret names and keys. Each of the four secrets is either created by the chart from its
value or taken from existingSecret (then the chart creates nothing).
*/}}
{{- define "cloudpods.databaseSecret" -}}
{{- .Values.database.existingSecret | default (include "cloudpods.child" (dict "root" . "suffix" "database")) -}}
{{- end -}}
{{- define "cloudpods.jwtSecret" -}}
{{- .Values.jwt.existingSecret | default (include "cloudpods.child" (dict "root" . "suffix" "jwt")) -}}
{{- end -}}
{{- define "cloudpods.sshKeySecret" -}}
{{- .Values.ssh.privateKey.existingSecret | default (include "cloudpods.child" (dict "root" . "suffix" "ssh-key")) -}}
{{- end -}}
{{- define "cloudpods.knownHostsSecret" -}}
{{- .Values.ssh.knownHosts.existingSecret | default (include "cloudpods.child" (dict "root" . "suffix" "known-hosts")) -}}
{{- end -}}

{{/* The restricted container securityContext (Pod Security Standards "restricted"). */}}
{{- define "cloudpods.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cloudpods.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* DATABASE_URL from its Secret, and the pool size. */}}
{{- define "cloudpods.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "cloudpods.databaseSecret" . }}
      key: {{ .Values.database.existingSecretKey }}
- name: CLOUDPODS_DATABASE_MAX_CONNECTIONS
  value: {{ .Values.database.maxConnections | quote }}
{{- end -}}

{{- define "cloudpods.logEnv" -}}
- name: CLOUDPODS_LOG
  value: {{ .Values.log.level | quote }}
- name: CLOUDPODS_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- end -}}

{{- define "cloudpods.quotaEnv" -}}
- name: CLOUDPODS_DEFAULT_MAX_PODS
  value: {{ .Values.quotaDefaults.maxPods | quote }}
- name: CLOUDPODS_DEFAULT_MAX_CPU_CORES
  value: {{ .Values.quotaDefaults.maxCpuCores | quote }}
- name: CLOUDPODS_DEFAULT_MAX_MEMORY_MB
  value: {{ .Values.quotaDefaults.maxMemoryMb | quote }}
- name: CLOUDPODS_DEFAULT_MAX_DISK_GB
  value: {{ .Values.quotaDefaults.maxDiskGb | quote }}
{{- end -}}

{{/* The migration init container (`cloudpods migrate`), run before each component starts. */}}
{{- define "cloudpods.migrateContainer" -}}
- name: migrate
  image: {{ include "cloudpods.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - migrate
  env:
    {{- include "cloudpods.logEnv" . | nindent 4 }}
    {{- include "cloudpods.databaseEnv" . | nindent 4 }}
    {{- if .Values.catalog }}
    - name: CLOUDPODS_CATALOG
      value: /etc/cloudpods/config/catalog.yaml
    {{- end }}
  securityContext:
    {{- include "cloudpods.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml .Values.migration.resources | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/cloudpods/config
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Checks of combinations that would install but not work. */}}
{{- define "cloudpods.validate" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "set database.url or database.existingSecret (a Secret holding the PostgreSQL URL)" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.ssh.privateKey.existingSecret) (not .Values.ssh.privateKey.value) -}}
{{- fail "set ssh.privateKey.value or ssh.privateKey.existingSecret (the unencrypted ed25519 key for the Proxmox nodes)" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.ssh.knownHosts.existingSecret) (not .Values.ssh.knownHosts.value) -}}
{{- fail "set ssh.knownHosts.value or ssh.knownHosts.existingSecret (known_hosts listing every node's host key)" -}}
{{- end -}}
{{- if and .Values.api.enabled (not .Values.jwt.existingSecret) (not .Values.jwt.key) -}}
{{- fail "set jwt.key or jwt.existingSecret (HS256: the shared secret; RS256/ES256: mPanel's PEM public key)" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.proxmox.nodes) -}}
{{- fail "proxmox.nodes lists no node: the operator needs at least one Proxmox node" -}}
{{- end -}}
{{- if and .Values.operator.enabled (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: two replicas without an election would both reconcile" -}}
{{- end -}}
{{- if and .Values.operator.enabled .Values.api.enabled .Values.operator.watchNamespace (ne .Values.operator.watchNamespace (include "cloudpods.apiNamespace" .)) -}}
{{- fail (printf "operator.watchNamespace (%s) must be the namespace the API writes CloudPods to (%s): the operator would never see the API's orders" .Values.operator.watchNamespace (include "cloudpods.apiNamespace" .)) -}}
{{- end -}}
{{- if not (has .Values.jwt.algorithm (list "HS256" "RS256" "ES256")) -}}
{{- fail "jwt.algorithm must be HS256, RS256 or ES256" -}}
{{- end -}}
{{- end -}}
