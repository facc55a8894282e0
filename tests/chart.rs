//! The Helm chart `charts/cloudpods`: rendered with `helm template` for several values sets;
//! built-in kinds checked by kubernetes-validate --strict against the published Kubernetes
//! schemas, ServiceMonitors against prometheus-operator's, CRDs and custom resources by a
//! server-side dry run against the test API server; then what the objects must mean
//! (restricted pods, exactly the RBAC the code needs, secrets only by reference, probes).
//!
//! Needs `CLOUDPODS_HELM`, `CLOUDPODS_K8S_VALIDATE` and `CLOUDPODS_SERVICEMONITOR_VALIDATE`
//! (scripts/chart-tools, which scripts/test runs) and, for the dry runs, `KUBECONFIG`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::kube::{ensure_crds, kubectl_stdin, text, unique_namespace};
use serde_json::Value;

const RELEASE: &str = "cp";
const NAMESPACE: &str = "cloudpods-system";
const GROUP: &str = "cloudpods.migrahosting.com";
/// Kubernetes versions the built-in objects are validated against (oldest and newest supported).
const KUBE_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The settings the chart cannot default (obviously fake credentials).
const REQUIRED: &str = r#"
database:
  url: postgres://cloudpods:not-a-real-password@db.example:5432/cloudpods
jwt:
  key: test-only-shared-secret-0123456789abcdef
ssh:
  privateKey:
    value: |
      -----BEGIN OPENSSH PRIVATE KEY-----
      test-only-not-a-key
      -----END OPENSSH PRIVATE KEY-----
  knownHosts:
    value: |
      10.0.0.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8ViQ+4H6Gs5f8l1uvE7nKD4tfE2yE5Fyq4n2CwZ5tP
proxmox:
  nodes:
    - name: pve1
      host: 10.0.0.11
    - name: pve2
      host: pve2.example.net
      port: 2222
"#;

const EXISTING_SECRETS: &str = r#"
database: {url: "", existingSecret: corp-db, existingSecretKey: url}
jwt: {key: "", existingSecret: corp-jwt, existingSecretKey: mpanel.pub, algorithm: RS256}
ssh:
  privateKey: {value: "", existingSecret: corp-ssh, existingSecretKey: key}
  knownHosts: {value: "", existingSecret: corp-known-hosts, existingSecretKey: hosts}
"#;

// ---- the expected RBAC, one row per (API group, resource, verbs) -----------------------

