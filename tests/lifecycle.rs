//! Starting and stopping: `Server::shutdown` and `MockBackend::stop` close
//! the connections they hold, as their docs promise, and the mock backend
//! (which the other tests lean on) keeps its connections usable across its
//! test behaviours.

#[macro_use]
mod common;

use common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

both_drivers! {
    fn server_shutdown_closes_client_connections(driver) {
        let proxy = Proxy::start(driver, 1);
        let addr = proxy.addr();
        let mut client = proxy.client();
        assert_eq!(client.get("/").status, 200);
        let Proxy { server, mocks } = proxy;
        server.shutdown();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "still accepting after shutdown");
        assert!(!client.is_open_after(Duration::from_secs(2)), "an idle client connection outlived Server::shutdown by 2 s");
        drop(mocks);
    }

    fn mock_stop_closes_its_connections(driver) {
        let mock = start_mock(driver, "m");
        let addr = mock.addr();
        let mut client = Client::connect(addr);
        assert_eq!(client.get("/").status, 200);
        mock.stop();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "still accepting after stop");
        assert!(!client.is_open_after(Duration::from_secs(2)), "an idle connection outlived MockBackend::stop by 2 s");
    }

    fn mock_keeps_a_connection_usable_after_a_delayed_answer(driver) {
        let mock = start_mock(driver, "m");
        let mut client = Client::connect(mock.addr());
        assert_eq!(client.get("/delay/20").status, 200);
        let next = client.try_request(&get("/after-delay"));
        assert_eq!(next.map(|r| r.status).map_err(|e| e.to_string()), Ok(200), "the mock broke its keep-alive connection after /delay");
    }
}

both_drivers! {
    fn idle_keep_alive_connections_are_closed_after_the_idle_timeout(driver) {
        // One timeout shorter than the park delay (a timer in the serving
        // task), one longer (the parked connection's deadline, swept once a
        // second): both close the connection, neither before its time. The
        // idle wait starts after the proxy writes its response, so after
        // `sent`: an earlier close is a bug whatever the machine's load. The
        // upper bound leaves the once-a-second sweep and a loaded machine
        // plenty of room; a connection that is never closed still fails.
        for idle_timeout in [Duration::from_millis(200), Duration::from_millis(1500)] {
            let proxy = Proxy::start_with(driver, 1, |config| config.client_idle_timeout = idle_timeout);
            let mut client = proxy.client();
            let sent = Instant::now();
            assert_eq!(client.get("/").status, 200);
            let closed_by = idle_timeout + Duration::from_secs(5);
            let closed = !client.is_open_after(closed_by);
            let closed_after = sent.elapsed();
            assert!(closed, "still open {closed_after:?} after the request, idle timeout {idle_timeout:?}");
            // Timers may round to their millisecond, the ticker to its tick.
            let earliest = idle_timeout - Duration::from_millis(10);
            assert!(closed_after >= earliest, "closed {closed_after:?} after the request, before the {idle_timeout:?} idle timeout");
        }
    }

    fn a_connection_that_never_sends_a_byte_is_held_by_the_head_deadline(driver) {
        // Not by the keep-alive idle timeout: silent connections are cheap
        // to open and must not pin descriptors for a minute.
        let proxy = Proxy::start_with(driver, 1, |config| {
            config.request_head_timeout = Duration::from_millis(300);
            config.client_idle_timeout = Duration::from_secs(60);
        });
        let opened = Instant::now();
        let mut client = proxy.client();
        let closed = !client.is_open_after(Duration::from_secs(5));
        let closed_after = opened.elapsed();
        assert!(closed, "a silent connection was still open {closed_after:?} after it opened");
        assert!(closed_after >= Duration::from_millis(290), "closed after {closed_after:?}, before the head deadline");
        // A connection that sends its request in time is served as usual.
        let mut client = proxy.client();
        assert_eq!(client.get("/").status, 200);
    }
}
