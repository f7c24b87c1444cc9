//! Health as a user sees it: a stopped backend goes down within
//! fall × interval + timeout with one log line and comes back within
//! rise × interval; a lone failed probe flips nothing; passive ejection beats
//! the prober; all down answers 503 without touching a backend; weights hold;
//! slow start ramps; a frozen backend does not stall the load; a backend
//! killed under load costs no client an error.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use percore::Config;
use percore::mock_backend::{MockBackend, MockConfig};
use percore::pool::BackendState;
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(200);
/// Scheduling slack on a shared two-core test machine.
const SLACK: Duration = Duration::from_millis(400);

/// Every log line of this test binary, for counting transition lines.
fn logs() -> &'static Mutex<String> {
    static LOGS: OnceLock<Mutex<String>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(String::new()))
}

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        logs()
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// Log lines containing all of `parts`.
fn log_lines(parts: &[&str]) -> Vec<String> {
    logs()
        .lock()
        .unwrap()
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .map(str::to_string)
        .collect()
}

fn with_health(config: &mut Config) {
    config.health_checks = true;
    config.health_interval = INTERVAL;
    config.health_timeout = TIMEOUT;
}

fn state_of(server: &percore::Server, url: &str) -> Option<BackendState> {
    let snapshot = server.control().snapshot();
    snapshot
        .backends
        .iter()
        .find(|(b, _)| b.url == url)
        .map(|(_, state)| *state)
}

fn status(server: &percore::Server) -> Value {
    let response = Client::connect(server.admin_addr()).get("/status");
    assert_eq!(response.status, 200);
    serde_json::from_slice(&response.body).unwrap()
}

fn backend_status(server: &percore::Server, url: &str) -> Value {
    status(server)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["url"] == url)
        .cloned()
        .unwrap()
}

fn restart_mock(
    driver: percore::config::DriverChoice,
    addr: std::net::SocketAddr,
    name: &str,
) -> MockBackend {
    MockBackend::start(MockConfig {
        name: Some(name.into()),
        driver: driver_kind(driver),
        ..MockConfig::new(addr)
    })
    .expect("the mock restarts on its port")
}

/// A raw backend answering `200 ok` on keep-alive connections, or, while
/// `frozen` is set, reading requests and holding them unanswered.
fn freezable(frozen: Arc<AtomicBool>) -> RawBackend {
    RawBackend::start(move |mut conn| {
        while conn.read_request().is_some() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while frozen.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if !conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
                return;
            }
        }
    })
}

