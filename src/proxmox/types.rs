//! Validated values: every string that can end up on a Proxmox command line passes one of these.
//!
//! Each type checks its grammar from the PVE CLI reference (§13, §14.2) when constructed, so a
//! builder never sees a hostile or malformed value. Constructors return
//! [`ProxmoxError::InvalidArgument`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ProxmoxError;

type Result<T> = std::result::Result<T, ProxmoxError>;

fn invalid<T>(field: &'static str, reason: impl Into<String>) -> Result<T> {
    Err(ProxmoxError::invalid(field, reason))
}

/// Shows a rejected value safely inside an error message (escaped, cut short).
fn shown(value: &str) -> String {
    let mut s: String = value
        .chars()
        .take(40)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if value.chars().count() > 40 {
        s.push('…');
    }
    s
}

fn check_len(field: &'static str, value: &str, min: usize, max: usize) -> Result<()> {
    if value.len() < min || value.len() > max {
        return invalid(
            field,
            format!(
                "length must be {min}..={max} bytes, got {} ({})",
                value.len(),
                shown(value)
            ),
        );
    }
    Ok(())
}

// The grammars below are public so that other layers (the catalog) check a value with the
// same rule the driver will apply to it, rather than with a copy.

/// True for a DNS label: `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?`, at most 63 bytes
/// (PVE node names and hostnames; either case).
pub fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// True for a lowercase DNS label (RFC 1123, as Kubernetes and the canonical tables use it):
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_lower_dns_label(label: &str) -> bool {
    is_dns_label(label) && !label.bytes().any(|c| c.is_ascii_uppercase())
}

/// True for a PVE storage id: `^[a-z][a-z0-9\-_.]*[a-z0-9]$` (case-insensitive), 2..=64 bytes.
pub fn is_storage_id(id: &str) -> bool {
    let b = id.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(is_name_char)
}

/// True for a Linux bridge name: a letter, then `[A-Za-z0-9_.-]`, at most 15 bytes.
pub fn is_bridge_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=15).contains(&b.len()) && b[0].is_ascii_alphabetic() && b.iter().all(is_name_char)
}

/// `[A-Za-z0-9_.-]`, the characters of storage ids and bridge names.
fn is_name_char(c: &u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

/// True for a standard Proxmox bridge, `vmbr` and 1 to 4 digits (`vmbr0` .. `vmbr9999`): the
/// only bridges the canonical tables accept (`cloud_pod_blueprints.network_bridge`).
pub fn is_vmbr(name: &str) -> bool {
    name.strip_prefix("vmbr")
        .is_some_and(|n| (1..=4).contains(&n.len()) && n.bytes().all(|c| c.is_ascii_digit()))
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ProxmoxError;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProxmoxError;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// A Proxmox VM id, 100..=999999999 (`^[1-9][0-9]{2,8}$`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vmid(u32);

impl Vmid {
    /// Smallest valid VMID.
    pub const MIN: u32 = 100;
    /// Largest valid VMID.
    pub const MAX: u32 = 999_999_999;

    /// Checks the range.
    pub fn new(id: u32) -> Result<Self> {
        if (Self::MIN..=Self::MAX).contains(&id) {
            Ok(Vmid(id))
        } else {
            invalid(
                "vmid",
                format!("{id} is outside {}..={}", Self::MIN, Self::MAX),
            )
        }
    }

    /// Parses the decimal form (no sign, no leading zero, no spaces).
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) || b[0] == b'0' {
            return invalid("vmid", format!("not a VMID: {}", shown(s)));
        }
        let n: u32 = s
            .parse()
            .map_err(|_| ProxmoxError::invalid("vmid", format!("not a VMID: {}", shown(s))))?;
        Self::new(n)
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for Vmid {
    type Error = ProxmoxError;
    fn try_from(v: u32) -> Result<Self> {
        Vmid::new(v)
    }
}

impl From<Vmid> for u32 {
    fn from(v: Vmid) -> u32 {
        v.0
    }
}

impl FromStr for Vmid {
    type Err = ProxmoxError;
    fn from_str(s: &str) -> Result<Self> {
        Vmid::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------

/// A cluster node name: one DNS label (the UPID grammar `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Validates a node name.
    pub fn parse(s: &str) -> Result<Self> {
        if !is_dns_label(s) {
            return invalid("node", format!("not a node name: {}", shown(s)));
        }
        Ok(NodeName(s.to_string()))
    }
}
string_newtype!(NodeName);

/// A storage id ([`is_storage_id`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorageId(String);

impl StorageId {
    /// Validates a storage id.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("storage", s, 2, 64)?;
        if !is_storage_id(s) {
            return invalid("storage", format!("not a storage id: {}", shown(s)));
        }
        Ok(StorageId(s.to_string()))
    }
}
string_newtype!(StorageId);

/// A Linux bridge name such as `vmbr0` ([`is_bridge_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BridgeName(String);

impl BridgeName {
    /// Validates a bridge name.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("bridge", s, 1, 15)?;
        if !is_bridge_name(s) {
            return invalid("bridge", format!("not a bridge name: {}", shown(s)));
        }
        Ok(BridgeName(s.to_string()))
    }
}
string_newtype!(BridgeName);

/// A PVE `dns-name` (VM name, search domain): dot-joined DNS labels, at most 253 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName(String);

impl DnsName {
    /// Validates a (possibly multi-label) DNS name; no trailing dot.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("name", s, 1, 253)?;
        if !s.split('.').all(is_dns_label) {
            return invalid("name", format!("not a DNS name: {}", shown(s)));
        }
        Ok(DnsName(s.to_string()))
    }

    /// Validates a single DNS label (a hostname without domain).
    pub fn label(s: &str) -> Result<Self> {
        if !is_dns_label(s) {
            return invalid("hostname", format!("not a DNS label: {}", shown(s)));
        }
        Ok(DnsName(s.to_string()))
    }
}
string_newtype!(DnsName);

