//! Signals, with the real binary: SIGTERM drains (every accepted request
//! completes, responses say `Connection: close`, the process exits 0), a
//! second SIGTERM exits at once, a second percore started on the same
//! address with `--handover` takes over without a client error, and SIGHUP
//! (or `percore ctl reload`) applies a changed file under load.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A percore process on 127.0.0.1, its stderr read into `log`.
struct Percore {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Percore {
    fn start(addr: SocketAddr, backend: &str, extra: &[&str]) -> Percore {
        let mut args = vec!["--admin", "127.0.0.1:0", "--backend", backend];
        args.extend_from_slice(extra);
        Percore::start_with(addr, &args)
    }

    /// Two workers listening on `addr`, with `args` (a backend, an admin
    /// address, a config file); returns once it logs that it serves.
    fn start_with(addr: SocketAddr, args: &[&str]) -> Percore {
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["--listen", &addr.to_string(), "--workers", "2"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start percore");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let serving = Arc::new(AtomicBool::new(false));
        {
            let (log, serving) = (log.clone(), serving.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    serving.fetch_or(line.contains("percore is serving"), Ordering::AcqRel);
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let started = wait_until(Duration::from_secs(20), || serving.load(Ordering::Acquire));
        assert!(started, "percore did not start: {}", log.lock().unwrap());
        Percore { child, addr, log }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Waits for the process to exit, at most `limit`.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Percore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn sigterm_lets_every_accepted_request_finish_then_exits_zero() {
    let mock = start_mock(uring_choice(), "slow");
    let mut percore = Percore::start(free_addr(), &mock.url(), &[]);
    let addr = percore.addr;
    // An idle keep-alive client: the drain closes it.
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/").status, 200);
    let before = mock.requests();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                client.try_request(&get(&format!("/delay/500?{i}")))
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || mock.requests() >= before + 16),
        "the slow requests did not all reach the backend"
    );
    let signalled = Instant::now();
    percore.signal(libc::SIGTERM);
    for (i, client) in clients.into_iter().enumerate() {
        let response = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status, 200, "request {i}: {}", response.head);
        assert!(
            response.body_text().contains("path=/delay/500"),
            "request {i}: {}",
            response.body_text()
        );
        assert!(
            response.connection_has("close"),
            "request {i} in the drain without Connection: close: {}",
            response.head
        );
    }
    assert!(
        !idle.is_open_after(Duration::from_secs(3)),
        "an idle keep-alive connection outlived the drain"
    );
    let status = percore
        .exit_within(Duration::from_secs(10))
        .expect("percore did not exit after the drain");
    assert_eq!(status.code(), Some(0), "{}", percore.log());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    let log = percore.log();
    assert!(
        log.contains("draining") && log.contains("every connection finished"),
        "{log}"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let mock = start_mock(uring_choice(), "slow");
    let mut percore = Percore::start(free_addr(), &mock.url(), &[]);
    let addr = percore.addr;
    let slow = std::thread::spawn(move || Client::connect(addr).try_request(&get("/delay/20000")));
    assert!(wait_until(Duration::from_secs(5), || mock.requests() >= 1));
    percore.signal(libc::SIGTERM);
    assert!(
        percore.exit_within(Duration::from_millis(300)).is_none(),
        "the drain did not wait for the request in flight"
    );
    let second = Instant::now();
    percore.signal(libc::SIGTERM);
    let status = percore
        .exit_within(Duration::from_secs(2))
        .expect("a second SIGTERM did not end percore");
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        percore.log()
    );
    assert!(
        slow.join().unwrap().is_err(),
        "the cut request got a response"
    );
}

/// Sets `net.ipv4.tcp_migrate_req` for the test's life (Linux 5.14+): a
/// closing SO_REUSEPORT listener's queued connections then move to another
/// listener of the group instead of being reset, which is what a handover
/// between processes needs (the README's procedure sets it too).
struct MigrateRequests(Option<String>);

impl MigrateRequests {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

    fn enable() -> MigrateRequests {
        let before = std::fs::read_to_string(Self::PATH).ok();
        if let Err(error) = std::fs::write(Self::PATH, "1") {
            eprintln!(
                "cannot enable {}: {error}; queued connections may be reset",
                Self::PATH
            );
        }
        MigrateRequests(before)
    }
}

impl Drop for MigrateRequests {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = std::fs::write(Self::PATH, before.trim());
        }
    }
}

#[test]
fn a_second_percore_takes_over_the_address_without_a_client_error() {
    let _migrate = MigrateRequests::enable();
    let mock = start_mock(uring_choice(), "b");
    let addr = free_addr();
    let mut old = Percore::start(addr, &mock.url(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Result<u16, String>>::new()));
    let load: Vec<_> = (0..4)
        .map(|thread| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let mut client: Option<Client> = None;
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    // Half the threads keep connections alive (until told to
                    // close), half open one per request.
                    let conn = client.get_or_insert_with(|| Client::connect(addr));
                    let outcome = conn.try_request(&get(&format!("/t{thread}/{i}")));
                    let reuse = thread % 2 == 0
                        && outcome
                            .as_ref()
                            .is_ok_and(|r| r.status == 200 && !r.connection_has("close"));
                    if !reuse {
                        client = None;
                    }
                    outcomes
                        .lock()
                        .unwrap()
                        .push(outcome.map(|r| r.status).map_err(|e| e.to_string()));
                    i += 1;
                }
            })
        })
        .collect();
    let count = || outcomes.lock().unwrap().len();
    assert!(
        wait_until(Duration::from_secs(5), || count() >= 200),
        "the load did not start"
    );
    let new = Percore::start(addr, &mock.url(), &["--handover"]);
    old.signal(libc::SIGTERM);
    let status = old
        .exit_within(Duration::from_secs(10))
        .expect("the old percore did not finish its drain");
    assert_eq!(status.code(), Some(0), "{}", old.log());
    let at_exit = count();
    assert!(
        wait_until(Duration::from_secs(5), || count() >= at_exit + 200),
        "the new percore did not carry the load"
    );
    stop.store(true, Ordering::Release);
    for thread in load {
        thread.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| *o != &Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nold: {}\nnew: {}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)],
        old.log(),
        new.log()
    );
}

