//! The whole topology in one process: control plane, worker cores, admin
//! listener and, when no backend is configured, the three seed mock
//! backends. `Server::start` returns once everything listens, so tests and
//! benches drive exactly what `percore` runs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::config::{AdminToken, Config, ConfigError};
use crate::doorbell::{Bell, Doorbell, doorbell};
use crate::mock_backend::{MockBackend, MockConfig};
use crate::pool::{ControlPlane, PoolError};
use crate::runtime::{self, DriverKind, UringUnavailable};
use crate::worker::{self, WorkerSpec};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Driver(#[from] UringUnavailable),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start mock backend on {addr}: {source}")]
    MockBackend { addr: SocketAddr, source: io::Error },
    #[error("backend {0}")]
    Backend(#[from] PoolError),
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

/// Raises the soft limit on open files to the hard one: every proxied
/// connection holds two descriptors, and distributions' soft default of
/// 1,024 would cap percore at a few hundred clients.
pub fn raise_fd_limit() {
    // An unlimited hard limit cannot be the soft one: the kernel caps open
    // files at fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    match rlimit::increase_nofile_limit(nr_open) {
        Ok(open_files) => tracing::info!(open_files, "file descriptor limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the file descriptor limit"),
    }
}

pub struct Server {
    plane: Arc<ControlPlane>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    driver: DriverKind,
    /// Close everything now (tests, a second signal's exit aside).
    shutdown: Arc<AtomicBool>,
    /// Drain gracefully (SIGTERM, SIGINT).
    drain: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// The control plane's thread (admin API, health prober), stopped once
    /// the workers end.
    threads: Vec<JoinHandle<()>>,
    mocks: Vec<MockBackend>,
    /// Wakes the admin API to see `shutdown`.
    admin_doorbell: Doorbell,
}

/// Starts a graceful drain of a running server from any thread: what a
/// signal handler holds.
#[derive(Clone)]
pub struct DrainHandle {
    drain: Arc<AtomicBool>,
    plane: Arc<ControlPlane>,
}

impl DrainHandle {
    /// Starts the drain; `false` if one was already under way.
    pub fn drain(&self) -> bool {
        let started = !self.drain.swap(true, Ordering::AcqRel);
        self.plane.wake_cores();
        started
    }
}

impl Server {
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        let driver = runtime::probe(config.driver)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.is_empty() {
            tracing::warn!("cannot read this process's CPU affinity; workers run unpinned");
        }
        let workers = config.workers.unwrap_or(cores.len().max(1));

        let listeners =
            worker::bind_listeners(config.listen, workers, config.handover).map_err(|source| {
                StartError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let proxy_addr = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_listener =
            std::net::TcpListener::bind(config.admin).map_err(|source| StartError::Bind {
                addr: config.admin,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin,
                source,
            })?;

        let mut mocks = Vec::new();
        let mut backends = config.backends.clone();
        if backends.is_empty() {
            for &addr in &config.mock_backends {
                let mock = MockBackend::start(MockConfig {
                    driver,
                    ..MockConfig::new(addr)
                })
                .map_err(|source| StartError::MockBackend { addr, source })?;
                backends.push(mock.url().into());
                mocks.push(mock);
            }
            let urls: Vec<&str> = backends.iter().map(|b| b.url()).collect();
            tracing::info!(backends = ?urls, "no backend configured: started the mock backends");
        }

        let (plane, inboxes) =
            ControlPlane::with_health(workers, config.strategy, config.health_settings());
        plane.set_own_listeners(&[proxy_addr, admin_addr]);
        plane.set_proxy_settings(config.proxy_settings());
        for backend in &backends {
            plane.add_backend(backend.url(), backend.weight())?;
        }
        // Backends configured at start take their full share at once.
        plane.settle();

        let shutdown = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let settings = config.proxy_settings();
        let mut workers = Vec::new();
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let core_id = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let spec = WorkerSpec {
                index,
                core_id,
                listener,
                inbox,
                plane: plane.clone(),
                settings,
                driver,
                shutdown: shutdown.clone(),
                drain: drain.clone(),
            };
            workers.push(worker::spawn(spec).map_err(StartError::Thread)?);
        }
        let (admin_doorbell, admin_bell) = doorbell();
        let threads = vec![
            start_control_thread(
                admin_listener,
                plane.clone(),
                config.admin_token.clone(),
                driver,
                shutdown.clone(),
                admin_bell,
            )
            .map_err(StartError::Thread)?,
        ];

        tracing::info!(
            listen = %proxy_addr,
            admin = %admin_addr,
            workers = workers.len(),
            driver = driver.name(),
            strategy = %config.strategy,
            "percore is serving"
        );
        Ok(Server {
            plane,
            proxy_addr,
            admin_addr,
            driver,
            shutdown,
            drain,
            workers,
            threads,
            mocks,
            admin_doorbell,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// The control plane: the pool, its versions and the workers' counters.
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.plane
    }

    /// The seed mock backends, when this server started them.
    pub fn mock_backends(&self) -> &[MockBackend] {
        &self.mocks
    }

    /// Blocks while the server runs: until every worker has finished (a
    /// drain), then stops the rest.
    pub fn wait(mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.stop();
    }

    /// What starts a graceful drain from another thread.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle {
            drain: self.drain.clone(),
            plane: self.plane.clone(),
        }
    }

    /// Stops accepting, closes every connection and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        self.plane.wake_cores();
        self.plane.health.wake_prober();
        self.admin_doorbell.ring();
        for thread in self.workers.drain(..).chain(self.threads.drain(..)) {
            let _ = thread.join();
        }
    }
}

/// The control plane's one thread: the admin API and, with health checks
/// on, the prober, as tasks of one small runtime. A thread and runtime of
/// its own cost the prober 0.3-0.4 MiB of RSS (its stack, a jemalloc arena,
/// the runtime) for work that takes well under 1 % of a core; a probe or an
/// admin request waits at most for the other's few milliseconds of work.
fn start_control_thread(
    admin_listener: std::net::TcpListener,
    plane: Arc<ControlPlane>,
    token: Option<AdminToken>,
    driver: DriverKind,
    shutdown: Arc<AtomicBool>,
    admin_bell: Bell,
) -> io::Result<JoinHandle<()>> {
    // monoio's epoll driver needs a non-blocking socket; io_uring does not mind.
    admin_listener.set_nonblocking(true)?;
    let probing = plane.health.settings().enabled;
    std::thread::Builder::new()
        .name("percore-control".into())
        .spawn(move || {
            let control = move || async move {
                if probing {
                    monoio::spawn(crate::health::run_prober(plane.clone(), shutdown.clone()));
                }
                // Returns once `shutdown` is set (and the bell rung); the
                // runtime then drops the prober, which stops on the same flag.
                crate::admin::serve(admin_listener, plane, token, shutdown, admin_bell).await;
            };
            if let Err(error) = runtime::block_on(driver, runtime::CONTROL_RING, control) {
                tracing::error!(%error, driver = driver.name(), "the control plane could not start its runtime");
            }
        })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
