//! The accept loop that the proxy's and the admin API's listeners share:
//! accept until stopped, and on an error (out of file descriptors, mostly)
//! say so at most once a second and back off instead of spinning.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::io::CancelHandle;
use monoio::net::{TcpListener, TcpStream};

/// How long an accept error pauses the loop: long enough not to spin on a
/// full descriptor table, short enough that a freed descriptor is used soon.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// At most one log line per this interval for repeated accept errors.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// Hands each accepted connection to `serve` until an accept is cancelled
/// through `stop` (or fails) while `stopping` says so. `listener_name`
/// names the listener in logs.
pub async fn accept_loop(
    listener: &TcpListener,
    stop: CancelHandle,
    stopping: impl Fn() -> bool,
    listener_name: &str,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => serve(stream, peer),
            Err(_) if stopping() => return,
            Err(error) => {
                if last_error_log.is_none_or(|at| at.elapsed() > ERROR_LOG_EVERY) {
                    tracing::warn!(listener = listener_name, %error, "accept failed");
                    last_error_log = Some(Instant::now());
                }
                monoio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}
