//! io_uring as the proactor loop's backend. A socket transport's reader
//! ([`Interest::receive`]) is a multishot receive into the provided buffer
//! ring ([`bufring`]): each chunk the kernel took is reported with its
//! bytes, and stopping it cancels it and waits for its last completions,
//! whose bytes are kept for the reader ([`Backend::take_received`]). The
//! loop's other fds (write sides, pipes, child watchers: [`Interest::held`])
//! are watched by poll operations: each has one single-shot poll in flight,
//! armed again at the next wait after it reported, so an fd that stays
//! ready is reported by every wait, level-triggered as [`Backend`]
//! promises; removing a watch cancels its poll at once. An operation in
//! flight holds a reference to its file, so the fds a user may close while
//! watched (`add_reader`, `sock_*` waits) are in an epoll set instead,
//! which a close leaves by itself; that set and the waker in it are one
//! more poll. A transport's send ([`Backend::send`]) is an operation queued
//! until the next wait, which makes every send of the loop's iteration
//! with it, and never waits for room (`MSG_DONTWAIT`: it ends within the
//! system call that submits it, so its bytes are free once that returns).
//! The wait is one `io_uring_enter` with its timeout, or a plain epoll wait
//! while no operation is in flight.

use super::bufring::{self, BufRing};
use super::epoll::Epoll;
use super::waker::Waker;
use super::{Backend, Event, Interest, Received};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// Submission queue entries.
const ENTRIES: u32 = 256;
/// Completion queue entries: a busy server has a poll in flight per
/// connection. The kernel keeps what overflows it (IORING_FEAT_NODROP) as
/// long as it can allocate; past that a wait says EBADR and every poll is
/// armed afresh.
const CQ_ENTRIES: u32 = 16384;
/// The fd part of the epoll set's poll's `user_data` (with a generation,
/// as a watched fd's; no fd is -1).
const EPOLL_FD: RawFd = -1;
/// The `user_data` of a poll's removal, whose completion says nothing.
const REMOVAL: u64 = u64::MAX - 1;
/// The mark of a send's `user_data`, which is the mark and the fd (one
/// send per fd at a time): no fd has this bit (`nr_open` is below 2^30),
/// and another token's upper half is its nonzero generation.
const SEND: u64 = 1 << 30;

fn send_token(fd: RawFd) -> u64 {
    SEND | u64::from(fd as u32)
}

/// The fd of a send's `user_data`.
fn sent_fd(token: u64) -> Option<RawFd> {
    (token >> 30 == 1).then_some((token & (SEND - 1)) as RawFd)
}

/// How long stopping a receive waits for its last completions before it
/// gives them up (they come with the wait that submits the cancellation).
const REAP_LIMIT: Duration = Duration::from_secs(1);

/// One watched fd.
#[derive(Default)]
struct Watch {
    /// The poll events it is watched for (none when only received for).
    mask: u32,
    /// The `user_data` of its current poll: the fd and a generation, so a
    /// late completion of a poll replaced or removed is told apart.
    token: u64,
    /// Whether that poll is in the kernel (submitted or queued to be).
    in_flight: bool,
    /// Its multishot receive, when its reader takes the bytes.
    recv: Option<Recv>,
}

/// The multishot receive of one fd ([`Interest::receive`]).
#[derive(Default)]
struct Recv {
    /// The `user_data` of the current receive.
    token: u64,
    /// Whether it is in the kernel; one that ended (out of buffers, or
    /// cancelled by its thread's exit) is armed again by the next wait.
    live: bool,
    /// It ended for good (end of file, an error): not armed again.
    ended: bool,
}

/// One completion: `user_data`, result and flags.
type Completion = (u64, i32, u32);

/// A send queued ([`Backend::send`]): its fd, bytes, and its place among
/// the entries pushed to the submission queue, which tells whether the
/// kernel has taken it.
struct QueuedSend {
    fd: RawFd,
    addr: usize,
    len: usize,
    seq: u64,
}

/// An io_uring instance, and the epoll set (with the waker) it polls.
pub struct Uring {
    ring: Option<IoUring>,
    /// The buffers receives pick from; None where the kernel has no
    /// multishot receive (before Linux 6.0): readers are polled.
    bufs: Option<Arc<BufRing>>,
    epoll: Epoll,
    /// The fds watched by poll operations.
    watched: FxHashMap<RawFd, Watch>,
    /// Fds whose poll reported since the last wait: armed again by the next
    /// one while they are still watched.
    reported: Vec<RawFd>,
    /// Whether the epoll set's poll must be armed again.
    epoll_idle: bool,
    /// The `user_data` of the epoll set's current poll.
    epoll_token: u64,
    /// The thread that made the ring, the only one that may submit to it
    /// (SINGLE_ISSUER) and whose waits run its completions' task work:
    /// another thread that uses the backend moves it to a ring of its own.
    issuer: std::thread::ThreadId,
    /// Reports of the ring left behind by such a move, for the next wait.
    early: Vec<Event>,
    /// Completions reaped but not yet handled (kept for the allocation).
    done: Vec<Completion>,
    /// What stopped receives had received, for `take_received`.
    leftover: Vec<(RawFd, Received)>,
    /// Sends queued and perhaps not yet taken by the kernel: those it has
    /// not taken when the ring is left (another thread's, below) are
    /// queued again on the new one.
    sends: Vec<QueuedSend>,
    /// The entries pushed to the current ring's submission queue.
    pushed: u64,
    generation: u32,
}

