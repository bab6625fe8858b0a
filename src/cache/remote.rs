//! A remote cache: the content-addressed part of a store (blobs, manifests, action records),
//! shared by every machine of a team, in a directory (an NFS mount) or S3-compatible object
//! storage, both through the `object_store` crate.
//!
//! The remote keeps the local layout's names (`blobs-v1/ab/<blake3>`, `manifests-v1/ab/<digest>.json`,
//! `actions-v1/ab/<stage key>.json`) under the URL's prefix. The store's contract carries over:
//!
//! - Writes are create-only (`PutMode::Create`: `If-None-Match: *` on S3, a no-clobber link on
//!   a directory): a name, once there, never changes, so two machines pushing the same result at
//!   once cannot tear it, and an existing object is never uploaded again.
//! - An action record is uploaded only after every object it references, so a visible remote
//!   record always has its outputs (a reader that finds one missing treats the key as a miss).
//! - Nothing downloaded is trusted: a blob's bytes must hash to its name, a manifest's digest
//!   must be its name, a record must parse and name its key; a remote object that fails is
//!   reported as [`RemoteError::Corrupt`] and never enters the local store (its stage reruns).
//! - Credentials come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`) or, when
//!   those name no key, from the `AWS_PROFILE` section of `~/.aws/credentials`. taper holds
//!   them only inside the client: no error, log line, lock file or store object contains them.
//!
//! A whole-store `cache push`/`cache pull` also carries the experiment records
//! (`experiments-v1/<id>.json`), so `taper exp show` on a teammate's clone lists the runs they
//! pulled. A record is named by what it records (pipeline, commit, overrides, stage keys), not
//! by its bytes: two machines that ran the same work hold the same id with other times. So a
//! record is never replaced on either side: push is create-only, pull stores only ids the local
//! store lacks and reports (keeps) a local record whose bytes differ from the remote's. A pulled
//! record is checked like any object: it must parse and be the digest its id names.
//!
//! Locks, scratch space, run records and the hash cache stay local: they describe one
//! machine's runs, not results.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path as RemotePath;
use object_store::{ObjectStoreExt as _, PutMode, PutPayload};

use super::experiments::{check_pulled, is_experiment_id, BUCKET as EXPERIMENTS};
use super::{io_error, ActionRecord, CacheError, ObjectStore as _, Store};
use crate::fingerprint::{Digest, Manifest};

/// Transfers in flight at once: enough to hide an object store's per-request latency, few
/// enough not to open hundreds of connections or files.
const PARALLEL_TRANSFERS: usize = 16;

/// The most bytes a pulled action or experiment record may have. Records and manifests are
/// read whole into memory to be checked, so without a bound a remote serving a huge object
/// (broken or hostile) would make `cache pull` allocate all of it. Records are kilobytes.
const RECORD_LIMIT: u64 = 16 << 20;

/// The most bytes a pulled manifest may have: one entry per output file is about 150 bytes,
/// so this is well over a million files.
const MANIFEST_LIMIT: u64 = 256 << 20;

/// What a download larger than its limit is reported as.
const TOO_LARGE: &str = "is larger than a record or manifest can be";

