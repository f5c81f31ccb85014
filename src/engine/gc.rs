//! The garbage collector's view of native state: one [`Traverse`] trait that
//! the engine and every native core implement for what they hold, so each
//! `__traverse__` is one call over its fields.

use super::gil_cell::GilCell;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use std::collections::VecDeque;

/// Visits the Python objects a value holds, for the garbage collector.
pub trait Traverse {
    /// Calls `visit` on every Python object held.
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError>;
}

impl<T> Traverse for Py<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self)
    }
}

impl<T: Traverse + ?Sized> Traverse for &T {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (**self).traverse(visit)
    }
}

impl<T: Traverse> Traverse for Option<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.as_ref().map_or(Ok(()), |v| v.traverse(visit))
    }
}

impl<T: Traverse> Traverse for [T] {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.iter().try_for_each(|v| v.traverse(visit))
    }
}

impl<T: Traverse> Traverse for Vec<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.as_slice().traverse(visit)
    }
}

impl<T: Traverse> Traverse for VecDeque<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.iter().try_for_each(|v| v.traverse(visit))
    }
}

/// State borrowed elsewhere while the collector runs (Rust code holding it
/// when a collection starts) is skipped: what it holds stays alive anyway.
impl<T: Traverse> Traverse for GilCell<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.try_lock().map_or(Ok(()), |v| v.traverse(visit))
    }
}

macro_rules! traverse_tuple {
    ($($name:ident),+) => {
        impl<$($name: Traverse),+> Traverse for ($($name,)+) {
            #[allow(non_snake_case)]
            fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
                let ($($name,)+) = self;
                $($name.traverse(visit)?;)+
                Ok(())
            }
        }
    };
}
traverse_tuple!(A, B);
traverse_tuple!(A, B, C);
traverse_tuple!(A, B, C, D);
traverse_tuple!(A, B, C, D, E);
