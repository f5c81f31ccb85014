//! Conversions between the OS's view of sockets and Python's: reads that
//! become one `bytes`, writes from Python buffers, addresses. Nothing here
//! knows the loop.

pub mod addr;

use crate::sys;
use addr::SockAddr;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use rustc_hash::FxHashSet;
use std::cell::RefCell;
use std::ffi::c_int;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The most one read takes: asyncio's `_SelectorTransport.max_size`.
pub const MAX_READ: usize = 256 * 1024;
/// A read at least this large marks a bulk transfer: the fd's next read
/// goes straight into its `bytes`, where a copy would cost more than the
/// large allocation.
pub const BULK_READ: usize = 64 * 1024;

thread_local! {
    /// The buffer small reads land in before they become one `bytes`.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_READ]);
    /// The fds whose last [`recv_bytes`] was a bulk read.
    static BULK_FDS: RefCell<FxHashSet<RawFd>> = RefCell::new(FxHashSet::default());
}

/// True for the errors that only mean "not now": EAGAIN and EINTR.
pub fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// What a byte-stream fd is, for the one call that differs: a socket is
/// written with `send` and [`sys::SEND_FLAGS`] (a gone peer is EPIPE, never
/// SIGPIPE), a pipe or character device with plain `write(2)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdKind {
    /// A stream socket: `send` with [`sys::SEND_FLAGS`].
    Socket,
    /// A pipe or character device: `write`.
    Pipe,
}

/// Writes `data` to `fd`: how much of it the fd took.
pub fn send(fd: RawFd, data: &[u8], kind: FdKind) -> io::Result<usize> {
    let data = &data[..data.len().min(sys::MAX_IO)];
    // SAFETY: `data` is a live slice for the duration of the call.
    let n = unsafe {
        match kind {
            FdKind::Socket => libc::send(fd, data.as_ptr().cast(), data.len(), sys::SEND_FLAGS),
            FdKind::Pipe => libc::write(fd, data.as_ptr().cast(), data.len()),
        }
    };
    sys::check(n).map(|n| n as usize)
}

/// What asyncio's socket calls raise for a buffer that is not contiguous.
fn not_contiguous() -> PyErr {
    PyBufferError::new_err("memoryview: underlying buffer is not C-contiguous")
}

/// `obj`'s buffer seen as bytes whatever its item format (`array('i')`, a
/// NumPy array), as a socket reads into or writes from it.
pub fn byte_buffer(obj: &Bound<'_, PyAny>) -> PyResult<PyBuffer<u8>> {
    let py = obj.py();
    match PyBuffer::<u8>::get(obj) {
        Err(e) if e.is_instance_of::<PyBufferError>(py) => {
            let view = PyMemoryView::from(obj)?;
            let bytes = view
                .call_method1(intern!(py, "cast"), ("B",))
                .map_err(|_| not_contiguous())?;
            PyBuffer::<u8>::get(&bytes)
        }
        r => r,
    }
}

/// Calls `f` with the bytes of `data` (bytes, bytearray, memoryview or any
/// C-contiguous buffer) and, for `bytes`, the object itself, which can be
/// kept instead of copied.
pub fn with_bytes<R>(
    data: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8], Option<&Bound<'_, PyBytes>>) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return f(b.as_bytes(), Some(b));
    }
    let buf = byte_buffer(data)?;
    if !buf.is_c_contiguous() {
        return Err(not_contiguous());
    }
    // SAFETY: the buffer is C-contiguous, `len_bytes` long and exported
    // (alive, unmoved) while `buf` lives; the GIL is held throughout.
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    f(bytes, None)
}

/// A buffer's memory as (pointer, length) when it can be received into:
/// writable and C-contiguous.
pub fn writable(buf: &PyBuffer<u8>) -> Option<(*mut u8, usize)> {
    (!buf.readonly() && buf.is_c_contiguous()).then(|| (buf.buf_ptr().cast(), buf.len_bytes()))
}

/// `read(2)` into raw memory (for a socket the same as `recv` without flags).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
pub unsafe fn read_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: guaranteed by the caller.
    sys::check(unsafe { libc::read(fd, ptr.cast(), len.min(sys::MAX_IO)) }).map(|n| n as usize)
}

extern "C" {
    /// Shrinks a `bytes` nothing else has seen yet, in place (CPython's own
    /// `socket.recv` does this); on failure it releases the object and sets
    /// the pointer to NULL. Exported by every CPython 3; pyo3-ffi keeps its
    /// declaration private.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> c_int;
}

