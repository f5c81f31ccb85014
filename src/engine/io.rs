//! The engine's side of the OS: the backend it waits on, the registry of
//! what watches each fd (kept in step with the backend's interest), the
//! waker, and a backend of its own for a forked child.

use super::fork;
use super::gil_cell::GilCell;
use super::handle;
use super::ready::{Ready, ReadyQueue};
use super::registry::{fileobj_to_fd, IoTarget, Registration, Registry, Side, Watcher};
use crate::backend::waker::Waker;
use crate::backend::{self, Backend, Event, Interest, Received};
use crate::errors::closed_error;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// An fd's interest and its asyncio handles (reader, writer): what a
/// selector key tells.
pub type HandleKey = (Interest, Option<Py<PyAny>>, Option<Py<PyAny>>);

/// The backend, the registry and the waker of one loop.
pub struct Io {
    /// Behind a mutex: it is used with the interpreter detached (the wait).
    backend: Mutex<Option<Box<dyn Backend>>>,
    registry: GilCell<Registry>,
    /// What makes a blocked wait return (`call_soon_threadsafe`).
    waker: GilCell<Option<Arc<Waker>>>,
    /// The backend may wait with the interpreter detached (see `Backend`).
    waits_detached: AtomicBool,
    /// The backend receives for the readers that ask (see `Backend`).
    receives: AtomicBool,
    /// The backend sends for transports (see `Backend::sends`).
    sends: AtomicBool,
    /// The transport of each fd with a send queued in the backend, told
    /// its result; held, with the bytes it keeps, until then.
    senders: GilCell<FxHashMap<RawFd, Arc<dyn IoTarget>>>,
    /// The sends asked for since the last wait (see [`Io::send`]).
    pass_sends: AtomicU32,
    /// The fork generation the backend belongs to (see `fork`).
    forks: AtomicU64,
}

impl Io {
    /// No backend yet ([`Io::open`] makes one).
    pub fn new() -> Self {
        Self {
            backend: Mutex::new(None),
            registry: GilCell::new(Registry::default()),
            waker: GilCell::new(None),
            waits_detached: AtomicBool::new(false),
            receives: AtomicBool::new(false),
            sends: AtomicBool::new(false),
            senders: GilCell::new(FxHashMap::default()),
            pass_sends: AtomicU32::new(0),
            forks: AtomicU64::new(fork::generation()),
        }
    }

    /// Opens the backend ([`backend::open`]), closing one opened before.
    pub fn open(&self, kind: backend::Kind) -> PyResult<()> {
        let waker = Arc::new(Waker::new()?);
        let backend = backend::open(kind, waker.clone())?;
        self.waits_detached.store(backend.waits_detached(), Relaxed);
        self.receives.store(backend.receives(), Relaxed);
        self.sends.store(backend.sends(), Relaxed);
        self.forks.store(fork::generation(), Relaxed);
        let old = self.backend.lock().replace(backend);
        if let Some(mut old) = old {
            old.close();
        }
        *self.waker.lock() = Some(waker);
        Ok(())
    }

    /// Whether the backend receives for the readers that ask
    /// ([`Interest::receive`]): they then never read by system call, as the
    /// backend reads for them.
    pub fn receives(&self) -> bool {
        self.receives.load(Relaxed)
    }

    /// Whether the backend sends for transports ([`Io::send`]).
    pub fn sends(&self) -> bool {
        self.sends.load(Relaxed)
    }