/// io_uring cannot be had here: the errno and message of the `OSError`
/// `ProactorEventLoop()` raises, saying why and what works instead.
#[derive(Debug)]
pub struct Unavailable {
    /// `io_uring_setup`'s errno (ENOSYS for a kernel too old).
    pub errno: i32,
    /// Why, and that the selector loop works.
    pub message: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unavailable {}

impl Unavailable {
    fn error(errno: i32, why: &str, detail: &str) -> io::Error {
        let message = format!(
            "io_uring is not available: {why}{detail}; the selector loop \
             (oxloop.new_event_loop()) works here"
        );
        let kind = io::Error::from_raw_os_error(errno).kind();
        io::Error::new(kind, Unavailable { errno, message })
    }

    /// From `io_uring_setup`'s error.
    fn setup_failed(err: io::Error) -> io::Error {
        let why = match err.raw_os_error() {
            Some(libc::ENOSYS) => {
                "the kernel has no io_uring, or a seccomp filter (such as Docker's default \
                 profile) hides it"
            }
            Some(libc::EPERM) => match sysctl_disabled().as_deref() {
                Some("2") => "it is disabled by /proc/sys/kernel/io_uring_disabled",
                Some("1") => {
                    "/proc/sys/kernel/io_uring_disabled restricts it to the \
                     kernel.io_uring_group group, or a seccomp filter denies it"
                }
                _ => {
                    "a seccomp filter (such as Docker's default profile) or a security \
                     module denies it"
                }
            },
            Some(libc::ENOMEM) => "the ring's memory could not be locked (RLIMIT_MEMLOCK)",
            _ => "io_uring_setup failed",
        };
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        Self::error(errno, why, &format!(" ({err})"))
    }
}

/// `/proc/sys/kernel/io_uring_disabled`, where the kernel has it.
fn sysctl_disabled() -> Option<String> {
    let value = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?;
    Some(value.trim().to_owned())
}

/// Refuses what epoll refuses: a regular file or a directory is always
/// ready, so asyncio's `add_reader` raises `PermissionError` for it.
fn check_pollable(fd: RawFd) -> io::Result<()> {
    // SAFETY: `stat` is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live `stat` for fstat to fill in; the result is checked.
    crate::sys::check(unsafe { libc::fstat(fd, &mut st) })?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => Err(io::Error::from_raw_os_error(libc::EPERM)),
        _ => Ok(()),
    }
}

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// How the ring runs its completions' task work, best first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskRun {
    /// DEFER_TASKRUN (Linux 6.1): only in this thread's waits, so the
    /// kernel writes into the receive buffers only while the loop's thread
    /// is in `io_uring_enter` (0.91-0.99x the epoll loop's CPU per request
    /// at 1 KiB, against 1.04-1.21x with COOP_TASKRUN). Needs a single
    /// submitting thread.
    Deferred,
    /// COOP_TASKRUN (5.19): at this thread's next entry into the kernel;
    /// without it every completion interrupts the thread (2.5x the CPU per
    /// request at 1 KiB).
    Cooperative,
    /// Neither: as each completion arrives.
    Interrupting,
}

/// A ring of `ENTRIES`; its buffers for receives only where task work is
/// deferred (see [`TaskRun::Deferred`]) and the kernel has multishot
/// receive.
fn open_ring() -> io::Result<(IoUring, Option<Arc<BufRing>>)> {
    let build = |run: TaskRun| {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES);
        match run {
            TaskRun::Deferred => {
                // SUBMIT_ALL (5.18): a failed entry does not stop the rest,
                // so every entry queued is taken by the next submission.
                builder
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            TaskRun::Cooperative => {
                builder.setup_coop_taskrun();
            }
            TaskRun::Interrupting => {}
        }
        builder.build(ENTRIES)
    };
    let mut run = TaskRun::Deferred;
    let mut ring = loop {
        match build(run) {
            // An older kernel does not know the flags.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && run != TaskRun::Interrupting => {
                run = match run {
                    TaskRun::Deferred => TaskRun::Cooperative,
                    _ => TaskRun::Interrupting,
                };
            }
            r => break r.map_err(Unavailable::setup_failed)?,
        }
    };
    if !ring.params().is_feature_ext_arg() {
        // A wait's timeout is IORING_ENTER_EXT_ARG's (Linux 5.11).
        return Err(Unavailable::error(
            libc::ENOSYS,
            "the kernel's io_uring is older than Linux 5.11 (no IORING_FEAT_EXT_ARG)",
            "",
        ));
    }
    let bufs = match run {
        TaskRun::Deferred => buffer_ring(&mut ring),
        _ => None,
    };
    Ok((ring, bufs))
}

impl Uring {
    /// Creates the ring (see [`open_ring`]) and the epoll set; an
    /// [`Unavailable`] error where io_uring cannot be had.
    pub fn new(waker: Arc<Waker>) -> io::Result<Self> {
        let epoll = Epoll::new(waker)?;
        let (ring, bufs) = open_ring()?;
        Ok(Self {
            ring: Some(ring),
            bufs,
            epoll,
            watched: FxHashMap::default(),
            reported: Vec::new(),
            epoll_idle: true,
            epoll_token: 0,
            issuer: std::thread::current().id(),
            early: Vec::new(),
            done: Vec::new(),
            leftover: Vec::new(),
            sends: Vec::new(),
            pushed: 0,
            generation: 0,
        })
    }

    /// Moves the backend to a ring of this thread's when another thread
    /// made the current one.
    fn adopt(&mut self) -> io::Result<()> {
        if self.ring.is_some() && self.issuer != std::thread::current().id() {
            self.migrate()?;
        }
        Ok(())
    }

