//! The only unsafe code of slotgate: the Linux `termios2` ioctls (`TCGETS2`/`TCSETS2`) and one
//! borrow of tokio-serial's raw fd.
//!
//! Why `termios2` rather than `nix::sys::termios::tcsetattr`: serialport programs the speed with
//! `termios2` + `BOTHER` (`c_ospeed`/`c_ispeed`), and the legacy `TCSETS` struct has no speed
//! fields, so toggling parity through it risks clobbering the baud rate (sas-protocol.md §1.3,
//! field-lessons.md §B4). Reading and writing the same `termios2` struct that serialport uses
//! copies the speed fields through untouched. nix 0.31 wraps neither ioctl.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

/// Reads the port's termios, speeds included.
pub(super) fn tcgets2(fd: BorrowedFd<'_>) -> nix::Result<libc::termios2> {
    let mut termios = MaybeUninit::<libc::termios2>::uninit();
    // SAFETY: `fd` is an open descriptor for the whole call (the borrow guarantees it), and
    // TCGETS2 writes exactly one `struct termios2` to the pointer, which points to storage of
    // that type's size and alignment. Its request type matches `libc::ioctl` on this target.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, termios.as_mut_ptr()) };
    Errno::result(result)?;
    // SAFETY: the ioctl succeeded, so the kernel initialised every field.
    Ok(unsafe { termios.assume_init() })
}

/// Sets the port's termios immediately (the caller drains first where it matters).
pub(super) fn tcsets2(fd: BorrowedFd<'_>, termios: &libc::termios2) -> nix::Result<()> {
    // SAFETY: `fd` is open for the whole call, and TCSETS2 only reads one `struct termios2`
    // from the pointer, which is a valid reference for the duration of the call.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, std::ptr::from_ref(termios)) };
    Errno::result(result).map(drop)
}

/// A second descriptor for the port's open file, for the writer job on the blocking pool.
/// Termios settings belong to the tty, not the descriptor, so both see the same port.
pub(super) fn dup(stream: &tokio_serial::SerialStream) -> std::io::Result<OwnedFd> {
    // SAFETY: `stream` owns this descriptor and keeps it open while borrowed here; the borrow
    // ends inside this function, after `try_clone_to_owned` has made an independent duplicate.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    fd.try_clone_to_owned()
}
