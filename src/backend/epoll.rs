//! The native Linux backend: level-triggered epoll, with one-shot
//! registrations for the waits that ask for them ([`Interest::oneshot`]).

use super::waker::Waker;
use super::{timeout_ms, Backend, Event, Interest};
use crate::sys;
use rustc_hash::{FxHashMap, FxHashSet};
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
    /// Watched one-shot fds: the events they are armed with, and whether
    /// they were reported (so the kernel disarmed them) since.
    armed: FxHashMap<RawFd, (u32, bool)>,
    /// The one-shot fds reported since the last wait.
    fired: Vec<RawFd>,
    /// One-shot fds nobody watches any more, left registered (disarmed, or
    /// armed for at most one report) so that the next wait only re-arms them.
    parked: FxHashSet<RawFd>,
    /// The last wait reported a single fd.
    lone: bool,
}

impl Epoll {
    /// Creates the epoll fd and registers `waker` in it.
    pub fn new(waker: Arc<Waker>) -> io::Result<Self> {
        // SAFETY: no memory arguments; the result is checked.
        let fd = sys::check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let mut this = Self {
            // SAFETY: `fd` was just created and is owned by nobody else.
            epfd: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            waker,
            buf: Vec::with_capacity(MAX_EVENTS),
            armed: FxHashMap::default(),
            fired: Vec::new(),
            parked: FxHashSet::default(),
            lone: false,
        };
        let wfd = this.waker.fd();
        this.ctl(libc::EPOLL_CTL_ADD, wfd, libc::EPOLLIN as u32)?;
        Ok(this)
    }