    /// Moves to a new ring made on this thread, every watch armed afresh by
    /// the next wait. The completions the old ring posted are reported by
    /// that wait, before any of the new ring's; closing it cancels the rest.
    /// Nothing is lost: a receive's task work, which reads the socket, runs
    /// only in its issuer's waits, so what it did not run stays in the
    /// socket for the new receive.
    fn migrate(&mut self) -> io::Result<()> {
        // The sends the old ring never took are made by the new one.
        self.forget_taken_sends();
        let mut old = std::mem::take(&mut self.done);
        if let Some(mut ring) = self.ring.take() {
            old.extend(ring.completion().map(completion));
        }
        let mut early = std::mem::take(&mut self.early);
        for (token, res, flags) in old {
            if token != self.epoll_token {
                self.complete(token, res, flags, &mut early);
            }
        }
        self.early = early;
        let (ring, bufs) = open_ring()?;
        self.ring = Some(ring);
        self.bufs = bufs;
        self.issuer = std::thread::current().id();
        let receives = self.bufs.is_some();
        let fds: Vec<RawFd> = self.watched.keys().copied().collect();
        for fd in fds {
            let (token, recv_token) = (self.next_token(fd), self.next_token(fd));
            if let Some(w) = self.watched.get_mut(&fd) {
                w.token = token;
                w.in_flight = false;
                if let Some(r) = w.recv.as_mut() {
                    r.token = recv_token;
                    r.live = false;
                }
                if !receives && w.recv.is_some() {
                    // Its reader reads by no system call any more.
                    return Err(io::Error::other(
                        "io_uring: the receive buffers could not be set up on this thread",
                    ));
                }
            }
            self.reported.push(fd);
        }
        self.epoll_idle = true;
        self.pushed = 0;
        for send in std::mem::take(&mut self.sends) {
            self.queue_send(send.fd, send.addr, send.len)?;
        }
        Ok(())
    }

    fn ring(&mut self) -> io::Result<&mut IoUring> {
        self.ring.as_mut().ok_or_else(closed)
    }

