//! S3 Object Lock for the object-store backend (repo-format.md §11.8).
//!
//! `object_store` 0.12 has no way to add arbitrary headers to one request:
//! `ClientOptions::with_default_headers` adds them to every request (GET,
//! LIST and DELETE too) *after* SigV4 signing, and AWS refuses unsigned
//! `x-amz-*` headers. So the S3 client gets a wrapping HTTP service
//! ([`LockingConnector`]): `put` tags its request with a [`RetainUntil`]
//! extension (`PutOptions::extensions` reaches the HTTP request), and the
//! service adds `x-amz-object-lock-mode`, `x-amz-object-lock-retain-until-date`
//! and the checksum AWS requires on locked uploads, then signs the request
//! again with the same credentials. Requests without the extension pass
//! through untouched.
//!
//! A store that ignores the headers (Garage, MinIO without locking) must
//! not pass for a locked one: `put` reads the retention back with a HEAD
//! tagged [`CaptureRetention`], whose response headers the service records.

use super::BackendError;
use super::stall::Transport;
use crate::backend::RetentionMode;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpService,
};
use std::sync::{Arc, Mutex, OnceLock};

const MODE_HEADER: &str = "x-amz-object-lock-mode";
const RETAIN_UNTIL_HEADER: &str = "x-amz-object-lock-retain-until-date";
const CONTENT_SHA256_HEADER: &str = "x-amz-content-sha256";
const CHECKSUM_SHA256_HEADER: &str = "x-amz-checksum-sha256";
const SDK_CHECKSUM_HEADER: &str = "x-amz-sdk-checksum-algorithm";

/// Request extension: lock this upload until `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetainUntil {
    pub(super) mode: RetentionMode,
    pub(super) until: jiff::Timestamp,
}

/// The retention a HEAD response reported: `(mode, retain-until)`.
pub(super) type ReportedRetention = Option<(String, String)>;

/// Request extension: record the Object Lock headers of the response.
#[derive(Debug, Clone, Default)]
pub(super) struct CaptureRetention(pub(super) Arc<Mutex<ReportedRetention>>);

/// What the service needs to sign requests itself.
#[derive(Debug)]
pub(super) struct Signing {
    /// Set once the store is built: the same provider it signs with.
    pub(super) credentials: OnceLock<AwsCredentialProvider>,
    pub(super) region: String,
    /// `scheme://host[/bucket]`, without a trailing slash.
    pub(super) bucket_url: String,
}

/// Builds the wrapping service around vault's HTTP transport.
#[derive(Debug)]
pub(super) struct LockingConnector(pub(super) Arc<Signing>, pub(super) Transport);

