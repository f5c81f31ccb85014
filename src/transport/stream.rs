//! The I/O of a byte-stream transport, in Rust: TCP and Unix stream sockets,
//! pipes and character devices.
//!
//! `oxloop._transport.SocketTransport` and the pipe transports of
//! `oxloop._pipes` (asyncio transport classes, so that `isinstance` holds)
//! each own a [`StreamCore`]. The core reads, writes and buffers, and calls
//! the protocol's methods directly, resolved once when the protocol is set;
//! the rare paths (errors, `connection_lost`, sendfile waiters, EOF) stay in
//! the Python classes, as asyncio writes them.

use super::buffer::{Chunk, WriteBuffer};
use super::inbox::{Inbox, Pending};
use super::stream_reader;
use crate::backend::Received;
use crate::engine::{Engine, GilCell, NativeWatcher, Side, Traverse, Watcher};
use crate::errors::{asyncio_log, escapes, os_error, report_protocol_error};
use crate::net::{
    self, append, bulk_size, byte_buffer, read_appended, read_bytes, read_raw, send, with_bytes,
    would_block, writable, FdKind, BULK_READ, MAX_READ,
};
use crate::sys;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyType};
use pyo3::PyTraverseError;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// How the protocol takes data: `data_received`, `get_buffer` and
/// `buffer_updated` for an `asyncio.BufferedProtocol`, or straight into the
/// reader of an `asyncio.StreamReaderProtocol` (its `data_received` kept
/// for when that reader cannot be fed natively).
enum Reader {
    Plain(Py<PyAny>),
    Buffered(Py<PyAny>, Py<PyAny>),
    Stream(Py<PyAny>),
}

impl Reader {
    fn for_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = protocol.py();
        static BUFFERED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        Ok(
            if protocol.is_instance(BUFFERED.import(py, "asyncio", "BufferedProtocol")?)? {
                Reader::Buffered(
                    protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
                    protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
                )
            } else {
                let data_received = protocol.getattr(intern!(py, "data_received"))?.unbind();
                if stream_reader::is_stream_protocol(protocol)? {
                    Reader::Stream(data_received)
                } else {
                    Reader::Plain(data_received)
                }
            },
        )
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Reader::Plain(d) => Reader::Plain(d.clone_ref(py)),
            Reader::Buffered(g, u) => Reader::Buffered(g.clone_ref(py), u.clone_ref(py)),
            Reader::Stream(d) => Reader::Stream(d.clone_ref(py)),
        }
    }
}

impl Traverse for Reader {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Reader::Plain(d) | Reader::Stream(d) => d.traverse(visit),
            Reader::Buffered(g, u) => (g, u).traverse(visit),
        }
    }
}

/// A transport's reader and protocol, taken out of its state for a read.
type ReaderOf = (Option<Reader>, Option<Py<PyAny>>);

#[derive(Default)]
struct State {
    protocol: Option<Py<PyAny>>,
    /// None also for a protocol that takes no data (a write pipe's).
    reader: Option<Reader>,
    buffer: WriteBuffer,
    closing: bool,
    eof: bool,
    paused: bool,
    conn_lost: u32,
    /// Writes dropped since the connection was lost (or a pipe began closing).
    dropped: u32,
    /// A sendfile is waiting for the buffer to drain (`_empty_waiter`).
    sendfile: bool,
    /// What a backend that receives read for this transport and the
    /// protocol has not taken yet.
    inbox: Inbox,
    /// The bytes at the buffer's front that a send queued in the backend
    /// is sending (see `write`): they count as sent, as a `send()` at once
    /// would have sent them, until its result says otherwise.
    sending: usize,
    /// The errno a send queued in the backend failed with.
    send_error: Option<i32>,
    /// A send queued in the backend ended with more to do than it did:
    /// `write_ready` finishes what a `write()` would have.
    after_send: bool,
}

impl Traverse for State {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.protocol, &self.reader, &self.buffer).traverse(visit)
    }
}

/// The native half of a stream or pipe transport.
#[pyclass(frozen, module = "oxloop._oxloop", name = "StreamCore")]
pub struct StreamCore {
    engine: Py<Engine>,
    fd: RawFd,
    kind: FdKind,
    /// The transport, until `release` lets go of it: that breaks the cycle
    /// transport -> core -> transport, so a finished connection's objects
    /// go with their last reference instead of waiting for the collector.
    transport: GilCell<Option<Py<PyAny>>>,
    state: GilCell<State>,
    /// The size of the last read.
    last_read: AtomicUsize,
    /// The backend received a bulk chunk ([`BULK_READ`] or more) for this
    /// socket, which reads by readiness and `read()` from then on: a
    /// receive into the backend's buffer is copied again into the
    /// protocol's, where a `read()` lands there at once (docs/io_uring.md).
    bulk_flow: AtomicBool,
}