    /// Queues `entry`, submitting what is queued first when the queue is
    /// full (and, when the kernel wants room for completions first, moving
    /// them to [`Uring::done`] for the next wait).
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            let ring = self.ring.as_mut().ok_or_else(closed)?;
            // SAFETY: polls, receives and their cancellations point at no
            // memory of ours: a receive's buffers are the ring's, which
            // outlives every receive (see `close`); a send's bytes are its
            // caller's to keep until it ended (see `Backend::send`).
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                self.pushed += 1;
                return Ok(());
            }
            self.submit_queued()?;
        }
    }

    /// Submits what is queued; when the kernel wants room for completions
    /// first, moves them to [`Uring::done`] for the next wait.
    fn submit_queued(&mut self) -> io::Result<()> {
        let ring = self.ring.as_mut().ok_or_else(closed)?;
        match ring.submit() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                self.done.extend(ring.completion().map(completion));
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Queues a send of the `len` bytes at `addr` on `fd`, which ends
    /// within the submission that makes it (`MSG_DONTWAIT`).
    fn queue_send(&mut self, fd: RawFd, addr: usize, len: usize) -> io::Result<()> {
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(fd), addr as *const u8, len32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(send_token(fd));
        self.push(entry)?;
        let seq = self.pushed - 1;
        self.sends.push(QueuedSend { fd, addr, len, seq });
        Ok(())
    }

    /// Forgets the sends the kernel has taken: they have ended.
    fn forget_taken_sends(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            let taken = self.pushed - ring.submission().len() as u64;
            self.sends.retain(|s| s.seq >= taken);
        }
    }

    /// Queues a poll of `fd` for `mask` under `token`.
    fn arm(&mut self, fd: RawFd, mask: u32, token: u64) -> io::Result<()> {
        self.push(
            opcode::PollAdd::new(types::Fd(fd), mask)
                .build()
                .user_data(token),
        )
    }

    /// Cancels the poll queued under `token`: submitted at once, and the
    /// task work that ends the poll run (deferred task work runs only in a
    /// wait for completions: the removal's own is one), so the kernel lets
    /// go of the file before the caller closes it.
    fn cancel(&mut self, token: u64) -> io::Result<()> {
        self.push(opcode::PollRemove::new(token).build().user_data(REMOVAL))?;
        match self.ring()?.submit_and_wait(1) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Stops watching `fd` by poll operations and receives; whether it was.
    fn unwatch(&mut self, fd: RawFd) -> io::Result<bool> {
        let Some(mut w) = self.watched.remove(&fd) else {
            return Ok(false);
        };
        if let Some(recv) = w.recv.take() {
            self.stop_receiving(fd, recv)?;
        }
        if w.in_flight {
            self.cancel(w.token)?;
        }
        Ok(true)
    }

    fn next_token(&mut self, fd: RawFd) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        (u64::from(self.generation) << 32) | u64::from(fd as u32)
    }

    /// Queues the multishot receive of `fd` under `token`.
    fn arm_recv(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), bufring::GROUP)
                .build()
                .user_data(token),
        )
    }

    /// Cancels the receives of `fd` and waits for their last completions,
    /// so that the kernel reads no more from the socket for this reader and
    /// lets go of its file before the caller closes it. What they received
    /// (after the completions already reported) is kept for
    /// `take_received`, in order.
    fn stop_receiving(&mut self, fd: RawFd, recv: Recv) -> io::Result<()> {
        let early = std::mem::take(&mut self.early);
        for ev in early {
            match ev {
                Event {
                    fd: f,
                    received: Some(r),
                    ..
                } if f == fd => self.leftover.push((fd, r)),
                ev => self.early.push(ev),
            }
        }
        let mut live = Vec::new();
        if recv.live {
            live.push(recv.token);
        }
        let earlier = std::mem::take(&mut self.done);
        for c in earlier {
            if live.contains(&c.0) {
                self.leftover_of(fd, c, &mut live);
            } else {
                self.done.push(c);
            }
        }
        for &token in &live {
            self.push(opcode::AsyncCancel::new(token).build().user_data(REMOVAL))?;
        }
        let deadline = std::time::Instant::now() + REAP_LIMIT;
        let mut submitted = false;
        while !live.is_empty() {
            let ring = self.ring.as_mut().ok_or_else(closed)?;
            let reaped: Vec<Completion> = ring.completion().map(completion).collect();
            for c in reaped {
                if live.contains(&c.0) {
                    self.leftover_of(fd, c, &mut live);
                } else {
                    self.done.push(c);
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if live.is_empty() || (submitted && left.is_zero()) {
                break;
            }
            let ring = self.ring.as_mut().ok_or_else(closed)?;
            let ts = types::Timespec::from(left.min(Duration::from_millis(10)));
            let args = types::SubmitArgs::new().timespec(&ts);
            match ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            submitted = true;
        }
        Ok(())
    }

    /// Keeps what completion `c` of a stopped receive of `fd` received;
    /// its last one leaves `live`.
    fn leftover_of(&mut self, fd: RawFd, (token, res, flags): Completion, live: &mut Vec<u64>) {
        if !cqueue::more(flags) {
            live.retain(|&t| t != token);
        }
        if let Some(received) = self.received(res, flags) {
            self.leftover.push((fd, received));
        }
    }

    /// What a receive's completion says: bytes (the buffer lent), the end
    /// of the file, an error; None for the ends that only mean arming it
    /// again (out of buffers, cancelled).
    fn received(&self, res: i32, flags: u32) -> Option<Received> {
        let chunk = cqueue::buffer_select(flags)
            .zip(self.bufs.as_ref())
            .map(|(bid, bufs)| bufs.lend(bid, res.max(0) as usize));
        match res {
            n if n > 0 => chunk.map(Received::Data),
            0 => Some(Received::Eof),
            e if e == -libc::ENOBUFS || e == -libc::ECANCELED => None,
            e => Some(Received::Error(-e)),
        }
    }

    /// Arms again the polls and receives of the fds reported and still
    /// watched, and the epoll set's.
    ///
    /// One-shot fds of the epoll set that reported are armed in it again
    /// too: a disarmed one would never make the set readable.
    fn rearm(&mut self) -> io::Result<()> {
        self.epoll.rearm()?;
        if self.epoll_idle {
            let fd = self.epoll.fd().ok_or_else(closed)?;
            let token = self.next_token(EPOLL_FD);
            self.arm(fd, libc::POLLIN as u32, token)?;
            self.epoll_token = token;
            self.epoll_idle = false;
        }
        while let Some(&fd) = self.reported.last() {
            if let Some(w) = self.watched.get(&fd) {
                let poll = (w.mask != 0 && !w.in_flight).then_some((w.mask, w.token));
                let recv = w.recv.as_ref().filter(|r| !r.live && !r.ended);
                let recv = recv.map(|r| r.token);
                if let Some((mask, token)) = poll {
                    self.arm(fd, mask, token)?;
                }
                if let Some(token) = recv {
                    self.arm_recv(fd, token)?;
                }
                if let Some(w) = self.watched.get_mut(&fd) {
                    w.in_flight |= poll.is_some();
                    if let (Some(r), true) = (w.recv.as_mut(), recv.is_some()) {
                        r.live = true;
                    }
                }
            }
            self.reported.pop();
        }
        Ok(())
    }

    /// Lets go of the ring and what it watches. Closing the ring cancels
    /// every operation in flight; the receive buffers may go with it, since
    /// the kernel writes into them only in this backend's waits.
    fn release(&mut self) {
        self.ring = None;
        self.bufs = None;
        self.epoll.close();
        self.watched.clear();
        self.reported.clear();
        self.leftover.clear();
        self.early.clear();
        self.done.clear();
        self.sends.clear();
    }
}

/// The `user_data` of the receive that probes for multishot receive.
const PROBE: u64 = u64::MAX - 2;

/// The buffer ring, where the kernel has multishot receive into one
/// (Linux 6.0; the ring itself is 5.19's): a receive armed on a fresh
/// socket pair with a byte waiting must report it and go on. None: readers
/// are polled.
fn buffer_ring(ring: &mut IoUring) -> Option<Arc<BufRing>> {
    let bufs = BufRing::register(ring).ok()?;
    let mut fds = [0; 2];
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two descriptors; the result is checked.
    if unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: both fds were just created and are owned here.
    let pair = unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] };
    // SAFETY: writes one byte from a static buffer.
    unsafe { libc::write(pair[1].as_raw_fd(), b"x".as_ptr().cast(), 1) };
    let entry = opcode::RecvMulti::new(types::Fd(pair[0].as_raw_fd()), bufring::GROUP)
        .build()
        .user_data(PROBE);
    // SAFETY: the receive's buffers are the ring's, alive until it ends.
    unsafe { ring.submission().push(&entry) }.ok()?;
    let mut works = None;
    let mut ended = false;
    for _ in 0..100 {
        let ts = types::Timespec::from(Duration::from_millis(10));
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(1, &args);
        let reaped: Vec<Completion> = ring.completion().map(completion).collect();
        for (token, res, flags) in reaped {
            if token != PROBE {
                continue;
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                drop(bufs.lend(bid, 0));
            }
            ended |= !cqueue::more(flags);
            if works.is_none() {
                works = Some(res == 1 && !ended);
                let cancel = opcode::AsyncCancel::new(PROBE).build().user_data(REMOVAL);
                // SAFETY: a cancellation points at no memory of ours.
                let _ = unsafe { ring.submission().push(&cancel) };
            }
        }
        if ended {
            break;
        }
    }
    match (works, ended) {
        (Some(true), true) => Some(bufs),
        // A receive that may still write into the buffers keeps them.
        (_, false) => {
            std::mem::forget(bufs);
            None
        }
        _ => {
            // Nothing selects from the group any more: let the kernel go of it.
            let _ = ring.submitter().unregister_buf_ring(bufring::GROUP);
            None
        }
    }
}

