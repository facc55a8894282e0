//! Hostile strings in every tenant-influenced field: either local validation rejects them
//! (naming the field), or they reach the simulated node as exactly the intended argv element
//! (checked in the simulator's `calls.log`) and nothing else runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudpods::proxmox::driver::{DriverSettings, RetryPolicy};
use cloudpods::proxmox::{
    Applied, BackupSpec, BackupVolid, CiUser, CloneSpec, CloudInitSpec, Description, DiskId,
    DnsName, IpConfig, JobId, Missing, Nameservers, NodeName, PodId, Proxmox, ProxmoxError,
    RemoteDir, SearchDomain, SizeSpec, SnapshotName, SshPublicKey, StorageId, Tag, TenantId,
};
use common::proxmox::{PveEnv, TEMPLATE, clone_spec, job, marker, node, vmid};

/// Hostile values; `{pwn}` becomes a path whose existence would prove code execution.
const HOSTILE: &[&str] = &[
    ";",
    "a;touch {pwn}",
    "$(touch {pwn})",
    "`touch {pwn}`",
    "'",
    "a'b",
    "';touch {pwn};'",
    "\"",
    "\";touch {pwn};\"",
    "a\nb",
    "\ntouch {pwn}\n",
    "a\0b",
    "\0",
    "é",
    "中文",
    "-x",
    "--help",
    "--name=evil",
    "a b",
    " ",
    "|touch {pwn}",
    "&touch {pwn}",
    ">{pwn}",
    "a\\b",
    "${IFS}",
    "*",
    "~root",
    "\t",
    "\r",
    "\x1b[31m",
    "",
];

fn hostile(pwn: &Path) -> Vec<String> {
    let p = pwn.display().to_string();
    let mut out: Vec<String> = HOSTILE.iter().map(|h| h.replace("{pwn}", &p)).collect();
    // The same strings inside otherwise valid values, where the grammar is not only checked
    // at the first character (`-` is fine inside most identifiers, so it is left out).
    for h in HOSTILE
        .iter()
        .filter(|h| !h.is_empty() && !h.starts_with('-'))
    {
        let h = h.replace("{pwn}", &p);
        out.push(format!("web{h}"));
        out.push(format!("web{h}01"));
    }
    out
}

fn rejected<T: std::fmt::Debug>(
    field: &'static str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, ProxmoxError>,
) {
    for v in values {
        match parse(v) {
            Err(ProxmoxError::InvalidArgument { field: f, .. }) => {
                assert_eq!(f, field, "wrong field for {v:?}");
            }
            other => panic!("{field}: {v:?} was not rejected: {other:?}"),
        }
    }
}

#[test]
fn identifier_fields_reject_hostile_strings() {
    let values = hostile(Path::new("/tmp/cloudpods-pwned"));
    rejected("name", &values, DnsName::parse);
    rejected("hostname", &values, DnsName::label);
    rejected("pod_id", &values, |s| PodId::parse(&format!("pod-{s}")));
    rejected("pod_id", &values, PodId::parse);
    rejected("tenant_id", &values, TenantId::parse);
    rejected("ciuser", &values, CiUser::parse);
    rejected("ipconfig", &values, IpConfig::parse);
    rejected("ipconfig", &values, |s| IpConfig::parse(&format!("ip={s}")));
    rejected("ipconfig", &values, |s| {
        IpConfig::parse(&format!("ip=10.0.0.5/24,gw={s}"))
    });
    rejected("nameserver", &values, Nameservers::parse);
    // After a valid address (blanks there are just separators).
    let non_blank: Vec<String> = values
        .iter()
        .filter(|v| !v.trim_matches([' ', ',']).is_empty())
        .cloned()
        .collect();
    rejected("nameserver", &non_blank, |s| {
        Nameservers::parse(&format!("1.1.1.1 {s}"))
    });
    rejected("searchdomain", &values, SearchDomain::parse);
    rejected("tag", &values, Tag::parse);
    rejected("snapname", &values, SnapshotName::parse);
    rejected("storage", &values, StorageId::parse);
    rejected("node", &values, NodeName::parse);
    rejected("job_id", &values, JobId::parse);
    rejected("disk", &values, DiskId::parse);
    rejected("size", &values, SizeSpec::parse);
    rejected("volid", &values, |s| {
        BackupVolid::parse(&format!("local:backup/{s}"))
    });
    rejected("volid", &values, |s| {
        BackupVolid::parse(&format!("{s}:backup/vzdump-qemu-1-x.vma"))
    });
    // (`/var/` + nothing is just `/var`.)
    rejected("dir", &non_blank, |s| {
        RemoteDir::parse(&format!("/var/{s}"))
    });
}

