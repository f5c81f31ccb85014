//! `sock_recv`, `sock_recv_into` and `sock_sendall` as native awaitables.
//!
//! A [`SockOp`] behaves as asyncio's coroutine of the same name: nothing
//! happens until it is first stepped; then the syscall is tried at once, and
//! only on EAGAIN does it register a native watcher and yield a future, which
//! the watcher completes. A finished or cancelled wait removes its watcher,
//! unless another wait has replaced it.

use super::table::TransportTable;
use crate::engine::{Engine, GilCell, NativeWatcher, Side, Traverse, Watcher};
use crate::errors::{escapes, os_error};
use crate::net::{
    byte_buffer, read_raw, recv_bytes, send, with_bytes, would_block, writable, FdKind,
};
use crate::sys;
use pyo3::exceptions::{PyStopIteration, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};
use pyo3::PyTraverseError;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// What the operation does.
enum Kind {
    /// The size as given: checked at each try, as `sock.recv(n)` checks it.
    Recv(Py<PyAny>),
    RecvInto(Py<PyAny>),
    SendAll(Py<PyAny>),
}

/// Where the operation stands.
enum Stage {
    /// Not stepped yet.
    New,
    /// Waiting on `fut`, this operation watching `fd`.
    Waiting { fut: Py<PyAny>, fd: RawFd },
    /// Returned, raised or closed.
    Done,
}

/// A socket operation in progress (see the module documentation).
#[pyclass(frozen, module = "oxloop._oxloop", name = "SockOp")]
pub struct SockOp {
    loop_: Py<PyAny>,
    sock: Py<PyAny>,
    kind: Kind,
    stage: GilCell<Stage>,
    /// How much of a `sock_sendall` is sent.
    sent: AtomicUsize,
}

impl NativeWatcher for SockOp {
    /// Every attempt tries the syscall before waiting.
    const ONESHOT: bool = true;

    fn on_ready(slf: &Bound<'_, Self>, _side: Side) -> PyResult<()> {
        Self::ready(slf)
    }
}

/// The outcome of one attempt.
enum Attempt<'py> {
    Finished(Bound<'py, PyAny>),
    WouldBlock,
}

impl SockOp {
    fn engine<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, Engine>> {
        Ok(self.loop_.bind(py).cast::<Engine>()?.clone())
    }

    fn side(&self) -> Side {
        match self.kind {
            Kind::SendAll(..) => Side::Write,
            _ => Side::Read,
        }
    }

    /// One try of the syscall.
    fn attempt<'py>(&self, py: Python<'py>, fd: RawFd) -> PyResult<Attempt<'py>> {
        let result: io::Result<Bound<'py, PyAny>> = match &self.kind {
            Kind::Recv(n) => match recv_size(n.bind(py))? {
                // As socket.recv(0): no syscall, so not even a closed socket fails.
                0 => Ok(PyBytes::new(py, b"").into_any()),
                n => recv_bytes(py, fd, n).map(Bound::into_any),
            },
            Kind::RecvInto(buf) => {
                let buf = byte_buffer(buf.bind(py))?;
                let (ptr, len) = writable(&buf).ok_or_else(|| {
                    PyTypeError::new_err("a writable, C-contiguous buffer is required")
                })?;
                // SAFETY: the exported buffer is writable, contiguous and
                // `len` long while `buf` lives.
                unsafe { read_raw(fd, ptr, len) }.map(|n| {
                    let Ok(n) = n.into_pyobject(py);
                    n.into_any()
                })
            }
            Kind::SendAll(data) => self.send_rest(py, fd, data.bind(py)),
        };
        match result {
            Ok(value) => Ok(Attempt::Finished(value)),
            Err(e) if would_block(&e) => Ok(Attempt::WouldBlock),
            Err(e) => Err(os_error(e)),
        }
    }

    /// `sock_sendall`: sends what the socket takes; `Ok(None)` once all is sent.
    fn send_rest<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        data: &Bound<'py, PyAny>,
    ) -> io::Result<Bound<'py, PyAny>> {
        let mut sent = self.sent.load(Relaxed);
        if sent == 0 {
            sys::no_sigpipe(fd);
        }
        let result = with_bytes(data, |bytes, _| {
            while sent < bytes.len() {
                match send(fd, &bytes[sent..], FdKind::Socket) {
                    Ok(n) => sent += n,
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(()))
        })
        .map_err(io::Error::other)?;
        self.sent.store(sent, Relaxed);
        result.map(|()| py.None().into_bound(py))
    }

    /// The first step: asyncio's checks, one try, then the wait.
    fn start<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let sock = this.sock.bind(py);
        static SSL_SOCKET: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        if sock.is_instance(SSL_SOCKET.import(py, "ssl", "SSLSocket")?)? {
            return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
        }
        let engine = this.engine(py)?;
        if engine.get().get_debug() && !sock.call_method0(intern!(py, "gettimeout"))?.eq(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if let Attempt::Finished(value) = this.attempt(py, fd)? {
            this.set_stage(Stage::Done);
            return Err(PyStopIteration::new_err((value.unbind(),)));
        }
        let loop_ = this.loop_.bind(py);
        if may_have_transport(loop_, fd)? {
            loop_.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
        }
        let fut = loop_.call_method0(intern!(py, "create_future"))?;
        let previous =
            engine
                .get()
                .set_watcher(py, fd, this.side(), Some(Watcher::native(slf)?))?;
        if let Some(Watcher::Handle(h)) = previous {
            h.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        this.set_stage(Stage::Waiting {
            fut: fut.clone().unbind(),
            fd,
        });
        fut.call_method1(
            intern!(py, "add_done_callback"),
            (slf.getattr(intern!(py, "_wait_done"))?,),
        )?;
        fut.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(fut)
    }

    /// The watcher fired: try again; complete the future unless it would block.
    fn ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (fut, fd) = match &*this.stage.lock() {
            Stage::Waiting { fut, fd, .. } => (fut.clone_ref(py), *fd),
            _ => return Ok(()),
        };
        let fut = fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Self::unwatch(slf);
        }
        match this.attempt(py, fd) {
            Ok(Attempt::WouldBlock) => Ok(()),
            Ok(Attempt::Finished(value)) => {
                Self::unwatch(slf)?;
                fut.call_method1(intern!(py, "set_result"), (value,))
                    .map(drop)
            }
            Err(e) if escapes(py, &e) => Err(e),
            Err(e) => {
                Self::unwatch(slf)?;
                fut.call_method1(intern!(py, "set_exception"), (e.value(py),))
                    .map(drop)
            }
        }
    }

    /// Removes this operation's watcher, if it is still the fd's.
    fn unwatch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = match &*this.stage.lock() {
            Stage::Waiting { fd, .. } => Some(*fd),
            _ => None,
        };
        if let Some(fd) = fd {
            this.engine(py)?
                .get()
                .clear_watcher_of(fd, this.side(), slf.as_any())?;
        }
        Ok(())
    }

    /// Moves to `stage`; what the old stage held is released afterwards.
    fn set_stage(&self, stage: Stage) -> Stage {
        std::mem::replace(&mut *self.stage.lock(), stage)
    }

    /// The value of the finished wait, as the StopIteration a coroutine raises.
    fn finish(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match slf.get().set_stage(Stage::Done) {
            Stage::Waiting { fut, .. } => {
                let value = fut.bind(py).call_method0(intern!(py, "result"))?;
                Err(PyStopIteration::new_err((value.unbind(),)))
            }
            _ => Err(PyStopIteration::new_err(())),
        }
    }
}