/// A completion queue entry as `(user_data, result, flags)`.
fn completion(c: cqueue::Entry) -> Completion {
    (c.user_data(), c.result(), c.flags())
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.release();
    }
}

impl Uring {
    /// Moves `w`, the watch of `fd`, to interest `new`: its poll (for what
    /// is not received) and its receive.
    fn change_watch(&mut self, fd: RawFd, w: &mut Watch, new: Interest) -> io::Result<()> {
        let receive = new.receive && self.bufs.is_some();
        let mut mask = new.poll_events();
        if receive {
            mask &= !(libc::POLLIN as u32);
        }
        if mask != w.mask || (mask != 0 && !w.in_flight) {
            if std::mem::take(&mut w.in_flight) {
                self.cancel(w.token)?;
            }
            w.mask = mask;
            if mask != 0 {
                w.token = self.next_token(fd);
                self.arm(fd, mask, w.token)?;
                w.in_flight = true;
            }
        }
        match (w.recv.take(), receive) {
            (Some(recv), false) => self.stop_receiving(fd, recv)?,
            (None, true) => {
                // Kept for an earlier reader of this fd number and never
                // taken: not this one's.
                self.leftover.retain(|(f, _)| *f != fd);
                let token = self.next_token(fd);
                self.arm_recv(fd, token)?;
                w.recv = Some(Recv {
                    token,
                    live: true,
                    ..Recv::default()
                });
            }
            (recv, _) => w.recv = recv,
        }
        Ok(())
    }
}

impl Backend for Uring {
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()> {
        self.ring()?;
        self.adopt()?;
        let polled = !new.is_empty() && new.held;
        if !old.is_empty() && !old.held && (polled || new.is_empty()) {
            self.epoll.set_interest(fd, old, Interest::default())?;
        }
        if !polled {
            self.unwatch(fd)?;
            if new.is_empty() {
                return Ok(());
            }
            let known = if old.held { Interest::default() } else { old };
            return self.epoll.set_interest(fd, known, new);
        }
        let mut w = match self.watched.remove(&fd) {
            Some(w) => w,
            None => {
                check_pollable(fd)?;
                Watch::default()
            }
        };
        let changed = self.change_watch(fd, &mut w, new);
        // Kept even when a submission failed: what is in flight stays known.
        self.watched.insert(fd, w);
        changed
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        self.ring()?;
        if self.watched.is_empty() && self.epoll_idle && self.sends.is_empty() {
            // Only late completions are left to reap: of operations removed
            // (a receive's buffer goes back to the ring) and of sends made
            // before their wait (`flush_sends`), which are reported.
            let ring = self.ring.as_mut().ok_or_else(closed)?;
            let late: Vec<Completion> = ring.completion().map(completion).collect();
            for (token, res, flags) in self.done.drain(..).chain(late).collect::<Vec<_>>() {
                self.complete(token, res, flags, events);
            }
            return self.epoll.wait(timeout, events);
        }
        self.adopt()?;
        events.append(&mut self.early);
        self.rearm()?;
        let ring = self.ring.as_mut().ok_or_else(closed)?;
        let ready = !ring.completion().is_empty() || !self.done.is_empty();
        let blocking = !ready && timeout != Some(Duration::ZERO);
        // Sends end as they are submitted: their results end the wait.
        let entered = match timeout {
            _ if !blocking => ring.submit(),
            None => ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        self.forget_taken_sends();
        match entered {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EBUSY)) => {}
            // The kernel dropped completions: every watch armed afresh.
            Err(e) if e.raw_os_error() == Some(libc::EBADR) => return self.migrate(),
            Err(e) => return Err(e),
        }
        let ring = self.ring.as_mut().ok_or_else(closed)?;
        if blocking && ring.completion().is_empty() {
            // A wait that submitted returns the count submitted, not that a
            // signal (or the timeout) ended it: the engine checks signals.
            return Err(io::ErrorKind::Interrupted.into());
        }
        let mut done = std::mem::take(&mut self.done);
        done.extend(ring.completion().map(completion));
        let mut result = Ok(());
        for (token, res, flags) in done.drain(..) {
            if token == self.epoll_token {
                self.epoll_idle = true;
                result = self.epoll.wait(Some(Duration::ZERO), events);
            } else {
                self.complete(token, res, flags, events);
            }
        }
        self.done = done;
        result
    }

    fn waits_detached(&self) -> bool {
        true
    }

    fn receives(&self) -> bool {
        self.bufs.is_some()
    }

    fn sends(&self) -> bool {
        self.bufs.is_some()
    }

    unsafe fn send(&mut self, fd: RawFd, ptr: *const u8, len: usize) -> io::Result<()> {
        self.ring()?;
        self.adopt()?;
        self.queue_send(fd, ptr as usize, len)
    }

    fn flush_sends(&mut self) -> io::Result<()> {
        if self.sends.is_empty() {
            return Ok(());
        }
        self.adopt()?;
        while !self.sends.is_empty() {
            self.submit_queued()?;
            self.forget_taken_sends();
        }
        Ok(())
    }

    fn take_received(&mut self, fd: RawFd, into: &mut Vec<Received>) {
        if self.leftover.is_empty() {
            return;
        }
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leftover)
            .into_iter()
            .partition(|(f, _)| *f == fd);
        self.leftover = others;
        into.extend(mine.into_iter().map(|(_, r)| r));
    }

    fn close(&mut self) {
        // Their bytes were handed to the loop to send, as a system call
        // would have sent them at once; no report will be taken.
        let _ = self.flush_sends();
        self.release();
    }

    fn reopen(&mut self, waker: Arc<Waker>) -> io::Result<bool> {
        // Letting go unmaps this process's copy of the parent's ring (so no
        // later call writes into it, even if a new ring cannot be made) and
        // closes its fd; the parent's operations stay as they are.
        self.release();
        *self = Uring::new(waker)?;
        Ok(true)
    }
}

