//! Free loopback ports.

use std::{
    collections::HashSet,
    io,
    net::{Ipv4Addr, TcpListener},
    sync::{Mutex, OnceLock, PoisonError},
};

/// A loopback port that nothing listens on right now and that this process has
/// not handed out before (so parallel tests in one binary never get the same one).
///
/// # Panics
///
/// When no port can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot find a free port on 127.0.0.1: {e}"),
    }
}

/// [`free_port`] returning the error instead of panicking.
pub fn try_free_port() -> io::Result<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "every port the kernel offered was already handed out",
    ))
}
