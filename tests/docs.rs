//! The generated reference documents match their sources: `docs/crd-reference.md` the CRDs in
//! `crds/`, `docs/api-reference.md` the OpenAPI document the API serves. With
//! `CLOUDPODS_BLESS=1` the test writes them instead of comparing.

use std::path::PathBuf;

use cloudpods::docgen::{self, BLESS_COMMAND};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var("CLOUDPODS_BLESS").is_ok_and(|v| v == "1")
}

/// Compares (or with CLOUDPODS_BLESS=1 writes) one generated document.
fn check(file: &str, fresh: &str) {
    let path = repo().join("docs").join(file);
    if bless() {
        std::fs::write(&path, fresh)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == fresh {
        return;
    }
    let first_diff = current
        .lines()
        .zip(fresh.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| {
            format!(
                "first difference at line {}:\n  committed: {a}\n  generated: {b}",
                i + 1
            )
        })
        .unwrap_or_else(|| {
            format!(
                "the committed file has {} lines, a fresh generation {}",
                current.lines().count(),
                fresh.lines().count()
            )
        });
    panic!(
        "docs/{file} is out of date with its source; run `{BLESS_COMMAND}` and commit the result\n{first_diff}"
    );
}

/// The CRDs as committed in `crds/` (the `crds` test keeps them equal to the Rust types).
fn committed_crds() -> Vec<Value> {
    cloudpods::crd::all_crds()
        .into_iter()
        .map(|(file, _)| {
            let path = repo().join("crds").join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let body = text.split_once("---\n").map_or(text.as_str(), |(_, b)| b);
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_saphyr::from_str(body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(crd).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn crd_reference_is_up_to_date() {
    let md = docgen::crd_reference(&committed_crds());
    assert!(md.contains("## CloudPod") && md.contains("## TenantQuota"));
    check("crd-reference.md", &md);
}

#[test]
fn api_reference_is_up_to_date() {
    let routes = cloudpods::api::routes();
    let doc = cloudpods::api::openapi::document(&routes);
    let md = docgen::api_reference(&doc);
    // Every route of the API has its section.
    for r in &routes {
        let heading = format!("### `{} /api/cloud-pods{}`", r.method, r.path);
        assert!(
            md.contains(&heading),
            "{heading} missing from the API reference"
        );
    }
    check("api-reference.md", &md);
}

#[test]
fn generated_documents_say_so_at_the_top() {
    for file in ["crd-reference.md", "api-reference.md"] {
        let text = std::fs::read_to_string(repo().join("docs").join(file)).unwrap_or_default();
        let head: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(
            head.contains("do not edit"),
            "docs/{file} must start with its \"generated — do not edit\" line; run `{BLESS_COMMAND}`"
        );
    }
}

#[test]
fn the_handwritten_docs_link_the_generated_ones() {
    let arch = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap_or_default();
    for link in [
        "crd-reference.md",
        "api-reference.md",
        "runbook.md",
        "argocd.md",
    ] {
        assert!(
            arch.contains(&format!("]({link}")),
            "docs/architecture.md does not link {link}"
        );
    }
    let api = std::fs::read_to_string(repo().join("docs/api.md")).unwrap_or_default();
    assert!(
        api.contains("](api-reference.md)"),
        "docs/api.md does not link api-reference.md"
    );
}
