//! Writes the CRD YAML generated from the Rust types.
//!
//! `crdgen` prints it; `crdgen --write` updates `crds/webhookendpoints.hookline.io.yaml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = hookline_api::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some("--write") => {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/webhookendpoints.hookline.io.yaml"
            );
            match std::fs::write(path, yaml) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("crdgen: cannot write {path}: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; usage: crdgen [--write]");
            ExitCode::from(2)
        }
    }
}
