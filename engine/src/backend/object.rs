//! Backend over the `object_store` crate: S3-compatible stores (AWS S3,
//! Cloudflare R2, Backblaze B2, MinIO, Garage) and an in-memory store for
//! unit tests.
//!
//! `object_store` is async; the engine's pipeline is threads and rayon. This
//! adapter owns a small tokio runtime and blocks on it, so async stays an
//! implementation detail of remote storage.
//!
//! # Behaviour on remote stores
//!
//! - **Addressing**: custom endpoints (`s3:https://HOST/BUCKET/PREFIX`) use
//!   path-style requests unless virtual-hosted style is asked for; `s3://`
//!   means AWS (virtual-hosted style, region from `AWS_REGION` /
//!   `AWS_DEFAULT_REGION`, else `us-east-1`). Plain HTTP is accepted only
//!   to loopback addresses unless `--allow-http`.
//! - **Retries**: every request is retried by `object_store` on 5xx, 429,
//!   408, connection failures and, for idempotent requests (GET, HEAD, PUT
//!   that overwrites, multipart parts), timeouts and dropped connections,
//!   with exponential backoff and decorrelated jitter (200 ms doubling up to
//!   20 s). The number of retries is [`DEFAULT_MAX_RETRIES`], or
//!   `VAULT_S3_MAX_RETRIES`. `object_store` does not retry transport
//!   failures of DELETE, of create-only PUTs, nor a listing whose body is
//!   cut short; this adapter retries those operations as a whole up to
//!   [`EXTRA_ATTEMPTS`] more times (fewer if the budget is smaller), and
//!   resolves the ambiguity of a create-only PUT whose first attempt may
//!   have landed by comparing the stored bytes.
//! - **Retry window**: those retries take only seconds when the endpoint
//!   refuses connections at once (a restarting server, a failover, a
//!   network blip), too little for a nightly backup to ride out. So every
//!   operation (GET, ranged GET, HEAD, PUT, create-only PUT, multipart
//!   upload, DELETE, LIST) that fails with a transport error or a 5xx/429
//!   answer is run again as a whole, with backoff, until
//!   [`DEFAULT_RETRY_SECS`] (`VAULT_S3_RETRY_SECS`) have passed since it
//!   started: a floor in wall time, whatever the retry count. It does not
//!   apply to a stalled endpoint (see `stall`: that fails as before), nor
//!   once the command is interrupted (Ctrl-C/SIGTERM, [`S3Options::stop`]):
//!   then no further attempt starts and the wait between attempts ends at
//!   once. `VAULT_S3_MAX_RETRIES=0` turns all retrying off, the window
//!   included; `VAULT_S3_RETRY_SECS=0` leaves only the counted retries.
//! - **Timeouts**: connecting times out after 10 s. A request times out
//!   when nothing moves for [`DEFAULT_IDLE_TIMEOUT_SECS`]
//!   (`VAULT_S3_TIMEOUT`, seconds): no byte of its body taken, no byte of
//!   the answer received. A slow upload never times out while it moves.
//!   After three (`stall::STALLS_IN_A_ROW`) idle timeouts in a row the endpoint
//!   counts as stalled and requests fail without further retries, so an
//!   endpoint that accepts connections and never answers fails a command
//!   in about a minute and a half, not after every retry (see `stall`).
//! - **Credentials**: from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (or
//!   [`S3Options`], from the config's key files), a web identity token or
//!   container credentials (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//!   `AWS_CONTAINER_CREDENTIALS_*`). With none of those, the EC2 instance
//!   metadata service is asked only if `VAULT_S3_INSTANCE_CREDENTIALS=1`;
//!   otherwise opening fails saying what is missing.
//! - **Uploads**: verified twice: requests are signed with the payload's
//!   SHA-256 (`x-amz-content-sha256`), which the store checks against the
//!   body it received, and the stored length is read back with HEAD before
//!   `put` returns. Objects of [`MULTIPART_THRESHOLD`] bytes or more
//!   (`VAULT_S3_MULTIPART_THRESHOLD_MIB`) under `data/` are uploaded in
//!   [`MULTIPART_PART_SIZE`] parts; a failed multipart upload is aborted.
//! - **Conditional create**: `If-None-Match: *` is used only where a probe
//!   showed the store honours it (Garage silently ignores it).
//! - **Object Lock** (repo-format.md §11.8): once
//!   [`Backend::set_object_lock`] is called, every upload outside `locks/`
//!   carries a retention of its own (now + N days, computed per request)
//!   and is read back with HEAD to confirm the store applied it. Locked
//!   uploads never use multipart (one PUT takes up to 5 GiB; packs are far
//!   smaller), so each object is locked by the request that creates it.

use super::object_lock::{self, CaptureRetention, LockingConnector, RetainUntil, Signing};
use super::{Backend, BackendError, ObjectInfo, ObjectLock, PutMode, RequestCounts};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Retries per request unless `VAULT_S3_MAX_RETRIES` says otherwise.
pub const DEFAULT_MAX_RETRIES: usize = 8;
/// Seconds a request may go without progress unless `VAULT_S3_TIMEOUT`
/// says otherwise.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Whole-operation attempts added for failures `object_store` leaves
/// unretried (see the module documentation).
pub const EXTRA_ATTEMPTS: usize = 2;
/// Seconds an operation failing with transport errors or 5xx answers is
/// retried at least, unless `VAULT_S3_RETRY_SECS` says otherwise.
pub const DEFAULT_RETRY_SECS: u64 = 60;
/// Longest wait between two attempts of the retry window.
const WINDOW_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Size from which packs are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;
/// Part size of multipart uploads (above every store's 5 MiB minimum, and
/// equal for all but the last part, as R2 requires).
pub const MULTIPART_PART_SIZE: usize = 16 * 1024 * 1024;