impl NativeWatcher for StreamCore {
    const IN_CONTEXT: bool = true;

    fn on_ready(slf: &Bound<'_, Self>, side: Side) -> PyResult<()> {
        match side {
            Side::Read => Self::read_ready(slf),
            Side::Write => Self::write_ready(slf),
        }
    }

    fn receives(&self) -> bool {
        self.kind == FdKind::Socket && self.engine.get().receives() && !self.bulk_flow.load(Relaxed)
    }

    fn received(slf: &Bound<'_, Self>, received: Received) -> bool {
        let mut st = slf.get().state.lock();
        if st.closing || st.conn_lost > 0 {
            return false;
        }
        let (was_empty, paused) = (st.inbox.is_empty(), st.paused);
        st.inbox.push(received, paused);
        was_empty && !paused
    }

    fn sent(slf: &Bound<'_, Self>, result: i32) -> bool {
        let py = slf.py();
        let (more, done) = {
            let mut st = slf.get().state.lock();
            let len = std::mem::take(&mut st.sending);
            if len == 0 || st.conn_lost > 0 {
                return false;
            }
            let done = match result {
                n if n > 0 => st.buffer.consume(py, n as usize),
                e if e == 0 || e == -libc::EAGAIN => Vec::new(),
                e => {
                    st.send_error = Some(-e);
                    Vec::new()
                }
            };
            let whole = usize::try_from(result).is_ok_and(|n| n == len);
            let more = !whole || !st.buffer.is_empty() || st.closing || st.eof || st.sendfile;
            st.after_send |= more;
            (more, done)
        };
        drop(done);
        more
    }
}

/// asyncio's wording for what failed, by transport.
fn fatal_message(kind: FdKind, write: bool) -> &'static str {
    match (kind, write) {
        (FdKind::Socket, false) => "Fatal read error on socket transport",
        (FdKind::Socket, true) => "Fatal write error on socket transport",
        (FdKind::Pipe, false) => "Fatal read error on pipe transport",
        (FdKind::Pipe, true) => "Fatal write error on pipe transport",
    }
}