both_drivers! {
    fn stopped_backend_goes_down_once_and_comes_back(driver) {
        capture_logs();
        let mut proxy = Proxy::start_with(driver, 2, with_health);
        let mock = proxy.mocks.remove(1);
        let (addr, url) = (mock.addr(), mock.url());
        assert!(wait_until(Duration::from_secs(2), || backend_status(&proxy.server, &url)["last_check"]["ok"] == true));
        let stopped = Instant::now();
        mock.stop();
        assert!(wait_until(Duration::from_secs(5), || state_of(&proxy.server, &url) == Some(BackendState::Down)));
        let to_down = stopped.elapsed();
        assert!(to_down <= INTERVAL * 3 * 11 / 10 + TIMEOUT + SLACK, "down after {to_down:?}");
        let down_lines = log_lines(&[&format!("backend {url} DOWN after 3 consecutive failures: connection refused")]);
        assert_eq!(down_lines.len(), 1, "{down_lines:?}");
        assert!(down_lines[0].contains("WARN"), "{}", down_lines[0]);
        // While down: requests go to the other backend, the outage shows in /status.
        for _ in 0..4 {
            assert_eq!(proxy.client().get("/").status, 200);
        }
        let view = backend_status(&proxy.server, &url);
        assert_eq!(view["state"], "down");
        assert_eq!(view["last_check"]["ok"], false);
        assert_eq!(view["last_check"]["error"], "connection refused");
        assert_eq!(view["transitions"][0]["to"], "down");
        let metrics = Client::connect(proxy.server.admin_addr()).get("/metrics").body_text();
        let failed_checks = metrics
            .lines()
            .find(|line| line.starts_with("percore_backend_health_checks_total") && line.contains(&url) && line.contains("result=\"fail\""))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(failed_checks.is_some_and(|n| n >= 3), "{metrics}");

        let restarted = Instant::now();
        let _mock = restart_mock(driver, addr, "mock1");
        assert!(wait_until(Duration::from_secs(5), || state_of(&proxy.server, &url) == Some(BackendState::Up)));
        let to_up = restarted.elapsed();
        assert!(to_up <= INTERVAL * 2 * 11 / 10 + INTERVAL + SLACK, "up after {to_up:?}");
        let up_lines = log_lines(&[&format!("backend {url} UP after 2 consecutive passing checks")]);
        assert_eq!(up_lines.len(), 1, "{up_lines:?}");
        assert!(up_lines[0].contains("INFO"), "{}", up_lines[0]);
        assert_eq!(log_lines(&[&url, "DOWN"]).len(), 1, "still exactly one DOWN line");
        let transitions = backend_status(&proxy.server, &url)["transitions"].clone();
        assert_eq!(transitions.as_array().unwrap().len(), 2, "{transitions}");
        assert_eq!((&transitions[1]["from"], &transitions[1]["to"]), (&Value::from("down"), &Value::from("up")));
    }

    fn one_failed_probe_between_passes_does_not_flip(driver) {
        capture_logs();
        // /health alternates 503 and 200: never fall (3) failures in a row.
        let probes = Arc::new(AtomicU64::new(0));
        let counted = probes.clone();
        let backend = RawBackend::start(move |mut conn| {
            while let Some(request) = conn.read_request() {
                let failing = request.path == "/health" && counted.fetch_add(1, Ordering::AcqRel).is_multiple_of(2);
                let response: &[u8] = if failing {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                if !conn.write(response) {
                    return;
                }
            }
        });
        let mut config = test_config(driver, vec![backend.url()]);
        with_health(&mut config);
        config.health_interval = Duration::from_millis(50);
        let server = start_server(config);
        assert!(wait_until(Duration::from_secs(5), || probes.load(Ordering::Acquire) >= 10));
        assert_eq!(state_of(&server, &backend.url()), Some(BackendState::Up));
        assert_eq!(backend_status(&server, &backend.url())["transitions"], serde_json::json!([]));
        assert!(log_lines(&[&backend.url(), "DOWN"]).is_empty());
    }

    fn passive_ejection_beats_the_prober(driver) {
        capture_logs();
        let refused = refused_url();
        let mut config = test_config(driver, vec![refused.clone()]);
        config.health_checks = true;
        // The prober would need 3 × 30 s: only passive detection can act.
        config.health_interval = Duration::from_secs(30);
        config.passive_failures = 3;
        let mock = start_mock(driver, "alive");
        config.backends.push(mock.url().into());
        let server = start_server(config);
        let mut client = Client::connect(server.proxy_addr());
        let started = Instant::now();
        for _ in 0..6 {
            // A refused connect is retried on the other backend: no error.
            assert_eq!(client.get("/").status, 200);
        }
        assert!(wait_until(Duration::from_secs(2), || state_of(&server, &refused) == Some(BackendState::Down)));
        assert!(started.elapsed() < Duration::from_secs(5), "ejected only after {:?}", started.elapsed());
        let lines = log_lines(&[&format!("backend {refused} DOWN after 3 consecutive request failures (ejected for 5s)")]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let before = server.control().snapshot().backends.iter().map(|(b, _)| b.counters.sum(|c| &c.failures)).sum::<u64>();
        for _ in 0..20 {
            assert_eq!(client.get("/").status, 200);
        }
        let after = server.control().snapshot().backends.iter().map(|(b, _)| b.counters.sum(|c| &c.failures)).sum::<u64>();
        assert_eq!(before, after, "no connect attempt to the ejected backend");
    }

    fn all_down_answers_503_without_touching_a_backend(driver) {
        capture_logs();
        let sick = || RawBackend::respond_with(&b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick"[..]);
        let backends = [sick(), sick()];
        let mut config = test_config(driver, backends.iter().map(RawBackend::url).collect());
        with_health(&mut config);
        let server = start_server(config);
        for backend in &backends {
            assert!(wait_until(Duration::from_secs(5), || state_of(&server, &backend.url()) == Some(BackendState::Down)));
            let lines = log_lines(&[&format!("backend {} DOWN after 3 consecutive failures: status 503", backend.url())]);
            assert_eq!(lines.len(), 1, "{lines:?}");
        }
        // "Down" holds on a core once it applied the version that says so.
        wait_applied(&server, server.control().version());
        let mut client = Client::connect(server.proxy_addr());
        for _ in 0..5 {
            let response = client.get("/page");
            assert_eq!(response.status, 503);
            assert_eq!(response.header("retry-after"), Some("1"));
        }
        for backend in &backends {
            assert!(backend.requests().iter().all(|r| r.path == "/health"), "a request reached a down backend");
        }
    }

    fn malformed_health_answers_take_a_backend_down(driver) {
        capture_logs();
        let garbage = RawBackend::respond_with(&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..]);
        let mut config = test_config(driver, vec![garbage.url()]);
        with_health(&mut config);
        let server = start_server(config);
        assert!(wait_until(Duration::from_secs(5), || state_of(&server, &garbage.url()) == Some(BackendState::Down)));
        let lines = log_lines(&[&format!("backend {} DOWN after 3 consecutive failures: malformed response", garbage.url())]);
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    fn added_backend_is_probed_at_once_and_removed_one_no_more(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| {
            with_health(config);
            config.health_interval = Duration::from_secs(30);
        });
        let control = proxy.server.control();
        let added = RawBackend::ok();
        control.add_backend(&added.url(), 1).unwrap();
        assert!(wait_until(Duration::from_millis(500), || added.request_count() == 1), "not probed at once");
        assert_eq!(added.requests()[0].path, "/health");
        assert!(wait_until(Duration::from_secs(1), || backend_status(&proxy.server, &added.url())["last_check"]["ok"] == true));

        let proxy = Proxy::start_with(driver, 1, |config| {
            with_health(config);
            config.health_interval = Duration::from_millis(50);
        });
        let control = proxy.server.control();
        let (kept, removed) = (RawBackend::ok(), RawBackend::ok());
        control.add_backend(&kept.url(), 1).unwrap();
        let (gone, _) = control.add_backend(&removed.url(), 1).unwrap();
        assert!(wait_until(Duration::from_secs(2), || removed.request_count() >= 2));
        control.remove_backend(gone.id).unwrap();
        let (kept_before, removed_before) = (kept.request_count(), removed.request_count());
        assert!(wait_until(Duration::from_secs(5), || kept.request_count() >= kept_before + 10));
        // At most the probe that was in flight at the removal.
        assert!(removed.request_count() <= removed_before + 1, "{} probes after removal", removed.request_count() - removed_before);
    }

    fn weights_split_sequential_requests(driver) {
        let mocks: Vec<MockBackend> = (0..3).map(|i| start_mock(driver, &format!("w{i}"))).collect();
        let server = start_server(test_config(driver, vec![mocks[0].url()]));
        let control = server.control();
        control.add_backend(&mocks[1].url(), 2).unwrap();
        let (_, version) = control.add_backend(&mocks[2].url(), 3).unwrap();
        wait_applied(&server, version);
        let mut client = Client::connect(server.proxy_addr());
        for _ in 0..6000 {
            assert_eq!(client.get("/").status, 200);
        }
        let counts: Vec<u64> = mocks.iter().map(MockBackend::requests).collect();
        for (count, weight) in counts.iter().zip([1.0, 2.0, 3.0]) {
            let share = *count as f64 / 6000.0;
            assert!((share - weight / 6.0).abs() <= 0.01, "{counts:?}");
        }
    }

    fn slow_start_share_grows(driver) {
        let old = start_mock(driver, "old");
        let mut config = test_config(driver, vec![old.url()]);
        config.slow_start = Duration::from_secs(2);
        let server = start_server(config);
        let new = start_mock(driver, "new");
        let (_, version) = server.control().add_backend(&new.url(), 1).unwrap();
        wait_applied(&server, version);
        let added = Instant::now();
        let mut client = Client::connect(server.proxy_addr());
        // New's share per half second of the window, then after it.
        let mut shares = Vec::new();
        let mut window = Duration::from_millis(500);
        while window <= Duration::from_secs(3) {
            let (old_before, new_before) = (old.requests(), new.requests());
            while added.elapsed() < window {
                assert_eq!(client.get("/").status, 200);
            }
            let (old_n, new_n) = (old.requests() - old_before, new.requests() - new_before);
            shares.push(new_n as f64 / (old_n + new_n).max(1) as f64);
            window += Duration::from_millis(500);
        }
        assert!(shares[0] < 0.2, "{shares:?}");
        assert!(shares[2] > shares[0], "{shares:?}");
        assert!(*shares.last().unwrap() > 0.4, "full share after the window: {shares:?}");
    }

    fn frozen_backend_does_not_stall_the_load(driver) {
        capture_logs();
        let frozen = Arc::new(AtomicBool::new(false));
        let backends = [freezable(Arc::new(AtomicBool::new(false))), freezable(frozen.clone()), freezable(Arc::new(AtomicBool::new(false)))];
        let mut config = test_config(driver, backends.iter().map(RawBackend::url).collect());
        with_health(&mut config);
        let server = start_server(config);
        let frozen_url = backends[1].url();
        let load = Load::start(server.proxy_addr(), 16);
        assert!(wait_until(Duration::from_secs(5), || load.completed() > 500));
        frozen.store(true, Ordering::Release);
        let stall = longest_stall(&load, Duration::from_secs(2));
        let down = state_of(&server, &frozen_url) == Some(BackendState::Down);
        frozen.store(false, Ordering::Release);
        let (completed, errors) = load.stop();
        assert!(down, "the frozen backend is down before it resumes");
        assert!(stall <= TIMEOUT, "throughput stalled for {stall:?}");
        assert_eq!(errors, 0, "of {completed}");
        assert_eq!(log_lines(&[&format!("backend {frozen_url} DOWN after 3 consecutive failures: timeout")]).len(), 1);
    }

    fn backend_killed_under_load_costs_no_client_error(driver) {
        capture_logs();
        let mut proxy = Proxy::start_with(driver, 3, with_health);
        let victim = proxy.mocks.remove(1);
        let (addr, url) = (victim.addr(), victim.url());
        let load = Load::start(proxy.addr(), 8);
        assert!(wait_until(Duration::from_secs(5), || load.completed() > 300));
        let killed = Instant::now();
        victim.stop();
        assert!(wait_until(Duration::from_secs(5), || state_of(&proxy.server, &url) == Some(BackendState::Down)));
        let to_down = killed.elapsed();
        let restarted = Instant::now();
        let revived = restart_mock(driver, addr, "mock1");
        // Passive ejection (5 refused connects in a row) usually beats the
        // prober here: its 5 s back-off comes first, then rise passes.
        // Requests counted before a look that still finds it down reached it
        // while it was down (the cores apply an Up within a millisecond, so
        // a count taken after the wait would include the first of them).
        let mut while_down = 0;
        assert!(wait_until(Duration::from_secs(15), || {
            let requests = revived.requests();
            let up = state_of(&proxy.server, &url) == Some(BackendState::Up);
            if !up {
                while_down = requests;
            }
            up
        }));
        let to_up = restarted.elapsed();
        assert_eq!(while_down, 0, "no request while down");
        let (others_before, completed_before) = (proxy.total_mock_requests(), load.completed());
        assert!(wait_until(Duration::from_secs(5), || load.completed() > completed_before + 600));
        let (completed, errors) = load.stop();
        let others = proxy.total_mock_requests() - others_before;
        let share = revived.requests() as f64 / (revived.requests() + others) as f64;
        eprintln!("fault test ({driver:?}): {completed} requests, {errors} errors, down {to_down:?} after the kill, up {to_up:?} after the restart, returning share {share:.2}");
        assert_eq!(errors, 0, "of {completed}");
        assert!(share > 0.2, "share after return {share}");
    }
}

/// Closed-loop GET load: `clients` threads, each a keep-alive connection
/// sending the next request when the last answer arrives.
struct Load {
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, completed, errors) = (stop.clone(), completed.clone(), errors.clone());
                std::thread::spawn(move || {
                    // A request caught on a frozen backend waits for it:
                    // slow, not failed (the freeze tests hold one for 10 s).
                    let connect = || {
                        let client = Client::connect(addr);
                        client
                            .stream
                            .set_read_timeout(Some(Duration::from_secs(30)))
                            .unwrap();
                        client
                    };
                    let mut client = connect();
                    while !stop.load(Ordering::Acquire) {
                        match client.try_request(&get("/")) {
                            Ok(response) if response.status == 200 => {
                                completed.fetch_add(1, Ordering::AcqRel);
                                if response.connection_has("close") {
                                    client = connect();
                                }
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::AcqRel);
                                client = connect();
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            completed,
            errors,
            threads,
        }
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Stops the clients; returns (completed, errors).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        let totals = |load: &Load| (load.completed(), load.errors.load(Ordering::Acquire));
        let mut load = self;
        for thread in load.threads.drain(..) {
            thread.join().unwrap();
        }
        totals(&load)
    }
}

/// CPU time (ns) the thread named `name` has run, from schedstat.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim() != name {
                return None;
            }
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse().ok()
        })
}

