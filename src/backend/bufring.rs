//! io_uring's provided buffer ring: the buffers a multishot receive picks
//! from, and the [`Chunk`] that lends one received buffer to the loop
//! until its bytes are handed on.
//!
//! A buffer is the kernel's while it is in the ring and the loop's from
//! its completion until its chunk drops, which puts it back. The memory is
//! only ever reached by raw pointer while the kernel may write into it.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// How many buffers the ring holds (a power of two). Each is the loop's
/// only from its completion until the transport hands its bytes on, in the
/// same iteration, so a few dozen serve a thousand connections; a receive
/// that finds none ends and is armed again at the next wait.
pub const BUFFERS: u16 = 64;
/// The size of each: a message of up to 256 KiB that has arrived is one
/// receive, so one `data_received` (a connection whose chunks reach 64 KiB
/// then reads by readiness: `StreamCore::leave_receives`).
pub const BUFFER_SIZE: usize = 256 * 1024;
/// The buffer group the receives name.
pub const GROUP: u16 = 0;

/// An anonymous mapping of `len` bytes, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping (page-aligned, as the kernel
        // requires of a buffer ring); the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The ring's entries and the buffers they point into.
pub struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    /// The tail the loop publishes, behind a lock since a chunk may drop
    /// on any thread.
    tail: Mutex<u16>,
}

// SAFETY: the raw pointers are to mappings this value owns; the ring's tail
// is only written under `tail`'s lock, and a buffer is only read through a
// `Chunk`, which holds it exclusively.
unsafe impl Send for BufRing {}
// SAFETY: as for Send.
unsafe impl Sync for BufRing {}

impl BufRing {
    /// Maps the ring and its buffers, registers them with `ring` and gives
    /// every buffer to the kernel.
    pub fn register(ring: &IoUring) -> io::Result<Arc<Self>> {
        let entries = Mapping::new(usize::from(BUFFERS) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(BUFFERS) * BUFFER_SIZE)?;
        // SAFETY: the mapping holds BUFFERS entries; it lives until the
        // ring is unregistered or gone (see `Uring::close`), as the `Arc`
        // the backend keeps outlives both.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries.ptr as u64, BUFFERS, GROUP, 0)?
        };
        let this = Arc::new(Self {
            entries,
            buffers,
            tail: Mutex::new(0),
        });
        for bid in 0..BUFFERS {
            this.give_back(bid);
        }
        Ok(this)
    }

    /// Lends buffer `bid`, which a completion says holds `len` received bytes.
    pub fn lend(self: &Arc<Self>, bid: u16, len: usize) -> Chunk {
        Chunk {
            ring: self.clone(),
            bid: bid % BUFFERS,
            len: len.min(BUFFER_SIZE),
        }
    }

    fn buffer(&self, bid: u16) -> *mut u8 {
        // SAFETY: `bid < BUFFERS`, so the offset is inside the mapping.
        unsafe { self.buffers.ptr.add(usize::from(bid) * BUFFER_SIZE) }
    }

    /// Puts buffer `bid` at the tail and publishes it to the kernel.
    fn give_back(&self, bid: u16) {
        let mut tail = self.tail.lock();
        let base = self.entries.ptr.cast::<BufRingEntry>();
        // SAFETY: the index is masked into the ring's BUFFERS entries, which
        // the kernel only reads below the published tail; `tail` is locked.
        let entry = unsafe { &mut *base.add(usize::from(*tail & (BUFFERS - 1))) };
        entry.set_addr(self.buffer(bid) as u64);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        *tail = tail.wrapping_add(1);
        // SAFETY: the ring's tail overlays the first entry's reserved field,
        // as the kernel's layout has it; stored with release order after
        // the entry.
        unsafe {
            let shared = BufRingEntry::tail(base) as *const AtomicU16;
            (*shared).store(*tail, Ordering::Release);
        }
    }
}

/// One received buffer, the loop's until it drops.
pub struct Chunk {
    ring: Arc<BufRing>,
    bid: u16,
    len: usize,
}

impl Chunk {
    /// The bytes received.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into the buffer before it
        // posted the completion, and does not touch it again until `drop`
        // gives it back; the mapping lives as long as `ring`.
        unsafe { std::slice::from_raw_parts(self.ring.buffer(self.bid), self.len) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.len)
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Chunk {}
