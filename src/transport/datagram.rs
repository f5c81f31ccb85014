//! The hot paths of a UDP transport (AF_INET, AF_INET6), in Rust.
//!
//! `oxloop._datagram.DatagramTransport` is asyncio's selector datagram
//! transport with two paths replaced: reading (`recvfrom` straight to
//! `protocol.datagram_received`, no Handle, several datagrams per readable
//! event, each delivered as asyncio delivers one) and the common
//! `sendto` (a numeric address, nothing buffered). Everything else (the
//! write buffer, flow control, closing, errors) is asyncio's own code.

use super::report_protocol_error;
use crate::engine::loop_::Engine;
use crate::engine::watchers::{IoTarget, Side, Watcher};
use crate::net::addr::SockAddr;
use crate::net::{os_error, recvfrom_copied, send, sendto, with_bytes, would_block, FdKind};
use parking_lot::Mutex;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};
use pyo3::PyTraverseError;
use std::os::fd::RawFd;
use std::sync::Arc;

/// How many datagrams one readable event delivers at most, so that one busy
/// socket cannot starve the rest of the loop.
const MAX_BATCH: usize = 16;

/// The protocol's methods, resolved once per protocol.
struct Protocol {
    object: Py<PyAny>,
    datagram_received: Py<PyAny>,
    error_received: Py<PyAny>,
}

#[derive(Default)]
struct State {
    protocol: Option<Protocol>,
    /// The last peer address seen or sent to, and its Python tuple: a server
    /// answering a client gets the tuple it was handed back, so neither side
    /// converts again.
    peer: Option<(SockAddr, Py<PyTuple>)>,
}

/// The native half of a datagram transport.
#[pyclass(frozen, module = "oxloop._oxloop", name = "DatagramCore")]
pub struct DatagramCore {
    engine: Py<Engine>,
    fd: RawFd,
    family: i32,
    /// The socket is connected: datagrams go out with `send`.
    connected: bool,
    transport: Py<PyAny>,
    state: Mutex<State>,
}

/// What the engine's reader holds: a reference to the core.
struct CoreRef(Py<DatagramCore>);

impl IoTarget for CoreRef {
    fn on_ready(&self, py: Python<'_>, _side: Side) -> PyResult<()> {
        DatagramCore::read_ready(self.0.bind(py))
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.0)
    }
}

impl DatagramCore {
    /// The transport's current protocol, its methods resolved.
    fn protocol<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let current = self.transport.bind(py).getattr(intern!(py, "_protocol"))?;
        let mut st = self.state.lock();
        let cached = st.protocol.as_ref().filter(|p| p.object.is(&current));
        let p = match cached {
            Some(p) => p,
            None => {
                let resolved = Protocol {
                    datagram_received: current.getattr(intern!(py, "datagram_received"))?.unbind(),
                    error_received: current.getattr(intern!(py, "error_received"))?.unbind(),
                    object: current.clone().unbind(),
                };
                let old = st.protocol.replace(resolved);
                drop(old);
                st.protocol.as_ref().expect("just set")
            }
        };
        Ok((
            current,
            p.datagram_received.bind(py).clone(),
            p.error_received.bind(py).clone(),
        ))
    }

    /// The Python tuple for `from`, reusing the last one when it is the same.
    fn peer_tuple<'py>(&self, py: Python<'py>, from: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
        if let Some((addr, tuple)) = self.state.lock().peer.as_ref() {
            if addr.bytes() == from.bytes() {
                return Ok(tuple.bind(py).clone().into_any());
            }
        }
        let Some(tuple) = from.py_tuple(py)? else {
            return Ok(py.None().into_bound(py));
        };
        let old = self
            .state
            .lock()
            .peer
            .replace((*from, tuple.clone().unbind()));
        drop(old);
        Ok(tuple.into_any())
    }

    /// The kernel's address for the Python address `addr`, when numeric.
    fn peer_addr(&self, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
        if let Some((sockaddr, tuple)) = self.state.lock().peer.as_ref() {
            if tuple.is(addr) {
                return Some(*sockaddr);
            }
        }
        SockAddr::from_python(addr, self.family)
    }

    /// Reads what has arrived, up to [`MAX_BATCH`] datagrams, while the
    /// transport keeps reading.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let transport = this.transport.bind(py);
        for _ in 0..MAX_BATCH {
            if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
                || transport.getattr(intern!(py, "_closing"))?.is_truthy()?
                || transport.getattr(intern!(py, "_paused"))?.is_truthy()?
            {
                return Ok(());
            }
            let received = recvfrom_copied(py, this.fd);
            let (protocol, datagram_received, error_received) = this.protocol(py)?;
            let (result, method) = match received {
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => (
                    error_received.call1((os_error(e).value(py),)),
                    "error_received",
                ),
                Ok((data, from)) => {
                    let addr = this.peer_tuple(py, &from)?;
                    (datagram_received.call1((data, addr)), "datagram_received")
                }
            };
            if let Err(e) = result {
                return report_protocol_error(
                    this.engine.bind(py).as_any(),
                    transport,
                    Some(&protocol),
                    e,
                    method,
                );
            }
        }
        Ok(())
    }
}