/// The share of a core the control plane's thread (`percore-control`)
/// takes over the next `span`, and the wall time measured.
fn control_thread_share(span: Duration) -> (f64, Duration) {
    let (cpu_before, started) = (thread_cpu_ns("percore-control").unwrap(), Instant::now());
    assert!(!wait_until(span, || false));
    let cpu = thread_cpu_ns("percore-control").unwrap() - cpu_before;
    let wall = started.elapsed();
    (cpu as f64 / wall.as_nanos() as f64, wall)
}

/// How long a state change takes to be applied by every core, idle and
/// under a closed-loop load: the control plane rings each core's doorbell,
/// so both are a fraction of a millisecond on a quiet machine.
#[test]
fn fan_out_reaches_idle_and_busy_cores_promptly() {
    let proxy = Proxy::start(percore::config::DriverChoice::Epoll, 2);
    let control = proxy.server.control();
    let id = proxy.backend_id(&proxy.mocks[1].url());
    let measure = |label: &str| {
        let mut times: Vec<Duration> = (0..20)
            .map(|i| {
                let state = if i % 2 == 0 {
                    BackendState::Down
                } else {
                    BackendState::Up
                };
                let started = Instant::now();
                let version = control.set_state(id, state).unwrap();
                assert!(control.wait_applied(version, Duration::from_secs(2)));
                started.elapsed()
            })
            .collect();
        times.sort();
        eprintln!(
            "fan-out to {label} cores: median {:?}, max {:?}",
            times[10], times[19]
        );
        times[10]
    };
    let idle = measure("idle");
    let load = Load::start(proxy.addr(), 16);
    assert!(wait_until(Duration::from_secs(5), || load.completed() > 500));
    let busy = measure("busy");
    let (completed, errors) = load.stop();
    assert_eq!(errors, 0, "of {completed}");
    assert!(
        idle < Duration::from_millis(50) && busy < Duration::from_millis(50),
        "idle {idle:?}, busy {busy:?}"
    );
}