    /// Queues a send of the `len` bytes at `ptr` on `fd` in the backend
    /// ([`Backend::send`]), whose result goes to `target`
    /// ([`IoTarget::sent`]); false when the caller is to send by system
    /// call: for the first send of a pass (one send gains nothing from
    /// the wait, whose result would cost the loop a pass more: 1.03-1.07x
    /// the epoll loop's CPU per request at one connection, against
    /// 0.94-0.96x by system call), or when it cannot be queued now (the
    /// backend is busy in another thread's wait, or closed).
    ///
    /// # Safety
    /// As [`Backend::send`]: the bytes stay alive and unchanged until
    /// `target` is told the result or [`Io::stop_send`] returned.
    pub unsafe fn send(
        &self,
        fd: RawFd,
        target: Arc<dyn IoTarget>,
        ptr: *const u8,
        len: usize,
    ) -> PyResult<bool> {
        if self.pass_sends.fetch_add(1, Relaxed) == 0 {
            return Ok(false);
        }
        self.check_fork()?;
        let Some(mut backend) = self.backend.try_lock() else {
            return Ok(false);
        };
        let Some(backend) = backend.as_mut() else {
            return Ok(false);
        };
        // SAFETY: the caller keeps the bytes as `Backend::send` asks.
        if unsafe { backend.send(fd, ptr, len) }.is_err() {
            return Ok(false);
        }
        let previous = self.senders.lock().insert(fd, target);
        drop(previous);
        Ok(true)
    }

    /// Makes the queued sends now (their results come with the next wait).
    pub fn flush_sends(&self) -> PyResult<()> {
        self.with_backend(|b| b.flush_sends())
    }

    /// Makes `fd`'s queued send now and forgets its sender, which may then
    /// drop its bytes; its result is not reported.
    pub fn stop_send(&self, fd: RawFd) -> PyResult<()> {
        let sender = self.senders.lock().remove(&fd);
        if sender.is_some() {
            self.flush_sends()?;
        }
        drop(sender);
        Ok(())
    }

    /// Closes the backend (which makes the sends queued) and the waker.
    pub fn close(&self) {
        let backend = self.backend.lock().take();
        if let Some(mut backend) = backend {
            backend.close();
        }
        let senders = std::mem::take(&mut *self.senders.lock());
        drop(senders);
        drop(self.waker.lock().take());
    }

    /// Every registration, taken out of the registry unless it is borrowed
    /// now (for a closing or dropped loop).
    pub fn take_registrations(&self) -> Vec<Registration> {
        self.registry
            .try_lock()
            .map(|mut r| r.take_all())
            .unwrap_or_default()
    }

    /// The registry, for the garbage collector.
    pub fn registry(&self) -> &GilCell<Registry> {
        &self.registry
    }

    /// Sets (or, with `None`, clears) what watches one side of `fd`, telling
    /// the backend when the interest changes; returns the previous watcher.
    pub fn set_watcher(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        watcher: Option<Watcher>,
    ) -> PyResult<Option<Watcher>> {
        if watcher.is_some() {
            self.purge_stale(py, fd, None)?;
        }
        self.change(fd, side, watcher, None)
    }