fn admin_status(admin: SocketAddr) -> serde_json::Value {
    let mut client = Client::connect(admin);
    let response = client.get("/status");
    assert_eq!(response.status, 200, "{}", response.head);
    serde_json::from_slice(&response.body).expect("status is JSON")
}

fn pool_of(status: &serde_json::Value) -> Vec<(String, u64)> {
    let mut pool: Vec<(String, u64)> = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["url"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    pool.sort();
    pool
}

#[test]
fn sighup_applies_a_changed_file_under_load_and_refuses_an_invalid_one() {
    let (a, b, c) = (
        start_mock(uring_choice(), "a"),
        start_mock(uring_choice(), "b"),
        start_mock(uring_choice(), "c"),
    );
    let dir = std::env::temp_dir().join(format!("percore-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("percore.json");
    let write = |text: String| std::fs::write(&file, text).unwrap();
    write(format!(
        r#"{{"backends": ["{}", "{}"], "strategy": "round_robin", "health_checks": false}}"#,
        a.url(),
        b.url()
    ));
    let admin = free_addr();
    let config = file.to_str().unwrap().to_string();
    let listen = free_addr();
    let percore = Percore::start_with(
        listen,
        &["--config", &config, "--admin", &admin.to_string()],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Result<u16, String>>::new()));
    let load = {
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(listen);
            while !stop.load(Ordering::Acquire) {
                let outcome = client.try_request(&get("/r"));
                if outcome.is_err() {
                    client = Client::connect(listen);
                }
                outcomes
                    .lock()
                    .unwrap()
                    .push(outcome.map(|r| r.status).map_err(|e| e.to_string()));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(5), || a.requests() > 20
        && b.requests() > 20));

    // B and C (weight 2) instead of A and B; least connections; a timeout.
    write(format!(
        r#"{{"backends": ["{}", {{"url": "{}", "weight": 2}}], "strategy": "least_connections", "response_timeout": "30s", "health_checks": false}}"#,
        b.url(),
        c.url()
    ));
    percore.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || percore
            .log()
            .contains("configuration reloaded")),
        "{}",
        percore.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || c.requests() > 20),
        "the added backend got no traffic"
    );
    let status = admin_status(admin);
    let mut expected = vec![(b.url(), 1), (c.url(), 2)];
    expected.sort();
    assert_eq!(pool_of(&status), expected);
    assert_eq!(status["strategy"], "least_connections");
    // The removed backend drained: it gets nothing more.
    let a_after = a.requests();
    let c_now = c.requests();
    assert!(wait_until(Duration::from_secs(5), || c.requests() > c_now + 20));
    assert_eq!(
        a.requests(),
        a_after,
        "the removed backend still gets requests"
    );

    // An invalid file changes nothing, and says why.
    write("{ \"backends\": [".into());
    percore.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || percore
            .log()
            .contains("reload rejected")),
        "{}",
        percore.log()
    );
    assert_eq!(pool_of(&admin_status(admin)).len(), 2);

    // `percore ctl reload` does what SIGHUP does: weight 3 for C.
    write(format!(
        r#"{{"backends": ["{}", {{"url": "{}", "weight": 3}}], "strategy": "least_connections", "response_timeout": "30s", "health_checks": false}}"#,
        b.url(),
        c.url()
    ));
    let ctl = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["ctl", "--admin", &admin.to_string(), "reload"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        ctl.status.success() && said.contains("reweighted") && said.contains(&c.url()),
        "{said}"
    );
    assert!(pool_of(&admin_status(admin)).contains(&(c.url(), 3)));

    stop.store(true, Ordering::Release);
    load.join().unwrap();
    let outcomes = outcomes.lock().unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| *o != &Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the reloads: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    drop(percore);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_connection_does_not_hold_the_drain() {
    let mock = start_mock(uring_choice(), "m");
    let mut percore = Percore::start(free_addr(), &mock.url(), &[]);
    // Connected, never sends a byte: accepted, so it gets a moment to send
    // its request, not the whole head deadline (30 s).
    let _silent = TcpStream::connect(percore.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    percore.signal(libc::SIGTERM);
    let status = percore
        .exit_within(Duration::from_secs(5))
        .expect("a silent connection held the drain");
    assert_eq!(status.code(), Some(0), "{}", percore.log());
    assert!(signalled.elapsed() < Duration::from_secs(5));
}
