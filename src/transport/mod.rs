//! Transports and socket operations: bytes moving between the OS and
//! protocols (or the coroutines awaiting `sock_*`). They know the engine's
//! watcher interface, never which backend waits.

pub mod buffer;
pub mod datagram;
mod inbox;
pub mod server;
pub mod sock;
pub mod stream;
mod stream_reader;
pub mod table;