    /// `add_reader`/`add_writer`: `handle` watches one side of `fd`, which
    /// `fileobj` named; returns the previous watcher.
    pub fn add_handle(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        handle: Py<PyAny>,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Watcher>> {
        self.purge_stale(py, fd, Some(fileobj))?;
        self.change(fd, side, Some(Watcher::Handle(handle)), Some(fileobj))
    }

    /// Moves one side of `fd` to `watcher`, telling the backend when the
    /// interest changes.
    fn change(
        &self,
        fd: RawFd,
        side: Side,
        watcher: Option<Watcher>,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Watcher>> {
        let (old, new) = {
            let reg = self.registry.lock();
            (
                reg.interest(fd),
                reg.interest_with(fd, side, watcher.as_ref()),
            )
        };
        let mut received = Vec::new();
        if new != old {
            self.with_backend(|b| {
                b.set_interest(fd, old, new)?;
                // Whatever the watcher said before: a receive the backend
                // ended has its bytes taken here, or they are lost.
                if !new.receive {
                    b.take_received(fd, &mut received);
                }
                Ok(())
            })?;
        }
        if !received.is_empty() {
            self.hand_over(fd, received);
        }
        let (previous, fileobj) = self.registry.lock().set(fd, side, watcher, fileobj);
        drop(fileobj);
        Ok(previous)
    }

    /// Gives what was received for `fd`'s reader (a native core) to it; a
    /// stopped reader keeps it for when it reads again.
    fn hand_over(&self, fd: RawFd, received: Vec<Received>) {
        if let Some(reader) = self.native_reader(fd) {
            // Every change is made attached: this only borrows the token.
            Python::attach(|py| {
                for r in received {
                    reader.received(py, r);
                }
            });
        }
    }

    /// The reader of `fd`, if it is a native core.
    pub fn native_reader(&self, fd: RawFd) -> Option<Arc<dyn IoTarget>> {
        match self.registry.lock().watcher(fd, Side::Read)? {
            Watcher::Native(t) => Some(t.clone()),
            Watcher::Handle(_) => None,
        }
    }

    /// An fd number the loop no longer owns never keeps a watcher: when the
    /// object a registration of `fd` was made with (other than `fileobj`)
    /// no longer has that fd (it was closed, and the number reused), the
    /// registration ends (the backend told first) and its handles are
    /// cancelled, so the new watcher is registered afresh.
    fn purge_stale(
        &self,
        py: Python<'_>,
        fd: RawFd,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let owner = {
            let reg = self.registry.lock();
            let owner = reg.get(fd).and_then(|r| r.fileobj.as_ref());
            match owner {
                Some(o) if !fileobj.is_some_and(|f| f.is(o)) => o.clone_ref(py),
                _ => return Ok(()),
            }
        };
        match fileobj_to_fd(owner.bind(py)) {
            Ok(Some(owned)) if owned == fd => return Ok(()),
            Err(e) if !e.is_instance_of::<PyValueError>(py) => return Err(e),
            _ => {}
        }
        let interest = self.registry.lock().interest(fd);
        self.with_backend(|b| b.set_interest(fd, interest, Interest::default()))?;
        let Some(gone) = self.registry.lock().remove(fd) else {
            return Ok(());
        };
        let mut cancelled = Ok(());
        for w in [gone.reader, gone.writer].into_iter().flatten() {
            if let Watcher::Handle(h) = w {
                let r = h.bind(py).call_method0(intern!(py, "cancel"));
                cancelled = cancelled.and(r.map(drop));
            }
        }
        cancelled
    }

    /// The fd `fileobj` names, as asyncio's selector looks it up: its
    /// `fileno()`, or, once that fails (a closed socket's is -1), the fd
    /// whose registration was made with this very object. `None`: an fd
    /// beyond any the OS hands out.
    pub fn lookup(&self, fileobj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
        match fileobj_to_fd(fileobj) {
            Err(e) if e.is_instance_of::<PyValueError>(fileobj.py()) => {
                match self.registry.lock().fd_of(fileobj) {
                    Some(fd) => Ok(Some(fd)),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// True when `core`'s native watcher watches one side of `fd`.
    pub fn is_watched_by(&self, fd: RawFd, side: Side, core: &Bound<'_, PyAny>) -> bool {
        self.registry
            .lock()
            .watcher(fd, side)
            .is_some_and(|w| w.is_core(core))
    }

    /// Clears one side of `fd` if `core` still watches it: a finished wait
    /// must not remove the wait that replaced it.
    pub fn clear_watcher_of(
        &self,
        fd: RawFd,
        side: Side,
        core: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Watcher>> {
        if self.is_watched_by(fd, side, core) {
            self.change(fd, side, None, None)
        } else {
            Ok(None)
        }
    }

    /// The interest in `fd` and its asyncio handles, if it is registered.
    pub fn handles(&self, py: Python<'_>, fd: RawFd) -> Option<HandleKey> {
        let reg = self.registry.lock();
        let r = reg.get(fd)?;
        let handle = |w: &Option<Watcher>| {
            w.as_ref()
                .and_then(Watcher::handle)
                .map(|h| h.clone_ref(py))
        };
        Some((r.interest(), handle(&r.reader), handle(&r.writer)))
    }

    /// Every watched fd.
    pub fn watched_fds(&self) -> Vec<RawFd> {
        self.registry.lock().fds().collect()
    }

    /// Makes a blocked wait return (from any attached thread).
    pub fn wake(&self) {
        if self.forks.load(Relaxed) != fork::generation() {
            return; // the waker is the parent's until `check_fork` runs
        }
        if let Some(w) = self.waker.lock().as_ref() {
            w.wake();
        }
    }

    fn with_backend<T>(&self, f: impl FnOnce(&mut dyn Backend) -> io::Result<T>) -> PyResult<T> {
        self.check_fork()?;
        let mut backend = self.backend.lock();
        let backend = backend.as_mut().ok_or_else(closed_error)?;
        f(backend.as_mut()).map_err(PyErr::from)
    }

    /// In a forked child, before the backend is used: a backend of its own
    /// (the parent's loop stays undisturbed), watching what this loop
    /// watched, and a waker of its own.
    fn check_fork(&self) -> PyResult<()> {
        let generation = fork::generation();
        // A plain load first: no atomic write in every iteration.
        if self.forks.load(Relaxed) == generation
            || self.forks.swap(generation, Relaxed) == generation
        {
            return Ok(());
        }
        let watched: Vec<_> = {
            let reg = self.registry.lock();
            reg.fds().map(|fd| (fd, reg.interest(fd))).collect()
        };
        let waker = Arc::new(Waker::new()?);
        let mut backend = self.backend.lock();
        let Some(backend) = backend.as_mut() else {
            return Ok(());
        };
        if backend.reopen(waker.clone())? {
            // The parent's sends are the parent's to make.
            let senders = std::mem::take(&mut *self.senders.lock());
            drop(senders);
            for (fd, interest) in watched {
                backend.set_interest(fd, Interest::default(), interest)?;
            }
            *self.waker.lock() = Some(waker);
        }
        Ok(())
    }

    /// Waits for I/O up to `timeout`, the interpreter detached when the
    /// backend allows it and the wait may block; the reports land in `events`.
    pub fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        events: &mut Vec<Event>,
    ) -> PyResult<()> {
        self.check_fork()?;
        self.pass_sends.store(0, Relaxed);
        let mut wait = || {
            let mut guard = self.backend.lock();
            let backend = guard
                .as_mut()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
            if let Some(unlocked) = backend.unlocked_wait() {
                drop(guard);
                return unlocked(timeout, events);
            }
            backend.wait(timeout, events)
        };
        let r = if self.waits_detached.load(Relaxed) && timeout != Some(Duration::ZERO) {
            py.detach(wait)
        } else {
            wait()
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => py.check_signals(),
            Err(e) => Err(e.into()),
        }
    }

    /// Queues the watchers of the fds `events` reports, due since `due`; returns the sides
    /// whose `add_reader`/`add_writer` handle was found cancelled, for the
    /// caller to remove.
    pub fn dispatch(
        &self,
        py: Python<'_>,
        events: &mut [Event],
        ready: &mut ReadyQueue,
        due: u64,
    ) -> Vec<(RawFd, Side)> {
        let reg = self.registry.lock();
        let mut stale = Vec::new();
        for ev in events {
            if let Some(result) = ev.sent {
                let sender = self.senders.lock().remove(&ev.fd);
                if let Some(t) = sender.filter(|t| t.sent(py, result)) {
                    ready.push(Ready::Io(t, Side::Write), due);
                }
                continue;
            }
            let Some(r) = reg.get(ev.fd) else {
                continue;
            };
            if let Some(received) = ev.received.take() {
                // Handed to the reader in order; one read queued for what
                // it had not been waiting to read.
                if let Some(Watcher::Native(t)) = &r.reader {
                    if t.received(py, received) {
                        ready.push(Ready::Io(t.clone(), Side::Read), due);
                    }
                }
                continue;
            }
            for (fired, side, w) in [
                (ev.readable, Side::Read, &r.reader),
                (ev.writable, Side::Write, &r.writer),
            ] {
                match (fired, w) {
                    (true, Some(Watcher::Handle(h))) if handle::is_cancelled(h.bind(py)) => {
                        stale.push((ev.fd, side));
                    }
                    (true, Some(w)) => ready.push(Ready::from_watcher(w.clone_ref(py), side), due),
                    _ => {}
                }
            }
        }
        stale
    }
}
