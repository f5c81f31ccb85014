//! A TCP echo load generator: `conns` connections, each sending a `size`-byte
//! message and waiting for all of it to come back, in a loop, for `seconds`.
//! One thread, non-blocking sockets, level-triggered epoll: one read per
//! readiness report and one write per message (write interest only while a
//! message is partly sent), so a request costs it two system calls and the
//! generator keeps up at a thousand connections. Prints one JSON line.
//!
//!     oxloop-loadgen PORT CONNS SIZE SECONDS [churn]
//!
//! With `churn`, each request has a connection of its own: once its echo is
//! back the connection is closed and the next request connects anew (its
//! latency counts the connect), so the server accepts and closes one
//! connection per request.

use oxloop_loadgen::{raise_fd_limit, Epoll, NO_EVENT};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

struct Conn {
    stream: TcpStream,
    sent: usize,
    received: usize,
    started: Instant,
}

/// Writes what the socket takes of the rest of the message; returns whether
/// it is all sent.
fn send_rest(c: &mut Conn, message: &[u8]) -> io::Result<bool> {
    while c.sent < message.len() {
        match c.stream.write(&message[c.sent..]) {
            Ok(k) => c.sent += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends the rest of connection `i`'s message, watching for writability
/// while some of it is left.
fn send(epoll: &Epoll, i: usize, c: &mut Conn, message: &[u8]) -> io::Result<()> {
    let was_done = c.sent == 0 || c.sent >= message.len();
    let done = send_rest(c, message)?;
    if done != was_done {
        let events = libc::EPOLLIN | if done { 0 } else { libc::EPOLLOUT };
        epoll.ctl(libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), events, i as u64)?;
    }
    Ok(())
}

/// A new connection to the server, registered as connection `i`.
fn connect(epoll: &Epoll, port: u16, i: usize) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        stream.as_raw_fd(),
        libc::EPOLLIN,
        i as u64,
    )?;
    Ok(stream)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (port, conns, size, seconds, churn) = match &args[..] {
        [_, port, conns, size, seconds] => (port, conns, size, seconds, false),
        [_, port, conns, size, seconds, mode] if mode == "churn" => {
            (port, conns, size, seconds, true)
        }
        _ => {
            eprintln!("usage: oxloop-loadgen PORT CONNS SIZE SECONDS [churn]");
            std::process::exit(2);
        }
    };
    let port: u16 = port.parse().expect("port");
    let nconns: usize = conns.parse().expect("conns");
    let size: usize = size.parse().expect("size");
    let duration = Duration::from_secs_f64(seconds.parse().expect("seconds"));
    let message = vec![b'x'; size];
    let mut buf = vec![0u8; 1 << 20];
    raise_fd_limit()?;

    let epoll = Epoll::new()?;
    let mut conns = Vec::with_capacity(nconns);
    for i in 0..nconns {
        conns.push(Conn {
            stream: connect(&epoll, port, i)?,
            sent: 0,
            received: 0,
            started: Instant::now(),
        });
    }
    for (i, c) in conns.iter_mut().enumerate() {
        c.started = Instant::now();
        send(&epoll, i, c, &message)?;
    }

    let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut events = vec![NO_EVENT; 1024];
    let start = Instant::now();
    let deadline = start + duration;
    let mut requests: u64 = 0;
    while Instant::now() < deadline {
        let n = epoll.wait(&mut events, 100)?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let c = &mut conns[i];
            if ev.events & libc::EPOLLOUT as u32 != 0 {
                send(&epoll, i, c, &message)?;
            }
            if ev.events & libc::EPOLLIN as u32 == 0 {
                continue;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed",
                    ))
                }
                Ok(k) => c.received += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if c.received >= size {
                requests += 1;
                latencies_us.push(c.started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                c.received -= size;
                c.sent = 0;
                c.started = Instant::now();
                if churn {
                    // The old connection closes as it is replaced.
                    c.stream = connect(&epoll, port, i)?;
                }
                send(&epoll, i, c, &message)?;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\": {requests}, \"seconds\": {elapsed:.3}, \"p50_us\": {}, \"p99_us\": {}}}",
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