/// A PVE tag: lowercased, `^[a-z0-9_][a-z0-9_+.-]*$`, at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// Lowercases (ASCII) and validates a tag.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("tag", s, 1, 128)?;
        let lower = s.to_ascii_lowercase();
        let b = lower.as_bytes();
        let ok = (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'+' | b'.' | b'-')
            });
        if !ok {
            return invalid("tag", format!("invalid characters in tag: {}", shown(s)));
        }
        Ok(Tag(lower))
    }
}
string_newtype!(Tag);

/// Splits a PVE tag list (`;`, `,` or whitespace separated) into its non-empty entries, lowercased.
pub fn split_tags(list: &str) -> Vec<String> {
    list.split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// A snapshot name: `^[A-Za-z][A-Za-z0-9_-]+$`, 2..=40 bytes, not `current`/`pending`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotName(String);

impl SnapshotName {
    /// Validates a snapshot name.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("snapname", s, 2, 40)?;
        let b = s.as_bytes();
        if !b[0].is_ascii_alphabetic()
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
        {
            return invalid("snapname", format!("not a snapshot name: {}", shown(s)));
        }
        if s.eq_ignore_ascii_case("current") || s.eq_ignore_ascii_case("pending") {
            return invalid("snapname", format!("'{s}' is a reserved name"));
        }
        Ok(SnapshotName(s.to_string()))
    }
}
string_newtype!(SnapshotName);

/// A disk key: `scsi0..30`, `virtio0..15`, `sata0..5`, `ide0..3`, `efidisk0`, `tpmstate0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskId(String);

impl DiskId {
    /// The usual boot disk, `scsi0`.
    pub fn scsi0() -> Self {
        DiskId("scsi0".to_string())
    }

    /// Validates a disk key.
    pub fn parse(s: &str) -> Result<Self> {
        let split = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
        let (bus, index) = s.split_at(split);
        let max = match bus {
            "scsi" => 30,
            "virtio" => 15,
            "sata" => 5,
            "ide" => 3,
            "efidisk" | "tpmstate" => 0,
            _ => return invalid("disk", format!("not a disk key: {}", shown(s))),
        };
        let valid_index = !index.is_empty()
            && index.len() <= 2
            && index.bytes().all(|c| c.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'))
            && index.parse::<u32>().is_ok_and(|n| n <= max);
        if !valid_index {
            return invalid("disk", format!("not a disk key: {}", shown(s)));
        }
        Ok(DiskId(s.to_string()))
    }
}
string_newtype!(DiskId);

/// A binary size unit (K=KiB ... T=TiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeUnit {
    /// KiB.
    K,
    /// MiB.
    M,
    /// GiB.
    G,
    /// TiB.
    T,
}

impl SizeUnit {
    fn bytes(self) -> u64 {
        match self {
            SizeUnit::K => 1 << 10,
            SizeUnit::M => 1 << 20,
            SizeUnit::G => 1 << 30,
            SizeUnit::T => 1 << 40,
        }
    }

    fn letter(self) -> char {
        match self {
            SizeUnit::K => 'K',
            SizeUnit::M => 'M',
            SizeUnit::G => 'G',
            SizeUnit::T => 'T',
        }
    }
}

/// A `qm disk resize` size: absolute (`40G`) or growth (`+10G`). A unit is required here,
/// because PVE reads a bare number as bytes; fractions are not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SizeSpec {
    grow: bool,
    amount: u64,
    unit: SizeUnit,
}

impl SizeSpec {
    /// Largest size accepted, 64 TiB.
    pub const MAX_BYTES: u64 = 64 << 40;

    /// An absolute size in GiB (idempotent when repeated).
    pub fn absolute_gib(gib: u64) -> Result<Self> {
        Self::new(false, gib, SizeUnit::G)
    }

    /// Growth by `gib` GiB (not idempotent: every repetition grows again).
    pub fn grow_gib(gib: u64) -> Result<Self> {
        Self::new(true, gib, SizeUnit::G)
    }

    fn new(grow: bool, amount: u64, unit: SizeUnit) -> Result<Self> {
        let bytes = amount.checked_mul(unit.bytes());
        match bytes {
            Some(b) if amount > 0 && b <= Self::MAX_BYTES => Ok(SizeSpec { grow, amount, unit }),
            _ => invalid("size", format!("{amount}{} is out of range", unit.letter())),
        }
    }

    /// Parses `[+]<digits><K|M|G|T>`.
    pub fn parse(s: &str) -> Result<Self> {
        let (grow, rest) = match s.strip_prefix('+') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let bad =
            || ProxmoxError::invalid("size", format!("not a size like 40G or +10G: {}", shown(s)));
        if !rest.is_ascii() {
            return Err(bad());
        }
        let (digits, unit) = rest.split_at(rest.len().saturating_sub(1));
        let unit = match unit {
            "K" => SizeUnit::K,
            "M" => SizeUnit::M,
            "G" => SizeUnit::G,
            "T" => SizeUnit::T,
            _ => return Err(bad()),
        };
        if digits.is_empty()
            || digits.len() > 15
            || !digits.bytes().all(|c| c.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return Err(bad());
        }
        let amount: u64 = digits.parse().map_err(|_| bad())?;
        Self::new(grow, amount, unit)
    }

    /// True for `+N` (growth).
    pub fn is_growth(&self) -> bool {
        self.grow
    }

    /// The amount in bytes (the target size, or the growth).
    pub fn bytes(&self) -> u64 {
        self.amount * self.unit.bytes()
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.grow {
            f.write_str("+")?;
        }
        write!(f, "{}{}", self.amount, self.unit.letter())
    }
}

/// Parses a config `size=` value (`32G`, `512M`, `1.5G`, `10737418240`) into bytes.
pub fn parse_config_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        b'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    // Rounding a fractional size is fine: PVE itself stores whole units.
    Some((f * mult as f64).round() as u64)
}

/// A cloud-init user name: `^[a-z_][a-z0-9_-]{0,31}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CiUser(String);

