//! Finding installed server binaries, and building the workspace's own
//! binaries once, with the features the whole workspace agrees on.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::error::{Result, TestServerError, io_err};

/// How much of cargo's output a failed build quotes.
const CARGO_OUTPUT_LINES: usize = 60;

/// Whether `path` is a regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directories on `PATH`, in order.
pub(crate) fn path_dirs() -> Vec<PathBuf> {
    env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default()
}

/// The first executable `name` in `dirs`.
pub(crate) fn find_in(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Finds `name` on `PATH`, then in `extra_dirs`; the error names what was
/// searched (`searched`) and how to install it (`hint`).
pub(crate) fn find_binary(
    name: &str,
    extra_dirs: &[&str],
    searched: &str,
    hint: &str,
) -> Result<PathBuf> {
    let mut dirs = path_dirs();
    dirs.extend(extra_dirs.iter().map(PathBuf::from));
    find_in(name, &dirs).ok_or_else(|| missing(name, searched, hint))
}

pub(crate) fn missing(name: &str, searched: &str, hint: &str) -> TestServerError {
    TestServerError::BinaryMissing {
        binary: name.to_owned(),
        searched: searched.to_owned(),
        hint: hint.to_owned(),
    }
}

/// `/usr/lib/postgresql/*/bin`, highest version first (Debian keeps the server
/// binaries there, off `PATH`).
pub(crate) fn debian_postgres_bin_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// The directory holding `initdb`: the first on `PATH`, else the newest Debian one.
pub(crate) fn postgres_bin_dir() -> Result<PathBuf> {
    let mut dirs = path_dirs();
    dirs.extend(debian_postgres_bin_dirs());
    find_in("initdb", &dirs)
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .ok_or_else(|| {
            missing(
                "initdb",
                "PATH or /usr/lib/postgresql/*/bin",
                "apt-get install -y postgresql",
            )
        })
}

/// The path of the workspace binary `name` (e.g. `hookline-receiver`).
///
/// With `HOOKLINE_BIN_DIR` set, the binary of that directory, unbuilt.
/// Otherwise the first call in a process runs `cargo build --workspace --bins` into the
/// target dir and profile of the running test or example. Building the whole
/// workspace resolves features exactly as `cargo test --workspace` and the
/// documented `cargo run --example …` do, so all of them share one build of
/// every dependency; building one package (`-p`) would resolve a feature set
/// of its own and compile the heavy dependencies again.
///
/// # Panics
///
/// When the build fails, with cargo's output, so the calling test fails.
pub fn workspace_bin(name: &str) -> PathBuf {
    match try_workspace_bin(name) {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// Names a directory of already-built binaries to use instead of building
/// the workspace's: a benchmark can then measure one exact build (a copy
/// that no later `cargo build` into the same target dir can replace).
pub const BIN_DIR_VARIABLE: &str = "HOOKLINE_BIN_DIR";

/// [`workspace_bin`] returning the error instead of panicking.
pub fn try_workspace_bin(name: &str) -> Result<PathBuf> {
    /// The directory the binaries landed in, or cargo's failure. Built at most
    /// once per process; concurrent callers wait for that one build.
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| match env::var_os(BIN_DIR_VARIABLE) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => build_workspace_bins().map_err(|e| e.to_string()),
    });
    let profile_dir = built.as_ref().map_err(|message| {
        TestServerError::Environment(format!(
            "building the workspace's binaries failed earlier in this process: {message}"
        ))
    })?;
    let path = profile_dir.join(name);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(TestServerError::Environment(format!(
            "the workspace has no binary `{name}` ({} is missing after the build)",
            path.display()
        )))
    }
}

/// Where cargo puts binaries for the running test: `target[/TRIPLE]/PROFILE`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TargetLayout {
    /// The `--target-dir` (the directory holding `CACHEDIR.TAG`).
    pub target_dir: PathBuf,
    /// `Some(triple)` when built with `--target`.
    pub triple: Option<String>,
    /// `debug`, `release` or a custom profile's directory name.
    pub profile: String,
    /// The directory the binaries land in.
    pub profile_dir: PathBuf,
}