impl StreamCore {
    /// What `write` does but flow control: sends at once what the socket
    /// takes and buffers the rest. True when data was buffered.
    /// Where the backend sends (io_uring), a socket's write of less than
    /// [`BULK_READ`] with nothing buffered, but the loop pass's first, is a
    /// send the backend makes with the next wait, every such send of the
    /// pass in one system call; the bytes count as sent, and `sent` takes
    /// the result.
    fn send_or_buffer(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{name}'"
            )));
        }
        this.check_writable("write")?;
        with_bytes(data, |bytes, whole| {
            if bytes.is_empty() {
                return Ok(false);
            }
            let (lost, warn, empty) = {
                let mut st = this.state.lock();
                // A pipe also drops what is written once it is closing.
                let dropping = st.conn_lost > 0 || (this.kind == FdKind::Pipe && st.closing);
                let warn =
                    dropping && st.conn_lost + st.dropped >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                if dropping {
                    st.dropped += 1;
                }
                (dropping, warn, st.buffer.is_empty())
            };
            if lost {
                if warn {
                    let message = match this.kind {
                        FdKind::Socket => "socket.send() raised exception.",
                        FdKind::Pipe => {
                            "pipe closed by peer or os.write(pipe, data) raised exception."
                        }
                    };
                    asyncio_log(py, intern!(py, "warning"), (message,))?;
                }
                return Ok(false);
            }
            let mut sent = 0;
            if empty && this.kind == FdKind::Socket && bytes.len() < BULK_READ {
                let engine = this.engine.get();
                if engine.sends() {
                    let chunk = Chunk::unsent(whole, bytes, 0);
                    let rest = chunk.rest(py);
                    let (ptr, len) = (rest.as_ptr(), rest.len());
                    // SAFETY: the chunk goes to the buffer's front, where its
                    // bytes stay unchanged (and unmoved: see `Chunk::rest`)
                    // until `sent` takes them or `force_close` has stopped
                    // the send.
                    if unsafe { engine.send(slf, this.fd, ptr, len) }? {
                        let mut st = this.state.lock();
                        st.sending = len;
                        let empty = st.buffer.push(py, chunk);
                        drop(empty);
                        return Ok(false);
                    }
                }
            }
            if empty {
                match send(this.fd, bytes, this.kind) {
                    Ok(n) if n == bytes.len() => return Ok(false),
                    Ok(n) => sent = n,
                    Err(e) if would_block(&e) => {}
                    Err(e) => {
                        Self::fatal_error(slf, os_error(e), fatal_message(this.kind, true))?;
                        return Ok(false);
                    }
                }
                Self::watch(slf, Side::Write, true)?;
            }
            let chunk = Chunk::unsent(whole, bytes, sent);
            let empty = this.state.lock().buffer.push(py, chunk);
            drop(empty);
            Ok(true)
        })
    }

    /// Starts or stops watching one side of the fd.
    fn watch(slf: &Bound<'_, Self>, side: Side, on: bool) -> PyResult<()> {
        let this = slf.get();
        let engine = this.engine.get();
        if !on && engine.is_closed() {
            return Ok(());
        }
        let watcher = on.then(|| Watcher::native(slf)).transpose()?;
        let previous = engine.set_watcher(slf.py(), this.fd, side, watcher)?;
        drop(previous);
        Ok(())
    }

    /// The transport; None once released.
    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.transport.lock().as_ref().map(|t| t.bind(py).clone())
    }

    /// asyncio's `_fatal_error`, unless the exception must stop the loop.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if escapes(py, &err) {
            return Err(err);
        }
        // Released: the loop's handler hears of it instead.
        let Some(transport) = slf.get().transport(py) else {
            return Err(err);
        };
        transport
            .call_method1(intern!(py, "_fatal_error"), (err.value(py), message))
            .map(drop)
    }

    /// Schedules `transport._call_connection_lost(exc)`.
    fn schedule_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(transport) = this.transport(py) else {
            return Ok(());
        };
        let callback = transport.getattr(intern!(py, "_call_connection_lost"))?;
        this.engine
            .bind(py)
            .call_method1(intern!(py, "call_soon"), (callback, exc))
            .map(drop)
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Paused or closed since the event was queued (by another callback
        // of this iteration): asyncio's cancelled reader handle would not run.
        if !this
            .engine
            .get()
            .is_watched_by(this.fd, Side::Read, slf.as_any())
        {
            return Ok(());
        }
        // What was received before a bulk flow left receives goes first.
        if this.receives() || (this.bulk_flow.load(Relaxed) && !this.state.lock().inbox.is_empty())
        {
            return Self::read_received(slf);
        }
        let Some((reader, protocol)) = this.reader(py) else {
            return Ok(());
        };
        let call = |method: &Py<PyAny>| {
            let method = method.bind(py).clone();
            move |data: Bound<'_, PyBytes>| method.call1((data,)).map(drop)
        };
        match reader {
            // A protocol that cannot take data (None, a SubprocessProtocol)
            // fails after the read, as asyncio's call would.
            None => Self::read_into_bytes(slf, |data| {
                let protocol = protocol.map_or_else(|| py.None(), |p| p.into_any());
                protocol
                    .call_method1(py, intern!(py, "data_received"), (data,))
                    .map(drop)
            }),
            Some(Reader::Plain(data_received)) => Self::read_into_bytes(slf, call(&data_received)),
            Some(Reader::Buffered(get_buffer, buffer_updated)) => {
                Self::read_into_protocol(slf, get_buffer.bind(py), buffer_updated.bind(py))
            }
            Some(Reader::Stream(data_received)) => {
                match protocol.map(|p| stream_reader::feedable(p.bind(py))) {
                    Some(Ok(Some((reader, buffer)))) => {
                        Self::read_into_stream(slf, &reader, &buffer)
                    }
                    Some(Err(e)) => Self::protocol_failed(slf, e, "data_received"),
                    _ => Self::read_into_bytes(slf, call(&data_received)),
                }
            }
        }
    }

    /// The reader and the protocol, unless the connection is lost.
    fn reader(&self, py: Python<'_>) -> Option<ReaderOf> {
        let st = self.state.lock();
        if st.conn_lost > 0 {
            return None;
        }
        let protocol = st.protocol.as_ref().map(|p| p.clone_ref(py));
        Some((st.reader.as_ref().map(|r| r.clone_ref(py)), protocol))
    }

    /// Hands on, in order, what the backend received, while the transport
    /// reads; what is left when it stops (paused) waits in the inbox, out
    /// of the backend's buffers.
    ///
    /// The end of the stream (or an error) that came with bytes is handed
    /// on at the next iteration of the loop, as asyncio's loop, which reads
    /// once per readiness report, only learns of it from its next read.
    fn read_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut handed = false;
        loop {
            let reading = this
                .engine
                .get()
                .is_watched_by(this.fd, Side::Read, slf.as_any());
            let item = {
                let mut st = this.state.lock();
                if st.closing || st.conn_lost > 0 {
                    st.inbox.clear();
                    return Ok(());
                }
                if st.paused || !reading {
                    st.inbox.keep();
                    return Ok(());
                }
                if handed && st.inbox.ends_next() {
                    drop(st);
                    this.engine.get().queue_reader(this.fd);
                    return Ok(());
                }
                st.inbox.pop()
            };
            let Some((reader, protocol)) = item.as_ref().and_then(|_| this.reader(py)) else {
                return Ok(());
            };
            match item {
                None => return Ok(()),
                Some(Pending::Eof) => return Self::at_eof(slf),
                Some(Pending::Error(errno)) => {
                    let err = os_error(io::Error::from_raw_os_error(errno));
                    return Self::fatal_error(slf, err, fatal_message(this.kind, false));
                }
                Some(data) => {
                    handed = true;
                    let bulk = data.bytes().is_some_and(|b| b.len() >= BULK_READ);
                    match Self::hand_on(slf, reader, protocol, data) {
                        Ok(rest) => {
                            if let Some(rest) = rest {
                                this.state.lock().inbox.unpop(rest);
                            }
                            if bulk {
                                Self::leave_receives(slf)?;
                            }
                        }
                        Err(e) => {
                            // Leaving (the loop stops): what is left is read
                            // when it runs again.
                            if !this.state.lock().inbox.is_empty() {
                                this.engine.get().queue_reader(this.fd);
                            }
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// A bulk flow leaves the backend's receives for readiness and
    /// `read()` (see `bulk_flow`), once: the receive stops, what it had
    /// taken joins the inbox behind what is there, and the read side is
    /// watched afresh (or when reading resumes).
    fn leave_receives(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.bulk_flow.swap(true, Relaxed) || !this.is_reading() {
            return Ok(());
        }
        Self::watch(slf, Side::Read, false)?;
        Self::watch(slf, Side::Read, true)
    }

    /// Hands received bytes to the protocol; returns what a
    /// `BufferedProtocol`'s buffer had no room for.
    fn hand_on(
        slf: &Bound<'_, Self>,
        reader: Option<Reader>,
        protocol: Option<Py<PyAny>>,
        data: Pending,
    ) -> PyResult<Option<Pending>> {
        let py = slf.py();
        let bytes = data.bytes().unwrap_or_default();
        let received = |method: &Bound<'_, PyAny>, name: &str| {
            let r = method.call1((PyBytes::new(py, bytes),));
            r.map(drop).or_else(|e| Self::protocol_failed(slf, e, name))
        };
        match reader {
            // A protocol that cannot take data (None, a SubprocessProtocol)
            // fails as asyncio's call would.
            None => {
                let protocol = protocol.map_or_else(|| py.None(), |p| p.into_any());
                match protocol.bind(py).getattr(intern!(py, "data_received")) {
                    Ok(method) => received(&method, "data_received")?,
                    Err(e) => Self::protocol_failed(slf, e, "data_received")?,
                }
            }
            Some(Reader::Plain(data_received)) => {
                received(data_received.bind(py), "data_received")?;
            }
            Some(Reader::Buffered(get_buffer, buffer_updated)) => {
                let buf = match protocol_buffer(get_buffer.bind(py)) {
                    Ok(buf) => buf,
                    Err(e) => {
                        Self::fatal_error(slf, e, GET_BUFFER_FAILED)?;
                        return Ok(None);
                    }
                };
                let Some((ptr, len)) = writable(&buf) else {
                    let err = not_writable();
                    Self::fatal_error(slf, err, fatal_message(slf.get().kind, false))?;
                    return Ok(None);
                };
                let n = len.min(bytes.len());
                // SAFETY: `writable` checked the buffer is writable and
                // contiguous, at least `n` long; it stays exported (so alive
                // and unmoved) until `buf` drops, and is not our bytes.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, n) };
                drop(buf);
                if let Err(e) = buffer_updated.bind(py).call1((n,)) {
                    Self::protocol_failed(slf, e, "buffer_updated")?;
                    return Ok(None);
                }
                return Ok(data.after(n));
            }
            Some(Reader::Stream(data_received)) => {
                match protocol.map(|p| stream_reader::feedable(p.bind(py))) {
                    Some(Ok(Some((reader, buffer)))) => {
                        let fed = append(&buffer, bytes)
                            .map_err(os_error)
                            .and_then(|()| stream_reader::fed(&reader, &buffer));
                        fed.or_else(|e| Self::protocol_failed(slf, e, "data_received"))?;
                    }
                    Some(Err(e)) => Self::protocol_failed(slf, e, "data_received")?,
                    _ => received(data_received.bind(py), "data_received")?,
                }
            }
        }
        Ok(None)
    }

    /// Whether the last read was a bulk one (see [`bulk_size`]).
    fn bulk(&self) -> bool {
        self.last_read.load(Relaxed) >= BULK_READ
    }

    /// Reads one `bytes` ([`read_bytes`]). `None` at EOF.
    fn read_bytes<'py>(&self, py: Python<'py>) -> io::Result<Option<Bound<'py, PyBytes>>> {
        let data = read_bytes(py, self.fd, MAX_READ, self.bulk())?;
        let n = data.as_bytes().len();
        self.last_read.store(n, Relaxed);
        Ok((n > 0).then_some(data))
    }

    /// The peer closed its side: asyncio's EOF handling for a socket,
    /// `eof_received()`, then stop reading where it returned true, else
    /// close (logged in debug mode). A pipe's is its transport's own
    /// `_read_ready__on_eof`.
    fn at_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(transport) = this.transport(py) else {
            return Ok(());
        };
        if this.kind == FdKind::Pipe {
            return transport
                .call_method0(intern!(py, "_read_ready__on_eof"))
                .map(drop);
        }
        if this.engine.get().get_debug() {
            asyncio_log(py, intern!(py, "debug"), ("%r received EOF", &transport))?;
        }
        let protocol = this.state.lock().protocol.as_ref().map(|p| p.clone_ref(py));
        let Some(protocol) = protocol else {
            return Ok(());
        };
        let keep_open = protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|keep_open| keep_open.is_truthy());
        match keep_open {
            Ok(true) => Self::watch(slf, Side::Read, false),
            Ok(false) => Self::close(slf),
            Err(e) => Self::fatal_error(slf, e, EOF_RECEIVED_FAILED),
        }
    }

    /// Reads one `bytes` and hands it to `data_received`.
    fn read_into_bytes<'py>(
        slf: &Bound<'py, Self>,
        data_received: impl FnOnce(Bound<'py, PyBytes>) -> PyResult<()>,
    ) -> PyResult<()> {
        let py = slf.py();
        let data = slf.get().read_bytes(py);
        match data {
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => Self::fatal_error(slf, os_error(e), fatal_message(slf.get().kind, false)),
            Ok(None) => Self::at_eof(slf),
            Ok(Some(data)) => {
                data_received(data).or_else(|e| Self::protocol_failed(slf, e, "data_received"))
            }
        }
    }

    /// Reads onto the end of a `StreamReader`'s buffer and finishes what
    /// `feed_data` does.
    fn read_into_stream(
        slf: &Bound<'_, Self>,
        reader: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyByteArray>,
    ) -> PyResult<()> {
        let this = slf.get();
        let read = bulk_size(this.fd, this.bulk(), MAX_READ).and_then(|direct| {
            read_appended(
                buffer,
                this.fd,
                direct.unwrap_or(MAX_READ),
                direct.is_some(),
            )
        });
        if let Ok(n) = read {
            this.last_read.store(n, Relaxed);
        }
        match read {
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => Self::fatal_error(slf, os_error(e), fatal_message(this.kind, false)),
            Ok(0) => Self::at_eof(slf),
            Ok(_) => stream_reader::fed(reader, buffer)
                .or_else(|e| Self::protocol_failed(slf, e, "data_received")),
        }
    }

    /// Reads into the buffer a `BufferedProtocol` hands out.
    fn read_into_protocol(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let fd = slf.get().fd;
        let buf = match protocol_buffer(get_buffer) {
            Ok(buf) => buf,
            Err(e) => return Self::fatal_error(slf, e, GET_BUFFER_FAILED),
        };
        let read = match writable(&buf) {
            None => Err(not_writable()),
            // SAFETY: `writable` checked the buffer is writable and contiguous;
            // it stays exported (so alive and unmoved) until `buf` drops.
            Some((ptr, len)) => match unsafe { read_raw(fd, ptr, len) } {
                Err(e) if would_block(&e) => return Ok(()),
                r => r.map_err(os_error),
            },
        };
        drop(buf);
        match read {
            Err(e) => Self::fatal_error(slf, e, fatal_message(slf.get().kind, false)),
            Ok(0) => Self::at_eof(slf),
            Ok(n) => match buffer_updated.call1((n,)) {
                Ok(_) => Ok(()),
                Err(e) => Self::protocol_failed(slf, e, "buffer_updated"),
            },
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (flushed, after_send) = {
            let mut st = this.state.lock();
            // A send queued in the backend goes first; its result comes.
            if st.conn_lost > 0 || st.sending > 0 {
                return Ok(());
            }
            let after_send = std::mem::take(&mut st.after_send);
            let flushed = match st.send_error.take() {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None if !st.buffer.is_empty() => st.buffer.flush(py, this.fd, this.kind),
                None if after_send => Ok((0, Vec::new())),
                None => return Ok(()),
            };
            (flushed, after_send)
        };
        let Some(transport) = this.transport(py) else {
            return Ok(());
        };
        // What the backend's send did not take is buffered now, as what a
        // `send()` at once did not take is in `write`.
        let buffered = |slf: &Bound<'_, Self>| -> PyResult<()> {
            Self::watch(slf, Side::Write, true)?;
            transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
            Ok(())
        };
        match flushed {
            Err(e) if would_block(&e) => {
                if after_send {
                    buffered(slf)?;
                }
                return Ok(());
            }
            Err(e) => {
                Self::watch(slf, Side::Write, false)?;
                let (dropped, sendfile) = {
                    let mut st = this.state.lock();
                    (st.buffer.clear(), st.sendfile)
                };
                drop(dropped);
                let err = os_error(e);
                let exc = err.value(py).clone();
                Self::fatal_error(slf, err, fatal_message(this.kind, true))?;
                if sendfile {
                    transport.call_method1(intern!(py, "_wake_empty_waiter"), (exc,))?;
                }
                return Ok(());
            }
            Ok((_, sent)) => drop(sent),
        }
        transport.call_method0(intern!(py, "_maybe_resume_protocol"))?; // may write more
        let (empty, closing, eof, sendfile) = {
            let st = this.state.lock();
            (st.buffer.is_empty(), st.closing, st.eof, st.sendfile)
        };
        if empty {
            Self::watch(slf, Side::Write, false)?;
            if sendfile {
                transport.call_method1(intern!(py, "_wake_empty_waiter"), (py.None(),))?;
            }
            if closing {
                transport.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
            } else if eof {
                shutdown_write(this.fd)?;
            }
        } else if after_send {
            buffered(slf)?;
        }
        Ok(())
    }

    /// A protocol method raised: a socket transport fails (asyncio's
    /// `_fatal_error`); a pipe transport reports it and reads on, as
    /// asyncio's pipe transports do (the exception escapes their callback).
    fn protocol_failed(slf: &Bound<'_, Self>, err: PyErr, method: &str) -> PyResult<()> {
        match slf.get().kind {
            FdKind::Socket => {
                let message = format!("Fatal error: protocol.{method}() call failed.");
                Self::fatal_error(slf, err, &message)
            }
            FdKind::Pipe => {
                let py = slf.py();
                let this = slf.get();
                let protocol = this.state.lock().protocol.as_ref().map(|p| p.clone_ref(py));
                let transport = this
                    .transport(py)
                    .unwrap_or_else(|| py.None().into_bound(py));
                report_protocol_error(
                    this.engine.bind(py).as_any(),
                    &transport,
                    protocol.as_ref().map(|p| p.bind(py)),
                    err,
                    method,
                )
            }
        }
    }

    fn check_writable(&self, what: &str) -> PyResult<()> {
        let st = self.state.lock();
        if st.eof {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {what}() after write_eof()"
            )));
        }
        if st.sendfile {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {what}; sendfile is in progress"
            )));
        }
        Ok(())
    }
}