type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The operator's cluster-wide rules when it watches all namespaces.
const OPERATOR_CLUSTER_RULES: &[Rule] = &[
    (GROUP, "cloudpods", &["get", "list", "watch", "patch"]),
    (GROUP, "cloudpods/status", &["patch"]),
    (GROUP, "tenantquotas", &["list", "watch"]),
    (GROUP, "tenantquotas/status", &["patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];
/// With `watchNamespace`: cluster-wide only what is cluster-scoped ...
const OPERATOR_CLUSTER_RULES_NAMESPACED: &[Rule] = &[
    (GROUP, "tenantquotas", &["list", "watch"]),
    (GROUP, "tenantquotas/status", &["patch"]),
];
/// ... and a Role in the watched namespace.
const OPERATOR_WATCH_ROLE_RULES: &[Rule] = &[
    (GROUP, "cloudpods", &["get", "list", "watch", "patch"]),
    (GROUP, "cloudpods/status", &["patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];
/// TenantQuota events (cluster-scoped object) land in "default".
const OPERATOR_DEFAULT_EVENTS_RULES: &[Rule] = &[("events.k8s.io", "events", &["create", "patch"])];
/// The API: CloudPods in its namespace (SSA create, merge patches, destroy, detail) ...
const API_ROLE_RULES: &[Rule] = &[(GROUP, "cloudpods", &["get", "create", "patch", "delete"])];
/// ... and TenantQuotas (admin route, server-side apply).
const API_CLUSTER_RULES: &[Rule] = &[(GROUP, "tenantquotas", &["create", "patch"])];

// ---- tools and rendering ------------------------------------------------------------------

fn tool(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: run the tests through scripts/test (it installs helm and the validators with scripts/chart-tools; or eval \"$(scripts/chart-tools)\")"
        ),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("charts/cloudpods")
}

/// Runs helm with its caches and config in `home` (never the user's).
fn helm(home: &Path, args: &[&str]) -> Output {
    Command::new(tool("CLOUDPODS_HELM"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

/// One `helm template` result.
struct Rendered {
    objects: Vec<Value>,
}

/// `helm template` with the values files `layers` (in order); Err is helm's message.
fn try_render(layers: &[&str], include_crds: bool) -> Result<Rendered, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = chart_dir();
    let mut args: Vec<String> = vec![
        "template".into(),
        RELEASE.into(),
        chart.to_str().expect("utf-8 path").into(),
        "--namespace".into(),
        NAMESPACE.into(),
    ];
    if include_crds {
        args.push("--include-crds".into());
    }
    for (i, layer) in layers.iter().enumerate() {
        let path = dir.path().join(format!("values-{i}.yaml"));
        std::fs::write(&path, layer).expect("write values");
        args.push("--values".into());
        args.push(path.to_str().expect("utf-8 path").into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(dir.path(), &args);
    if !out.status.success() {
        return Err(text(&out));
    }
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    Ok(Rendered {
        objects: parse_docs(&yaml),
    })
}

fn render(layers: &[&str]) -> Rendered {
    try_render(layers, false).unwrap_or_else(|e| panic!("helm template failed:\n{e}"))
}

/// helm's message for values the chart must refuse.
fn render_err(layers: &[&str], why: &str) -> String {
    match try_render(layers, false) {
        Ok(_) => panic!("helm template rendered, but must refuse: {why}"),
        Err(e) => e,
    }
}

/// The non-empty YAML documents of a stream.
fn parse_docs(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// Every Role and ClusterRole.
    fn roles(&self) -> Vec<&Value> {
        let mut all = self.of_kind("Role");
        all.extend(self.of_kind("ClusterRole"));
        all
    }

    /// Every RoleBinding and ClusterRoleBinding.
    fn bindings(&self) -> Vec<&Value> {
        let mut all = self.of_kind("RoleBinding");
        all.extend(self.of_kind("ClusterRoleBinding"));
        all
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.try_get(kind, name).unwrap_or_else(|| {
            panic!(
                "no {kind} {name}; rendered: {:?}",
                self.objects.iter().map(id).collect::<Vec<_>>()
            )
        })
    }

    fn try_get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn deployment(&self, component: &str) -> &Value {
        self.get("Deployment", &format!("{RELEASE}-cloudpods-{component}"))
    }
}

fn id(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
}

/// Every container of a pod template, init containers included.
fn containers(deploy: &Value) -> Vec<&Value> {
    let spec = &deploy["spec"]["template"]["spec"];
    let mut all: Vec<&Value> = arr(&spec["containers"]).iter().collect();
    if let Some(init) = spec["initContainers"].as_array() {
        all.extend(init.iter());
    }
    all
}

fn main_container<'a>(deploy: &'a Value, name: &str) -> &'a Value {
    arr(&deploy["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", id(deploy)))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container, name).and_then(|e| e["value"].as_str())
}

/// A Role's or ClusterRole's rules as (group, resource, verb, resourceName) rows.
fn rule_rows(role: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut rows = BTreeSet::new();
    for rule in arr(&role["rules"]) {
        let names: Vec<String> = rule["resourceNames"]
            .as_array()
            .map(|n| n.iter().map(|v| str_of(v).to_string()).collect())
            .unwrap_or_else(|| vec![String::new()]);
        for g in arr(&rule["apiGroups"]) {
            for r in arr(&rule["resources"]) {
                for v in arr(&rule["verbs"]) {
                    for n in &names {
                        rows.insert((
                            str_of(g).to_string(),
                            str_of(r).to_string(),
                            str_of(v).to_string(),
                            n.clone(),
                        ));
                    }
                }
            }
        }
    }
    rows
}

fn expected_rows(rules: &[Rule]) -> BTreeSet<(String, String, String, String)> {
    rules
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string(), String::new()))
        })
        .collect()
}

fn assert_rules(role: &Value, expected: &[Rule]) {
    let got = rule_rows(role);
    let want = expected_rows(expected);
    assert_eq!(
        got,
        want,
        "{} grants {:?} more and {:?} less than expected",
        id(role),
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );
}

// ---- validation helpers ---------------------------------------------------------------------

const BUILT_IN_GROUPS: &[&str] = &[
    "v1",
    "apps/v1",
    "rbac.authorization.k8s.io/v1",
    "policy/v1",
    "networking.k8s.io/v1",
];

/// Every built-in object passes kubernetes-validate --strict for each version in KUBE_VERSIONS;
/// every other object is a CRD or a ServiceMonitor, validated elsewhere.
fn validate_built_ins(r: &Rendered) {
    let (built_in, other): (Vec<&Value>, Vec<&Value>) = r
        .objects
        .iter()
        .partition(|o| BUILT_IN_GROUPS.contains(&str_of(&o["apiVersion"])));
    for o in &other {
        assert!(
            o["kind"] == "CustomResourceDefinition" || o["kind"] == "ServiceMonitor",
            "{} ({}) is neither a built-in kind nor one this test validates",
            id(o),
            o["apiVersion"]
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("built-in.yaml");
    let stream: Vec<String> = built_in
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect();
    std::fs::write(&file, stream.join("\n---\n")).expect("write objects");
    for version in KUBE_VERSIONS {
        let out = Command::new(tool("CLOUDPODS_K8S_VALIDATE"))
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let report = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{report}"
        );
        // An unknown kind is only a warning there: every object must have passed.
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            built_in.len(),
            "kubernetes-validate {version} passed {passed} of {} objects:\n{report}",
            built_in.len()
        );
    }
}

/// Server-side dry run of `manifest` against the test API server.
fn dry_run(namespace: &str, manifest: &str) {
    let out = kubectl_stdin(
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cloudpods-chart-test",
            "-n",
            namespace,
            "-f",
            "-",
        ],
        Some(manifest),
    );
    assert!(
        out.status.success(),
        "server-side dry run failed:\n{}\n{manifest}",
        text(&out)
    );
}

/// The semantic checks every rendering must pass.
fn check_common(r: &Rendered) {
    validate_built_ins(r);

    // No wildcard anywhere in RBAC; every binding names a rendered role and ServiceAccount.
    let accounts: BTreeSet<&str> = r
        .of_kind("ServiceAccount")
        .iter()
        .map(|sa| str_of(&sa["metadata"]["name"]))
        .collect();
    for role in r.roles() {
        for (g, res, verb, _) in rule_rows(role) {
            assert!(
                !g.contains('*') && !res.contains('*') && !verb.contains('*'),
                "{} has a wildcard: {g} {res} {verb}",
                id(role)
            );
        }
        assert!(
            arr(&role["rules"])
                .iter()
                .all(|rule| rule.get("nonResourceURLs").is_none()),
            "{} grants non-resource URLs",
            id(role)
        );
    }
    for binding in r.bindings() {
        let role_ref = &binding["roleRef"];
        let role = r.get(str_of(&role_ref["kind"]), str_of(&role_ref["name"]));
        if binding["kind"] == "RoleBinding" {
            assert_eq!(
                role["metadata"]["namespace"],
                binding["metadata"]["namespace"],
                "{} binds a Role of another namespace",
                id(binding)
            );
        }
        for s in arr(&binding["subjects"]) {
            assert_eq!(s["kind"], "ServiceAccount", "{}", id(binding));
            assert_eq!(s["namespace"], NAMESPACE, "{}", id(binding));
            assert!(
                accounts.contains(str_of(&s["name"])),
                "{} binds ServiceAccount {} that the chart does not create",
                id(binding),
                s["name"]
            );
        }
    }

    let cli = std::fs::read_to_string(root().join("src/cli.rs")).expect("read src/cli.rs");
    for deploy in r.of_kind("Deployment") {
        let pod = &deploy["spec"]["template"]["spec"];
        // Restricted pod and container security contexts.
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{}", id(deploy));
        assert!(
            psc["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{}",
            id(deploy)
        );
        assert_eq!(
            psc["seccompProfile"]["type"],
            "RuntimeDefault",
            "{}",
            id(deploy)
        );
        assert!(
            accounts.contains(str_of(&pod["serviceAccountName"])),
            "{} runs as a ServiceAccount the chart does not create",
            id(deploy)
        );
        let volumes = arr(&pod["volumes"]);
        for c in containers(deploy) {
            let at = format!("{} container {}", id(deploy), c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{at}");
            assert!(
                sc["runAsUser"].as_u64().is_some_and(|u| u > 0),
                "{at}: numeric non-root runAsUser"
            );
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{at}"
            );
            assert!(sc["capabilities"].get("add").is_none(), "{at}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
            for kind in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][kind][res].is_null(),
                        "{at}: no {kind}.{res}"
                    );
                }
            }
            // A writable /tmp, since the root filesystem is read-only.
            let tmp = arr(&c["volumeMounts"])
                .iter()
                .find(|m| m["mountPath"] == "/tmp")
                .unwrap_or_else(|| panic!("{at}: no /tmp mount"));
            let vol = volumes
                .iter()
                .find(|v| v["name"] == tmp["name"])
                .expect("tmp volume");
            assert!(
                vol.get("emptyDir").is_some(),
                "{at}: /tmp is not an emptyDir"
            );
            // Secrets: never in args, only by reference; files read-only.
            let args = serde_json::to_string(&c["args"]).expect("json");
            assert!(
                c.get("command").is_none(),
                "{at}: the image's entrypoint is cloudpods"
            );
            assert!(
                ["[\"operator\"]", "[\"api\"]", "[\"migrate\"]"].contains(&args.as_str()),
                "{at}: unexpected args {args}"
            );
            for e in c["env"].as_array().into_iter().flatten() {
                let name = str_of(&e["name"]);
                assert!(
                    e.get("value").is_some() ^ e.get("valueFrom").is_some(),
                    "{at}: {name}"
                );
                if name == "DATABASE_URL" {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_object(),
                        "{at}: DATABASE_URL not from a Secret"
                    );
                }
                assert!(
                    cli.contains(&format!("env = \"{name}\"")),
                    "{at}: {name} is not a setting in src/cli.rs"
                );
                if let Some(v) = e["value"].as_str() {
                    assert!(
                        !v.contains("not-a-real-password") && !v.contains("test-only"),
                        "{at}: a secret in env {name}"
                    );
                }
            }
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let vol = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("{at}: mount of unknown volume {}", m["name"]));
                if vol.get("secret").is_some()
                    || vol.get("projected").is_some()
                    || vol.get("configMap").is_some()
                {
                    assert_eq!(m["readOnly"], true, "{at}: {} is writable", m["name"]);
                }
            }
        }
        // Probes: right paths on the port the process listens on.
        let main = main_container(
            deploy,
            if id(deploy).ends_with("-operator") {
                "operator"
            } else {
                "api"
            },
        );
        let listen_var = if main["name"] == "operator" {
            "CLOUDPODS_OPERATOR_LISTEN"
        } else {
            "CLOUDPODS_API_LISTEN"
        };
        let listen = env_value(main, listen_var)
            .unwrap_or_else(|| panic!("{}: no {listen_var}", id(deploy)));
        let port: u64 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("listen port");
        let http = arr(&main["ports"])
            .iter()
            .find(|p| p["name"] == "http")
            .expect("port http");
        assert_eq!(http["containerPort"], port, "{}", id(deploy));
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(
                main[probe]["httpGet"]["path"],
                path,
                "{} {probe}",
                id(deploy)
            );
            assert_eq!(
                main[probe]["httpGet"]["port"],
                "http",
                "{} {probe}",
                id(deploy)
            );
        }
    }

    // Each Service selects the pods of exactly one Deployment and targets a named port of it.
    for svc in r.of_kind("Service") {
        let selector = svc["spec"]["selector"].as_object().expect("selector");
        let matching: Vec<&Value> = r
            .of_kind("Deployment")
            .into_iter()
            .filter(|d| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{} selects {} Deployments",
            id(svc),
            matching.len()
        );
        let ports: Vec<&Value> = arr(&matching[0]["spec"]["template"]["spec"]["containers"])
            .iter()
            .flat_map(|c| arr(&c["ports"]).iter())
            .collect();
        for p in arr(&svc["spec"]["ports"]) {
            assert!(
                ports.iter().any(|cp| cp["name"] == p["targetPort"]),
                "{} targets port {} that {} does not name",
                id(svc),
                p["targetPort"],
                id(matching[0])
            );
        }
    }
}

