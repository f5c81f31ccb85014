//! The native Linux backend: level-triggered epoll.

use super::waker::Waker;
use super::{timeout_ms, Backend, Event, Interest};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// How many reports one `epoll_wait` returns at most; more stay for the next.
const MAX_EVENTS: usize = 1024;

/// An epoll instance with the waker registered in it.
pub struct Epoll {
    epfd: Option<OwnedFd>,
    waker: Arc<Waker>,
    buf: Vec<libc::epoll_event>,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn mask(interest: Interest) -> u32 {
    let mut m = 0;
    if interest.readable {
        m |= libc::EPOLLIN as u32;
    }
    if interest.writable {
        m |= libc::EPOLLOUT as u32;
    }
    m
}

impl Epoll {
    /// Creates the epoll fd and registers `waker` in it.
    pub fn new(waker: Arc<Waker>) -> io::Result<Self> {
        // SAFETY: no memory arguments; the result is checked.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let mut this = Self {
            // SAFETY: `fd` was just created and is owned by nobody else.
            epfd: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            waker,
            buf: Vec::with_capacity(MAX_EVENTS),
        };
        let wfd = this.waker.fd();
        this.ctl(libc::EPOLL_CTL_ADD, wfd, libc::EPOLLIN as u32)?;
        Ok(this)
    }

    fn ctl(&mut self, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
        let epfd = self.epfd.as_ref().ok_or_else(closed)?.as_raw_fd();
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a live epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
    }
}

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Backend for Epoll {
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()> {
        let errno = |e: &io::Error| e.raw_os_error().unwrap_or(0);
        if new.is_empty() {
            // The fd may already be closed, which removed it from epoll.
            return match self.ctl(libc::EPOLL_CTL_DEL, fd, 0) {
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::EBADF) => Ok(()),
                r => r,
            };
        }
        let (first, second) = if old.is_empty() {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
        } else {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
        };
        // The fd may have been closed and reopened behind the loop's back:
        // epoll then knows it under the other state than the loop does.
        match self.ctl(first, fd, mask(new)) {
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::EEXIST) => {
                self.ctl(second, fd, mask(new))
            }
            r => r,
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        let epfd = self.epfd.as_ref().ok_or_else(closed)?.as_raw_fd();
        self.buf.clear();
        // SAFETY: the buffer has room for MAX_EVENTS entries; the kernel
        // initialises the first `n` of them, and only those are read.
        let n = check(unsafe {
            libc::epoll_wait(
                epfd,
                self.buf.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms(timeout),
            )
        })?;
        // SAFETY: see above: `n` entries were written by the kernel.
        unsafe { self.buf.set_len(n as usize) };
        let wfd = self.waker.fd();
        for ev in &self.buf {
            let fd = ev.u64 as RawFd;
            if fd == wfd {
                self.waker.drain();
                continue;
            }
            // Errors and hang-ups wake both directions, as `selectors` does.
            let bits = ev.events;
            events.push(Event {
                fd,
                readable: bits & !(libc::EPOLLOUT as u32) != 0,
                writable: bits & !(libc::EPOLLIN as u32) != 0,
            });
        }
        Ok(())
    }

    fn waits_detached(&self) -> bool {
        true
    }

    fn close(&mut self) {
        self.epfd = None;
    }

    fn reopen(&mut self, waker: Arc<Waker>) -> io::Result<bool> {
        // Dropping the old instance closes this process's copy of its fd;
        // the parent's registrations stay as they are.
        *self = Epoll::new(waker)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::socketpair;

    const R: Interest = Interest {
        readable: true,
        writable: false,
    };
    const W: Interest = Interest {
        readable: false,
        writable: true,
    };
    const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };

    #[test]
    fn reports_readiness_level_triggered() {
        let waker = Arc::new(Waker::new().unwrap());
        let mut ep = Epoll::new(waker.clone()).unwrap();
        let (a, b) = socketpair();
        ep.set_interest(a.as_raw_fd(), NONE, R).unwrap();
        let mut evs = Vec::new();
        ep.wait(Some(Duration::ZERO), &mut evs).unwrap();
        assert!(evs.is_empty());
        // SAFETY: writes one byte from a static buffer.
        assert_eq!(
            unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        for _ in 0..2 {
            evs.clear();
            ep.wait(Some(Duration::from_secs(1)), &mut evs).unwrap();
            assert_eq!(
                evs,
                vec![Event {
                    fd: a.as_raw_fd(),
                    readable: true,
                    writable: false
                }]
            );
        }
        ep.set_interest(a.as_raw_fd(), R, W).unwrap();
        evs.clear();
        ep.wait(Some(Duration::ZERO), &mut evs).unwrap();
        assert_eq!(evs.len(), 1);
        assert!(evs[0].writable);
        ep.set_interest(a.as_raw_fd(), W, NONE).unwrap();
        evs.clear();
        ep.wait(Some(Duration::ZERO), &mut evs).unwrap();
        assert!(evs.is_empty());
    }

    #[test]
    fn waker_ends_wait_without_an_event() {
        let waker = Arc::new(Waker::new().unwrap());
        let mut ep = Epoll::new(waker.clone()).unwrap();
        waker.wake();
        let mut evs = Vec::new();
        ep.wait(Some(Duration::from_secs(5)), &mut evs).unwrap();
        assert!(evs.is_empty());
    }

    #[test]
    fn regular_files_are_refused() {
        let waker = Arc::new(Waker::new().unwrap());
        let mut ep = Epoll::new(waker).unwrap();
        let f = std::fs::File::open("Cargo.toml").unwrap();
        let err = ep.set_interest(f.as_raw_fd(), NONE, R).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }
}
