//! Process signals: SIGTERM and SIGINT start a graceful drain, and a second
//! one exits at once; SIGHUP rereads the configuration file (see `reload`).

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::server::DrainHandle;

/// Signals caught from the moment this is called; their handling starts
/// with `handle`, so one that arrives while the server starts is kept.
pub struct Caught(Signals);

pub fn catch() -> io::Result<Caught> {
    Signals::new([SIGTERM, SIGINT, SIGHUP]).map(Caught)
}

impl Caught {
    /// Handles the signals on a thread of their own for the rest of the
    /// process's life.
    pub fn handle(
        mut self,
        drain: DrainHandle,
        grace: Duration,
        mut reload: impl FnMut() + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("percore-signals".into())
            .spawn(move || {
                for signal in self.0.forever() {
                    let name = signal_name(signal);
                    if signal == SIGHUP {
                        tracing::info!(signal = name, "rereading the configuration");
                        reload();
                    } else if drain.drain() {
                        tracing::info!(signal = name, ?grace, "draining: no new connections, requests in flight finish within the grace period; a second signal exits at once");
                    } else {
                        tracing::warn!(signal = name, "second signal: exiting at once");
                        std::process::exit(128 + signal);
                    }
                }
            })
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