/// Probing 100 backends every second costs under 1 % of a core: the
/// control plane's thread, which also serves the admin API, takes less than
/// 1 % of a core more with the prober than without. Slow (15 s):
/// `cargo test --test health -- --ignored`.
#[test]
#[ignore]
fn probing_a_hundred_backends_costs_under_one_percent_of_a_core() {
    let backends: Vec<RawBackend> = (0..100).map(|_| RawBackend::ok()).collect();
    let urls: Vec<String> = backends.iter().map(RawBackend::url).collect();
    let config = test_config(percore::config::DriverChoice::Auto, urls);
    // The same thread with health checks off: the idle admin API's share.
    let without_prober = {
        let _server = start_server(config.clone());
        control_thread_share(Duration::from_secs(5)).0
    };
    let mut config = config;
    with_health(&mut config);
    config.health_interval = Duration::from_secs(1);
    config.health_timeout = Duration::from_secs(1);
    let server = start_server(config);
    assert!(wait_until(Duration::from_secs(5), || backends
        .iter()
        .all(|b| b.request_count() >= 1)));
    let probes_before: usize = backends.iter().map(RawBackend::request_count).sum();
    let (with_prober, wall) = control_thread_share(Duration::from_secs(10));
    let probes: usize = backends
        .iter()
        .map(RawBackend::request_count)
        .sum::<usize>()
        - probes_before;
    let share = with_prober - without_prober;
    eprintln!(
        "prober: {probes} probes in {wall:?}, {:.3} % of a core ({:.3} % with it, {:.3} % without)",
        share * 100.0,
        with_prober * 100.0,
        without_prober * 100.0
    );
    assert!(probes >= 900, "{probes} probes");
    assert!(share < 0.01, "{:.3} % of a core", share * 100.0);
    assert!(
        backends
            .iter()
            .all(|b| state_of(&server, &b.url()) == Some(BackendState::Up))
    );
}

