//! What the load generator and the reference servers share: a thin epoll
//! and a server's pinned start-up.

use std::io;
use std::net::TcpListener;
use std::os::fd::RawFd;

/// An epoll instance (level- or edge-triggered as the events given say).
pub struct Epoll {
    fd: RawFd,
}

/// A zeroed event buffer entry, for the buffer `Epoll::wait` fills.
pub const NO_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

impl Epoll {
    /// A new close-on-exec epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// `epoll_ctl(op)` for `fd`: report `events`, tagged with `token`.
    pub fn ctl(&self, op: i32, fd: RawFd, events: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` is live for the call; the result is checked.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `events`; returns how
    /// many arrived (none when a signal interrupted the wait).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is live and holds `len` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is this instance's own and closed only here.
        unsafe { libc::close(self.fd) };
    }
}

/// Raises the process's open-file limit to its hard limit (returned): a
/// thousand connections and more need more fds than the usual soft limit
/// of 1024.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit for both calls; results are checked.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) < 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// What a reference server does first: takes the CPU from its one argument
/// (exiting with the usage line otherwise), pins itself to it, raises its
/// fd limit, listens on a free loopback port and prints the port.
pub fn listen_pinned(name: &str) -> io::Result<TcpListener> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cpu] = &args[..] else {
        eprintln!("usage: {name} CPU");
        std::process::exit(2);
    };
    pin_to_cpu(cpu.parse().expect("cpu"))?;
    raise_fd_limit()?;
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    println!("{}", listener.local_addr()?.port());
    Ok(listener)
}

/// Pins the calling process to `cpu`.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the
    // result of sched_setaffinity is checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
