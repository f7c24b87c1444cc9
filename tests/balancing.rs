//! Load balancing as the backends see it: round-robin's exact rotation across
//! connections and cores, least-connections steering around a busy backend,
//! switching strategy at run time, and a backend stopping under load.

#[macro_use]
mod common;

use common::*;
use percore::balance::StrategyKind;
use percore::pool::BackendState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Starts `count` GETs of `path` on their own connections, each on a thread;
/// they finish when the backend answers.
fn hold_requests(proxy: &Proxy, count: usize, path: &str) -> Vec<JoinHandle<u16>> {
    (0..count)
        .map(|_| {
            let addr = proxy.addr();
            let path = path.to_string();
            std::thread::spawn(move || Client::connect(addr).get(&path).status)
        })
        .collect()
}

/// Requests in flight to the backend at `url`, as the proxy counts them.
fn in_flight(proxy: &Proxy, url: &str) -> u64 {
    let id = proxy.backend_id(url);
    proxy
        .server
        .control()
        .snapshot()
        .backends
        .iter()
        .find(|(b, _)| b.id == id)
        .map(|(b, _)| b.in_flight())
        .unwrap()
}

/// Least-connections scenario: mock0 holds `held` slow requests; the fast
/// requests that follow must all go to mock1 and mock2.
fn busy_backend_is_avoided(proxy: &Proxy, held: usize) {
    let control = proxy.server.control();
    let ids: Vec<_> = proxy
        .mocks
        .iter()
        .map(|m| proxy.backend_id(&m.url()))
        .collect();
    let before = proxy.mock_requests();

    // Route the slow requests to mock0 only, then bring the others back.
    let mut version = 0;
    for &id in &ids[1..] {
        version = control.set_state(id, BackendState::Down).unwrap();
    }
    wait_applied(&proxy.server, version);
    let slow = hold_requests(proxy, held, "/delay/1500");
    let url0 = proxy.mocks[0].url();
    assert!(
        wait_until(Duration::from_secs(3), || in_flight(proxy, &url0)
            == held as u64
            && proxy.mock_requests()[0] == before[0] + held as u64),
        "slow requests not in flight at mock0: in flight {}, requests {:?}",
        in_flight(proxy, &url0),
        proxy.mock_requests()
    );
    for &id in &ids[1..] {
        version = control.set_state(id, BackendState::Up).unwrap();
    }
    wait_applied(&proxy.server, version);

    let mut client = proxy.client();
    for i in 0..20 {
        let response = client.get(&format!("/fast/{i}"));
        assert_eq!(response.status, 200);
        assert_ne!(
            response.header("x-backend"),
            Some("mock0"),
            "request {i} went to the busy backend"
        );
    }
    let after = proxy.mock_requests();
    assert_eq!(
        after[0] - before[0],
        held as u64,
        "mock0 got more than the slow requests: {before:?} -> {after:?}"
    );
    assert_eq!((after[1] - before[1]) + (after[2] - before[2]), 20);
    // Ties between the idle backends are spread, not all on one.
    assert!(
        after[1] > before[1] && after[2] > before[2],
        "idle backends not both used: {before:?} -> {after:?}"
    );

    for thread in slow {
        assert_eq!(thread.join().unwrap(), 200, "a slow request failed");
    }
}

