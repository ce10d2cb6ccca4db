//! Backend over the `object_store` crate: S3-compatible stores (AWS S3,
//! Cloudflare R2, Backblaze B2, MinIO, Garage) and an in-memory store for
//! unit tests.
//!
//! `object_store` is async; the engine's pipeline is threads and rayon. This
//! adapter owns a small tokio runtime and blocks on it, so async stays an
//! implementation detail of remote storage.

use super::{Backend, BackendError, ObjectInfo, PutMode};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutOptions, PutPayload};
use std::sync::{Arc, OnceLock};

/// Settings for S3-compatible stores that are not part of the URL.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Region; defaults to `AWS_REGION`/`AWS_DEFAULT_REGION`, then
    /// `us-east-1` (custom endpoints ignore it).
    pub region: Option<String>,
    /// Access key id; defaults to `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret key; defaults to `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP to a non-loopback endpoint.
    pub allow_http: bool,
    /// Use virtual-hosted-style requests instead of path-style.
    pub virtual_hosted_style: bool,
}

/// A repository in an `object_store` store.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    runtime: tokio::runtime::Runtime,
    atomic_create: OnceLock<bool>,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ObjectBackend {
    /// An in-memory store (tests and dry runs).
    #[must_use]
    pub fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: String::new(),
            location: "memory:".into(),
            runtime: runtime(),
            atomic_create: OnceLock::from(true),
        }
    }

    /// An S3-compatible store from the part of a repository URL after
    /// `s3:`: `https://host/bucket/prefix`, `http://127.0.0.1:3900/bucket`,
    /// or `//bucket/prefix` for AWS.
    pub fn s3(spec: &str, options: &S3Options) -> Result<Self, BackendError> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
        let invalid = |why: &str| BackendError::Other(format!("invalid S3 URL s3:{spec}: {why}"));
        let mut builder = AmazonS3Builder::from_env();
        let (endpoint, rest) = if let Some(rest) = spec.strip_prefix("//") {
            (None, rest)
        } else if let Some((scheme, rest)) = spec.split_once("://") {
            let (host, rest) = rest.split_once('/').unwrap_or((rest, ""));
            if scheme != "https" && scheme != "http" {
                return Err(invalid("scheme must be http or https"));
            }
            if scheme == "http" {
                let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
                if !is_loopback(hostname) && !options.allow_http {
                    return Err(invalid(
                        "plain HTTP is allowed only to loopback; pass --allow-http to override",
                    ));
                }
            }
            (Some((format!("{scheme}://{host}"), scheme == "http")), rest)
        } else {
            return Err(invalid(
                "expected s3:https://HOST/BUCKET/PREFIX or s3://BUCKET/PREFIX",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("missing bucket"));
        }
        builder = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(200),
                    max_backoff: std::time::Duration::from_secs(20),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: std::time::Duration::from_secs(180),
            });
        let region = options
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
        if let Some(region) = region {
            builder = builder.with_region(region);
        } else if endpoint.is_some() {
            builder = builder.with_region("us-east-1");
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let location = match &endpoint {
            Some((url, _)) => format!("s3:{url}/{bucket}/{prefix}"),
            None => format!("s3://{bucket}/{prefix}"),
        };
        if let Some((url, http)) = endpoint {
            builder = builder
                .with_endpoint(url)
                .with_virtual_hosted_style_request(options.virtual_hosted_style)
                .with_allow_http(http);
        }
        let store = builder
            .build()
            .map_err(|e| BackendError::Other(format!("configuring S3: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            location: location.trim_end_matches('/').to_owned(),
            runtime: runtime(),
            atomic_create: OnceLock::new(),
        })
    }

    fn key(&self, path: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(path)
        } else {
            StorePath::from(format!("{}/{path}", self.prefix))
        }
    }

    /// Creates a random key twice with `PutMode::Create`; a store that lets
    /// the second succeed ignores `If-None-Match` (Garage does), so the
    /// engine must not rely on it there.
    fn probe_atomic_create(&self) -> bool {
        let path = format!("locks/probe-{:016x}", rand::random::<u64>());
        let key = self.key(&path);
        let create = || PutOptions {
            mode: object_store::PutMode::Create,
            ..PutOptions::default()
        };
        let honoured = self.runtime.block_on(async {
            if self
                .store
                .put_opts(&key, PutPayload::from_static(b"1"), create())
                .await
                .is_err()
            {
                return false;
            }
            matches!(
                self.store
                    .put_opts(&key, PutPayload::from_static(b"2"), create())
                    .await,
                Err(object_store::Error::AlreadyExists { .. })
            )
        });
        let _ = self.runtime.block_on(self.store.delete(&key));
        honoured
    }
}

fn map_err(path: &str, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound(path.to_owned()),
        object_store::Error::AlreadyExists { .. } => BackendError::AlreadyExists(path.to_owned()),
        other => BackendError::Other(format!("{path}: {other}")),
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let key = self.key(path);
        let len = data.len() as u64;
        let mode = match mode {
            PutMode::Create if self.has_atomic_create() => object_store::PutMode::Create,
            _ => object_store::PutMode::Overwrite,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.runtime.block_on(async {
            self.store
                .put_opts(&key, PutPayload::from_bytes(data), opts)
                .await
                .map_err(|e| map_err(path, e))?;
            // Verify the store holds what we sent before anyone may rely on
            // it (a snapshot is written only after this returns).
            let meta = self.store.head(&key).await.map_err(|e| map_err(path, e))?;
            if meta.size != len {
                return Err(BackendError::Other(format!(
                    "{path}: stored size {} differs from uploaded {len}",
                    meta.size
                )));
            }
            Ok(())
        })
    }

    fn get(&self, path: &str) -> Result<Bytes, BackendError> {
        let key = self.key(path);
        self.runtime.block_on(async {
            let result = self.store.get(&key).await.map_err(|e| map_err(path, e))?;
            result.bytes().await.map_err(|e| map_err(path, e))
        })
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let key = self.key(path);
        let end = offset
            .checked_add(len)
            .ok_or_else(|| BackendError::Other(format!("{path}: range overflow")))?;
        let bytes = self
            .runtime
            .block_on(self.store.get_range(&key, offset..end))
            .map_err(|e| map_err(path, e))?;
        if bytes.len() as u64 != len {
            return Err(BackendError::Other(format!(
                "{path}: short read at {offset}+{len}"
            )));
        }
        Ok(bytes)
    }

    fn head(&self, path: &str) -> Result<u64, BackendError> {
        let key = self.key(path);
        self.runtime
            .block_on(self.store.head(&key))
            .map(|m| m.size)
            .map_err(|e| map_err(path, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let list_prefix = self.key(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&list_prefix)).try_collect())
            .map_err(|e| map_err(prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let rel = full.strip_prefix(&strip)?.to_owned();
                Some(ObjectInfo {
                    path: rel,
                    size: m.size,
                })
            })
            .collect())
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        let key = self.key(path);
        match self.runtime.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(path, e)),
        }
    }

    fn has_atomic_create(&self) -> bool {
        *self
            .atomic_create
            .get_or_init(|| self.probe_atomic_create())
    }
}
