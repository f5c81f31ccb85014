//! The engine: ready queue, timer heap, fd watchers and the iteration that
//! drives them — asyncio's `BaseEventLoop._run_once`, in Rust.
//!
//! The Python class `oxloop.Loop` derives from [`Engine`] and adds asyncio's
//! pure-Python orchestration (run_until_complete, executors, exception
//! handler). Locks here are never held while Python code runs: a callback, a
//! finalizer or a user's selector may call back into the loop at any time.

use super::fork;
use super::gil_cell::GilCell;
use super::handle::{self, FreeList};
use super::ready::Ready;
use super::task;
use super::timers::{monotonic, resolution, TimerHeap};
use super::watchers::{fileobj_to_fd, IoTarget, Side, Watcher, Watchers};
use crate::backend::epoll::Epoll;
use crate::backend::pyselector::PySelector;
use crate::backend::waker::Waker;
use crate::backend::{Backend, Event, Interest};
use parking_lot::Mutex;
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::PyTraverseError;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, in seconds.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// Below this many timers, cancelled ones are only dropped from the heap's head.
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// While callbacks keep the ready queue full, how often `run_forever` polls
/// for I/O: a poll that cannot block finds nothing new most of the time, and
/// its system call cost as much as the callbacks of a `sleep(0)` iteration.
const BUSY_POLL_INTERVAL: Duration = Duration::from_micros(50);

/// What the iteration works on, behind one lock.
#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    timers: TimerHeap<Py<PyAny>>,
    cancelled_timers: usize,
    watchers: Watchers,
    free: FreeList,
    /// The handle scheduled last, while it is queued, until the next
    /// `schedule` or iteration checks whether its caller kept it
    /// ([`State::settle_last`]).
    last: Option<Py<PyAny>>,
    /// The buffer the backend's reports land in, kept between iterations.
    events: Vec<Event>,
    /// When the backend was last asked for events (`None`: never).
    polled: Option<Instant>,
    /// What makes a blocked wait return (`call_soon_threadsafe`).
    waker: Option<Arc<Waker>>,
}

impl Drop for State {
    /// A loop dropped without `close()` still lets go of its handles properly.
    fn drop(&mut self) {
        let released = self.take_all();
        if !released.is_empty() {
            Python::attach(|py| release(py, released));
        }
    }
}

impl State {
    /// Once the caller of `call_soon`/`call_later` is done with the handle
    /// it got, a handle only the loop holds leaves the garbage collector's
    /// lists ([`handle::untrack_if_owned`]); one the caller kept stays tracked.
    /// Checked when the next handle is scheduled or the loop iterates.
    fn settle_last(&mut self, py: Python<'_>) {
        if let Some(h) = self.last.take() {
            // Released as a `Bound`: see `fastcall` on dropping a `Py`.
            handle::untrack_if_owned(&h.into_bound(py), 2);
        }
    }

    /// Empties every queue, returning what they held so it can be released
    /// once the lock is gone.
    fn take_all(&mut self) -> Vec<Ready> {
        self.last = None;
        let mut all: Vec<Ready> = self.ready.drain(..).collect();
        all.extend(self.watchers.take_all());
        let handles = self
            .timers
            .take_all()
            .into_iter()
            .chain(self.free.take_all());
        all.extend(handles.map(Ready::Callback));
        self.cancelled_timers = 0;
        all
    }
}

/// The OS side: the backend.
struct Io {
    backend: Box<dyn Backend>,
}

/// The native core of every oxloop event loop.
#[pyclass(subclass, frozen, module = "oxloop._oxloop", name = "Engine")]
pub struct Engine {
    state: GilCell<State>,
    io: Mutex<Option<Io>>,
    closed: AtomicBool,
    stopping: AtomicBool,
    /// The backend may wait with the interpreter detached (see `Backend`).
    waits_detached: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop; 0 when stopped.
    thread_id: AtomicU64,
    /// The fork generation the backend belongs to (see `fork`).
    forks: AtomicU64,
    resolution: f64,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

fn current_thread() -> u64 {
    // SAFETY: plain query of the calling thread's identifier.
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

impl Engine {
    /// `loop.get_debug()`.
    pub fn get_debug(&self) -> bool {
        self.debug.load(Relaxed)
    }

    /// `loop._timer_handle_cancelled(timer)`, called by `TimerHandle.cancel()`:
    /// counts cancelled timers still in the heap.
    pub fn timer_cancelled(&self, timer: &Bound<'_, PyAny>) {
        if handle::is_scheduled(timer) {
            self.state.lock().cancelled_timers += 1;
        }
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Relaxed) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// asyncio's `_check_thread` and `_check_callback`, done in debug mode only.
    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        thread: bool,
    ) -> PyResult<()> {
        let this = slf.get();
        if thread {
            let owner = this.thread_id.load(Relaxed);
            if owner != 0 && owner != current_thread() {
                return Err(PyRuntimeError::new_err(
                    "Non-thread-safe operation invoked on an event loop other than the current one",
                ));
            }
        }
        slf.call_method1(intern!(slf.py(), "_check_callback"), (callback, method))
            .map(drop)
    }

    /// `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at`, as
    /// asyncio checks them: a closed loop refused; in debug mode, the calling
    /// thread (but for the thread-safe one) and the callback checked.
    pub fn checked_schedule<'py>(
        slf: &Bound<'py, Self>,
        method: &str,
        when: Option<f64>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        this.check_closed()?;
        if this.debug.load(Relaxed) {
            Self::debug_checks(slf, callback, method, method != "call_soon_threadsafe")?;
        }
        Self::schedule(slf, when, callback, args, context)
    }

