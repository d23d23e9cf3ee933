//! Reading `--endpoint-dir`, the same way in the pool receiver and the pool
//! consumer: which manifests are endpoints to serve, and which are skipped and
//! why. A mounted ConfigMap holds each key as a symlink into `..data`, a
//! directory the kubelet swaps atomically; the dotfiles are its machinery and
//! are never read as manifests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{Error, Result, ValidatedEndpoint};

/// A binary's own refusal of an endpoint it cannot serve from a pool (the
/// reason, said once as the file's skip reason), beyond what validation checks.
pub type Check = fn(&ValidatedEndpoint) -> Result<(), String>;

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct Found {
    /// Endpoint key (`namespace/name`) → the file and its endpoint.
    pub endpoints: BTreeMap<String, (PathBuf, ValidatedEndpoint)>,
    /// Endpoint key → [`manifest_hash`] of its file's text: what a pool
    /// reports it serves, and how it tells a manifest that did not change.
    pub hashes: BTreeMap<String, String>,
    /// File name → why it is not served.
    pub skipped: BTreeMap<String, String>,
    /// Whether any file was added, removed or changed since the last scan
    /// (always on the first): when not, what was built from the last one
    /// still holds.
    pub changed: bool,
}

/// What tells a file changed without reading it: a ConfigMap or Secret
/// update swaps the file the name points to (a new inode); an edit in place
/// changes its time or length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file `path` names (through symlinks); `None` when
    /// it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

/// The first 16 hex digits of the SHA-256 of a manifest file's text.
pub fn manifest_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What one file made: its text's [`manifest_hash`] and its endpoint, or why not.
type Made = (String, Result<ValidatedEndpoint, String>);

/// The manifests of one directory, read again on every [`Directory::scan`].
#[derive(Debug)]
pub struct Directory {
    dir: PathBuf,
    cluster_name: Option<String>,
    /// The binary's own refusals, after validation.
    check: Option<Check>,
    /// The one namespace served: from the first manifest that validates.
    namespace: Option<String>,
    /// Each file's stamp and what it made, so an unchanged file is neither
    /// read nor parsed again (nor its warnings repeated every poll).
    files: HashMap<PathBuf, (Option<FileStamp>, Made)>,
    /// Set by a read that parsed a file anew, cleared by each scan.
    changed: bool,
    /// The reason last logged for each skipped file: each is said once.
    reported: HashMap<PathBuf, String>,
}

impl Directory {
    /// Reads `dir`; each endpoint's stream and subjects are moved into
    /// `cluster_name` as `--cluster-name` does.
    pub fn new(dir: PathBuf, cluster_name: Option<String>) -> Directory {
        Directory {
            dir,
            cluster_name,
            check: None,
            namespace: None,
            files: HashMap::new(),
            changed: true,
            reported: HashMap::new(),
        }
    }

    /// Also skips the endpoints `check` refuses, with its reason.
    pub fn with_check(mut self, check: Check) -> Directory {
        self.check = Some(check);
        self
    }

    /// The directory read.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The namespace served, once a manifest said it.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The first read, at start: manifests of different namespaces are a
    /// configuration error (the pool is one namespace's), not a warning.
    pub fn scan_first(&mut self) -> Result<Found> {
        let paths = self.list()?;
        let mut namespaces: BTreeMap<String, String> = BTreeMap::new();
        for path in &paths {
            if let Some((_, Ok(endpoint))) = self.read(path) {
                namespaces
                    .entry(endpoint.namespace.clone())
                    .or_insert_with(|| file_name(path));
            }
        }
        if namespaces.len() > 1 {
            let list = namespaces
                .iter()
                .map(|(namespace, file)| format!("{file} is in {namespace}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::EndpointDir {
                dir: self.dir.clone(),
                message: format!(
                    "manifests of different namespaces ({list}); a pool serves one namespace"
                ),
            });
        }
        self.scan()
    }

    /// Reads the directory: every `*.yaml` that validates, in this pool's
    /// namespace and naming an endpoint no earlier file (by name) names, is an
    /// endpoint; the rest are skipped, each logged once with its reason.
    pub fn scan(&mut self) -> Result<Found> {
        let paths = self.list()?;
        self.scan_listed(paths)
    }

    /// [`Directory::scan`] when a file was added, removed or touched since
    /// the last scan; otherwise `None`, and nothing is read or cloned. A pool
    /// polls every second, and a full scan of a thousand unchanged manifests
    /// cloned a thousand endpoints each time (in a pool receiver under load,
    /// a tenth of its CPU).
    pub fn scan_if_touched(&mut self) -> Result<Option<Found>> {
        let paths = self.list()?;
        let untouched = !self.changed
            && paths.len() == self.files.len()
            && paths
                .iter()
                .all(|path| self.unchanged_since_read(path, FileStamp::of(path)));
        if untouched {
            return Ok(None);
        }
        self.scan_listed(paths).map(Some)
    }