impl CiUser {
    /// Validates a cloud-init user name.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("ciuser", s, 1, 32)?;
        let b = s.as_bytes();
        if !(b[0].is_ascii_lowercase() || b[0] == b'_')
            || !b
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
        {
            return invalid("ciuser", format!("not a user name: {}", shown(s)));
        }
        Ok(CiUser(s.to_string()))
    }
}
string_newtype!(CiUser);

// ---------------------------------------------------------------------------------------------

/// Key types accepted in [`SshPublicKey`].
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One OpenSSH public key line: `<type> <base64 blob>[ <comment>]`, printable ASCII only.
///
/// The blob must be strict base64 and must itself start with the key type, which is what
/// `ssh-keygen -l` (used by PVE) also requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshPublicKey(String);

impl SshPublicKey {
    /// Validates a public key line (trailing spaces are dropped).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim_end_matches(' ');
        check_len("ssh_public_key", s, 16, 8192)?;
        if !s.bytes().all(|c| (b' '..=b'~').contains(&c)) {
            return invalid(
                "ssh_public_key",
                "only printable ASCII on one line is allowed",
            );
        }
        let (kind, rest) = s
            .split_once(' ')
            .ok_or_else(|| ProxmoxError::invalid("ssh_public_key", "missing key data"))?;
        if !SSH_KEY_TYPES.contains(&kind) {
            return invalid(
                "ssh_public_key",
                format!("unsupported key type: {}", shown(kind)),
            );
        }
        let blob = rest.split_once(' ').map_or(rest, |(b, _comment)| b);
        let decoded = decode_base64(blob)
            .ok_or_else(|| ProxmoxError::invalid("ssh_public_key", "key data is not base64"))?;
        let mut expected = (kind.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(kind.as_bytes());
        if decoded.len() <= expected.len() || !decoded.starts_with(&expected) {
            return invalid("ssh_public_key", "key data does not match the key type");
        }
        Ok(SshPublicKey(s.to_string()))
    }
}
string_newtype!(SshPublicKey);

/// Strict standard base64 (canonical `=` padding and trailing bits); `None` when malformed.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

// ---------------------------------------------------------------------------------------------

/// IPv4 part of an `ipconfigN` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv4Config {
    /// `ip=dhcp`.
    Dhcp,
    /// `ip=<addr>/<prefix>[,gw=<addr>]`.
    Static {
        /// Address.
        address: Ipv4Addr,
        /// Prefix length 1..=32.
        prefix: u8,
        /// Gateway inside the subnet.
        gateway: Option<Ipv4Addr>,
    },
}

/// IPv6 part of an `ipconfigN` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv6Config {
    /// `ip6=dhcp`.
    Dhcp,
    /// `ip6=auto` (SLAAC).
    Auto,
    /// `ip6=<addr>/<prefix>[,gw6=<addr>]`.
    Static {
        /// Address.
        address: Ipv6Addr,
        /// Prefix length 1..=128.
        prefix: u8,
        /// Gateway (may be link-local).
        gateway: Option<Ipv6Addr>,
    },
}

/// A cloud-init `ipconfigN` value: IPv4 and/or IPv6 settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpConfig {
    v4: Option<Ipv4Config>,
    v6: Option<Ipv6Config>,
}

impl IpConfig {
    /// `ip=dhcp`.
    pub fn dhcp() -> Self {
        IpConfig {
            v4: Some(Ipv4Config::Dhcp),
            v6: None,
        }
    }

    /// Builds and checks a configuration from its parts (at least one).
    pub fn new(v4: Option<Ipv4Config>, v6: Option<Ipv6Config>) -> Result<Self> {
        if v4.is_none() && v6.is_none() {
            return invalid("ipconfig", "needs ip= or ip6=");
        }
        if let Some(Ipv4Config::Static {
            address,
            prefix,
            gateway,
        }) = v4
        {
            check_v4(address, prefix, gateway)?;
        }
        if let Some(Ipv6Config::Static {
            address,
            prefix,
            gateway,
        }) = v6
        {
            check_v6(address, prefix, gateway)?;
        }
        Ok(IpConfig { v4, v6 })
    }

    /// Parses the PVE form, e.g. `ip=10.0.0.5/24,gw=10.0.0.1,ip6=auto`.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("ipconfig", s, 1, 256)?;
        let (mut ip, mut gw, mut ip6, mut gw6) = (None, None, None, None);
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                ProxmoxError::invalid("ipconfig", format!("not key=value: {}", shown(part)))
            })?;
            let slot = match k {
                "ip" => &mut ip,
                "gw" => &mut gw,
                "ip6" => &mut ip6,
                "gw6" => &mut gw6,
                _ => return invalid("ipconfig", format!("unknown key: {}", shown(k))),
            };
            if slot.replace(v).is_some() {
                return invalid("ipconfig", format!("duplicate key: {k}"));
            }
        }
        let v4 = match (ip, gw) {
            (None, None) => None,
            (None, Some(_)) => return invalid("ipconfig", "gw needs a static ip"),
            (Some("dhcp"), None) => Some(Ipv4Config::Dhcp),
            (Some("dhcp"), Some(_)) => return invalid("ipconfig", "gw cannot be used with dhcp"),
            (Some(cidr), gw) => {
                let (address, prefix) = parse_cidr::<Ipv4Addr>(cidr, 32)?;
                let gateway = gw.map(parse_ip::<Ipv4Addr>).transpose()?;
                Some(Ipv4Config::Static {
                    address,
                    prefix,
                    gateway,
                })
            }
        };
        let v6 = match (ip6, gw6) {
            (None, None) => None,
            (None, Some(_)) => return invalid("ipconfig", "gw6 needs a static ip6"),
            (Some("dhcp"), None) => Some(Ipv6Config::Dhcp),
            (Some("auto"), None) => Some(Ipv6Config::Auto),
            (Some("dhcp" | "auto"), Some(_)) => {
                return invalid("ipconfig", "gw6 cannot be used with dhcp/auto");
            }
            (Some(cidr), gw) => {
                let (address, prefix) = parse_cidr::<Ipv6Addr>(cidr, 128)?;
                let gateway = gw.map(parse_ip::<Ipv6Addr>).transpose()?;
                Some(Ipv6Config::Static {
                    address,
                    prefix,
                    gateway,
                })
            }
        };
        Self::new(v4, v6)
    }

    /// The IPv4 part.
    pub fn v4(&self) -> Option<Ipv4Config> {
        self.v4
    }

    /// The IPv6 part.
    pub fn v6(&self) -> Option<Ipv6Config> {
        self.v6
    }
}

