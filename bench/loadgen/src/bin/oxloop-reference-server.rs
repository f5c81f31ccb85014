//! The reference TCP echo server: what an echo costs with no Python at all.
//! One thread, epoll (level-triggered), reads of up to 256 KiB echoed back at
//! once, the unsent rest kept until the socket is writable again. bench/echo.py
//! runs it beside the loops as the floor of server CPU per request.
//!
//!     oxloop-reference-server CPU
//!
//! Pins itself to CPU, prints its port, serves until killed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// One client and what it has not been sent back yet.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// Sets what epoll reports for `fd` (`op`: add or modify).
fn watch(epfd: i32, op: i32, fd: i32, events: i32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` is live for the call; the result is checked.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
fn serve(conn: &mut Conn, epfd: i32, buf: &mut [u8], readable: bool) -> io::Result<bool> {
    let fd = conn.stream.as_raw_fd();
    if !conn.pending.is_empty() {
        let pending = std::mem::take(&mut conn.pending);
        conn.pending = write_some(&mut conn.stream, &pending)?;
        if conn.pending.is_empty() {
            watch(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN)?;
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
        watch(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT)?;
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cpu] = &args[..] else {
        eprintln!("usage: oxloop-reference-server CPU");
        std::process::exit(2);
    };
    let cpu: usize = cpu.parse().expect("cpu");
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the
    // result of sched_setaffinity is checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    println!("{}", listener.local_addr()?.port());
    // SAFETY: plain syscall; the result is checked.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let lfd = listener.as_raw_fd();
    watch(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN)?;
    let mut conns: HashMap<i32, Conn> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` is live and holds `len` entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as i32;
            if fd == lfd {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let cfd = stream.as_raw_fd();
                    watch(epfd, libc::EPOLL_CTL_ADD, cfd, libc::EPOLLIN)?;
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
                Some(conn) => serve(conn, epfd, &mut buf, readable).unwrap_or(false),
                None => continue,
            };
            if !alive {
                conns.remove(&fd);
            }
        }
    }
}