/// asyncio's message when a `BufferedProtocol`'s `get_buffer` raised.
const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
/// asyncio's message when a protocol's `eof_received` raised.
const EOF_RECEIVED_FAILED: &str = "Fatal error: protocol.eof_received() call failed.";

/// The error for a `get_buffer` that returned a buffer it cannot fill.
fn not_writable() -> PyErr {
    PyTypeError::new_err("get_buffer() must return a writable, contiguous buffer")
}

/// The buffer a `BufferedProtocol`'s `get_buffer(-1)` hands out; an empty
/// one is refused, as asyncio refuses it.
fn protocol_buffer(get_buffer: &Bound<'_, PyAny>) -> PyResult<pyo3::buffer::PyBuffer<u8>> {
    let buf = byte_buffer(&get_buffer.call1((-1,))?)?;
    if buf.item_count() == 0 {
        return Err(PyRuntimeError::new_err(
            "get_buffer() returned an empty buffer",
        ));
    }
    Ok(buf)
}

fn shutdown_write(fd: RawFd) -> PyResult<()> {
    // SAFETY: plain syscall on an fd the transport's socket owns.
    sys::check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map_err(os_error)?;
    Ok(())
}

#[pymethods]
impl StreamCore {
    /// The core of `transport` for the connected socket `fd` on `loop`, or
    /// for a pipe or character device when `pipe` is true.
    #[new]
    #[pyo3(signature = (loop_, fd, transport, protocol, pipe=false))]
    fn new(
        loop_: &Bound<'_, PyAny>,
        fd: RawFd,
        transport: Py<PyAny>,
        protocol: &Bound<'_, PyAny>,
        pipe: bool,
    ) -> PyResult<Self> {
        let engine = loop_.cast::<Engine>()?.clone().unbind();
        if !pipe {
            sys::no_sigpipe(fd);
        }
        let state = State {
            protocol: Some(protocol.clone().unbind()),
            reader: Reader::for_protocol(protocol).ok(),
            ..State::default()
        };
        Ok(Self {
            engine,
            fd,
            kind: if pipe { FdKind::Pipe } else { FdKind::Socket },
            transport: GilCell::new(Some(transport)),
            state: GilCell::new(state),
            last_read: AtomicUsize::new(0),
            bulk_flow: AtomicBool::new(false),
        })
    }

