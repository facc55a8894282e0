//! The Proxmox nodes the operator drives, read from a YAML file (seed §6: connection details
//! come from configuration, never from code). Key material is referenced by path only.
//!
//! ```yaml
//! defaults:                      # optional; every field may also be set per node
//!   user: root
//!   port: 22
//!   keyFile: /etc/cloudpods/ssh/id_ed25519
//!   knownHostsFile: /etc/cloudpods/ssh/known_hosts
//!   maxSessions: 10              # sshd MaxSessions
//!   connectTimeoutSeconds: 10
//!   remoteKillGraceSeconds: 5    # 0 sends commands without the remote deadline
//!   jobDir: /var/tmp             # where detached job files go on the node
//! nodes:
//!   - name: pve1                 # the Proxmox node name (as in `pvesh get /nodes`)
//!     host: 10.0.0.11
//!   - name: pve2
//!     host: pve2.example.net
//!     port: 2222
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::driver::{DriverSettings, SshProxmox};
use super::ssh::{DEFAULT_MAX_SESSIONS, SshNode, SshSettings};
use super::types::{CiUser, DnsName, NodeName, RemoteDir};

/// Why a nodes file was refused; names the file, the node and the field.
#[derive(Debug, thiserror::Error)]
pub enum NodesConfigError {
    /// The file could not be read.
    #[error("cannot read the nodes file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (unknown fields included).
    #[error("the nodes file {origin} is not valid: {message}")]
    Parse {
        /// The file (or `<inline>`).
        origin: String,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A value failed validation.
    #[error("the nodes file {origin}: {at}: {field}: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        origin: String,
        /// `nodes[2] (pve3)` or `defaults`.
        at: String,
        /// The field, as spelled in the file.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    user: Option<String>,
    port: Option<u16>,
    key_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    max_sessions: Option<usize>,
    connect_timeout_seconds: Option<u64>,
    remote_kill_grace_seconds: Option<u64>,
    job_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeEntry {
    name: String,
    host: String,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Settings,
    nodes: Vec<NodeEntry>,
}

/// One validated node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Proxmox node name.
    pub name: NodeName,
    /// How to reach it.
    pub ssh: SshSettings,
    /// Where detached job files go on the node.
    pub job_dir: RemoteDir,
}

/// Every node of a nodes file, validated.
#[derive(Debug, Clone)]
pub struct NodesConfig {
    /// The nodes, in file order.
    pub nodes: Vec<NodeConfig>,
}

impl NodesConfig {
    /// Reads and validates a nodes file.
    pub fn load(path: &Path) -> Result<Self, NodesConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodesConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates nodes YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, NodesConfigError> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| NodesConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |at: &str, field: &'static str, message: String| NodesConfigError::Invalid {
            origin: origin.to_string(),
            at: at.to_string(),
            field,
            message,
        };
        if file.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "nodes",
                "at least one node is needed".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut nodes = Vec::with_capacity(file.nodes.len());
        for (i, entry) in file.nodes.into_iter().enumerate() {
            let at = format!(
                "nodes[{i}] ({})",
                entry.name.chars().take(63).collect::<String>()
            );
            let name =
                NodeName::parse(&entry.name).map_err(|e| invalid(&at, "name", e.to_string()))?;
            if !seen.insert(entry.name.clone()) {
                return Err(invalid(&at, "name", "the same node is listed twice".into()));
            }
            if !is_host(&entry.host) {
                return Err(invalid(
                    &at,
                    "host",
                    "must be a host name or an IP address".into(),
                ));
            }
            let s = merge(&file.defaults, &entry.settings);
            let user = s.user.unwrap_or_else(|| "root".to_string());
            if !is_user(&user) {
                return Err(invalid(&at, "user", "must be a Unix user name".into()));
            }
            let port = s.port.unwrap_or(22);
            if port == 0 {
                return Err(invalid(&at, "port", "must be from 1 to 65535".into()));
            }
            let key_file = s.key_file.ok_or_else(|| {
                invalid(&at, "keyFile", "is required (here or in defaults)".into())
            })?;
            let known_hosts = s.known_hosts_file.ok_or_else(|| {
                invalid(
                    &at,
                    "knownHostsFile",
                    "is required (here or in defaults)".into(),
                )
            })?;
            let max_sessions = s.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
            if !(1..=64).contains(&max_sessions) {
                return Err(invalid(&at, "maxSessions", "must be from 1 to 64".into()));
            }
            let connect = s.connect_timeout_seconds.unwrap_or(10);
            if !(1..=300).contains(&connect) {
                return Err(invalid(
                    &at,
                    "connectTimeoutSeconds",
                    "must be from 1 to 300".into(),
                ));
            }
            let grace = s.remote_kill_grace_seconds.unwrap_or(5);
            if grace > 300 {
                return Err(invalid(
                    &at,
                    "remoteKillGraceSeconds",
                    "must be from 0 to 300".into(),
                ));
            }
            let job_dir = match &s.job_dir {
                Some(d) => {
                    RemoteDir::parse(d).map_err(|e| invalid(&at, "jobDir", e.to_string()))?
                }
                None => RemoteDir::var_tmp(),
            };
            let mut ssh = SshSettings::new(entry.host, port, user, key_file, known_hosts);
            ssh.max_sessions = max_sessions;
            ssh.connect_timeout = Duration::from_secs(connect);
            ssh.remote_kill_grace = (grace > 0).then(|| Duration::from_secs(grace));
            nodes.push(NodeConfig { name, ssh, job_dir });
        }
        Ok(NodesConfig { nodes })
    }

    /// A driver over these nodes (connections open on first use).
    pub fn driver(&self, settings: DriverSettings) -> SshProxmox {
        self.nodes.iter().fold(SshProxmox::new(settings), |d, n| {
            d.with_node_in(
                n.name.clone(),
                SshNode::new(n.ssh.clone()),
                n.job_dir.clone(),
            )
        })
    }
}

