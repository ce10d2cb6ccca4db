//! What only an object store can show: the maintenance lock under
//! contention on both lock protocols, upload parallelism, trees read a tree
//! pack at a time, multipart uploads, injected faults (errors, slow and hung requests, dropped and
//! truncated connections) between vault and the store, and a 3-node Garage
//! cluster losing a node in the middle of a backup.
//!
//! Every command is also exercised against S3 by the parametrised tests in
//! the other modules.

use crate::support::{
    Backend, Env, PASSWORD, S3Server, assert_code, assert_success, pseudo_random,
    run_export_script, s3, stderr,
};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A TCP proxy between vault and the S3 server that injects faults into a
/// chosen share of requests, and records what passes through.
mod proxy {
    use std::io::{self, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A fault injected in place of (or into) one request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub(crate) enum Fault {
        /// Answer with this status and an S3 error body, without forwarding.
        Status(u16),
        /// Close the connection without answering.
        Drop,
        /// Forward after a delay (100-800 ms).
        Delay,
        /// Forward, and cut the response off half way (in the head or body).
        Truncate,
        /// Hold the connection without answering for the hang time (longer
        /// than the client's request timeout).
        Hang,
        /// Forward, taking the request body at 640 KiB/s (64 KiB every
        /// 100 ms): a slow link that keeps moving.
        Slow,
    }

    /// Every kind of fault.
    pub(crate) const ALL: &[Fault] = &[
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Drop,
        Fault::Delay,
        Fault::Truncate,
        Fault::Hang,
    ];

    type Filter = dyn Fn(&str, &str) -> bool + Send + Sync;

    struct State {
        upstream: SocketAddr,
        /// Faults per thousand matching requests.
        rate: AtomicU32,
        faults: Mutex<Vec<Fault>>,
        filter: Mutex<Arc<Filter>>,
        hang: Duration,
        rng: AtomicU64,
        /// Selected requests so far, from a random starting point.
        selected: AtomicU64,
        requests: Mutex<Vec<String>>,
        injected: Mutex<Vec<(Fault, String)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    pub(crate) struct FaultProxy {
        addr: SocketAddr,
        state: Arc<State>,
    }

    impl FaultProxy {
        /// Listens on a free loopback port and forwards to `upstream`
        /// (`http://HOST:PORT`), injecting nothing until told to.
        pub(crate) fn start(upstream: &str, hang: Duration) -> Self {
            let upstream: SocketAddr = upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1;
            let state = Arc::new(State {
                upstream,
                rate: AtomicU32::new(0),
                faults: Mutex::new(ALL.to_vec()),
                filter: Mutex::new(Arc::new(|_: &str, _: &str| true)),
                hang,
                rng: AtomicU64::new(seed),
                selected: AtomicU64::new(seed % 1000),
                requests: Mutex::new(Vec::new()),
                injected: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            });
            let shared = state.clone();
            // Serves until the test binary exits.
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let state = shared.clone();
                    std::thread::spawn(move || {
                        let _ = handle(&state, client);
                    });
                }
            });
            Self { addr, state }
        }

        /// `http://127.0.0.1:PORT`
        pub(crate) fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Injects one of `faults` into `per_mille`/1000 of the requests
        /// `filter(method, target)` selects.
        pub(crate) fn inject(
            &self,
            per_mille: u32,
            faults: &[Fault],
            filter: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
        ) {
            *self.state.faults.lock().unwrap() = faults.to_vec();
            *self.state.filter.lock().unwrap() = Arc::new(filter);
            self.state.rate.store(per_mille, Ordering::SeqCst);
        }

        /// `METHOD TARGET` of every request seen.
        pub(crate) fn requests(&self) -> Vec<String> {
            self.state.requests.lock().unwrap().clone()
        }

        /// Faults injected so far, with their requests.
        pub(crate) fn injected(&self) -> Vec<(Fault, String)> {
            self.state.injected.lock().unwrap().clone()
        }

        /// Most filter-selected requests in progress at once.
        pub(crate) fn max_in_flight(&self) -> usize {
            self.state.max_in_flight.load(Ordering::SeqCst)
        }

