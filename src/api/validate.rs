//! Request validation shared by the pod routes: names, path ids, idempotency keys, sizes.

use axum::http::HeaderMap;

use super::error::ApiError;
use super::model::OrderRequest;
use crate::store::pods::PodRef;

/// vCPU cores range of the CRD's `spec.resources`.
pub const CPU_RANGE: (i32, i32) = (1, 64);
/// Memory (MiB) range of the CRD's `spec.resources`.
pub const MEMORY_RANGE: (i32, i32) = (512, 262_144);
/// Disk (GiB) range of the CRD's `spec.resources`.
pub const DISK_RANGE: (i32, i32) = (5, 4096);
/// At most this many SSH keys (as the CRD).
pub const MAX_SSH_KEYS: usize = 32;

// ---- validation ---------------------------------------------------------------------------

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 bytes.
pub fn is_dns_label(s: &str) -> bool {
    crate::proxmox::types::is_lower_dns_label(s)
}

/// Refuses `value` unless it is a DNS label, naming `field`.
pub fn dns_label(field: &str, value: &str) -> Result<(), ApiError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
        ))
    }
}

/// Parses `:id`: digits are a VMID, anything else must be a pod id.
pub fn pod_ref(id: &str) -> Result<PodRef, ApiError> {
    if !id.is_empty() && id.len() <= 10 && id.bytes().all(|b| b.is_ascii_digit()) {
        return match id.parse::<i32>() {
            Ok(v) if (100..=999_999_999).contains(&v) => Ok(PodRef::Vmid(v)),
            _ => Err(ApiError::invalid(
                "id",
                "a VMID must be from 100 to 999999999",
            )),
        };
    }
    match id.strip_prefix("pod-") {
        Some(tail) if id.len() <= 63 && is_dns_label(tail) => Ok(PodRef::Id(id.to_string())),
        _ => Err(ApiError::invalid(
            "id",
            "must be a pod id (pod-...) or a VMID",
        )),
    }
}

/// The idempotency key: the Idempotency-Key header, else the body's order id.
pub fn idempotency_key(
    headers: &HeaderMap,
    order_id: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let check = |field: &str, v: &str| -> Result<(), ApiError> {
        if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            Err(ApiError::invalid(
                field,
                "must be 1 to 255 visible ASCII characters",
            ))
        } else {
            Ok(())
        }
    };
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
            check("Idempotency-Key", v)?;
            Some(v.to_string())
        }
    };
    if let Some(o) = order_id {
        check("orderId", o)?;
        if header.as_deref().is_some_and(|h| h != o) {
            return Err(ApiError::invalid(
                "orderId",
                "differs from the Idempotency-Key header; send one or make them equal",
            ));
        }
    }
    Ok(header.or_else(|| order_id.map(str::to_string)))
}

/// Checks an order's names, SSH keys and cloud-init user.
pub fn validate_order(req: &OrderRequest) -> Result<(), ApiError> {
    dns_label("planCode", &req.plan_code)?;
    dns_label("blueprint", &req.blueprint)?;
    dns_label("name", &req.name)?;
    if let Some(o) = &req.options {
        if o.ssh_public_keys.len() > MAX_SSH_KEYS {
            return Err(ApiError::invalid(
                "options.sshPublicKeys",
                format!("at most {MAX_SSH_KEYS} keys"),
            ));
        }
        for (i, key) in o.ssh_public_keys.iter().enumerate() {
            crate::proxmox::types::SshPublicKey::parse(key).map_err(|_| {
                ApiError::invalid(
                    format!("options.sshPublicKeys[{i}]"),
                    "must be one OpenSSH public key line: '<type> <base64> [comment]'",
                )
            })?;
        }
        if let Some(user) = &o.user
            && (user == "root" || crate::proxmox::types::CiUser::parse(user).is_err())
        {
            return Err(ApiError::invalid(
                "options.user",
                "must be a Linux user name (lowercase, at most 32 characters) other than root",
            ));
        }
    }
    Ok(())
}

/// Refuses a present value outside `min..=max`, naming `field`.
pub fn check_range(field: &str, v: Option<i32>, (min, max): (i32, i32)) -> Result<(), ApiError> {
    match v {
        Some(n) if !(min..=max).contains(&n) => Err(ApiError::invalid(
            field,
            format!("must be from {min} to {max}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs() {
        assert_eq!(pod_ref("123").unwrap(), PodRef::Vmid(123));
        assert_eq!(
            pod_ref("pod-1764399306066").unwrap(),
            PodRef::Id("pod-1764399306066".into())
        );
        for bad in [
            "",
            "99",
            "1000000000",
            "99999999999",
            "pod-",
            "pod-A",
            "x",
            "pod-a;b",
            "pod-a/../b",
        ] {
            assert!(pod_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_key_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h, None).unwrap(), None);
        assert_eq!(
            idempotency_key(&h, Some("o-1")).unwrap().as_deref(),
            Some("o-1")
        );
        h.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&h, None).unwrap().as_deref(), Some("k-1"));
        assert_eq!(
            idempotency_key(&h, Some("k-1")).unwrap().as_deref(),
            Some("k-1")
        );
        assert!(idempotency_key(&h, Some("other")).is_err());
        h.insert("idempotency-key", "has space".parse().unwrap());
        assert!(idempotency_key(&h, None).is_err());
    }
}
