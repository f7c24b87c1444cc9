//! One request's trip upstream: pick a backend, check out a connection
//! (pooled or new), run the upload and download halves concurrently, and
//! retry where that is safe. Failures before the response starts become a
//! status; after it starts, the client connection is aborted.

use std::cell::Cell;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::Canceller;

use super::client::{ClientInput, ClientOutput};
use super::core::CoreContext;
use super::download::{Download, DownloadError};
use super::plan::{Plan, UploadPhase, UploadProgress};
use super::upload::{Upload, UploadError};
use crate::metrics::InFlightGuard;
use crate::pool::{LocalBackend, Tried};
use crate::ticker::TICK;
use crate::upstream::{self, UpstreamConn};

/// How an exchange ended.
pub(super) enum Outcome {
    /// The response was relayed in full.
    Relayed { keep_client: bool },
    /// Nothing reached the client yet: answer with this status.
    Failed {
        status: u16,
        message: &'static str,
        keep_client: bool,
    },
    /// The client is gone, or the response was cut after it started.
    Abort,
    /// The backend switched to WebSocket (its 101 went to the client): the
    /// connection to it now carries the tunnel.
    Switched { upstream: UpstreamConn },
}

/// How one attempt on one upstream connection ended.
enum Forwarded {
    Done {
        keep_client: bool,
        reusable: Option<UpstreamConn>,
    },
    /// A 101 to a WebSocket offer went to the client.
    Switched(UpstreamConn),
    /// A reused connection closed before any response byte; safe to resend.
    Stale,
    /// A fresh connection closed or reset before any response byte (a
    /// backend dying, or its listen queue reset): the request is safe to
    /// resend, on another backend.
    Unanswered,
    /// The backend failed: counted against it.
    Failed(Outcome),
    /// The client left, or sent a body percore refuses: not the backend's
    /// failure.
    ClientEnded(Outcome),
}

/// What one request's trip borrows from its client connection.
pub(super) struct Exchange<'a> {
    pub(super) core: &'a CoreContext,
    pub(super) input: &'a mut ClientInput,
    pub(super) output: &'a mut ClientOutput,
    /// The head to send upstream, kept whole so a safe request can be resent.
    pub(super) up_head: &'a mut Vec<u8>,
    pub(super) request_id: &'a [u8],
    /// Cancels the client watch; replaced after use.
    pub(super) canceller: &'a mut Canceller,
    /// When the request's handling began, for its latency.
    pub(super) request_started: Instant,
}

