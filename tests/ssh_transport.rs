//! The russh transport (`cloudpods::proxmox::ssh`) against a real OpenSSH server in front of
//! simulated Proxmox nodes (`testenv/sshd`).
//!
//! Tests that only run commands use the shared instance of `testenv/up`
//! (`CLOUDPODS_TEST_SSH_*`); tests that restart sshd, count logins or check that nothing
//! reached a node start a private instance ([`PrivateSshd`]). All run in parallel.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudpods::proxmox::ssh::{SshError, SshNode, SshSettings};
use common::ssh::{PrivateSshd, shared_settings, shared_wrong_key, sshd_action};

const T: Duration = Duration::from_secs(20);

fn shared_node() -> SshNode {
    SshNode::new(shared_settings("pve1"))
}

#[tokio::test]
async fn echo_hi() {
    let node = shared_node();
    let out = node.exec("echo hi", None, T).await.expect("echo hi");
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty());
    assert_eq!(out.exit_status, Some(0));
    assert_eq!(out.exit_signal, None);
    assert!(out.success());
}

#[tokio::test]
async fn stdout_stderr_and_exit_status_are_separate() {
    let node = shared_node();
    let out = node
        .exec("echo out; echo err >&2; echo out2; exit 3", None, T)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_status, Some(3));
    assert!(!out.success());

    let out = node.exec("false", None, T).await.expect("false");
    assert_eq!(out.exit_status, Some(1));
    let out = node.exec("exit 255", None, T).await.expect("exit 255");
    assert_eq!(out.exit_status, Some(255));
}

#[tokio::test]
async fn killed_by_a_signal() {
    let node = shared_node();
    let out = node
        .exec("echo before; kill -KILL $$", None, T)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"before\n");
    assert_eq!(out.exit_status, None);
    assert_eq!(out.exit_signal.as_deref(), Some("KILL"));
}

#[tokio::test]
async fn stdin_is_passed_through_and_none_means_eof() {
    let node = shared_node();
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = node.exec("cat", Some(&data), T).await.expect("cat");
    assert_eq!(out.stdout, data);
    assert_eq!(out.exit_status, Some(0));

    // No stdin: the command sees EOF at once (would hang otherwise).
    let out = node
        .exec("cat; echo done", None, Duration::from_secs(5))
        .await
        .expect("cat with no stdin");
    assert_eq!(out.stdout, b"done\n");

    // A command that ignores a large stdin still finishes.
    let big = vec![b'x'; 4 << 20];
    let out = node
        .exec("echo ignored", Some(&big), T)
        .await
        .expect("ignore stdin");
    assert_eq!(out.stdout, b"ignored\n");
}

#[tokio::test]
async fn large_output_and_stdin_both_ways() {
    let node = shared_node();
    let out = node
        .exec("head -c 1048576 /dev/zero | tr '\\0' a", None, T)
        .await
        .expect("1 MiB stdout");
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout.iter().all(|&b| b == b'a'));

    // 1 MiB in, 1 MiB out at the same time, plus 1 MiB on stderr.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let out = node
        .exec("tee /dev/stderr", Some(&data), T)
        .await
        .expect("tee");
    assert_eq!(out.stdout, data);
    assert_eq!(out.stderr, data);
}

#[tokio::test]
async fn the_simulator_answers_per_user() {
    for node in common::ssh::shared_nodes() {
        let ssh = SshNode::new(shared_settings(&node));
        let out = ssh
            .exec("LC_ALL=C.UTF-8 qm list", None, T)
            .await
            .expect("qm list");
        assert_eq!(out.exit_status, Some(0), "{}", out.stderr_lossy());
        assert!(
            out.stdout_lossy().contains("9000"),
            "{}",
            out.stdout_lossy()
        );
        let out = ssh
            .exec("pvesh get /version --output-format json", None, T)
            .await
            .expect("pvesh");
        assert_eq!(out.exit_status, Some(0), "{}", out.stderr_lossy());
        let env = ssh.exec("echo $PVE_SIM_STATE", None, T).await.expect("env");
        assert!(
            env.stdout_lossy()
                .trim_end()
                .ends_with(&format!("/nodes/{node}")),
            "{node}: {}",
            env.stdout_lossy()
        );
    }
}