fn check_service_monitors(r: &Rendered) {
    let monitors = r.of_kind("ServiceMonitor");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, m) in monitors.iter().enumerate() {
        let f = dir.path().join(format!("sm-{i}.json"));
        std::fs::write(&f, serde_json::to_vec(m).expect("json")).expect("write");
        files.push(f);
        // What prometheus-operator needs to find the target (its schema does not forbid
        // unknown fields, so the structure is checked here too).
        let keys: BTreeSet<&str> = m["spec"]
            .as_object()
            .expect("spec")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["endpoints", "namespaceSelector", "selector"]),
            "{}",
            id(m)
        );
        assert_eq!(
            m["spec"]["namespaceSelector"]["matchNames"],
            serde_json::json!([NAMESPACE])
        );
        let selector = m["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let services: Vec<&Value> = r
            .of_kind("Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .collect();
        assert_eq!(
            services.len(),
            1,
            "{} selects {} Services",
            id(m),
            services.len()
        );
        for ep in arr(&m["spec"]["endpoints"]) {
            let ep_keys: BTreeSet<&str> = ep
                .as_object()
                .expect("endpoint")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                ep_keys,
                BTreeSet::from(["interval", "path", "port", "scrapeTimeout"]),
                "{}",
                id(m)
            );
            assert_eq!(ep["path"], "/metrics");
            assert!(
                arr(&services[0]["spec"]["ports"])
                    .iter()
                    .any(|p| p["name"] == ep["port"]),
                "{} scrapes port {} that {} does not name",
                id(m),
                ep["port"],
                id(services[0])
            );
        }
    }
    if files.is_empty() {
        return;
    }
    let out = Command::new(tool("CLOUDPODS_SERVICEMONITOR_VALIDATE"))
        .args(&files)
        .output()
        .expect("run the ServiceMonitor validator");
    let report = text(&out);
    assert!(out.status.success(), "ServiceMonitor validation:\n{report}");
    assert_eq!(
        report.matches("valid ServiceMonitor").count(),
        files.len(),
        "{report}"
    );
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn chart_lints_strictly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("required.yaml");
    std::fs::write(&values, REQUIRED).expect("write values");
    let chart = chart_dir();
    let out = helm(
        dir.path(),
        &[
            "lint",
            "--strict",
            chart.to_str().expect("utf-8"),
            "--values",
            values.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "helm lint --strict:\n{}", text(&out));
}