impl Exchange<'_> {
    /// Forwards the request to backends until one answers or none is left.
    pub(super) async fn run(&mut self, plan: &mut Plan) -> Outcome {
        let core = self.core;
        let mut tried = Tried::new();
        let mut stale_retries = 0;
        let mut resent_elsewhere = false;
        let mut attempts = 0u32;
        let mut next = plan.first_pick.clone();
        // A body the client is still sending cannot be left unread on a
        // connection that stays open.
        let keep_client = !plan.has_body() && plan.keep_alive;
        loop {
            let picked = next
                .take()
                .or_else(|| core.pool.pick(tried.as_slice(), core.ticker.now()));
            let backend = match picked {
                Some(_) if tried.is_full() => {
                    return failed(502, "no backend could be reached", false);
                }
                Some(backend) => backend,
                None if tried.is_empty() => {
                    return failed(503, "no backend available", keep_client);
                }
                None => return failed(502, "no backend could be reached", keep_client),
            };
            tried.push(backend.backend.id);
            attempts += 1;
            if attempts > 1 {
                core.recorder.count_retry(&backend.backend);
            }
            plan.retarget_head(self.up_head, &backend.backend);
            let counters = backend.backend.counters.core(core.core());
            // Active from the pick, so a backend being drained counts the
            // requests still connecting to it.
            let _in_flight = InFlightGuard::new(&counters.in_flight);
            let conn = match self.checkout(&backend, plan).await {
                Ok(conn) => conn,
                Err(error) => {
                    counters.failures.add(1);
                    let timed_out = matches!(error, upstream::ConnectError::Timeout { .. });
                    core.recorder
                        .count_connect_error(&backend.backend, timed_out);
                    // Passive detection: enough failures in a row eject it.
                    core.pool.record_failure(&backend, Instant::now());
                    if let Some(left_out) = core.failure_log.admit(core.ticker.now()) {
                        tracing::warn!(backend = %backend.backend.url, %error, left_out, "connect failed; trying the next backend");
                    }
                    continue;
                }
            };
            counters.requests.add(1);
            match self.forward(plan, conn, &backend).await {
                Forwarded::Done {
                    keep_client,
                    reusable,
                } => {
                    core.pool.record_success(&backend);
                    if let Some(conn) = reusable {
                        let max_idle = core.settings().max_idle_per_backend;
                        backend.idle.put(conn, core.ticker.now(), max_idle);
                    }
                    return Outcome::Relayed { keep_client };
                }
                Forwarded::Switched(upstream) => {
                    return Outcome::Switched { upstream };
                }
                Forwarded::Stale if stale_retries < 2 && self.up_head.len() >= plan.head_len => {
                    // The backend closed a pooled connection before answering a
                    // request that is safe to resend: its other idle connections
                    // are likely stale too. Retry it on a fresh connection.
                    stale_retries += 1;
                    backend.idle.prune(Instant::now(), Duration::ZERO);
                    tried.pop();
                    next = Some(backend.clone());
                }
                Forwarded::Unanswered
                    if !resent_elsewhere && self.up_head.len() >= plan.head_len =>
                {
                    // Once, as nginx's `proxy_next_upstream error` and
                    // HAProxy's `retry-on` do: more would turn one bad
                    // request into a storm.
                    counters.failures.add(1);
                    core.pool.record_failure(&backend, Instant::now());
                    resent_elsewhere = true;
                    if let Some(left_out) = core.failure_log.admit(core.ticker.now()) {
                        tracing::warn!(backend = %backend.backend.url, left_out, "backend closed the connection before answering; resending on another backend");
                    }
                }
                Forwarded::Stale | Forwarded::Unanswered => {
                    counters.failures.add(1);
                    if let Some(left_out) = core.failure_log.admit(core.ticker.now()) {
                        tracing::warn!(backend = %backend.backend.url, left_out, "backend closed the connection before answering; 502");
                    }
                    return failed(502, "backend closed the connection", plan.keep_alive);
                }
                Forwarded::Failed(outcome) => {
                    // A reset, a broken or cut response, a response timeout.
                    counters.failures.add(1);
                    core.pool.record_failure(&backend, Instant::now());
                    return outcome;
                }
                Forwarded::ClientEnded(outcome) => return outcome,
            }
        }
    }

    /// An idle pooled connection, or a new one. A pooled connection is
    /// checked first: one the backend closed is skipped rather than tried,
    /// and one with unread bytes (a late or unsolicited response, the 408
    /// some backends send when their keep-alive ends) would hand those bytes
    /// to this request as its answer, so it is closed unused. The check costs
    /// a syscall, so a connection returned within the same tick is reused
    /// unchecked for a request that can be resent, as nginx reuses one at
    /// once; under load nearly every reuse is that fast.
    async fn checkout(
        &self,
        backend: &LocalBackend,
        plan: &Plan,
    ) -> Result<UpstreamConn, upstream::ConnectError> {
        let settings = self.core.settings();
        let now = self.core.ticker.now();
        while let Some((conn, idle_for)) = backend.idle.take(now, settings.upstream_idle_timeout) {
            if (plan.retryable && idle_for < TICK) || !conn.is_stale() {
                return Ok(conn);
            }
        }
        upstream::connect(backend.backend.addr, settings.connect_timeout).await
    }

    /// One attempt on one upstream connection: upload and download run
    /// concurrently, so neither side's flow control can stall the other.
    async fn forward(
        &mut self,
        plan: &Plan,
        mut conn: UpstreamConn,
        backend: &LocalBackend,
    ) -> Forwarded {
        let core = self.core;
        let progress = UploadProgress::new(plan, conn.fd());
        let started = Cell::new(false);
        let mut response = core.relay_buffers.take();
        // Taken by the download side when the response head arrives: a
        // buffer held from here would sit idle while the backend thinks, and
        // at a thousand exchanges in flight the pool's top buffers would no
        // longer be the warm ones.
        let mut out = Vec::new();
        let resendable = conn.reused && plan.retryable;
        let upstream_start = Instant::now();
        let client_mid_write = self.output.mid_write_probe();
        let (download_result, upload_sent, client_ok) = {
            // Pinned where they are created: a `let` first would give each
            // future a second slot in this one, and a copy.
            let mut upload = std::pin::pin!(
                Upload {
                    input: self.input,
                    upstream: &mut conn.wr,
                    up_head: self.up_head,
                    plan,
                    progress: &progress,
                    watch: self.canceller.handle(),
                    body_timeout: core.settings().client_body_timeout,
                }
                .run()
            );
            let download = std::pin::pin!(
                Download {
                    upstream: &mut conn.rd,
                    client: self.output,
                    response: &mut response,
                    out: &mut out,
                    plan,
                    request_id: self.request_id,
                    progress: &progress,
                    started: &started,
                    core,
                }
                .run()
            );
            let (download_result, mut upload_result) =
                match race(download, upload.as_mut(), &started, client_mid_write).await {
                    Ok(results) => results,
                    Err(outcome) => return Forwarded::ClientEnded(outcome),
                };
            // A stale pooled connection: the request will be resent, so let
            // the head write finish (it fails at once on a closed socket) to
            // get `up_head` back rather than dropping it with the future.
            // Only until the head write is done: after it the upload waits
            // for the (finished) download and would never end.
            let resend =
                plan.retryable && matches!(download_result, Err(DownloadError::NoResponse(_)));
            if resend && upload_result.is_none() && progress.phase() == UploadPhase::Sending {
                let head_written =
                    poll_until(upload.as_mut(), || progress.phase() != UploadPhase::Sending);
                if let Ok(Some(result)) =
                    monoio::time::timeout(Duration::from_secs(1), head_written).await
                {
                    upload_result = Some(result);
                }
            }
            let (sent, client_ok) =
                settle_upload(upload, upload_result, &progress, self.canceller).await;
            (download_result, sent, client_ok && progress.request_read())
        };
        core.relay_buffers.give(response);
        core.buffers.give(out);

        if matches!(download_result, Err(DownloadError::Timeout)) {
            core.recorder.count_response_timeout(&backend.backend);
        }
        match download_result {
            Ok(relayed) if relayed.switched => Forwarded::Switched(conn),
            Ok(relayed) => {
                let upstream = relayed.head_at.saturating_duration_since(upstream_start);
                let total = self.request_started.elapsed();
                core.recorder
                    .record_response(&backend.backend, relayed.status, total, upstream);
                let reusable = (relayed.upstream_reusable && upload_sent).then_some(conn);
                Forwarded::Done {
                    keep_client: relayed.keep_client && client_ok,
                    reusable,
                }
            }
            Err(DownloadError::Client) => Forwarded::ClientEnded(Outcome::Abort),
            Err(error) if started.get() => {
                let what = "response cut after it started; client connection reset";
                self.log_failure(backend, &error, what);
                Forwarded::Failed(Outcome::Abort)
            }
            Err(DownloadError::NoResponse(_)) if resendable => Forwarded::Stale,
            Err(DownloadError::NoResponse(_)) if plan.retryable => Forwarded::Unanswered,
            Err(error) => {
                self.log_failure(backend, &error, "backend failed; answered with an error");
                Forwarded::Failed(Outcome::Failed {
                    status: error.status(),
                    message: error.message(),
                    keep_client: client_ok && plan.keep_alive,
                })
            }
        }
    }

    /// Logs a backend's failure (rate-limited, see `failure_log`).
    fn log_failure(&self, backend: &LocalBackend, error: &DownloadError, what: &str) {
        if let Some(left_out) = self.core.failure_log.admit(self.core.ticker.now()) {
            tracing::warn!(backend = %backend.backend.url, %error, left_out, "{what}");
        }
    }
}