both_drivers! {
    fn round_robin_rotates_exactly_on_one_connection(driver) {
        let proxy = Proxy::start(driver, 3);
        let mut client = proxy.client();
        let mut names = Vec::new();
        for i in 0..30 {
            let response = client.get(&format!("/rr/{i}"));
            assert_eq!(response.status, 200);
            names.push(response.header("x-backend").unwrap().to_string());
        }
        assert_eq!(proxy.mock_requests(), vec![10, 10, 10]);
        for window in names.chunks(3) {
            let mut sorted = window.to_vec();
            sorted.sort();
            assert_eq!(sorted, vec!["mock0", "mock1", "mock2"], "consecutive requests must name the backends in turn: {names:?}");
        }
    }

    fn round_robin_rotates_exactly_across_connections(driver) {
        let proxy = Proxy::start(driver, 3);
        // Fresh connections land on either core; the rotation is shared.
        for connection in 0..6 {
            let mut client = proxy.client();
            for i in 0..5 {
                assert_eq!(client.get(&format!("/c/{connection}/{i}")).status, 200);
            }
        }
        assert_eq!(proxy.mock_requests(), vec![10, 10, 10]);
        for i in 0..30 {
            assert_eq!(proxy.client().get(&format!("/single/{i}")).status, 200);
        }
        assert_eq!(proxy.mock_requests(), vec![20, 20, 20]);
    }

    fn least_connections_avoids_the_busy_backend(driver) {
        let proxy = Proxy::start_with(driver, 3, |config| config.strategy = StrategyKind::LeastConnections);
        busy_backend_is_avoided(&proxy, 3);
    }

    fn strategy_switch_applies_on_every_core(driver) {
        let proxy = Proxy::start(driver, 3);
        let control = proxy.server.control();

        let (previous, version) = control.set_strategy(StrategyKind::LeastConnections);
        assert_eq!(previous, StrategyKind::RoundRobin);
        wait_applied(&proxy.server, version);
        assert_eq!(control.snapshot().strategy, StrategyKind::LeastConnections);
        busy_backend_is_avoided(&proxy, 2);

        let (previous, version) = control.set_strategy(StrategyKind::RoundRobin);
        assert_eq!(previous, StrategyKind::LeastConnections);
        wait_applied(&proxy.server, version);
        let before = proxy.mock_requests();
        let mut client = proxy.client();
        for i in 0..30 {
            let response = client.get("/rr");
            assert_eq!(response.status, 200, "request {i} after the switch back:\n{}{}", response.head, response.body_text());
        }
        let after = proxy.mock_requests();
        let gained: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(gained, vec![10, 10, 10], "round-robin after the switch back");
    }

    fn removed_backend_gets_no_more_requests(driver) {
        let proxy = Proxy::start(driver, 3);
        let (_, version) = proxy.server.control().remove_backend(proxy.backend_id(&proxy.mocks[1].url())).unwrap();
        wait_applied(&proxy.server, version);
        let mut client = proxy.client();
        for _ in 0..20 {
            assert_eq!(client.get("/").status, 200);
        }
        assert_eq!(proxy.mock_requests(), vec![10, 0, 10]);
    }

    fn stopping_a_backend_under_load_loses_no_request(driver) {
        let mut proxy = Proxy::start(driver, 3);
        let load = Load::start(proxy.addr());
        load.wait_for(30, "load did not start");
        proxy.mocks.remove(1).stop();
        load.finish_after_more(60)
    }

    /// As above, with a backend whose connections really close when it
    /// stops (a raw backend: its drop closes every connection it accepted).
    fn killing_a_backend_under_load_loses_no_request(driver) {
        let mut backends: Vec<RawBackend> = (0..3).map(|_| RawBackend::ok()).collect();
        let server = start_server(test_config(driver, backends.iter().map(RawBackend::url).collect()));
        let load = Load::start(server.proxy_addr());
        load.wait_for(30, "load did not start");
        drop(backends.remove(1));
        load.finish_after_more(60)
    }
}

/// Two sequential GET loads on threads: one keep-alive connection, one
/// connection per request. Records every outcome.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<(u16, String)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = [true, false]
            .into_iter()
            .map(|keep_alive| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut i = 0;
                    while !stop.load(Ordering::Acquire) {
                        if !keep_alive {
                            client = Client::connect(addr);
                        }
                        let outcome = match client.try_request(&get(&format!("/load/{i}"))) {
                            Ok(response) => (
                                response.status,
                                format!("keep_alive={keep_alive} #{i}: {}", response.head),
                            ),
                            Err(error) => (0, format!("keep_alive={keep_alive} #{i}: {error}")),
                        };
                        let failed = outcome.0 != 200;
                        outcomes.lock().unwrap().push(outcome);
                        if failed {
                            client = Client::connect(addr);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    fn wait_for(&self, count: usize, message: &str) {
        assert!(
            wait_until(Duration::from_secs(5), || self.count() >= count),
            "{message}"
        );
    }

    /// Lets `more` requests complete, stops the load, and checks that every
    /// request from the stop on got a 200.
    fn finish_after_more(mut self, more: usize) {
        let at_stop = self.count();
        let progressed = wait_until(Duration::from_secs(8), || self.count() >= at_stop + more);
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap();
        let failed: Vec<_> = outcomes[at_stop..]
            .iter()
            .filter(|(status, _)| *status != 200)
            .collect();
        assert!(
            failed.is_empty() && progressed,
            "after the stop: {} requests, {} failed (progressed: {progressed}): {failed:#?}",
            outcomes.len() - at_stop,
            failed.len()
        );
        let during: Vec<_> = outcomes[..at_stop]
            .iter()
            .filter(|(status, _)| *status != 200)
            .collect();
        assert!(
            during.is_empty(),
            "requests before or during the stop failed: {during:#?}"
        );
    }
}