#[test]
fn chart_metadata_follows_the_crate() {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("read Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion must be the crate version"
    );
    let r = render(&[REQUIRED]);
    for d in r.of_kind("Deployment") {
        for c in containers(d) {
            assert_eq!(
                c["image"],
                format!(
                    "ghcr.io/migrahosting/cloudpods:{}",
                    env!("CARGO_PKG_VERSION")
                ),
                "{}: the default tag is appVersion",
                id(d)
            );
        }
    }
}

#[test]
fn chart_crds_are_the_generated_ones_byte_for_byte() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("crds")).expect("read crds/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_owned();
        let ours = std::fs::read(&path).expect("read crd");
        let chart = std::fs::read(chart_dir().join("crds").join(&name)).unwrap_or_else(|_| {
            panic!("charts/cloudpods/crds/{name:?} is missing: copy crds/ into the chart")
        });
        assert!(
            ours == chart,
            "charts/cloudpods/crds/{name:?} differs from crds/{name:?}: copy it again"
        );
        names.push(name);
    }
    let in_chart = std::fs::read_dir(chart_dir().join("crds"))
        .expect("read chart crds")
        .count();
    assert_eq!(
        in_chart,
        names.len(),
        "the chart has CRD files that crds/ does not"
    );
    assert!(!names.is_empty());
}