#[test]
fn ssh_keys_reject_what_cannot_be_one_key_line() {
    let base = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIr7/JRUm5v8BLKQByHb06ztfJUFND9h3+T10SxY/HLz";
    let bad: Vec<String> = [
        format!("{base} a\nssh-rsa AAAA"),
        format!("{base} a\0b"),
        format!("{base} é"),
        format!("{base} \x1b[31m"),
        format!("{base}\r"),
        format!("$(id) {base}"),
        format!("-x {base}"),
        "ssh-ed25519 $(touch /tmp/x)".to_string(),
        "ssh-ed25519 'AAAA'".to_string(),
        String::new(),
    ]
    .into();
    rejected("ssh_public_key", &bad, SshPublicKey::parse);
    // Printable shell metacharacters in the comment are fine: the key never touches a shell.
    assert!(SshPublicKey::parse(&format!("{base} it's $(id) `x` ;|&<>\"")).is_ok());
}

#[test]
fn descriptions_reject_only_nul_and_control_characters() {
    let bad: Vec<String> = ["a\0b", "\x1b[31m", "a\rb", "\x7f", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    rejected("description", &bad, Description::parse);
    rejected("description", &["x".repeat(8193)], Description::parse);
    for ok in [
        "-x",
        "--name=evil",
        "a\nb",
        "$(id) `id` ';' \"",
        "é 中文 🚀",
        "\ttab",
    ] {
        assert!(Description::parse(ok).is_ok(), "{ok:?}");
    }
}

// ---- end to end: quoted values arrive verbatim -----------------------------------------------

/// A private sshd with node `pve1`; no retries, so every call reaches the node once.
async fn start() -> PveEnv {
    PveEnv::start(DriverSettings {
        poll_interval: Duration::from_millis(50),
        max_poll_interval: Duration::from_millis(200),
        retry: RetryPolicy::none(),
        ..DriverSettings::default()
    })
    .await
}

/// Somewhere the node's user could write if any value were executed.
fn pwn(env: &PveEnv) -> PathBuf {
    env.state().join("pwned")
}

fn assert_not_pwned(env: &PveEnv) {
    assert!(
        !pwn(env).exists(),
        "a hostile value was executed on the node"
    );
}

fn free_text(pwn: &Path) -> String {
    let p = pwn.display();
    format!(
        "-rf --name=evil; touch {p}\n$(touch {p}) `touch {p}` ${{IFS}} 'single' \"double\" \
         '; touch {p}; ' \"; touch {p}; \"\n\\backslash | & > {p} < * ~ ! # %\n\
         é ü 中文 🚀\n\ttabbed\n--description=again"
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(n);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf8")
}

#[tokio::test]
async fn clone_description_and_name_arrive_verbatim() {
    let env = start().await;
    let text = free_text(&pwn(&env));
    let marker = marker("h1");
    let description = marker.description(Some(&text)).expect("description");
    let spec = CloneSpec {
        name: DnsName::parse("web-01.example.com").expect("name"),
        description: description.clone(),
        ..clone_spec(300, "h1")
    };
    assert_eq!(
        env.pve.clone_vm(&node(), &job("clone-300"), &spec).await,
        Ok(Applied::Now)
    );
    let clones = env.calls(&["qm", "clone"]);
    assert_eq!(
        clones,
        [vec![
            "qm".to_string(),
            "clone".into(),
            "9000".into(),
            "300".into(),
            "--full=0".into(),
            "--name=web-01.example.com".into(),
            format!("--description={}", description.as_str()),
        ]]
    );
    let cfg = env.pve.config(&node(), vmid(300)).await.expect("config");
    assert_eq!(cfg.description.as_deref(), Some(description.as_str()));
    assert_eq!(cfg.marker(), Some(marker));
    assert_not_pwned(&env);
}

#[tokio::test]
async fn snapshot_description_arrives_verbatim() {
    let env = start().await;
    // Snapshots of a template are refused, so take one of a plain clone.
    env.clone_template(301, "h2").await;
    let text = free_text(&pwn(&env));
    let desc = Description::parse(&text).expect("description");
    let snap = SnapshotName::parse("Before_upgrade-1").expect("snap");
    assert_eq!(
        env.pve
            .snapshot(&node(), vmid(301), &snap, Some(&desc))
            .await,
        Ok(Applied::Now)
    );
    assert_eq!(
        env.calls(&["qm", "snapshot"]),
        [vec![
            "qm".to_string(),
            "snapshot".into(),
            "301".into(),
            "Before_upgrade-1".into(),
            format!("--description={text}"),
        ]]
    );
    let snaps = env
        .pve
        .list_snapshots(&node(), vmid(301))
        .await
        .expect("list");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].description.as_deref(), Some(text.as_str()));
    assert_not_pwned(&env);
}