/// Where a project names its remote when neither `--remote` nor `TAPER_REMOTE` does.
pub const CONFIG_FILE: &str = ".taper/config.yaml";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RemoteError {
    #[error("`{url}` is not a remote taper can use: {reason}")]
    #[diagnostic(
        code(taper::remote::url),
        help("give a directory (`/mnt/shared/taper`, `file:///mnt/shared/taper`) or `s3://BUCKET/PREFIX`; for S3-compatible storage set AWS_ENDPOINT_URL")
    )]
    BadUrl { url: String, reason: String },
    #[error("the remote `{url}` refused the credentials taper found ({source_of_credentials})")]
    #[diagnostic(
        code(taper::remote::denied),
        help("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and its section of ~/.aws/credentials, and that the key may read and write the bucket (the secret itself is never printed)")
    )]
    Denied {
        url: String,
        source_of_credentials: String,
    },
    #[error("cannot {action} `{object}` on the remote `{url}`")]
    #[diagnostic(
        code(taper::remote::transfer),
        help("check that the remote is reachable (AWS_ENDPOINT_URL for S3-compatible storage) and the bucket or directory exists")
    )]
    Transfer {
        url: String,
        action: &'static str,
        object: String,
        /// Boxed: the client's error is large and this one travels in every `Result`.
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("remote {object} {problem}: not used")]
    #[diagnostic(
        code(taper::remote::corrupt),
        help("the object was not copied into the local store and its stage will run; delete it from the remote (`{url}`) and push a good copy")
    )]
    Corrupt {
        url: String,
        object: String,
        problem: &'static str,
    },
    #[error("cannot read the project configuration `{path}`")]
    #[diagnostic(
        code(taper::remote::config),
        help("`.taper/config.yaml` holds `remote: URL` (a directory or `s3://BUCKET/PREFIX`)")
    )]
    Config { path: PathBuf, reason: String },
    #[error("no remote cache is configured")]
    #[diagnostic(
        code(taper::remote::none),
        help("pass `--remote URL`, set TAPER_REMOTE, or write `remote: URL` into the project's `.taper/config.yaml`")
    )]
    NotConfigured,
    #[error("cannot start the transfer runtime")]
    #[diagnostic(code(taper::remote::runtime))]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Cache(#[from] CacheError),
}

/// The remote named by `.taper/config.yaml` in `project_root` (`remote: URL`), if any.
pub fn configured_remote(project_root: &Path) -> Result<Option<String>, RemoteError> {
    #[derive(serde::Deserialize)]
    struct Config {
        remote: Option<String>,
    }
    let path = project_root.join(CONFIG_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(RemoteError::Config {
                path,
                reason: error.to_string(),
            })
        }
    };
    let config: Config = serde_yaml::from_str(&text).map_err(|error| RemoteError::Config {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    Ok(config.remote)
}

/// What a push or pull moved.
#[derive(Debug, Default)]
pub struct TransferReport {
    /// Action records now on the destination that were not there before.
    pub actions: usize,
    /// Objects (blobs, manifests, records) copied, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Objects the destination already had.
    pub present: usize,
    /// Experiment records copied (whole-store push and pull only), and those the destination
    /// already had.
    pub experiments: usize,
    pub experiments_present: usize,
    /// Ids of local experiment records whose bytes differ from the remote's record of the same
    /// experiment (the same work recorded by another run): kept as they are.
    pub experiments_kept: Vec<String>,
    /// Actions and experiment records that could not be transferred, each with why (a corrupt
    /// object, a failed request); the others were.
    pub failures: Vec<RemoteError>,
}

/// What pulling one remote experiment record did.
enum PulledExperiment {
    Stored,
    Same,
    /// The local record of that id has other bytes; it stays.
    Kept(String),
    /// Deleted from the remote between the listing and the download.
    Vanished,
}

/// Progress of a transfer, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The objects and bytes about to be copied.
    Planned { objects: u64, bytes: u64 },
    /// One more object copied.
    Copied { bytes: u64 },
}

