//! What a backend that receives (io_uring's multishot receive) read for a
//! stream transport and the protocol has not taken yet: handed on in order
//! at the transport's next read, and kept while its reading is paused, as
//! the socket would have kept it for a readiness loop.

use crate::backend::Received;
use std::collections::VecDeque;

/// One received item still to hand on.
pub enum Pending {
    /// Bytes from the backend's buffer from the offset on (a
    /// `BufferedProtocol`'s buffer may take part of them).
    #[cfg(linux_native)]
    Lent(crate::backend::bufring::Chunk, usize),
    /// Bytes copied out of the backend's buffer, from the offset on.
    #[cfg_attr(not(linux_native), allow(dead_code))]
    Owned(Vec<u8>, usize),
    /// The peer closed its side.
    Eof,
    /// The receive failed with this errno.
    Error(i32),
}

impl Pending {
    /// The bytes still to hand on, for data.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            #[cfg(linux_native)]
            Pending::Lent(chunk, at) => Some(&chunk.bytes()[*at..]),
            Pending::Owned(bytes, at) => Some(&bytes[*at..]),
            Pending::Eof | Pending::Error(_) => None,
        }
    }

    /// The rest once `n` more bytes were taken; None when nothing is left.
    pub fn after(self, n: usize) -> Option<Self> {
        let left = self.bytes().map_or(0, <[u8]>::len);
        if n >= left {
            return None;
        }
        Some(match self {
            #[cfg(linux_native)]
            Pending::Lent(chunk, at) => Pending::Lent(chunk, at + n),
            Pending::Owned(bytes, at) => Pending::Owned(bytes, at + n),
            other => other,
        })
    }

    /// The same, holding no buffer of the backend's.
    fn kept(self) -> Self {
        match self {
            #[cfg(linux_native)]
            Pending::Lent(chunk, at) => Pending::Owned(chunk.bytes()[at..].to_vec(), 0),
            other => other,
        }
    }
}

impl From<Received> for Pending {
    fn from(r: Received) -> Self {
        match r {
            #[cfg(linux_native)]
            Received::Data(chunk) => Pending::Lent(chunk, 0),
            Received::Eof => Pending::Eof,
            Received::Error(errno) => Pending::Error(errno),
        }
    }
}

/// The items in order.
#[derive(Default)]
pub struct Inbox {
    queue: VecDeque<Pending>,
}

impl Inbox {
    /// Appends what was received; with `keep` (nobody reads it soon) the
    /// bytes are copied, so the backend's buffer goes back at once.
    pub fn push(&mut self, received: Received, keep: bool) {
        let item = Pending::from(received);
        self.queue.push_back(if keep { item.kept() } else { item });
    }

    /// The first item.
    pub fn pop(&mut self) -> Option<Pending> {
        self.queue.pop_front()
    }

    /// True when the first item is the end of the stream or an error.
    pub fn ends_next(&self) -> bool {
        matches!(self.queue.front(), Some(Pending::Eof | Pending::Error(_)))
    }

    /// Puts back the rest of the first item.
    pub fn unpop(&mut self, item: Pending) {
        self.queue.push_front(item);
    }

    /// Copies what is left out of the backend's buffers (reading stopped).
    pub fn keep(&mut self) {
        for item in self.queue.iter_mut() {
            let taken = std::mem::replace(item, Pending::Eof);
            *item = taken.kept();
        }
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything (the transport closed: asyncio would not have read it).
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}