/// Settings for S3-compatible stores that are not part of the URL.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Region; defaults to `AWS_REGION`/`AWS_DEFAULT_REGION`, then
    /// `us-east-1`.
    pub region: Option<String>,
    /// Access key id; defaults to `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret key; defaults to `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP to a non-loopback endpoint.
    pub allow_http: bool,
    /// Use virtual-hosted-style requests (`https://BUCKET.HOST/`) instead of
    /// path-style for a custom endpoint.
    pub virtual_hosted_style: bool,
    /// Retries per request; defaults to `VAULT_S3_MAX_RETRIES`, then
    /// `DEFAULT_MAX_RETRIES`.
    pub max_retries: Option<usize>,
    /// How long a request may go without progress; defaults to
    /// `VAULT_S3_TIMEOUT` (seconds), then `DEFAULT_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Option<Duration>,
    /// Size from which packs use multipart uploads; defaults to
    /// `VAULT_S3_MULTIPART_THRESHOLD_MIB`, then `MULTIPART_THRESHOLD`.
    pub multipart_threshold: Option<usize>,
    /// How long failing operations are retried at least; defaults to
    /// `VAULT_S3_RETRY_SECS`, then `DEFAULT_RETRY_SECS`.
    pub retry_window: Option<Duration>,
    /// Once set (Ctrl-C), no operation is retried any more.
    pub stop: Option<Arc<AtomicBool>>,
    /// PEM files' contents: certificates trusted as roots besides the
    /// system's, for an endpoint whose certificate a private CA signed.
    pub ca_certificates: Vec<Vec<u8>>,
}

/// A repository in an `object_store` store.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    runtime: tokio::runtime::Runtime,
    atomic_create: OnceLock<bool>,
    extra_attempts: usize,
    /// See "Retry window" in the module documentation; zero: none.
    retry_window: Duration,
    stop: Option<Arc<AtomicBool>>,
    /// Tells whether the endpoint stalled; `None` for the in-memory store.
    transport: Option<super::stall::Transport>,
    multipart_threshold: usize,
    /// Signing for Object Lock requests; `None` for the in-memory store,
    /// which cannot lock.
    signing: Option<Arc<Signing>>,
    /// The HTTP client the lock probe goes through.
    http: Option<object_store::client::HttpClient>,
    object_lock: RwLock<Option<ObjectLock>>,
    requests: Counter,
}

/// [`RequestCounts`] as they accumulate.
#[derive(Debug, Default)]
struct Counter {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

impl Counter {
    fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
        }
    }
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

/// Whether `host` (without port) names this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `host[:port]`, `[v6]` or `[v6]:port`.
fn hostname_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A number from the environment; unset or empty means `None`.
fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, BackendError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| BackendError::Other(format!("{name}={v} is not a valid number"))),
        _ => Ok(None),
    }
}

/// Refuses to go on without S3 credentials: `object_store` would then ask
/// the EC2 instance metadata service, which off EC2 fails after a wait with
/// an error that names neither what is missing nor how to give it.
fn check_credentials(options: &S3Options) -> Result<(), BackendError> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let key_id = options.access_key_id.is_some() || set("AWS_ACCESS_KEY_ID");
    let secret = options.secret_access_key.is_some() || set("AWS_SECRET_ACCESS_KEY");
    let how = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id_file and secret_access_key_file in the [repository] section of the config";
    match (key_id, secret) {
        (true, true) => return Ok(()),
        (true, false) => {
            return Err(BackendError::Other(format!(
                "S3 credentials incomplete: an access key id is set but no secret access key (AWS_SECRET_ACCESS_KEY or secret_access_key_file); {how}"
            )));
        }
        (false, true) => {
            return Err(BackendError::Other(format!(
                "S3 credentials incomplete: a secret access key is set but no access key id (AWS_ACCESS_KEY_ID or access_key_id_file); {how}"
            )));
        }
        (false, false) => {}
    }
    // Other sources object_store takes from the environment, each set on
    // purpose: a web identity (EKS), container credentials (ECS), no
    // signing at all (a public bucket), or the instance's role, opted in.
    let explicit = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|n| set(n))
        || std::env::var("AWS_SKIP_SIGNATURE").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("VAULT_S3_INSTANCE_CREDENTIALS")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    if explicit {
        return Ok(());
    }
    Err(BackendError::Other(format!(
        "no S3 credentials: {how} (on EC2, VAULT_S3_INSTANCE_CREDENTIALS=1 uses the instance's role instead)"
    )))
}

/// A failure that `object_store` may not have retried: no HTTP status was
/// received (connection dropped, timed out, body cut short).
fn is_transport(e: &object_store::Error) -> bool {
    if !matches!(e, object_store::Error::Generic { .. }) {
        return false;
    }
    let text = e.to_string();
    !(text.contains("Server returned") || text.contains("status code"))
}

/// An answer saying the server failed (5xx, 429, or a 200 whose body holds
/// an error) that `object_store` stopped retrying.
fn is_server_error(e: &object_store::Error) -> bool {
    if !matches!(e, object_store::Error::Generic { .. }) {
        return false;
    }
    let text = e.to_string();
    text.contains("Server returned error response")
        || text
            .split_once("status code: ")
            .is_some_and(|(_, code)| code.starts_with('5') || code.starts_with("429"))
}

/// The parsed part of a repository URL after `s3:`.
#[derive(Debug, PartialEq, Eq)]
struct S3Url {
    /// `scheme://authority` of a custom endpoint; `None` for AWS.
    endpoint: Option<(String, String)>,
    bucket: String,
    prefix: String,
}

