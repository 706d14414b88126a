//! The remote cache: records and objects shared through S3-compatible
//! storage (`s3://bucket/prefix`) or a shared directory (`file:///path`),
//! by the `object_store` crate.
//!
//! ```text
//! <prefix>/objects/ab/cdef…     object contents, named by their blake3
//! <prefix>/records/<key>.json   one record per key, written after its objects
//! ```
//!
//! The guarantees, and why they hold:
//! - **No record without its objects.** A push uploads every object a
//!   record names (outputs and log) and only then the record; each upload is
//!   one atomic PUT (or a multipart upload, which becomes visible whole when
//!   it completes). A push cut off midway leaves objects nobody points at,
//!   never a record pointing at a missing object.
//! - **Concurrent pushes are safe.** Objects are named by their content, so
//!   two machines writing the same name write the same bytes; two records of
//!   one key describe the same outputs (the key covers op, params and input
//!   content), and whichever PUT lands last is whole.
//! - **Nothing corrupt is served.** A fetched object is written to the
//!   store's `tmp/`, hashed as it arrives, and renamed into `objects/` only
//!   when its blake3 and size are the ones the record names; the record is
//!   added to the local store after all its objects. A transfer that fails
//!   midway leaves nothing behind.
//! - **Credentials never come from a manifest**: from the environment
//!   (`AWS_ACCESS_KEY_ID`, …), the shared credentials file (`AWS_PROFILE`,
//!   `~/.aws/credentials`), or the instance's role, in that order.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;

use super::{Output, OutputKind, Record, Store};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// The `[remote]` section of the config file (`.podium/config.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix` or `file:///shared/dir` (or `--remote URL`).
    #[serde(default)]
    pub url: String,
    /// An S3-compatible server (MinIO, Ceph): `http://host:9000`. Default:
    /// `AWS_ENDPOINT_URL`, else AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, the profile's, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint (a server on a private network).
    #[serde(default)]
    pub allow_http: bool,
    /// Push what a run executes (turn off on machines that only consume).
    #[serde(default = "yes")]
    pub push: bool,
    /// Fetch instances the remote has instead of executing them.
    #[serde(default = "yes")]
    pub fetch: bool,
    /// Retries of one request or transfer, with exponential back-off.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Transfers in flight at once.
    #[serde(default = "default_transfers")]
    pub transfers: usize,
}

fn yes() -> bool {
    true
}

fn default_retries() -> usize {
    5
}

fn default_transfers() -> usize {
    16
}

impl RemoteConfig {
    /// The settings for `url` with every other key at its default.
    pub fn url(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: url.to_string(),
            endpoint: None,
            region: None,
            allow_http: false,
            push: true,
            fetch: true,
            retries: default_retries(),
            transfers: default_transfers(),
        }
    }
}

/// What a push or a fetch moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Records written (push) or added to the local store (fetch).
    pub records: usize,
    /// Objects moved, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Objects already on the other side.
    pub present: usize,
}

impl Transfer {
    pub fn add(&mut self, o: Transfer) {
        self.records += o.records;
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.present += o.present;
    }
}