#[test]
fn rendered_crds_and_example_resources_pass_a_server_side_dry_run() {
    ensure_crds();
    let r = try_render(&[REQUIRED], true).unwrap_or_else(|e| panic!("{e}"));
    let crds = r.of_kind("CustomResourceDefinition");
    assert_eq!(crds.len(), 2, "helm --include-crds renders both CRDs");
    for crd in crds {
        dry_run("default", &serde_json::to_string(crd).expect("json"));
    }
    // The chart renders no custom resources; the README's examples must be valid ones.
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("read chart README");
    let examples: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains(&format!("apiVersion: {GROUP}/")))
        .collect();
    assert!(
        !examples.is_empty(),
        "the chart README shows no CloudPod/TenantQuota example"
    );
    let ns = unique_namespace("chart-example");
    for example in examples {
        let docs = parse_docs(example);
        for doc in &docs {
            let mut doc = doc.clone();
            if doc["kind"] == "CloudPod" {
                doc["metadata"]["namespace"] = Value::String(ns.clone());
            }
            dry_run(&ns, &serde_json::to_string(&doc).expect("json"));
        }
    }
}

#[test]
fn defaults_fail_with_a_clear_message_until_required_values_are_set() {
    let err = render_err(&[], "pure defaults must not render");
    assert!(
        err.contains("database.url or database.existingSecret"),
        "{err}"
    );
    let no_nodes = render_err(&[REQUIRED, "proxmox: {nodes: []}"], "no nodes");
    assert!(no_nodes.contains("proxmox.nodes"), "{no_nodes}");
    let bad_alg = render_err(&[REQUIRED, "jwt: {algorithm: HS512}"], "HS512");
    assert!(bad_alg.contains("jwt.algorithm"), "{bad_alg}");
}

