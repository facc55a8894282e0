//! Getopt::Long-like option parsing as done by PVE's `JSONSchema::get_options`.

use std::collections::BTreeMap;

use crate::err::CmdError;

/// Option value type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum T {
    /// Boolean with optional value.
    Bool,
    /// String with mandatory value.
    Str,
    /// Integer with mandatory value.
    Int,
}

/// A command's argument schema.
pub struct Spec<'a> {
    /// Positional parameter names (all mandatory unless listed in `optional`).
    pub pos: &'a [&'a str],
    /// How many trailing positionals are optional.
    pub optional: usize,
    /// Named options.
    pub opts: &'a [(&'a str, T)],
}

impl<'a> Spec<'a> {
    /// A schema whose positionals are all mandatory.
    pub const fn new(pos: &'a [&'a str], opts: &'a [(&'a str, T)]) -> Self {
        Spec {
            pos,
            optional: 0,
            opts,
        }
    }
}

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Positionals by name.
    pub pos: BTreeMap<String, String>,
    /// Options by full name; booleans normalised to `1`/`0`.
    pub opts: BTreeMap<String, String>,
}

impl Parsed {
    /// Option value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.opts.get(k).map(String::as_str)
    }

    /// Boolean option (absent = default).
    pub fn flag(&self, k: &str, default: bool) -> bool {
        self.get(k).map(|v| v == "1").unwrap_or(default)
    }

    /// Positional value (empty if absent).
    pub fn p(&self, k: &str) -> &str {
        self.pos.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parse a boolean word.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Some(true),
        "0" | "no" | "off" | "false" => Some(false),
        _ => None,
    }
}

fn parse_err(pre: &str) -> CmdError {
    let mut e = CmdError::bad_request("unable to parse option");
    if !pre.is_empty() {
        e.msg = format!("{pre}\n{}", e.msg);
    }
    e
}

fn looks_like_option(a: &str) -> bool {
    (a.starts_with("--") && a.len() > 2)
        || (a.starts_with('-') && a.len() > 1 && !a[1..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Parse argv according to `spec`.
pub fn parse(spec: &Spec, args: &[String]) -> Result<Parsed, CmdError> {
    let mut out = Parsed::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            rest.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !looks_like_option(a) {
            rest.push(a.clone());
            i += 1;
            continue;
        }
        let body = a.trim_start_matches('-');
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let full =
            resolve(spec, name).ok_or_else(|| parse_err(&format!("Unknown option: {name}")))?;
        let ty = spec
            .opts
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, t)| *t)
            .unwrap_or(T::Str);
        i += 1;
        let value = match ty {
            T::Bool => {
                let v = match inline {
                    Some(v) => v,
                    None if i < args.len() && !args[i].starts_with('-') => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => "1".into(),
                };
                match parse_bool(&v) {
                    Some(b) => if b { "1" } else { "0" }.to_string(),
                    None if v.is_empty() => "1".into(),
                    None => return Err(CmdError::bad_request("unable to parse boolean option")),
                }
            }
            _ => {
                let v = match inline {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => return Err(parse_err(&format!("Option {full} requires an argument"))),
                };
                if v.is_empty() {
                    return Err(parse_err(""));
                }
                match ty {
                    T::Int if v.parse::<i64>().is_err() => {
                        return Err(CmdError::param(
                            full,
                            format!("type check ('integer') failed - got '{v}'"),
                        ));
                    }
                    _ => {}
                }
                v
            }
        };
        out.opts.insert(full.to_string(), value);
    }
    if rest.len() > spec.pos.len() {
        return Err(CmdError::bad_request("too many arguments"));
    }
    if rest.len() + spec.optional < spec.pos.len() {
        return Err(CmdError::bad_request("not enough arguments"));
    }
    for (n, v) in spec.pos.iter().zip(rest) {
        out.pos.insert((*n).to_string(), v);
    }
    Ok(out)
}

fn resolve<'a>(spec: &Spec<'a>, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    if let Some((n, _)) = spec.opts.iter().find(|(n, _)| *n == name) {
        return Some(n);
    }
    let m: Vec<&str> = spec
        .opts
        .iter()
        .filter(|(n, _)| n.starts_with(name))
        .map(|(n, _)| *n)
        .collect();
    if m.len() == 1 { Some(m[0]) } else { None }
}

/// Validate a VMID (`pve-vmid` format).
pub fn vmid(name: &str, v: &str) -> Result<u32, CmdError> {
    let ok = v.len() >= 3
        && v.len() <= 9
        && !v.starts_with('0')
        && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u32>() {
        Ok(n) if ok => Ok(n),
        _ if v.parse::<i64>().is_err() => Err(CmdError::param(
            name,
            format!("type check ('integer') failed - got '{v}'"),
        )),
        _ => Err(CmdError::param(
            name,
            "invalid format - value does not look like a valid VM ID",
        )),
    }
}

/// DNS name check (PVE `dns-name`).
pub fn is_dns_name(v: &str) -> bool {
    !v.is_empty()
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Split a PVE list (`,`, `;` or whitespace).
pub fn split_list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Normalise tags: validate, lowercase, dedupe, sort, `;`-join.
pub fn normalize_tags(v: &str) -> Result<String, CmdError> {
    let mut tags = Vec::new();
    for t in split_list(v) {
        let t = t.to_lowercase();
        let ok = t
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-+.".contains(&b));
        if !ok {
            return Err(CmdError::param(
                "tags",
                "invalid format - invalid characters in tag",
            ));
        }
        tags.push(t);
    }
    tags.sort();
    tags.dedup();
    Ok(tags.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const SPEC: Spec = Spec {
        pos: &["vmid", "newid"],
        optional: 0,
        opts: &[("full", T::Bool), ("name", T::Str), ("cores", T::Int)],
    };

    #[test]
    fn basics() {
        let p = parse(
            &SPEC,
            &s(&["9000", "123", "--full", "--name=a-b", "-cores", "2"]),
        )
        .unwrap();
        assert_eq!(p.p("vmid"), "9000");
        assert_eq!(p.get("full"), Some("1"));
        assert_eq!(p.get("name"), Some("a-b"));
        assert_eq!(p.get("cores"), Some("2"));
        let e = parse(&SPEC, &s(&["--full", "9000", "123"])).unwrap_err();
        assert!(e.msg.contains("unable to parse boolean option"));
        let e = parse(&SPEC, &s(&["9000"])).unwrap_err();
        assert!(e.msg.contains("not enough arguments"));
        let e = parse(&SPEC, &s(&["9000", "1", "2"])).unwrap_err();
        assert!(e.msg.contains("too many arguments"));
        let e = parse(&SPEC, &s(&["9000", "1", "--bogus", "2"])).unwrap_err();
        assert!(e.msg.contains("Unknown option: bogus"));
        let p = parse(&SPEC, &s(&["9000", "1", "--na", "-x"])).unwrap();
        assert_eq!(p.get("name"), Some("-x"));
    }

    #[test]
    fn tags() {
        assert_eq!(normalize_tags("B;a,a c").unwrap(), "a;b;c");
        assert!(normalize_tags("a$b").is_err());
    }
}