/// An open remote cache.
pub struct Remote {
    url: String,
    os: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    rt: tokio::runtime::Runtime,
    pub config: RemoteConfig,
    /// Records looked up so far, by key (`None`: the remote has none).
    known: Mutex<HashMap<String, Option<Record>>>,
    checked: std::sync::OnceLock<std::result::Result<(), String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

fn remote_err(url: &str, what: impl std::fmt::Display) -> Error {
    Error::Remote(format!("remote {url}: {what}"))
}

impl Remote {
    /// Opens the remote `config.url` names. Nothing is sent yet; the first
    /// use checks that the bucket exists and the credentials are accepted.
    pub fn open(config: &RemoteConfig) -> Result<Remote> {
        let url = config.url.trim_end_matches('/').to_string();
        if url.is_empty() {
            return Err(Error::Usage(
                "the remote cache has no url: give --remote URL or `url` in [remote]".into(),
            ));
        }
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: config.retries,
            retry_timeout: Duration::from_secs(120),
        };
        let (os, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(remote_err(&url, "no bucket named (s3://BUCKET/PREFIX)"));
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    // Replaces the client options `from_env` read, so
                    // AWS_ALLOW_HTTP is read again below. No limit on a
                    // whole request (a checkpoint of gigabytes takes what
                    // it takes), but a connection silent for 60 s is dead.
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(10))
                            .with_timeout_disabled()
                            .with_read_timeout(Duration::from_secs(60)),
                    );
                let profile = aws_profile();
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                    && let (Some(id), Some(secret)) = (
                        profile.get("aws_access_key_id"),
                        profile.get("aws_secret_access_key"),
                    )
                {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(t) = profile.get("aws_session_token") {
                        b = b.with_token(t);
                    }
                }
                let region = config
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .or_else(|| profile.get("region").cloned())
                    .unwrap_or_else(|| "us-east-1".into());
                b = b.with_region(region);
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e);
                }
                let env_http = std::env::var("AWS_ALLOW_HTTP")
                    .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
                if config.allow_http || env_http {
                    b = b.with_allow_http(true);
                }
                let s3 = b.build().map_err(|e| remote_err(&url, e))?;
                (Arc::new(s3), prefix.to_string())
            } else if let Some(dir) = url.strip_prefix("file://") {
                let dir = Path::new(if dir.is_empty() { "/" } else { dir });
                if !dir.is_absolute() {
                    return Err(remote_err(
                        &url,
                        "a file:// remote needs an absolute path (file:///shared/podium)",
                    ));
                }
                if !dir.is_dir() {
                    return Err(remote_err(
                        &url,
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| remote_err(&url, e))?;
                (Arc::new(fs), String::new())
            } else {
                return Err(remote_err(
                    &url,
                    "unknown scheme: use s3://BUCKET/PREFIX or file:///DIR",
                ));
            };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("podium-remote")
            .enable_all()
            .build()
            .map_err(|e| remote_err(&url, e))?;
        Ok(Remote {
            url,
            os,
            prefix: ObjPath::from(prefix),
            rt,
            config: config.clone(),
            known: Mutex::new(HashMap::new()),
            checked: std::sync::OnceLock::new(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object_loc(&self, hex: &str) -> ObjPath {
        self.prefix
            .clone()
            .join("objects")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    fn record_loc(&self, key: &str) -> ObjPath {
        self.prefix
            .clone()
            .join("records")
            .join(format!("{key}.json"))
    }

    /// Says what a refused or failed request means: the bucket is missing,
    /// the credentials were refused, or the server could not be reached.
    fn explain(&self, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let text = e.to_string();
        // S3's answer is an XML document: its code and message say it all.
        let tag = |t: &str| {
            let start = text.find(&format!("<{t}>"))? + t.len() + 2;
            let end = text[start..].find(&format!("</{t}>"))? + start;
            Some(text[start..end].to_string())
        };
        let said = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            _ => text.clone(),
        };
        let refused = matches!(e, E::Unauthenticated { .. } | E::PermissionDenied { .. })
            || [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ]
            .iter()
            .any(|c| text.contains(c));
        let msg = if refused {
            format!(
                "the credentials were refused ({said}); podium reads them from AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/credentials, or the machine's role"
            )
        } else if text.contains("error sending request") || text.contains("connect") {
            format!("the server does not answer ({said}); --no-remote works without it")
        } else if text.contains("NoSuchBucket") {
            format!("the bucket does not exist ({said}); create it, or correct the URL")
        } else {
            said
        };
        remote_err(&self.url, msg)
    }

    /// Checks once that the remote answers: the bucket exists and the
    /// credentials are accepted.
    pub fn check(&self) -> Result<()> {
        self.checked
            .get_or_init(|| {
                let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
                self.rt
                    .block_on(self.os.list_with_delimiter(prefix))
                    .map(|_| ())
                    .map_err(|e| match self.explain(e) {
                        Error::Remote(m) => m,
                        e => e.to_string(),
                    })
            })
            .clone()
            .map_err(Error::Remote)
    }

    /// The remote's record of `key`, if it has one (looked up once per process).
    pub fn record(&self, key: &Hash) -> Result<Option<Record>> {
        self.records(std::slice::from_ref(key))
            .map(|mut v| v.pop().flatten())
    }

    /// The remote's records of `keys`, in order, looked up `transfers` at a
    /// time (each key once per process).
    pub fn records(&self, keys: &[Hash]) -> Result<Vec<Option<Record>>> {
        let hexes: Vec<String> = keys.iter().map(|k| k.to_hex().to_string()).collect();
        let unknown: Vec<&String> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            hexes.iter().filter(|h| !known.contains_key(*h)).collect()
        };
        if !unknown.is_empty() {
            self.check()?;
            let got = self.rt.block_on(
                futures::stream::iter(unknown.into_iter().map(|hex| async move {
                    self.get_record(hex).await.map(|r| (hex.clone(), r))
                }))
                .buffer_unordered(self.config.transfers.max(1))
                .collect::<Vec<Result<(String, Option<Record>)>>>(),
            );
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            for r in got {
                let (hex, rec) = r?;
                known.insert(hex, rec);
            }
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        Ok(hexes
            .iter()
            .map(|h| known.get(h).cloned().flatten())
            .collect())
    }

    async fn get_record(&self, hex: &str) -> Result<Option<Record>> {
        let loc = self.record_loc(hex);
        let got = match self.os.get(&loc).await {
            Ok(g) => g.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let Some(bytes) = got.map_err(|e| self.explain(e))? else {
            return Ok(None);
        };
        let rec: Record = serde_json::from_slice(&bytes)
            .map_err(|e| remote_err(&self.url, format!("{loc}: not a record: {e}")))?;
        if rec.key != hex {
            return Err(remote_err(
                &self.url,
                format!("{loc} holds the record of another key ({})", rec.key),
            ));
        }
        Ok(Some(rec))
    }

    /// Brings a remote record's objects into `store`, each verified by its
    /// hash and size as it arrives, then the record itself.
    pub fn fetch(&self, rec: &Record, store: &Store) -> Result<Transfer> {
        self.rt.block_on(self.fetch_one(rec, store))
    }

    /// [`Remote::fetch`] of many records, `transfers` at a time; each
    /// result in order.
    pub fn fetch_all(&self, recs: &[&Record], store: &Store) -> Vec<Result<Transfer>> {
        self.rt.block_on(
            futures::stream::iter(recs.iter().map(|rec| self.fetch_one(rec, store)))
                .buffered(self.config.transfers.max(1))
                .collect(),
        )
    }

    async fn fetch_one(&self, rec: &Record, store: &Store) -> Result<Transfer> {
        // Ctrl-C: what arrived is kept, the rest is not started.
        if crate::cancel::is_cancelled() {
            return Err(remote_err(&self.url, "interrupted"));
        }
        let mut t = move_objects(objects_of(rec), |hex, size, exec| async move {
            let h = Hash::from_hex(&hex).map_err(|e| Error::Corrupt(e.to_string()))?;
            if store.object_intact(&hex, size, 0) {
                return Ok(false);
            }
            self.download(&h, size, exec, rec.finished_at, store)
                .await
                .map(|()| true)
        })
        .await?;
        // The log is worth having but not worth failing for.
        if let Some(log) = rec.log.as_deref()
            && let Ok(h) = Hash::from_hex(log)
            && !store.object_path(&h).exists()
        {
            let _ = self.download_any(&h, rec.finished_at, store).await;
        }
        store.put_record(rec)?;
        t.records = 1;
        Ok(t)
    }

    /// Downloads one object into the store: to a temporary file, hashed as
    /// it arrives, renamed into place only when whole and right. Transient
    /// failures (a connection cut midway) are retried with back-off.
    async fn download(
        &self,
        h: &Hash,
        size: u64,
        exec: bool,
        mtime: u64,
        store: &Store,
    ) -> Result<()> {
        let hex = h.to_hex().to_string();
        let loc = self.object_loc(&hex);
        let mut attempt = 0;
        loop {
            let tmp = store.temp_path("fetch");
            let got = self.download_once(&loc, &tmp, h, Some(size)).await;
            let result = match got {
                Ok(()) => store
                    .adopt_object(&tmp, h, exec, mtime)
                    .map_err(|e| (e, false)),
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            match result {
                Err((_, true)) if attempt < self.config.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                r => return r.map_err(|(e, _)| e),
            }
        }
    }

    /// A log object, whose size the record does not say.
    async fn download_any(&self, h: &Hash, mtime: u64, store: &Store) -> Result<()> {
        let loc = self.object_loc(h.to_hex().as_str());
        let tmp = store.temp_path("fetch");
        let r = match self.download_once(&loc, &tmp, h, None).await {
            Ok(()) => store.adopt_object(&tmp, h, false, mtime),
            Err((e, _)) => Err(e),
        };
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// One try; the error says whether another might succeed (a cut
    /// connection, a damaged transfer) or not (refused, missing, disk).
    async fn download_once(
        &self,
        loc: &ObjPath,
        tmp: &Path,
        h: &Hash,
        size: Option<u64>,
    ) -> std::result::Result<(), (Error, bool)> {
        let io = |e| {
            (
                Error::Io {
                    path: tmp.to_path_buf(),
                    source: e,
                },
                false,
            )
        };
        let got = self.os.get(loc).await.map_err(|e| {
            let transient = transient(&e);
            (self.explain(e), transient)
        })?;
        let mut stream = got.into_stream();
        let mut f = File::create(tmp).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| (self.explain(e), true))?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).map_err(io)?;
        }
        if size.is_some_and(|s| s != n) || hasher.finalize() != *h {
            let msg = format!(
                "{loc}: the object arrived with {n} bytes that are not its content \
                 (expected {} bytes of blake3 {})",
                size.map_or("?".into(), |s| s.to_string()),
                h.to_hex()
            );
            return Err((remote_err(&self.url, msg), true));
        }
        f.sync_all().map_err(io)
    }

    /// Uploads a local record's objects that the remote lacks, then the
    /// record. Returns what moved.
    pub fn push(&self, rec: &Record, store: &Store) -> Result<Transfer> {
        self.check()?;
        self.rt.block_on(self.push_one(rec, store))
    }

    /// [`Remote::push`] of many records, `transfers` at a time; each result
    /// in order.
    pub fn push_all(&self, recs: &[&Record], store: &Store) -> Result<Vec<Result<Transfer>>> {
        self.check()?;
        Ok(self.rt.block_on(
            futures::stream::iter(recs.iter().map(|rec| self.push_one(rec, store)))
                .buffered(self.config.transfers.max(1))
                .collect(),
        ))
    }

    async fn push_one(&self, rec: &Record, store: &Store) -> Result<Transfer> {
        let mut wanted = objects_of(rec);
        if let Some(log) = &rec.log
            && let Ok(h) = Hash::from_hex(log)
            && let Ok(m) = fs::metadata(store.object_path(&h))
        {
            wanted.push((log.clone(), m.len(), false));
        }
        let mut t = move_objects(wanted, |hex, size, _| async move {
            let loc = self.object_loc(&hex);
            match self.os.head(&loc).await {
                Ok(m) if m.size == size => return Ok(false),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.explain(e)),
            }
            let h = Hash::from_hex(&hex).map_err(|e| Error::Corrupt(e.to_string()))?;
            self.upload(&store.object_path(&h), &loc)
                .await
                .map(|()| true)
        })
        .await?;
        let json = serde_json::to_vec(rec).map_err(|e| Error::Corrupt(e.to_string()))?;
        let loc = self.record_loc(&rec.key);
        self.os
            .put(&loc, PutPayload::from(json))
            .await
            .map_err(|e| self.explain(e))?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.key.clone(), Some(rec.clone()));
        t.records = 1;
        Ok(t)
    }

    /// One object file, whole or not at all: a single PUT, or for a large
    /// file a multipart upload that only becomes visible when complete.
    async fn upload(&self, path: &Path, loc: &ObjPath) -> Result<()> {
        const PART: usize = 16 << 20;
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len as usize <= PART {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(io)?;
            return self
                .os
                .put(loc, PutPayload::from(buf))
                .await
                .map(|_| ())
                .map_err(|e| self.explain(e));
        }
        let upload = self
            .os
            .put_multipart(loc)
            .await
            .map_err(|e| self.explain(e))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4).await.map_err(|e| self.explain(e))?;
            w.write(&buf[..n]);
        }
        w.finish().await.map(|_| ()).map_err(|e| self.explain(e))
    }
}

