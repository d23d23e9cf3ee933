//! Writes the CRD YAML generated from the Rust types.
//!
//! `crdgen` prints the `WebhookEndpoint` CRD (`crdgen pool`: the
//! `WebhookPool` CRD); `crdgen --write` updates the committed copies: each
//! CRD file users `kubectl apply`, the ones the Helm chart installs, and the
//! resource reference in `docs/reference.md`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let (yaml, pool_yaml) = match (hookline_api::crd_yaml(), hookline_api::pool_crd_yaml()) {
        (Ok(yaml), Ok(pool_yaml)) => (yaml, pool_yaml),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("crdgen: cannot serialise the CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some("pool") => {
            print!("{pool_yaml}");
            ExitCode::SUCCESS
        }
        Some("--write") => {
            let reference = hookline_api::reference::markdown(&hookline_api::crd());
            let files = hookline_api::CRD_FILES
                .iter()
                .map(|path| (path, &yaml))
                .chain(
                    hookline_api::POOL_CRD_FILES
                        .iter()
                        .map(|path| (path, &pool_yaml)),
                )
                .chain([(&hookline_api::reference::REFERENCE_FILE, &reference)]);
            for (path, content) in files {
                let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
                if let Err(err) = std::fs::write(&path, content) {
                    eprintln!("crdgen: cannot write {path}: {err}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; usage: crdgen [pool | --write]");
            ExitCode::from(2)
        }
    }
}
