//! The hot paths of a UDP transport (AF_INET, AF_INET6), in Rust.
//!
//! `oxloop._datagram.DatagramTransport` is asyncio's selector datagram
//! transport with two paths replaced: reading (`recvfrom` straight to
//! `protocol.datagram_received`, no Handle, several datagrams per readable
//! event, each delivered as asyncio delivers one) and the common
//! `sendto` (a numeric address, nothing buffered). Everything else (the
//! write buffer, flow control, closing, errors) is asyncio's own code.
//!
//! The core keeps what it needs itself: the transport tells it the protocol
//! (`set_protocol`), and it reads while the engine's reader of its fd is
//! this core — asyncio's transport stops reading (pausing, closing, failing)
//! by removing that reader.

use crate::engine::{Engine, GilCell, NativeWatcher, Side, Traverse, Watcher};
use crate::errors::{os_error, report_protocol_error};
use crate::net::addr::SockAddr;
use crate::net::{recvfrom_copied, send, sendto, with_bytes, would_block, FdKind};
use crate::sys;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};
use pyo3::PyTraverseError;
use std::os::fd::RawFd;

/// How many datagrams one readable event delivers at most, so that one busy
/// socket cannot starve the rest of the loop.
const MAX_BATCH: usize = 16;

/// The protocol methods the core calls.
#[derive(Clone, Copy)]
enum Method {
    DatagramReceived,
    ErrorReceived,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::DatagramReceived => "datagram_received",
            Method::ErrorReceived => "error_received",
        }
    }
}

/// The protocol and its methods, resolved once per protocol (`None`: the
/// protocol has no such method, which fails when it is called).
struct Protocol {
    object: Py<PyAny>,
    datagram_received: Option<Py<PyAny>>,
    error_received: Option<Py<PyAny>>,
}

impl Protocol {
    fn new(object: &Bound<'_, PyAny>) -> Self {
        let method = |m: Method| object.getattr(m.name()).ok().map(Bound::unbind);
        Self {
            datagram_received: method(Method::DatagramReceived),
            error_received: method(Method::ErrorReceived),
            object: object.clone().unbind(),
        }
    }

    fn resolved(&self, method: Method) -> &Option<Py<PyAny>> {
        match method {
            Method::DatagramReceived => &self.datagram_received,
            Method::ErrorReceived => &self.error_received,
        }
    }
}

impl Traverse for Protocol {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.object, &self.datagram_received, &self.error_received).traverse(visit)
    }
}

#[derive(Default)]
struct State {
    protocol: Option<Protocol>,
    /// The last peer address seen or sent to, and its Python tuple: a server
    /// answering a client gets the tuple it was handed back, so neither side
    /// converts again.
    peer: Option<(SockAddr, Py<PyTuple>)>,
}

impl Traverse for State {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.protocol, self.peer.as_ref().map(|(_, t)| t)).traverse(visit)
    }
}

/// The native half of a datagram transport.
#[pyclass(frozen, module = "oxloop._oxloop", name = "DatagramCore")]
pub struct DatagramCore {
    engine: Py<Engine>,
    fd: RawFd,
    family: i32,
    /// The socket is connected: datagrams go out with `send`.
    connected: bool,
    /// The transport, for the exception handler's reports; dropped at
    /// [`DatagramCore::release`], so the transport and its core, which
    /// hold each other, need no cycle collection.
    transport: GilCell<Option<Py<PyAny>>>,
    state: GilCell<State>,
}

impl NativeWatcher for DatagramCore {
    const IN_CONTEXT: bool = true;

    fn on_ready(slf: &Bound<'_, Self>, _side: Side) -> PyResult<()> {
        Self::read_ready(slf)
    }
}

/// What the read path calls: the protocol's method, or `error_received`.
enum Delivery<'py> {
    Datagram(Bound<'py, PyBytes>, Bound<'py, PyAny>),
    Error(PyErr),
}