/// Reads up to `len` bytes straight into a new `bytes` (neither zeroed nor
/// copied: a shorter read shrinks it in place); empty at EOF. For large reads.
pub fn read_new_bytes(py: Python<'_>, fd: RawFd, len: usize) -> io::Result<Bound<'_, PyBytes>> {
    // SAFETY: a new bytes object of `len` bytes that nothing else sees yet;
    // read fills its first `got` bytes and the object is cut to those before
    // anything else can see it.
    unsafe {
        let raw = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as ffi::Py_ssize_t);
        let data = Bound::from_owned_ptr_or_err(py, raw).map_err(io::Error::other)?;
        let got = read_raw(fd, ffi::PyBytes_AsString(raw).cast(), len)?;
        if got == len {
            return Ok(data.cast_into_unchecked::<PyBytes>());
        }
        let mut raw = data.into_ptr();
        _PyBytes_Resize(&mut raw, got as ffi::Py_ssize_t);
        Ok(Bound::from_owned_ptr_or_err(py, raw)
            .map_err(io::Error::other)?
            .cast_into_unchecked::<PyBytes>())
    }
}

/// During a bulk transfer (`bulk`: the fd's last read took at least
/// [`BULK_READ`]), how much to read straight into the target: what the
/// socket holds, up to `len`, while that is still a bulk read. Sized by the
/// socket, the target needs no shrinking: reading into 256 KiB and cutting
/// it down made 100 KiB streams almost 3x slower. `None`: read through the
/// shared buffer.
pub fn bulk_size(fd: RawFd, bulk: bool, len: usize) -> io::Result<Option<usize>> {
    if !bulk {
        return Ok(None);
    }
    let pending = readable_bytes(fd)?;
    Ok((pending >= BULK_READ).then(|| pending.min(len)))
}

/// How many bytes wait in the socket's receive queue (`FIONREAD`).
fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is live.
    sys::check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// Reads up to `len` bytes into a new `bytes` sized to what arrived: during
/// a bulk transfer ([`bulk_size`]) or for more than [`MAX_READ`] straight
/// into it, otherwise through the thread's shared buffer (one copy, no
/// large allocation). Empty at EOF.
pub fn read_bytes(
    py: Python<'_>,
    fd: RawFd,
    len: usize,
    bulk: bool,
) -> io::Result<Bound<'_, PyBytes>> {
    match bulk_size(fd, bulk, len)? {
        Some(n) => read_new_bytes(py, fd, n),
        None if len > MAX_READ => read_new_bytes(py, fd, len),
        None => read_copied(py, fd, len),
    }
}

/// [`read_bytes`] for `sock_recv`, which has no transport to remember the
/// fd's last read: the thread remembers which fds are in a bulk transfer.
/// Copying 100 KiB reads through the shared buffer took 12 % of a
/// `sock_recv` echo server's time.
pub fn recv_bytes(py: Python<'_>, fd: RawFd, len: usize) -> io::Result<Bound<'_, PyBytes>> {
    let was_bulk = BULK_FDS.with(|fds| fds.borrow().contains(&fd));
    let data = read_bytes(py, fd, len, was_bulk)?;
    let bulk = data.as_bytes().len() >= BULK_READ;
    if bulk != was_bulk {
        BULK_FDS.with(|fds| {
            let mut fds = fds.borrow_mut();
            if bulk {
                fds.insert(fd)
            } else {
                fds.remove(&fd)
            }
        });
    }
    Ok(data)
}

/// Reads up to `len` (at most [`MAX_READ`]) bytes through the thread's
/// shared buffer into a new `bytes` sized to what arrived; empty at EOF.
/// For small reads, where one copy is cheaper than a large allocation.
pub fn read_copied(py: Python<'_>, fd: RawFd, len: usize) -> io::Result<Bound<'_, PyBytes>> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let len = len.min(buf.len());
        // SAFETY: the thread's buffer is live and at least `len` long.
        let n = unsafe { read_raw(fd, buf.as_mut_ptr(), len)? };
        Ok(PyBytes::new(py, &buf[..n]))
    })
}