        pub(crate) fn reset_max_in_flight(&self) {
            self.state.max_in_flight.store(0, Ordering::SeqCst);
        }
    }

    impl State {
        fn random(&self) -> u64 {
            let mut x = self.rng.load(Ordering::Relaxed);
            loop {
                let mut next = x;
                next ^= next << 13;
                next ^= next >> 7;
                next ^= next << 17;
                match self
                    .rng
                    .compare_exchange(x, next, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return next,
                    Err(actual) => x = actual,
                }
            }
        }
    }

    struct InFlight<'a>(&'a AtomicUsize);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Reads up to the end of an HTTP head; returns it and any bytes read
    /// past it.
    fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Ok((buf, rest));
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn header(head: &str, name: &str) -> Option<String> {
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The head with `Connection: close`, so every connection carries one
    /// request and the response ends where the stream does.
    fn close_after(head: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(head);
        let mut out = String::new();
        for line in text.trim_end_matches("\r\n").split("\r\n") {
            let name = line.split(':').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }

    fn handle(state: &State, mut client: TcpStream) -> io::Result<()> {
        client.set_read_timeout(Some(Duration::from_secs(120)))?;
        let (head, rest) = read_head(&mut client)?;
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut words = text.split(' ');
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let request = format!("{method} {target}");
        state.requests.lock().unwrap().push(request.clone());
        let selected = (state.filter.lock().unwrap().clone())(&method, &target);
        // Counted from the request's arrival to the store's answer: the
        // client may send its next request as soon as it has read a whole
        // response, before this thread has closed both connections.
        let in_flight = selected.then(|| {
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            InFlight(&state.in_flight)
        });
        let rate = u64::from(state.rate.load(Ordering::SeqCst));
        // Exactly `rate` in every thousand selected requests fail, spread
        // evenly from a random starting point: a random draw per request
        // could leave a run of ~130 requests with too few faults.
        let n = if selected {
            state.selected.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        let fault = if selected && (n + 1) * rate / 1000 > n * rate / 1000 {
            // The kinds take turns, so a run with few faults still meets
            // each kind.
            let faults = state.faults.lock().unwrap();
            let mut injected = state.injected.lock().unwrap();
            let f = faults[injected.len() % faults.len()];
            injected.push((f, request));
            Some(f)
        } else {
            None
        };
        match fault {
            Some(Fault::Status(code)) => {
                // Read the request body first, so the client sees the
                // answer rather than a reset.
                let len: u64 = header(&text, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let remaining = len.saturating_sub(rest.len() as u64);
                io::copy(&mut (&mut client).take(remaining), &mut io::sink())?;
                let (reason, s3_code) = match code {
                    503 => ("Service Unavailable", "SlowDown"),
                    429 => ("Too Many Requests", "SlowDown"),
                    _ => ("Internal Server Error", "InternalError"),
                };
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                     <Error><Code>{s3_code}</Code><Message>injected by the test proxy</Message></Error>"
                );
                drop(in_flight);
                let mut response = format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if method != "HEAD" {
                    response.push_str(&body);
                }
                client.write_all(response.as_bytes())?;
                client.shutdown(Shutdown::Both)
            }
            Some(Fault::Drop) => client.shutdown(Shutdown::Both),
            Some(Fault::Hang) => {
                std::thread::sleep(state.hang);
                Ok(())
            }
            Some(Fault::Delay) => {
                std::thread::sleep(Duration::from_millis(100 + state.random() % 700));
                forward(state, client, &head, &rest, false, in_flight)
            }
            Some(Fault::Truncate) => forward(state, client, &head, &rest, true, in_flight),
            Some(Fault::Slow) => forward_slowly(state, client, &head, &rest, in_flight),
            None => forward(state, client, &head, &rest, false, in_flight),
        }
    }

    fn forward(
        state: &State,
        client: TcpStream,
        head: &[u8],
        rest: &[u8],
        truncate: bool,
        in_flight: Option<InFlight<'_>>,
    ) -> io::Result<()> {
        forward_at(state, client, head, rest, truncate, false, in_flight)
    }

    fn forward_slowly(
        state: &State,
        client: TcpStream,
        head: &[u8],
        rest: &[u8],
        in_flight: Option<InFlight<'_>>,
    ) -> io::Result<()> {
        forward_at(state, client, head, rest, false, true, in_flight)
    }

    fn forward_at(
        state: &State,
        mut client: TcpStream,
        head: &[u8],
        rest: &[u8],
        truncate: bool,
        slow: bool,
        in_flight: Option<InFlight<'_>>,
    ) -> io::Result<()> {
        let mut upstream = TcpStream::connect(state.upstream)?;
        upstream.write_all(&close_after(head))?;
        upstream.write_all(rest)?;
        // The rest of the request body, whatever its framing: the client
        // sends one request per connection.
        let pump = {
            let mut from = client.try_clone()?;
            let mut to = upstream.try_clone()?;
            std::thread::spawn(move || {
                if !slow {
                    let _ = io::copy(&mut from, &mut to);
                    return;
                }
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let result = (|| {
            let (response_head, body_start) = read_head(&mut upstream)?;
            drop(in_flight);
            let response_head = close_after(&response_head);
            if truncate {
                let text = String::from_utf8_lossy(&response_head).into_owned();
                let body_len: usize = header(&text, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let cut = (response_head.len() + body_len) / 2;
                let mut whole = response_head;
                whole.extend_from_slice(&body_start);
                io::copy(&mut upstream, &mut whole)?;
                client.write_all(&whole[..cut.min(whole.len())])?;
                return Ok(());
            }
            client.write_all(&response_head)?;
            client.write_all(&body_start)?;
            io::copy(&mut upstream, &mut client)?;
            Ok(())
        })();
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = pump.join();
        result
    }
}

use proxy::{Fault, FaultProxy};

/// A TCP relay to the S3 server that can be taken down and brought back on
/// the same port: down, its port refuses connections and the connections
/// through it are cut, as when the server is killed (a stopped server,
/// `kill -STOP`, would be a stall instead); up, it relays again. The shared
/// test server stays up for the tests beside.
mod relay {
    use std::io;
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    struct Shared {
        upstream: SocketAddr,
        listener: Mutex<Option<TcpListener>>,
        /// Both ends of every relayed connection, to cut them.
        open: Mutex<Vec<TcpStream>>,
        done: AtomicBool,
    }

    pub(crate) struct Relay {
        addr: SocketAddr,
        shared: Arc<Shared>,
    }

    impl Relay {
        /// Relays a free loopback port to `upstream` (`http://HOST:PORT`).
        pub(crate) fn start(upstream: &str) -> Self {
            let upstream: SocketAddr = upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let shared = Arc::new(Shared {
                upstream,
                listener: Mutex::new(Some(listener)),
                open: Mutex::new(Vec::new()),
                done: AtomicBool::new(false),
            });
            let accepting = shared.clone();
            std::thread::spawn(move || {
                while !accepting.done.load(Ordering::SeqCst) {
                    let accepted = match &*accepting.listener.lock().unwrap() {
                        Some(l) => l.accept().ok(),
                        None => None,
                    };
                    match accepted {
                        Some((client, _)) => {
                            let shared = accepting.clone();
                            std::thread::spawn(move || {
                                let _ = relay(&shared, client);
                            });
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            Self { addr, shared }
        }

        /// `http://127.0.0.1:PORT`
        pub(crate) fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Closes the port (connections are refused) and cuts every
        /// connection through it.
        pub(crate) fn down(&self) {
            drop(self.shared.listener.lock().unwrap().take());
            for stream in self.shared.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }

        /// Listens on the same port again.
        pub(crate) fn up(&self) {
            let listener = TcpListener::bind(self.addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            *self.shared.listener.lock().unwrap() = Some(listener);
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.shared.done.store(true, Ordering::SeqCst);
            self.down();
        }
    }

    fn relay(shared: &Shared, client: TcpStream) -> io::Result<()> {
        client.set_nonblocking(false)?;
        let upstream = TcpStream::connect(shared.upstream)?;
        {
            let mut open = shared.open.lock().unwrap();
            open.push(client.try_clone()?);
            open.push(upstream.try_clone()?);
        }
        let (mut from, mut to) = (client.try_clone()?, upstream.try_clone()?);
        let pump = std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
        let (mut from, mut to) = (upstream, client);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
        let _ = pump.join();
        Ok(())
    }
}

/// Files of incompressible data from the kernel (quick even unoptimised).
fn random_tree(root: &Path, files: usize, bytes_each: usize) {
    std::fs::create_dir_all(root).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq -w 0 {}); do head -c {bytes_each} /dev/urandom > f$i; done",
            files - 1
        ))
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every regular file below `root`, relative path to content.
fn contents(root: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    crate::support::walk_files(root, &mut |p| {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        out.insert(rel, std::fs::read(p).unwrap());
    });
    out
}

#[track_caller]
fn assert_restores_identically(env: &Env, src: &Path, target_name: &str, via: Option<&str>) {
    let target = env.path(target_name);
    let mut cmd = env.command(&["restore", "latest", "--target", target.to_str().unwrap()]);
    if let Some(repo) = via {
        cmd.env("VAULT_REPOSITORY", repo);
    }
    assert_success(&cmd.output().unwrap());
    let restored = target.join(src.strip_prefix("/").unwrap());
    let (want, got) = (contents(src), contents(&restored));
    assert_eq!(want.len(), got.len(), "file count");
    for (path, bytes) in &want {
        assert!(got.get(path) == Some(bytes), "{path} differs after restore");
    }
}

fn check_verify(env: &Env) -> serde_json::Value {
    let out = env.vault(&["check", "--verify", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    v
}

fn init_with_pack_size(env: &Env, mib: u32) {
    assert_success(&env.vault(&[
        "init",
        "--kdf-memory-mib",
        "8",
        "--kdf-iterations",
        "1",
        "--pack-size-mib",
        &mib.to_string(),
    ]));
}

#[test]
fn plain_http_to_a_remote_host_is_refused_without_allow_http() {
    let env = Env::uninitialised();
    let out = env
        .command(&["snapshots"])
        .env("VAULT_REPOSITORY", "s3:http://backup.example.com/bucket/p")
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("--allow-http"), "{}", stderr(&out));
    let out = env
        .command(&["snapshots"])
        .env("VAULT_REPOSITORY", "s3:ftp://host/bucket")
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("invalid S3 URL"), "{}", stderr(&out));
}

backend_test!(lock_is_exclusive_under_contention);
/// Contenders racing for the maintenance lock, in one process through the
/// engine (so holding can be observed exactly): never two holders at once.
/// Locally that is the atomic create-only object; on Garage, which ignores
/// `If-None-Match`, the write-list-wait protocol.
fn lock_is_exclusive_under_contention(backend: Backend) {
    use vault_engine::Repository;
    use vault_engine::crypto::Password;
    let env = Env::on(backend);
    let open = || {
        let options = env
            .server
            .as_ref()
            .map_or_else(Default::default, S3Server::options);
        let store = vault_engine::backend::open_url(&env.repo, &options).unwrap();
        Repository::open(Arc::from(store), &Password::new(PASSWORD)).unwrap()
    };
    let atomic = open().backend().has_atomic_create();
    match backend {
        Backend::Local => assert!(atomic, "local disk has atomic create"),
        Backend::S3 if env.server.as_ref().unwrap().is_garage => {
            assert!(
                !atomic,
                "Garage ignores If-None-Match: the probe must notice"
            );
        }
        Backend::S3 => {}
    }
    let contenders = 4;
    let repos: Vec<Repository> = (0..contenders).map(|_| open()).collect();
    let holders = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let granted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let attempt = |i: usize, hold: Duration| match vault_engine::lock::lock_exclusive(
        &repos[i],
        "test",
        &format!("contender-{i}"),
        "tester",
    ) {
        Ok(lock) => {
            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            granted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(hold);
            holders.fetch_sub(1, Ordering::SeqCst);
            drop(lock);
        }
        Err(vault_engine::Error::Locked { .. }) => {
            refused.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => panic!("contender {i}: {e}"),
    };
    // All at the same instant. With the create-only object exactly one
    // wins each round; with write-list-wait typically all back off. The
    // winner holds the lock until the others of its round have tried (a
    // fixed hold let a contender the loaded machine started late find the
    // lock free again, and win a second time in the round).
    let rounds = if atomic { 20 } else { 2 };
    for _ in 0..rounds {
        let barrier = std::sync::Barrier::new(contenders);
        let tried = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for i in 0..contenders {
                let (barrier, tried) = (&barrier, &tried);
                let (holders, most, granted, refused) = (&holders, &most, &granted, &refused);
                let repos = &repos;
                scope.spawn(move || {
                    barrier.wait();
                    let got = vault_engine::lock::lock_exclusive(
                        &repos[i],
                        "test",
                        &format!("contender-{i}"),
                        "tester",
                    );
                    match got {
                        Ok(lock) => {
                            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            granted.fetch_add(1, Ordering::SeqCst);
                            let until = Instant::now() + Duration::from_secs(30);
                            while tried.load(Ordering::SeqCst) < contenders - 1
                                && Instant::now() < until
                            {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            holders.fetch_sub(1, Ordering::SeqCst);
                            drop(lock);
                        }
                        Err(vault_engine::Error::Locked { .. }) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            tried.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("contender {i}: {e}"),
                    }
                });
            }
        });
    }
    assert!(most.load(Ordering::SeqCst) <= 1, "two holders at once");
    if atomic {
        assert_eq!(granted.load(Ordering::SeqCst), rounds);
    }
    // Staggered: contenders keep trying at random moments for a while,
    // so attempts land while another holds the lock, or settles it.
    let (window, jitter_ms, hold) = if atomic {
        (Duration::from_millis(1500), 10, Duration::from_millis(10))
    } else {
        (Duration::from_secs(10), 1000, Duration::from_millis(400))
    };
    let deadline = Instant::now() + window;
    std::thread::scope(|scope| {
        for i in 0..contenders {
            let attempt = &attempt;
            scope.spawn(move || {
                let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while Instant::now() < deadline {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    std::thread::sleep(Duration::from_millis(state % jitter_ms));
                    attempt(i, hold);
                }
            });
        }
    });
    eprintln!(
        "lock contention ({}): {} granted, {} refused",
        if atomic {
            "atomic create"
        } else {
            "write-list-wait"
        },
        granted.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two holders at once, or none"
    );
    assert!(refused.load(Ordering::SeqCst) > 0, "no contention");
    // With nobody else around, the lock is granted (and released).
    drop(vault_engine::lock::lock_exclusive(&repos[0], "test", "alone", "tester").unwrap());
    assert!(env.locks().is_empty(), "{:?}", env.locks());
}

/// Walking a snapshot's trees costs a request per tree pack, not per
/// directory: 150 directories, re-backed up unchanged and restored, each in
/// a handful of GETs (one per directory before: 63 s for a 1 446-directory
/// tree on a local Garage).
/// A bucket that does not exist: init and other commands say so, instead
/// of "keys/... not found" (exit 4) or "no repository, run init" (10).
#[test]
fn init_into_a_missing_bucket_names_the_bucket() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    let server = env.server.as_ref().unwrap();
    let url = format!(
        "s3:{}/no-such-bucket-{}/x",
        server.endpoint,
        std::process::id()
    );
    let out = env.init_at(&url, &[]);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bucket does not exist"), "{err}");
    // Nor does any other command take it for "no repository here".
    let out = env
        .command(&["snapshots"])
        .env("VAULT_REPOSITORY", &url)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bucket does not exist"), "{err}");
}

#[test]
fn rebackup_and_restore_read_trees_a_pack_at_a_time() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::on(Backend::S3);
    let src = env.path("src");
    for d in 0..150 {
        let dir = src.join(format!("group-{}/dir-{d}", d % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), format!("directory {d}\n")).unwrap();
    }
    let src_arg = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", src_arg]));
    let gets = |command: &str| {
        let stats = env.json(&["stats", "latest"]);
        let last = &stats["last_operation"];
        assert_eq!(last["command"], command, "{last}");
        last["requests"]["get"].as_u64().unwrap()
    };
    assert_success(&env.vault(&["backup", src_arg]));
    let backup = gets("backup");
    assert!(
        backup < 40,
        "unchanged re-backup of 150 directories: {backup} GETs"
    );
    let target = env.path("restore");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let restore = gets("restore");
    assert!(restore < 40, "restore of 150 directories: {restore} GETs");
    assert_restores_identically(&env, &src, "restore-again", None);
}

/// Snapshots, index files and tree packs are kept in a local cache: listing
/// snapshots or files again downloads none of them, a forgotten snapshot leaves the cache, a
/// damaged copy is fetched again, and check reads the store, not the cache.
#[test]
fn snapshots_index_files_and_trees_are_downloaded_once() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::on(Backend::S3);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let trees_cached = || {
        let base = env.path("cache/vault");
        let repo = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .find(|e| e.path().is_dir());
        std::fs::read_dir(repo.unwrap().path().join("trees"))
            .unwrap()
            .count()
    };
    for n in 0..4 {
        std::fs::write(src.join("f"), format!("version {n}")).unwrap();
        assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
        if n == 0 {
            // A first backup walks no parent: its own tree packs were kept
            // as they were uploaded, for the next backup to walk.
            assert!(trees_cached() >= 1);
        }
    }
    let gets = |args: &[&str]| {
        assert_success(&env.vault(args));
        let stats = env.json(&["stats"]);
        let last = &stats["last_operation"];
        assert_eq!(last["command"], args[0], "{last}");
        last["requests"]["get"].as_u64().unwrap()
    };
    // Opening reads the config and a key file; with --no-cache each of the
    // 4 snapshots is a GET too.
    let uncached = gets(&["snapshots", "--no-cache"]);
    let cached = gets(&["snapshots"]);
    assert!(
        uncached >= cached + 4,
        "{uncached} GETs uncached, {cached} cached"
    );
    let cache = env.path("cache/vault");
    assert!(cache.join("CACHEDIR.TAG").exists());
    let repo_dir = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a directory for the repository");
    let cached_snapshots = || {
        std::fs::read_dir(repo_dir.join("snapshots"))
            .unwrap()
            .count()
    };
    assert_eq!(cached_snapshots(), 4);
    assert!(std::fs::read_dir(repo_dir.join("index")).unwrap().count() >= 4);
    // Tree packs too (`stats` above walked every snapshot's trees): listing
    // files costs no more GETs than listing snapshots, just opening.
    let ls = gets(&["ls", "latest"]);
    assert_eq!(ls, cached, "ls: {ls} GETs, snapshots: {cached}");
    let ls_uncached = gets(&["ls", "latest", "--no-cache"]);
    assert!(
        ls_uncached > ls + 4,
        "ls without the cache: {ls_uncached} GETs"
    );
    assert!(std::fs::read_dir(repo_dir.join("trees")).unwrap().count() >= 1);
    // A damaged copy is not used: it is fetched again (and the listing is
    // still right).
    let victim = std::fs::read_dir(repo_dir.join("snapshots"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(&victim, b"garbage").unwrap();
    assert_eq!(env.snapshots().len(), 4);
    assert_ne!(std::fs::read(&victim).unwrap(), b"garbage");
    // Forgetting drops the copy.
    assert_success(&env.vault(&["forget", "--keep-last", "1"]));
    assert_eq!(env.snapshots().len(), 1);
    assert_eq!(cached_snapshots(), 1);
    // check judges the store: a snapshot damaged there is found although the
    // cache holds an intact copy.
    let (key, _) = env
        .objects()
        .into_iter()
        .find(|(k, _)| k.starts_with("snapshots/"))
        .unwrap();
    env.store()
        .put(
            &key,
            b"damaged".to_vec().into(),
            vault_engine::backend::PutMode::Overwrite,
        )
        .unwrap();
    let check = env.vault(&["check"]);
    assert!(
        !check.status.success(),
        "check passed over a damaged snapshot"
    );
    // `vault cache` lists the directory; --cleanup removes it once unused
    // for --max-age days.
    let listed = env.json(&["cache"]);
    let caches = listed["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 1, "{listed}");
    assert!(caches[0]["bytes"].as_u64().unwrap() > 0);
    let kept = env.json(&["cache", "--cleanup"]);
    assert!(kept["removed"].as_array().unwrap().is_empty(), "{kept}");
    let long_ago = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(&repo_dir, long_ago).unwrap();
    let cleaned = env.json(&["cache", "--cleanup", "--max-age", "7"]);
    assert_eq!(cleaned["removed"].as_array().unwrap().len(), 1, "{cleaned}");
    assert!(!repo_dir.exists());
}

/// `--upload-concurrency N` bounds the pack uploads in progress at once.
#[test]
fn upload_concurrency_bounds_parallel_uploads() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 1);
    let proxy = FaultProxy::start(&s3().endpoint, Duration::from_secs(1));
    let via = env.repo_via(&proxy.endpoint());
    // Slow every pack upload down so uploads pile up behind the limit.
    proxy.inject(1000, &[Fault::Delay], |method, target| {
        method == "PUT" && target.contains("/data/")
    });
    for (n, files) in [(1, 6), (3, 14)] {
        let src = env.path(&format!("src{n}"));
        random_tree(&src, files, 1_000_000);
        proxy.reset_max_in_flight();
        let out = env
            .command(&[
                "backup",
                src.to_str().unwrap(),
                "--compression",
                "none",
                "--upload-concurrency",
                &n.to_string(),
            ])
            .env("VAULT_REPOSITORY", &via)
            .output()
            .unwrap();
        assert_success(&out);
        let most = proxy.max_in_flight();
        assert!(
            most <= n,
            "{most} uploads at once with --upload-concurrency {n}"
        );
        assert!(most >= n.min(2), "uploads never overlapped: {most}");
    }
    check_verify(&env);
}

/// Request timeout for runs through the fault proxy (its hung requests
/// last longer), in seconds.
const PROXY_TIMEOUT_SECS: &str = "4";

/// 10% of all requests fail in every way the proxy knows, for a backup, a
/// second backup, a restore and a `forget --prune`: everything succeeds,
/// and `check --verify` (straight to the store) then finds nothing wrong.
#[test]
fn operations_under_ten_percent_injected_faults_succeed_and_verify() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 1);
    let src = env.path("src");
    random_tree(&src, 10, 700_000);
    std::fs::write(src.join("notes.txt"), b"small file").unwrap();
    let proxy = FaultProxy::start(&s3().endpoint, Duration::from_secs(10));
    let via = env.repo_via(&proxy.endpoint());
    proxy.inject(100, proxy::ALL, |_, _| true);
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = env
            .command(args)
            .env("VAULT_REPOSITORY", &via)
            .env("VAULT_S3_TIMEOUT", PROXY_TIMEOUT_SECS)
            .output()
            .unwrap();
        assert_success(&out);
        eprintln!("vault {args:?} through faults: {:.1?}", started.elapsed());
    };
    run(&["backup", src.to_str().unwrap(), "--compression", "none"]);
    std::fs::write(src.join("f00"), pseudo_random(900_000, 7)).unwrap();
    run(&["backup", src.to_str().unwrap(), "--compression", "none"]);
    assert_eq!(env.snapshots().len(), 2);
    check_verify(&env);
    assert_restores_identically(&env, &src, "restored", Some(&via));
    run(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--instant-delete",
        "--max-unused",
        "0",
    ]);
    assert_eq!(env.snapshots().len(), 1);
    check_verify(&env);
    assert_restores_identically(&env, &src, "after-prune", None);
    let injected = proxy.injected();
    let requests = proxy.requests().len();
    eprintln!(
        "{} faults injected into {requests} requests",
        injected.len()
    );
    assert!(
        injected.len() >= 5,
        "too few faults to mean anything: {injected:?}"
    );
    let kinds: std::collections::HashSet<_> = injected.iter().map(|(f, _)| *f).collect();
    assert!(kinds.len() >= 4, "{kinds:?}");
}

/// When every pack upload fails, past the retry budget, the backup fails
/// with an error naming the object and saves no snapshot; the repository
/// stays healthy and the next backup works. Both with error answers and
/// with dropped connections.
#[test]
fn persistent_faults_fail_the_backup_naming_the_object_and_record_no_snapshot() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 1);
    let src = env.path("src");
    random_tree(&src, 3, 600_000);
    let proxy = FaultProxy::start(&s3().endpoint, Duration::from_secs(10));
    let via = env.repo_via(&proxy.endpoint());
    for (fault, words) in [
        (Fault::Status(503), "503"),
        (Fault::Drop, "error"),
        (Fault::Status(500), "500"),
    ] {
        proxy.inject(1000, &[fault], |method, target| {
            method == "PUT" && target.contains("/data/")
        });
        let before = proxy.injected().len();
        let started = Instant::now();
        let out = env
            .command(&["backup", src.to_str().unwrap()])
            .env("VAULT_REPOSITORY", &via)
            .env("VAULT_S3_MAX_RETRIES", "2")
            // Past the budget at once: no retry window.
            .env("VAULT_S3_RETRY_SECS", "0")
            .output()
            .unwrap();
        // 8: the storage kept failing.
        assert_code(&out, 8);
        let err = stderr(&out);
        eprintln!("{fault:?}: failed after {:.1?}: {err}", started.elapsed());
        // The object: data/<2 hex>/<64 hex>.
        let named = err.split(|c: char| c.is_whitespace() || c == ':').any(|w| {
            let parts: Vec<&str> = w.split('/').collect();
            parts.len() == 3
                && parts[0] == "data"
                && parts[2].len() == 64
                && parts[2].starts_with(parts[1])
        });
        assert!(named, "{fault:?}: no object named in: {err}");
        assert!(err.contains(words), "{fault:?}: {err}");
        // 1 attempt + 2 retries per failed upload, at least.
        assert!(proxy.injected().len() - before >= 3);
        assert!(env.snapshots().is_empty(), "a snapshot was recorded");
    }
    check_verify(&env);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    check_verify(&env);
    assert_restores_identically(&env, &src, "restored", None);
}

/// Packs at or above the multipart threshold go up in parts (seen at the
/// proxy) and come back bit-identical.
#[test]
fn large_packs_are_uploaded_in_parts() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 40);
    let src = env.path("src");
    random_tree(&src, 3, 30_000_000);
    let proxy = FaultProxy::start(&s3().endpoint, Duration::from_secs(10));
    let out = env
        .command(&["backup", src.to_str().unwrap(), "--compression", "none"])
        .env("VAULT_REPOSITORY", env.repo_via(&proxy.endpoint()))
        .env("VAULT_S3_MULTIPART_THRESHOLD_MIB", "20")
        .output()
        .unwrap();
    assert_success(&out);
    let requests = proxy.requests();
    let parts = requests
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .count();
    let completions = requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("uploadId="))
        .count();
    // 90 MB in 40 MiB packs: two packs of 3 parts (16 + 16 + 8 MiB).
    assert!(completions >= 2, "{requests:#?}");
    assert!(parts >= 3 * completions - 1, "{parts} parts: {requests:#?}");
    let big = env
        .sizes_under("data")
        .values()
        .filter(|&&s| s > 20 * 1024 * 1024)
        .count();
    assert_eq!(big, completions);
    check_verify(&env);
    assert_restores_identically(&env, &src, "restored", None);
}