/// Derives the layout from the test executable's path (`.../PROFILE/deps/test-HASH`).
pub(crate) fn target_layout(exe: &Path) -> Option<TargetLayout> {
    let mut profile_dir = exe.parent()?;
    if matches!(
        profile_dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        profile_dir = profile_dir.parent()?;
    }
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    let parent = profile_dir.parent()?;
    let (target_dir, triple) = if parent.join("CACHEDIR.TAG").exists() {
        (parent.to_path_buf(), None)
    } else {
        let grandparent = parent.parent()?;
        if !grandparent.join("CACHEDIR.TAG").exists() {
            return None;
        }
        let triple = parent.file_name()?.to_str()?.to_owned();
        (grandparent.to_path_buf(), Some(triple))
    };
    Some(TargetLayout {
        target_dir,
        triple,
        profile,
        profile_dir: profile_dir.to_path_buf(),
    })
}

/// `cargo build --workspace --bins` for the running executable's target dir,
/// profile and target; returns the directory the binaries are in.
fn build_workspace_bins() -> Result<PathBuf> {
    let exe = env::current_exe().map_err(io_err("finding the test executable"))?;
    let layout = target_layout(&exe).ok_or_else(|| {
        TestServerError::Environment(format!(
            "cannot find cargo's target dir from the test executable {}",
            exe.display()
        ))
    })?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        // Any directory of the workspace works; this crate's is known at compile time.
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--workspace", "--bins", "--target-dir"])
        .arg(&layout.target_dir);
    match layout.profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(triple) = &layout.triple {
        command.args(["--target", triple]);
    }
    // Some build scripts (ring's) rerun when one of these changes, so passing
    // on the running test's values would make this build and the next one
    // from a shell recompile each other's dependencies, over and over.
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_one_package) {
            command.env_remove(name);
        }
    }
    let described = format!("{} build --workspace --bins", cargo.to_string_lossy());
    let output = command
        .output()
        .map_err(io_err(format!("running `{described}`")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(TestServerError::CommandFailed {
            command: described,
            status: output.status.to_string(),
            output: lines[lines.len().saturating_sub(CARGO_OUTPUT_LINES)..].join("\n"),
        });
    }
    Ok(layout.profile_dir)
}

/// Whether `name` is one of the variables cargo gives one package's test,
/// example or binary when it runs it (as opposed to the user's own cargo
/// settings, such as `CARGO_TARGET_DIR` or `CARGO_HOME`, which are kept).
fn set_by_cargo_for_one_package(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || matches!(
            name,
            "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR" | "OUT_DIR"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_test_binary() {
        let root = tempfile::tempdir().expect("temp dir");
        let target = root.path().join("target");
        fs::create_dir_all(target.join("debug/deps")).expect("mkdir");
        fs::write(target.join("CACHEDIR.TAG"), "").expect("tag");
        let layout = target_layout(&target.join("debug/deps/test-0123")).expect("layout");
        assert_eq!(
            layout,
            TargetLayout {
                target_dir: target.clone(),
                triple: None,
                profile: "debug".into(),
                profile_dir: target.join("debug"),
            }
        );

        let cross = target.join("x86_64-unknown-linux-gnu/release/deps/test-0123");
        let layout = target_layout(&cross).expect("cross layout");
        assert_eq!(layout.triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(layout.profile, "release");
        assert_eq!(layout.target_dir, target);
    }

    #[test]
    fn the_inner_build_forgets_the_running_package_but_keeps_cargo_settings() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_BIN_EXE_hookline-receiver",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_one_package(name), "{name}");
        }
        for name in ["CARGO_TARGET_DIR", "CARGO_HOME", "CARGO", "PATH"] {
            assert!(!set_by_cargo_for_one_package(name), "{name}");
        }
    }

    #[test]
    fn missing_binary_message_is_one_line_with_a_hint() {
        let err = find_binary(
            "surely-not-installed-hookline",
            &["/nonexistent"],
            "PATH or /usr/sbin",
            "apt-get install -y nats-server",
        )
        .expect_err("must be missing");
        let text = err.to_string();
        assert_eq!(
            text,
            "surely-not-installed-hookline not found on PATH or /usr/sbin: \
             install it with `apt-get install -y nats-server`"
        );
        assert!(!text.contains('\n'));
    }
}
