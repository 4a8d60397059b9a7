//! Reading a directory through a handle, never following a final symlink: open a directory
//! below one, describe a name in one, list one. The container readers and the cache walk on
//! the host build on these, so every step of theirs starts from a handle they checked.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, RawDir, Stat};

/// A directory below `dir`, opened for listing (`extra`: e.g. `O_NOFOLLOW`).
pub(crate) fn open_dir_at(
    dir: impl AsFd,
    path: impl rustix::path::Arg,
    extra: OFlags,
) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )?)
}

/// `name` in `dir`, described and never followed.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    Ok(statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// One directory entry: its name and readdir's type (`Unknown` where the filesystem does not
/// say).
pub(crate) struct Entry {
    pub(crate) name: CString,
    pub(crate) kind: FileType,
}

/// Entries of a directory, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
    // A descriptor of its own, opened as "." so the listing starts at the beginning whatever
    // was read from `dir` before (and whether `dir` itself is an `O_PATH` handle).
    let fd = open_dir_at(dir, ".", OFlags::empty())?;
    // glibc's readdir buffer. `rustix::fs::Dir` starts at 768 bytes and grows by as much per
    // call, so one host cleanup of a 200-file cache (three listings) cost 10 getdents where
    // this costs 6, each a round trip to the storage driver's daemon on a FUSE-backed root
    // (fuse-overlayfs): the sweep of `cargo bench --bench agent` was ~20 % slower with it. A
    // name is at most 255 bytes, so one entry always fits.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut entries = RawDir::new(fd, &mut buf);
    let mut names = Vec::new();
    while let Some(e) = entries.next() {
        let e = e?;
        let b = e.file_name().to_bytes();
        if b != b"." && b != b".." {
            names.push(Entry {
                name: e.file_name().to_owned(),
                kind: e.file_type(),
            });
        }
    }
    Ok(names)
}
