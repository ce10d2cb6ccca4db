//! The HTTP transport of the S3 backend, with an idle timeout instead of a
//! total one.
//!
//! `object_store`'s client offers only a timeout for the whole request: one
//! short enough to notice a stalled endpoint (it accepts the connection,
//! then never answers) soon also fails a 16 MiB pack upload on a slow link,
//! and one long enough for that upload lets a stall hang each attempt of
//! every retry. So vault sends requests itself through reqwest and watches
//! progress: a request is abandoned as timed out (and retried) when no byte
//! of its body was taken and no byte of its answer arrived for the idle
//! timeout (plus, once it uploaded, time for what the socket buffers may
//! still hold: [`BUFFERED_AT_MOST`]); its upload may take as long as it
//! keeps moving.
//! After [`STALLS_IN_A_ROW`] such timeouts with no answer to any request
//! in between, the endpoint counts as stalled: the last one and every later
//! request fail without retrying, so the command fails within about that
//! many idle timeouts instead of retrying for many minutes.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use object_store::client::{HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService};
use object_store::client::{HttpRequestBody, HttpResponseBody};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Idle timeouts in a row after which the endpoint counts as stalled.
pub const STALLS_IN_A_ROW: usize = 3;

/// Upload bodies go out in pieces of at most this size, so that taking
/// the next piece shows the previous one moved on (into the socket).
const PIECE: usize = 64 * 1024;

/// Taking a piece shows only that it reached the kernel: the socket's send
/// buffer and the receiver's window hold megabytes (on loopback, the whole
/// of a small pack) that drain with no sign here. So a request that
/// uploaded bytes may stay silent beyond the idle timeout for as long as
/// the bytes that may sit in those buffers (at most this many) take at
/// [`SLOWEST_DRAIN`].
const BUFFERED_AT_MOST: u64 = 8 * 1024 * 1024;

/// Bytes per second the buffers are assumed to drain at least, for
/// [`BUFFERED_AT_MOST`] (at most 8 s on top of the idle timeout). On a
/// slow link the kernel keeps its buffers small (they follow the
/// congestion window), so this covers loopback and fast links, where
/// megabytes fit; the idle timeout itself covers the rest.
const SLOWEST_DRAIN: u64 = 1024 * 1024;

/// When something last moved, as milliseconds since a fixed start.
#[derive(Debug)]
struct Moved {
    start: Instant,
    at_ms: AtomicU64,
    /// Body bytes taken so far.
    taken: AtomicU64,
}

impl Moved {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// When the request counts as stalled: `idle` after the last sign of
    /// progress, plus the time what it uploaded may still need to drain.
    fn deadline(&self, idle: Duration) -> Instant {
        let buffered = self.taken.load(Ordering::Relaxed).min(BUFFERED_AT_MOST);
        self.last() + idle + Duration::from_secs_f64(buffered as f64 / SLOWEST_DRAIN as f64)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.at_ms.load(Ordering::Relaxed))
    }
}

/// Progress of all requests: how many idle timeouts came in a row.
#[derive(Debug, Default)]
struct Health {
    stalls: AtomicUsize,
}

impl Health {
    fn progressed(&self) {
        self.stalls.store(0, Ordering::Relaxed);
    }

    fn is_stalled(&self) -> bool {
        self.stalls.load(Ordering::Relaxed) >= STALLS_IN_A_ROW
    }
}

/// An HTTP client for `object_store` whose requests time out when idle.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    client: reqwest::Client,
    idle: Duration,
    health: Arc<Health>,
}

