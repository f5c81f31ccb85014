//! Internet socket addresses between the OS's `sockaddr` and Python's tuples,
//! formatted exactly as the `socket` module formats them: `(host, port)` for
//! IPv4, `(host, port, flowinfo, scope_id)` for IPv6. Anything else (host
//! names, scoped literals, other families) is left to the `socket` module.

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString, PyTuple};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A socket address as the kernel reads and writes it.
#[derive(Clone, Copy)]
pub struct SockAddr {
    /// Room for any family's address.
    pub storage: libc::sockaddr_storage,
    /// How much of `storage` the address takes.
    pub len: libc::socklen_t,
}

impl SockAddr {
    /// Room for any address, for `recvfrom` to fill.
    pub fn empty() -> Self {
        Self {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The address's bytes, for comparing two addresses.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` never exceeds the storage's size.
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast(),
                (self.len as usize).min(size_of::<libc::sockaddr_storage>()),
            )
        }
    }

    /// The Python tuple for an AF_INET or AF_INET6 address; None for others.
    pub fn py_tuple<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if self.len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family and length say this is a sockaddr_in.
                let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                let mut host = [0u8; 15];
                let host = ipv4_text(sin.sin_addr.s_addr.to_ne_bytes(), &mut host);
                let port = u16::from_be(sin.sin_port);
                Ok(Some(PyTuple::new(
                    py,
                    [
                        PyString::new(py, host).into_any(),
                        port.into_pyobject(py)?.into_any(),
                    ],
                )?))
            }
            libc::AF_INET6 if self.len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family and length say this is a sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                let host = inet6_ntop(&sin6.sin6_addr);
                Ok(Some(PyTuple::new(
                    py,
                    [
                        PyString::new(py, &host).into_any(),
                        u16::from_be(sin6.sin6_port).into_pyobject(py)?.into_any(),
                        u32::from_be(sin6.sin6_flowinfo)
                            .into_pyobject(py)?
                            .into_any(),
                        sin6.sin6_scope_id.into_pyobject(py)?.into_any(),
                    ],
                )?))
            }
            _ => Ok(None),
        }
    }

    /// The address a Python tuple names for a socket of `family`, when it
    /// is numeric; None for what only the `socket` module can resolve.
    pub fn from_python(addr: &Bound<'_, PyAny>, family: i32) -> Option<Self> {
        let tuple = addr.cast::<PyTuple>().ok()?;
        let host = tuple.get_item(0).ok()?;
        let host = host.cast::<PyString>().ok()?.to_str().ok()?;
        let port = tuple.get_item(1).ok()?;
        let port: u16 = port.cast::<PyInt>().ok()?.extract().ok()?;
        let mut out = Self::empty();
        match (family, tuple.len()) {
            (libc::AF_INET, 2) => {
                let ip: Ipv4Addr = host.parse().ok()?;
                // SAFETY: sockaddr_storage has room and alignment for a sockaddr_in.
                let sin = unsafe { &mut *(&mut out.storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = port.to_be();
                sin.sin_addr.s_addr = u32::from(ip).to_be();
                out.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            (libc::AF_INET6, 2..=4) => {
                let ip: Ipv6Addr = host.parse().ok()?;
                let field = |i: usize| -> Option<u32> {
                    match tuple.get_item(i) {
                        Ok(v) => v.cast::<PyInt>().ok()?.extract().ok(),
                        Err(_) => Some(0),
                    }
                };
                let (flowinfo, scope_id) = (field(2)?, field(3)?);
                if flowinfo > 0xfffff {
                    return None; // the socket module raises OverflowError
                }
                // SAFETY: sockaddr_storage has room and alignment for a sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut out.storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = port.to_be();
                sin6.sin6_flowinfo = flowinfo.to_be();
                sin6.sin6_addr.s6_addr = ip.octets();
                sin6.sin6_scope_id = scope_id;
                out.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
            _ => return None,
        }
        Some(out)
    }
}

/// The dotted quad of the IPv4 address `octets` (in network order), written
/// into `buf`: what `Ipv4Addr`'s `Display` writes, without the formatting
/// machinery, which cost more than the rest of a datagram's address.
fn ipv4_text(octets: [u8; 4], buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    std::str::from_utf8(&buf[..len]).expect("digits and dots")
}

/// `INET6_ADDRSTRLEN` from `<netinet/in.h>`.
const INET6_ADDRSTRLEN: usize = 46;

extern "C" {
    // From the C library (POSIX); the libc crate does not declare it.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// An IPv6 address as the C library's `inet_ntop` writes it, which is what
/// the socket module returns (it differs from Rust's formatting for
/// IPv4-compatible addresses).
fn inet6_ntop(addr: &libc::in6_addr) -> String {
    let mut buf = [0 as libc::c_char; INET6_ADDRSTRLEN];
    // SAFETY: the buffer is INET6_ADDRSTRLEN long, enough for any address;
    // inet_ntop NUL-terminates what it writes.
    unsafe {
        inet_ntop(
            libc::AF_INET6,
            (addr as *const libc::in6_addr).cast(),
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
        );
        std::ffi::CStr::from_ptr(buf.as_ptr())
    }
    .to_string_lossy()
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::PyDict;

    /// Round-trips through the socket module's own parsing and formatting.
    #[test]
    fn addresses_read_and_write_as_the_socket_module_does() {
        Python::initialize();
        Python::attach(|py| {
            let cases = [
                (libc::AF_INET, "('127.0.0.1', 8080)"),
                (libc::AF_INET, "('0.0.0.0', 0)"),
                (libc::AF_INET6, "('::1', 443, 0, 0)"),
                (libc::AF_INET6, "('fe80::1', 1, 5, 2)"),
                (libc::AF_INET6, "('::ffff:1.2.3.4', 9, 0, 0)"),
                (libc::AF_INET6, "('2001:db8:0:1:1:1:1:1', 9, 0, 0)"),
                (libc::AF_INET6, "('::1.2.3.4', 9, 0, 0)"),
            ];
            for (family, text) in cases {
                let locals = PyDict::new(py);
                let addr = py
                    .eval(&std::ffi::CString::new(text).unwrap(), None, Some(&locals))
                    .unwrap();
                let parsed = SockAddr::from_python(&addr, family).expect("numeric");
                let back = parsed.py_tuple(py).unwrap().unwrap();
                assert!(back.eq(&addr).unwrap(), "{text} came back as {back}");
            }
            let mut buf = [0u8; 15];
            for octets in [
                [0, 0, 0, 0],
                [255, 255, 255, 255],
                [10, 0, 100, 9],
                [1, 20, 199, 250],
            ] {
                let text = ipv4_text(octets, &mut buf).to_owned();
                assert_eq!(text, Ipv4Addr::from(octets).to_string());
            }
            let hostname = py.eval(c"('localhost', 80)", None, None).unwrap();
            assert!(SockAddr::from_python(&hostname, libc::AF_INET).is_none());
            let scoped = py.eval(c"('fe80::1%lo', 80)", None, None).unwrap();
            assert!(SockAddr::from_python(&scoped, libc::AF_INET6).is_none());
        });
    }
}