    /// The protocol data goes to.
    #[getter]
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.lock().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Switches protocols (asyncio's `set_protocol`).
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let reader = Reader::for_protocol(protocol).ok();
        let old = {
            let mut st = self.state.lock();
            (
                st.protocol.replace(protocol.clone().unbind()),
                std::mem::replace(&mut st.reader, reader),
            )
        };
        drop(old);
    }

    /// Watches for reading unless closing or paused.
    fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().is_reading() {
            Self::watch(slf, Side::Read, true)?;
        }
        Ok(())
    }

    /// Stops watching for reading (after an EOF the protocol keeps open).
    fn stop_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch(slf, Side::Read, false)
    }

    fn is_reading(&self) -> bool {
        let st = self.state.lock();
        !st.closing && !st.paused
    }

    /// True when reading was paused now.
    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        {
            let mut st = slf.get().state.lock();
            if st.closing || st.paused {
                return Ok(false);
            }
            st.paused = true;
            // Nobody reads it soon: the backend's buffers go back.
            st.inbox.keep();
        }
        Self::watch(slf, Side::Read, false)?;
        Ok(true)
    }

    /// True when reading was resumed now.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        {
            let mut st = slf.get().state.lock();
            if st.closing || !st.paused {
                return Ok(false);
            }
            st.paused = false;
        }
        Self::watch(slf, Side::Read, true)?;
        let this = slf.get();
        if !this.state.lock().inbox.is_empty() {
            this.engine.get().queue_reader(this.fd);
        }
        Ok(true)
    }

    #[getter]
    fn closing(&self) -> bool {
        self.state.lock().closing
    }

    fn get_write_buffer_size(&self) -> usize {
        let st = self.state.lock();
        st.buffer.size() - st.sending
    }

    /// True when nothing waits to be written.
    fn buffer_empty(&self) -> bool {
        self.state.lock().buffer.is_empty()
    }

    /// Marks a sendfile in progress (`_make_empty_waiter`) or done.
    fn set_sendfile(&self, active: bool) {
        self.state.lock().sendfile = active;
    }

    /// asyncio's `write`: sends at once what the socket takes and buffers
    /// the rest, then lets flow control look (`_maybe_pause_protocol`).
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !Self::send_or_buffer(slf, data)? {
            return Ok(());
        }
        match slf.get().transport(slf.py()) {
            Some(transport) => transport
                .call_method0(intern!(slf.py(), "_maybe_pause_protocol"))
                .map(drop),
            None => Ok(()),
        }
    }

    /// asyncio's `writelines`: buffers every chunk, then one write attempt.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_writable("writelines")?;
        if !list_of_data.is_truthy()? {
            return Ok(());
        }
        let mut chunks = Vec::new();
        for data in list_of_data.try_iter()? {
            let data = data?;
            chunks.push(with_bytes(&data, |bytes, whole| {
                Ok(Chunk::unsent(whole, bytes, 0))
            })?);
        }
        let empty: Vec<_> = {
            let mut st = this.state.lock();
            chunks
                .into_iter()
                .filter_map(|chunk| st.buffer.push(py, chunk))
                .collect()
        };
        drop(empty);
        Self::write_ready(slf)?;
        if !this.buffer_empty() {
            Self::watch(slf, Side::Write, true)?;
        }
        Ok(())
    }

    /// asyncio's `write_eof`: shuts the socket for writing once the buffer drains.
    fn write_eof(&self) -> PyResult<()> {
        let empty = {
            let mut st = self.state.lock();
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buffer.is_empty()
        };
        if empty {
            shutdown_write(self.fd)?;
        }
        Ok(())
    }

    /// asyncio's `close`: stop reading; connection_lost once the buffer drained.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = this.state.lock();
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            st.inbox.clear();
        }
        Self::watch(slf, Side::Read, false)?;
        let empty = {
            let mut st = this.state.lock();
            let empty = st.buffer.is_empty();
            if empty {
                st.conn_lost += 1;
            }
            empty
        };
        if empty {
            Self::watch(slf, Side::Write, false)?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// asyncio's `_force_close`: drop the buffer, stop, connection_lost(exc).
    #[pyo3(signature = (exc=None))]
    fn force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let this = slf.get();
        if this.state.lock().sending > 0 {
            // Made now (a `send()` at once would have sent it), so that its
            // bytes can go with the buffer.
            this.engine.get().stop_send(this.fd)?;
            this.state.lock().sending = 0;
        }
        let (dropped, stop_reading) = {
            let mut st = this.state.lock();
            if st.conn_lost > 0 {
                return Ok(());
            }
            let had_buffer = !st.buffer.is_empty();
            let dropped = st.buffer.clear();
            let stop_reading = !st.closing;
            st.closing = true;
            st.inbox.clear();
            st.conn_lost += 1;
            (had_buffer.then_some(dropped), stop_reading)
        };
        if let Some(dropped) = dropped {
            drop(dropped);
            Self::watch(slf, Side::Write, false)?;
        }
        if stop_reading {
            Self::watch(slf, Side::Read, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    /// Drops the protocol, the buffer and the transport once the connection
    /// is lost.
    fn release(&self) {
        let released = {
            let mut st = self.state.lock();
            st.inbox.clear();
            (st.protocol.take(), st.reader.take(), st.buffer.clear())
        };
        drop(released);
        let transport = self.transport.lock().take();
        drop(transport);
    }

    /// What asyncio's socket transport first does with its socket `sock`:
    /// TCP_NODELAY where `base_events._set_nodelay` sets it (an Internet
    /// socket whose `proto` is IPPROTO_TCP; a transport's socket is a
    /// stream socket); returns its name, None where `getsockname()` fails.
    fn prepare_socket(&self, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = sock.py();
        let name = match net::sockname(self.fd) {
            Ok(addr) => addr.py_tuple(py)?,
            Err(_) => return Ok(py.None()),
        };
        let Some(name) = name else {
            // Not an Internet socket: the socket module formats the name.
            return match sock.call_method0(intern!(py, "getsockname")) {
                Ok(name) => Ok(name.unbind()),
                Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(py.None()),
                Err(e) => Err(e),
            };
        };
        if sock.getattr(intern!(py, "proto"))?.extract::<i32>()? == libc::IPPROTO_TCP {
            net::set_nodelay(self.fd).map_err(os_error)?;
        }
        Ok(name.into_any().unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.engine, &self.transport, &self.state).traverse(&visit)
    }

    fn __clear__(&self) {
        self.release();
    }
}