#[tokio::test]
async fn fifty_concurrent_commands_share_one_connection() {
    let sshd = PrivateSshd::start(&["pve1"]);
    let user = sshd.user("pve1");
    let node = Arc::new(SshNode::new(sshd.settings("pve1")));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let out = node
                .exec(&format!("sleep 0.2; echo {i}"), None, T)
                .await
                .unwrap_or_else(|e| panic!("command {i}: {e}"));
            assert_eq!(out.stdout_lossy(), format!("{i}\n"));
            assert_eq!(out.exit_status, Some(0));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let took = started.elapsed();
    // 50 x 0.2 s in slots of 10 needs at least 1 s; serially it would take 10 s.
    assert!(took >= Duration::from_millis(950), "took {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(sshd.accepted_logins(&user), 1, "exactly one connection");
}

/// A private instance, its call count so far, and a node that trusts the host keys in
/// `known_hosts` (a file of the instance).
fn with_known_hosts(known_hosts: &str) -> (PrivateSshd, usize, SshNode) {
    let sshd = PrivateSshd::start(&["pve1"]);
    let before = sshd.calls("pve1").len();
    let settings = SshSettings {
        known_hosts_path: sshd.file(known_hosts),
        ..sshd.settings("pve1")
    };
    (sshd, before, SshNode::new(settings))
}

#[tokio::test]
async fn unknown_host_key_is_refused_before_any_command() {
    let (sshd, before, node) = with_known_hosts("known_hosts.empty");
    let err = node
        .exec("qm list", None, T)
        .await
        .expect_err("must refuse");
    assert!(
        matches!(&err, SshError::HostKeyUnknown { host, port } if host == "127.0.0.1" && *port == sshd.port),
        "{err:?}"
    );
    assert!(!err.command_may_have_run());
    assert_eq!(sshd.calls("pve1").len(), before, "no call reached the node");
    assert_eq!(sshd.accepted_logins(&sshd.user("pve1")), 0, "no login");

    // The right known_hosts works against the same instance (the check above was real).
    let ok = SshNode::new(sshd.settings("pve1"));
    let out = ok.exec("qm list", None, T).await.expect("qm list");
    assert_eq!(out.exit_status, Some(0));
    assert_eq!(sshd.calls("pve1").len(), before + 1);
}

#[tokio::test]
async fn changed_host_key_is_refused_before_any_command() {
    let (sshd, before, node) = with_known_hosts("known_hosts.wrong");
    let err = node
        .exec("qm list", None, T)
        .await
        .expect_err("must refuse");
    assert!(
        matches!(&err, SshError::HostKeyChanged { line: 1, port, .. } if *port == sshd.port),
        "{err:?}"
    );
    // A second attempt on the same node refuses again (no cached "ok").
    let err = node
        .exec("qm list", None, T)
        .await
        .expect_err("must refuse");
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{err:?}");
    assert_eq!(sshd.calls("pve1").len(), before, "no call reached the node");
    assert_eq!(sshd.accepted_logins(&sshd.user("pve1")), 0, "no login");
}

#[tokio::test]
async fn old_and_new_host_keys_side_by_side_are_accepted_during_a_rotation() {
    let sshd = PrivateSshd::start(&["pve1"]);
    let wrong = std::fs::read_to_string(sshd.file("known_hosts.wrong")).expect("known_hosts.wrong");
    let right = std::fs::read_to_string(sshd.file("known_hosts")).expect("known_hosts");
    for (name, text) in [
        ("known_hosts.rotating-new-first", format!("{right}{wrong}")),
        ("known_hosts.rotating-old-first", format!("{wrong}{right}")),
    ] {
        let path = sshd.dir().join(name);
        std::fs::write(&path, text).expect("write known_hosts");
        let node = SshNode::new(SshSettings {
            known_hosts_path: path,
            ..sshd.settings("pve1")
        });
        let out = node
            .exec("qm list", None, T)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.exit_status, Some(0), "{name}");
    }
}