/// Whether a failed request may succeed when tried again.
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        e,
        E::NotFound { .. }
            | E::Unauthenticated { .. }
            | E::PermissionDenied { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
    )
}

/// Moves one record's objects (hash, size, exec), each once, four at a
/// time: `one` says whether it moved an object (`false`: already on the
/// other side). The tally, or the first error.
async fn move_objects<F, Fut>(mut objects: Vec<(String, u64, bool)>, one: F) -> Result<Transfer>
where
    F: Fn(String, u64, bool) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    objects.sort();
    objects.dedup();
    let results: Vec<(u64, Result<bool>)> =
        futures::stream::iter(objects.into_iter().map(|(hex, size, exec)| {
            let moving = one(hex, size, exec);
            async move { (size, moving.await) }
        }))
        .buffer_unordered(4)
        .collect()
        .await;
    let mut t = Transfer::default();
    for (size, moved) in results {
        if moved? {
            t.objects += 1;
            t.bytes += size;
        } else {
            t.present += 1;
        }
    }
    Ok(t)
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(200u64 << attempt.min(6)).min(Duration::from_secs(15))
}

/// (hash, size, exec) of every object of a record's outputs.
fn objects_of(rec: &Record) -> Vec<(String, u64, bool)> {
    let mut v = Vec::new();
    for o in rec.outputs.values() {
        push_output(o, &mut v);
    }
    v
}

