//! The io_uring reference TCP echo server: what an echo costs with no Python
//! and completions instead of readiness, with the techniques published
//! figures say io_uring wins by. One thread, one ring (single issuer,
//! deferred task running): a multishot accept; per client a registered
//! (fixed) file and one multishot receive drawing from a provided buffer
//! ring, so one submission serves every read of a connection; the chunks a
//! client sent in one pass echoed from their buffers by one send at the
//! pass's end (a gathered `sendmsg` for several; `SEND_ZC` from
//! `OXLOOP_URING_ZC_MIN` bytes when set: on loopback it only loses), one
//! send in flight per client, each buffer returned to the ring once sent
//! (for a zero-copy send, once the kernel's notification says it let go);
//! every operation of a pass goes to the kernel in one `io_uring_enter`.
//! Two switches measure what the batched sends and the registered files
//! bring: `OXLOOP_URING_SEND=now` sends each chunk by a `send()` system call
//! as it is received, as a loop's `transport.write` does (what the socket
//! does not take goes as an operation), and `OXLOOP_URING_FIXED=0` names
//! clients by their fds.
//! bench/echo.py runs it beside the epoll reference server: the floor an
//! io_uring backend could reach.
//!
//!     oxloop-uring-reference-server CPU
//!
//! Pins itself to CPU, prints its port, serves until killed.

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use oxloop_loadgen::{listen_pinned, raise_fd_limit};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

/// Provided buffers (a power of two) and their size: 256 MiB in all, one
/// per client at a thousand clients of 100 KiB messages, so a message that
/// has arrived is one receive (as the epoll reference's 256 KiB `recv`).
const BUFS: u16 = 1024;
const BUF_SIZE: usize = 256 * 1024;
const GROUP: u16 = 0;
/// The most fixed-file slots (a client's slot is its fd), within the fd limit.
const MAX_SLOTS: u32 = 65536;

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
const SEND_ZC: u64 = 3;

/// `$build`, with `$fd` the client's registered file, or its plain fd when
/// the server runs without registered files.
macro_rules! on_client {
    ($fixed:expr, $slot:expr, |$fd:ident| $build:expr) => {
        if $fixed {
            let $fd = types::Fixed($slot as u32);
            $build
        } else {
            let $fd = types::Fd($slot);
            $build
        }
    };
}

/// The operation's tag in `user_data`: what was asked, the client's slot,
/// and for a zero-copy send its index in `Server::zc_sends`.
fn tag(op: u64, slot: RawFd, index: u32) -> u64 {
    op | (slot as u64) << 2 | (index as u64) << 32
}

fn untag(data: u64) -> (u64, RawFd, u32) {
    (
        data & 3,
        ((data >> 2) & 0x3fff_ffff) as RawFd,
        (data >> 32) as u32,
    )
}