#[tokio::test]
async fn missing_known_hosts_or_key_file_is_a_configuration_error() {
    let mut settings = shared_settings("pve1");
    settings.known_hosts_path = "/nonexistent/known_hosts".into();
    let err = SshNode::new(settings)
        .exec("true", None, T)
        .await
        .expect_err("no known_hosts");
    assert!(matches!(err, SshError::KnownHosts { .. }), "{err:?}");

    let mut settings = shared_settings("pve1");
    settings.key_path = "/nonexistent/id_ed25519".into();
    let err = SshNode::new(settings)
        .exec("true", None, T)
        .await
        .expect_err("no key");
    assert!(matches!(err, SshError::KeyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/id_ed25519"));
}

#[tokio::test]
async fn wrong_client_key_or_user_is_an_auth_error() {
    let settings = SshSettings {
        key_path: shared_wrong_key(),
        ..shared_settings("pve1")
    };
    let err = SshNode::new(settings.clone())
        .exec("true", None, T)
        .await
        .expect_err("wrong key");
    assert!(
        matches!(&err, SshError::Auth { user } if *user == settings.user),
        "{err:?}"
    );
    // The error message names the user and no key material.
    let text = err.to_string();
    let key = std::fs::read_to_string(&settings.key_path).expect("read key");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line));
    }

    let settings = SshSettings {
        user: "root".into(),
        ..shared_settings("pve1")
    };
    let err = SshNode::new(settings)
        .exec("true", None, T)
        .await
        .expect_err("root is not allowed");
    assert!(matches!(err, SshError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn closed_port_is_a_connect_error() {
    // Bind and release a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let settings = SshSettings {
        port,
        ..shared_settings("pve1")
    };
    let err = SshNode::new(settings)
        .exec("true", None, T)
        .await
        .expect_err("closed port");
    assert!(matches!(err, SshError::Connect { .. }), "{err:?}");
    assert!(!err.command_may_have_run());
}

#[tokio::test]
async fn timeout_returns_quickly_and_the_node_stays_usable() {
    let node = shared_node();
    // Connect first so the timing below is the command's alone.
    node.exec("true", None, T).await.expect("warm up");
    let started = Instant::now();
    let err = node
        .exec("sleep 5", None, Duration::from_millis(300))
        .await
        .expect_err("must time out");
    let took = started.elapsed();
    assert!(
        matches!(err, SshError::Timeout { after } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.command_may_have_run());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let out = node
        .exec("echo still", None, T)
        .await
        .expect("after timeout");
    assert_eq!(out.stdout, b"still\n");
}

#[tokio::test]
async fn after_ten_timeouts_the_next_command_waits_for_a_free_session() {
    // Ten commands time out while their remote processes keep running for 2 s (sent bare,
    // without the remote deadline). sshd still counts those sessions, so the next channel
    // must wait (retrying the refused open) instead of failing with "open failed"
    // (MaxSessions 10).
    let sshd = PrivateSshd::start(&["pve1"]);
    let node = Arc::new(SshNode::new(SshSettings {
        remote_kill_grace: None,
        ..sshd.settings("pve1")
    }));
    node.exec("true", None, T).await.expect("warm up");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.exec("sleep 2", None, Duration::from_millis(200)).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert!(matches!(r, Err(SshError::Timeout { .. })), "{r:?}");
    }
    let out = node
        .exec("echo next", None, Duration::from_secs(10))
        .await
        .expect("the 11th command waits for a slot");
    assert_eq!(out.stdout, b"next\n");
    assert_eq!(sshd.accepted_logins(&sshd.user("pve1")), 1);
}

/// Whether a process exists (the test sshd runs on this machine).
fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
}