fn push_output(o: &Output, v: &mut Vec<(String, u64, bool)>) {
    match o.kind {
        OutputKind::File => v.push((o.hash.clone(), o.size, o.exec)),
        OutputKind::Dir => v.extend(o.files.iter().map(|f| (f.hash.clone(), f.size, f.exec))),
    }
}

/// The profile of the shared credentials and config files (`AWS_PROFILE`,
/// default `default`): keys such as `aws_access_key_id` and `region`.
fn aws_profile() -> HashMap<String, String> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let mut out = HashMap::new();
    // The config file names profiles `[profile NAME]` (but `[default]`).
    let sections = [
        (
            file("AWS_CONFIG_FILE", "config"),
            format!("profile {profile}"),
        ),
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.clone(),
        ),
    ];
    for (path, section) in sections {
        let Some(text) = path.and_then(|p| fs::read_to_string(p).ok()) else {
            continue;
        };
        out.extend(ini_section(&text, &section));
        if profile == "default" {
            out.extend(ini_section(&text, "default"));
        }
    }
    out
}

/// The `key = value` pairs of one `[section]` of an INI file.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_their_section_only() {
        let text = "[default]\naws_access_key_id = A\n\n[profile team]\nregion = eu-west-1\n# c\naws_access_key_id=B\n";
        assert_eq!(
            ini_section(text, "default"),
            vec![("aws_access_key_id".into(), "A".into())]
        );
        assert_eq!(
            ini_section(text, "profile team"),
            vec![
                ("region".into(), "eu-west-1".into()),
                ("aws_access_key_id".into(), "B".into())
            ]
        );
        assert!(ini_section(text, "other").is_empty());
    }

    #[test]
    fn unknown_schemes_and_relative_paths_are_refused() {
        let e = Remote::open(&RemoteConfig::url("gs://b/p"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown scheme"), "{e}");
        let e = Remote::open(&RemoteConfig::url("file://rel/dir"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute path"), "{e}");
        let e = Remote::open(&RemoteConfig::url("s3:///p"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bucket"), "{e}");
    }
}