impl Uring {
    /// Turns one completion into a report, if it is a current poll's or
    /// one of a watched fd's receives'.
    fn complete(&mut self, token: u64, res: i32, flags: u32, events: &mut Vec<Event>) {
        if token == REMOVAL || token == PROBE {
            return;
        }
        if let Some(fd) = sent_fd(token) {
            return events.push(Event::sent(fd, res));
        }
        let fd = token as u32 as RawFd;
        let watch = self.watched.get(&fd);
        if watch
            .and_then(|w| w.recv.as_ref())
            .is_some_and(|r| r.live && r.token == token)
        {
            return self.complete_recv(fd, res, flags, events);
        }
        let Some(w) = self.watched.get_mut(&fd).filter(|w| w.token == token) else {
            // A stale receive's buffer goes back to the ring.
            drop(self.received(res, flags));
            return;
        };
        w.in_flight = false;
        self.reported.push(fd);
        let bits = if res < 0 {
            // The fd was closed behind the loop's back: wake its watchers,
            // whose syscall then says why.
            (libc::POLLERR | libc::POLLHUP) as u32
        } else {
            res as u32
        };
        events.push(Event::from_revents(fd, bits));
    }

    /// A completion of one of `fd`'s receives: what it received is
    /// reported; a receive that ended for want of buffers (or was cancelled
    /// by its thread's exit) is armed again by the next wait.
    fn complete_recv(&mut self, fd: RawFd, res: i32, flags: u32, events: &mut Vec<Event>) {
        let received = self.received(res, flags);
        let Some(r) = self.watched.get_mut(&fd).and_then(|w| w.recv.as_mut()) else {
            return;
        };
        if !cqueue::more(flags) {
            r.live = false;
            r.ended = matches!(received, Some(Received::Eof | Received::Error(_)));
            if !r.ended {
                self.reported.push(fd);
            }
        }
        if let Some(received) = received {
            events.push(Event::received(fd, received));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::socketpair;
    use crate::testing::watch::{self, assert_peer_closed, send_byte, NONE};
    use std::os::fd::AsRawFd;

    /// The loop's own watches: poll operations.
    const R: Interest = Interest {
        held: true,
        ..watch::R
    };
    const W: Interest = Interest {
        held: true,
        ..watch::W
    };
    /// A user's watch: in the epoll set.
    const USER_R: Interest = watch::R;
    /// A socket transport's reader: received for.
    const RECV: Interest = Interest { receive: true, ..R };

    /// The bytes of what was received, and whether the end came.
    fn bytes_of(received: impl IntoIterator<Item = Received>) -> (Vec<u8>, bool) {
        let (mut bytes, mut eof) = (Vec::new(), false);
        for r in received {
            match r {
                Received::Data(chunk) => bytes.extend_from_slice(chunk.bytes()),
                Received::Eof => eof = true,
                Received::Error(e) => panic!("receive failed: {e}"),
            }
        }
        (bytes, eof)
    }

    fn send(fd: RawFd, bytes: &[u8]) {
        // SAFETY: writes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    /// Waits until `want` bytes (and the end, with `eof`) were received.
    fn receive(ring: &mut Uring, want: usize, eof: bool) -> Vec<u8> {
        let (mut bytes, mut ended) = (Vec::new(), false);
        for _ in 0..100 {
            if bytes.len() >= want && ended == eof {
                break;
            }
            let evs = reported(ring, Duration::from_millis(100));
            let (b, e) = bytes_of(evs.into_iter().filter_map(|e| e.received));
            bytes.extend(b);
            ended |= e;
        }
        bytes
    }

    /// What one wait reports; a wait that may have been ended by a signal
    /// (as the engine takes it: signals checked, nothing reported) is empty.
    fn reported(ring: &mut Uring, timeout: Duration) -> Vec<Event> {
        let mut evs = Vec::new();
        match ring.wait(Some(timeout), &mut evs) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => assert!(evs.is_empty()),
            r => r.unwrap(),
        }
        evs
    }

    fn uring() -> Uring {
        Uring::new(Arc::new(Waker::new().unwrap())).unwrap()
    }

    #[test]
    fn reports_readiness_level_triggered() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        ring.set_interest(fd, NONE, R).unwrap();
        assert!(reported(&mut ring, Duration::ZERO).is_empty());
        send_byte(b.as_raw_fd());
        let ready = || Event::from_revents(fd, libc::POLLIN as u32);
        for _ in 0..3 {
            assert_eq!(reported(&mut ring, Duration::from_secs(1)), vec![ready()]);
        }
        ring.set_interest(fd, R, W).unwrap();
        let evs = reported(&mut ring, Duration::from_secs(1));
        assert_eq!(evs.len(), 1);
        assert!(evs[0].writable && !evs[0].readable);
        ring.set_interest(fd, W, NONE).unwrap();
        assert!(reported(&mut ring, Duration::from_millis(10)).is_empty());
    }

    #[test]
    fn a_wait_ends_at_its_timeout() {
        let mut ring = uring();
        let (a, _b) = socketpair();
        ring.set_interest(a.as_raw_fd(), NONE, R).unwrap();
        let start = std::time::Instant::now();
        assert!(reported(&mut ring, Duration::from_millis(20)).is_empty());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn waker_ends_wait_without_an_event() {
        let waker = Arc::new(Waker::new().unwrap());
        let mut ring = Uring::new(waker.clone()).unwrap();
        for _ in 0..2 {
            waker.wake();
            let start = std::time::Instant::now();
            assert!(reported(&mut ring, Duration::from_secs(5)).is_empty());
            assert!(start.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn a_removed_watch_lets_go_of_the_socket() {
        let mut ring = uring();
        let (a, b) = socketpair();
        ring.set_interest(a.as_raw_fd(), NONE, R).unwrap();
        reported(&mut ring, Duration::ZERO);
        ring.set_interest(a.as_raw_fd(), R, NONE).unwrap();
        drop(a);
        // The peer sees the close at once: no poll holds the socket open.
        assert_peer_closed(b.as_raw_fd());
    }

    #[test]
    fn a_user_s_socket_closed_while_watched_closes() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let (c, d) = socketpair();
        // One fd each way: the wait goes through the ring.
        ring.set_interest(a.as_raw_fd(), NONE, USER_R).unwrap();
        ring.set_interest(c.as_raw_fd(), NONE, R).unwrap();
        send_byte(b.as_raw_fd());
        send_byte(d.as_raw_fd());
        let mut fds: Vec<_> = reported(&mut ring, Duration::from_secs(1))
            .iter()
            .map(|e| e.fd)
            .collect();
        while fds.len() < 2 {
            fds.extend(
                reported(&mut ring, Duration::from_secs(1))
                    .iter()
                    .map(|e| e.fd),
            );
        }
        fds.sort();
        let mut both = vec![a.as_raw_fd(), c.as_raw_fd()];
        both.sort();
        assert_eq!(fds, both);
        // Level-triggered on both sides.
        assert_eq!(reported(&mut ring, Duration::from_secs(1)).len(), 2);
        // The user reads what came and closes `a` without removing its
        // watch: the peer sees the close.
        let mut buf = [0u8; 2];
        // SAFETY: reads at most two bytes into a local buffer.
        let n = unsafe { libc::read(a.as_raw_fd(), buf.as_mut_ptr().cast(), 2) };
        assert_eq!(n, 1);
        drop(a);
        // SAFETY: reads at most two bytes into a local buffer.
        let n = unsafe { libc::read(b.as_raw_fd(), buf.as_mut_ptr().cast(), 2) };
        assert_eq!(n, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn a_one_shot_wait_still_watched_is_reported_again() {
        // A `sock_*` wait that found nothing to do waits on, in the epoll
        // set, while a transport's fd has a poll operation.
        let mut ring = uring();
        let (a, b) = socketpair();
        let (c, _d) = socketpair();
        let once = watch::R_ONCE;
        ring.set_interest(c.as_raw_fd(), NONE, R).unwrap();
        ring.set_interest(a.as_raw_fd(), NONE, once).unwrap();
        send_byte(b.as_raw_fd());
        for _ in 0..3 {
            let fds: Vec<_> = reported(&mut ring, Duration::from_secs(1))
                .iter()
                .map(|e| e.fd)
                .collect();
            assert_eq!(fds, vec![a.as_raw_fd()]);
        }
    }

    #[test]
    fn receives_bytes_in_order_then_the_end() {
        let mut ring = uring();
        assert!(ring.receives());
        let (a, b) = socketpair();
        ring.set_interest(a.as_raw_fd(), NONE, RECV).unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for part in sent.chunks(50_000) {
            send(b.as_raw_fd(), part);
        }
        drop(b);
        assert_eq!(receive(&mut ring, sent.len(), true), sent);
    }

    #[test]
    fn a_stopped_receive_keeps_what_it_received_and_lets_go() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        ring.set_interest(fd, NONE, RECV).unwrap();
        send(b.as_raw_fd(), b"first");
        let got = receive(&mut ring, 5, false);
        assert_eq!(got, b"first");
        // Received by the kernel but not yet reported when the reader stops.
        send(b.as_raw_fd(), b"second");
        std::thread::sleep(Duration::from_millis(20));
        ring.set_interest(fd, RECV, NONE).unwrap();
        let mut kept = Vec::new();
        ring.take_received(fd, &mut kept);
        let (kept, _) = bytes_of(kept);
        // What the receive did not take is still in the socket.
        let mut rest = [0u8; 16];
        // SAFETY: reads into a local buffer of that size.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        let rest = &rest[..n.max(0) as usize];
        assert_eq!([kept.as_slice(), rest].concat(), b"second");
        drop(a);
        // The peer sees the close at once: no receive holds the socket.
        assert_peer_closed(b.as_raw_fd());
    }

    #[test]
    fn a_receiving_fd_is_polled_for_writing_too() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        let both = Interest {
            writable: true,
            ..RECV
        };
        ring.set_interest(fd, NONE, both).unwrap();
        let evs = reported(&mut ring, Duration::from_secs(1));
        assert!(evs.iter().any(|e| e.writable && e.received.is_none()));
        // Dropping the writer keeps the receive.
        ring.set_interest(fd, both, RECV).unwrap();
        send(b.as_raw_fd(), b"data");
        assert_eq!(receive(&mut ring, 4, false), b"data");
    }

    #[test]
    fn a_ring_used_by_another_thread_moves_losing_nothing() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        ring.set_interest(fd, NONE, RECV).unwrap();
        send(b.as_raw_fd(), b"before");
        assert_eq!(receive(&mut ring, 6, false), b"before");
        // Received on this thread's ring but not yet reported, and sent
        // after: both come through the other thread's ring, in order.
        send(b.as_raw_fd(), b"one,");
        let mut evs = Vec::new();
        ring.wait(Some(Duration::ZERO), &mut evs).ok();
        let (mut got, _) = bytes_of(evs.into_iter().filter_map(|e| e.received));
        let ring = std::thread::spawn(move || {
            send(b.as_raw_fd(), b"two");
            got.extend(receive(&mut ring, 7 - got.len(), false));
            assert_eq!(got, b"one,two");
            drop(b);
            ring
        })
        .join()
        .unwrap();
        drop(ring);
    }

    #[test]
    fn regular_files_are_refused() {
        let mut ring = uring();
        let f = std::fs::File::open("Cargo.toml").unwrap();
        for interest in [R, USER_R] {
            let err = ring
                .set_interest(f.as_raw_fd(), NONE, interest)
                .unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        }
    }

    /// What `fd` has to read now (nothing: empty), up to 64 KiB.
    fn readable_now(fd: RawFd) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        // SAFETY: reads into a local buffer of that size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        buf
    }

    #[test]
    fn a_send_is_made_by_the_next_wait_and_reported() {
        let mut ring = uring();
        assert!(ring.sends());
        let (a, b) = socketpair();
        let data = b"hello".to_vec();
        // SAFETY: `data` outlives the wait that reports the send.
        unsafe { ring.send(a.as_raw_fd(), data.as_ptr(), data.len()) }.unwrap();
        assert_eq!(readable_now(b.as_raw_fd()), b"");
        let evs = reported(&mut ring, Duration::from_secs(1));
        assert_eq!(evs, vec![Event::sent(a.as_raw_fd(), 5)]);
        assert_eq!(readable_now(b.as_raw_fd()), b"hello");
    }

    #[test]
    fn a_send_to_a_full_socket_ends_at_once_having_sent_nothing() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        let block = [1u8; 65536];
        // SAFETY: writes from a live buffer until the socket takes no more.
        while unsafe { libc::write(fd, block.as_ptr().cast(), block.len()) } > 0 {}
        let data = [7u8; 100];
        // SAFETY: `data` outlives the wait that reports the send.
        unsafe { ring.send(fd, data.as_ptr(), data.len()) }.unwrap();
        let evs = reported(&mut ring, Duration::from_secs(5));
        assert_eq!(evs, vec![Event::sent(fd, -libc::EAGAIN)]);
        let mut drained = 0;
        loop {
            let got = readable_now(b.as_raw_fd());
            if got.is_empty() {
                break;
            }
            assert!(
                got.iter().all(|&x| x == 1),
                "the failed send's bytes arrived"
            );
            drained += got.len();
        }
        assert!(drained > 0);
    }

    #[test]
    fn flushed_sends_are_made_at_once_and_reported_by_the_next_wait() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let data = b"now".to_vec();
        // SAFETY: `data` outlives the flush, which ends the send.
        unsafe { ring.send(a.as_raw_fd(), data.as_ptr(), data.len()) }.unwrap();
        ring.flush_sends().unwrap();
        assert_eq!(readable_now(b.as_raw_fd()), b"now");
        drop(data);
        let evs = reported(&mut ring, Duration::from_secs(1));
        assert_eq!(evs, vec![Event::sent(a.as_raw_fd(), 3)]);
    }