#[pymethods]
impl DatagramCore {
    /// The core of `transport`, whose socket `fd` of `family` is connected
    /// to a peer when `connected`.
    #[new]
    fn new(
        loop_: &Bound<'_, PyAny>,
        fd: RawFd,
        family: i32,
        connected: bool,
        transport: Py<PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            engine: loop_.cast::<Engine>()?.clone().unbind(),
            fd,
            family,
            connected,
            transport,
            state: Mutex::new(State::default()),
        })
    }

    /// Starts watching the socket for datagrams.
    fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let watcher = Watcher::Native(Arc::new(CoreRef(slf.clone().unbind())));
        drop(
            slf.get()
                .engine
                .get()
                .set_watcher(slf.get().fd, Side::Read, Some(watcher))?,
        );
        Ok(())
    }

    /// Sends one datagram at once when that is all `sendto` has to do: a
    /// non-empty bytes-like `data`, to the connected peer (`addr` None) or
    /// to a numeric address. An OS error goes to `protocol.error_received`.
    /// False when asyncio's own `sendto` must handle it (checks, names to
    /// resolve, a full socket buffer).
    #[pyo3(signature = (data, addr=None))]
    fn try_sendto(
        &self,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let py = data.py();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Ok(false);
        }
        let to = match (self.connected, addr) {
            (true, None) => None,
            (false, Some(addr)) => match self.peer_addr(addr) {
                Some(to) => Some(to),
                None => return Ok(false),
            },
            _ => return Ok(false),
        };
        let sent = with_bytes(data, |bytes, _| {
            if bytes.is_empty() {
                return Ok(None); // asyncio's rule for empty datagrams varies by version
            }
            Ok(Some(match &to {
                None => send(self.fd, bytes, FdKind::Socket),
                Some(to) => sendto(self.fd, bytes, to),
            }))
        })?;
        match sent {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) if would_block(&e) => Ok(false),
            Some(Err(e)) => {
                let (_, _, error_received) = self.protocol(py)?;
                error_received.call1((os_error(e).value(py),))?;
                Ok(true)
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.engine)?;
        visit.call(&self.transport)?;
        let Some(st) = self.state.try_lock() else {
            return Ok(());
        };
        if let Some(p) = &st.protocol {
            visit.call(&p.object)?;
            visit.call(&p.datagram_received)?;
            visit.call(&p.error_received)?;
        }
        if let Some((_, tuple)) = &st.peer {
            visit.call(tuple)?;
        }
        Ok(())
    }

    /// Drops the protocol and the cached address once the connection is lost.
    fn release(&self) {
        let released = std::mem::take(&mut *self.state.lock());
        drop(released);
    }

    fn __clear__(&self) {
        self.release();
    }
}