    /// The epoll fd, for a backend that waits on it (io_uring's); None once
    /// closed.
    pub fn fd(&self) -> Option<RawFd> {
        self.epfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn ctl(&mut self, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
        let epfd = self.epfd.as_ref().ok_or_else(closed)?.as_raw_fd();
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a live epoll_event for the duration of the call.
        sys::check(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
    }

    /// Arms again the one-shot fds that were reported and are still watched
    /// (their watcher found nothing to do and waits on); done by every wait,
    /// and by a backend that waits on the epoll fd before it does.
    pub(super) fn rearm(&mut self) -> io::Result<()> {
        while let Some(fd) = self.fired.pop() {
            let Some((events, fired)) = self.armed.get_mut(&fd) else {
                continue;
            };
            let events = *events;
            if std::mem::take(fired) {
                match self.ctl(libc::EPOLL_CTL_MOD, fd, events) {
                    // Closed while watched: nothing would report it either way.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EBADF)) => {}
                    r => r?,
                }
            }
        }
        Ok(())
    }
}

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Backend for Epoll {
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()> {
        let errno = |e: &io::Error| e.raw_os_error().unwrap_or(0);
        if new.is_empty() {
            // Parking pays off when the loop waits on several fds in turn
            // (sock_* ping-pong between two sockets: +18 % on TCP, +24 % on
            // a socketpair). A loop serving a single peer (the last wait
            // reported one fd, and no other one-shot fd is watched) removes
            // the fd instead: a socket left registered made its next send()
            // cost ~5 µs more on loopback (sock_* echo at concurrency 1),
            // more than the epoll_ctl saved.
            if self.armed.remove(&fd).is_some() {
                let alone = self.lone && self.armed.is_empty();
                if !alone {
                    self.parked.insert(fd);
                    return Ok(());
                }
            }
            // The fd may already be closed, which removed it from epoll.
            return match self.ctl(libc::EPOLL_CTL_DEL, fd, 0) {
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::EBADF) => Ok(()),
                r => r,
            };
        }
        let registered = !old.is_empty() || self.parked.remove(&fd);
        let mut events = new.poll_events();
        if new.oneshot {
            events |= libc::EPOLLONESHOT as u32;
            self.armed.insert(fd, (events, false));
        } else {
            self.armed.remove(&fd);
        }
        let (first, second) = if !registered {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
        } else {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
        };
        // The fd may have been closed and reopened behind the loop's back:
        // epoll then knows it under the other state than the loop does.
        match self.ctl(first, fd, events) {
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::EEXIST) => {
                self.ctl(second, fd, events)
            }
            r => r,
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        let epfd = self.epfd.as_ref().ok_or_else(closed)?.as_raw_fd();
        self.rearm()?;
        self.buf.clear();
        // SAFETY: the buffer has room for MAX_EVENTS entries; the kernel
        // initialises the first `n` of them, and only those are read.
        let n = sys::check(unsafe {
            libc::epoll_wait(
                epfd,
                self.buf.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms(timeout),
            )
        })?;
        // SAFETY: see above: `n` entries were written by the kernel.
        unsafe { self.buf.set_len(n as usize) };
        self.lone = n == 1;
        let wfd = self.waker.fd();
        for ev in &self.buf {
            let fd = ev.u64 as RawFd;
            if fd == wfd {
                self.waker.drain();
                continue;
            }
            if let Some((_, fired)) = self.armed.get_mut(&fd) {
                if !std::mem::replace(fired, true) {
                    self.fired.push(fd);
                }
            }
            events.push(Event::from_revents(fd, ev.events));
        }
        Ok(())
    }

    fn waits_detached(&self) -> bool {
        true
    }

    fn close(&mut self) {
        self.epfd = None;
        self.armed.clear();
        self.fired.clear();
        self.parked.clear();
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
    use crate::testing::watch::{send_byte, NONE, R, R_ONCE, W};

    fn reported(ep: &mut Epoll, timeout: Duration) -> Vec<Event> {
        let mut evs = Vec::new();
        ep.wait(Some(timeout), &mut evs).unwrap();
        evs
    }

    #[test]
    fn reports_readiness_level_triggered() {
        let waker = Arc::new(Waker::new().unwrap());
        let mut ep = Epoll::new(waker.clone()).unwrap();
        let (a, b) = socketpair();
        ep.set_interest(a.as_raw_fd(), NONE, R).unwrap();
        let mut evs = Vec::new();
        ep.wait(Some(Duration::ZERO), &mut evs).unwrap();
        assert!(evs.is_empty());
        assert_eq!(
            // SAFETY: writes one byte from a static buffer.
            unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        for _ in 0..2 {
            evs.clear();
            ep.wait(Some(Duration::from_secs(1)), &mut evs).unwrap();
            assert_eq!(
                evs,
                vec![Event::from_revents(a.as_raw_fd(), libc::POLLIN as u32)]
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
    fn oneshot_fd_still_watched_is_reported_again() {
        let mut ep = Epoll::new(Arc::new(Waker::new().unwrap())).unwrap();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        send_byte(b.as_raw_fd());
        let ready = || Event::from_revents(fd, libc::POLLIN as u32);
        for _ in 0..3 {
            assert_eq!(reported(&mut ep, Duration::from_secs(1)), vec![ready()]);
        }
    }

    #[test]
    fn oneshot_fd_let_go_stays_quiet_and_rearms() {
        let mut ep = Epoll::new(Arc::new(Waker::new().unwrap())).unwrap();
        let (a, b) = socketpair();
        let (c, d) = socketpair();
        let fd = a.as_raw_fd();
        // Two fds reported at once: the loop is not waiting on a lone peer.
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        ep.set_interest(c.as_raw_fd(), NONE, R).unwrap();
        send_byte(b.as_raw_fd());
        send_byte(d.as_raw_fd());
        while reported(&mut ep, Duration::from_secs(1)).len() < 2 {}
        ep.set_interest(fd, R_ONCE, NONE).unwrap();
        assert!(ep.parked.contains(&fd));
        ep.set_interest(c.as_raw_fd(), R, NONE).unwrap();
        assert!(reported(&mut ep, Duration::ZERO).is_empty());
        // Watched again: the parked registration is re-armed, level-triggered
        // data still there is reported.
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        assert_eq!(reported(&mut ep, Duration::from_secs(1)).len(), 1);
        // After a lone report the fd leaves epoll instead of parking.
        ep.set_interest(fd, R_ONCE, NONE).unwrap();
        assert!(!ep.parked.contains(&fd));
        // A plain watcher registers it again.
        ep.set_interest(fd, NONE, R).unwrap();
        assert_eq!(reported(&mut ep, Duration::ZERO).len(), 1);
        assert_eq!(reported(&mut ep, Duration::ZERO).len(), 1);
    }

    #[test]
    fn lone_report_parks_while_another_oneshot_fd_is_watched() {
        let mut ep = Epoll::new(Arc::new(Waker::new().unwrap())).unwrap();
        let (a, b) = socketpair();
        let (c, _d) = socketpair();
        let fd = a.as_raw_fd();
        // Two sockets waited on in turn (a ping-pong): `c` waits while `a`'s
        // wait, reported alone, ends.
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        ep.set_interest(c.as_raw_fd(), NONE, R_ONCE).unwrap();
        send_byte(b.as_raw_fd());
        assert_eq!(reported(&mut ep, Duration::from_secs(1)).len(), 1);
        ep.set_interest(fd, R_ONCE, NONE).unwrap();
        assert!(ep.parked.contains(&fd));
        // `c`'s wait ends with no other one-shot fd watched: it leaves epoll.
        ep.set_interest(c.as_raw_fd(), R_ONCE, NONE).unwrap();
        assert!(!ep.parked.contains(&c.as_raw_fd()));
    }

    #[test]
    fn parked_fd_closed_and_reused_is_registered_afresh() {
        let mut ep = Epoll::new(Arc::new(Waker::new().unwrap())).unwrap();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        ep.set_interest(fd, R_ONCE, NONE).unwrap();
        drop(b);
        // The fd number now names another socket (set explicitly: tests run
        // in parallel, so the next free fd is not predictable); the parked
        // socket's last reference closes, which takes it out of epoll.
        let (c, d) = socketpair();
        // SAFETY: both fds are open and owned here; dup2 atomically makes
        // `fd` (still owned by `a`) refer to `c`'s socket.
        assert_eq!(unsafe { libc::dup2(c.as_raw_fd(), fd) }, fd);
        drop(c);
        ep.set_interest(fd, NONE, R_ONCE).unwrap();
        send_byte(d.as_raw_fd());
        assert_eq!(reported(&mut ep, Duration::from_secs(1)).len(), 1);
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