    #[test]
    fn closing_makes_the_queued_sends() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let data = b"last words".to_vec();
        // SAFETY: `data` outlives the close, which ends the send.
        unsafe { ring.send(a.as_raw_fd(), data.as_ptr(), data.len()) }.unwrap();
        ring.close();
        assert_eq!(readable_now(b.as_raw_fd()), b"last words");
    }

    #[test]
    fn a_send_queued_on_one_thread_s_ring_is_made_once_by_another_s() {
        let mut ring = uring();
        let (a, b) = socketpair();
        let fd = a.as_raw_fd();
        reported(&mut ring, Duration::ZERO);
        let data = b"moved".to_vec();
        // SAFETY: `data` moves with the ring (its heap block does not) and
        // outlives the wait that reports the send.
        unsafe { ring.send(fd, data.as_ptr(), data.len()) }.unwrap();
        let (ring, data, evs) = std::thread::spawn(move || {
            let evs = reported(&mut ring, Duration::from_secs(1));
            (ring, data, evs)
        })
        .join()
        .unwrap();
        assert_eq!(evs, vec![Event::sent(fd, 5)]);
        assert_eq!(readable_now(b.as_raw_fd()), b"moved");
        drop((ring, data));
    }

    #[test]
    fn a_closed_ring_refuses_work() {
        let mut ring = uring();
        ring.close();
        let (a, _b) = socketpair();
        let err = ring.set_interest(a.as_raw_fd(), NONE, R).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
