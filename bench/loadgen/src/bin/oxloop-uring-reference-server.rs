//! The io_uring reference TCP echo server: what an echo costs with no Python
//! and completions instead of readiness. One thread, one ring; every client
//! has a receive of up to 256 KiB in flight, echoed back by a send (the
//! unsent rest sent again) before the next receive; all the operations one
//! pass over the completions queues go to the kernel in one `io_uring_enter`.
//! bench/echo.py runs it beside the epoll reference server: the floor an
//! io_uring backend could reach.
//!
//!     oxloop-uring-reference-server CPU
//!
//! Pins itself to CPU, prints its port, serves until killed.

use io_uring::{opcode, squeue, types, IoUring};
use oxloop_loadgen::listen_pinned;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

const BUF: usize = 256 * 1024;
const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// One client: its buffer, how much of it holds a message, how much of that was sent.
struct Conn {
    buf: Vec<u8>,
    len: usize,
    sent: usize,
}

/// The operation's tag in `user_data`: the fd and what was asked.
fn tag(fd: RawFd, op: u64) -> u64 {
    (fd as u64) << 2 | op
}

fn recv(fd: RawFd, c: &mut Conn) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), c.buf.as_mut_ptr(), BUF as u32)
        .build()
        .user_data(tag(fd, RECV))
}

fn send(fd: RawFd, c: &Conn) -> squeue::Entry {
    let rest = &c.buf[c.sent..c.len];
    opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
        .build()
        .user_data(tag(fd, SEND))
}

fn accept(lfd: RawFd) -> squeue::Entry {
    opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT)
}

/// Queues `entry`, making room by submitting what is queued when the ring is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    // SAFETY: every buffer an entry points into belongs to a `Conn` that is
    // only dropped once its operation completed with an error or EOF.
    while unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live int of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of_val(&one) as libc::socklen_t,
        )
    };
}

fn close(conns: &mut HashMap<RawFd, Conn>, fd: RawFd) {
    conns.remove(&fd);
    // SAFETY: the fd was accepted here and nothing refers to it any more.
    unsafe { libc::close(fd) };
}

fn main() -> io::Result<()> {
    let listener = listen_pinned("oxloop-uring-reference-server")?;
    let lfd = listener.as_raw_fd();
    // Completions run when this thread enters the kernel, as a loop's would.
    let mut ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .or_else(|_| IoUring::new(4096))?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    push(&mut ring, accept(lfd))?;
    let mut done = Vec::new();
    loop {
        match ring.submit_and_wait(1) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (data, res) in done.drain(..) {
            let fd = (data >> 2) as RawFd;
            match data & 3 {
                ACCEPT => {
                    if res >= 0 {
                        set_nodelay(res);
                        let mut c = Conn {
                            buf: vec![0; BUF],
                            len: 0,
                            sent: 0,
                        };
                        let entry = recv(res, &mut c);
                        conns.insert(res, c);
                        push(&mut ring, entry)?;
                    }
                    push(&mut ring, accept(lfd))?;
                }
                RECV if res <= 0 => close(&mut conns, fd),
                RECV => {
                    let Some(c) = conns.get_mut(&fd) else {
                        continue;
                    };
                    (c.len, c.sent) = (res as usize, 0);
                    let entry = send(fd, c);
                    push(&mut ring, entry)?;
                }
                _ if res < 0 => close(&mut conns, fd),
                _ => {
                    let Some(c) = conns.get_mut(&fd) else {
                        continue;
                    };
                    c.sent += res as usize;
                    let entry = if c.sent < c.len {
                        send(fd, c)
                    } else {
                        recv(fd, c)
                    };
                    push(&mut ring, entry)?;
                }
            }
        }
    }
}