impl Transport {
    /// The client `object_store` would build from the options vault sets
    /// (HTTP/1 only, no compression, user agent, connect and pool-idle
    /// timeouts), without its total timeout; trusting the certificates of
    /// `ca_pems` (PEM bundles) as roots too.
    pub(super) fn new(
        idle: Duration,
        allow_http: bool,
        ca_pems: &[Vec<u8>],
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        for pem in ca_pems {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("reading a CA certificate: {e}"))?;
            if certs.is_empty() {
                return Err("a CA certificate file holds no PEM certificate".into());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .user_agent(concat!("vault/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(idle.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(20))
            .http1_only()
            // Compression would change the Content-Length object_store
            // reads sizes from.
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .https_only(!allow_http)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            client,
            idle,
            health: Arc::new(Health::default()),
        })
    }

    /// Whether the endpoint counts as stalled: every request fails at once.
    pub(super) fn is_stalled(&self) -> bool {
        self.health.is_stalled()
    }

    /// An idle timeout: retried (as a timeout) unless the endpoint has now
    /// stalled [`STALLS_IN_A_ROW`] times, which is final.
    fn timed_out(&self, what: &str) -> HttpError {
        let stalls = self.health.stalls.fetch_add(1, Ordering::Relaxed) + 1;
        let idle = self.idle.as_secs_f64();
        if stalls >= STALLS_IN_A_ROW {
            stalled(format!(
                "the storage endpoint stalled: {stalls} requests in a row got no answer for {idle}s (VAULT_S3_TIMEOUT)"
            ))
        } else {
            HttpError::new(
                HttpErrorKind::Timeout,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what}: nothing moved for {idle}s"),
                ),
            )
        }
    }
}

fn stalled(why: String) -> HttpError {
    // Unknown: object_store retries no such error.
    HttpError::new(HttpErrorKind::Unknown, std::io::Error::other(why))
}

/// object_store's own mapping of reqwest errors, in short: it is not public.
fn from_reqwest(e: reqwest::Error) -> HttpError {
    let kind = if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else if e.is_request() || e.is_body() {
        HttpErrorKind::Request
    } else {
        HttpErrorKind::Unknown
    };
    HttpError::new(kind, e.without_url())
}

#[async_trait::async_trait]
impl HttpService for Transport {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        if self.health.is_stalled() {
            return Err(stalled(format!(
                "the storage endpoint stalled ({STALLS_IN_A_ROW} requests in a row got no answer); not trying again"
            )));
        }
        let (parts, body) = request.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut outgoing = reqwest::Request::new(parts.method, url);
        *outgoing.headers_mut() = parts.headers;
        let moved = Arc::new(Moved::new());
        *outgoing.body_mut() = Some(if body.content_length() == 0 {
            reqwest::Body::from(Bytes::new())
        } else {
            reqwest::Body::wrap(Upload {
                inner: body,
                piece: Bytes::new(),
                moved: moved.clone(),
            })
        });
        let mut send = std::pin::pin!(self.client.execute(outgoing));
        let response = loop {
            let deadline = moved.deadline(self.idle);
            tokio::select! {
                r = &mut send => break r.map_err(from_reqwest)?,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if moved.deadline(self.idle) <= Instant::now() {
                        return Err(self.timed_out("waiting for an answer"));
                    }
                }
            }
        };
        self.health.progressed();
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = Download {
            inner: body,
            idle: self.idle,
            timer: None,
            transport: self.clone(),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A request body handed out in [`PIECE`]s, noting each one taken.
struct Upload {
    inner: HttpRequestBody,
    piece: Bytes,
    moved: Arc<Moved>,
}

impl Body for Upload {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.piece.is_empty() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.piece = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        }
        let n = self.piece.len().min(PIECE);
        let out = self.piece.split_to(n);
        self.moved.taken.fetch_add(n as u64, Ordering::Relaxed);
        self.moved.touch();
        // The request's own deadline moves, but the endpoint is not known
        // to be alive: a stopped server's kernel still takes megabytes into
        // its buffers, and counting that as progress let every retry of a
        // pack upload start the stall count over (minutes, not ~3 idle
        // timeouts). Only an answer says the endpoint works.
        Poll::Ready(Some(Ok(Frame::data(out))))
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let piece = self.piece.len() as u64;
        hint.set_lower(hint.lower() + piece);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + piece);
        }
        hint
    }

    fn is_end_stream(&self) -> bool {
        self.piece.is_empty() && self.inner.is_end_stream()
    }
}

/// A response body that fails as timed out when no byte arrives for the
/// idle timeout.
struct Download {
    inner: reqwest::Body,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    transport: Transport,
}

impl Body for Download {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.timer = None;
                if matches!(r, Some(Ok(_))) {
                    self.transport.health.progressed();
                }
                Poll::Ready(r.map(|r| r.map_err(from_reqwest)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timer = None;
                        Poll::Ready(Some(Err(self.transport.timed_out("reading an answer"))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
