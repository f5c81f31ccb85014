//! The engine: the iteration that drives the ready queue, the timers and the
//! fd watchers — asyncio's `BaseEventLoop._run_once`, in Rust — and its
//! Python surface.
//!
//! The Python class `oxloop.Loop` derives from [`Engine`] and adds asyncio's
//! pure-Python orchestration (run_until_complete, executors, exception
//! handler). No state is borrowed while Python code runs: a callback, a
//! finalizer or a user's selector may call back into the loop at any time.

use super::fastcall;
use super::fork;
use super::free_list::FreeList;
use super::gc::Traverse;
use super::gil_cell::GilCell;
use super::handle;
use super::health;
use super::io::Io;
use super::ready::{Ready, ReadyQueue, PENDING};
use super::registry::{self, NativeWatcher, Registration, Side, Watcher};
use super::task;
use super::timers::{monotonic, resolution, seconds, Timers};
use crate::backend::{self, Event};
use crate::errors::{closed_error, escapes};
use crate::health::{clock, Health, SlowCallback};
use pyo3::exceptions::{PyKeyError, PyOverflowError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, in seconds.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// While callbacks keep the ready queue full, how often `run_forever` polls
/// for I/O: a poll that cannot block finds nothing new most of the time, and
/// its system call cost as much as the callbacks of a `sleep(0)` iteration.
const BUSY_POLL_INTERVAL: Duration = Duration::from_micros(50);

/// The queues the iteration works on.
#[derive(Default)]
struct State {
    ready: ReadyQueue,
    timers: Timers,
    /// The handle scheduled last, while it is queued, until the next
    /// `schedule` or iteration checks whether its caller kept it
    /// ([`State::settle_last`]).
    last: Option<Py<PyAny>>,
    /// The buffer the backend's reports land in, kept between iterations.
    events: Vec<Event>,
    /// When the backend was last asked for events (`None`: never).
    polled: Option<Instant>,
    /// The loop's health figures.
    health: Health,
    /// The fork generation the figures were taken in ([`fork::generation`]).
    health_generation: u64,
    /// How many `running` calls are in progress (nested `_run_once` calls).
    run_depth: u32,
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
}

impl State {
    /// A forked child's figures start from zero, at `now`.
    fn restart_health_if_forked(&mut self, now: u64) {
        if self.health_generation != fork::generation() {
            self.health_generation = fork::generation();
            self.health.reset(now);
        }
    }
}

impl Traverse for State {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.ready, &self.timers, &self.last).traverse(visit)
    }
}

/// Everything a closing or dropped loop held, released once nothing is
/// borrowed: handles are tracked again as they leave ([`handle::retrack`]).
struct Held {
    ready: Vec<Ready>,
    registrations: Vec<Registration>,
    handles: Vec<Py<PyAny>>,
}

impl Held {
    fn release(self, py: Python<'_>) {
        let queued = self.ready.into_iter().filter_map(|r| match r {
            Ready::Callback(h) => Some(h),
            Ready::Io(..) => None,
        });
        let watching = self
            .registrations
            .into_iter()
            .flat_map(|r| [r.reader, r.writer])
            .filter_map(|w| match w {
                Some(Watcher::Handle(h)) => Some(h),
                _ => None,
            });
        for h in queued.chain(watching).chain(self.handles) {
            handle::retrack(h.bind(py));
        }
    }
}

/// The native core of every oxloop event loop.
#[pyclass(subclass, frozen, module = "oxloop._oxloop", name = "Engine")]
pub struct Engine {
    state: GilCell<State>,
    free: GilCell<FreeList>,
    io: Io,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop; 0 when stopped.
    thread_id: AtomicU64,
    resolution: f64,
    /// Whether the loop's class replaces `time()` (looked up once).
    class_time: OnceLock<bool>,
}

impl Drop for Engine {
    /// A loop dropped without `close()` still lets go of its handles properly.
    fn drop(&mut self) {
        let held = self.take_all();
        Python::attach(|py| held.release(py));
    }
}