/// Reads up to `len` (at most [`MAX_READ`]) bytes onto the end of the
/// bytearray `target`, as `target.extend(read(len))` would, with no `bytes`
/// in between: through the thread's shared buffer, or, when `direct` (a
/// bulk read whose size the socket announced), straight into the grown
/// bytearray. Returns how many bytes were appended; 0 at EOF.
///
/// The caller checks that nothing exports `target`'s buffer (resizing it
/// would fail after the bytes left the socket).
pub fn read_appended(
    target: &Bound<'_, PyByteArray>,
    fd: RawFd,
    len: usize,
    direct: bool,
) -> io::Result<usize> {
    let len = len.min(MAX_READ);
    let old = target.len();
    if direct {
        grow(target, old + len)?;
        // SAFETY: the bytearray was just grown to `old + len` bytes and
        // nothing else runs (the GIL is held) until it is cut back below.
        let read = unsafe { read_raw(fd, target.data().add(old), len) };
        grow(target, old + *read.as_ref().unwrap_or(&0))?;
        return read;
    }
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let len = len.min(buf.len());
        // SAFETY: the thread's buffer is live and at least `len` long.
        let n = unsafe { read_raw(fd, buf.as_mut_ptr(), len)? };
        append(target, &buf[..n])?;
        Ok(n)
    })
}

/// Appends `bytes` to the end of a bytearray.
pub fn append(target: &Bound<'_, PyByteArray>, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let old = target.len();
    grow(target, old + bytes.len())?;
    // SAFETY: the bytearray now holds `old + bytes.len()` bytes; `bytes` is
    // not its storage (a bytearray is not borrowed while it is resized).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), target.data().add(old), bytes.len()) };
    Ok(())
}

/// Sets a bytearray's length (growing with CPython's over-allocation).
fn grow(target: &Bound<'_, PyByteArray>, len: usize) -> io::Result<()> {
    // SAFETY: `target` is a live bytearray; a failure sets a Python error,
    // taken here.
    if unsafe { ffi::PyByteArray_Resize(target.as_ptr(), len as ffi::Py_ssize_t) } < 0 {
        return Err(io::Error::other(PyErr::fetch(target.py())));
    }
    Ok(())
}

/// `recvfrom(2)` of one datagram of at most [`MAX_READ`] bytes through the
/// thread's shared buffer: the datagram as a `bytes` and who sent it.
pub fn recvfrom_copied(py: Python<'_>, fd: RawFd) -> io::Result<(Bound<'_, PyBytes>, SockAddr)> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut from = SockAddr::empty();
        // SAFETY: the buffer and the address storage are live for the call,
        // and their lengths are what is passed.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from.storage as *mut libc::sockaddr_storage).cast(),
                &mut from.len,
            )
        };
        let n = sys::check(n)? as usize;
        Ok((PyBytes::new(py, &buf[..n]), from))
    })
}

/// `sendto(2)` of one datagram, without SIGPIPE.
pub fn sendto(fd: RawFd, data: &[u8], to: &SockAddr) -> io::Result<usize> {
    // SAFETY: `data` and the address are live for the call.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            sys::SEND_FLAGS,
            (&to.storage as *const libc::sockaddr_storage).cast(),
            to.len,
        )
    };
    sys::check(n).map(|n| n as usize)
}

/// Accepts a connection on the listening socket `fd`: the new socket,
/// close-on-exec from the start, and the peer's address. It is non-blocking
/// too, except on macOS (no `accept4`), where the socket object the caller
/// makes of it must be made non-blocking anyway, for its timeout.
pub fn accept(fd: RawFd) -> io::Result<(OwnedFd, SockAddr)> {
    let mut peer = SockAddr::empty();
    let addr = (&mut peer.storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: `peer` has room for any address and says how much.
    #[cfg(not(target_vendor = "apple"))]
    let conn = unsafe {
        libc::accept4(
            fd,
            addr,
            &mut peer.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: as above; macOS has no accept4.
    #[cfg(target_vendor = "apple")]
    let conn = unsafe { libc::accept(fd, addr, &mut peer.len) };
    let conn = sys::check(conn)?;
    // SAFETY: accept returned a new fd that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    #[cfg(target_vendor = "apple")]
    sys::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(&conn))?;
    Ok((conn, peer))
}

/// The address the socket `fd` is bound to.
pub fn sockname(fd: RawFd) -> io::Result<SockAddr> {
    let mut addr = SockAddr::empty();
    // SAFETY: `addr` has room for any address and says how much.
    sys::check(unsafe {
        libc::getsockname(
            fd,
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
    })?;
    Ok(addr)
}

/// Sets TCP_NODELAY on the stream socket `fd`.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let on: c_int = 1;
    // SAFETY: passes a live c_int of the size given.
    sys::check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}