impl HttpConnector for LockingConnector {
    /// Over vault's own [`Transport`]: `options` only hold what it was
    /// built from.
    fn connect(&self, _options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        let inner = HttpClient::new(self.1.clone());
        Ok(HttpClient::new(LockingService {
            inner,
            signing: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct LockingService {
    inner: HttpClient,
    signing: Arc<Signing>,
}

fn failure(why: impl Into<String>) -> HttpError {
    HttpError::new(HttpErrorKind::Unknown, std::io::Error::other(why.into()))
}

/// The retain-until date as AWS wants it: ISO 8601 in UTC, whole seconds
/// (rounded up, so the retention is never shorter than asked).
pub(super) fn format_retain_until(until: jiff::Timestamp) -> String {
    let second = if until.subsec_nanosecond() > 0 {
        until.as_second().saturating_add(1)
    } else {
        until.as_second()
    };
    jiff::Timestamp::from_second(second)
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Signing {
    /// Signs `request` (SigV4, service `s3`) with the store's credentials.
    async fn sign(
        &self,
        request: &mut HttpRequest,
        digest: Option<&[u8]>,
    ) -> Result<(), HttpError> {
        let provider = self
            .credentials
            .get()
            .ok_or_else(|| failure("S3 credentials are not set up yet"))?;
        let credential = provider
            .get_credential()
            .await
            .map_err(|e| failure(format!("getting S3 credentials: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(request, digest);
        Ok(())
    }
}

impl LockingService {
    /// Adds the retention headers and the payload checksum to an upload and
    /// signs it again, so the new headers are covered by the signature.
    async fn add_retention(
        &self,
        request: &mut HttpRequest,
        retain: RetainUntil,
    ) -> Result<(), HttpError> {
        // object_store signs payloads: the header holds the body's SHA-256
        // in hex. Reuse it rather than hash the body a second time.
        let digest = request
            .headers()
            .get(CONTENT_SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| hex::decode(v).ok())
            .filter(|d| d.len() == 32)
            .ok_or_else(|| failure("an Object Lock upload needs a signed payload"))?;
        let headers = request.headers_mut();
        let value = |s: &str| {
            http::HeaderValue::from_str(s).map_err(|e| failure(format!("header value {s}: {e}")))
        };
        headers.insert(MODE_HEADER, value(retain.mode.header_value())?);
        headers.insert(
            RETAIN_UNTIL_HEADER,
            value(&format_retain_until(retain.until))?,
        );
        // AWS requires a content checksum (Content-MD5 or an x-amz-checksum)
        // on uploads that carry a retention.
        headers.insert(
            CHECKSUM_SHA256_HEADER,
            value(&base64::engine::general_purpose::STANDARD.encode(&digest))?,
        );
        headers.insert(SDK_CHECKSUM_HEADER, value("SHA256")?);
        self.signing.sign(request, Some(&digest)).await
    }
}

#[async_trait::async_trait]
impl HttpService for LockingService {
    async fn call(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let capture = request.extensions().get::<CaptureRetention>().cloned();
        if let Some(retain) = request.extensions().get::<RetainUntil>().copied() {
            self.add_retention(&mut request, retain).await?;
        }
        let response = self.inner.execute(request).await?;
        if let Some(capture) = capture {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let reported = header(MODE_HEADER).zip(header(RETAIN_UNTIL_HEADER));
            *capture.0.lock().expect("capture lock is never poisoned") = reported;
        }
        Ok(response)
    }
}

/// Asks the bucket for its Object Lock configuration
/// (`GET /?object-lock`) and fails unless Object Lock is enabled.
pub(super) async fn verify_bucket(
    signing: &Signing,
    client: &HttpClient,
) -> Result<(), BackendError> {
    let unsupported = |why: String| {
        BackendError::Unsupported(format!(
            "{}: S3 Object Lock is not enabled on this bucket ({why}); create the bucket with Object Lock enabled (AWS: --object-lock-enabled-for-bucket; Garage and MinIO without locking cannot be used)",
            signing.bucket_url
        ))
    };
    let mut request = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{}?object-lock", signing.bucket_url))
        .body(HttpRequestBody::empty())
        .map_err(|e| BackendError::Other(format!("building the Object Lock probe: {e}")))?;
    signing
        .sign(&mut request, None)
        .await
        .map_err(|e| BackendError::Other(format!("signing the Object Lock probe: {e}")))?;
    let response = client.execute(request).await.map_err(|e| {
        BackendError::Other(format!("asking for the Object Lock configuration: {e}"))
    })?;
    let status = response.status();
    let body = small_body(response).await?;
    if !status.is_success() {
        return Err(unsupported(format!(
            "GetObjectLockConfiguration answered {status}{}",
            error_code(&body)
        )));
    }
    // A store that does not know `?object-lock` may answer a bucket
    // listing instead: only the explicit element counts.
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>") {
        Ok(())
    } else {
        Err(unsupported(
            "the bucket reports no ObjectLockEnabled=Enabled".into(),
        ))
    }
}

/// Reads at most 64 KiB of a response body: S3 error and configuration
/// documents are a few hundred bytes.
async fn small_body(response: HttpResponse) -> Result<String, BackendError> {
    let mut body = Vec::new();
    let mut stream = response.into_body().bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|e| BackendError::Other(e.to_string()))?;
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The `<Code>` of an S3 error document, with a leading space, or nothing.
fn error_code(body: &str) -> String {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or(String::new(), |(code, _)| format!(" {code}"))
}

/// How often a retention request is sent before its failure is reported:
/// an extension touches every object, so one dropped connection must not
/// fail a run of thousands.
const RETENTION_ATTEMPTS: u32 = 3;

/// Sets the retention of the current version of `key` (the full object key
/// in the bucket) with `PutObjectRetention` (`PUT /key?retention`). Used
/// only to extend: the store refuses to shorten a compliance retention, and
/// a governance one without a bypass vault never sends.
pub(super) async fn put_retention(
    signing: &Signing,
    client: &HttpClient,
    key: &str,
    path: &str,
    retain: RetainUntil,
) -> Result<(), BackendError> {
    use sha2::Digest as _;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        retain.mode.header_value(),
        format_retain_until(retain.until)
    );
    let digest = sha2::Sha256::digest(body.as_bytes());
    // The same encoding object_store gives keys in its own request URLs.
    const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    let url = format!(
        "{}/{}?retention",
        signing.bucket_url,
        percent_encoding::utf8_percent_encode(key, KEY_ENCODE)
    );
    let mut last = String::new();
    for attempt in 1..=RETENTION_ATTEMPTS {
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/xml")
            .header(
                CHECKSUM_SHA256_HEADER,
                base64::engine::general_purpose::STANDARD.encode(digest),
            )
            .header(SDK_CHECKSUM_HEADER, "SHA256")
            .body(HttpRequestBody::from(Bytes::from(body.clone())))
            .map_err(|e| {
                BackendError::Other(format!("{path}: building a retention request: {e}"))
            })?;
        signing
            .sign(&mut request, Some(digest.as_slice()))
            .await
            .map_err(|e| {
                BackendError::Other(format!("{path}: signing a retention request: {e}"))
            })?;
        match client.execute(request).await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let code = error_code(&small_body(response).await?);
                if status.is_server_error() && attempt < RETENTION_ATTEMPTS {
                    last = format!("{status}{code}");
                } else {
                    let hint = if status == http::StatusCode::FORBIDDEN {
                        " (the credentials need s3:PutObjectRetention)"
                    } else {
                        ""
                    };
                    return Err(BackendError::Other(format!(
                        "{path}: extending its Object Lock retention failed: {status}{code}{hint}"
                    )));
                }
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < RETENTION_ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    Err(BackendError::Other(format!(
        "{path}: extending its Object Lock retention failed after {RETENTION_ATTEMPTS} attempts: {last}"
    )))
}

/// Checks that a HEAD reported the retention `put` asked for.
pub(super) fn check_reported(
    path: &str,
    reported: ReportedRetention,
    asked: RetainUntil,
) -> Result<(), BackendError> {
    let Some((mode, until)) = reported else {
        return Err(BackendError::Unsupported(format!(
            "{path}: the store accepted the upload but reports no Object Lock retention on it; it does not implement S3 Object Lock"
        )));
    };
    if !mode.eq_ignore_ascii_case(asked.mode.header_value()) {
        return Err(BackendError::Other(format!(
            "{path}: stored with Object Lock mode {mode}, expected {}",
            asked.mode.header_value()
        )));
    }
    let until: jiff::Timestamp = until.parse().map_err(|e| {
        BackendError::Other(format!(
            "{path}: unreadable retain-until date {until:?}: {e}"
        ))
    })?;
    // A later retention is fine (a second upload of a content-addressed
    // pack only extends it); an earlier one is not what was asked.
    if until.as_second() < asked.until.as_second() {
        return Err(BackendError::Other(format!(
            "{path}: retained only until {until}, expected {}",
            format_retain_until(asked.until)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_until_is_whole_seconds_rounded_up() {
        let t: jiff::Timestamp = "2026-11-24T09:00:00.25Z".parse().unwrap();
        assert_eq!(format_retain_until(t), "2026-11-24T09:00:01Z");
        let t: jiff::Timestamp = "2026-11-24T09:00:00Z".parse().unwrap();
        assert_eq!(format_retain_until(t), "2026-11-24T09:00:00Z");
    }

    #[test]
    fn reported_retention_must_match_what_was_asked() {
        let asked = RetainUntil {
            mode: RetentionMode::Compliance,
            until: "2026-11-24T09:00:00Z".parse().unwrap(),
        };
        let ok = Some(("COMPLIANCE".into(), "2026-11-24T09:00:00.000Z".into()));
        check_reported("p", ok, asked).unwrap();
        let err = check_reported("p", None, asked).unwrap_err();
        assert!(matches!(err, BackendError::Unsupported(_)), "{err}");
        let wrong_mode = Some(("GOVERNANCE".into(), "2026-11-24T09:00:00Z".into()));
        assert!(check_reported("p", wrong_mode, asked).is_err());
        let short = Some(("COMPLIANCE".into(), "2026-11-23T09:00:00Z".into()));
        assert!(check_reported("p", short, asked).is_err());
    }
}
