//! A backend that waits on a `selectors.BaseSelector` the user passed to
//! `SelectorEventLoop(selector)`. The only backend that touches Python.

use super::waker::Waker;
use super::{Backend, Event, Interest};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// `selectors.EVENT_READ` and `selectors.EVENT_WRITE`.
const EVENT_READ: u8 = 1;
const EVENT_WRITE: u8 = 2;

/// The user's selector, with the waker registered in it.
pub struct PySelector {
    selector: Option<Py<PyAny>>,
    waker: Arc<Waker>,
}

fn mask(interest: Interest) -> u8 {
    (if interest.readable { EVENT_READ } else { 0 })
        | (if interest.writable { EVENT_WRITE } else { 0 })
}

impl PySelector {
    /// Wraps `selector` and registers the waker's fd in it.
    pub fn new(selector: Py<PyAny>, waker: Arc<Waker>) -> PyResult<Self> {
        Python::attach(|py| selector.call_method1(py, "register", (waker.fd(), EVENT_READ)))?;
        Ok(Self {
            selector: Some(selector),
            waker,
        })
    }

    fn selector(&self) -> io::Result<&Py<PyAny>> {
        self.selector
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl Backend for PySelector {
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()> {
        let selector = self.selector()?;
        Python::attach(|py| {
            let sel = selector.bind(py);
            if new.is_empty() {
                sel.call_method1(intern!(py, "unregister"), (fd,)).map(drop)
            } else if old.is_empty() {
                sel.call_method1(intern!(py, "register"), (fd, mask(new)))
                    .map(drop)
            } else {
                sel.call_method1(intern!(py, "modify"), (fd, mask(new)))
                    .map(drop)
            }
        })
        .map_err(io::Error::from)
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        let selector = self.selector()?;
        let wfd = self.waker.fd();
        Python::attach(|py| -> PyResult<()> {
            let ready = selector.call_method1(py, "select", (timeout.map(|t| t.as_secs_f64()),))?;
            for item in ready.bind(py).try_iter()? {
                let item = item?;
                let pair = item.cast::<PyTuple>()?;
                let fd: RawFd = pair.get_item(0)?.getattr(intern!(py, "fd"))?.extract()?;
                let bits: u8 = pair.get_item(1)?.extract()?;
                if fd == wfd {
                    self.waker.drain();
                } else {
                    events.push(Event {
                        fd,
                        readable: bits & EVENT_READ != 0,
                        writable: bits & EVENT_WRITE != 0,
                    });
                }
            }
            Ok(())
        })
        .map_err(io::Error::from)
    }

    fn waits_detached(&self) -> bool {
        false
    }

    fn close(&mut self) {
        if let Some(selector) = self.selector.take() {
            Python::attach(|py| {
                if let Err(e) = selector.call_method0(py, "close") {
                    e.write_unraisable(py, Some(selector.bind(py)));
                }
            });
        }
    }

    fn reopen(&mut self, _waker: Arc<Waker>) -> io::Result<bool> {
        Ok(false)
    }
}