fn failed(status: u16, message: &'static str, keep_client: bool) -> Outcome {
    Outcome::Failed {
        status,
        message,
        keep_client,
    }
}

type UploadResult = Result<(), UploadError>;

/// Polls both halves until the download ends; an upload failure that the
/// client caused ends the exchange at once with its outcome. Returns the
/// download's result and the upload's, if it finished.
async fn race<D, U>(
    mut download: Pin<&mut D>,
    mut upload: Pin<&mut U>,
    started: &Cell<bool>,
    client_mid_write: impl Fn() -> bool,
) -> Result<(D::Output, Option<UploadResult>), Outcome>
where
    D: Future,
    U: Future<Output = UploadResult>,
{
    let mut upload_result = None;
    loop {
        monoio::select! {
            biased;
            result = &mut download => return Ok((result, upload_result)),
            result = &mut upload, if upload_result.is_none() => {
                // Once the client has seen bytes of a response, only an
                // abort is left; before, percore answers itself.
                let answered = started.get() || client_mid_write();
                match result {
                    Err(UploadError::ClientGone) => return Err(Outcome::Abort),
                    Err(UploadError::BadChunked | UploadError::ClientTimeout) if answered => {
                        return Err(Outcome::Abort);
                    }
                    Err(UploadError::BadChunked) => {
                        return Err(failed(400, "malformed chunked request body", false));
                    }
                    Err(UploadError::ClientTimeout) => {
                        return Err(failed(408, "request body not received in time", false));
                    }
                    // The backend stopped reading: its answer (or close)
                    // comes on the download side.
                    Err(UploadError::UpstreamWrite) | Ok(()) => {}
                }
                upload_result = Some(result);
            }
        }
    }
}