    /// Makes a handle and queues it: on the ready queue, or with `when` on
    /// the timer heap.
    fn schedule<'py>(
        slf: &Bound<'py, Self>,
        when: Option<f64>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let debug = this.debug.load(Relaxed);
        let spare = if debug {
            None
        } else {
            this.state.lock().free.take(when.is_some())
        };
        let h = handle::new(slf.as_any(), callback, args, context, when, debug, spare)?;
        let queued = h.clone().unbind();
        if when.is_some() {
            handle::set_scheduled(&h, true);
        }
        let mut st = this.state.lock();
        st.settle_last(slf.py());
        if !debug {
            st.last = Some(h.clone().unbind());
        }
        match when {
            None => st.ready.push_back(Ready::Callback(queued)),
            Some(when) => st.timers.push(when, queued),
        }
        Ok(h)
    }

    /// Sets (or, with `None`, clears) what watches one side of `fd`, telling
    /// the backend when the interest changes; returns the previous watcher.
    pub fn set_watcher(
        &self,
        fd: RawFd,
        side: Side,
        watcher: Option<Watcher>,
    ) -> PyResult<Option<Watcher>> {
        let (old, new) = {
            let st = self.state.lock();
            let new = st.watchers.interest_with(fd, side, watcher.as_ref());
            (st.watchers.interest(fd), new)
        };
        if new != old {
            self.with_backend(|b| b.set_interest(fd, old, new))?;
        }
        Ok(self.state.lock().watchers.set(fd, side, watcher))
    }

    /// Clears one side of `fd` if `target` still watches it: a finished wait
    /// must not remove the wait that replaced it.
    pub fn clear_watcher_of(
        &self,
        fd: RawFd,
        side: Side,
        target: &Arc<dyn IoTarget>,
    ) -> PyResult<()> {
        let ours = {
            let st = self.state.lock();
            let watch = st.watchers.get(fd);
            let current = watch.and_then(|w| match side {
                Side::Read => w.reader.as_ref(),
                Side::Write => w.writer.as_ref(),
            });
            matches!(current, Some(Watcher::Native(t)) if Arc::ptr_eq(t, target))
        };
        if ours && !self.is_closed() {
            drop(self.set_watcher(fd, side, None)?);
        }
        Ok(())
    }

    fn with_backend<T>(&self, f: impl FnOnce(&mut dyn Backend) -> io::Result<T>) -> PyResult<T> {
        self.check_fork()?;
        let mut io = self.io.lock();
        let io = io.as_mut().ok_or_else(closed_error)?;
        f(io.backend.as_mut()).map_err(PyErr::from)
    }

    /// `_add_reader` / `_add_writer`.
    fn add_watch<'py>(
        slf: &Bound<'py, Self>,
        side: Side,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        this.check_closed()?;
        let fd = fileobj_to_fd(fd)?;
        let debug = this.debug.load(Relaxed);
        let h = handle::new(slf.as_any(), callback, args, None, None, debug, None)?;
        let previous = this.set_watcher(fd, side, Some(Watcher::Handle(h.clone().unbind())))?;
        if let Some(Watcher::Handle(previous)) = previous {
            previous
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "cancel"))?;
        }
        Ok(h)
    }

    /// `_remove_reader` / `_remove_writer`: true when a watcher was removed.
    fn remove_watch(slf: &Bound<'_, Self>, side: Side, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        let this = slf.get();
        if this.closed.load(Relaxed) {
            return Ok(false);
        }
        match this.set_watcher(fileobj_to_fd(fd)?, side, None)? {
            Some(Watcher::Handle(h)) => h
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "cancel"))
                .map(|_| true),
            Some(Watcher::Native(_)) => Ok(true),
            None => Ok(false),
        }
    }

    /// Drops cancelled timers as asyncio does: all of them once they are
    /// most of a large heap, otherwise those at its head.
    fn prune_timers(st: &mut State, py: Python<'_>) -> Vec<Py<PyAny>> {
        let n = st.timers.len();
        let dropped = if n > MIN_SCHEDULED_TIMER_HANDLES && st.cancelled_timers * 2 > n {
            st.cancelled_timers = 0;
            st.timers.split_off(|t| !handle::is_cancelled(t.bind(py)))
        } else {
            let mut dropped = Vec::new();
            while st
                .timers
                .peek()
                .is_some_and(|(_, t)| handle::is_cancelled(t.bind(py)))
            {
                st.cancelled_timers = st.cancelled_timers.saturating_sub(1);
                dropped.extend(st.timers.pop().map(|(_, t)| t));
            }
            dropped
        };
        for t in &dropped {
            handle::set_scheduled(t.bind(py), false);
        }
        dropped
    }

    /// How long the next wait may block.
    fn next_timeout(&self, st: &State) -> Option<Duration> {
        if !st.ready.is_empty() || self.stopping.load(Relaxed) {
            return Some(Duration::ZERO);
        }
        let (when, _) = st.timers.peek()?;
        let secs = (when - monotonic()).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
        Some(Duration::from_secs_f64(if secs.is_nan() {
            0.0
        } else {
            secs
        }))
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
            let st = self.state.lock();
            st.watchers
                .fds()
                .map(|fd| (fd, st.watchers.interest(fd)))
                .collect()
        };
        let waker = Arc::new(Waker::new()?);
        let mut io = self.io.lock();
        let Some(io) = io.as_mut() else {
            return Ok(());
        };
        if io.backend.reopen(waker.clone())? {
            for (fd, interest) in watched {
                io.backend.set_interest(fd, Interest::default(), interest)?;
            }
            self.state.lock().waker = Some(waker);
        }
        Ok(())
    }

    /// Waits for I/O; returns the reports in `events`, the buffer taken from
    /// [`State`] (and put back by `collect_ready`).
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        mut events: Vec<Event>,
    ) -> PyResult<Vec<Event>> {
        self.check_fork()?;
        let mut wait = || {
            let mut guard = self.io.lock();
            let io = guard
                .as_mut()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
            io.backend.wait(timeout, &mut events)
        };
        let r = if self.waits_detached.load(Relaxed) && timeout != Some(Duration::ZERO) {
            py.detach(wait)
        } else {
            wait()
        };
        match r {
            Ok(()) => Ok(events),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                py.check_signals()?;
                Ok(events)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the handles of ready fds and due timers to the ready queue and
    /// keeps the events buffer for the next wait; returns the readers and
    /// writers found cancelled, and how many callbacks are ready.
    fn collect_ready(&self, py: Python<'_>, events: Vec<Event>) -> (Vec<(i32, Side)>, usize) {
        let mut st = self.state.lock();
        let State {
            ready,
            watchers,
            timers,
            ..
        } = &mut *st;
        let mut stale = Vec::new();
        for ev in &events {
            let Some(w) = watchers.get(ev.fd) else {
                continue;
            };
            for (fired, side, w) in [
                (ev.readable, Side::Read, &w.reader),
                (ev.writable, Side::Write, &w.writer),
            ] {
                match (fired, w) {
                    (true, Some(Watcher::Handle(h))) if handle::is_cancelled(h.bind(py)) => {
                        stale.push((ev.fd, side));
                    }
                    (true, Some(w)) => ready.push_back(Ready::from_watcher(w.clone_ref(py), side)),
                    _ => {}
                }
            }
        }
        if !timers.is_empty() {
            let end = monotonic() + self.resolution;
            while let Some(t) = timers.pop_due(end) {
                handle::set_scheduled(t.bind(py), false);
                ready.push_back(Ready::Callback(t));
            }
        }
        let ntodo = ready.len();
        st.events = events;
        (stale, ntodo)
    }

    /// One iteration. With `busy` (callbacks keep the ready queue full), a poll
    /// that could not block is skipped while the last one is less than
    /// [`BUSY_POLL_INTERVAL`] old.
    fn run_once(slf: &Bound<'_, Self>, busy: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (timeout, events, poll) = {
            let mut st = this.state.lock();
            st.settle_last(py);
            let dropped = Self::prune_timers(&mut st, py);
            let timeout = this.next_timeout(&st);
            let mut events = std::mem::take(&mut st.events);
            events.clear();
            // While busy, a poll that could not block waits for its interval.
            let now = Instant::now();
            let poll = !busy
                || timeout != Some(Duration::ZERO)
                || st.polled.is_none_or(|p| now - p >= BUSY_POLL_INTERVAL);
            if poll {
                st.polled = Some(now);
            }
            let mut room = [st.free.room(false), st.free.room(true)];
            drop(st);
            // Cancelled timers (a finished `asyncio.timeout`'s) are reused too.
            let spent: Vec<_> = dropped
                .into_iter()
                .filter_map(|t| handle::spend(t.into_bound(py), &mut room).ok())
                .collect();
            if !spent.is_empty() {
                let full: Vec<_> = {
                    let mut st = this.state.lock();
                    spent.into_iter().filter_map(|s| st.free.give(s)).collect()
                };
                drop(full);
            }
            (timeout, events, poll)
        };
        let events = if poll {
            this.wait(py, timeout, events)?
        } else {
            events
        };
        let (stale, ntodo) = this.collect_ready(py, events);
        for (fd, side) in stale {
            let fd = fd.into_pyobject(py)?.into_any();
            Self::remove_watch(slf, side, &fd)?;
        }
        // A handle that ran and can be reused goes to the free list when the
        // next one is popped: one lock for both.
        let mut spent = None;
        for _ in 0..ntodo {
            let (next, mut room, full) = {
                let mut st = this.state.lock();
                let full = spent.take().and_then(|s| st.free.give(s));
                let room = [st.free.room(false), st.free.room(true)];
                let next = st.ready.pop_front();
                if let Some(Ready::Callback(h)) = &next {
                    // Another thread scheduled it during this iteration:
                    // `last` may only name a queued handle.
                    if st.last.as_ref().is_some_and(|l| l.is(h)) {
                        st.last = None;
                    }
                }
                (next, room, full)
            };
            drop(full);
            let h = match next {
                None => break,
                Some(Ready::Io(target, side)) => {
                    target.on_ready(py, side)?;
                    continue;
                }
                Some(Ready::Callback(h)) => h.into_bound(py),
            };
            let ran = if handle::is_cancelled(&h) {
                Ok(())
            } else {
                Self::run_handle(slf, &h)
            };
            spent = handle::spend(h, &mut room).ok();
            ran?;
        }
        let full = spent.and_then(|s| this.state.lock().free.give(s));
        drop(full);
        Ok(())
    }

    /// Runs one ready handle, reporting what it raises as asyncio's `Handle._run` does.
    fn run_handle(slf: &Bound<'_, Self>, h: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().debug.load(Relaxed) {
            return slf
                .call_method1(intern!(py, "_run_handle_debug"), (h,))
                .map(drop);
        }
        match handle::run(h) {
            Ok(()) => Ok(()),
            Err(e) if handle::escapes(py, &e) => Err(e),
            Err(e) => slf
                .call_method1(intern!(py, "_callback_failed"), (h, e.value(py)))
                .map(drop),
        }
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        Self {
            state: GilCell::new(State::default()),
            io: Mutex::new(None),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            waits_detached: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            forks: AtomicU64::new(fork::generation()),
            resolution: resolution(),
        }
    }

    /// Opens the backend: the user's `selector` if given, else native epoll.
    #[pyo3(signature = (selector=None))]
    fn _open(&self, selector: Option<Py<PyAny>>) -> PyResult<()> {
        let waker = Arc::new(Waker::new()?);
        let backend: Box<dyn Backend> = match selector {
            Some(s) => Box::new(PySelector::new(s, waker.clone())?),
            None => Box::new(Epoll::new(waker.clone())?),
        };
        self.waits_detached.store(backend.waits_detached(), Relaxed);
        self.forks.store(fork::generation(), Relaxed);
        let old = self.io.lock().replace(Io { backend });
        if let Some(mut old) = old {
            old.backend.close();
        }
        self.state.lock().waker = Some(waker);
        Ok(())
    }

    /// `create_future`: an asyncio `Future` on this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        task::create_future(slf.as_any())
    }

    /// `create_task`: asyncio's `Task` for `coro`, or, with a task factory
    /// set, asyncio's own `create_task` (which calls it).
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_closed()?;
        task::create_task(slf.as_any(), coro, name, context)
    }

    /// Wakes the loop from another thread (asyncio's self-pipe write).
    pub fn _write_to_self(&self) {
        if self.forks.load(Relaxed) != fork::generation() {
            return; // the waker is the parent's until `check_fork` runs
        }
        if let Some(w) = self.state.lock().waker.as_ref() {
            w.wake();
        }
    }

    /// Appends an existing handle to the ready queue unless it is cancelled
    /// (asyncio's `_add_callback`, used for signal handlers).
    fn _add_callback(&self, h: &Bound<'_, PyAny>) -> PyResult<()> {
        if !handle::is_handle(h)? {
            return Err(PyTypeError::new_err("an asyncio.Handle was expected"));
        }
        if !handle::is_cancelled(h) {
            self.state
                .lock()
                .ready
                .push_back(Ready::Callback(h.clone().unbind()));
        }
        Ok(())
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::add_watch(slf, Side::Read, fd, callback, args)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::add_watch(slf, Side::Write, fd, callback, args)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, Side::Read, fd)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, Side::Write, fd)
    }

    /// `(fd, events, reader, writer)` of a watched fd (or file object), in
    /// `selectors`' terms (EVENT_READ = 1, EVENT_WRITE = 2); KeyError when
    /// nothing watches it.
    #[allow(clippy::type_complexity)]
    fn _watch_key(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<(RawFd, u8, Option<Py<PyAny>>, Option<Py<PyAny>>)> {
        let fd = fileobj_to_fd(fd)?;
        let st = self.state.lock();
        let w = st.watchers.get(fd).ok_or_else(|| PyKeyError::new_err(fd))?;
        let interest = w.interest();
        let events = u8::from(interest.readable) | (u8::from(interest.writable) << 1);
        let handle = |w: &Option<Watcher>| {
            w.as_ref()
                .and_then(Watcher::handle)
                .map(|h| h.clone_ref(py))
        };
        Ok((fd, events, handle(&w.reader), handle(&w.writer)))
    }

    /// Every watched fd.
    fn _watched_fds(&self) -> Vec<i32> {
        self.state.lock().watchers.fds().collect()
    }

    /// One iteration: wait for I/O, collect due timers, run what is ready.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_once(slf, false)
    }

    /// Iterates until `stop()` is called (the core of `run_forever`).
    ///
    /// The first iteration and the last (once `stop()` was called) always
    /// poll for I/O; those in between skip polls that could not block while
    /// the last one is recent ([`BUSY_POLL_INTERVAL`]).
    fn _run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut busy = false;
        loop {
            Self::run_once(slf, busy && !slf.get().stopping.load(Relaxed))?;
            if slf.get().stopping.load(Relaxed) {
                return Ok(());
            }
            busy = true;
        }
    }

    /// Ends `run_forever` after the current iteration.
    fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Relaxed) != 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    #[getter(_debug)]
    fn debug_flag(&self) -> bool {
        self.debug.load(Relaxed)
    }

    #[setter(_debug)]
    fn set_debug_flag(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Relaxed);
        Ok(())
    }

    #[getter(_closed)]
    fn closed_flag(&self) -> bool {
        self.closed.load(Relaxed)
    }

    #[getter(_stopping)]
    fn stopping_flag(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping_flag(&self, value: bool) {
        self.stopping.store(value, Relaxed);
    }

    #[getter(_thread_id)]
    fn thread_id(&self) -> Option<u64> {
        Some(self.thread_id.load(Relaxed)).filter(|t| *t != 0)
    }

    #[setter(_thread_id)]
    fn set_thread_id(&self, value: Option<u64>) {
        self.thread_id.store(value.unwrap_or(0), Relaxed);
    }

    /// Marks the loop closed and releases the queues, the backend and the waker.
    fn _close_engine(&self, py: Python<'_>) {
        self.closed.store(true, Relaxed);
        let released = self.state.lock().take_all();
        release(py, released);
        let io = self.io.lock().take();
        if let Some(mut io) = io {
            io.backend.close();
        }
        drop(self.state.lock().waker.take());
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.try_lock() else {
            return Ok(());
        };
        for entry in &st.ready {
            match entry {
                Ready::Callback(h) => handle::visit(h, &visit)?,
                Ready::Io(..) => entry.traverse(&visit)?,
            }
        }
        for watcher in st.watchers.watchers() {
            watcher.traverse(&visit)?;
        }
        for h in st.timers.iter() {
            handle::visit(h, &visit)?;
        }
        for h in st.free.iter().chain(&st.last) {
            visit.call(h)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Some(released) = self.state.try_lock().map(|mut st| st.take_all()) {
            Python::attach(|py| release(py, released));
        }
    }
}

/// Lets go of what the queues held (see [`handle::retrack`]).
fn release(py: Python<'_>, released: Vec<Ready>) {
    for entry in released {
        if let Ready::Callback(h) = entry {
            handle::retrack(h.bind(py));
        }
    }
}