/// Kills a process by pid (nodes are started by us).
fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

fn port_open(endpoint: &str) -> bool {
    std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).is_ok()
}

/// Scale-out: a 3-node Garage cluster (replication factor 3). A backup
/// talks to node 1; node 3 is killed in the middle of it. The backup
/// completes, restores bit-identically and verifies; node 3 is restarted
/// and serves the repository too.
#[test]
fn three_node_cluster_survives_losing_a_node_mid_backup() {
    if !Backend::S3.available() || !s3().is_garage {
        eprintln!("NOTICE: skipping the cluster test: it needs garage");
        return;
    }
    let vars = run_export_script("garage-cluster.sh", &["--nodes", "3"]);
    let var = |k: &str| vars[k].clone();
    let server = S3Server::from_vars(&vars);
    let env = Env::uninitialised_on_server(&server);
    init_with_pack_size(&env, 1);
    let src = env.path("src");
    random_tree(&src, 40, 1_000_000);
    let mut backup = env
        .command(&["backup", src.to_str().unwrap(), "--compression", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.objects_under("data").len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let node3: u32 = var("GARAGE_NODE3_PID").parse().unwrap();
    kill(node3, nix::sys::signal::Signal::SIGKILL);
    let packs_at_kill = env.objects_under("data").len();
    let killed_at = Instant::now();
    assert!(
        backup.try_wait().unwrap().is_none(),
        "the backup finished before the node was killed"
    );
    let out = backup.wait_with_output().unwrap();
    assert_success(&out);
    let packs = env.objects_under("data").len();
    eprintln!(
        "cluster: node 3 killed at {packs_at_kill} packs; backup finished {:.1?} later with {packs}",
        killed_at.elapsed()
    );
    assert!(packs > packs_at_kill, "no pack was uploaded after the kill");
    assert_eq!(env.snapshots().len(), 1);
    check_verify(&env);
    assert_restores_identically(&env, &src, "restored-degraded", None);

    // Restart node 3; the watchdog of garage-cluster.sh finds it by pid.
    let config = var("GARAGE_NODE3_CONFIG");
    let node_dir = Path::new(&config).parent().unwrap().to_path_buf();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(node_dir.join("garage.log"))
        .unwrap();
    let garage = crate::support::garage_binary().unwrap();
    let mut restarted = std::process::Command::new(garage)
        .args(["-c", &config, "server"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(node_dir.join("pid"), restarted.id().to_string()).unwrap();
    let endpoint3 = var("GARAGE_NODE3_ENDPOINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_open(&endpoint3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(port_open(&endpoint3), "node 3 did not come back");
    // Node 3 serves the repository written while it was down.
    let via3 = env.repo_via(&endpoint3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env
            .command(&["check", "--verify", "--json"])
            .env("VAULT_REPOSITORY", &via3)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "check through the restarted node: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_restores_identically(&env, &src, "restored-via-node3", Some(&via3));

    for pid in [
        var("GARAGE_NODE1_PID").parse().unwrap(),
        var("GARAGE_NODE2_PID").parse().unwrap(),
        restarted.id(),
    ] {
        kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    restarted.wait().unwrap();
    let _ = std::fs::remove_dir_all(var("GARAGE_DIR"));
}

/// Every AWS variable that could give vault credentials.
const AWS_CREDENTIAL_VARS: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
    "VAULT_S3_INSTANCE_CREDENTIALS",
];

/// An endpoint that accepts connections and never answers (nor reads):
/// vault gives up after a few idle timeouts (lowered here through
/// `VAULT_S3_TIMEOUT`) with exit 8, instead of retrying for many minutes.
#[test]
fn a_stalled_endpoint_fails_after_a_few_idle_timeouts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let env = Env::uninitialised();
    let child = env
        .command(&["snapshots"])
        .env(
            "VAULT_REPOSITORY",
            format!("s3:http://127.0.0.1:{port}/bucket/repo"),
        )
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("VAULT_S3_TIMEOUT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A bound for the test, not a timing assertion: before the fix each
    // attempt waited for a whole-request timeout, retried for minutes.
    let out = output_within(child, Duration::from_secs(60));
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_code(&out, 8);
    let err = stderr(&out);
    assert!(err.contains("stalled"), "{err}");
    // Given up after three idle timeouts, not after every retry.
    let attempts = accepted.load(Ordering::SeqCst);
    assert!((1..=3).contains(&attempts), "{attempts} connections");
}

/// An S3 repository with 4 MiB packs, a source holding one incompressible
/// file of `size` bytes, and a proxy (holding hung connections for 120 s)
/// through which every pack upload meets `fault`; with the command that
/// backs the source up through the proxy, idle timeout `idle` seconds.
fn pack_uploads_meeting(
    fault: Fault,
    size: usize,
    idle: &str,
) -> (Env, std::path::PathBuf, FaultProxy, std::process::Command) {
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 4);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), pseudo_random(size, 11)).unwrap();
    let proxy = FaultProxy::start(&s3().endpoint, Duration::from_secs(120));
    proxy.inject(1000, &[fault], |method, target| {
        method == "PUT" && target.contains("/data/")
    });
    let mut backup = env.command(&["backup", src.to_str().unwrap(), "--compression", "none"]);
    backup
        .env("VAULT_REPOSITORY", env.repo_via(&proxy.endpoint()))
        .env("VAULT_S3_TIMEOUT", idle);
    (env, src, proxy, backup)
}

/// A pack upload on a slow link takes longer than the idle timeout and
/// succeeds: the timeout is for a request that stops moving, not a bound on
/// its whole duration. (5 MB at 640 KiB/s: ~8 s against a 5 s timeout,
/// which leaves the other requests room on a loaded machine; at 1 s one
/// run failed under load.)
#[test]
fn a_slow_upload_that_keeps_moving_outlasts_the_idle_timeout() {
    if !Backend::S3.available() {
        return;
    }
    let (env, src, proxy, mut backup) = pack_uploads_meeting(Fault::Slow, 5_000_000, "5");
    let out = backup.output().unwrap();
    assert_success(&out);
    assert!(!proxy.injected().is_empty(), "no pack went through slowly");
    assert_restores_identically(&env, &src, "restored", None);
}

/// The child's output once it exits, or once `bound` passes (then it is
/// killed): a bound for a test that would otherwise wait for minutes, not
/// a timing assertion.
fn output_within(mut child: std::process::Child, bound: Duration) -> std::process::Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().unwrap()
}

/// An endpoint that stops answering while packs are uploaded (a stopped
/// server: its kernel still takes megabytes of each upload into its
/// buffers) is a stall too: the uploads handed over must not count as the
/// endpoint working, or every retry started the stall count over and the
/// backup retried for minutes.
#[test]
fn an_endpoint_that_stops_answering_uploads_is_a_stall() {
    if !Backend::S3.available() {
        return;
    }
    let (env, _src, _proxy, mut backup) = pack_uploads_meeting(Fault::Hang, 3_000_000, "1");
    let child = backup
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A bound for the test, not a timing assertion.
    let out = output_within(child, Duration::from_secs(100));
    assert_code(&out, 8);
    let err = stderr(&out);
    assert!(err.contains("stalled"), "{err}");
    assert!(env.snapshots().is_empty(), "no snapshot without its data");
}

/// No credentials anywhere: a clear error (exit 1, like other
/// configuration errors) naming what to set, not the EC2 metadata
/// service's failure.
#[test]
fn missing_s3_credentials_are_named_instead_of_asking_instance_metadata() {
    let env = Env::uninitialised();
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = env.command(&["snapshots"]);
        cmd.env("VAULT_REPOSITORY", "s3:http://127.0.0.1:9/bucket/repo");
        for name in AWS_CREDENTIAL_VARS {
            cmd.env_remove(name);
        }
        for (name, value) in extra {
            cmd.env(name, value);
        }
        cmd.output().unwrap()
    };
    let out = run(&[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("no S3 credentials")
            && err.contains("AWS_ACCESS_KEY_ID")
            && err.contains("AWS_SECRET_ACCESS_KEY")
            && err.contains("secret_access_key_file")
            && err.contains("VAULT_S3_INSTANCE_CREDENTIALS"),
        "{err}"
    );
    let out = run(&[("AWS_ACCESS_KEY_ID", "id")]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("no secret access key (AWS_SECRET_ACCESS_KEY"),
        "{}",
        stderr(&out)
    );
    // With credentials, the same URL gets as far as the (absent) server.
    let out = run(&[
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("VAULT_S3_MAX_RETRIES", "0"),
    ]);
    assert!(!stderr(&out).contains("credentials"), "{}", stderr(&out));
}

/// The S3 server goes away in the middle of a backup (its port refuses
/// connections, the connections in flight are cut) and comes back seconds
/// later, longer than a request's counted retries last: the backup waits
/// for it (the retry window, `VAULT_S3_RETRY_SECS`) and succeeds. So does
/// a restore that starts while the server is away.
#[test]
fn a_server_away_for_seconds_fails_neither_a_backup_nor_a_restore() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::uninitialised_on(Backend::S3);
    init_with_pack_size(&env, 1);
    let src = env.path("src");
    random_tree(&src, 30, 1_000_000);
    let relay = relay::Relay::start(&s3().endpoint);
    let via = env.repo_via(&relay.endpoint());
    let backup = env
        .command(&["backup", src.to_str().unwrap(), "--compression", "none"])
        .env("VAULT_REPOSITORY", &via)
        .env_remove("VAULT_S3_RETRY_SECS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.objects_under("data").len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.down();
    let packs_when_down = env.objects_under("data").len();
    let mut backup = backup;
    // Away longer than the counted retries of a request last (seconds
    // when connections are refused at once).
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        backup.try_wait().unwrap().is_none(),
        "the backup ended while the server was away: {}",
        stderr(&output_within(backup, Duration::ZERO))
    );
    relay.up();
    let out = output_within(backup, Duration::from_secs(300));
    assert_success(&out);
    let packs = env.objects_under("data").len();
    eprintln!("server away at {packs_when_down} packs; {packs} in the end");
    assert!(
        packs > packs_when_down,
        "no pack was uploaded after the return"
    );
    assert_eq!(env.snapshots().len(), 1);
    check_verify(&env);

    // Away before the command starts, back a few seconds later.
    relay.down();
    let target = env.path("restored");
    let restore = env
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .env("VAULT_REPOSITORY", &via)
        .env_remove("VAULT_S3_RETRY_SECS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut restore = restore;
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        restore.try_wait().unwrap().is_none(),
        "the restore ended while the server was away: {}",
        stderr(&output_within(restore, Duration::ZERO))
    );
    relay.up();
    assert_success(&output_within(restore, Duration::from_secs(300)));
    let restored = target.join(src.strip_prefix("/").unwrap());
    let (want, got) = (contents(&src), contents(&restored));
    assert_eq!(want.len(), got.len(), "file count");
    for (path, bytes) in &want {
        assert!(got.get(path) == Some(bytes), "{path} differs after restore");
    }
}

/// Nothing listens at the endpoint (connections refused at once): a
/// command keeps trying for the retry window, 60 s by default, and fails
/// with exit 8 once `VAULT_S3_RETRY_SECS` has passed; Ctrl-C ends the
/// waiting at once rather than after the window.
#[test]
fn refused_connections_are_retried_for_the_retry_window() {
    let env = Env::uninitialised();
    let snapshots = |window: Option<&str>| {
        let mut cmd = env.command(&["snapshots"]);
        cmd.env("VAULT_REPOSITORY", "s3:http://127.0.0.1:1/vault-test/r1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("VAULT_S3_MAX_RETRIES")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match window {
            Some(secs) => cmd.env("VAULT_S3_RETRY_SECS", secs),
            None => cmd.env_remove("VAULT_S3_RETRY_SECS"),
        };
        cmd.spawn().unwrap()
    };
    // A short window: fails once it passed. (The bound is for the test.)
    let out = output_within(snapshots(Some("2")), Duration::from_secs(120));
    assert_code(&out, 8);
    // ...and says how long it retried and what lengthens that, so that an
    // outage longer than the window is not read as "never retried".
    assert!(
        stderr(&out).contains("retrying for at least 2s; VAULT_S3_RETRY_SECS"),
        "{}",
        stderr(&out)
    );
    // The cause, not only "error sending request".
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );

    // The default window: still trying long after the counted retries
    // (seconds) would have given up.
    let mut child = snapshots(None);
    std::thread::sleep(Duration::from_secs(20));
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(running, "gave up within 20 s: {}", stderr(&out));

    // Ctrl-C in a long window: the command stops by itself instead of
    // retrying on (the bound, far below the window, is for the test).
    let child = snapshots(Some("600"));
    std::thread::sleep(Duration::from_secs(3));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = output_within(child, Duration::from_secs(60));
    assert!(
        out.status.code().is_some(),
        "still retrying a minute after Ctrl-C: {}",
        stderr(&out)
    );
    // The signal ended it, not the store.
    assert_code(&out, 130);
}
