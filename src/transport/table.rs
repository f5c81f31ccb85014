//! The loop's `_transports`: which transport owns an fd.
//!
//! asyncio keeps it as a `weakref.WeakValueDictionary`, read by
//! `_ensure_fd_no_transport` (no `add_reader` or `sock_*` call on a
//! transport's fd) and written by every transport and by `_sendfile_native`.
//! Its entries are Python `KeyedRef`s made by Python code and removed by a
//! Python callback when the transport dies: more than a third of what a
//! short connection cost oxloop in Python. A [`TransportTable`] holds plain
//! weak references instead; an entry whose transport is gone reads as
//! absent and is replaced when the fd is reused.

use crate::engine::GilCell;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyWeakrefMethods, PyWeakrefReference};
use rustc_hash::FxHashMap;
use std::os::fd::RawFd;

/// fd -> the transport that owns it, held weakly (see the module
/// documentation); a mapping as `WeakValueDictionary` is one.
#[pyclass(frozen, mapping, module = "oxloop._oxloop", name = "TransportTable")]
pub struct TransportTable {
    entries: GilCell<FxHashMap<RawFd, Py<PyWeakrefReference>>>,
}

impl TransportTable {
    /// The transport owning `fd`, if it is alive.
    pub fn owner<'py>(&self, py: Python<'py>, fd: RawFd) -> Option<Bound<'py, PyAny>> {
        let entry = self.entries.lock().get(&fd).map(|r| r.clone_ref(py))?;
        entry.bind(py).upgrade()
    }

    /// The live entries, in no particular order.
    fn live<'py>(&self, py: Python<'py>) -> Vec<(RawFd, Bound<'py, PyAny>)> {
        let entries: Vec<_> = self
            .entries
            .lock()
            .iter()
            .map(|(fd, r)| (*fd, r.clone_ref(py)))
            .collect();
        entries
            .into_iter()
            .filter_map(|(fd, r)| Some((fd, r.bind(py).upgrade()?)))
            .collect()
    }
}

/// The fd a key names; None for a key no fd can be.
fn fd_of(key: &Bound<'_, PyAny>) -> Option<RawFd> {
    key.extract().ok()
}

#[pymethods]
impl TransportTable {
    #[new]
    fn new() -> Self {
        Self {
            entries: GilCell::new(FxHashMap::default()),
        }
    }

    fn __getitem__<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        fd_of(key)
            .and_then(|fd| self.owner(key.py(), fd))
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn __setitem__(&self, fd: RawFd, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let entry = PyWeakrefReference::new(transport)?.unbind();
        let old = self.entries.lock().insert(fd, entry);
        drop(old);
        Ok(())
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let old = fd_of(key).and_then(|fd| self.entries.lock().remove(&fd));
        match old {
            Some(entry) if entry.bind(py).upgrade().is_some() => Ok(()),
            _ => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        fd_of(key).is_some_and(|fd| self.owner(key.py(), fd).is_some())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.live(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.keys(py)?.as_any().try_iter()?.into_any())
    }

    /// The transport owning `key`'s fd, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> Option<Bound<'py, PyAny>> {
        fd_of(key)
            .and_then(|fd| self.owner(key.py(), fd))
            .or(default)
    }

    /// The fds live transports own.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py).into_iter().map(|(fd, _)| fd))
    }

    /// The live transports.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py).into_iter().map(|(_, t)| t))
    }

    /// `(fd, transport)` for each live transport.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py))
    }
}
