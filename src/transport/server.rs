//! Accepting connections on a server's listening socket.
//!
//! asyncio accepts with `sock.accept()` and `setblocking(False)` in Python
//! and starts a task per connection that makes its protocol and transport.
//! An [`Acceptor`] accepts natively (non-blocking from the start) and
//! queues one callback per connection, the loop's `_serve_connection`, in a
//! copy of the current context as the task would have run: the same order
//! of `protocol_factory()`, `connection_made` and the other callbacks, and a
//! fraction of the cost. TLS servers, debug mode and running out of fds or
//! memory stay with asyncio's own `_accept_connection`; other accept errors
//! reach the loop's exception handler, as asyncio's do.

use crate::engine::{Engine, Traverse};
use crate::errors::os_error;
use crate::net::{self, addr::SockAddr, would_block};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};
use pyo3::PyTraverseError;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

/// The reader callback of a listening socket without TLS (see the module
/// documentation).
#[pyclass(frozen, module = "oxloop._oxloop", name = "Acceptor")]
pub struct Acceptor {
    loop_: Py<Engine>,
    sock: Py<PyAny>,
    protocol_factory: Py<PyAny>,
    server: Py<PyAny>,
    fd: RawFd,
    /// The listening socket's family, type and protocol, which `accept()`
    /// gives the connection's socket object.
    family: i32,
    kind: i32,
    proto: i32,
    /// The most connections one readiness event accepts.
    backlog: i64,
}

impl Acceptor {
    /// asyncio's `_accept_connection`, which logs in debug mode and handles
    /// the accept errors (retrying later when out of fds).
    fn asyncio_accept(&self, py: Python<'_>) -> PyResult<()> {
        self.loop_
            .bind(py)
            .call_method1(
                intern!(py, "_accept_connection"),
                (
                    &self.protocol_factory,
                    &self.sock,
                    py.None(),
                    &self.server,
                    self.backlog,
                ),
            )
            .map(drop)
    }

    /// Queues `_serve_connection` for the accepted `conn`.
    fn serve(&self, py: Python<'_>, conn: OwnedFd, peer: SockAddr) -> PyResult<()> {
        static SOCKET: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        #[cfg(not(target_vendor = "apple"))]
        let kind = self.kind | libc::SOCK_NONBLOCK;
        #[cfg(target_vendor = "apple")]
        let kind = self.kind;
        // On failure `conn` is dropped, closing the fd.
        let sock = SOCKET.import(py, "socket", "socket")?.call1((
            self.family,
            kind,
            self.proto,
            conn.as_raw_fd(),
        ))?;
        // The socket object owns the fd now.
        let _ = conn.into_raw_fd();
        // macOS's accept left the fd blocking (see `net::accept`).
        #[cfg(target_vendor = "apple")]
        sock.call_method1(intern!(py, "setblocking"), (false,))?;
        let peername = match peer.py_tuple(py)? {
            Some(addr) => addr.into_any(),
            // A Unix peer, formatted by the socket module.
            None => sock
                .call_method0(intern!(py, "getpeername"))
                .unwrap_or_else(|_| py.None().into_bound(py)),
        };
        let engine = self.loop_.bind(py);
        let callback = engine.getattr(intern!(py, "_serve_connection"))?;
        let args = PyTuple::new(
            py,
            [
                self.protocol_factory.bind(py),
                &sock,
                &peername,
                self.server.bind(py),
            ],
        )?;
        // The handle runs in a copy of the current context, as a task would.
        Engine::checked_schedule(engine, "call_soon", None, &callback, &args, None).map(drop)
    }
}

#[pymethods]
impl Acceptor {
    /// The acceptor of `server`'s listening socket `sock` on `loop`.
    #[new]
    fn new(
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: Py<PyAny>,
        server: Py<PyAny>,
        backlog: i64,
    ) -> PyResult<Self> {
        let py = sock.py();
        Ok(Self {
            loop_: loop_.cast::<Engine>()?.clone().unbind(),
            fd: sock.call_method0(intern!(py, "fileno"))?.extract()?,
            family: sock.getattr(intern!(py, "family"))?.extract()?,
            kind: sock.getattr(intern!(py, "type"))?.extract()?,
            proto: sock.getattr(intern!(py, "proto"))?.extract()?,
            sock: sock.clone().unbind(),
            protocol_factory,
            server,
            backlog,
        })
    }

    /// Accepts what is waiting, at most `backlog` connections, as asyncio's
    /// `_accept_connection` does.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        if self.loop_.get().get_debug() {
            return self.asyncio_accept(py);
        }
        for _ in 0..self.backlog {
            match net::accept(self.fd) {
                Ok((conn, peer)) => self.serve(py, conn, peer)?,
                // Aborted before it was accepted: the next one.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) if would_block(&e) => return Ok(()),
                // Out of fds or memory: asyncio's retry later.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    return self.asyncio_accept(py)
                }
                Err(e) => return Err(os_error(e)),
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (
            &self.loop_,
            &self.sock,
            &self.protocol_factory,
            &self.server,
        )
            .traverse(&visit)
    }
}