fn merge(defaults: &Settings, node: &Settings) -> Settings {
    Settings {
        user: node.user.clone().or_else(|| defaults.user.clone()),
        port: node.port.or(defaults.port),
        key_file: node.key_file.clone().or_else(|| defaults.key_file.clone()),
        known_hosts_file: node
            .known_hosts_file
            .clone()
            .or_else(|| defaults.known_hosts_file.clone()),
        max_sessions: node.max_sessions.or(defaults.max_sessions),
        connect_timeout_seconds: node
            .connect_timeout_seconds
            .or(defaults.connect_timeout_seconds),
        remote_kill_grace_seconds: node
            .remote_kill_grace_seconds
            .or(defaults.remote_kill_grace_seconds),
        job_dir: node.job_dir.clone().or_else(|| defaults.job_dir.clone()),
    }
}

/// A DNS name ([`DnsName`]) or an IP address: nothing a shell or the known_hosts lookup
/// could misread.
fn is_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok() || DnsName::parse(h).is_ok()
}

/// A Unix user name: the cloud-init user grammar ([`CiUser`]).
fn is_user(u: &str) -> bool {
    CiUser::parse(u).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
defaults:
  keyFile: /etc/cloudpods/ssh/id_ed25519
  knownHostsFile: /etc/cloudpods/ssh/known_hosts
  remoteKillGraceSeconds: 7
nodes:
  - name: pve1
    host: 10.0.0.11
  - name: pve2
    host: pve2.example.net
    port: 2222
    user: cloudpods
    remoteKillGraceSeconds: 0
    jobDir: /var/lib/cloudpods-jobs
"#;

    #[test]
    fn defaults_apply_and_nodes_override_them() {
        let c = NodesConfig::parse(GOOD, "nodes.yaml").unwrap();
        assert_eq!(c.nodes.len(), 2);
        let (a, b) = (&c.nodes[0], &c.nodes[1]);
        assert_eq!(a.name.as_str(), "pve1");
        assert_eq!(
            (a.ssh.host.as_str(), a.ssh.port, a.ssh.user.as_str()),
            ("10.0.0.11", 22, "root")
        );
        assert_eq!(a.ssh.remote_kill_grace, Some(Duration::from_secs(7)));
        assert_eq!(a.ssh.max_sessions, DEFAULT_MAX_SESSIONS);
        assert_eq!((b.ssh.port, b.ssh.user.as_str()), (2222, "cloudpods"));
        assert_eq!(b.ssh.remote_kill_grace, None);
        assert_eq!(b.job_dir.as_str(), "/var/lib/cloudpods-jobs");
        assert_eq!(
            b.ssh.key_path,
            PathBuf::from("/etc/cloudpods/ssh/id_ed25519")
        );
    }

    #[test]
    fn errors_name_the_node_and_the_field() {
        let cases = [
            (
                GOOD.replace("host: 10.0.0.11", "host: \"10.0.0.11; reboot\""),
                "nodes[0] (pve1): host",
            ),
            (
                GOOD.replace("name: pve2", "name: pve1"),
                "nodes[1] (pve1): name",
            ),
            (
                GOOD.replace("name: pve2", "name: \"pve 2\""),
                "nodes[1] (pve 2): name",
            ),
            (
                GOOD.replace("user: cloudpods", "user: \"root;id\""),
                "nodes[1] (pve2): user",
            ),
            (
                GOOD.replace("port: 2222", "port: 0"),
                "nodes[1] (pve2): port",
            ),
            (
                GOOD.replace("  keyFile: /etc/cloudpods/ssh/id_ed25519\n", ""),
                "nodes[0] (pve1): keyFile",
            ),
            (
                GOOD.replace("jobDir: /var/lib/cloudpods-jobs", "jobDir: \"/tmp/$(id)\""),
                "nodes[1] (pve2): jobDir",
            ),
            (
                GOOD.replace("remoteKillGraceSeconds: 7", "remoteKillGraceSeconds: 1000"),
                "nodes[0] (pve1): remoteKillGraceSeconds",
            ),
        ];
        for (text, want) in cases {
            let e = NodesConfig::parse(&text, "nodes.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?} in {e}");
            assert!(e.starts_with("the nodes file nodes.yaml"), "{e}");
        }
        let e = NodesConfig::parse("nodes: []", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one node"), "{e}");
        let e = NodesConfig::parse(&GOOD.replace("port: 2222", "prot: 2222"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn the_annotated_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nodes.example.yaml");
        let c = NodesConfig::load(&path).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].ssh.host, "pve2.example.net");
    }

    #[test]
    fn hosts_and_users() {
        for ok in ["pve1", "pve1.example.net", "10.0.0.1", "::1", "fe80::1"] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in ["", "-x", "a..b", "a b", "a;b", "$(id)", "x_y"] {
            assert!(!is_host(bad), "{bad}");
        }
        assert!(is_user("root") && is_user("_svc") && !is_user("Root") && !is_user("a b"));
    }

    #[test]
    fn the_driver_knows_every_node() {
        let c = NodesConfig::parse(GOOD, "nodes.yaml").unwrap();
        // Building connects nowhere; connections open on first use.
        let d = c.driver(DriverSettings::default());
        let names: Vec<&str> = d.node_names().into_iter().map(NodeName::as_str).collect();
        assert_eq!(names, ["pve1", "pve2"]);
    }
}