impl fmt::Display for IpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match self.v4 {
            Some(Ipv4Config::Dhcp) => parts.push("ip=dhcp".to_string()),
            Some(Ipv4Config::Static {
                address,
                prefix,
                gateway,
            }) => {
                parts.push(format!("ip={address}/{prefix}"));
                if let Some(gw) = gateway {
                    parts.push(format!("gw={gw}"));
                }
            }
            None => {}
        }
        match self.v6 {
            Some(Ipv6Config::Dhcp) => parts.push("ip6=dhcp".to_string()),
            Some(Ipv6Config::Auto) => parts.push("ip6=auto".to_string()),
            Some(Ipv6Config::Static {
                address,
                prefix,
                gateway,
            }) => {
                parts.push(format!("ip6={address}/{prefix}"));
                if let Some(gw) = gateway {
                    parts.push(format!("gw6={gw}"));
                }
            }
            None => {}
        }
        f.write_str(&parts.join(","))
    }
}

fn parse_ip<T: FromStr>(s: &str) -> Result<T> {
    // std's parsers reject leading zeros, spaces and zone ids, which is what we want.
    s.parse()
        .map_err(|_| ProxmoxError::invalid("ipconfig", format!("not an IP address: {}", shown(s))))
}

fn parse_cidr<T: FromStr>(s: &str, max_prefix: u8) -> Result<(T, u8)> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| {
        ProxmoxError::invalid("ipconfig", format!("address needs /prefix: {}", shown(s)))
    })?;
    let addr = parse_ip(addr)?;
    let ok_digits = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|c| c.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    let prefix: u8 = match prefix.parse() {
        Ok(p) if ok_digits && (1..=max_prefix).contains(&p) => p,
        _ => return invalid("ipconfig", format!("bad prefix length: {}", shown(prefix))),
    };
    Ok((addr, prefix))
}

fn check_v4(address: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<()> {
    if !(1..=32).contains(&prefix) {
        return invalid("ipconfig", "IPv4 prefix must be 1..=32");
    }
    if address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || address.is_broadcast()
    {
        return invalid("ipconfig", format!("{address} cannot be a host address"));
    }
    if let Some(gw) = gateway {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if gw == address {
            return invalid("ipconfig", "gateway equals the address");
        }
        if u32::from(gw) & mask != u32::from(address) & mask {
            return invalid(
                "ipconfig",
                format!("gateway {gw} is outside {address}/{prefix}"),
            );
        }
    }
    Ok(())
}

fn check_v6(address: Ipv6Addr, prefix: u8, gateway: Option<Ipv6Addr>) -> Result<()> {
    if !(1..=128).contains(&prefix) {
        return invalid("ipconfig", "IPv6 prefix must be 1..=128");
    }
    if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
        return invalid("ipconfig", format!("{address} cannot be a host address"));
    }
    if let Some(gw) = gateway
        && (gw == address || gw.is_unspecified() || gw.is_multicast() || gw.is_loopback())
    {
        return invalid("ipconfig", format!("{gw} cannot be the gateway"));
    }
    Ok(())
}

/// Cloud-init name servers: 1..=3 IP addresses (DNS names are not accepted here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nameservers(Vec<IpAddr>);

impl Nameservers {
    /// Checks the list.
    pub fn new(addrs: Vec<IpAddr>) -> Result<Self> {
        if addrs.is_empty() || addrs.len() > 3 {
            return invalid("nameserver", "give 1 to 3 addresses");
        }
        if let Some(a) = addrs
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast())
        {
            return invalid("nameserver", format!("{a} is not a usable name server"));
        }
        Ok(Nameservers(addrs))
    }

    /// Parses a space- or comma-separated list.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("nameserver", s, 1, 256)?;
        let addrs = s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpAddr>().map_err(|_| {
                    ProxmoxError::invalid("nameserver", format!("not an IP address: {}", shown(p)))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(addrs)
    }

    /// The addresses.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.0
    }
}

impl fmt::Display for Nameservers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(" "))
    }
}

/// A cloud-init search domain: one DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchDomain(DnsName);

impl SearchDomain {
    /// Validates a search domain.
    pub fn parse(s: &str) -> Result<Self> {
        DnsName::parse(s).map(SearchDomain).map_err(|_| {
            ProxmoxError::invalid("searchdomain", format!("not a DNS name: {}", shown(s)))
        })
    }

    /// The domain.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SearchDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM description: at most 8 KiB, no NUL and no control characters except newline and tab.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Description(String);

impl Description {
    /// Largest description in bytes (PVE allows 8192 characters; bytes is stricter).
    pub const MAX_BYTES: usize = 8192;

    /// Validates a description.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("description", s, 1, Self::MAX_BYTES)?;
        if s.chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{7f}')
        {
            return invalid("description", "control characters are not allowed");
        }
        Ok(Description(s.to_string()))
    }
}
string_newtype!(Description);

/// vCPU cores, 1..=512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cores(u16);

impl Cores {
    /// Checks the range.
    pub fn new(n: u32) -> Result<Self> {
        match u16::try_from(n) {
            Ok(v) if (1..=512).contains(&v) => Ok(Cores(v)),
            _ => invalid("cores", format!("{n} is outside 1..=512")),
        }
    }