/// When a timer that is `late` seconds past its deadline at `now` (a
/// health clock reading, converted at `rate`) became due.
fn due_since(now: u64, rate: clock::Rate, late: f64) -> u64 {
    // `as` saturates: a NaN or negative span is 0 ticks, an infinite one
    // the whole clock.
    now.saturating_sub(rate.from_seconds(late))
}

fn current_thread() -> u64 {
    // SAFETY: plain query of the calling thread's identifier.
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

impl Engine {
    /// The loop's time as asyncio's `_run_once` and `call_later` read it,
    /// `self.time()`: the native clock, unless `time` was replaced on the
    /// instance (`mock.patch.object(loop, "time")`, as libraries' tests
    /// control time) or by a subclass.
    pub fn now(slf: &Bound<'_, Self>) -> PyResult<f64> {
        match Self::replaced_time(slf)? {
            None => Ok(monotonic()),
            Some(time) => time.call0()?.extract(),
        }
    }

    /// The loop's `time` attribute when it is not the native clock.
    fn replaced_time<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let name = intern!(py, "time");
        let by_class = *slf.get().class_time.get_or_init(|| {
            slf.get_type()
                .getattr(name)
                .is_ok_and(|t| !fastcall::is_native_time(&t))
        });
        // SAFETY: `slf` is a live object; the call returns a new reference
        // to its instance dict, or NULL with AttributeError set when its class
        // has none (a bare Engine).
        let dict = unsafe {
            Bound::from_owned_ptr_or_opt(
                py,
                ffi::PyObject_GenericGetDict(slf.as_ptr(), std::ptr::null_mut()),
            )
        };
        let by_instance = match dict {
            Some(d) => d.cast_into::<PyDict>()?.contains(name)?,
            None => {
                // An Engine without a dict (no Python subclass).
                drop(PyErr::take(py));
                false
            }
        };
        if by_class || by_instance {
            return slf.getattr(name).map(Some);
        }
        Ok(None)
    }

    /// `loop.get_debug()`.
    pub fn get_debug(&self) -> bool {
        self.debug.load(Relaxed)
    }

    /// `loop._timer_handle_cancelled(timer)`, called by `TimerHandle.cancel()`.
    pub fn timer_cancelled(&self, timer: &Bound<'_, PyAny>) {
        // Checked before the borrow: an isinstance check may run Python code.
        if handle::is_scheduled(timer) {
            let mut st = self.state.lock();
            st.timers.cancelled();
            if st.health.enabled {
                st.health.counters.timers_cancelled += 1;
            }
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
        let threadsafe = method == "call_soon_threadsafe";
        Self::schedule(slf, when, callback, args, context, threadsafe)
    }

    /// Makes a handle and queues it: on the ready queue, or with `when` on
    /// the timers. A handle queued from another thread is due at once; one
    /// the running callback queues, once it returns ([`PENDING`]).
    fn schedule<'py>(
        slf: &Bound<'py, Self>,
        when: Option<f64>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let debug = this.debug.load(Relaxed);
        let spare = if debug {
            None
        } else {
            this.free.lock().take(when.is_some())
        };
        let h = handle::new(slf.as_any(), callback, args, context, when, debug, spare)?;
        let mut st = this.state.lock();
        st.settle_last(slf.py());
        if !debug {
            st.last = Some(h.clone().unbind());
        }
        match when {
            None => {
                let due = match (st.health.enabled, threadsafe) {
                    (false, _) => 0,
                    (true, true) => clock::now(),
                    (true, false) => PENDING,
                };
                st.ready.push(Ready::Callback(h.clone().unbind()), due);
            }
            Some(when) => st.timers.push(when, h.clone()),
        }
        Ok(h)
    }

    /// Sets (or, with `None`, clears) what watches one side of `fd`; returns
    /// the previous watcher.
    pub fn set_watcher(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        watcher: Option<Watcher>,
    ) -> PyResult<Option<Watcher>> {
        self.io.set_watcher(py, fd, side, watcher)
    }

    /// Whether the backend receives for the native readers that ask (see
    /// [`NativeWatcher::receives`](super::NativeWatcher::receives)).
    pub fn receives(&self) -> bool {
        self.io.receives()
    }

    /// Whether the backend sends for native cores ([`Engine::send`]).
    pub fn sends(&self) -> bool {
        self.io.sends()
    }

    /// Queues a send of the `len` bytes at `ptr` on `fd` in the backend,
    /// made with the next wait; its result goes to `core`
    /// ([`NativeWatcher::sent`](super::NativeWatcher::sent)), in the
    /// current context. False when it cannot be queued now: `core` sends
    /// by system call.
    ///
    /// # Safety
    /// The bytes stay alive and unchanged until `core` is told the result
    /// or [`Engine::stop_send`] returned.
    pub unsafe fn send<T: NativeWatcher>(
        &self,
        core: &Bound<'_, T>,
        fd: RawFd,
        ptr: *const u8,
        len: usize,
    ) -> PyResult<bool> {
        let target = registry::target(core)?;
        // SAFETY: the caller keeps the bytes as asked.
        unsafe { self.io.send(fd, target, ptr, len) }
    }

    /// Makes `fd`'s queued send now, its result untold: its bytes may go.
    pub fn stop_send(&self, fd: RawFd) -> PyResult<()> {
        self.io.stop_send(fd)
    }

    /// Queues `fd`'s reader, a native core, to run as if the fd were
    /// readable: a resumed reader with bytes already received for it, or
    /// the end of the stream that came with the bytes it handed on.
    pub fn queue_reader(&self, fd: RawFd) {
        let Some(reader) = self.io.native_reader(fd) else {
            return;
        };
        let mut st = self.state.lock();
        let due = if st.health.enabled { PENDING } else { 0 };
        st.ready.push(Ready::Io(reader, Side::Read), due);
    }

    /// True when `core`'s native watcher watches one side of `fd`.
    pub fn is_watched_by(&self, fd: RawFd, side: Side, core: &Bound<'_, PyAny>) -> bool {
        self.io.is_watched_by(fd, side, core)
    }

    /// Clears one side of `fd` if `core` still watches it (an open loop's):
    /// a finished wait must not remove the wait that replaced it.
    pub fn clear_watcher_of(&self, fd: RawFd, side: Side, core: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.is_closed() {
            drop(self.io.clear_watcher_of(fd, side, core)?);
        }
        Ok(())
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
        let fileobj = fd;
        let fd = this
            .io
            .lookup(fileobj)?
            .ok_or_else(|| PyOverflowError::new_err("Python int too large to convert to C int"))?;
        let debug = this.debug.load(Relaxed);
        let h = handle::new(slf.as_any(), callback, args, None, None, debug, None)?;
        let previous = this
            .io
            .add_handle(slf.py(), fd, side, h.clone().unbind(), fileobj)?;
        if let Some(Watcher::Handle(previous)) = previous {
            previous
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "cancel"))?;
        }
        Ok(h)
    }

    /// `_remove_reader` / `_remove_writer` of the fd `fileobj` names.
    fn remove_watch_of(
        slf: &Bound<'_, Self>,
        side: Side,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if slf.get().closed.load(Relaxed) {
            return Ok(false);
        }
        match slf.get().io.lookup(fileobj)? {
            Some(fd) => Self::remove_watch(slf, side, fd),
            None => Ok(false),
        }
    }

    /// Removes what watches one side of `fd` of an open loop: true when a
    /// watcher was removed.
    fn remove_watch(slf: &Bound<'_, Self>, side: Side, fd: RawFd) -> PyResult<bool> {
        match slf.get().set_watcher(slf.py(), fd, side, None)? {
            Some(Watcher::Handle(h)) => h
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "cancel"))
                .map(|_| true),
            Some(Watcher::Native(_)) => Ok(true),
            None => Ok(false),
        }
    }

    /// When the next wait must end: at once (`-inf`) while callbacks are
    /// ready or the loop stops, else at the next timer's deadline, if any.
    fn wait_deadline(&self, st: &State) -> Option<f64> {
        if !st.ready.is_empty() || self.stopping.load(Relaxed) {
            return Some(f64::NEG_INFINITY);
        }
        st.timers.next_deadline()
    }

    /// One iteration: wait for I/O, queue the watchers of ready fds, queue
    /// the due timers, run what was ready. With `busy` (callbacks keep the
    /// ready queue full), a poll that could not block is skipped while the
    /// last one is less than [`BUSY_POLL_INTERVAL`] old.
    fn run_once(slf: &Bound<'_, Self>, busy: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (mut events, woke) = Self::wait(slf, busy)?;
        Self::dispatch_io(slf, &mut events, woke)?;
        let has_timers = !this.state.lock().timers.is_empty();
        let now = if has_timers {
            Some(Self::now(slf)?)
        } else {
            None
        };
        this.queue_due_timers(py, events, now);
        Self::run_ready(slf)
    }

    /// Step 1: drops cancelled timers, then waits for I/O as long as the
    /// next timer allows; returns the backend's reports and, with health
    /// figures on, when the wait ended.
    fn wait(slf: &Bound<'_, Self>, busy: bool) -> PyResult<(Vec<Event>, u64)> {
        let py = slf.py();
        let this = slf.get();
        let (deadline, pruned) = {
            let mut st = this.state.lock();
            st.settle_last(py);
            let pruned = st.timers.prune(py);
            if !pruned.is_empty() {
                st.health.worked();
            }
            (this.wait_deadline(&st), pruned)
        };
        // Cancelled timers (a finished `asyncio.timeout`'s) are reused too.
        for t in pruned {
            FreeList::recycle(&this.free, t.into_bound(py));
        }
        // The clock is read (it may be Python code) with no state borrowed.
        let timeout = match deadline {
            None => None,
            Some(d) if d == f64::NEG_INFINITY => Some(Duration::ZERO),
            Some(d) => {
                let secs = (d - Self::now(slf)?).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
                Some(Duration::from_secs_f64(if secs.is_nan() {
                    0.0
                } else {
                    secs
                }))
            }
        };
        let (poll, timed, mut events) = {
            let mut st = this.state.lock();
            let mut events = std::mem::take(&mut st.events);
            events.clear();
            let now = Instant::now();
            let poll = !busy
                || timeout != Some(Duration::ZERO)
                || st.polled.is_none_or(|p| now - p >= BUSY_POLL_INTERVAL);
            let timed = poll && st.health.enabled;
            if poll {
                st.polled = Some(now);
            }
            if timed {
                st.health.wait_started(clock::now());
            }
            (poll, timed, events)
        };
        if !poll {
            return Ok((events, 0));
        }
        let waited = this.io.wait(py, timeout, &mut events);
        let woke = if timed {
            let now = clock::now();
            this.state.lock().health.wait_ended(now, events.len());
            now
        } else {
            0
        };
        waited.map(|()| (events, woke))
    }

    /// Step 2: queues the watchers of the fds the backend reported, due
    /// since `woke`; a cancelled `add_reader`/`add_writer` handle found
    /// there is removed.
    fn dispatch_io(slf: &Bound<'_, Self>, events: &mut [Event], woke: u64) -> PyResult<()> {
        let this = slf.get();
        let stale = {
            let mut st = this.state.lock();
            if !events.is_empty() {
                st.health.worked();
            }
            this.io.dispatch(slf.py(), events, &mut st.ready, woke)
        };
        for (fd, side) in stale {
            Self::remove_watch(slf, side, fd)?;
        }
        Ok(())
    }

    /// Step 3: queues the timers due within the clock's resolution of
    /// `now` (the loop's time, read when timers are scheduled), each due
    /// since its deadline, and keeps the events buffer for the next wait.
    fn queue_due_timers(&self, py: Python<'_>, events: Vec<Event>, now: Option<f64>) {
        let mut st = self.state.lock();
        st.events = events;
        let Some(now) = now else {
            return;
        };
        let end = now + self.resolution;
        let State {
            ready,
            timers,
            health,
            ..
        } = &mut *st;
        let mut fired = 0;
        if !health.enabled {
            while let Some((_, t)) = timers.pop_due(py, end) {
                ready.push(Ready::Callback(t), 0);
            }
            return;
        }
        let mut reading = None;
        while let Some((when, t)) = timers.pop_due(py, end) {
            let (ticks, rate) = *reading.get_or_insert_with(|| {
                let ticks = clock::now();
                (ticks, clock::rate(ticks))
            });
            fired += 1;
            ready.push(Ready::Callback(t), due_since(ticks, rate, now - when));
        }
        if fired > 0 {
            health.worked();
        }
        health.counters.timers_fired += fired;
    }

    /// Step 4: runs what is ready now (not what these callbacks schedule);
    /// a handle that ran goes back to the free list. With health figures
    /// on, each run is timed (one clock reading per callback: its end is
    /// the next one's start; the first starts at
    /// [`Health::iteration_start`]) and its lag recorded.
    fn run_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (ntodo, mut start) = {
            let mut st = this.state.lock();
            let ntodo = st.ready.len();
            let start = st.health.enabled.then(|| st.health.iteration_start());
            if let Some(now) = start {
                st.restart_health_if_forked(now);
                st.health.iteration(ntodo);
                st.ready.begin_iteration();
            }
            (ntodo, start)
        };
        let iteration_start = start.unwrap_or(0);
        for _ in 0..ntodo {
            let (next, due) = {
                let mut st = this.state.lock();
                let Some((next, due)) = st.ready.pop() else {
                    break;
                };
                if let Ready::Callback(h) = &next {
                    // Another thread scheduled it during this iteration:
                    // `last` may only name a queued handle.
                    if st.last.as_ref().is_some_and(|l| l.is(h)) {
                        st.last = None;
                    }
                }
                (next, due)
            };
            let (ran, counted) = match &next {
                Ready::Io(target, side) => match target.on_ready(py, *side) {
                    Err(e) if !escapes(py, &e) => {
                        (Self::native_failed(slf, &target.describe(py)?, e), true)
                    }
                    ran => (ran, true),
                },
                Ready::Callback(h) if handle::is_cancelled(h.bind(py)) => (Ok(()), false),
                Ready::Callback(h) => (Self::run_handle(slf, h.bind(py)), true),
            };
            if let (Some(began), true) = (start, counted) {
                // Queued while the figures were off (turned on during the
                // wait, by a signal handler or another thread): due when
                // the iteration started, as a PENDING one.
                let due = if due == PENDING || due == 0 {
                    iteration_start
                } else {
                    due
                };
                start = Some(Self::timed(slf, &next, began, due));
            }
            if let Ready::Callback(h) = next {
                FreeList::recycle(&this.free, h.into_bound(py));
            }
            ran?;
        }
        Ok(())
    }

    /// Records the run of `entry` that began at `began` (due since `due`)
    /// and stamps what it queued. Returns when the next run begins.
    #[inline]
    fn timed(slf: &Bound<'_, Self>, entry: &Ready, began: u64, due: u64) -> u64 {
        let end = clock::now();
        let mut st = slf.get().state.lock();
        st.ready.stamp_pending(end);
        if !st.health.ran(began, end, began.saturating_sub(due)) {
            return end;
        }
        let duration = end - began;
        let log = st.health.log_threshold().is_some_and(|t| duration >= t);
        let slowest = st.health.is_slowest(duration);
        drop(st);
        Self::slow(slf, entry, began, duration, slowest, log);
        // Naming it took time the next callback must not be charged with.
        let now = clock::now();
        slf.get().state.lock().health.saw(now);
        now
    }

    /// Names a slow run (Python code, rarely needed) to keep it among the
    /// slowest, and logs it if asked to.
    #[cold]
    fn slow(
        slf: &Bound<'_, Self>,
        entry: &Ready,
        began: u64,
        duration: u64,
        keep: bool,
        log: bool,
    ) {
        let py = slf.py();
        let obj = match entry {
            Ready::Callback(h) => h.bind(py).clone(),
            // SAFETY: the target holds a strong reference to its core for
            // as long as it lives, and `entry` holds the target.
            Ready::Io(target, _) => unsafe { Bound::from_borrowed_ptr(py, target.core()) },
        };
        let seconds = seconds(clock::to_nanos(duration));
        let described = slf
            .call_method1(intern!(py, "_slow_callback"), (obj, seconds, log))
            .and_then(|d| d.extract::<(String, String)>());
        match described {
            Ok((name, location)) if keep => slf.get().state.lock().health.add_slow(SlowCallback {
                duration,
                started: began,
                name,
                location,
            }),
            Ok(_) => {}
            Err(e) => e.write_unraisable(py, Some(slf.as_any())),
        }
    }

    /// Reports what a native core let through from its `on_ready` (a
    /// Python method it calls failing where asyncio's callback would have
    /// raised), as a failing callback is reported: the loop goes on.
    fn native_failed(slf: &Bound<'_, Self>, core: &str, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let context = PyDict::new(py);
        context.set_item("message", format!("Exception in callback {core}"))?;
        context.set_item("exception", err.value(py))?;
        slf.call_method1(intern!(py, "call_exception_handler"), (context,))
            .map(drop)
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
            Err(e) if escapes(py, &e) => Err(e),
            Err(e) => slf
                .call_method1(intern!(py, "_callback_failed"), (h, e.value(py)))
                .map(drop),
        }
    }

    /// Runs `iterate`, counted as time the loop ran.
    fn running(slf: &Bound<'_, Self>, iterate: impl FnOnce() -> PyResult<()>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = this.state.lock();
            st.run_depth += 1;
            if st.run_depth == 1 && st.health.enabled {
                st.health.run_started(clock::now());
            }
        }
        let ran = iterate();
        let outermost = {
            let mut st = this.state.lock();
            st.run_depth -= 1;
            if st.run_depth == 0 && st.health.enabled {
                st.health.run_stopped(clock::now());
            }
            st.run_depth == 0
        };
        if !outermost {
            return ran;
        }
        // Leaving the loop: the sends queued for its next wait are made
        // now, as the `send()` each stands for would have been, so no peer
        // waits for the loop to run again.
        let flushed = this.io.flush_sends();
        ran.and(flushed)
    }

    /// Empties every queue and the registry (those not borrowed right now).
    fn take_all(&self) -> Held {
        let (ready, handles) = match self.state.try_lock() {
            Some(mut st) => {
                st.last = None;
                (st.ready.take_all(), st.timers.take_all())
            }
            None => Default::default(),
        };
        let mut held = Held {
            ready,
            registrations: self.io.take_registrations(),
            handles,
        };
        if let Some(mut free) = self.free.try_lock() {
            held.handles.append(&mut free.take_all());
        }
        held
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        let state = State {
            health: Health::new(clock::now(), false),
            health_generation: fork::generation(),
            ..State::default()
        };
        Self {
            state: GilCell::new(state),
            free: GilCell::new(FreeList::default()),
            io: Io::new(),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            resolution: resolution(),
            class_time: OnceLock::new(),
        }
    }

    /// Opens the backend: the user's `selector` if given, else io_uring for
    /// a `proactor`, else the native one.
    #[pyo3(signature = (selector=None, proactor=false))]
    fn _open(&self, selector: Option<Py<PyAny>>, proactor: bool) -> PyResult<()> {
        self.io.open(match (selector, proactor) {
            (Some(s), _) => backend::Kind::Selector(s),
            (None, true) => backend::Kind::Uring,
            (None, false) => backend::Kind::Native,
        })
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
        if let Some(mut st) = self.state.try_lock() {
            if st.health.enabled {
                st.health.counters.threadsafe_wakeups += 1;
            }
        }
        self.io.wake();
    }

    /// Appends an existing handle to the ready queue unless it is cancelled
    /// (asyncio's `_add_callback`, used for signal handlers).
    fn _add_callback(&self, h: &Bound<'_, PyAny>) -> PyResult<()> {
        if !handle::is_handle(h)? {
            return Err(PyTypeError::new_err("an asyncio.Handle was expected"));
        }
        if !handle::is_cancelled(h) {
            let mut st = self.state.lock();
            let due = if st.health.enabled { PENDING } else { 0 };
            st.ready.push(Ready::Callback(h.clone().unbind()), due);
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
        Self::remove_watch_of(slf, Side::Read, fd)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch_of(slf, Side::Write, fd)
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
        let key = self.io.lookup(fd)?;
        let (fd, (interest, reader, writer)) = key
            .and_then(|n| Some((n, self.io.handles(py, n)?)))
            .ok_or_else(|| PyKeyError::new_err(fd.clone().unbind()))?;
        let events = u8::from(interest.readable) | (u8::from(interest.writable) << 1);
        Ok((fd, events, reader, writer))
    }

    /// Every watched fd.
    fn _watched_fds(&self) -> Vec<i32> {
        self.io.watched_fds()
    }

    /// One iteration: wait for I/O, collect due timers, run what is ready.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::running(slf, || Self::run_once(slf, false))
    }

    /// Iterates until `stop()` is called (the core of `run_forever`).
    ///
    /// The first iteration and the last (once `stop()` was called) always
    /// poll for I/O; those in between skip polls that could not block while
    /// the last one is recent ([`BUSY_POLL_INTERVAL`]).
    fn _run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::running(slf, || {
            let mut busy = false;
            loop {
                Self::run_once(slf, busy && !slf.get().stopping.load(Relaxed))?;
                if slf.get().stopping.load(Relaxed) {
                    return Ok(());
                }
                busy = true;
            }
        })
    }

    /// Ends `run_forever` after the current iteration.
    fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Relaxed) != 0
    }

    /// True once `close()` ran.
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
        self.take_all().release(py);
        self.io.close();
    }

    /// The loop's health figures now, for `oxloop.health()`.
    fn _health_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (now, anchor) = (clock::now(), crate::sys::monotonic_ns());
        let (snapshot, enabled, ready, timers_pending) = {
            let mut st = self.state.lock();
            st.restart_health_if_forked(now);
            let st = &*st;
            (
                st.health.snapshot(now, anchor),
                st.health.enabled,
                st.ready.len(),
                st.timers.pending(),
            )
        };
        let fds = self.io.watched_fds().len();
        health::to_dict(py, &snapshot, enabled, [ready, timers_pending, fds])
    }

    /// Starts the health figures over.
    fn _health_reset(&self) {
        let mut st = self.state.lock();
        st.health_generation = fork::generation();
        st.health.reset(clock::now());
    }

    /// `(enabled, slow callbacks kept, log threshold in seconds or None)`.
    fn _health_settings(&self) -> (bool, usize, Option<f64>) {
        let st = self.state.lock();
        let h = &st.health;
        (
            h.enabled,
            h.slowest_capacity(),
            h.log_threshold().map(|t| seconds(clock::to_nanos(t))),
        )
    }

    /// Changes the health settings (see `_health_settings`).
    fn _health_configure(
        &self,
        enabled: bool,
        slowest: usize,
        log_threshold: Option<f64>,
    ) -> PyResult<()> {
        let log_threshold = log_threshold
            .map(|t| {
                Duration::try_from_secs_f64(t)
                    .map(|d| clock::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
            })
            .transpose()
            .map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(
                    "the log threshold must be a finite, non-negative number of seconds",
                )
            })?;
        let mut st = self.state.lock();
        let now = clock::now();
        let running = st.run_depth > 0;
        let State {
            health: h, ready, ..
        } = &mut *st;
        if enabled && !h.enabled {
            h.enabled = true;
            h.reset(now);
            ready.restamp(now);
            if running {
                h.run_started(now);
            }
        } else if !enabled && h.enabled {
            h.run_stopped(now);
            h.enabled = false;
        }
        h.keep_slowest(slowest);
        h.set_log_threshold(log_threshold);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.state, &self.free, self.io.registry()).traverse(&visit)
    }

    fn __clear__(&self) {
        let held = self.take_all();
        Python::attach(|py| held.release(py));
    }
}
