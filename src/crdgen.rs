//! `cloudpods crdgen`: write (or check) `crds/*.yaml` from the Rust types.

use std::path::Path;

use anyhow::Context;

use crate::crd::{all_crds, render_crd_yaml};

/// Writes every CRD into `out_dir`, or with `check` reports the files that differ. Returns one line per file.
pub fn run(out_dir: &Path, check: bool) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut stale = Vec::new();
    if !check {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
    }
    for (file, crd) in all_crds() {
        let yaml = render_crd_yaml(&crd).with_context(|| format!("cannot render {file}"))?;
        let path = out_dir.join(file);
        let current = std::fs::read_to_string(&path).ok();
        let same = current.as_deref() == Some(yaml.as_str());
        if check {
            if !same {
                stale.push(path.display().to_string());
            }
            lines.push(format!(
                "{}: {}",
                path.display(),
                if same { "up to date" } else { "DIFFERS" }
            ));
        } else if same {
            lines.push(format!("{}: unchanged", path.display()));
        } else {
            std::fs::write(&path, yaml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            lines.push(format!("{}: written", path.display()));
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "{} differ from the Rust types; run `cloudpods crdgen` and commit the result",
            stale.join(", ")
        );
    }
    Ok(lines)
}