    /// The count.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// Memory in MiB, 16..=4194304 (4 TiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryMib(u32);

impl MemoryMib {
    /// Checks the range.
    pub fn new(n: u32) -> Result<Self> {
        if (16..=4_194_304).contains(&n) {
            Ok(MemoryMib(n))
        } else {
            invalid("memory", format!("{n} MiB is outside 16..=4194304"))
        }
    }

    /// The size in MiB.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A backup volume id: `<storage>:backup/<name>`; the name uses `[A-Za-z0-9_.:+/-]` without
/// empty, `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupVolid(String);

impl BackupVolid {
    /// Validates a backup volid.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("volid", s, 1, 512)?;
        let (sid, rest) = s
            .split_once(':')
            .ok_or_else(|| ProxmoxError::invalid("volid", format!("not a volid: {}", shown(s))))?;
        StorageId::parse(sid)
            .map_err(|_| ProxmoxError::invalid("volid", format!("bad storage in {}", shown(s))))?;
        let name = rest.strip_prefix("backup/").ok_or_else(|| {
            ProxmoxError::invalid("volid", format!("not a backup volid: {}", shown(s)))
        })?;
        let ok = !name.is_empty()
            && name.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.starts_with('-')
                    && seg.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'+' | b'-')
                    })
            });
        if !ok {
            return invalid("volid", format!("not a backup volid: {}", shown(s)));
        }
        Ok(BackupVolid(s.to_string()))
    }

    /// The storage part.
    pub fn storage(&self) -> &str {
        self.0.split_once(':').map_or("", |(s, _)| s)
    }
}
string_newtype!(BackupVolid);

/// A detached job id: `[a-z0-9-]{1,64}`, not starting with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// Validates a job id.
    pub fn parse(s: &str) -> Result<Self> {
        check_len("job_id", s, 1, 64)?;
        if s.starts_with('-')
            || !s
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return invalid(
                "job_id",
                format!("only [a-z0-9-] allowed, no leading '-': {}", shown(s)),
            );
        }
        Ok(JobId(s.to_string()))
    }
}
string_newtype!(JobId);

/// An absolute directory on the node, `[A-Za-z0-9._/-]`, no `.`/`..` or empty segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteDir(String);

impl RemoteDir {
    /// `/var/tmp`, the default home of detached job files.
    pub fn var_tmp() -> Self {
        RemoteDir("/var/tmp".to_string())
    }

    /// Validates a directory path (a trailing `/` is dropped).
    pub fn parse(s: &str) -> Result<Self> {
        check_len("dir", s, 2, 1024)?;
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        let Some(rest) = trimmed.strip_prefix('/') else {
            return invalid("dir", format!("not an absolute path: {}", shown(s)));
        };
        let ok = rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with('-')
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        });
        if !ok {
            return invalid("dir", format!("not a safe directory path: {}", shown(s)));
        }
        Ok(RemoteDir(trimmed.to_string()))
    }
}
string_newtype!(RemoteDir);

// ---------------------------------------------------------------------------------------------

/// A CloudPods pod id: `pod-` then a lowercase DNS-label tail, at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodId(String);

impl PodId {
    /// Validates a pod id (`^pod-[a-z0-9]([-a-z0-9]*[a-z0-9])?$`).
    pub fn parse(s: &str) -> Result<Self> {
        check_len("pod_id", s, 5, 63)?;
        match s.strip_prefix("pod-") {
            Some(tail) if is_lower_dns_label(tail) => Ok(PodId(s.to_string())),
            _ => invalid("pod_id", format!("not a pod id: {}", shown(s))),
        }
    }

    /// The id without its `pod-` prefix (used in the per-pod tag).
    pub fn short(&self) -> &str {
        self.0.strip_prefix("pod-").unwrap_or(&self.0)
    }
}
string_newtype!(PodId);

/// A tenant id: a lowercase DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id.
    pub fn parse(s: &str) -> Result<Self> {
        if !is_lower_dns_label(s) {
            return invalid("tenant_id", format!("not a tenant id: {}", shown(s)));
        }
        Ok(TenantId(s.to_string()))
    }
}
string_newtype!(TenantId);

/// The tag every CloudPods VM carries (never put on templates).
pub const MANAGED_TAG: &str = "cloudpods";

/// The marker line prefix in a managed VM's description.
pub const MARKER_PREFIX: &str = "managed-by=cloudpods;";

/// The ownership marker of one pod's VM (reference §15): tags plus a description line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnershipMarker {
    /// The pod.
    pub pod_id: PodId,
    /// Its tenant.
    pub tenant: TenantId,
}

impl OwnershipMarker {
    /// Bundles the two ids.
    pub fn new(pod_id: PodId, tenant: TenantId) -> Self {
        OwnershipMarker { pod_id, tenant }
    }

    /// The per-pod tag, `cloudpods-<pod id without "pod-">`.
    pub fn pod_tag(&self) -> Tag {
        Tag(format!("{MANAGED_TAG}-{}", self.pod_id.short()))
    }

    /// Both tags, `cloudpods` and the per-pod tag, sorted as PVE stores them.
    pub fn tags(&self) -> Vec<Tag> {
        vec![Tag(MANAGED_TAG.to_string()), self.pod_tag()]
    }

    /// The description line, `managed-by=cloudpods;pod=<pod id>;tenant=<tenant>`.
    pub fn line(&self) -> String {
        format!("{MARKER_PREFIX}pod={};tenant={}", self.pod_id, self.tenant)
    }

    /// The full VM description: the marker line, then optional human text.
    pub fn description(&self, text: Option<&str>) -> Result<Description> {
        match text {
            Some(t) if !t.is_empty() => Description::parse(&format!("{}\n{t}", self.line())),
            _ => Description::parse(&self.line()),
        }
    }

    /// The vzdump notes template carrying the marker (single line, no `{{`, no backslash).
    pub fn notes_template(&self) -> String {
        self.line()
    }

