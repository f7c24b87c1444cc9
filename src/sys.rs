//! Raw socket calls that monoio does not offer: an abortive reset, the
//! unsent send-queue length, and a non-blocking peek. Each takes a socket
//! the caller owns and keeps open for the call; none closes it.

use std::io;
use std::os::fd::RawFd;

/// Resets the connection at once (RST): `connect` to an AF_UNSPEC address
/// disconnects a TCP socket (connect(2)). A close with SO_LINGER 0 would not
/// do: monoio's write half shuts the socket down (FIN) when dropped, before
/// the close.
pub fn reset_connection(fd: RawFd) {
    // SAFETY: the caller owns the open socket `fd`; an all-zero sockaddr is
    // a valid AF_UNSPEC address of the size passed.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &raw const addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// Shuts a socket down both ways without closing it: a read or write
/// pending on it ends, and its owner's task finishes and closes it.
pub fn shutdown(fd: RawFd) {
    // SAFETY: the caller owns the open socket `fd`; shutdown(2) does not close it.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Shuts a socket's read side: a pending or later read returns EOF once
/// the bytes already received are read, while writes still go out.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: the caller owns the open socket `fd`; shutdown(2) does not close it.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// Bytes in a socket's send queue not yet acknowledged (TIOCOUTQ); 0 if unknown.
pub fn unsent_bytes(fd: RawFd) -> libc::c_int {
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer given; the caller
    // owns the open socket `fd`.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut unsent) } < 0 {
        return 0;
    }
    unsent
}

/// Whether a connection that should be silent has been closed by its peer or
/// has bytes waiting, checked without blocking: one `recv` with MSG_PEEK,
/// which leaves any data in place.
pub fn closed_or_readable(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: the caller owns the open socket `fd`; one byte is written at
    // most, into `byte`.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // Data is n > 0, EOF is 0; any error but "would block" is a dead socket.
    n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
}