impl DatagramCore {
    /// Calls the protocol's `method` with `args`, once the state is no
    /// longer borrowed; a protocol lacking the method fails as the call
    /// would. Returns the protocol and the outcome; `None` once released.
    fn call_protocol<'py>(
        &self,
        py: Python<'py>,
        method: Method,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> Option<(Bound<'py, PyAny>, PyResult<()>)> {
        let (protocol, resolved) = {
            let st = self.state.lock();
            let p = st.protocol.as_ref()?;
            let resolved = p.resolved(method).as_ref().map(|m| m.clone_ref(py));
            (p.object.clone_ref(py).into_bound(py), resolved)
        };
        let result = match resolved {
            Some(m) => m.bind(py).call1(args).map(drop),
            None => protocol.getattr(method.name()).map(drop),
        };
        Some((protocol, result))
    }

    /// Delivers one datagram or error to the protocol, as asyncio's
    /// `_read_ready` does; what the protocol raises goes to the exception
    /// handler, and then the batch ends (false).
    fn deliver(slf: &Bound<'_, Self>, delivery: Delivery<'_>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let (method, called) = match delivery {
            Delivery::Datagram(data, addr) => (
                Method::DatagramReceived,
                this.call_protocol(py, Method::DatagramReceived, (data, addr)),
            ),
            Delivery::Error(e) => (
                Method::ErrorReceived,
                this.call_protocol(py, Method::ErrorReceived, (e.value(py),)),
            ),
        };
        let (protocol, err) = match called {
            None => return Ok(false),
            Some((_, Ok(()))) => return Ok(true),
            Some((protocol, Err(e))) => (protocol, e),
        };
        let transport = this.transport.lock().as_ref().map(|t| t.clone_ref(py));
        report_protocol_error(
            this.engine.bind(py).as_any(),
            transport.as_ref().map_or(&py.None(), |t| t).bind(py),
            Some(&protocol),
            err,
            method.name(),
        )
        .map(|()| false)
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
        for _ in 0..MAX_BATCH {
            // asyncio's transport stops reading by removing the fd's reader.
            if !this
                .engine
                .get()
                .is_watched_by(this.fd, Side::Read, slf.as_any())
            {
                return Ok(());
            }
            let delivery = match recvfrom_copied(py, this.fd) {
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => Delivery::Error(os_error(e)),
                Ok((data, from)) => Delivery::Datagram(data, this.peer_tuple(py, &from)?),
            };
            if !Self::deliver(slf, delivery)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[pymethods]
impl DatagramCore {
    /// The core of `transport`, whose socket `fd` of `family` is connected
    /// to a peer when `connected`, delivering to `protocol`.
    #[new]
    fn new(
        loop_: &Bound<'_, PyAny>,
        fd: RawFd,
        family: i32,
        connected: bool,
        transport: Py<PyAny>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        sys::no_sigpipe(fd);
        let state = State {
            protocol: Some(Protocol::new(protocol)),
            peer: None,
        };
        Ok(Self {
            engine: loop_.cast::<Engine>()?.clone().unbind(),
            fd,
            family,
            connected,
            transport: GilCell::new(Some(transport)),
            state: GilCell::new(state),
        })
    }

    /// Switches protocols (the transport's `set_protocol`).
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let new = Protocol::new(protocol);
        let old = self.state.lock().protocol.replace(new);
        drop(old);
    }

    /// Starts watching the socket for datagrams.
    fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let previous = slf.get().engine.get().set_watcher(
            slf.py(),
            slf.get().fd,
            Side::Read,
            Some(Watcher::native(slf)?),
        )?;
        drop(previous);
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
                let exc = os_error(e);
                if let Some((_, called)) =
                    self.call_protocol(py, Method::ErrorReceived, (exc.value(py),))
                {
                    called?;
                }
                Ok(true)
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.engine, &self.transport, &self.state).traverse(&visit)
    }

    /// Drops the protocol, the cached address and the transport once the
    /// connection is lost.
    fn release(&self) {
        let released = std::mem::take(&mut *self.state.lock());
        drop(released);
        let transport = self.transport.lock().take();
        drop(transport);
    }

    fn __clear__(&self) {
        self.release();
    }
}