/// An open remote cache.
pub struct Remote {
    /// As the user gave it (URLs of either kind carry no credentials).
    url: String,
    objects: Arc<dyn object_store::ObjectStore>,
    prefix: RemotePath,
    /// Where the credentials came from, for [`RemoteError::Denied`] (never the values).
    credentials: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written: the client holds the credentials.
        formatter
            .debug_struct("Remote")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One object to upload: its remote name and its local file.
struct Upload {
    name: RemotePath,
    local: PathBuf,
}

impl Remote {
    /// Opens `url`: `s3://BUCKET[/PREFIX]`, or a directory (`file:///dir` or a plain path, made
    /// when missing). Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let bad = |reason: &str| RemoteError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        // A failed request is retried briefly: a remote that is down must not stall a run for
        // the crate's default three minutes.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..object_store::RetryConfig::default()
        };
        let (objects, prefix, credentials): (Arc<dyn object_store::ObjectStore>, _, _) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || bucket.contains('@') || bucket.contains(':') {
                    return Err(bad("expected `s3://BUCKET/PREFIX`"));
                }
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    builder = builder.with_allow_http(true);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    // S3-compatible servers ignore the region but SigV4 needs one.
                    builder = builder.with_region("us-east-1");
                }
                let credentials = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
                    "AWS_ACCESS_KEY_ID from the environment".to_owned()
                } else if let Some(profile) = profile_credentials() {
                    builder = builder
                        .with_access_key_id(profile.access_key_id)
                        .with_secret_access_key(profile.secret_access_key);
                    if let Some(token) = profile.session_token {
                        builder = builder.with_token(token);
                    }
                    format!(
                        "profile `{}` of `{}`",
                        profile.profile,
                        profile.file.display()
                    )
                } else {
                    "no key: AWS_ACCESS_KEY_ID is unset and no AWS profile names one".to_owned()
                };
                let store = builder
                    .build()
                    .map_err(|error| bad(&first_line(&error.to_string())))?;
                (Arc::new(store), prefix.to_owned(), credentials)
            } else if url.contains("://") && !url.starts_with("file://") {
                return Err(bad("only `s3://` and directories are supported"));
            } else {
                let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
                fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
                    action: "create the remote directory",
                    path: dir.clone(),
                    source,
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|error| bad(&first_line(&error.to_string())))?;
                (Arc::new(store), String::new(), "none needed".to_owned())
            };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        Ok(Remote {
            url: url.to_owned(),
            objects,
            prefix: RemotePath::from(prefix.trim_matches('/')),
            credentials,
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn name(&self, bucket: &str, digest: &Digest, suffix: &str) -> RemotePath {
        let hex = digest.to_hex();
        let mut name = self.prefix.clone();
        for part in [bucket, &hex[..2], &format!("{hex}{suffix}")] {
            name = name.join(part);
        }
        name
    }

    fn blob_name(&self, digest: &Digest) -> RemotePath {
        self.name("blobs-v1", digest, "")
    }

    fn manifest_name(&self, digest: &Digest) -> RemotePath {
        self.name("manifests-v1", digest, ".json")
    }

    fn action_name(&self, key: &Digest) -> RemotePath {
        self.name("actions-v1", key, ".json")
    }

    fn experiment_name(&self, id: &str) -> RemotePath {
        self.prefix
            .clone()
            .join(EXPERIMENTS)
            .join(format!("{id}.json"))
    }

    /// Maps a failed request to a typed error; 401 and 403 are a credentials problem.
    fn failed(
        &self,
        action: &'static str,
        object: &RemotePath,
        source: object_store::Error,
    ) -> RemoteError {
        match source {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => RemoteError::Denied {
                url: self.url.clone(),
                source_of_credentials: self.credentials.clone(),
            },
            source => RemoteError::Transfer {
                url: self.url.clone(),
                action,
                object: object.to_string(),
                source: Box::new(source),
            },
        }
    }

    fn corrupt(&self, object: String, problem: &'static str) -> RemoteError {
        RemoteError::Corrupt {
            url: self.url.clone(),
            object,
            problem,
        }
    }

    /// Uploads the results of `keys` (every action record of `store` when `None`) that the
    /// remote lacks: blobs and manifests first, then each record; with `None`, then also every
    /// experiment record the remote lacks.
    pub fn push(
        &self,
        store: &Store,
        keys: Option<&[Digest]>,
        progress: &dyn Fn(Progress),
    ) -> Result<TransferReport, RemoteError> {
        let whole_store = keys.is_none();
        let keys: Vec<Digest> = match keys {
            Some(keys) => keys.to_vec(),
            None => store
                .list_actions()
                .into_iter()
                .map(|l| l.record.key)
                .collect(),
        };
        let mut report = TransferReport::default();
        // Per action: its record and the objects it needs (deduplicated across actions).
        let mut records = Vec::new();
        let mut needed: BTreeMap<String, Upload> = BTreeMap::new();
        for key in keys {
            let Some(record) = store.get_action(&key) else {
                continue;
            };
            let Some(manifest) = store.outputs_present(&record) else {
                continue;
            };
            let blobs = manifest
                .entries
                .values()
                .map(|entry| entry.digest)
                .chain(record.log.filter(|log| store.contains_blob(log)));
            for digest in blobs {
                let upload = Upload {
                    name: self.blob_name(&digest),
                    local: store.blob_path(&digest),
                };
                needed.insert(upload.name.to_string(), upload);
            }
            let upload = Upload {
                name: self.manifest_name(&record.outputs),
                local: store.manifest_path(&record.outputs),
            };
            needed.insert(upload.name.to_string(), upload);
            records.push(record);
        }
        self.runtime.block_on(async {
            let missing = self.missing(needed.into_values().collect()).await?;
            let actions: Vec<Upload> = records
                .iter()
                .map(|record| Upload {
                    name: self.action_name(&record.key),
                    local: store.action_path(&record.key),
                })
                .collect();
            let missing_actions = self.missing(actions).await?;
            report.present += records.len() - missing_actions.len();
            let planned_bytes: u64 = missing
                .iter()
                .chain(&missing_actions)
                .map(|upload| fs::metadata(&upload.local).map_or(0, |m| m.len()))
                .sum();
            progress(Progress::Planned {
                objects: (missing.len() + missing_actions.len()) as u64,
                bytes: planned_bytes,
            });
            // Objects first: a failed one keeps every record that needs it off the remote.
            let mut failed_objects = BTreeSet::new();
            let results: Vec<_> = stream::iter(missing)
                .map(|upload| async move {
                    let result = self.upload(&upload).await;
                    (upload.name, result)
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .collect()
                .await;
            for (name, result) in results {
                match result {
                    Ok(Some(bytes)) => {
                        report.objects += 1;
                        report.bytes += bytes;
                        progress(Progress::Copied { bytes });
                    }
                    Ok(None) => report.present += 1,
                    Err(error) => {
                        failed_objects.insert(name.to_string());
                        report.failures.push(error);
                    }
                }
            }
            let complete: Vec<Upload> = missing_actions
                .into_iter()
                .filter(|upload| {
                    let key = records
                        .iter()
                        .find(|record| self.action_name(&record.key) == upload.name);
                    key.is_some_and(|record| {
                        !self
                            .references(store, record)
                            .iter()
                            .any(|name| failed_objects.contains(name))
                    })
                })
                .collect();
            for result in self.upload_all(complete).await {
                match result {
                    Ok(Some(bytes)) => {
                        report.actions += 1;
                        report.objects += 1;
                        report.bytes += bytes;
                        progress(Progress::Copied { bytes });
                    }
                    Ok(None) => report.present += 1,
                    Err(error) => report.failures.push(error),
                }
            }
            if whole_store {
                self.push_experiments(store, &mut report).await?;
            }
            Ok::<_, RemoteError>(())
        })?;
        Ok(report)
    }

    /// Uploads the store's experiment records the remote lacks, create-only (after the results:
    /// a record is history, readable without them, so a failed result does not hold it back).
    async fn push_experiments(
        &self,
        store: &Store,
        report: &mut TransferReport,
    ) -> Result<(), RemoteError> {
        let records: Vec<Upload> = store
            .experiments()
            .iter()
            .map(|record| Upload {
                name: self.experiment_name(&record.id),
                local: store.experiment_path(&record.id),
            })
            .collect();
        let count = records.len();
        let missing = self.missing(records).await?;
        report.experiments_present += count - missing.len();
        for result in self.upload_all(missing).await {
            match result {
                Ok(Some(_)) => report.experiments += 1,
                Ok(None) => report.experiments_present += 1,
                Err(error) => report.failures.push(error),
            }
        }
        Ok(())
    }

    /// Uploads each of `uploads` (create-only, [`PARALLEL_TRANSFERS`] at a time): the bytes
    /// sent, or `None` where the remote already had the object.
    async fn upload_all(&self, uploads: Vec<Upload>) -> Vec<Result<Option<u64>, RemoteError>> {
        stream::iter(uploads)
            .map(|upload| async move { self.upload(&upload).await })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .collect()
            .await
    }

    /// Remote names of the objects `record` references.
    fn references(&self, store: &Store, record: &ActionRecord) -> Vec<String> {
        let mut names = vec![self.manifest_name(&record.outputs).to_string()];
        if let Some(manifest) = store.get_manifest(&record.outputs) {
            names.extend(
                manifest
                    .entries
                    .values()
                    .map(|entry| self.blob_name(&entry.digest).to_string()),
            );
        }
        names.extend(record.log.map(|log| self.blob_name(&log).to_string()));
        names
    }

    /// The uploads whose objects the remote does not have (one `HEAD` each, in parallel).
    async fn missing(&self, uploads: Vec<Upload>) -> Result<Vec<Upload>, RemoteError> {
        let checked: Vec<Option<Upload>> = stream::iter(uploads)
            .map(|upload| async move {
                match self.objects.head(&upload.name).await {
                    Ok(_) => Ok(None),
                    Err(object_store::Error::NotFound { .. }) => Ok(Some(upload)),
                    Err(error) => Err(self.failed("look up", &upload.name, error)),
                }
            })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect()
            .await?;
        Ok(checked.into_iter().flatten().collect())
    }

    /// Uploads one object, create-only: `Some(bytes)` when written, `None` when the remote
    /// already had it (another machine pushed it meanwhile). A blob is rehashed first, so a
    /// damaged local copy never reaches the remote.
    async fn upload(&self, upload: &Upload) -> Result<Option<u64>, RemoteError> {
        let bytes = fs::read(&upload.local).map_err(|source| CacheError::Io {
            action: "read",
            path: upload.local.clone(),
            source,
        })?;
        let is_blob = upload.name.parts().any(|part| part.as_ref() == "blobs-v1");
        if is_blob {
            let named = upload.name.filename().unwrap_or_default();
            if Digest::of_bytes(&bytes).to_hex() != named {
                return Err(CacheError::Corrupt {
                    object: format!("blob {}", &named[..named.len().min(12)]),
                    path: upload.local.clone(),
                    problem:
                        "does not match its hash (not pushed; `taper cache verify` quarantines it)",
                    quarantined: None,
                }
                .into());
            }
        }
        let size = bytes.len() as u64;
        match self
            .objects
            .put_opts(
                &upload.name,
                PutPayload::from(bytes),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => Ok(Some(size)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(error) => Err(self.failed("upload", &upload.name, error)),
        }
    }

    /// Downloads one object (`object` names it in errors) of at most `limit` bytes; `None`
    /// when the remote does not have it. The download stops as soon as it passes the limit.
    async fn download(
        &self,
        name: &RemotePath,
        object: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        let result = match self.objects.get(name).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(self.failed("download", name, error)),
        };
        if result.meta.size > limit {
            return Err(self.corrupt(object.to_owned(), TOO_LARGE));
        }
        let mut bytes = Vec::new();
        let mut chunks = result.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|error| self.failed("download", name, error))?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(self.corrupt(object.to_owned(), TOO_LARGE));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// Every object under the remote's `bucket/`.
    async fn list(&self, bucket: &str) -> Result<Vec<object_store::ObjectMeta>, RemoteError> {
        let bucket = self.prefix.clone().join(bucket);
        self.objects
            .list(Some(&bucket))
            .try_collect()
            .await
            .map_err(|error| self.failed("list", &bucket, error))
    }

    /// The stage keys the remote has results for (by the names under `actions-v1/`).
    async fn remote_keys(&self) -> Result<Vec<Digest>, RemoteError> {
        let listed = self.list("actions-v1").await?;
        Ok(listed
            .iter()
            .filter_map(|meta| {
                meta.location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// Downloads the results of `keys` (every result on the remote when `None`) that `store`
    /// lacks, checking every object; a result with a bad object is reported and not stored.
    /// With `None`, then also every experiment record the store lacks.
    pub fn pull(
        &self,
        store: &Store,
        keys: Option<&[Digest]>,
        progress: &dyn Fn(Progress),
    ) -> Result<TransferReport, RemoteError> {
        let mut report = TransferReport::default();
        let whole_store = keys.is_none();
        self.runtime.block_on(async {
            let keys = match keys {
                Some(keys) => keys.to_vec(),
                None => self.remote_keys().await?,
            };
            let wanted: Vec<Digest> = keys
                .into_iter()
                .filter(|key| {
                    let local = store
                        .get_action(key)
                        .and_then(|r| store.outputs_present(&r));
                    report.present += usize::from(local.is_some());
                    local.is_none()
                })
                .collect();
            progress(Progress::Planned {
                objects: wanted.len() as u64,
                bytes: 0,
            });
            let staging = store.temp_dir("pull")?;
            let results: Vec<_> = stream::iter(wanted)
                .map(|key| {
                    let staging = staging.path();
                    async move { self.pull_one(store, &key, staging).await }
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(Some((objects, bytes))) => {
                        report.actions += 1;
                        report.objects += objects;
                        report.bytes += bytes;
                        progress(Progress::Copied { bytes });
                    }
                    Ok(None) => {}
                    Err(error) => report.failures.push(error),
                }
            }
            if whole_store {
                self.pull_experiments(store, &mut report).await?;
            }
            Ok::<_, RemoteError>(())
        })?;
        Ok(report)
    }

    /// Downloads the remote's experiment records the store lacks; a record the store has is
    /// compared, and kept when it differs (see the module docs).
    async fn pull_experiments(
        &self,
        store: &Store,
        report: &mut TransferReport,
    ) -> Result<(), RemoteError> {
        let listed = self.list(EXPERIMENTS).await?;
        // Anything else in the bucket (a client's temporary file) is not a record.
        let ids: Vec<(String, u64)> = listed
            .iter()
            .filter_map(|meta| {
                let id = meta.location.filename()?.strip_suffix(".json")?;
                is_experiment_id(id).then(|| (id.to_owned(), meta.size))
            })
            .collect();
        let results: Vec<_> = stream::iter(ids)
            .map(|(id, size)| async move { self.pull_experiment(store, id, size).await })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(PulledExperiment::Stored) => report.experiments += 1,
                Ok(PulledExperiment::Same) => report.experiments_present += 1,
                Ok(PulledExperiment::Vanished) => {}
                Ok(PulledExperiment::Kept(id)) => {
                    report.experiments_present += 1;
                    report.experiments_kept.push(id);
                }
                Err(error) => report.failures.push(error),
            }
        }
        report.experiments_kept.sort();
        Ok(())
    }

    /// Pulls the record `id` (`size` bytes on the remote) unless the store has it.
    async fn pull_experiment(
        &self,
        store: &Store,
        id: String,
        size: u64,
    ) -> Result<PulledExperiment, RemoteError> {
        let local = store.experiment_path(&id);
        let local_bytes = match fs::read(&local) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error("read", &local)(error).into()),
        };
        // Another size is other bytes: no need to download it to know.
        if local_bytes
            .as_ref()
            .is_some_and(|bytes| bytes.len() as u64 != size)
        {
            return Ok(PulledExperiment::Kept(id));
        }
        let name = self.experiment_name(&id);
        let object = format!("experiment {id}");
        if size > RECORD_LIMIT {
            return Err(self.corrupt(object, TOO_LARGE));
        }
        let Some(bytes) = self.download(&name, &object, RECORD_LIMIT).await? else {
            return Ok(PulledExperiment::Vanished);
        };
        match local_bytes {
            Some(local_bytes) if local_bytes == bytes => Ok(PulledExperiment::Same),
            Some(_) => Ok(PulledExperiment::Kept(id)),
            None => {
                check_pulled(&id, &bytes).map_err(|problem| self.corrupt(object, problem))?;
                if store.import_experiment(&id, &bytes)? {
                    Ok(PulledExperiment::Stored)
                } else {
                    Ok(PulledExperiment::Same)
                }
            }
        }
    }

    /// Pulls one result: its record, manifest and missing blobs, each checked, then the record
    /// stored last (the local store's own order). `None` when the remote has no such result.
    async fn pull_one(
        &self,
        store: &Store,
        key: &Digest,
        staging: &Path,
    ) -> Result<Option<(usize, u64)>, RemoteError> {
        let name = self.action_name(key);
        let object = format!("action {}", key.short());
        let Some(bytes) = self.download(&name, &object, RECORD_LIMIT).await? else {
            return Ok(None);
        };
        let mut objects = 1;
        let mut total = bytes.len() as u64;
        let record: ActionRecord = serde_json::from_slice(&bytes)
            .map_err(|_| self.corrupt(object.clone(), "is not an action record"))?;
        if record.key != *key || record.version != 1 {
            return Err(self.corrupt(object, "names another stage key or format"));
        }
        let manifest = match store.get_manifest(&record.outputs) {
            Some(manifest) => manifest,
            None => {
                let object = format!("manifest {}", record.outputs.short());
                let name = self.manifest_name(&record.outputs);
                let Some(bytes) = self.download(&name, &object, MANIFEST_LIMIT).await? else {
                    return Err(
                        self.corrupt(object, "is missing (the record's outputs are incomplete)")
                    );
                };
                objects += 1;
                total += bytes.len() as u64;
                let manifest: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|_| self.corrupt(object.clone(), "is not a manifest"))?;
                if manifest.digest() != record.outputs {
                    return Err(self.corrupt(object, "does not match its digest"));
                }
                manifest
            }
        };
        let blobs: BTreeSet<Digest> = manifest
            .entries
            .values()
            .map(|entry| entry.digest)
            .filter(|digest| !store.contains_blob(digest))
            .collect();
        let fetched: Vec<u64> = stream::iter(blobs)
            .map(|digest| async move { self.pull_blob(store, &digest, staging, true).await })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect()
            .await?;
        objects += fetched.len();
        total += fetched.iter().sum::<u64>();
        // The log is informational: a missing or bad one does not cost the result.
        let mut record = record;
        if let Some(log) = record.log.filter(|log| !store.contains_blob(log)) {
            match self.pull_blob(store, &log, staging, false).await {
                Ok(bytes) => {
                    objects += 1;
                    total += bytes;
                }
                Err(error) => {
                    tracing::warn!("{error}");
                    record.log = None;
                }
            }
        }
        store.put_manifest(&manifest)?;
        store.put_action(&record)?;
        Ok(Some((objects, total)))
    }

    /// Downloads blob `digest` into the store after checking its bytes hash to its name.
    async fn pull_blob(
        &self,
        store: &Store,
        digest: &Digest,
        staging: &Path,
        required: bool,
    ) -> Result<u64, RemoteError> {
        let object = format!("blob {}", digest.short());
        let name = self.blob_name(digest);
        let result = match self.objects.get(&name).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                let problem = if required {
                    "is missing (the record's outputs are incomplete)"
                } else {
                    "is missing"
                };
                return Err(self.corrupt(object, problem));
            }
            Err(error) => return Err(self.failed("download", &name, error)),
        };
        // Streamed to the staging file and hashed on the way: a multi-GB checkpoint is never
        // held in memory whole.
        let path = staging.join(digest.to_hex());
        let io = |source| CacheError::Io {
            action: "write",
            path: path.clone(),
            source,
        };
        let mut file = fs::File::create(&path).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut chunks = result.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|error| self.failed("download", &name, error))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).map_err(io)?;
        }
        drop(file);
        if Digest::from(hasher.finalize()) != *digest {
            let _ = fs::remove_file(&path);
            return Err(self.corrupt(object, "does not match its hash"));
        }
        store.put_blob(&path, digest, true)?;
        Ok(size)
    }
}

/// Keys from a shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
/// `~/.aws/credentials`), section `AWS_PROFILE` (else `default`).
struct ProfileCredentials {
    profile: String,
    file: PathBuf,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

fn profile_credentials() -> Option<ProfileCredentials> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".aws/credentials"))
        })?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    let text = fs::read_to_string(&file).ok()?;
    let mut section = String::new();
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if section == profile {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    Some(ProfileCredentials {
        access_key_id: values.remove("aws_access_key_id")?,
        secret_access_key: values.remove("aws_secret_access_key")?,
        session_token: values.remove("aws_session_token"),
        profile,
        file,
    })
}

/// The first line of a message (client errors can run on with request details).
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