#[test]
fn default_values_render_a_least_privilege_leader_elected_install() {
    let r = render(&[REQUIRED]);
    check_common(&r);
    assert!(
        r.of_kind("ServiceMonitor").is_empty(),
        "ServiceMonitors are off by default"
    );

    // Operator: two replicas behind leader election with a Lease in the release namespace.
    let op = r.deployment("operator");
    assert_eq!(op["spec"]["replicas"], 2);
    let c = main_container(op, "operator");
    assert_eq!(env_value(c, "CLOUDPODS_LEADER_ELECTION"), Some("true"));
    assert_eq!(
        env_value(c, "CLOUDPODS_LEADER_ELECTION_ID"),
        Some("cp-cloudpods-operator"),
        "the election id defaults to the release's name"
    );
    assert_eq!(
        env_value(c, "CLOUDPODS_LEADER_LEASE_NAMESPACE"),
        Some(NAMESPACE)
    );
    assert_eq!(
        env(c, "POD_NAME").expect("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(env(c, "CLOUDPODS_WATCH_NAMESPACE").is_none());
    let lease = r.get("Role", "cp-cloudpods-operator-lease");
    assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
    let mut want: BTreeSet<_> = ["get", "update"]
        .iter()
        .map(|v| {
            (
                "coordination.k8s.io".to_string(),
                "leases".to_string(),
                v.to_string(),
                "cp-cloudpods-operator".to_string(),
            )
        })
        .collect();
    want.insert((
        "coordination.k8s.io".into(),
        "leases".into(),
        "create".into(),
        String::new(),
    ));
    assert_eq!(rule_rows(lease), want);

    // RBAC: exactly the calls each component makes.
    assert_rules(
        r.get("ClusterRole", "cp-cloudpods-operator"),
        OPERATOR_CLUSTER_RULES,
    );
    let api_role = r.get("Role", "cp-cloudpods-api");
    assert_eq!(
        api_role["metadata"]["namespace"], NAMESPACE,
        "the API writes CloudPods to the release namespace"
    );
    assert_rules(api_role, API_ROLE_RULES);
    assert_rules(r.get("ClusterRole", "cp-cloudpods-api"), API_CLUSTER_RULES);
    assert_eq!(
        r.of_kind("Role").len(),
        2,
        "{:?}",
        r.of_kind("Role").iter().map(|o| id(o)).collect::<Vec<_>>()
    );
    assert_eq!(r.of_kind("ClusterRole").len(), 2);
    // The API: no status subresources, no events, no list/watch.
    for role in [api_role, r.get("ClusterRole", "cp-cloudpods-api")] {
        for (g, res, verb, _) in rule_rows(role) {
            assert!(
                !res.contains('/') && g == GROUP && verb != "list" && verb != "watch",
                "API: {g} {res} {verb}"
            );
        }
    }
    // One ServiceAccount per component, bound to its own roles only.
    for binding in r.bindings() {
        let role = str_of(&binding["roleRef"]["name"]);
        let sa = str_of(&binding["subjects"][0]["name"]);
        let component = if role.starts_with("cp-cloudpods-api") {
            "api"
        } else {
            "operator"
        };
        assert_eq!(sa, format!("cp-cloudpods-{component}"), "{}", id(binding));
    }

    // Four Secrets, each referenced where it is needed, files mounted read-only.
    let secrets: BTreeSet<&str> = r
        .of_kind("Secret")
        .iter()
        .map(|s| str_of(&s["metadata"]["name"]))
        .collect();
    assert_eq!(
        secrets,
        BTreeSet::from([
            "cp-cloudpods-database",
            "cp-cloudpods-jwt",
            "cp-cloudpods-known-hosts",
            "cp-cloudpods-ssh-key"
        ])
    );
    assert_secret_refs(
        &r,
        ("cp-cloudpods-database", "database-url"),
        ("cp-cloudpods-jwt", "jwt-key"),
        ("cp-cloudpods-ssh-key", "id_ed25519"),
        ("cp-cloudpods-known-hosts", "known_hosts"),
    );

    // The API: its namespace, JWT settings and the key file from the Secret.
    let api = main_container(r.deployment("api"), "api");
    assert_eq!(env_value(api, "CLOUDPODS_NAMESPACE"), Some(NAMESPACE));
    assert_eq!(env_value(api, "CLOUDPODS_JWT_ALGORITHM"), Some("HS256"));
    assert_eq!(
        env_value(api, "CLOUDPODS_JWT_KEY_FILE"),
        Some("/etc/cloudpods/jwt/key")
    );

    // The ConfigMap: a nodes file the operator accepts, whose key paths are the mounted
    // Secret files, and a catalog equal to config/catalog.yaml that migrate accepts.
    let cm = r.get("ConfigMap", "cp-cloudpods-config");
    let nodes = str_of(&cm["data"]["nodes.yaml"]);
    let parsed = cloudpods::proxmox::config::NodesConfig::parse(nodes, "chart nodes.yaml")
        .unwrap_or_else(|e| panic!("the chart's nodes.yaml is refused: {e}\n{nodes}"));
    assert_eq!(parsed.nodes.len(), 2);
    let nodes_v: Value = serde_saphyr::from_str(nodes).expect("nodes.yaml");
    assert_eq!(
        nodes_v["defaults"]["keyFile"],
        "/etc/cloudpods/ssh/id_ed25519"
    );
    assert_eq!(
        nodes_v["defaults"]["knownHostsFile"],
        "/etc/cloudpods/ssh/known_hosts"
    );
    let op_c = main_container(op, "operator");
    assert_eq!(
        env_value(op_c, "CLOUDPODS_NODES_FILE"),
        Some("/etc/cloudpods/config/nodes.yaml")
    );
    assert!(
        arr(&op_c["volumeMounts"])
            .iter()
            .any(|m| m["mountPath"] == "/etc/cloudpods/ssh" && m["name"] == "ssh")
    );
    assert!(
        arr(&op_c["volumeMounts"])
            .iter()
            .any(|m| m["mountPath"] == "/etc/cloudpods/config" && m["name"] == "config")
    );
    let catalog = str_of(&cm["data"]["catalog.yaml"]);
    cloudpods::catalog::Catalog::parse(catalog, "chart catalog.yaml")
        .unwrap_or_else(|e| panic!("the chart's catalog is refused: {e}"));
    let ours: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("config/catalog.yaml"))
            .expect("read config/catalog.yaml"),
    )
    .expect("config/catalog.yaml");
    let chart_catalog: Value = serde_saphyr::from_str(catalog).expect("chart catalog");
    assert_eq!(
        chart_catalog, ours,
        "values.yaml catalog differs from config/catalog.yaml"
    );

    // Migration: an idempotent init container in both Deployments, reading the catalog.
    for component in ["operator", "api"] {
        let d = r.deployment(component);
        let init = arr(&d["spec"]["template"]["spec"]["initContainers"]);
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["args"], serde_json::json!(["migrate"]));
        assert_eq!(
            env_value(&init[0], "CLOUDPODS_CATALOG"),
            Some("/etc/cloudpods/config/catalog.yaml")
        );
    }
}