#[tokio::test]
async fn a_timed_out_command_dies_on_the_node_even_when_it_ignores_sigterm() {
    let sshd = PrivateSshd::start(&["pve1"]);
    let node = SshNode::new(SshSettings {
        remote_kill_grace: Some(Duration::from_secs(1)),
        ..sshd.settings("pve1")
    });
    node.exec("true", None, T).await.expect("warm up");
    let dir = sshd.dir().join("nodes/pve1");
    let polite = dir.join("polite.pid");
    let stubborn = dir.join("stubborn.pid");
    for (pidfile, script, limit) in [
        (
            &polite,
            format!("echo $$ > {}; exec sleep 30", polite.display()),
            Duration::from_millis(300),
        ),
        (
            &stubborn,
            format!(
                "trap '' TERM; sleep 30 & echo $! > {}; wait",
                stubborn.display()
            ),
            Duration::from_millis(300),
        ),
    ] {
        let started = Instant::now();
        let err = node
            .exec(&script, None, limit)
            .await
            .expect_err("must time out");
        assert!(
            matches!(err, SshError::Timeout { after } if after == limit),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid = std::fs::read_to_string(pidfile).expect("the command started");
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&pid) {
            assert!(
                Instant::now() < deadline,
                "remote process {} outlived its deadline",
                pid.trim()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A command that finishes in time is unaffected, stdin and exit status included.
    let out = node.exec("cat; exit 3", Some(b"in"), T).await.expect("ran");
    assert_eq!(
        (out.stdout.as_slice(), out.exit_status),
        (&b"in"[..], Some(3))
    );
}

#[tokio::test]
async fn reconnects_after_an_sshd_restart() {
    let sshd = PrivateSshd::start(&["pve1", "pve2"]);
    let user = sshd.user("pve2");
    let node = SshNode::new(sshd.settings("pve2"));
    let out = node.exec("qm list", None, T).await.expect("before restart");
    assert_eq!(out.exit_status, Some(0));
    assert_eq!(sshd.accepted_logins(&user), 1);

    sshd.restart();

    // The pooled connection died with the restart: the next exec reconnects by itself.
    let out = node.exec("qm list", None, T).await.expect("after restart");
    assert_eq!(out.exit_status, Some(0));
    assert_eq!(sshd.accepted_logins(&user), 2, "exactly one reconnect");
    let out = node.exec("echo again", None, T).await.expect("again");
    assert_eq!(out.stdout, b"again\n");
    assert_eq!(sshd.accepted_logins(&user), 2);
    assert_eq!(sshd.calls("pve2").len(), 2);
}

#[tokio::test]
async fn a_dropped_connection_during_a_command_is_disconnected_not_retried() {
    let sshd = PrivateSshd::start(&["pve1"]);
    let node = Arc::new(SshNode::new(sshd.settings("pve1")));
    node.exec("true", None, T).await.expect("warm up");
    let marker = sshd.dir().join("nodes/pve1/ran");
    let cmd = format!("echo x >> {}; sleep 3", marker.display());
    let running = {
        let node = node.clone();
        tokio::spawn(async move { node.exec(&cmd, None, T).await })
    };
    // Wait until the command has started on the node, then restart sshd.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "command did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restart = {
        let dir = sshd.dir().to_path_buf();
        tokio::task::spawn_blocking(move || sshd_action("restart", &dir))
    };
    let err = running
        .await
        .expect("task")
        .expect_err("connection dropped");
    assert!(matches!(err, SshError::Disconnected { .. }), "{err:?}");
    assert!(err.command_may_have_run());
    restart.await.expect("restart");
    // The command ran exactly once (never re-sent).
    let ran = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(ran, "x\n");
    let out = node.exec("echo back", None, T).await.expect("reconnect");
    assert_eq!(out.stdout, b"back\n");
}

/// Connect+auth time and commands per second over one connection. Run with
/// `cargo nextest run --test ssh_transport --run-ignored only --no-capture`.
#[tokio::test]
#[ignore = "benchmark; prints numbers"]
async fn bench_one_connection() {
    let settings = shared_settings("pve1");
    let mut connects = Vec::new();
    for _ in 0..5 {
        let node = SshNode::new(settings.clone());
        let t = Instant::now();
        node.exec("true", None, T).await.expect("first exec");
        connects.push(t.elapsed());
    }
    let node = Arc::new(SshNode::new(settings));
    node.exec("true", None, T).await.expect("warm up");
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        node.exec("echo hi", None, T).await.expect("seq");
    }
    let seq = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 10 * 2 {
                node.exec("echo hi", None, T).await.expect("conc");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let conc = (n * 2) as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "connect+auth+first exec: {:?}; sequential {seq:.0} cmd/s; 10 concurrent {conc:.0} cmd/s",
        connects
    );
}

#[tokio::test]
async fn a_nodes_file_drives_two_simulated_nodes_behind_one_sshd() {
    use cloudpods::proxmox::Proxmox;
    use cloudpods::proxmox::config::NodesConfig;
    use cloudpods::proxmox::driver::DriverSettings;
    use cloudpods::proxmox::types::{NodeName, Vmid};

    let sshd = PrivateSshd::start(&["pve1", "pve2"]);
    let s1 = sshd.settings("pve1");
    let s2 = sshd.settings("pve2");
    let yaml = format!(
        "defaults:\n  port: {}\n  keyFile: {}\n  knownHostsFile: {}\nnodes:\n  - name: pve1\n    host: {}\n    user: {}\n  - name: pve2\n    host: {}\n    user: {}\n",
        s1.port,
        s1.key_path.display(),
        s1.known_hosts_path.display(),
        s1.host,
        s1.user,
        s2.host,
        s2.user,
    );
    let config = NodesConfig::parse(&yaml, "test").expect("valid nodes file");
    let pve = config.driver(DriverSettings::default());
    for node in ["pve1", "pve2"] {
        let status = pve
            .status(&NodeName::parse(node).unwrap(), Vmid::new(9000).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert!(status.template, "{node}: 9000 is the template");
    }
    assert_eq!(sshd.calls("pve1").len(), 1);
    assert_eq!(sshd.calls("pve2").len(), 1);
}