/// Settles the upload side once the response is done (or failed): whether
/// the whole request reached the backend (so the upstream connection may be
/// reused), and whether the client's input is intact at a message boundary.
async fn settle_upload<U: Future<Output = UploadResult>>(
    upload: Pin<&mut U>,
    upload_result: Option<UploadResult>,
    progress: &UploadProgress,
    canceller: &mut Canceller,
) -> (bool, bool) {
    match upload_result {
        Some(Ok(())) => (true, true),
        Some(Err(_)) => (false, progress.request_read()),
        None => match progress.phase() {
            UploadPhase::Sending => (false, progress.request_read()),
            // An operation owns the client buffer: dropping it loses
            // whatever it holds, so the client connection must close.
            UploadPhase::AwaitingBody | UploadPhase::ForwardingBody => (false, false),
            UploadPhase::Sent => (true, true),
            UploadPhase::Watching => {
                *canceller = std::mem::take(canceller).cancel();
                let watched = upload.await;
                (true, watched.is_ok())
            }
        },
    }
}

/// Polls `future` until it completes (`Some(output)`) or, after a poll,
/// `stop` holds (`None`). Sound because `stop` reads state that only the
/// future itself changes, so it can only turn true during a poll: no wake-up
/// is missed between the check and the next poll.
async fn poll_until<F: Future>(
    mut future: Pin<&mut F>,
    stop: impl Fn() -> bool,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending if stop() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn poll_until_stops_at_the_state_or_returns_the_output() {
        let step = Cell::new(0);
        let stopped = block_on(async {
            let future = std::pin::pin!(async {
                step.set(1);
                monoio::time::sleep(Duration::from_millis(1)).await;
                step.set(2);
                std::future::pending::<()>().await;
            });
            poll_until(future, || step.get() == 2).await
        });
        assert!(stopped.is_none());
        assert_eq!(step.get(), 2);
        let done = block_on(async {
            let future = std::pin::pin!(async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                7
            });
            poll_until(future, || false).await
        });
        assert_eq!(done, Some(7));
    }
}
