//! The reader and writer callbacks registered per file descriptor.

use crate::backend::Interest;
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;
use std::collections::HashMap;
use std::os::fd::RawFd;

/// Which side of an fd a callback watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `add_reader`.
    Read,
    /// `add_writer`.
    Write,
}

/// The handles watching one fd.
#[derive(Default)]
pub struct Watch {
    /// The `add_reader` handle.
    pub reader: Option<Py<PyAny>>,
    /// The `add_writer` handle.
    pub writer: Option<Py<PyAny>>,
}

impl Watch {
    /// What the backend must report for this fd.
    pub fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }

    /// The handle of one side.
    pub fn side(&mut self, side: Side) -> &mut Option<Py<PyAny>> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }
}

/// fd → handles, as asyncio's selector keys hold `(reader, writer)`.
#[derive(Default)]
pub struct Watchers {
    map: HashMap<RawFd, Watch>,
}

impl Watchers {
    /// The current interest in `fd`.
    pub fn interest(&self, fd: RawFd) -> Interest {
        self.map.get(&fd).map(Watch::interest).unwrap_or_default()
    }

    /// The handles of `fd`, if any.
    pub fn get(&self, fd: RawFd) -> Option<&Watch> {
        self.map.get(&fd)
    }

    /// Replaces one side's handle and returns the previous one.
    pub fn set(&mut self, fd: RawFd, side: Side, handle: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        let watch = self.map.entry(fd).or_default();
        let old = std::mem::replace(watch.side(side), handle);
        if watch.interest().is_empty() {
            self.map.remove(&fd);
        }
        old
    }

    /// Every watched fd.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.map.keys().copied()
    }

    /// Every handle, for the garbage collector.
    pub fn handles(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.map
            .values()
            .flat_map(|w| w.reader.iter().chain(w.writer.iter()))
    }

    /// Removes everything, returning the handles so they can be released
    /// outside any lock.
    pub fn take_all(&mut self) -> Vec<Py<PyAny>> {
        std::mem::take(&mut self.map)
            .into_values()
            .flat_map(|w| w.reader.into_iter().chain(w.writer))
            .collect()
    }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = obj.py();
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        obj.call_method0("fileno")
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
            .and_then(|n| n.extract())
            .map_err(|e| {
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py)
                {
                    let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
                    PyValueError::new_err(format!("Invalid file object: {repr}"))
                } else {
                    e
                }
            })?
    };
    RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}
