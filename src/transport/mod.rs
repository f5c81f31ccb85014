//! Transports: bytes moving between the OS and protocols. They know the
//! engine's watcher interface, never which backend waits.

pub mod buffer;
pub mod stream;
