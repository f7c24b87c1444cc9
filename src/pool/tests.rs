//! Unit tests of the control plane's pool: urls, versions, removal, own
//! listeners, snapshots and the cores' views.

use super::*;

#[test]
fn backend_urls() {
    let (url, authority, addr) = parse_backend_url("http://127.0.0.1:9001/").unwrap();
    assert_eq!(
        (url.as_str(), authority.as_str()),
        ("http://127.0.0.1:9001", "127.0.0.1:9001")
    );
    assert_eq!(addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(parse_backend_url("http://127.0.0.1").unwrap().2.port(), 80);
    assert_eq!(
        parse_backend_url("http://[::1]:81").unwrap().2,
        "[::1]:81".parse().unwrap()
    );
    assert!(matches!(
        parse_backend_url("https://a:1"),
        Err(BackendUrlError::Scheme(_))
    ));
    assert!(matches!(
        parse_backend_url("http://a:1/path"),
        Err(BackendUrlError::Shape(_))
    ));
    assert!(matches!(
        parse_backend_url("http://"),
        Err(BackendUrlError::Shape(_))
    ));
    for url in [
        "http://a:0",
        "http://a:65536",
        "http://a:x1",
        "http://[::1]:0",
    ] {
        assert!(
            matches!(parse_backend_url(url), Err(BackendUrlError::Port(_))),
            "{url}"
        );
    }
}

#[test]
fn percore_is_never_its_own_backend() {
    let (plane, _receivers) = ControlPlane::new(1, StrategyKind::RoundRobin);
    plane.set_own_listeners(&[
        "0.0.0.0:8080".parse().unwrap(),
        "127.0.0.1:8081".parse().unwrap(),
    ]);
    for url in [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8081",
        "http://0.0.0.0:8081",
        "http://[::ffff:127.0.0.1]:8080",
    ] {
        assert_eq!(
            plane.add_backend(url, 1).unwrap_err(),
            PoolError::Loop(url.into()),
            "{url}"
        );
    }
    plane.add_backend("http://127.0.0.1:8082", 1).unwrap();
    // Another loopback address is another socket than 127.0.0.1:8081.
    plane.add_backend("http://127.0.0.2:8081", 1).unwrap();
}

#[test]
fn snapshots_fan_out_and_apply_in_order() {
    let (plane, receivers) = ControlPlane::new(2, StrategyKind::RoundRobin);
    let (a, _) = plane.add_backend("http://127.0.0.1:9001", 1).unwrap();
    let (b, v2) = plane.add_backend("http://127.0.0.1:9002", 1).unwrap();
    assert_eq!(
        plane.add_backend("http://127.0.0.1:9002", 1).unwrap_err(),
        PoolError::Duplicate("http://127.0.0.1:9002".into())
    );
    assert_eq!(
        plane.add_backend("http://127.1:9002", 1).unwrap_err(),
        PoolError::Duplicate("http://127.1:9002".into())
    );
    let local = LocalPool::new(0, plane.round_robin.clone());
    let snapshots: Vec<_> = receivers[0].updates.try_iter().collect();
    assert_eq!(snapshots.len(), 2);
    local.apply(&snapshots[1]);
    local.apply(&snapshots[0]); // stale: ignored
    assert_eq!((local.version(), local.len()), (v2, 2));

    let v3 = plane.set_state(a.id, BackendState::Down).unwrap();
    local.apply(&receivers[0].updates.try_recv().unwrap());
    assert_eq!(local.version(), v3);
    let now = Instant::now();
    for _ in 0..4 {
        assert_eq!(local.pick(&[], now).unwrap().backend.id, b.id);
    }
    assert!(local.pick(&[b.id], now).is_none());
    plane.remove_backend(b.id).unwrap();
    local.apply(&receivers[0].updates.try_recv().unwrap());
    assert_eq!(local.len(), 1);
    assert!(local.pick(&[], now).is_none());
    assert_eq!(receivers[1].updates.try_iter().count(), 4);
}

#[test]
fn passive_failures_exclude_at_once_and_eject_everywhere() {
    let (plane, receivers) = ControlPlane::new(2, StrategyKind::RoundRobin);
    plane.add_backend("http://127.0.0.1:9001", 1).unwrap();
    plane.add_backend("http://127.0.0.1:9002", 1).unwrap();
    let cores: Vec<_> = (0..2)
        .map(|core| {
            let local = LocalPool::new(core, plane.round_robin.clone());
            local.apply(&receivers[core].updates.try_iter().last().unwrap());
            local
        })
        .collect();
    let now = Instant::now();
    let failing = cores[0].pick(&[], now).unwrap();
    for _ in 0..4 {
        cores[0].record_failure(&failing, now);
    }
    cores[0].record_success(&failing);
    for _ in 0..4 {
        cores[0].record_failure(&failing, now);
    }
    assert_eq!(plane.apply_ejections(), 0, "a success broke the row");
    cores[0].record_failure(&failing, now);
    for _ in 0..4 {
        assert_ne!(
            cores[0].pick(&[], now).unwrap().backend.id,
            failing.backend.id
        );
    }
    assert_eq!(plane.apply_ejections(), 1);
    cores[1].apply(&receivers[1].updates.try_iter().last().unwrap());
    for _ in 0..4 {
        assert_ne!(
            cores[1].pick(&[], now).unwrap().backend.id,
            failing.backend.id
        );
    }
    let other = cores[1].pick(&[], now).unwrap();
    plane
        .set_state(other.backend.id, BackendState::Down)
        .unwrap();
    cores[1].apply(&receivers[1].updates.try_iter().last().unwrap());
    assert!(cores[1].pick(&[], now).is_none(), "all down: no pick");
}

fn one_core(backends: u64) -> (Arc<ControlPlane>, Vec<Inbox>) {
    let (plane, receivers) = ControlPlane::new(1, StrategyKind::RoundRobin);
    for port in 0..backends {
        plane
            .add_backend(&format!("http://127.0.0.1:{}", 9001 + port), 1)
            .unwrap();
    }
    (plane, receivers)
}

#[test]
fn a_backend_far_above_its_share_is_passed_over() {
    let (plane, receivers) = one_core(3);
    let local = LocalPool::new(0, plane.round_robin.clone());
    local.apply(&receivers[0].updates.try_iter().last().unwrap());
    let now = Instant::now();
    let stuck = local.pick(&[], now).unwrap();
    let in_flight = &stuck.backend.counters.core(0).in_flight;
    in_flight.add(FROZEN_FLOOR);
    // At the floor: still picked in turn.
    assert!((0..3).any(|_| local.pick(&[], now).unwrap().backend.id == stuck.backend.id));
    in_flight.add(1);
    for _ in 0..9 {
        assert_ne!(local.pick(&[], now).unwrap().backend.id, stuck.backend.id);
    }
    // Alone, it is still used.
    let others: Vec<BackendId> = plane
        .snapshot()
        .backends
        .iter()
        .map(|(b, _)| b.id)
        .filter(|id| *id != stuck.backend.id)
        .collect();
    assert_eq!(
        local.pick(&others, now).unwrap().backend.id,
        stuck.backend.id
    );
    in_flight.sub(FROZEN_FLOOR + 1);
}

#[test]
fn slow_start_admits_a_growing_share() {
    let (plane, receivers) = ControlPlane::with_health(
        1,
        StrategyKind::RoundRobin,
        HealthSettings {
            slow_start: Duration::from_secs(10),
            ..HealthSettings::default()
        },
    );
    plane.add_backend("http://127.0.0.1:9001", 1).unwrap();
    plane.settle();
    let (warm, _) = plane.add_backend("http://127.0.0.1:9002", 1).unwrap();
    let local = LocalPool::new(0, plane.round_robin.clone());
    local.apply(&receivers[0].updates.try_iter().last().unwrap());
    let share_at = |offset: Duration| {
        let now = Instant::now() + offset;
        let picks = (0..2000)
            .filter(|_| local.pick(&[], now).unwrap().backend.id == warm.id)
            .count();
        picks as f64 / 2000.0
    };
    let (start, middle, end) = (
        share_at(Duration::ZERO),
        share_at(Duration::from_secs(5)),
        share_at(Duration::from_secs(11)),
    );
    assert!(start < 0.06, "{start}");
    // Half-way, admitted half the time: a turn it declines goes to
    // the other backend, so its share is p / (1 + p) of the picks.
    assert!((0.3..0.37).contains(&middle), "{middle}");
    assert!((end - 0.5).abs() < 0.01, "{end}");
}

#[test]
fn tried_keeps_the_ids_pushed_and_stops_at_the_bound() {
    let mut tried = Tried::new();
    assert!(tried.is_empty());
    assert_eq!(tried.as_slice(), &[] as &[BackendId]);
    assert!(tried.push(7) && tried.push(3));
    assert_eq!(tried.as_slice(), &[7, 3]);
    tried.pop();
    assert_eq!(tried.as_slice(), &[7]);
    for id in 1..MAX_ATTEMPTS as BackendId {
        assert!(tried.push(100 + id));
    }
    assert!(tried.is_full());
    assert!(!tried.push(1), "a push past the bound is refused");
    assert_eq!(tried.as_slice().len(), MAX_ATTEMPTS);
    assert_eq!(
        tried.as_slice()[MAX_ATTEMPTS - 1],
        100 + MAX_ATTEMPTS as BackendId - 1
    );
    tried.pop();
    tried.pop();
    assert_eq!(tried.as_slice().len(), MAX_ATTEMPTS - 2);
    let mut empty = Tried::new();
    empty.pop();
    assert!(empty.is_empty(), "pop on empty stays empty");
}