#[tokio::test]
async fn cloud_init_values_and_ssh_keys_arrive_verbatim() {
    let env = start().await;
    let vmid = vmid(302);
    env.clone_template(302, "h3").await;

    let base = std::fs::read_to_string(env.sshd.file("client_ed25519.pub")).expect("key");
    let base: Vec<&str> = base.split_whitespace().take(2).collect();
    let pwn = pwn(&env);
    let p = pwn.display();
    let keys = vec![
        SshPublicKey::parse(&format!(
            "{} {} it's $(touch {p}); `touch {p}` \"q\" | & > < * ~ #",
            base[0], base[1]
        ))
        .expect("key 1"),
        SshPublicKey::parse(&format!("{} {} --sshkeys=/etc/shadow", base[0], base[1]))
            .expect("key 2"),
    ];
    let ci = CloudInitSpec {
        user: Some(CiUser::parse("deploy_user-1").expect("user")),
        ssh_keys: keys.clone(),
        ipconfig0: Some(IpConfig::parse("ip=10.0.0.5/24,gw=10.0.0.1").expect("ip")),
        nameservers: Some(Nameservers::parse("1.1.1.1,2606:4700:4700::1111").expect("ns")),
        searchdomain: Some(SearchDomain::parse("corp.example.com").expect("sd")),
    };
    env.pve
        .configure_cloud_init(&node(), vmid, &ci)
        .await
        .expect("cloud-init");
    let tags = [
        Tag::parse("cloudpods").expect("tag"),
        Tag::parse("Tenant_A+b.c-d").expect("tag"),
    ];
    env.pve.set_tags(&node(), vmid, &tags).await.expect("tags");

    let sets = env.calls(&["qm", "set", "302"]);
    assert_eq!(sets.len(), 2);
    let (head, last) = sets[0].split_at(sets[0].len() - 1);
    assert_eq!(
        head,
        [
            "qm",
            "set",
            "302",
            "--ciuser=deploy_user-1",
            "--ipconfig0=ip=10.0.0.5/24,gw=10.0.0.1",
            "--nameserver=1.1.1.1 2606:4700:4700::1111",
            "--searchdomain=corp.example.com",
        ]
    );
    assert!(last[0].starts_with("--sshkeys=/"), "{last:?}");
    assert!(!last[0].contains(' '), "a mktemp path, not key text");
    assert_eq!(
        sets[1],
        ["qm", "set", "302", "--tags=cloudpods;tenant_a+b.c-d"]
    );

    let conf = env.stored_conf(302);
    let stored = percent_decode(conf["sshkeys"].as_str().expect("sshkeys"));
    let want: String = keys.iter().map(|k| format!("{}\n", k.as_str())).collect();
    assert_eq!(stored, want, "the keys file held exactly the keys");
    assert_eq!(conf["ciuser"], "deploy_user-1");
    assert_eq!(conf["searchdomain"], "corp.example.com");
    assert_eq!(conf["tags"], "cloudpods;tenant_a+b.c-d");
    // The temporary keys file was removed.
    let path = last[0].trim_start_matches("--sshkeys=");
    assert!(!Path::new(path).exists(), "{path} left behind");
    assert_not_pwned(&env);
}

#[tokio::test]
async fn unknown_but_valid_node_and_storage_are_refused_cleanly() {
    let env = start().await;
    let before = env.sshd.calls("pve1").len();
    let elsewhere = NodeName::parse("pve-7").expect("node");
    assert_eq!(
        env.pve.status(&elsewhere, vmid(TEMPLATE)).await,
        Err(ProxmoxError::NotFound {
            what: Missing::Node("pve-7".into())
        })
    );
    assert_eq!(env.sshd.calls("pve1").len(), before, "nothing ran");

    // A well-formed storage id the node does not know reaches it as one argv element.
    let spec = BackupSpec {
        vmid: vmid(TEMPLATE),
        storage: StorageId::parse("no-such.store_1").expect("sid"),
        marker: marker("h4"),
        prune: false,
    };
    let r = env.pve.backup(&node(), &job("backup-h4"), &spec).await;
    assert!(r.is_err(), "{r:?}");
    let runs = env.calls(&["vzdump"]);
    assert_eq!(
        runs,
        [vec![
            "vzdump".to_string(),
            "9000".into(),
            "--storage=no-such.store_1".into(),
            "--mode=snapshot".into(),
            "--compress=zstd".into(),
            "--remove=0".into(),
            "--notes-template=managed-by=cloudpods;pod=pod-h4;tenant=acme".into(),
        ]]
    );
    assert_not_pwned(&env);
}
