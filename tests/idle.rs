//! An idle percore sleeps: with no traffic, none of its threads wakes more
//! than about once a second (the cores' sweep, the latency collection), so
//! an idle proxy keeps an idle machine idle, idle keep-alive connections
//! open or not. Pool updates, ejections and
//! shutdown reach the cores and the control thread by doorbell, not by
//! polling. In a file of its own: it counts the wake-ups of threads by
//! name, which other tests' servers in the same process would share.

#[macro_use]
mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Voluntary context switches (each a sleep the thread woke from) of this
/// process's threads named `percore-*`, summed per name.
fn wake_ups() -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if !name.starts_with("percore-") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        *counts.entry(name).or_default() += switches;
    }
    counts
}

#[test]
fn an_idle_server_wakes_about_once_a_second() {
    for driver in [percore::config::DriverChoice::Epoll, uring_choice()] {
        let proxy = Proxy::start_with(driver, 2, |config| {
            config.health_checks = true;
            config.health_interval = Duration::from_secs(30);
        });
        // Every part has run once: a request, a pool change, the first probes.
        // A keep-alive connection stays open through the measurement:
        // parked, it is the sweep's to look after, and needs no timer.
        let mut client = proxy.client();
        assert_eq!(client.get("/").status, 200);
        let id = proxy.backend_id(&proxy.mocks[1].url());
        let version = proxy
            .server
            .control()
            .set_state(id, percore::pool::BackendState::Down)
            .unwrap();
        assert!(
            proxy
                .server
                .control()
                .wait_applied(version, Duration::from_secs(2))
        );
        std::thread::sleep(Duration::from_millis(500));

        let span = Duration::from_secs(2);
        let before = wake_ups();
        std::thread::sleep(span);
        let after = wake_ups();
        let woke: Vec<(String, u64)> = after
            .iter()
            .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
            .collect();
        eprintln!("{driver:?}: wake-ups in {span:?}: {woke:?}");
        for name in ["percore-w0", "percore-w1", "percore-control"] {
            assert!(after.contains_key(name), "no thread {name}: {woke:?}");
        }
        // Measured: 4 each in the two seconds. A 10 ms poll would be 200.
        for (name, n) in &woke {
            assert!(
                *n <= 10,
                "{name} woke {n} times in {span:?} while idle: {woke:?}"
            );
        }
        assert_eq!(
            client.get("/").status,
            200,
            "the idle connection still serves"
        );
        drop(client);
        drop(proxy);
    }
}