/// The provided buffer ring: its entries (page-aligned, shared with the
/// kernel) and the buffers they point into, which the kernel writes into
/// (so only ever reached through a raw pointer, never a reference).
struct BufRing {
    entries: *mut BufRingEntry,
    slab: *mut u8,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<Self> {
        let bytes = BUFS as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping, checked below; page-aligned
        // as the kernel requires of a buffer ring.
        let entries = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut this = Self {
            entries: entries.cast(),
            // Lives as long as the process, as the ring does.
            slab: Box::leak(vec![0u8; BUFS as usize * BUF_SIZE].into_boxed_slice()).as_mut_ptr(),
            tail: 0,
        };
        // SAFETY: the mapping holds BUFS entries and lives as long as the
        // process (it is never unmapped).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, BUFS, GROUP, 0)?
        };
        for bid in 0..BUFS {
            this.give(bid);
        }
        this.publish();
        Ok(this)
    }

    fn buf(&self, bid: u16) -> *const u8 {
        // SAFETY: `bid < BUFS`, so the offset is inside the slab.
        unsafe { self.slab.add(bid as usize * BUF_SIZE) }
    }

    /// Puts buffer `bid` back at the tail (seen by the kernel once published).
    fn give(&mut self, bid: u16) {
        // SAFETY: the index is masked into the ring's BUFS entries, which
        // the kernel only reads below the published tail.
        let entry = unsafe { &mut *self.entries.add((self.tail & (BUFS - 1)) as usize) };
        entry.set_addr(self.buf(bid) as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given so far the kernel's.
    fn publish(&self) {
        // SAFETY: the ring's tail field overlays the first entry's reserved
        // field, as the kernel's layout has it; written with release order
        // after the entries.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

/// The most chunks one gathered send carries.
const MAX_GATHER: usize = 64;

/// One client: the received chunks still to echo (buffer, length, sent),
/// and the gathered send of the first `in_flight` of them, whose iovecs and
/// message header stay put until its completion (the client's slot in
/// `Server::conns` never moves).
struct Conn {
    chunks: VecDeque<(u16, usize, usize)>,
    in_flight: usize,
    queued: bool,
    receiving: bool,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Conn {
    fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            in_flight: 0,
            queued: false,
            receiving: false,
            iov: Vec::with_capacity(MAX_GATHER),
            // SAFETY: an all-zero msghdr is a valid empty one.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

struct Server {
    ring: IoUring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    /// Per buffer: zero-copy sends the kernel may still read it for, and
    /// whether its chunk was all sent.
    zc_pending: Vec<u16>,
    done_sending: Vec<bool>,
    /// The buffers of each zero-copy send whose notification is still due
    /// (the send's tag holds its index), and the free indexes.
    zc_sends: Vec<Vec<u16>>,
    zc_free: Vec<u32>,
    zc_min: usize,
    /// Clients whose receive stopped for want of buffers.
    starved: Vec<RawFd>,
    /// Clients with chunks to send and no send in flight: their sends go
    /// out at the end of the pass, each gathering every chunk received in it.
    to_send: Vec<RawFd>,
    /// Whether a chunk is sent by a system call as it is received.
    send_now: bool,
    /// Whether clients are registered files.
    fixed: bool,
}

impl Server {
    /// Queues `entry`, making room by submitting what is queued when the ring is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry points into is a provided buffer,
        // which goes back to the ring only when its last operation
        // completed, or a client's iovecs and header, which stay put until
        // its send completes.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn receive(&mut self, slot: RawFd) -> io::Result<()> {
        if let Some(c) = self.conns[slot as usize].as_mut() {
            c.receiving = true;
        }
        let entry = on_client!(self.fixed, slot, |fd| opcode::RecvMulti::new(fd, GROUP)
            .build())
        .user_data(tag(RECV, slot, 0));
        self.push(entry)
    }

    /// Puts the client on the end-of-pass send list if it has chunks to
    /// send and no send in flight.
    fn wants_send(&mut self, slot: RawFd) {
        if let Some(c) = self.conns[slot as usize].as_mut() {
            if c.in_flight == 0 && !c.queued && !c.chunks.is_empty() {
                c.queued = true;
                self.to_send.push(slot);
            }
        }
    }

    /// Sends the rest of the client's chunks (up to MAX_GATHER) in one
    /// operation: a plain send for one chunk, a gathered `sendmsg` for more.
    fn send_next(&mut self, slot: RawFd) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return Ok(());
        };
        c.queued = false;
        if c.in_flight > 0 || c.chunks.is_empty() {
            return Ok(());
        }
        c.iov.clear();
        let mut bids = Vec::new();
        for &(bid, len, sent) in c.chunks.iter().take(MAX_GATHER) {
            c.iov.push(libc::iovec {
                // SAFETY: `sent < len <= BUF_SIZE`: inside buffer `bid`.
                iov_base: unsafe { self.bufs.buf(bid).add(sent) } as *mut _,
                iov_len: len - sent,
            });
            bids.push(bid);
        }
        c.in_flight = c.iov.len();
        c.msg.msg_iov = c.iov.as_mut_ptr();
        c.msg.msg_iovlen = c.iov.len() as _;
        let total: usize = c.iov.iter().map(|v| v.iov_len).sum();
        let fixed = self.fixed;
        let single = c.iov.len() == 1;
        let (ptr, msg) = (
            c.iov[0].iov_base as *const u8,
            &c.msg as *const libc::msghdr,
        );
        let entry = if self.zc_min > 0 && total >= self.zc_min {
            for &bid in &bids {
                self.zc_pending[bid as usize] += 1;
            }
            let index = match self.zc_free.pop() {
                Some(i) => {
                    self.zc_sends[i as usize] = bids;
                    i
                }
                None => {
                    self.zc_sends.push(bids);
                    self.zc_sends.len() as u32 - 1
                }
            };
            let entry = on_client!(fixed, slot, |fd| if single {
                opcode::SendZc::new(fd, ptr, total as u32).build()
            } else {
                opcode::SendMsgZc::new(fd, msg).build()
            });
            entry.user_data(tag(SEND_ZC, slot, index))
        } else {
            let entry = on_client!(fixed, slot, |fd| if single {
                opcode::Send::new(fd, ptr, total as u32).build()
            } else {
                opcode::SendMsg::new(fd, msg).build()
            });
            entry.user_data(tag(SEND, slot, 0))
        };
        self.push(entry)
    }

    /// Buffer `bid` goes back to the ring once sent and let go of.
    fn release(&mut self, bid: u16) {
        if self.done_sending[bid as usize] && self.zc_pending[bid as usize] == 0 {
            self.done_sending[bid as usize] = false;
            self.bufs.give(bid);
        }
    }

    /// Ends a client once nothing of it is in flight or left to send.
    fn close_if_idle(&mut self, slot: RawFd) -> io::Result<()> {
        let idle = self.conns[slot as usize]
            .as_ref()
            .is_some_and(|c| c.in_flight == 0 && !c.receiving && c.chunks.is_empty());
        if idle {
            self.conns[slot as usize] = None;
            if self.fixed {
                self.ring
                    .submitter()
                    .register_files_update(slot as u32, &[-1])?;
            }
            // SAFETY: the fd was accepted here; its fixed slot, if any, was just cleared.
            unsafe { libc::close(slot) };
        }
        Ok(())
    }

    fn accepted(&mut self, fd: RawFd) -> io::Result<()> {
        if fd as usize >= self.conns.len() {
            // SAFETY: an fd this server just accepted and keeps no record of.
            unsafe { libc::close(fd) };
            return Ok(());
        }
        set_nodelay(fd);
        if self.fixed {
            self.ring
                .submitter()
                .register_files_update(fd as u32, &[fd])?;
        }
        self.conns[fd as usize] = Some(Conn::new());
        self.receive(fd)
    }

    fn received(&mut self, slot: RawFd, res: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        if res > 0 {
            let bid = cqueue::buffer_select(flags).expect("a received buffer");
            let Some(c) = self.conns[slot as usize].as_mut() else {
                self.done_sending[bid as usize] = true;
                self.release(bid);
                return Ok(());
            };
            let len = res as usize;
            let sent = if self.send_now && c.in_flight == 0 && c.chunks.is_empty() {
                // SAFETY: buffer `bid` holds the `len` bytes just received.
                let n = unsafe {
                    libc::send(
                        slot,
                        self.bufs.buf(bid).cast(),
                        len,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                n.max(0) as usize
            } else {
                0
            };
            if sent == len {
                self.done_sending[bid as usize] = true;
                self.release(bid);
            } else {
                c.chunks.push_back((bid, len, sent));
                self.wants_send(slot);
            }
        }
        if !more {
            if res == -libc::ENOBUFS {
                self.starved.push(slot);
            } else if res > 0 {
                self.receive(slot)?;
            } else {
                if let Some(c) = self.conns[slot as usize].as_mut() {
                    c.receiving = false;
                }
                self.close_if_idle(slot)?;
            }
        }
        Ok(())
    }

    /// A send's completion; a zero-copy send's is followed by a
    /// notification (its `more` flag says so) once the kernel let go of the
    /// buffers. A send that took part of its chunks leaves the rest first
    /// in line; a failed one drops the client's chunks (the client is gone:
    /// its receive ends too, and then the client).
    fn sent(&mut self, op: u64, slot: RawFd, index: u32, res: i32, flags: u32) -> io::Result<()> {
        if op == SEND_ZC && (cqueue::notif(flags) || !cqueue::more(flags)) {
            let bids = std::mem::take(&mut self.zc_sends[index as usize]);
            self.zc_free.push(index);
            for bid in bids {
                self.zc_pending[bid as usize] -= 1;
                self.release(bid);
            }
            if cqueue::notif(flags) {
                return Ok(());
            }
        }
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return Ok(());
        };
        c.in_flight = 0;
        let mut left = if res < 0 { usize::MAX } else { res as usize };
        while left > 0 {
            let Some(c) = self.conns[slot as usize].as_mut() else {
                break;
            };
            let Some(front) = c.chunks.front_mut() else {
                break;
            };
            let take = left.min(front.1 - front.2);
            front.2 += take;
            left = left.saturating_sub(take);
            if front.2 < front.1 {
                break;
            }
            let (bid, _, _) = c.chunks.pop_front().expect("the front chunk");
            self.done_sending[bid as usize] = true;
            self.release(bid);
        }
        self.wants_send(slot);
        self.close_if_idle(slot)
    }

    fn run(&mut self, lfd: RawFd) -> io::Result<()> {
        let accept = opcode::AcceptMulti::new(types::Fd(lfd))
            .build()
            .user_data(tag(ACCEPT, 0, 0));
        self.push(accept.clone())?;
        let mut done = Vec::new();
        loop {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (data, res, flags) in done.drain(..) {
                let (op, slot, index) = untag(data);
                match op {
                    ACCEPT => {
                        if res >= 0 {
                            self.accepted(res)?;
                        }
                        if !cqueue::more(flags) {
                            self.push(accept.clone())?;
                        }
                    }
                    RECV => self.received(slot, res, flags)?,
                    _ => self.sent(op, slot, index, res, flags)?,
                }
            }
            for slot in std::mem::take(&mut self.to_send) {
                self.send_next(slot)?;
            }
            self.bufs.publish();
            for slot in std::mem::take(&mut self.starved) {
                self.receive(slot)?;
            }
        }
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live int of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of_val(&one) as libc::socklen_t,
        )
    };
}

fn main() -> io::Result<()> {
    let listener = listen_pinned("oxloop-uring-reference-server")?;
    // Completions run when this thread enters the kernel, as a loop's would.
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .or_else(|_| IoUring::new(4096))?;
    let slots = raise_fd_limit()?.min(MAX_SLOTS as u64) as u32;
    ring.submitter().register_files_sparse(slots)?;
    let bufs = BufRing::new(&ring)?;
    let zc_min = match std::env::var("OXLOOP_URING_ZC_MIN") {
        Ok(v) => v.parse().expect("OXLOOP_URING_ZC_MIN: a byte count"),
        Err(_) => 0,
    };
    let mut server = Server {
        ring,
        bufs,
        conns: (0..slots).map(|_| None).collect(),
        zc_pending: vec![0; BUFS as usize],
        done_sending: vec![false; BUFS as usize],
        zc_sends: Vec::new(),
        zc_free: Vec::new(),
        zc_min,
        starved: Vec::new(),
        to_send: Vec::new(),
        send_now: std::env::var("OXLOOP_URING_SEND").is_ok_and(|v| v == "now"),
        fixed: std::env::var("OXLOOP_URING_FIXED").map_or(true, |v| v != "0"),
    };
    server.run(listener.as_raw_fd())
}
