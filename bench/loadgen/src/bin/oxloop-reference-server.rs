//! The reference TCP echo server: what an echo costs with no Python at all.
//! One thread, epoll (level-triggered), reads of up to 256 KiB echoed back at
//! once, the unsent rest kept until the socket is writable again. bench/echo.py
//! runs it beside the loops as the floor of server CPU per request.
//!
//!     oxloop-reference-server CPU
//!
//! Pins itself to CPU, prints its port, serves until killed.

use oxloop_loadgen::{listen_pinned, Epoll, NO_EVENT};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// One client and what it has not been sent back yet.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// Writes what the socket takes; returns what is left.
fn write_some(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<Vec<u8>> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(data.to_vec())
}

/// Handles one event of a client; `Ok(false)` when it is gone.
fn serve(conn: &mut Conn, epoll: &Epoll, buf: &mut [u8], readable: bool) -> io::Result<bool> {
    let fd = conn.stream.as_raw_fd();
    if !conn.pending.is_empty() {
        let pending = std::mem::take(&mut conn.pending);
        conn.pending = write_some(&mut conn.stream, &pending)?;
        if conn.pending.is_empty() {
            epoll.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN, fd as u64)?;
        }
        return Ok(true);
    }
    if !readable {
        return Ok(true);
    }
    let n = match conn.stream.read(buf) {
        Ok(0) => return Ok(false),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
        Err(e) => return Err(e),
    };
    conn.pending = write_some(&mut conn.stream, &buf[..n])?;
    if !conn.pending.is_empty() {
        epoll.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT, fd as u64)?;
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    let listener = listen_pinned("oxloop-reference-server")?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    let lfd = listener.as_raw_fd();
    epoll.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN, lfd as u64)?;
    let mut conns: HashMap<i32, Conn> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![NO_EVENT; 1024];
    loop {
        let n = epoll.wait(&mut events, -1)?;
        for ev in &events[..n] {
            let fd = ev.u64 as i32;
            if fd == lfd {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let cfd = stream.as_raw_fd();
                    epoll.ctl(libc::EPOLL_CTL_ADD, cfd, libc::EPOLLIN, cfd as u64)?;
                    conns.insert(
                        cfd,
                        Conn {
                            stream,
                            pending: Vec::new(),
                        },
                    );
                }
                continue;
            }
            let readable =
                ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            let alive = match conns.get_mut(&fd) {
                Some(conn) => serve(conn, &epoll, &mut buf, readable).unwrap_or(false),
                None => continue,
            };
            if !alive {
                conns.remove(&fd);
            }
        }
    }
}
