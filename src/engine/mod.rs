//! The iteration: ready queue, timers, fd watchers and asyncio's handles.

pub mod fastcall;
pub mod fork;
pub mod gil_cell;
pub mod handle;
pub mod loop_;
pub mod ready;
pub mod task;
pub mod timers;
pub mod watchers;