/// Both Deployments take the four secrets from (name, key) — and only from there.
fn assert_secret_refs(
    r: &Rendered,
    db: (&str, &str),
    jwt: (&str, &str),
    key: (&str, &str),
    known: (&str, &str),
) {
    for component in ["operator", "api"] {
        let d = r.deployment(component);
        for c in containers(d) {
            let e = env(c, "DATABASE_URL")
                .unwrap_or_else(|| panic!("{} {}: no DATABASE_URL", id(d), c["name"]));
            assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], db.0);
            assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], db.1);
        }
    }
    let op = &r.deployment("operator")["spec"]["template"]["spec"];
    let ssh = arr(&op["volumes"])
        .iter()
        .find(|v| v["name"] == "ssh")
        .expect("ssh volume");
    let sources: Vec<(String, String, String)> = arr(&ssh["projected"]["sources"])
        .iter()
        .map(|s| {
            let item = &s["secret"]["items"][0];
            (
                str_of(&s["secret"]["name"]).into(),
                str_of(&item["key"]).into(),
                str_of(&item["path"]).into(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        vec![
            (key.0.into(), key.1.into(), "id_ed25519".to_string()),
            (known.0.into(), known.1.into(), "known_hosts".to_string())
        ]
    );
    assert!(
        !arr(&op["volumes"]).iter().any(|v| v["name"] == "jwt"),
        "the operator does not get the JWT key"
    );
    let api = &r.deployment("api")["spec"]["template"]["spec"];
    let jwt_vol = arr(&api["volumes"])
        .iter()
        .find(|v| v["name"] == "jwt")
        .expect("jwt volume");
    assert_eq!(jwt_vol["secret"]["secretName"], jwt.0);
    assert_eq!(
        jwt_vol["secret"]["items"],
        serde_json::json!([{"key": jwt.1, "path": "key"}])
    );
    assert!(
        !arr(&api["volumes"]).iter().any(|v| v["name"] == "ssh"),
        "the API does not get the SSH key"
    );
}

#[test]
fn existing_secrets_are_referenced_and_none_is_created() {
    let r = render(&[REQUIRED, EXISTING_SECRETS]);
    check_common(&r);
    assert!(
        r.of_kind("Secret").is_empty(),
        "{:?}",
        r.of_kind("Secret")
            .iter()
            .map(|o| id(o))
            .collect::<Vec<_>>()
    );
    assert_secret_refs(
        &r,
        ("corp-db", "url"),
        ("corp-jwt", "mpanel.pub"),
        ("corp-ssh", "key"),
        ("corp-known-hosts", "hosts"),
    );
    let api = main_container(r.deployment("api"), "api");
    assert_eq!(env_value(api, "CLOUDPODS_JWT_ALGORITHM"), Some("RS256"));
    // Without any value and without existingSecret, the install is refused.
    let err = render_err(&[REQUIRED, "jwt: {key: \"\"}"], "no JWT key");
    assert!(err.contains("jwt.key or jwt.existingSecret"), "{err}");
}

#[test]
fn lease_disabled_keeps_the_election_without_lease_rbac() {
    let r = render(&[
        REQUIRED,
        "operator: {leaderElection: {lease: {enabled: false}}}",
    ]);
    check_common(&r);
    let c = main_container(r.deployment("operator"), "operator");
    assert_eq!(env_value(c, "CLOUDPODS_LEADER_ELECTION"), Some("true"));
    assert!(env(c, "CLOUDPODS_LEADER_LEASE_NAMESPACE").is_none());
    assert!(r.try_get("Role", "cp-cloudpods-operator-lease").is_none());
    for role in r.roles() {
        assert!(
            rule_rows(role)
                .iter()
                .all(|(g, ..)| g != "coordination.k8s.io"),
            "{}",
            id(role)
        );
    }
}

#[test]
fn leader_election_off_runs_one_replica_and_refuses_two() {
    let r = render(&[
        REQUIRED,
        "operator: {replicas: 1, leaderElection: {enabled: false}}",
    ]);
    check_common(&r);
    let op = r.deployment("operator");
    assert_eq!(op["spec"]["replicas"], 1);
    let c = main_container(op, "operator");
    assert_eq!(env_value(c, "CLOUDPODS_LEADER_ELECTION"), Some("false"));
    assert!(env(c, "CLOUDPODS_LEADER_LEASE_NAMESPACE").is_none());
    assert_eq!(
        env(c, "POD_NAME").expect("POD_NAME: the queue lease owner")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(r.try_get("Role", "cp-cloudpods-operator-lease").is_none());
    let err = render_err(
        &[REQUIRED, "operator: {leaderElection: {enabled: false}}"],
        "two replicas without an election must be refused",
    );
    assert!(err.contains("leaderElection"), "{err}");
}

#[test]
fn service_monitors_scrape_both_metrics_endpoints() {
    let r = render(&[
        REQUIRED,
        "serviceMonitor: {enabled: true, labels: {release: prom}}",
    ]);
    check_common(&r);
    let monitors = r.of_kind("ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for m in &monitors {
        assert_eq!(m["metadata"]["labels"]["release"], "prom");
    }
    check_service_monitors(&r);
    let op = r.get("ServiceMonitor", "cp-cloudpods-operator");
    assert_eq!(op["spec"]["endpoints"][0]["port"], "http-metrics");
}

#[test]
fn watch_namespace_narrows_the_cloudpod_rbac_to_a_role() {
    let values = "operator: {watchNamespace: tenants}\napi: {cloudpodNamespace: tenants}";
    let r = render(&[REQUIRED, values]);
    check_common(&r);
    let c = main_container(r.deployment("operator"), "operator");
    assert_eq!(env_value(c, "CLOUDPODS_WATCH_NAMESPACE"), Some("tenants"));
    assert_eq!(
        env_value(
            main_container(r.deployment("api"), "api"),
            "CLOUDPODS_NAMESPACE"
        ),
        Some("tenants")
    );
    assert_rules(
        r.get("ClusterRole", "cp-cloudpods-operator"),
        OPERATOR_CLUSTER_RULES_NAMESPACED,
    );
    let role = r.get("Role", "cp-cloudpods-operator");
    assert_eq!(role["metadata"]["namespace"], "tenants");
    assert_rules(role, OPERATOR_WATCH_ROLE_RULES);
    let events = r.get("Role", "cp-cloudpods-operator-events");
    assert_eq!(events["metadata"]["namespace"], "default");
    assert_rules(events, OPERATOR_DEFAULT_EVENTS_RULES);
    let api_role = r.get("Role", "cp-cloudpods-api");
    assert_eq!(api_role["metadata"]["namespace"], "tenants");
    assert_rules(api_role, API_ROLE_RULES);
    // The lease stays in the release namespace.
    assert_eq!(
        r.get("Role", "cp-cloudpods-operator-lease")["metadata"]["namespace"],
        NAMESPACE
    );
    // An operator that cannot see the API's CloudPods is refused.
    let err = render_err(
        &[REQUIRED, "operator: {watchNamespace: tenants}"],
        "mismatched namespaces must be refused",
    );
    assert!(err.contains("operator.watchNamespace"), "{err}");
}

#[test]
fn every_value_is_documented_in_the_readme() {
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("read values.yaml"),
    )
    .expect("values.yaml parses");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("read chart README");
    let mut keys = BTreeMap::new();
    leaf_keys(&values, String::new(), &mut keys);
    let missing: Vec<&String> = keys
        .keys()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from charts/cloudpods/README.md: {missing:?}"
    );
}

/// Dotted paths of the values a user sets: leaves, and maps/lists taken whole (catalog,
/// resources, proxmox.defaults, ...) where the README documents the map itself.
fn leaf_keys(v: &Value, path: String, out: &mut BTreeMap<String, ()>) {
    const WHOLE: &[&str] = &[
        "catalog",
        "resources",
        "defaults",
        "quotaDefaults",
        "labels",
        "annotations",
    ];
    match v {
        Value::Object(map)
            if !map.is_empty()
                && !WHOLE
                    .iter()
                    .any(|w| path == *w || path.ends_with(&format!(".{w}"))) =>
        {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaf_keys(child, p, out);
            }
        }
        _ => {
            out.insert(path, ());
        }
    }
}