/// A mock backend in a process of its own (`percore backend`), so that it
/// can be SIGSTOPped and SIGKILLed as a real backend would be.
struct BackendProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl BackendProcess {
    fn start(addr: std::net::SocketAddr) -> BackendProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["backend", "--listen", &addr.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a backend process");
        let listening = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        assert!(listening, "the backend process did not listen on {addr}");
        BackendProcess { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend_processes(count: usize) -> Vec<BackendProcess> {
    (0..count)
        .map(|_| {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            BackendProcess::start(addr)
        })
        .collect()
}

/// Samples the load's completions every 10 ms for `span`; the longest time
/// nothing completed.
fn longest_stall(load: &Load, span: Duration) -> Duration {
    let start = Instant::now();
    let mut longest = Duration::ZERO;
    let mut last = (load.completed(), Instant::now());
    while start.elapsed() < span {
        std::thread::sleep(Duration::from_millis(10));
        let done = load.completed();
        if done != last.0 {
            last = (done, Instant::now());
        }
        longest = longest.max(last.1.elapsed());
    }
    longest
}

#[test]
fn a_sigstopped_backend_for_ten_seconds_does_not_stall_the_load() {
    let backends = backend_processes(3);
    let mut config = test_config(
        uring_choice(),
        backends.iter().map(BackendProcess::url).collect(),
    );
    with_health(&mut config);
    let server = start_server(config);
    let load = Load::start(server.proxy_addr(), 16);
    assert!(wait_until(Duration::from_secs(5), || load.completed() > 500));
    let frozen = &backends[1];
    frozen.signal(libc::SIGSTOP);
    let stall = longest_stall(&load, Duration::from_secs(10));
    let down = state_of(&server, &frozen.url()) == Some(BackendState::Down);
    frozen.signal(libc::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(10), || state_of(&server, &frozen.url())
            == Some(BackendState::Up)),
        "the thawed backend did not come back"
    );
    let (completed, errors) = load.stop();
    eprintln!("freeze test: {completed} requests, {errors} errors, longest stall {stall:?}");
    assert!(down, "the frozen backend was not down before it resumed");
    assert!(stall <= TIMEOUT + SLACK, "throughput stalled for {stall:?}");
    assert_eq!(errors, 0, "of {completed}");
}

#[test]
fn a_sigkilled_backend_costs_no_client_an_error_and_rejoins() {
    let mut backends = backend_processes(3);
    let mut config = test_config(
        uring_choice(),
        backends.iter().map(BackendProcess::url).collect(),
    );
    with_health(&mut config);
    let server = start_server(config);
    let load = Load::start(server.proxy_addr(), 8);
    assert!(wait_until(Duration::from_secs(5), || load.completed() > 300));
    let victim = backends.remove(1);
    let (addr, url) = (victim.addr, victim.url());
    let killed = Instant::now();
    victim.signal(libc::SIGKILL);
    drop(victim);
    assert!(wait_until(Duration::from_secs(5), || state_of(
        &server, &url
    ) == Some(
        BackendState::Down
    )));
    let to_down = killed.elapsed();
    let restarted = Instant::now();
    let revived = BackendProcess::start(addr);
    assert!(wait_until(Duration::from_secs(15), || state_of(
        &server, &url
    ) == Some(
        BackendState::Up
    )));
    let to_up = restarted.elapsed();
    let requests_of = |url: &str| backend_status(&server, url)["requests"].as_u64().unwrap();
    let (before, completed_before) = (requests_of(&url), load.completed());
    assert!(wait_until(Duration::from_secs(5), || load.completed()
        > completed_before + 600));
    let (completed, errors) = load.stop();
    let share =
        (requests_of(&url) - before) as f64 / (load_done(completed, completed_before)) as f64;
    eprintln!(
        "SIGKILL test: {completed} requests, {errors} errors, down {to_down:?} after the kill, up {to_up:?} after the restart, share after return {share:.2}"
    );
    assert_eq!(errors, 0, "of {completed}");
    assert!(share > 0.2, "share after return {share}");
    drop(revived);
}

fn load_done(completed: u64, before: u64) -> u64 {
    completed.saturating_sub(before).max(1)
}
