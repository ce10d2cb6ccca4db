//! What the S3 backend reads when a server's answer disagrees with its own
//! `Content-Length` (repo-format.md §2.2: never read past an object's cap,
//! whatever the server announces). Garage never lies about lengths, so the
//! server here is a few lines in the test: a TCP listener on 127.0.0.1 that
//! answers every request with one fixed HTTP/1.1 response, used as the S3
//! endpoint of one `get`.
//!
//! Found: the HTTP client (hyper, under reqwest and object_store) delimits
//! a body by its `Content-Length`, so bytes a server sends beyond it never
//! reach the backend; `read_capped`'s check for a body longer than
//! announced is a second line that HTTP/1.1 cannot reach (its unit test in
//! engine/src/backend/object.rs feeds it such a body directly).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use vault_engine::backend::{Backend, BackendError, ObjectBackend, S3Options};

/// Serves `response` to every connection on a fresh loopback port, on a
/// thread that lives as long as the test process; the endpoint URL.
fn serve(response: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let response = response.clone();
            std::thread::spawn(move || {
                // The request's head, then the answer; then hold the
                // connection until the client drops it, so that a client
                // waiting for more body would wait rather than see the end.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if stream.write_all(&response).is_err() {
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://127.0.0.1:{port}/bucket")
}

/// An S3 answer to a GET announcing `announced` body bytes, followed by
/// `body`.
fn answer(announced: usize, body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nETag: \"0123\"\r\n\
         Last-Modified: Wed, 25 Nov 2026 08:00:00 GMT\r\n\r\n"
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

fn backend(endpoint: &str) -> ObjectBackend {
    ObjectBackend::s3(
        endpoint,
        &S3Options {
            region: Some("garage".into()),
            access_key_id: Some("GKtest".into()),
            secret_access_key: Some("not-a-secret".into()),
            max_retries: Some(0),
            idle_timeout: Some(Duration::from_secs(10)),
            retry_window: Some(Duration::ZERO),
            ..S3Options::default()
        },
    )
    .expect("an S3 backend for the test server")
}

/// 16 bytes announced, 64 sent, an object of this kind capped at 32: the
/// `get` returns the 16 announced bytes and nothing of the rest, so the
/// longer body is neither read nor refused.
#[test]
fn s3_get_reads_no_byte_past_content_length() {
    let mut body = vec![b'a'; 16];
    body.extend_from_slice(&[b'X'; 48]);
    let endpoint = serve(answer(16, &body));
    let got = backend(&endpoint)
        .get("config", 32)
        .expect("the announced bytes");
    assert_eq!(&got[..], &[b'a'; 16][..]);
}

/// A length over the cap is refused from the headers alone: the server
/// sends none of the body it announces, and the `get` does not wait for
/// it.
#[test]
fn s3_get_refuses_an_announced_length_over_the_cap_before_the_body() {
    let endpoint = serve(answer(1024 * 1024, b""));
    let started = Instant::now();
    let err = backend(&endpoint)
        .get("config", 32)
        .expect_err("over the cap");
    assert!(matches!(err, BackendError::TooLarge(_)), "{err:?}");
    assert!(err.to_string().contains("1048576"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} for a body",
        started.elapsed()
    );
}