    /// Finds and parses the marker line in a raw description or backup notes.
    pub fn find_in(text: &str) -> Option<Self> {
        text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(MARKER_PREFIX)?;
            let (mut pod, mut tenant) = (None, None);
            for kv in rest.split(';') {
                match kv.split_once('=') {
                    Some(("pod", v)) => pod = PodId::parse(v).ok(),
                    Some(("tenant", v)) => tenant = TenantId::parse(v).ok(),
                    _ => {}
                }
            }
            Some(OwnershipMarker::new(pod?, tenant?))
        })
    }

    /// True when `tags` (a PVE `;` list) carries this pod's tag and the managed tag.
    pub fn tagged_in(&self, tags: &str) -> bool {
        let list = split_tags(tags);
        list.iter().any(|t| t == MANAGED_TAG) && list.iter().any(|t| t == self.pod_tag().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings that must never pass a validator meant for identifiers.
    const HOSTILE: &[&str] = &[
        "", "a;b", "$(id)", "`id`", "a'b", "a\"b", "a\nb", "a\0b", "a b", "-x", "--help", "é",
        "a/../b", "a\\b", "a|b", "a&b", "a>b", "${IFS}", "\t",
    ];

    fn all_rejected<T: fmt::Debug>(f: impl Fn(&str) -> Result<T>, extra: &[&str]) {
        for s in HOSTILE.iter().chain(extra) {
            let r = f(s);
            assert!(
                matches!(r, Err(ProxmoxError::InvalidArgument { .. })),
                "accepted {s:?}: {r:?}"
            );
        }
    }

    #[test]
    fn vmid() {
        assert_eq!(Vmid::parse("100").map(Vmid::get), Ok(100));
        assert_eq!(Vmid::parse("999999999").map(Vmid::get), Ok(999_999_999));
        assert!(Vmid::new(99).is_err());
        assert!(Vmid::new(1_000_000_000).is_err());
        assert!(Vmid::new(0).is_err());
        all_rejected(
            Vmid::parse,
            &[
                "99",
                "0100",
                "+100",
                "1e3",
                "1000000000",
                " 100",
                "100 ",
                "١٠٠",
            ],
        );
        let v: Vmid = serde_json::from_str("123").expect("json");
        assert_eq!(v.get(), 123);
        assert!(serde_json::from_str::<Vmid>("42").is_err());
    }

    #[test]
    fn grammar_predicates() {
        assert!(is_dns_label("PVE-1") && !is_lower_dns_label("PVE-1"));
        assert!(is_lower_dns_label("pve-1"));
        for bad in ["", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_storage_id("Local-lvm") && is_storage_id(&"a".repeat(64)));
        for bad in ["", "l", "1a", "a-", "a b", &"a".repeat(65)] {
            assert!(!is_storage_id(bad), "{bad}");
        }
        assert!(is_bridge_name("vmbr0.100") && !is_bridge_name("0vmbr"));
        for ok in ["vmbr0", "vmbr9999"] {
            assert!(is_vmbr(ok) && is_bridge_name(ok), "{ok}");
        }
        for bad in ["vmbr", "vmbr-1", "vmbr10000", "br0", "vmbr0 ", "vmbr0.100"] {
            assert!(!is_vmbr(bad), "{bad}");
        }
    }

    #[test]
    fn node_name() {
        assert!(NodeName::parse("pve1").is_ok());
        assert!(NodeName::parse("PVE-node-2").is_ok());
        all_rejected(NodeName::parse, &["pve-", "pve.local", &"a".repeat(64)]);
    }

    #[test]
    fn storage_id() {
        for ok in ["local", "local-lvm", "ceph_pool.1", "nfs2"] {
            assert!(StorageId::parse(ok).is_ok(), "{ok}");
        }
        all_rejected(
            StorageId::parse,
            &["l", "1local", "local-", "local:x", &"a".repeat(65)],
        );
    }

    #[test]
    fn bridge_name() {
        assert!(BridgeName::parse("vmbr0").is_ok());
        assert!(BridgeName::parse("vmbr0.100").is_ok());
        all_rejected(BridgeName::parse, &["0vmbr", "vmbr0123456789012"]);
    }

    #[test]
    fn dns_names() {
        assert!(DnsName::parse("web-01").is_ok());
        assert!(DnsName::parse("web-01.example.com").is_ok());
        assert!(DnsName::label("web-01").is_ok());
        assert!(DnsName::label("web.example").is_err());
        all_rejected(
            DnsName::parse,
            &[
                "web_01",
                "-web",
                "web-",
                "web..x",
                "web.",
                ".web",
                &"a".repeat(64),
            ],
        );
        all_rejected(DnsName::label, &["a.b"]);
    }

    #[test]
    fn tags() {
        assert_eq!(
            Tag::parse("CloudPods").map(String::from),
            Ok("cloudpods".into())
        );
        for ok in ["cloudpods-123", "_x", "a+b.c-d", "0"] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        all_rejected(Tag::parse, &["-x", ".x", "+x", "a,b", "tenant=x"]);
        assert_eq!(split_tags("B;a, c  d"), vec!["b", "a", "c", "d"]);
    }

    #[test]
    fn snapshot_names() {
        assert!(SnapshotName::parse("before-upgrade_1").is_ok());
        assert!(SnapshotName::parse("ab").is_ok());
        all_rejected(
            SnapshotName::parse,
            &[
                "a",
                "1snap",
                "current",
                "Pending",
                &"a".repeat(41),
                "snap.1",
            ],
        );
    }

    #[test]
    fn disk_ids() {
        for ok in [
            "scsi0",
            "scsi30",
            "virtio15",
            "sata5",
            "ide3",
            "efidisk0",
            "tpmstate0",
        ] {
            assert!(DiskId::parse(ok).is_ok(), "{ok}");
        }
        all_rejected(
            DiskId::parse,
            &[
                "scsi", "scsi31", "scsi01", "virtio16", "ide4", "efidisk1", "net0", "scsi0 ",
                "SCSI0", "scsi-1",
            ],
        );
        assert_eq!(DiskId::scsi0().as_str(), "scsi0");
    }

    #[test]
    fn size_specs() {
        let s = SizeSpec::parse("+10G").expect("ok");
        assert!(s.is_growth());
        assert_eq!(s.bytes(), 10 << 30);
        assert_eq!(s.to_string(), "+10G");
        assert_eq!(
            SizeSpec::parse("512M").map(|s| s.to_string()),
            Ok("512M".into())
        );
        assert_eq!(
            SizeSpec::absolute_gib(40).map(|s| s.to_string()),
            Ok("40G".into())
        );
        assert_eq!(
            SizeSpec::grow_gib(5).map(|s| s.to_string()),
            Ok("+5G".into())
        );
        assert!(SizeSpec::absolute_gib(0).is_err());
        assert!(SizeSpec::absolute_gib(u64::MAX).is_err());
        all_rejected(
            SizeSpec::parse,
            &[
                "10",
                "+10",
                "1.5G",
                "10g",
                "-10G",
                "+-10G",
                "010G",
                "10GB",
                "G",
                "+G",
                "65T",
                "99999999999999999T",
            ],
        );
    }

    #[test]
    fn config_sizes() {
        assert_eq!(parse_config_size("32G"), Some(32 << 30));
        assert_eq!(parse_config_size("512M"), Some(512 << 20));
        assert_eq!(parse_config_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_config_size("4096"), Some(4096));
        assert_eq!(parse_config_size("x"), None);
        assert_eq!(parse_config_size(""), None);
    }

    #[test]
    fn ci_user() {
        for ok in ["ubuntu", "_svc", "deploy-1", "a"] {
            assert!(CiUser::parse(ok).is_ok(), "{ok}");
        }
        all_rejected(
            CiUser::parse,
            &["Ubuntu", "1user", &"a".repeat(33), "user.name"],
        );
    }

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIr7/JRUm5v8BLKQByHb06ztfJUFND9h3+T10SxY/HLz ops@example";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLUUUsVVF5W95/Xlm+br12UBeLJwEpvayAAL1KPq8CPskO2mGgA1vRx7BFNyOQGWCnXti1fTqspqq+vEgQPK4t0= ";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCiUNFaPrlM1mIDCmxBNzu4O+nN48JKJ9teMzmaLC4+TKhmOeqS6oHqjtHRDMmnKFjPf+vtYvcueRbEo1OntltraZs8596JNa38tUXgJv5Y4Pqo8DOpJfAXSFcOgRabOXPgqaGtT+b4RNDkgts0bZIZZONCeDFKfH13uLW3cx2FEw== x";

    #[test]
    fn ssh_keys_accept_real_keys() {
        assert_eq!(
            SshPublicKey::parse(ED25519).map(String::from),
            Ok(ED25519.into())
        );
        // A trailing space (empty comment) is dropped.
        assert_eq!(
            SshPublicKey::parse(ECDSA).map(String::from),
            Ok(ECDSA.trim_end().into())
        );
        assert!(SshPublicKey::parse(RSA).is_ok());
        // A comment may hold shell metacharacters: keys travel over stdin, never as argv.
        let odd = format!(
            "{} $(id) `x` 'q' ;",
            &ED25519[..ED25519.rfind(' ').unwrap_or(0)]
        );
        assert!(SshPublicKey::parse(&odd).is_ok());
    }

    #[test]
    fn ssh_keys_reject_bad_ones() {
        let body = ED25519.split(' ').nth(1).unwrap_or_default();
        let bad = [
            format!("ssh-dss {body}"),
            format!("ssh-rsa {body}"), // blob says ed25519
            format!("ssh-ed25519 {body}\nssh-ed25519 {body}"),
            format!("ssh-ed25519 {body} x\0y"),
            format!("ssh-ed25519 {body} x\ry"),
            format!("ssh-ed25519 {body} é"),
            format!("ssh-ed25519 {}", &body[1..]),
            format!("ssh-ed25519 {body}="),
            format!("ssh-ed25519  {body}"),
            format!(" ssh-ed25519 {body}"),
            format!("ssh-ed25519 {}!", &body[..body.len() - 1]),
            "ssh-ed25519".to_string(),
            "ssh-ed25519 AAAA".to_string(),
            "ssh-ed25519 $(reboot)".to_string(),
        ];
        for b in bad
            .iter()
            .map(String::as_str)
            .chain(HOSTILE.iter().copied())
        {
            assert!(SshPublicKey::parse(b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn base64_is_strict() {
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode_base64("YWJj"), Some(b"abc".to_vec()));
        assert_eq!(decode_base64("aGk"), None);
        assert_eq!(decode_base64("aG=k"), None);
        assert_eq!(decode_base64("aGl="), None); // stray bits
        assert_eq!(decode_base64("a==="), None);
        assert_eq!(decode_base64("YQ==YQ=="), None);
        assert_eq!(decode_base64("aG-k"), None);
    }

    #[test]
    fn ip_configs() {
        assert_eq!(
            IpConfig::parse("ip=dhcp").map(|c| c.to_string()),
            Ok("ip=dhcp".into())
        );
        assert_eq!(IpConfig::dhcp().to_string(), "ip=dhcp");
        for ok in [
            "ip=10.0.0.5/24,gw=10.0.0.1",
            "ip=10.0.0.5/24",
            "ip6=auto",
            "ip6=dhcp",
            "ip=dhcp,ip6=auto",
            "ip6=2001:db8::5/64,gw6=fe80::1",
            "ip=192.168.1.10/32",
        ] {
            assert_eq!(
                IpConfig::parse(ok).map(|c| c.to_string()),
                Ok(ok.to_string())
            );
        }
        // Reordered input renders canonically.
        assert_eq!(
            IpConfig::parse("gw=10.0.0.1,ip=10.0.0.5/24").map(|c| c.to_string()),
            Ok("ip=10.0.0.5/24,gw=10.0.0.1".into())
        );
        all_rejected(
            IpConfig::parse,
            &[
                "ip=dhcp,gw=10.0.0.1",
                "gw=10.0.0.1",
                "ip=10.0.0.5",
                "ip=10.0.0.5/33",
                "ip=10.0.0.5/0",
                "ip=10.0.0.5/024",
                "ip=010.0.0.5/24",
                "ip=10.0.0.5/24,gw=10.0.1.1",
                "ip=10.0.0.5/24,gw=10.0.0.5",
                "ip=127.0.0.1/8",
                "ip=0.0.0.0/8",
                "ip=224.0.0.1/4",
                "ip=dhcp,ip=dhcp",
                "ip=dhcp,mtu=1500",
                "ip=10.0.0.5/24 ,gw=10.0.0.1",
                "ip6=auto,gw6=fe80::1",
                "ip6=fe80::1%eth0/64",
                "ip6=::/64",
                "ip=dhcp;reboot",
                "ip=10.0.0.5/24,gw=$(id)",
            ],
        );
    }

    #[test]
    fn nameservers() {
        assert_eq!(
            Nameservers::parse("1.1.1.1 9.9.9.9").map(|n| n.to_string()),
            Ok("1.1.1.1 9.9.9.9".into())
        );
        assert_eq!(
            Nameservers::parse("1.1.1.1,2606:4700::1111").map(|n| n.to_string()),
            Ok("1.1.1.1 2606:4700::1111".into())
        );
        all_rejected(
            Nameservers::parse,
            &["dns.example", "1.1.1.1 2.2.2.2 3.3.3.3 4.4.4.4", "0.0.0.0"],
        );
    }

    #[test]
    fn search_domain() {
        assert!(SearchDomain::parse("example.com").is_ok());
        all_rejected(SearchDomain::parse, &["exa_mple.com", "example.com."]);
    }

    #[test]
    fn descriptions() {
        assert!(
            Description::parse("line one\nline two\twith tab; $(not run) 'q' \"d\" é -x").is_ok()
        );
        assert!(Description::parse(&"x".repeat(8192)).is_ok());
        assert!(Description::parse(&"x".repeat(8193)).is_err());
        for bad in ["", "a\0b", "a\rb", "a\x1bb", "a\u{7f}b"] {
            assert!(Description::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cores_and_memory() {
        assert!(Cores::new(1).is_ok());
        assert!(Cores::new(512).is_ok());
        assert!(Cores::new(0).is_err());
        assert!(Cores::new(513).is_err());
        assert!(Cores::new(70_000).is_err());
        assert!(MemoryMib::new(16).is_ok());
        assert!(MemoryMib::new(15).is_err());
        assert!(MemoryMib::new(4_194_305).is_err());
    }

    #[test]
    fn backup_volids() {
        let v = BackupVolid::parse("local:backup/vzdump-qemu-123-2024_05_01-10_00_00.vma.zst")
            .expect("ok");
        assert_eq!(v.storage(), "local");
        assert!(BackupVolid::parse("pbs:backup/vm/123/2024-05-01T10:00:00Z").is_ok());
        all_rejected(
            BackupVolid::parse,
            &[
                "local:vm-123-disk-0",
                "local:backup/",
                "local:backup/../etc/passwd",
                "local:backup//x",
                "local:backup/-rf",
                "x:backup/a",
                "local:backup/a b",
                "local:backup/a;b",
            ],
        );
    }

    #[test]
    fn job_ids_and_dirs() {
        assert!(JobId::parse("clone-pod-1-123").is_ok());
        all_rejected(JobId::parse, &["Clone", "a_b", &"a".repeat(65), "a.b"]);
        assert_eq!(RemoteDir::var_tmp().as_str(), "/var/tmp");
        assert_eq!(
            RemoteDir::parse("/tmp/x/").map(String::from),
            Ok("/tmp/x".into())
        );
        all_rejected(
            RemoteDir::parse,
            &[
                "tmp",
                "/",
                "/tmp/../etc",
                "/tmp//x",
                "/tmp/./x",
                "/tmp/-x",
                "/tmp/a b",
            ],
        );
    }

    #[test]
    fn marker() {
        let m = OwnershipMarker::new(
            PodId::parse("pod-1764399306066").expect("pod"),
            TenantId::parse("acme").expect("tenant"),
        );
        assert_eq!(m.pod_tag().as_str(), "cloudpods-1764399306066");
        assert_eq!(
            m.tags().iter().map(Tag::as_str).collect::<Vec<_>>(),
            vec!["cloudpods", "cloudpods-1764399306066"]
        );
        assert_eq!(
            m.line(),
            "managed-by=cloudpods;pod=pod-1764399306066;tenant=acme"
        );
        let d = m.description(Some("web server")).expect("desc");
        assert_eq!(
            d.as_str(),
            "managed-by=cloudpods;pod=pod-1764399306066;tenant=acme\nweb server"
        );
        assert_eq!(OwnershipMarker::find_in(d.as_str()), Some(m.clone()));
        assert_eq!(
            OwnershipMarker::find_in(&format!("hello\n  {}  \n", m.line())),
            Some(m.clone())
        );
        assert_eq!(
            OwnershipMarker::find_in("managed-by=cloudpods;pod=x;tenant=acme"),
            None
        );
        assert_eq!(
            OwnershipMarker::find_in("managed-by=other;pod=pod-1;tenant=acme"),
            None
        );
        assert_eq!(OwnershipMarker::find_in(""), None);
        assert!(m.tagged_in("cloudpods;cloudpods-1764399306066;other"));
        assert!(!m.tagged_in("cloudpods;cloudpods-1"));
        assert!(!m.tagged_in("cloudpods-1764399306066"));
        assert_eq!(m.notes_template(), m.line());
    }

    #[test]
    fn pod_and_tenant_ids() {
        assert!(PodId::parse("pod-abc-1").is_ok());
        all_rejected(
            PodId::parse,
            &["pod-", "pod--x", "pod-x-", "abc", "pod-ABC", "pod-a_b"],
        );
        assert!(TenantId::parse("acme-42").is_ok());
        all_rejected(TenantId::parse, &["Acme", "acme-", "acme.corp"]);
    }
}