/// `url` with any `user:password@` in its authority replaced by `***@`:
/// for messages about a URL someone put credentials into.
#[must_use]
pub fn redact_url(url: &str) -> String {
    // `scheme://` or, for `s3://BUCKET`, a bare `//`.
    let (scheme, rest) = match url.split_once("//") {
        Some((scheme, rest)) if scheme.is_empty() || scheme.ends_with(':') => (scheme, rest),
        _ => return url.to_owned(),
    };
    // A query or fragment may carry a token (`?X-Amz-Security-Token=`):
    // not shown either. (S3 repository URLs refuse both.)
    let (rest, hidden) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], format!("{}***", &rest[at..=at])),
        None => (rest, String::new()),
    };
    // Everything up to the last `@` is taken for credentials, even past a
    // `/`: a password may hold an unencoded one. Over-redacting a path
    // with an `@` in it costs nothing.
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}//***@{host}{hidden}"),
        None => format!("{scheme}//{rest}{hidden}"),
    }
}

fn parse_s3_url(spec: &str, allow_http: bool) -> Result<S3Url, BackendError> {
    let shown = redact_url(spec);
    let invalid = |why: &str| BackendError::Other(format!("invalid S3 URL s3:{shown}: {why}"));
    // Taken as part of the prefix, `?token=X` silently became a directory
    // name in the bucket, and was echoed in messages.
    if spec.contains(['?', '#']) {
        return Err(invalid(
            "a query (`?`) or fragment (`#`) has no meaning in a repository URL; \
             credentials and session tokens go in AWS_* environment variables",
        ));
    }
    let (endpoint, rest) = if let Some(rest) = spec.strip_prefix("//") {
        if rest.contains('@') {
            return Err(invalid(
                "credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        (None, rest)
    } else if let Some((scheme, rest)) = spec.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(invalid("scheme must be http or https"));
        }
        let (authority, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains('@') {
            return Err(invalid(
                "credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        if scheme == "http" && !is_loopback(hostname_of(authority)) && !allow_http {
            return Err(invalid(
                "plain HTTP is allowed only to loopback; pass --allow-http to override",
            ));
        }
        (Some((scheme, authority.to_owned())), rest)
    } else {
        return Err(invalid(
            "expected s3:https://HOST/BUCKET/PREFIX or s3://BUCKET/PREFIX",
        ));
    };
    let rest = rest.trim_start_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("missing bucket"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(invalid(
            "the prefix must not contain empty, `.` or `..` parts",
        ));
    }
    Ok(S3Url {
        endpoint,
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// The retries of one operation: the counted extra attempts for failures
/// `object_store` leaves unretried, and the retry window (see the module
/// documentation).
struct Retry<'a> {
    backend: &'a ObjectBackend,
    extra: usize,
    attempts: usize,
    started: Instant,
}

impl Retry<'_> {
    /// After the operation failed with `e`: whether to run it again, having
    /// waited for the backoff.
    async fn again_after(&mut self, e: &object_store::Error) -> bool {
        let backend = self.backend;
        // A stalled endpoint fails at once (see `stall`), however it is
        // retried: further attempts would only repeat that.
        if backend.stalled() {
            return false;
        }
        // Kept after Ctrl-C: a stopping command still uploads what makes
        // its work reusable, and these are a few short attempts.
        let counted = self.attempts < self.extra && is_transport(e);
        let in_window = !backend.interrupted()
            && self.started.elapsed() < backend.retry_window
            && (is_transport(e) || is_server_error(e));
        if !counted && !in_window {
            return false;
        }
        self.attempts += 1;
        tracing::info!(
            "retrying (attempt {}, {:.0?} since the first) after: {e}",
            self.attempts + 1,
            self.started.elapsed()
        );
        let shift = u32::try_from(self.attempts.min(8)).unwrap_or(8);
        let backoff = (Duration::from_millis(200) * (1 << shift)).min(WINDOW_MAX_BACKOFF);
        let jitter = Duration::from_millis(rand::random_range(0..200u64));
        backend.pause(backoff + jitter).await;
        counted || !backend.interrupted()
    }
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
            extra_attempts: 0,
            retry_window: Duration::ZERO,
            stop: None,
            transport: None,
            multipart_threshold: usize::MAX,
            requests: Counter::default(),
            signing: None,
            http: None,
            object_lock: RwLock::new(None),
        }
    }

    /// An S3-compatible store from the part of a repository URL after
    /// `s3:`: `https://host/bucket/prefix`, `http://127.0.0.1:3900/bucket`,
    /// or `//bucket/prefix` for AWS.
    pub fn s3(spec: &str, options: &S3Options) -> Result<Self, BackendError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
        let url = parse_s3_url(spec, options.allow_http)?;
        let max_retries = match options.max_retries {
            Some(n) => n,
            None => env_number("VAULT_S3_MAX_RETRIES")?.unwrap_or(DEFAULT_MAX_RETRIES),
        };
        let timeout = match options.idle_timeout {
            Some(t) => t,
            None => Duration::from_secs(
                env_number("VAULT_S3_TIMEOUT")?.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS),
            ),
        }
        .max(Duration::from_millis(100));
        let retry_window = if max_retries == 0 {
            Duration::ZERO
        } else {
            match options.retry_window {
                Some(w) => w,
                None => Duration::from_secs(
                    env_number("VAULT_S3_RETRY_SECS")?.unwrap_or(DEFAULT_RETRY_SECS),
                ),
            }
        };
        check_credentials(options)?;
        let multipart_threshold = match options.multipart_threshold {
            Some(n) => n,
            None => env_number::<usize>("VAULT_S3_MULTIPART_THRESHOLD_MIB")?
                .map_or(MULTIPART_THRESHOLD, |mib| mib.saturating_mul(1024 * 1024)),
        }
        .max(MULTIPART_PART_SIZE + 1);

        // Credentials, session tokens, container/web-identity settings and
        // the like come from the usual AWS_* variables; where the data goes
        // (endpoint, bucket, addressing, HTTP) comes only from the URL and
        // vault's flags.
        let mut builder = AmazonS3Builder::new();
        for (key, value) in std::env::vars() {
            let Some(name) = key.strip_prefix("AWS_") else {
                continue;
            };
            let Ok(config_key) = format!("aws_{}", name.to_ascii_lowercase()).parse() else {
                continue;
            };
            match config_key {
                AmazonS3ConfigKey::Endpoint
                | AmazonS3ConfigKey::Bucket
                | AmazonS3ConfigKey::VirtualHostedStyleRequest
                | AmazonS3ConfigKey::ConditionalPut
                | AmazonS3ConfigKey::Client(_) => {}
                other => builder = builder.with_config(other, value),
            }
        }
        // Requests go through vault's own transport (`stall`), built from
        // these settings; `with_client_options` replaces every client option
        // set before it, including allow_http: everything goes into this
        // one value.
        let allow_http = url.endpoint.as_ref().is_some_and(|(s, _)| s == "http");
        let transport = super::stall::Transport::new(timeout, allow_http, &options.ca_certificates)
            .map_err(|e| BackendError::Other(format!("configuring S3: {e}")))?;
        let client = object_store::ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout_disabled();
        let client_for_probe = client.clone();
        builder = builder
            .with_client_options(client)
            .with_bucket_name(&url.bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(20),
                    base: 2.0,
                },
                max_retries,
                // Stalls end sooner (see `stall`); this bounds retrying
                // answers such as 503 Slow Down.
                retry_timeout: Duration::from_secs(600).max(timeout * 3),
            });
        let region = options
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(&region);
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let bucket = &url.bucket;
        let location = match &url.endpoint {
            Some((scheme, authority)) => format!("s3:{scheme}://{authority}/{bucket}"),
            None => format!("s3://{bucket}"),
        };
        match &url.endpoint {
            Some((scheme, authority)) if options.virtual_hosted_style => {
                builder = builder
                    .with_endpoint(format!("{scheme}://{bucket}.{authority}"))
                    .with_virtual_hosted_style_request(true);
            }
            Some((scheme, authority)) => {
                builder = builder
                    .with_endpoint(format!("{scheme}://{authority}"))
                    .with_virtual_hosted_style_request(false);
            }
            // AWS: virtual-hosted style, as AWS recommends.
            None => builder = builder.with_virtual_hosted_style_request(true),
        }
        let bucket_url = match &url.endpoint {
            Some((scheme, authority)) if options.virtual_hosted_style => {
                format!("{scheme}://{bucket}.{authority}")
            }
            Some((scheme, authority)) => format!("{scheme}://{authority}/{bucket}"),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let signing = Arc::new(Signing {
            credentials: OnceLock::new(),
            region,
            bucket_url,
        });
        let http = {
            use object_store::client::HttpConnector;
            LockingConnector(signing.clone(), transport.clone())
                .connect(&client_for_probe)
                .map_err(|e| BackendError::Other(format!("configuring S3: {e}")))?
        };
        let store = builder
            .with_http_connector(LockingConnector(signing.clone(), transport.clone()))
            .build()
            .map_err(|e| BackendError::Other(format!("configuring S3: {e}")))?;
        let _ = signing.credentials.set(store.credentials().clone());
        Ok(Self {
            signing: Some(signing),
            http: Some(http),
            object_lock: RwLock::new(None),
            store: Arc::new(store),
            location: if url.prefix.is_empty() {
                location
            } else {
                format!("{location}/{}", url.prefix)
            },
            prefix: url.prefix,
            runtime: runtime(),
            atomic_create: OnceLock::new(),
            extra_attempts: EXTRA_ATTEMPTS.min(max_retries),
            retry_window,
            stop: options.stop.clone(),
            transport: Some(transport),
            multipart_threshold,
            requests: Counter::default(),
        })
    }

    fn key(&self, path: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(path)
        } else {
            StorePath::from(format!("{}/{path}", self.prefix))
        }
    }

    /// Runs `op` again while it fails with a transport error, up to
    /// `extra_attempts` times (for operations `object_store` does not retry
    /// then), and within the retry window.
    async fn again<T, F, Fut>(&self, op: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        self.retried(self.extra_attempts, op).await
    }

    /// Runs `op` again within the retry window only: for operations whose
    /// every failure `object_store` already retried as often as it does.
    async fn persist<T, F, Fut>(&self, op: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        self.retried(0, op).await
    }

    async fn retried<T, F, Fut>(&self, extra: usize, mut op: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut retry = self.retry(extra);
        loop {
            match op().await {
                Err(e) => {
                    if !retry.again_after(&e).await {
                        return Err(e);
                    }
                }
                ok => return ok,
            }
        }
    }

    /// The retry state of one operation that starts now.
    fn retry(&self, extra: usize) -> Retry<'_> {
        Retry {
            backend: self,
            extra,
            attempts: 0,
            started: Instant::now(),
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    fn stalled(&self) -> bool {
        self.transport
            .as_ref()
            .is_some_and(super::stall::Transport::is_stalled)
    }

    /// Sleeps for `delay`, or until the command is interrupted.
    async fn pause(&self, delay: Duration) {
        const POLL: Duration = Duration::from_millis(50);
        let end = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= end || self.interrupted() {
                return;
            }
            tokio::time::sleep((end - now).min(POLL)).await;
        }
    }

    /// Creates a random key twice with `PutMode::Create`; a store that lets
    /// the second succeed ignores `If-None-Match` (Garage does), so the
    /// engine must not rely on it there. Any failure counts as "not
    /// honoured", the safe answer.
    fn probe_atomic_create(&self) -> bool {
        let path = format!("locks/probe-{:016x}", rand::random::<u64>());
        let key = self.key(&path);
        let create = || PutOptions {
            mode: object_store::PutMode::Create,
            ..PutOptions::default()
        };
        // Retried within the window, so that an endpoint briefly away does
        // not cost the atomic protocol; a retry after an attempt that landed
        // meets "already exists", which counts as "not honoured" for the
        // first and as "honoured" for the second: both right.
        let key_ref = &key;
        let honoured = self.runtime.block_on(async {
            let put = |body: &'static [u8]| {
                self.persist(move || {
                    Counter::add(&self.requests.put, 1);
                    self.store
                        .put_opts(key_ref, PutPayload::from_static(body), create())
                })
            };
            if put(b"1").await.is_err() {
                return false;
            }
            matches!(
                put(b"2").await,
                Err(object_store::Error::AlreadyExists { .. })
            )
        });
        let _ = self.runtime.block_on(self.again(|| {
            Counter::add(&self.requests.delete, 1);
            self.store.delete(&key)
        }));
        tracing::debug!("{}: conditional create honoured: {honoured}", self.location);
        honoured
    }

    /// A create-only PUT. Its transport failures are retried here. When the
    /// object turns out to exist, an earlier attempt of ours may have landed
    /// (every object vault creates holds unique or content-addressed
    /// bytes): it counts as created by us only if it holds our bytes.
    /// Returns whether this call stored the object (false: it was there).
    async fn put_create(
        &self,
        path: &str,
        key: &StorePath,
        data: &Bytes,
        extensions: &http::Extensions,
    ) -> Result<bool, BackendError> {
        let mut retry = self.retry(self.extra_attempts);
        loop {
            let opts = PutOptions {
                mode: object_store::PutMode::Create,
                extensions: extensions.clone(),
                ..PutOptions::default()
            };
            Counter::add(&self.requests.put, 1);
            match self
                .store
                .put_opts(key, PutPayload::from_bytes(data.clone()), opts)
                .await
            {
                Ok(_) => return Ok(true),
                // Also after a first attempt: object_store itself retries a
                // create answered with 5xx, which may have been stored.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let existing = self
                        .again(|| async {
                            Counter::add(&self.requests.get, 1);
                            read_capped(self.store.get(key).await?, data.len() as u64).await
                        })
                        .await
                        .map_err(|e| self.fail(path, e))?;
                    return if existing.is_ok_and(|existing| existing == *data) {
                        Ok(false)
                    } else {
                        Err(BackendError::AlreadyExists(path.to_owned()))
                    };
                }
                Err(e) => {
                    if !retry.again_after(&e).await {
                        return Err(self.fail(path, e));
                    }
                }
            }
        }
    }

    /// Uploads in [`MULTIPART_PART_SIZE`] parts, two at a time; aborts the
    /// upload on failure so no parts are left billed. A failed upload is
    /// started over within the retry window.
    async fn put_multipart(
        &self,
        path: &str,
        key: &StorePath,
        data: &Bytes,
    ) -> Result<(), BackendError> {
        self.persist(|| self.put_multipart_once(path, key, data))
            .await
            .map_err(|e| self.fail(path, e))
    }

    async fn put_multipart_once(
        &self,
        path: &str,
        key: &StorePath,
        data: &Bytes,
    ) -> object_store::Result<()> {
        // Create, one request per part, then complete (or abort).
        let parts = data.len().div_ceil(MULTIPART_PART_SIZE) as u64;
        Counter::add(&self.requests.put, parts + 2);
        let mut upload = self.store.put_multipart(key).await?;
        let mut result = Ok(());
        let mut pending = Vec::new();
        for start in (0..data.len()).step_by(MULTIPART_PART_SIZE) {
            let end = (start + MULTIPART_PART_SIZE).min(data.len());
            pending.push(upload.put_part(PutPayload::from_bytes(data.slice(start..end))));
            if pending.len() == 2 {
                result = futures::future::try_join_all(pending.drain(..))
                    .await
                    .map(|_| ());
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() && !pending.is_empty() {
            result = futures::future::try_join_all(pending.drain(..))
                .await
                .map(|_| ());
        }
        drop(pending);
        if result.is_ok() {
            result = upload.complete().await.map(|_| ());
        }
        if let Err(e) = result {
            if let Err(abort) = upload.abort().await {
                tracing::warn!("aborting the multipart upload of {path}: {abort}");
            }
            return Err(e);
        }
        Ok(())
    }
}

impl ObjectBackend {
    /// The error of an operation on `path` that failed for good: when the
    /// store kept failing through the retry window, it says how long that
    /// was and how to lengthen it, so that an outage longer than the window
    /// is not mistaken for one vault never retried.
    fn fail(&self, path: &str, e: object_store::Error) -> BackendError {
        let retried = !self.interrupted()
            && !self.stalled()
            && !self.retry_window.is_zero()
            && (is_transport(&e) || is_server_error(&e));
        match map_err(path, e) {
            BackendError::Other(text) if retried => BackendError::Other(format!(
                "{text} (gave up after retrying for at least {}s; VAULT_S3_RETRY_SECS sets how long)",
                self.retry_window.as_secs()
            )),
            other => other,
        }
    }
}

/// The body of `got`, or `Err(size)` if it holds more than `max_len` bytes:
/// judged from the length the store announces before any of the body is
/// read, and never reading past `max_len` should the body be longer than
/// announced.
async fn read_capped(
    got: object_store::GetResult,
    max_len: u64,
) -> object_store::Result<Result<Bytes, u64>> {
    use futures::StreamExt;
    let announced = got.range.end.saturating_sub(got.range.start);
    if announced > max_len {
        return Ok(Err(announced));
    }
    let mut body = bytes::BytesMut::with_capacity(usize::try_from(announced).unwrap_or(0));
    let mut stream = got.into_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        let total = (body.len() + piece.len()) as u64;
        if total > max_len {
            return Ok(Err(total));
        }
        body.extend_from_slice(&piece);
    }
    Ok(Ok(body.freeze()))
}