    fn scan_listed(&mut self, paths: Vec<PathBuf>) -> Result<Found> {
        let mut found = Found::default();
        for path in &paths {
            let Some((hash, made)) = self.read(path) else {
                continue;
            };
            let skipped = match made {
                Err(reason) => Some(reason),
                Ok(endpoint) => {
                    let namespace = self
                        .namespace
                        .get_or_insert_with(|| endpoint.namespace.clone());
                    let key = endpoint.key();
                    if endpoint.namespace != *namespace {
                        Some(format!(
                            "{key} is in namespace {}, this pool serves {namespace}",
                            endpoint.namespace
                        ))
                    } else if let Some((first, _)) = found.endpoints.get(&key) {
                        Some(format!("{key} is already served from {}", file_name(first)))
                    } else {
                        found.hashes.insert(key.clone(), hash);
                        found.endpoints.insert(key, (path.clone(), endpoint));
                        None
                    }
                }
            };
            match skipped {
                Some(reason) => {
                    if self.reported.get(path) != Some(&reason) {
                        warn!(file = %path.display(), %reason, "manifest skipped");
                        self.reported.insert(path.clone(), reason.clone());
                    }
                    found.skipped.insert(file_name(path), reason);
                }
                None => {
                    if self.reported.remove(path).is_some() {
                        info!(file = %path.display(), "manifest accepted now");
                    }
                }
            }
        }
        let listed: HashSet<&PathBuf> = paths.iter().collect();
        let known = self.files.len();
        self.files.retain(|path, _| listed.contains(path));
        self.reported.retain(|path, _| listed.contains(path));
        found.changed = std::mem::take(&mut self.changed) || self.files.len() != known;
        Ok(found)
    }

    /// The manifest files, sorted by name: `*.yaml`, no dotfiles, regular
    /// files (through symlinks).
    fn list(&self) -> Result<Vec<PathBuf>> {
        let cannot = |err: std::io::Error| Error::EndpointDir {
            dir: self.dir.clone(),
            message: format!("cannot read it: {err}"),
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(cannot)? {
            let path = entry.map_err(cannot)?.path();
            let name = file_name(&path);
            if name.starts_with('.') || !name.ends_with(".yaml") || !path.is_file() {
                continue;
            }
            paths.push(path);
        }
        paths.sort();
        Ok(paths)
    }

    /// Whether `path`, now of `stamp`, is the file last read there (a file
    /// whose stamp cannot be taken never is).
    fn unchanged_since_read(&self, path: &Path, stamp: Option<FileStamp>) -> bool {
        stamp.is_some()
            && self
                .files
                .get(path)
                .is_some_and(|(known, _)| *known == stamp)
    }

    /// The file's hash and what it made: read again only when its stamp
    /// changed, parsed again only when its text did; `None` when the file is
    /// gone (removed since the listing).
    fn read(&mut self, path: &Path) -> Option<Made> {
        let stamp = FileStamp::of(path);
        if self.unchanged_since_read(path, stamp)
            && let Some((_, made)) = self.files.get(path)
        {
            return Some(made.clone());
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                // Keep what it made before: a passing read error must not stop a loop.
                return Some(
                    self.files
                        .get(path)
                        .map(|(_, made)| made.clone())
                        .unwrap_or_else(|| {
                            (String::new(), Err(format!("cannot read the file: {err}")))
                        }),
                );
            }
        };
        let hash = manifest_hash(&text);
        if let Some((known, made)) = self.files.get_mut(path)
            && made.0 == hash
        {
            *known = stamp;
            return Some(made.clone());
        }
        let made = (
            hash,
            parse(path, &text, self.cluster_name.as_deref(), self.check),
        );
        self.files.insert(path.to_owned(), (stamp, made.clone()));
        self.changed = true;
        Some(made)
    }
}

/// Parses and validates one manifest as `--endpoint` would (unknown fields
/// warned of with their path), then the binary's own `check`.
fn parse(
    path: &Path,
    text: &str,
    cluster_name: Option<&str>,
    check: Option<Check>,
) -> Result<ValidatedEndpoint, String> {
    let (resource, unknown) =
        crate::manifest::parse_manifest_checked(text).map_err(|err| err.to_string())?;
    for field in unknown {
        warn!(file = %path.display(), %field, "unknown field in the manifest, ignored (misspelt?)");
    }
    let endpoint = crate::manifest::validate(&resource)
        .map_err(|err| err.to_string())?
        .in_cluster(cluster_name);
    if let Some(check) = check {
        check(&endpoint)?;
    }
    Ok(endpoint)
}

