//! Admin API (control plane) on its own thread. Placeholder until the admin
//! module lands: serves nothing but keeps the listener open.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pool::ControlPlane;
use crate::runtime::DriverKind;

pub fn start(listener: TcpListener, plane: Arc<ControlPlane>, _driver: DriverKind, shutdown: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("percore-admin".into()).spawn(move || {
        let _keep = (listener, plane);
        while !shutdown.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}