/// `sock.recv`'s reading of its size: an index, not negative.
fn recv_size(n: &Bound<'_, PyAny>) -> PyResult<usize> {
    let n: isize = n.extract()?;
    usize::try_from(n).map_err(|_| PyValueError::new_err("negative buffersize in recv"))
}

#[pymethods]
impl SockOp {
    /// `loop.sock_recv(sock, n)`.
    #[staticmethod]
    fn recv(loop_: Py<PyAny>, sock: Py<PyAny>, n: Py<PyAny>) -> Self {
        Self::new(loop_, sock, Kind::Recv(n))
    }

    /// `loop.sock_recv_into(sock, buf)`.
    #[staticmethod]
    fn recv_into(loop_: Py<PyAny>, sock: Py<PyAny>, buf: Py<PyAny>) -> Self {
        Self::new(loop_, sock, Kind::RecvInto(buf))
    }

    /// `loop.sock_sendall(sock, data)`.
    #[staticmethod]
    fn sendall(loop_: Py<PyAny>, sock: Py<PyAny>, data: Py<PyAny>) -> Self {
        Self::new(loop_, sock, Kind::SendAll(data))
    }

    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::send(slf, slf.py().None().bind(slf.py()))
    }

    /// Steps the operation, as `coroutine.send(None)`.
    fn send(slf: &Bound<'_, Self>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let pending = match &*slf.get().stage.lock() {
            Stage::New => None,
            Stage::Waiting { fut, .. } => Some(fut.clone_ref(py)),
            Stage::Done => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "cannot reuse already awaited sock operation",
                ))
            }
        };
        match pending {
            None => {
                let started = Self::start(slf);
                if started.is_err() {
                    drop(slf.get().set_stage(Stage::Done));
                }
                started.map(Bound::unbind)
            }
            Some(fut)
                if !fut
                    .bind(py)
                    .call_method0(intern!(py, "done"))?
                    .is_truthy()? =>
            {
                Ok(fut)
            }
            Some(_) => Self::finish(slf),
        }
    }

    /// Raises `typ` at the await point, as `coroutine.throw` does; a pending
    /// wait is cancelled.
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Self::close(slf)?;
        let exc = match val {
            Some(v) if !v.is_none() => v.clone(),
            _ if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() => typ.clone(),
            _ => typ.call0()?,
        };
        Err(PyErr::from_value(exc))
    }

    /// Abandons the operation, cancelling a pending wait.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Stage::Waiting { fut, .. } = slf.get().set_stage(Stage::Done) {
            fut.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// The wait's future is done (result, error or cancellation): stop watching.
    fn _wait_done(slf: &Bound<'_, Self>, _fut: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::unwatch(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.loop_, &self.sock, &self.kind, &self.stage).traverse(&visit)
    }
}

impl Traverse for Kind {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Kind::Recv(b) | Kind::RecvInto(b) | Kind::SendAll(b) => b.traverse(visit),
        }
    }
}

impl Traverse for Stage {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Stage::Waiting { fut, .. } => fut.traverse(visit),
            Stage::New | Stage::Done => Ok(()),
        }
    }
}

impl SockOp {
    fn new(loop_: Py<PyAny>, sock: Py<PyAny>, kind: Kind) -> Self {
        Self {
            loop_,
            sock,
            kind,
            stage: GilCell::new(Stage::New),
            sent: AtomicUsize::new(0),
        }
    }
}

/// Whether a transport may own `fd`, so that asyncio's
/// `_ensure_fd_no_transport` must look: false when the loop's transport
/// table has no live entry for it.
fn may_have_transport(loop_: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    let py = loop_.py();
    let table = loop_.getattr(intern!(py, "_transports"))?;
    Ok(match table.cast::<TransportTable>() {
        Ok(table) => table.get().owner(py, fd).is_some(),
        Err(_) => true,
    })
}
