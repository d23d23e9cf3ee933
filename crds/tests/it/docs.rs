//! The documentation keeps up with the code: every condition reason the
//! operator can set has a troubleshooting entry.

use std::path::Path;

#[test]
fn every_condition_reason_has_a_troubleshooting_entry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let missing: Vec<&str> = hookline_api::conditions::reasons::ALL
        .into_iter()
        .filter(|reason| {
            !text
                .lines()
                .any(|line| line.trim() == format!("### {reason}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no `### <Reason>` entry for {missing:?}"
    );
}
