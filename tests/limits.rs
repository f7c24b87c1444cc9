//! Connection limits: past `max_connections` a worker resets new
//! connections at once and keeps serving the open ones; out of file
//! descriptors (the real binary under a low `ulimit -n`), it refuses the
//! rest quickly, recovers when descriptors free up, and leaks none.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the proxy ends a new connection without answering, within `limit`.
fn refused_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let _ = stream.write_all(&get("/refused?"));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

both_drivers! {
    fn past_max_connections_new_ones_are_reset_and_open_ones_served(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| {
            config.workers = Some(1);
            config.max_connections = 2;
        });
        let mut first = proxy.client();
        let mut second = proxy.client();
        assert_eq!(first.get("/1").status, 200);
        assert_eq!(second.get("/2").status, 200);
        let mut third = TcpStream::connect(proxy.addr()).unwrap();
        assert!(refused_within(&mut third, Duration::from_secs(2)), "a connection past the limit was not refused");
        assert_eq!(first.get("/1b").status, 200);
        assert_eq!(second.get("/2b").status, 200);
        let refused: u64 = proxy.server.control().workers.iter().map(|w| w.refused_connections.get()).sum();
        assert_eq!(refused, 1);
        drop(first);
        assert!(
            wait_until(Duration::from_secs(5), || proxy.client().try_request(&get("/after")).is_ok_and(|r| r.status == 200)),
            "a slot freed by a closed connection was not reused"
        );
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn out_of_descriptors_the_proxy_refuses_quickly_and_recovers_without_leaks() {
    let mock = start_mock(uring_choice(), "fd");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .args(["--listen", &listen.to_string(), "--admin", "127.0.0.1:0"])
        .args(["--backend", &mock.url(), "--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().expect("start percore");
    let pid = child.id();
    let started = wait_until(Duration::from_secs(20), || {
        TcpStream::connect(listen).is_ok()
    });
    assert!(started, "percore did not start");
    let mut warm = Client::connect(listen);
    assert_eq!(warm.get("/warm").status, 200);
    let baseline = open_descriptors(pid);

    // A storm: far more clients than descriptors, each holding its connection.
    let mut served = Vec::new();
    let mut refused = 0;
    let storm = Instant::now();
    for i in 0..80 {
        let Ok(stream) = TcpStream::connect(listen) else {
            refused += 1;
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut client = Client::from_stream(stream);
        match client.try_request(&get(&format!("/storm/{i}"))) {
            Ok(response) => {
                assert_eq!(response.status, 200);
                served.push(client);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 0 && !served.is_empty(),
        "served {} refused {refused}",
        served.len()
    );
    assert!(
        storm.elapsed() < Duration::from_secs(20),
        "refusals were not quick: the storm took {:?}",
        storm.elapsed()
    );
    // The connections it has keep working.
    for client in &mut served {
        assert_eq!(client.get("/again").status, 200);
    }
    assert_eq!(warm.get("/warm-again").status, 200);
    // Descriptors free up: it serves again, and holds no more than before.
    served.clear();
    let recovered = wait_until(Duration::from_secs(10), || {
        Client::connect(listen)
            .try_request(&get("/recovered"))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(recovered, "no recovery after descriptors freed up");
    let settled = wait_until(Duration::from_secs(10), || {
        open_descriptors(pid) <= baseline
    });
    assert!(
        settled,
        "descriptors leaked: {} open against {baseline} before the storm",
        open_descriptors(pid)
    );
    let _ = child.kill();
    let _ = child.wait();
}