/// An error's text followed by each cause it does not already spell out:
/// object_store's "error sending request" alone does not say whether the
/// connection was refused, reset or timed out.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

fn map_err(path: &str, e: object_store::Error) -> BackendError {
    // S3 answers 404 for a missing bucket too; that is no missing object
    // (no repository, exit 4/10) but a wrong URL or name.
    if e.to_string().contains("NoSuchBucket") {
        return BackendError::Other(format!(
            "{path}: the bucket does not exist (NoSuchBucket): check the repository URL"
        ));
    }
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound(path.to_owned()),
        object_store::Error::AlreadyExists { .. } => BackendError::AlreadyExists(path.to_owned()),
        other => BackendError::Other(format!("{path}: {}", with_causes(&other))),
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let key = self.key(path);
        let len = data.len() as u64;
        let create = mode == PutMode::Create && self.has_atomic_create();
        // Lock files are rewritten and removed all the time; locking them
        // would only pile up versions nobody can delete.
        let retain = if path.starts_with("locks/") {
            None
        } else {
            self.object_lock
                .read()
                .expect("object lock setting is never poisoned")
                .map(|lock| RetainUntil {
                    mode: lock.mode,
                    until: lock.retain_until(jiff::Timestamp::now()),
                })
        };
        let mut extensions = http::Extensions::new();
        if let Some(retain) = retain {
            extensions.insert(retain);
        }
        self.runtime.block_on(async {
            let mut fresh = true;
            if retain.is_none()
                && data.len() >= self.multipart_threshold
                && path.starts_with("data/")
            {
                // Content-addressed packs: overwriting one is harmless, so
                // create-only semantics are not needed for them.
                self.put_multipart(path, &key, &data).await?;
            } else if create {
                fresh = self.put_create(path, &key, &data, &extensions).await?;
            } else {
                let opts = PutOptions {
                    mode: object_store::PutMode::Overwrite,
                    extensions: extensions.clone(),
                    ..PutOptions::default()
                };
                self.persist(|| {
                    Counter::add(&self.requests.put, 1);
                    self.store
                        .put_opts(&key, PutPayload::from_bytes(data.clone()), opts.clone())
                })
                .await
                .map_err(|e| self.fail(path, e))?;
            }
            // Verify the store holds what we sent before anyone may rely on
            // it (a snapshot is written only after this returns), and, when
            // locking, that it holds it under the retention we asked for.
            let capture = CaptureRetention::default();
            let mut head_extensions = http::Extensions::new();
            if retain.is_some() && fresh {
                head_extensions.insert(capture.clone());
            }
            let head = GetOptions {
                head: true,
                extensions: head_extensions,
                ..GetOptions::default()
            };
            let meta = self
                .persist(|| {
                    Counter::add(&self.requests.head, 1);
                    self.store.get_opts(&key, head.clone())
                })
                .await
                .map_err(|e| self.fail(path, e))?
                .meta;
            // An object that was already there (same content-addressed
            // bytes) keeps the retention of its own upload, like any
            // deduplicated data (repo-format.md §11.8).
            if let Some(retain) = retain.filter(|_| fresh) {
                let reported = capture
                    .0
                    .lock()
                    .expect("capture lock is never poisoned")
                    .take();
                object_lock::check_reported(path, reported, retain)?;
            }
            if meta.size != len {
                return Err(BackendError::Other(format!(
                    "{path}: stored size {} differs from uploaded {len}",
                    meta.size
                )));
            }
            Ok(())
        })
        // "Not found" to a write is the bucket (S3's NoSuchBucket), not the
        // object: callers would report a missing object (exit 4).
        .map_err(|e| match e {
            BackendError::NotFound(_) => BackendError::Other(format!(
                "{path}: the store answered \"not found\" to a write: does the bucket of {} exist, and may these credentials use it?",
                self.location
            )),
            e => e,
        })
    }

    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        let key = self.key(path);
        self.runtime
            .block_on(self.persist(|| async {
                Counter::add(&self.requests.get, 1);
                read_capped(self.store.get(&key).await?, max_len).await
            }))
            .map_err(|e| self.fail(path, e))?
            .map_err(|size| BackendError::too_large(path, size, max_len))
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let key = self.key(path);
        let end = offset
            .checked_add(len)
            .ok_or_else(|| BackendError::Other(format!("{path}: range overflow")))?;
        let bytes = self
            .runtime
            .block_on(self.persist(|| {
                Counter::add(&self.requests.get, 1);
                self.store.get_range(&key, offset..end)
            }))
            .map_err(|e| self.fail(path, e))?;
        if bytes.len() as u64 != len {
            return Err(BackendError::Truncated(format!(
                "{path} is shorter than expected: reading {len} bytes at {offset} returned {}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn head(&self, path: &str) -> Result<u64, BackendError> {
        let key = self.key(path);
        self.runtime
            .block_on(self.persist(|| {
                Counter::add(&self.requests.head, 1);
                self.store.head(&key)
            }))
            .map(|m| m.size)
            .map_err(|e| self.fail(path, e))
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
            .block_on(self.again(|| async {
                Counter::add(&self.requests.list, 1);
                let metas: Vec<object_store::ObjectMeta> =
                    self.store.list(Some(&list_prefix)).try_collect().await?;
                // S3 returns at most 1000 keys per LIST request.
                let more_pages = metas.len().saturating_sub(1) / 1000;
                Counter::add(&self.requests.list, more_pages as u64);
                Ok(metas)
            }))
            .map_err(|e| self.fail(prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let rel = full.strip_prefix(&strip)?.to_owned();
                Some(ObjectInfo {
                    path: rel,
                    size: m.size,
                    modified: jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                        .ok(),
                })
            })
            .collect())
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        let key = self.key(path);
        match self.runtime.block_on(self.again(|| {
            Counter::add(&self.requests.delete, 1);
            self.store.delete(&key)
        })) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(path, e)),
        }
    }

    fn has_atomic_create(&self) -> bool {
        *self
            .atomic_create
            .get_or_init(|| self.probe_atomic_create())
    }

    fn requests(&self) -> Option<RequestCounts> {
        Some(self.requests.snapshot())
    }

    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        let (Some(signing), Some(http)) = (&self.signing, &self.http) else {
            return Err(BackendError::Unsupported(format!(
                "{} cannot lock objects",
                self.location
            )));
        };
        if lock.days == 0 || lock.days > ObjectLock::MAX_DAYS {
            return Err(BackendError::Other(format!(
                "object lock days must be between 1 and {}",
                ObjectLock::MAX_DAYS
            )));
        }
        if verify {
            self.runtime
                .block_on(object_lock::verify_bucket(signing, http))?;
        }
        *self
            .object_lock
            .write()
            .expect("object lock setting is never poisoned") = Some(lock);
        Ok(())
    }

    fn extend_retention(&self, path: &str, until: jiff::Timestamp) -> Result<(), BackendError> {
        let lock = *self
            .object_lock
            .read()
            .expect("object lock setting is never poisoned");
        let (Some(signing), Some(http), Some(lock)) = (&self.signing, &self.http, lock) else {
            return Err(BackendError::Unsupported(format!(
                "{}: {path}: objects written here are not locked",
                self.location
            )));
        };
        let key = self.key(path);
        Counter::add(&self.requests.put, 1);
        let retain = RetainUntil {
            mode: lock.mode,
            until,
        };
        self.runtime.block_on(object_lock::put_retention(
            signing,
            http,
            key.as_ref(),
            path,
            retain,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET's result announcing `announced` bytes whose body is `pieces`.
    fn get_result(announced: u64, pieces: &[&'static [u8]]) -> object_store::GetResult {
        let stream = futures::stream::iter(
            pieces
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        );
        object_store::GetResult {
            payload: object_store::GetResultPayload::Stream(Box::pin(stream)),
            meta: object_store::ObjectMeta {
                location: StorePath::from("config"),
                last_modified: Default::default(),
                size: announced,
                e_tag: None,
                version: None,
            },
            range: 0..announced,
            attributes: Default::default(),
        }
    }

    /// A body longer than announced is read only up to the cap: the piece
    /// crossing it is refused, with the length reached, before it is kept.
    /// No HTTP/1.1 server can make object_store yield such a body (hyper
    /// stops at Content-Length: tests/engine/s3_lengths.rs), so it is fed
    /// here directly.
    #[test]
    fn read_capped_stops_a_body_longer_than_announced_at_the_cap() {
        let capped = |announced, pieces: &[&'static [u8]], cap| {
            runtime()
                .block_on(read_capped(get_result(announced, pieces), cap))
                .unwrap()
        };
        assert_eq!(capped(16, &[&[1; 16], &[2; 48]], 32), Err(64));
        // Longer than announced but within the cap: what the kind allows.
        assert_eq!(capped(16, &[&[1; 16], &[2; 8]], 32).unwrap().len(), 24);
        // Announced over the cap: refused from the length alone.
        assert_eq!(capped(64, &[&[1; 16]], 32), Err(64));
        assert_eq!(
            capped(4, &[&[1; 4]], 32).unwrap(),
            Bytes::from_static(&[1; 4])
        );
    }

    fn url(spec: &str) -> S3Url {
        parse_s3_url(spec, false).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn custom_endpoints_keep_bucket_and_prefix() {
        assert_eq!(
            url("https://acct.r2.cloudflarestorage.com/backups/hornbill"),
            S3Url {
                endpoint: Some(("https".into(), "acct.r2.cloudflarestorage.com".into())),
                bucket: "backups".into(),
                prefix: "hornbill".into(),
            }
        );
        let u = url("http://127.0.0.1:3900/bucket/a/b/");
        assert_eq!(u.endpoint, Some(("http".into(), "127.0.0.1:3900".into())));
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", "a/b"));
        let u = url("http://[::1]:3900/bucket");
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", ""));
        url("http://localhost/b");
        url("http://[::1]/b");
    }

    #[test]
    fn aws_urls_have_no_endpoint() {
        let u = url("//jig-ho-cottage-dr/pi-hosting/foundry");
        assert_eq!(u.endpoint, None);
        assert_eq!(u.bucket, "jig-ho-cottage-dr");
        assert_eq!(u.prefix, "pi-hosting/foundry");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (spec, why) in [
            ("http://backup.example.com/b", "--allow-http"),
            ("http://10.0.0.1:9000/b", "--allow-http"),
            ("ftp://host/b", "scheme"),
            ("https://host/", "missing bucket"),
            ("https:///b", "missing host"),
            ("//", "missing bucket"),
            ("https://key:secret@host/b", "credentials"),
            ("https://host/b/../x", "prefix"),
            ("bucket/prefix", "expected"),
            ("http://127.0.0.1:3900/b/p?token=secret", "query"),
            ("https://host/b/p#secret", "fragment"),
            ("//bucket/p?x-amz-security-token=secret", "query"),
        ] {
            let err = parse_s3_url(spec, false).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
            assert!(
                !err.contains("secret"),
                "{spec}: the refusal repeats it: {err}"
            );
        }
        assert!(parse_s3_url("http://backup.example.com/b", true).is_ok());
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact_url("https://k:s@host/b/p"), "https://***@host/b/p");
        assert_eq!(redact_url("http://k:s@h:9000"), "http://***@h:9000");
        // An `@` in the path is taken for credentials: a password may hold
        // an unencoded `/`, and hiding too much is harmless.
        assert_eq!(redact_url("https://host/b/a@b"), "https://***@b");
        assert_eq!(redact_url("http://user:pa/ss@host/x"), "http://***@host/x");
        assert_eq!(redact_url("//AKIA:pw@bucket/p"), "//***@bucket/p");
        assert!(
            parse_s3_url("//AKIA:UrlSecret@bucket/p", false).is_err_and(|e| {
                let text = e.to_string();
                text.contains("credentials") && !text.contains("UrlSecret")
            })
        );
        assert_eq!(redact_url("/srv/repo"), "/srv/repo");
        assert_eq!(
            redact_url("http://h:9/b/p?token=X&a=b"),
            "http://h:9/b/p?***"
        );
        assert_eq!(redact_url("//bucket/p#frag"), "//bucket/p#***");
        assert_eq!(redact_url("https://k:s@h/b?t=1"), "https://***@h/b?***");
    }

    #[test]
    fn only_status_free_failures_count_as_transport_errors() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        };
        assert!(is_transport(&generic(
            "Error performing DELETE http://x in 30s - HTTP error: error sending request"
        )));
        assert!(!is_transport(&generic(
            "Error performing PUT http://x in 1s, after 2 retries - Server returned non-2xx status code: 503 Service Unavailable: "
        )));
        assert!(!is_transport(&object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        }));
    }

    #[test]
    fn server_errors_are_told_from_client_errors() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        };
        for code in [
            "500 Internal Server Error",
            "503 Service Unavailable",
            "429 Too Many Requests",
        ] {
            assert!(is_server_error(&generic(&format!(
                "Error performing PUT http://x in 1s, after 8 retries - Server returned non-2xx status code: {code}: "
            ))));
        }
        assert!(!is_server_error(&generic(
            "Error performing GET http://x in 1s - Server returned non-2xx status code: 400 Bad Request: "
        )));
        assert!(!is_server_error(&generic(
            "Error performing DELETE http://x in 30s - HTTP error: error sending request"
        )));
    }

    /// A backend for an endpoint where nothing listens (connections are
    /// refused at once), one counted retry per request.
    fn refusing(
        window: Duration,
        max_retries: usize,
        stop: Option<Arc<AtomicBool>>,
    ) -> ObjectBackend {
        let options = S3Options {
            access_key_id: Some("GKexample".into()),
            secret_access_key: Some("s3cr3t".into()),
            region: Some("garage".into()),
            max_retries: Some(max_retries),
            retry_window: Some(window),
            stop,
            ..S3Options::default()
        };
        ObjectBackend::s3("http://127.0.0.1:1/bucket", &options).unwrap()
    }

    #[test]
    fn refused_requests_are_sent_again_within_the_retry_window() {
        // Counted: each HEAD sent gives up after its one retry, and the
        // window sends it again until two seconds passed.
        let b = refusing(Duration::from_secs(2), 1, None);
        assert!(b.head("config").is_err());
        let sent = b.requests().unwrap().head;
        assert!(sent >= 3, "sent {sent} times");
        // No window: once.
        let b = refusing(Duration::ZERO, 1, None);
        assert!(b.head("config").is_err());
        assert_eq!(b.requests().unwrap().head, 1);
        // No retries means none, whatever the window.
        let b = refusing(Duration::from_secs(600), 0, None);
        assert!(b.get("config", 1024).is_err());
        assert_eq!(b.requests().unwrap().get, 1);
        // Interrupted: nothing more is sent.
        let b = refusing(
            Duration::from_secs(600),
            1,
            Some(Arc::new(AtomicBool::new(true))),
        );
        assert!(b.get_range("config", 0, 10).is_err());
        assert_eq!(b.requests().unwrap().get, 1);
    }

    #[test]
    fn builds_without_network_and_never_shows_secrets() {
        let options = S3Options {
            access_key_id: Some("GKexample".into()),
            secret_access_key: Some("s3cr3t".into()),
            region: Some("garage".into()),
            ..S3Options::default()
        };
        let b = ObjectBackend::s3("http://127.0.0.1:1/bucket/pre/fix", &options).unwrap();
        assert_eq!(b.location(), "s3:http://127.0.0.1:1/bucket/pre/fix");
        assert!(!format!("{b:?}").contains("s3cr3t"));
        assert_eq!(b.key("config").to_string(), "pre/fix/config");
        let b = ObjectBackend::s3("//bucket", &options).unwrap();
        assert_eq!(b.location(), "s3://bucket");
        assert_eq!(b.key("config").to_string(), "config");
    }
}
