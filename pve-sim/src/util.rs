//! Small helpers: time, local-time formatting, hashing, encodings, file locks.

use std::fs::File;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

#[repr(C)]
#[derive(Default)]
struct Tm {
    tm_sec: i32,
    tm_min: i32,
    tm_hour: i32,
    tm_mday: i32,
    tm_mon: i32,
    tm_year: i32,
    tm_wday: i32,
    tm_yday: i32,
    tm_isdst: i32,
    tm_gmtoff: i64,
    tm_zone: usize,
}

unsafe extern "C" {
    fn localtime_r(t: *const i64, tm: *mut Tm) -> *mut Tm;
    fn mktime(tm: *mut Tm) -> i64;
    fn tzset();
    fn getppid() -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Broken-down local time: (year, month 1-12, day, hour, minute, second).
pub fn local_parts(epoch: i64) -> (i32, i32, i32, i32, i32, i32) {
    let mut tm = Tm::default();
    // SAFETY: localtime_r only writes into the provided struct, which has the
    // glibc/musl `struct tm` layout on 64-bit Linux.
    unsafe {
        tzset();
        localtime_r(&epoch, &mut tm);
    }
    (
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    )
}

/// Inverse of [`local_parts`].
pub fn local_to_epoch(y: i32, mo: i32, d: i32, h: i32, mi: i32, s: i32) -> i64 {
    let mut tm = Tm {
        tm_year: y - 1900,
        tm_mon: mo - 1,
        tm_mday: d,
        tm_hour: h,
        tm_min: mi,
        tm_sec: s,
        tm_isdst: -1,
        ..Tm::default()
    };
    // SAFETY: mktime reads/normalises the struct we own.
    unsafe { mktime(&mut tm) }
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn fmt_local(epoch: i64) -> String {
    let (y, mo, d, h, mi, s) = local_parts(epoch);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `YYYY_MM_DD-HH_MM_SS` in local time (vzdump archive names).
pub fn fmt_archive_ts(epoch: i64) -> String {
    let (y, mo, d, h, mi, s) = local_parts(epoch);
    format!("{y:04}_{mo:02}_{d:02}-{h:02}_{mi:02}_{s:02}")
}

/// Parent process id.
pub fn parent_pid() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { getppid() }
}

/// The nearest `sshd` ancestor (the SSH session process), else the parent. Commands may run
/// under wrappers such as `timeout` or `sh -c`; HUPing the session is what drops the
/// connection.
pub fn session_pid() -> i32 {
    let mut pid = parent_pid();
    for _ in 0..16 {
        let Some((comm, ppid)) = proc_stat(pid) else {
            break;
        };
        if comm.starts_with("sshd") {
            return pid;
        }
        if ppid <= 1 {
            break;
        }
        pid = ppid;
    }
    parent_pid()
}

/// `(comm, ppid)` of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let ppid = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((comm, ppid))
}

/// Send a signal to a process.
pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        kill(pid, sig);
    }
}

/// Process start time in clock ticks since boot (field 22 of /proc/self/stat).
pub fn proc_start_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// splitmix64 step: a deterministic pseudo random generator.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a string (stable across runs).
pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A random-looking MAC with the Proxmox OUI `BC:24:11`.
pub fn random_mac(seed: u64) -> String {
    let r = splitmix64(seed ^ now_ms() ^ u64::from(std::process::id()) << 20);
    format!(
        "BC:24:11:{:02X}:{:02X}:{:02X}",
        (r >> 16) & 0xff,
        (r >> 8) & 0xff,
        r & 0xff
    )
}

/// A random-looking UUID.
pub fn random_uuid(seed: u64) -> String {
    let a = splitmix64(seed ^ now_ms());
    let b = splitmix64(a ^ u64::from(std::process::id()));
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// SHA-1 hex digest (used for the config `digest`).
pub fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bitlen = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bitlen.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in w.iter_mut().take(16).enumerate() {
            *word = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6u32),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// Percent-encode every byte outside `A-Za-z0-9-_.~` (qm's sshkeys encoding).
pub fn uri_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Plain percent-decoding (no `+` handling).
pub fn uri_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// PVE `encode_text`: escape control chars, `%`, `:` and non-ASCII bytes.
pub fn encode_text(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b < 0x20 || b == 0x7f || b == b'%' || b == b':' || b >= 0x80 {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Perl `JSON->pretty->canonical` style: 3-space indent, `" : "` separator.
pub fn perl_pretty(v: &Value) -> String {
    let mut out = String::new();
    perl_pretty_into(v, 0, &mut out);
    out.push('\n');
    out
}

fn perl_pretty_into(v: &Value, level: usize, out: &mut String) {
    let pad = |l: usize| "   ".repeat(l);
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                out.push_str(&pad(level + 1));
                perl_pretty_into(x, level + 1, out);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(level));
            out.push(']');
        }
        Value::Object(m) if !m.is_empty() => {
            out.push_str("{\n");
            let n = m.len();
            for (i, (k, x)) in m.iter().enumerate() {
                out.push_str(&pad(level + 1));
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(" : ");
                perl_pretty_into(x, level + 1, out);
                if i + 1 < n {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(level));
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Parse a config size like `32G`, `512M`, `1073741824` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1u64 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1u64 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1u64 << 40),
        _ => (s, 1),
    };
    let f: f64 = num.parse().ok()?;
    if f < 0.0 {
        return None;
    }
    Some((f * mult as f64) as u64)
}

/// PVE `format_size`: largest binary unit that divides the size exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, m) in [
        ('T', 1u64 << 40),
        ('G', 1 << 30),
        ('M', 1 << 20),
        ('K', 1 << 10),
    ] {
        if bytes >= m && bytes.is_multiple_of(m) {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

/// Lock kinds for [`flock_timeout`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// flock(LOCK_SH)
    Shared,
    /// flock(LOCK_EX)
    Exclusive,
}

/// Try to flock `file` within `timeout`. Returns Ok(true) if contention was seen.
pub fn flock_timeout(file: &File, mode: LockMode, timeout: Duration) -> Result<bool, ()> {
    let start = Instant::now();
    let mut contended = false;
    loop {
        let r = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match r {
            Ok(()) => return Ok(contended),
            Err(std::fs::TryLockError::WouldBlock) => {
                contended = true;
                if start.elapsed() >= timeout {
                    return Err(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::Error(_)) => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(format_size(40 << 30), "40G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(10), "10");
    }

    #[test]
    fn escapes() {
        assert_eq!(uri_escape("a b/+@"), "a%20b%2F%2B%40");
        assert_eq!(uri_unescape("a%20b%0A"), "a b\n");
        assert_eq!(encode_text("a:b\n%é"), "a%3Ab%0A%25%C3%A9");
    }
}
