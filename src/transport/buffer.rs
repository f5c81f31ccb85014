//! The write buffer of a stream transport: what `write()` could not send at
//! once, flushed with one gathering write per write-ready event.

use crate::engine::Traverse;
use crate::net::FdKind;
use crate::sys;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::PyTraverseError;
use std::collections::VecDeque;
use std::os::fd::RawFd;

/// How many chunks one `writev` sends at most.
const MAX_IOV: usize = 1024;

/// Bytes waiting to be sent: a `bytes` object is kept by reference (it
/// cannot change); anything mutable is copied.
pub enum Chunk {
    /// An immutable `bytes` and how much of it was sent.
    Bytes(Py<PyBytes>, usize),
    /// A private copy and how much of it was sent.
    Owned(Vec<u8>, usize),
}

impl Chunk {
    /// What is left of a write once `sent` bytes went: the `bytes` object
    /// itself when the write was one (`whole`), else a copy of the rest.
    pub fn unsent(whole: Option<&Bound<'_, PyBytes>>, bytes: &[u8], sent: usize) -> Self {
        match whole {
            Some(b) => Chunk::Bytes(b.clone().unbind(), sent),
            None => Chunk::Owned(bytes[sent..].to_vec(), 0),
        }
    }

    /// What is left to send. Its address is the `bytes` object's or the
    /// copy's heap block, which moving the chunk does not move.
    pub fn rest<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            Chunk::Bytes(b, off) => &b.as_bytes(py)[*off..],
            Chunk::Owned(v, off) => &v[*off..],
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Bytes(_, off) | Chunk::Owned(_, off) => *off += n,
        }
    }
}

impl Traverse for WriteBuffer {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.chunks.iter().try_for_each(|c| match c {
            Chunk::Bytes(b, _) => b.traverse(visit),
            Chunk::Owned(..) => Ok(()),
        })
    }
}

/// The queue of chunks and their total size.
#[derive(Default)]
pub struct WriteBuffer {
    chunks: VecDeque<Chunk>,
    size: usize,
}

impl WriteBuffer {
    /// Bytes waiting.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queues a chunk; an empty one is handed back, to be released once the
    /// buffer is no longer borrowed.
    #[must_use]
    pub fn push(&mut self, py: Python<'_>, chunk: Chunk) -> Option<Chunk> {
        let len = chunk.rest(py).len();
        if len == 0 {
            return Some(chunk);
        }
        self.size += len;
        self.chunks.push_back(chunk);
        None
    }

    /// Drops everything, returning the chunks to release outside any lock.
    pub fn clear(&mut self) -> VecDeque<Chunk> {
        self.size = 0;
        std::mem::take(&mut self.chunks)
    }

    /// Sends as much as `fd` takes in one `sendmsg` (sockets) or `writev`;
    /// returns the bytes sent and the chunks fully sent (to release outside
    /// any lock).
    pub fn flush(
        &mut self,
        py: Python<'_>,
        fd: RawFd,
        kind: FdKind,
    ) -> std::io::Result<(usize, Vec<Chunk>)> {
        let iov: Vec<libc::iovec> = self
            .chunks
            .iter()
            .take(MAX_IOV)
            .scan(sys::MAX_IO, |room, c| {
                if *room == 0 {
                    return None;
                }
                let rest = c.rest(py);
                let len = rest.len().min(*room);
                *room -= len;
                Some(libc::iovec {
                    iov_base: rest.as_ptr() as *mut _,
                    iov_len: len,
                })
            })
            .collect();
        let msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: iov.as_ptr() as *mut _,
            msg_iovlen: iov.len() as _,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        // SAFETY: every iovec points into a chunk this buffer keeps alive
        // (bytes objects are immutable, owned copies are not touched) for the
        // duration of the call.
        let n = unsafe {
            match kind {
                FdKind::Socket => libc::sendmsg(fd, &msg, sys::SEND_FLAGS),
                FdKind::Pipe => libc::writev(fd, iov.as_ptr(), iov.len() as _),
            }
        };
        let n = sys::check(n)? as usize;
        Ok((n, self.consume(py, n)))
    }

    /// Marks `n` bytes as sent; returns the chunks fully sent (to release
    /// outside any lock).
    pub fn consume(&mut self, py: Python<'_>, mut n: usize) -> Vec<Chunk> {
        self.size -= n;
        let mut done = Vec::new();
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let len = front.rest(py).len();
            if len <= n {
                n -= len;
                done.extend(self.chunks.pop_front());
            } else {
                front.advance(n);
                n = 0;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::socketpair;
    use std::os::fd::AsRawFd;

    fn drain(fd: RawFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: reads into a live stack buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    #[test]
    fn flush_sends_every_chunk_in_order_and_keeps_the_rest() {
        for kind in [FdKind::Socket, FdKind::Pipe] {
            flush_in_order(kind);
        }
    }

    fn flush_in_order(kind: FdKind) {
        Python::initialize();
        Python::attach(|py| {
            let (a, b) = socketpair();
            let mut wb = WriteBuffer::default();
            let mut expected = Vec::new();
            for i in 0..200u32 {
                let chunk = vec![(i % 251) as u8; 1000 + i as usize];
                expected.extend_from_slice(&chunk[5..]);
                assert!(wb.push(py, Chunk::Owned(chunk, 5)).is_none());
            }
            assert!(wb.push(py, Chunk::Owned(Vec::new(), 0)).is_some());
            assert!(wb
                .push(py, Chunk::Bytes(PyBytes::new(py, b"tail").unbind(), 1))
                .is_none());
            expected.extend_from_slice(b"ail");
            assert_eq!(wb.size(), expected.len());
            let mut received = Vec::new();
            while !wb.is_empty() {
                match wb.flush(py, a.as_raw_fd(), kind) {
                    Ok((n, _done)) => assert!(n > 0),
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
                }
                received.extend(drain(b.as_raw_fd()));
            }
            assert_eq!(wb.size(), 0);
            assert_eq!(received, expected);
        });
    }
}