/// A path's last part, as skip reasons name files.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(namespace: &str, name: &str) -> String {
        format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[test]
    fn every_yaml_file_is_an_endpoint_and_dotfiles_are_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        write(dir.path(), "b.yaml", &manifest("shop", "b"));
        write(dir.path(), ".hidden.yaml", &manifest("shop", "c"));
        write(dir.path(), "notes.txt", "not a manifest");
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let found = directory.scan_first().expect("scans");
        assert_eq!(
            found.endpoints.keys().collect::<Vec<_>>(),
            ["shop/a", "shop/b"]
        );
        assert!(found.skipped.is_empty());
    }

    #[test]
    fn a_configmap_mount_is_read_through_its_symlinks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&data).expect("data dir");
        write(&data, "a.yaml", &manifest("shop", "a"));
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/a.yaml", dir.path().join("a.yaml")).expect("link");
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let found = directory.scan().expect("scans");
        assert_eq!(found.endpoints.keys().collect::<Vec<_>>(), ["shop/a"]);
    }

    #[test]
    fn an_invalid_manifest_is_skipped_naming_the_field_and_the_others_stay() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        write(
            dir.path(),
            "bad.yaml",
            &manifest("shop", "bad").replace("stripe", "carrier-pigeon"),
        );
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let found = directory.scan_first().expect("scans");
        assert_eq!(found.endpoints.keys().collect::<Vec<_>>(), ["shop/a"]);
        let reason = &found.skipped["bad.yaml"];
        assert!(reason.contains("spec.provider"), "{reason}");
    }

    #[test]
    fn manifests_of_two_namespaces_are_refused_at_start_and_skipped_later() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        write(dir.path(), "b.yaml", &manifest("billing", "b"));
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let err = directory.scan_first().expect_err("two namespaces");
        assert!(err.to_string().contains("different namespaces"), "{err}");
        assert!(err.to_string().contains("b.yaml is in billing"), "{err}");

        std::fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        let mut directory = Directory::new(dir.path().to_owned(), None);
        directory.scan_first().expect("one namespace");
        write(dir.path(), "b.yaml", &manifest("billing", "b"));
        let found = directory.scan().expect("scans");
        assert_eq!(found.endpoints.keys().collect::<Vec<_>>(), ["shop/a"]);
        assert!(found.skipped["b.yaml"].contains("this pool serves shop"));
    }

    #[test]
    fn two_files_for_one_endpoint_serve_it_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        write(dir.path(), "copy.yaml", &manifest("shop", "a"));
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let found = directory.scan_first().expect("scans");
        assert_eq!(found.endpoints.len(), 1);
        assert!(found.skipped["copy.yaml"].contains("already served from a.yaml"));
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let first = directory.scan().expect("scans");
        write(
            dir.path(),
            "a.yaml",
            &format!("{}  consumer:\n    batchSize: 7\n", manifest("shop", "a")),
        );
        let second = directory.scan().expect("scans");
        assert_ne!(first.endpoints["shop/a"].1, second.endpoints["shop/a"].1);
        assert_eq!(second.endpoints["shop/a"].1.consumer.batch_size, 7);
        assert!(first.changed && second.changed);
    }

    #[test]
    fn a_scan_says_whether_anything_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        let mut directory = Directory::new(dir.path().to_owned(), None);
        assert!(directory.scan().expect("scans").changed, "the first scan");
        assert!(!directory.scan().expect("scans").changed, "nothing touched");
        // Rewritten with the same text: read again, but nothing changed.
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        assert!(!directory.scan().expect("scans").changed, "same text");
        write(dir.path(), "b.yaml", &manifest("shop", "b"));
        assert!(directory.scan().expect("scans").changed, "a file added");
        std::fs::remove_file(dir.path().join("a.yaml")).expect("removes");
        let after = directory.scan().expect("scans");
        assert!(after.changed, "a file removed");
        assert_eq!(after.endpoints.len(), 1);
    }

    #[test]
    fn an_untouched_directory_is_not_scanned_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", &manifest("shop", "a"));
        let mut directory = Directory::new(dir.path().to_owned(), None);
        let first = directory.scan_if_touched().expect("scans");
        assert!(first.is_some_and(|found| found.changed), "the first scan");
        assert!(directory.scan_if_touched().expect("scans").is_none());
        // The same text swapped in as a new file, as the kubelet does.
        write(dir.path(), ".a.yaml.new", &manifest("shop", "a"));
        std::fs::rename(dir.path().join(".a.yaml.new"), dir.path().join("a.yaml"))
            .expect("renames");
        let touched = directory.scan_if_touched().expect("scans");
        assert!(touched.is_some_and(|found| !found.changed), "same text");
        assert!(directory.scan_if_touched().expect("scans").is_none());
        write(dir.path(), "b.yaml", &manifest("shop", "b"));
        let added = directory.scan_if_touched().expect("scans");
        assert_eq!(added.map(|found| found.endpoints.len()), Some(2));
        std::fs::remove_file(dir.path().join("a.yaml")).expect("removes");
        let removed = directory.scan_if_touched().expect("scans");
        assert_eq!(removed.map(|found| found.endpoints.len()), Some(1));
        write(dir.path(), "c.yaml", "spec: [");
        let skipped = directory.scan_if_touched().expect("scans");
        assert!(skipped.is_some_and(|found| found.skipped.contains_key("c.yaml")));
        assert!(directory.scan_if_touched().expect("scans").is_none());
    }
}
