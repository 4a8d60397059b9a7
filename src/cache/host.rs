//! Measuring and clearing an engine's cache from the host, through the container's own root
//! (`/proc/<pid>/root`), without `docker exec` (docs/cache-paths.md#measuring-and-deleting: measure
//! → delete → re-measure, the same outcome as the script in `cache.rs`).
//!
//! Why: every exec costs Docker's daemons ~50 ms of CPU (create, start, runc, reap) before a
//! file is touched; a sweep over 20 idle engines every 30 s spent 4 % of a core in dockerd and
//! containerd to find empty caches (BENCHMARKS.md). Walking the directory from the host costs
//! Docker nothing and a few syscalls per entry.
//!
//! Safety, because this runs with the agent's privileges rather than the container's:
//! - the pid is Docker's for that container and is checked (`procfs::ContainerProc`):
//!   `/proc/<pid>` is opened once and everything else is opened relative to that handle (a
//!   pid reused by another process makes those opens fail, it cannot redirect them), and the
//!   process's cgroup must name the container id;
//! - the cache path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)`: inside the container's root, and a symlink anywhere on the way
//!   is refused as the script refuses it;
//! - below the cache directory every step is `openat`/`unlinkat` relative to an open
//!   directory with `O_NOFOLLOW`: a symlink is removed, never followed, and a directory swapped
//!   for a symlink mid-walk is not entered;
//! - mount points below the cache directory (from the container's mountinfo; compared by
//!   mount id per entry, and by filesystem on every directory opened) are neither counted,
//!   entered nor removed: the agent is in another mount namespace, where unlinking a mount
//!   point would silently detach it from the container;
//! - the live-connection guard fails closed: a connection table that cannot be read (the
//!   container's process gone) deletes nothing; while deleting, the process is checked every
//!   few entries (after a restart the old root still reaches the same files, used by a new
//!   engine) and so is the caller's deadline, so nothing is deleted after the janitor gave up.
//!
//! Whatever the host cannot do (no `CAP_SYS_PTRACE` to open another user's `/proc/<pid>/root`,
//! a kernel without `openat2`, a pid that is not the container's, no permission to read a
//! directory) is [`Unavailable`] before anything is deleted, and the janitor uses the exec.
//!
//! Blocking: the janitor runs these functions in `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::path::validate_cache_path;
use crate::cache::{Mode, Outcome, Sizes};
use crate::container::dir::{list, open_dir_at, stat_at, Entry};
use crate::container::mountinfo::parse_mountinfo;
use crate::container::procfs::ContainerProc;
use crate::container::procnet;
use rustix::fs::{
    fstat, openat2, statx, unlinkat, AtFlags, FileType, Mode as FileMode, OFlags, ResolveFlags,
    Stat, StatxFlags,
};
use rustix::io::Errno;

/// The host path cannot be used for this engine now; `docker exec` can. Nothing was deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Deeper trees than this are left to the exec (one open directory per level).
const MAX_DEPTH: usize = 128;

/// What to clean and how to tell a client from the agent's own health checks.
pub struct Target<'a> {
    pub pid: u32,
    pub container_id: &'a str,
    pub cache_path: &'a str,
    /// The engine's HTTP port inside the container; 0 disables the live-connection guard.
    pub engine_port: u16,
    /// Remote ports of the agent's own health checks in flight (no client).
    pub own_ports: &'a [u16],
    /// Set by the caller once it stopped waiting (its deadline passed): the walk stops at the
    /// next entry instead of deleting on, unguarded and unrecorded.
    pub cancel: &'a AtomicBool,
}

/// What [`run_in_root`] asks of the world while it works.
pub struct Checks<'a> {
    /// Whether a client is connected to the engine right now. An error (the container's
    /// process is gone, its connection table unreadable) means it cannot be known: nothing is
    /// deleted.
    pub busy: &'a dyn Fn() -> Result<bool, Unavailable>,
    /// Whether the container's process checked at the start still runs; asked while deleting.
    /// After a restart the old root still reaches the same files, with a new engine (and
    /// maybe a new client) using them.
    pub alive: &'a dyn Fn() -> bool,
    pub cancel: &'a AtomicBool,
    /// Whether anything is mounted below the cache directory (from the container's
    /// mountinfo). Then every entry's mount is compared before it is counted, entered or
    /// removed: unlinking a mount point of another mount namespace detaches the mount, and a
    /// bind mount from the same filesystem has the same `st_dev`.
    pub mounts_below: bool,
}

/// Measures (and with [`Mode::Clear`] clears) the cache of a running container from the host.
pub fn run(t: &Target, mode: Mode) -> Result<Outcome, Unavailable> {
    let unavailable = |e: io::Error| Unavailable(e.to_string());
    let proc = ContainerProc::open(t.pid, t.container_id).map_err(unavailable)?;
    // Following the magic link needs ptrace access to the process (root, or CAP_SYS_PTRACE).
    let root = proc.root().map_err(unavailable)?;
    let mountinfo = proc.read("mountinfo").map_err(unavailable)?;
    let busy = || -> Result<bool, Unavailable> {
        // The container's network namespace, seen through the same pinned /proc/<pid>. Read
        // even without an engine port: it also proves the process still runs.
        let text = procnet::read_tables(|f| proc.read(f))
            .map_err(|e| Unavailable(format!("reading the container's connections: {e}")))?;
        if t.engine_port == 0 {
            return Ok(false);
        }
        Ok(procnet::clients_of(&text, t.engine_port)
            .iter()
            .any(|c| !t.own_ports.contains(&c.port())))
    };
    let alive = || proc.alive();
    let checks = Checks {
        busy: &busy,
        alive: &alive,
        cancel: t.cancel,
        mounts_below: mounts_below(&mountinfo, t.cache_path),
    };
    run_in_root(&root, t.cache_path, mode, &checks)
}

/// Whether `mountinfo` (the container process's, paths relative to its root) has a mount point
/// strictly below `cache_path`.
pub(crate) fn mounts_below(mountinfo: &str, cache_path: &str) -> bool {
    let prefix = format!("{}/", cache_path.trim_end_matches('/'));
    parse_mountinfo(mountinfo)
        .iter()
        .any(|m| m.mountpoint.starts_with(&prefix))
}

/// The work of [`run`] below a root directory already opened (the container's, or in tests a
/// temporary one), with `checks` standing for the container's process.
pub fn run_in_root(
    root: &OwnedFd,
    cache_path: &str,
    mode: Mode,
    checks: &Checks,
) -> Result<Outcome, Unavailable> {
    // Validated when configured; checked again because this function deletes with the agent's
    // privileges: `/.` or `/x/..` would otherwise resolve to a whole root.
    if let Err(m) = validate_cache_path(cache_path) {
        return Ok(failed(None, &format!("invalid cache path: {m}")));
    }
    let rel = cache_path.trim_start_matches('/');
    let dir = match resolve_in_root(root.as_fd(), rel) {
        Ok(fd) => fd,
        // Nothing to clean (docs/cache-paths.md#nothing-to-clean), whatever the mode.
        Err(Resolve::Missing) => return Ok(Outcome::Empty { before: 0 }),
        Err(Resolve::Refused(reason)) => return Ok(failed(None, &reason)),
        Err(Resolve::Unavailable(u)) => return Err(u),
    };
    let st = fstat(&dir).map_err(|e| Unavailable(format!("stat: {e}")))?;
    let mnt = if checks.mounts_below {
        Some(
            mnt_id(dir.as_fd(), b"", AtFlags::EMPTY_PATH)
                .map_err(|e| Unavailable(format!("statx: {e}")))?,
        )
    } else {
        None
    };
    let mut walk = Walk {
        dev: st.st_dev,
        mnt,
        checks,
        removed: 0,
        stop: None,
        first_error: None,
    };
    // Listed before measuring and before the connection check, as in the script: whatever a
    // stream writes is written while its connection is open, so every listed entry is older
    // than a connection the check then sees, or belongs to no live stream.
    let entries = list(dir.as_fd()).map_err(|e| Unavailable(format!("listing: {e}")))?;
    if entries.is_empty() {
        return Ok(Outcome::Empty {
            before: st.st_size.max(0) as u64,
        });
    }
    let before = match walk.measure(&dir) {
        Ok(b) => b,
        Err(_) if checks.cancel.load(Ordering::Relaxed) => return Ok(failed(None, CANCELLED)),
        Err(e) => return Err(Unavailable(format!("measuring: {e}"))),
    };
    let min_bytes = match mode {
        Mode::Measure => return Ok(done(before, None)),
        Mode::Clear { min_bytes } => min_bytes,
    };
    if before < min_bytes {
        return Ok(done(before, None));
    }
    if checks.cancel.load(Ordering::Relaxed) {
        return Ok(failed(Some(before), CANCELLED));
    }
    if (checks.busy)()? {
        return Ok(Outcome::Busy { before });
    }
    for entry in &entries {
        walk.remove_entry(dir.as_fd(), "", entry, 1);
        if walk.stop.is_some() {
            break;
        }
    }
    if let Some(why) = walk.stop.take() {
        return Ok(failed(Some(before), &why));
    }
    let after = match walk.measure(&dir) {
        Ok(a) => a,
        Err(e) => {
            return Ok(failed(
                Some(before),
                &format!("measuring after deleting: {e}"),
            ))
        }
    };
    Ok(match walk.first_error {
        None => done(before, Some(after)),
        Some(e) => Outcome::Failed {
            before: Some(before),
            reason: format!("some cache entries could not be deleted: {e}"),
        },
    })
}

const CANCELLED: &str = "stopped: the cleanup's deadline passed";

/// How often (in removed entries) the walk checks that it may go on.
const CHECK_EVERY: usize = 32;

/// One measurement or deletion below the cache directory.
struct Walk<'a> {
    /// The cache directory's filesystem: other filesystems are neither counted nor entered.
    dev: u64,
    /// The cache directory's mount, when mounts lie below it (see [`Checks::mounts_below`]).
    mnt: Option<u64>,
    checks: &'a Checks<'a>,
    removed: usize,
    /// Why deleting stopped early (deadline passed, the container's process gone).
    stop: Option<String>,
    first_error: Option<String>,
}

fn done(before: u64, after: Option<u64>) -> Outcome {
    Outcome::Done(Sizes { before, after })
}

fn failed(before: Option<u64>, reason: &str) -> Outcome {
    Outcome::Failed {
        before,
        reason: reason.to_string(),
    }
}

pub(crate) enum Resolve {
    Missing,
    /// The same refusals as the script's, with its words.
    Refused(String),
    Unavailable(Unavailable),
}

/// Opens `rel` (relative, normalised) below `root` as a directory, refusing symlinks on the way.
pub(crate) fn resolve_in_root(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, Resolve> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let open = |path: &str| -> io::Result<OwnedFd> {
        Ok(openat2(root, path, flags, FileMode::empty(), resolve)?)
    };
    let mut tries = 0;
    let err = loop {
        match open(rel) {
            Ok(fd) => return Ok(fd),
            // A concurrent rename elsewhere in the tree: the kernel asks to retry.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 8 => tries += 1,
            Err(e) => break e,
        }
    };
    match err.raw_os_error() {
        Some(libc::ENOENT) => Err(Resolve::Missing),
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            // Which component: the directory itself, or one on the way to it? (A final
            // symlink with O_DIRECTORY | O_NOFOLLOW is ENOTDIR, one on the way is ELOOP.)
            let (parent, last) = match rel.rsplit_once('/') {
                Some((p, l)) => (Some(p), l),
                None => (None, rel),
            };
            let parent_fd = match parent {
                Some(p) => match open(p) {
                    Ok(f) => Some(f),
                    // A component on the way is a file: the script's `[ -e ]` says missing.
                    Err(e)
                        if err.raw_os_error() == Some(libc::ENOTDIR)
                            && e.raw_os_error() == Some(libc::ENOTDIR) =>
                    {
                        return Err(Resolve::Missing)
                    }
                    Err(_) => None,
                },
                None => None,
            };
            let at = parent_fd.as_ref().map_or(root, |f| f.as_fd());
            let last_is_link = (parent.is_none() || parent_fd.is_some())
                && stat_at(at, last.as_bytes())
                    .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink)
                    .unwrap_or(false);
            Err(Resolve::Refused(if last_is_link {
                "cache directory is a symlink; refusing to follow it".into()
            } else if err.raw_os_error() == Some(libc::ELOOP) {
                "cache path resolves through a symlink; refusing".into()
            } else {
                "cache path is not a directory".into()
            }))
        }
        // ENOSYS (no openat2), EACCES/EPERM, EXDEV, EAGAIN beyond the retries: the exec can.
        _ => Err(Resolve::Unavailable(Unavailable(format!(
            "opening the cache directory: {err}"
        )))),
    }
}

impl Walk<'_> {
    /// Whether `name` in `dir` is on the cache directory's mount. Without mounts below the
    /// cache (the common case) that is always so, and no syscall is spent.
    fn same_mount(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
        match self.mnt {
            None => Ok(true),
            Some(m) => Ok(mnt_id(dir, name, AtFlags::SYMLINK_NOFOLLOW)? == m),
        }
    }

    /// Opens subdirectory `name` without following a symlink, and only if what was opened is
    /// on the cache directory's filesystem and mount (checked on the open descriptor, so a
    /// directory swapped or mounted over since a stat is not entered). `Ok(None)`: not to be
    /// entered (gone, swapped for a non-directory, another filesystem or mount).
    fn open_sub(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<OwnedFd>> {
        let sub = match open_dir_at(dir, name, OFlags::NOFOLLOW) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if fstat(&sub)?.st_dev != self.dev {
            return Ok(None);
        }
        if let Some(m) = self.mnt {
            if mnt_id(sub.as_fd(), b"", AtFlags::EMPTY_PATH)? != m {
                return Ok(None);
            }
        }
        Ok(Some(sub))
    }

    /// Apparent size of the directory and everything below it, as `du -sb` counts it: every
    /// entry's `st_size` (directories and symlinks too), hard links once. Entries that vanish
    /// while walking (the engine deletes its own pieces) are skipped as `du` skips them;
    /// other filesystems and mounts below the cache are not counted; a directory the agent may
    /// not read is an error, so the exec measures instead.
    fn measure(&mut self, dir: &OwnedFd) -> io::Result<u64> {
        let mut seen = HashSet::new();
        // The directory's own size now (after deleting, not the one from before).
        let mut total = fstat(dir)?.st_size.max(0) as u64;
        self.measure_below(dir.as_fd(), 1, &mut seen, &mut total)?;
        Ok(total)
    }

    fn measure_below(
        &mut self,
        dir: BorrowedFd<'_>,
        depth: usize,
        seen: &mut HashSet<(u64, u64)>,
        total: &mut u64,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "more than {MAX_DEPTH} directory levels"
            )));
        }
        if self.checks.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other(CANCELLED));
        }
        for Entry { name, .. } in list(dir)? {
            let name = name.to_bytes();
            let st = match stat_at(dir, name) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let is_dir = is_dir(&st);
            if (is_dir && st.st_dev != self.dev) || !self.same_mount(dir, name)? {
                continue;
            }
            if st.st_nlink > 1 && !is_dir && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            *total += st.st_size.max(0) as u64;
            if is_dir {
                if let Some(sub) = self.open_sub(dir, name)? {
                    self.measure_below(sub.as_fd(), depth + 1, seen, total)?;
                }
            }
        }
        Ok(())
    }

    /// Whether deleting may go on: every `CHECK_EVERY` entries, the deadline and the
    /// container's process are checked. Sets `stop` when not.
    fn may_go_on(&mut self) -> bool {
        if self.stop.is_some() {
            return false;
        }
        self.removed += 1;
        if self.removed.is_multiple_of(CHECK_EVERY) {
            if self.checks.cancel.load(Ordering::Relaxed) {
                self.stop = Some(CANCELLED.into());
            } else if !(self.checks.alive)() {
                self.stop =
                    Some("stopped: the container's process exited during the cleanup".into());
            }
        }
        self.stop.is_none()
    }

    fn note(&mut self, what: &str, path: &str, e: io::Error) {
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what} './{path}': {e}"));
        }
    }

    /// Removes one entry of `dir` (a directory with everything below it), like `rm -rf` but
    /// never following a symlink and never leaving the cache's filesystem or mount: a mount
    /// point is neither entered nor removed. The first error is kept; the rest of the entries
    /// are still tried.
    fn remove_entry(&mut self, dir: BorrowedFd<'_>, prefix: &str, entry: &Entry, depth: usize) {
        if !self.may_go_on() {
            return;
        }
        let name = entry.name.as_c_str();
        let bytes = name.to_bytes();
        // The entry's path relative to the cache directory, for the error an operator reads.
        let path = format!("{prefix}{}", String::from_utf8_lossy(bytes));
        match self.same_mount(dir, bytes) {
            Ok(true) => {}
            Ok(false) => {
                return self.note(
                    "not deleting",
                    &path,
                    io::Error::other("a mount point inside the cache directory"),
                )
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) => return self.note("cannot stat", &path, e),
        }
        // Not a directory by readdir's word: unlink at once, no stat (each operation is a
        // round trip to the storage driver's daemon on a FUSE-backed container root). unlinkat
        // never follows a symlink, and refuses a directory (one swapped in since the listing)
        // with EISDIR.
        if !matches!(entry.kind, FileType::Directory | FileType::Unknown) {
            match unlink_at(dir, name, AtFlags::empty()) {
                Ok(()) => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
                Err(e) => return self.note("cannot remove", &path, e),
            }
        }
        let st = match stat_at(dir, bytes) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) => return self.note("cannot stat", &path, e),
        };
        if !is_dir(&st) {
            if let Err(e) = unlink_at(dir, name, AtFlags::empty()) {
                self.note("cannot remove", &path, e);
            }
            return;
        }
        if st.st_dev != self.dev {
            return self.note(
                "not deleting",
                &path,
                io::Error::other("a mount point inside the cache directory"),
            );
        }
        if depth > MAX_DEPTH {
            return self.note(
                "cannot remove",
                &path,
                io::Error::other(format!("more than {MAX_DEPTH} directory levels")),
            );
        }
        let sub = match self.open_sub(dir, bytes) {
            Ok(Some(sub)) => sub,
            // Swapped for a symlink or a file since the stat: remove that instead, unfollowed
            // (a directory there now is on another filesystem or mount: left alone).
            Ok(None) => {
                if let Err(e) = unlink_at(dir, name, AtFlags::empty()) {
                    if e.raw_os_error() != Some(libc::EISDIR) {
                        self.note("cannot remove", &path, e);
                    }
                }
                return;
            }
            Err(e) => return self.note("cannot open", &path, e),
        };
        let entries = match list(sub.as_fd()) {
            Ok(v) => v,
            Err(e) => return self.note("cannot list", &path, e),
        };
        let errors_before = self.first_error.is_some();
        let prefix = format!("{path}/");
        for e in &entries {
            self.remove_entry(sub.as_fd(), &prefix, e, depth + 1);
        }
        if self.stop.is_some() || (!errors_before && self.first_error.is_some()) {
            // Not empty: rmdir would only fail again.
            return;
        }
        if let Err(e) = unlink_at(dir, name, AtFlags::REMOVEDIR) {
            self.note("cannot remove", &path, e);
        }
    }
}

/// The mount id of `name` in `dir` (`AT_EMPTY_PATH` with an empty name: of `dir` itself).
fn mnt_id(dir: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> io::Result<u64> {
    let stx = statx(dir, name, flags, StatxFlags::MNT_ID)?;
    if !StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::MNT_ID) {
        return Err(io::Error::other("the kernel does not report mount ids"));
    }
    Ok(stx.stx_mnt_id)
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// unlinkat where a name already gone is no error (the engine deletes its own pieces).
fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> io::Result<()> {
    match unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Space available to unprivileged users and size of the filesystem holding `path` (a host
/// path), in bytes: what disk pressure watches and what the janitor checks a pass against.
pub(crate) fn statvfs(path: &str) -> std::io::Result<(u64, u64)> {
    Ok(crate::container::mountinfo::space(&rustix::fs::statvfs(
        path,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use crate::container::procfs::tests::root_of;

    static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

    fn not_busy() -> Result<bool, Unavailable> {
        Ok(false)
    }

    fn busy() -> Result<bool, Unavailable> {
        Ok(true)
    }

    fn alive() -> bool {
        true
    }

    /// A container whose process runs, with no client and nothing mounted below the cache.
    fn quiet() -> Checks<'static> {
        Checks {
            busy: &not_busy,
            alive: &alive,
            cancel: &NOT_CANCELLED,
            mounts_below: false,
        }
    }

    fn run_at(root: &Path, path: &str, mode: Mode) -> Outcome {
        run_in_root(&root_of(root), path, mode, &quiet()).unwrap()
    }

    fn du_sb(p: &Path) -> u64 {
        let o = std::process::Command::new("du")
            .arg("-sb")
            .arg(p)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// A root with `/cache` (files, dotfiles, a subtree, a hard link, a symlink pointing out)
    /// and `/outside/canary`.
    fn fixture() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let cache = r.join("cache");
        std::fs::create_dir_all(cache.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(r.join("outside")).unwrap();
        std::fs::write(r.join("outside/canary"), b"keep").unwrap();
        std::fs::write(cache.join("a"), vec![1u8; 8192]).unwrap();
        std::fs::write(cache.join(".hidden"), b"x").unwrap();
        std::fs::write(cache.join("..dots"), b"xy").unwrap();
        std::fs::write(cache.join("sub/deeper/b"), vec![2u8; 10_000]).unwrap();
        std::fs::hard_link(cache.join("a"), cache.join("sub/a-again")).unwrap();
        symlink(r.join("outside"), cache.join("abs-link")).unwrap();
        symlink("../outside", cache.join("rel-link")).unwrap();
        tmp
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let (avail, size) = statvfs("/").unwrap();
        assert!(size > 0 && avail <= size, "{avail} of {size}");
        assert!(statvfs("/no/such/path").is_err());
        assert!(statvfs("a\0b").is_err());
    }

    #[test]
    fn measures_as_du_sb_and_clears_contents_keeping_the_directory() {
        let tmp = fixture();
        let cache = tmp.path().join("cache");
        let expected = du_sb(&cache);
        assert_eq!(
            run_at(tmp.path(), "/cache", Mode::Measure),
            done(expected, None)
        );
        // Below min_bytes: measured, kept.
        assert_eq!(
            run_at(tmp.path(), "/cache", Mode::Clear { min_bytes: 1 << 30 }),
            done(expected, None)
        );
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 6);
        let empty = std::fs::metadata(&cache).unwrap().len();
        match run_at(tmp.path(), "/cache", Mode::Clear { min_bytes: 0 }) {
            Outcome::Done(Sizes {
                before,
                after: Some(after),
            }) => {
                assert_eq!(before, expected);
                assert_eq!(after, du_sb(&cache));
                assert_eq!(after, empty);
            }
            o => panic!("{o:?}"),
        }
        assert!(cache.is_dir());
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        assert_eq!(
            std::fs::read(tmp.path().join("outside/canary")).unwrap(),
            b"keep"
        );
    }

    /// More entries than one getdents buffer holds (1,000 names of 200 bytes, ~220 KB of
    /// records against a 32 KiB buffer): every name listed once, with its type, then all of
    /// them deleted.
    #[test]
    fn a_directory_larger_than_one_listing_buffer_is_listed_and_cleared_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let name = |i: usize| format!("{i:04}{}", "x".repeat(196));
        for i in 0..1000 {
            std::fs::write(cache.join(name(i)), b"z").unwrap();
        }
        std::fs::create_dir(cache.join("d")).unwrap();
        let dir = open_dir_at(rustix::fs::CWD, &cache, OFlags::empty()).unwrap();
        let mut listed: Vec<(String, FileType)> = list(dir.as_fd())
            .unwrap()
            .into_iter()
            .map(|e| (e.name.into_string().unwrap(), e.kind))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<(String, FileType)> = (0..1000)
            .map(|i| (name(i), FileType::RegularFile))
            .collect();
        expected.push(("d".into(), FileType::Directory));
        assert_eq!(listed, expected);
        match run_at(tmp.path(), "/cache", Mode::Clear { min_bytes: 0 }) {
            Outcome::Done(Sizes { after: Some(_), .. }) => {}
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_directory_is_nothing_to_clean_and_is_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [
            Mode::Measure,
            Mode::Clear { min_bytes: 0 },
            Mode::Clear { min_bytes: 1 },
        ] {
            assert_eq!(
                run_at(tmp.path(), "/nope/cache", mode),
                Outcome::Empty { before: 0 }
            );
        }
        assert!(!tmp.path().join("nope").exists());
    }

    /// A directory without entries: its own size, nothing deleted, in both modes (the same
    /// verdict as the script's).
    #[test]
    fn an_empty_directory_is_nothing_to_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let own = std::fs::metadata(&cache).unwrap().len();
        for mode in [Mode::Measure, Mode::Clear { min_bytes: 0 }] {
            assert_eq!(
                run_at(tmp.path(), "/cache", mode),
                Outcome::Empty { before: own }
            );
        }
        assert!(cache.is_dir());
    }

    #[test]
    fn symlinks_on_the_way_are_refused_in_the_scripts_words() {
        let tmp = fixture();
        let r = tmp.path();
        symlink(r.join("outside"), r.join("linked-cache")).unwrap();
        symlink(r.join("cache"), r.join("via")).unwrap();
        // An absolute link that, resolved in the root, would still lead to /outside.
        symlink("/outside", r.join("abs-in-root")).unwrap();
        let reason = |p: &str| match run_at(r, p, Mode::Clear { min_bytes: 0 }) {
            Outcome::Failed {
                before: None,
                reason,
            } => reason,
            o => panic!("{p}: {o:?}"),
        };
        assert_eq!(
            reason("/linked-cache"),
            "cache directory is a symlink; refusing to follow it"
        );
        assert_eq!(
            reason("/abs-in-root"),
            "cache directory is a symlink; refusing to follow it"
        );
        assert_eq!(
            reason("/via/sub"),
            "cache path resolves through a symlink; refusing"
        );
        std::fs::write(r.join("file"), b"x").unwrap();
        assert_eq!(reason("/file"), "cache path is not a directory");
        // A file on the way: missing, as the script's `[ -e ]` has it.
        assert_eq!(
            run_at(r, "/file/below", Mode::Clear { min_bytes: 0 }),
            Outcome::Empty { before: 0 }
        );
        for bad in ["/", "/.", "/cache/..", "/cache/../outside"] {
            assert!(
                reason(bad).starts_with("invalid cache path"),
                "{bad}: {}",
                reason(bad)
            );
        }
        assert_eq!(std::fs::read(r.join("outside/canary")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(r.join("cache")).unwrap().count(), 6);
    }

    /// An absolute symlink is resolved inside the root it is walked from, never the host's.
    #[test]
    fn resolution_stays_inside_the_root() {
        let tmp = fixture();
        // With `cache` as the root, `/sub` is `cache/sub`, and `/outside` does not exist.
        let root = root_of(&tmp.path().join("cache"));
        assert_eq!(
            run_in_root(&root, "/outside", Mode::Clear { min_bytes: 0 }, &quiet()),
            Ok(Outcome::Empty { before: 0 })
        );
        assert_eq!(
            std::fs::read(tmp.path().join("outside/canary")).unwrap(),
            b"keep"
        );
    }

    #[test]
    fn deletes_nothing_when_busy_right_before_the_delete() {
        let tmp = fixture();
        let root = root_of(tmp.path());
        let checks = Checks {
            busy: &busy,
            ..quiet()
        };
        let out = run_in_root(&root, "/cache", Mode::Clear { min_bytes: 0 }, &checks);
        assert_eq!(
            out,
            Ok(Outcome::Busy {
                before: du_sb(&tmp.path().join("cache"))
            })
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("cache")).unwrap().count(),
            6
        );
    }

    /// A directory the walk may not enter makes the host path unavailable (the exec measures)
    /// rather than reporting a smaller size. Only meaningful without CAP_DAC_READ_SEARCH.
    #[test]
    fn an_unreadable_directory_is_unavailable_not_a_smaller_size() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = fixture();
        let sub = tmp.path().join("cache/sub");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
        let readable = std::fs::read_dir(&sub).is_ok();
        let out = run_in_root(&root_of(tmp.path()), "/cache", Mode::Measure, &quiet());
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        if readable {
            // Root with CAP_DAC_OVERRIDE reads it anyway: the full size.
            assert_eq!(out, Ok(done(du_sb(&tmp.path().join("cache")), None)));
        } else {
            assert!(
                matches!(out, Err(Unavailable(ref m)) if m.contains("ermission")),
                "{out:?}"
            );
        }
    }

    /// Only this process's own container check: a pid whose cgroup does not name the container
    /// is refused before anything is opened below its root.
    #[test]
    fn a_pid_outside_the_container_is_unavailable() {
        let t = Target {
            pid: std::process::id(),
            container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            cache_path: "/tmp",
            engine_port: 0,
            own_ports: &[],
            cancel: &NOT_CANCELLED,
        };
        let e = run(&t, Mode::Clear { min_bytes: 0 }).unwrap_err();
        assert!(e.0.contains("not in the container's cgroup"), "{e}");
        let t = Target { pid: 0, ..t };
        assert!(run(&t, Mode::Measure).is_err());
    }

    #[test]
    fn mounts_below_the_cache_are_found_in_mountinfo() {
        let mi = "22 1 0:20 / / rw - overlay overlay rw\n\
                  30 22 0:30 / /cache rw - ext4 /dev/sda rw\n\
                  31 30 0:31 / /cache/inner rw - ext4 /dev/sdb rw\n\
                  32 22 0:32 / /cache\\040dir/x rw - tmpfs tmpfs rw\n";
        assert!(mounts_below(mi, "/cache"));
        assert!(
            !mounts_below(mi, "/cache/inner"),
            "the directory itself is no mount below"
        );
        assert!(!mounts_below(mi, "/cach"));
        assert!(mounts_below(mi, "/cache dir"), "octal escapes are decoded");
        assert!(!mounts_below(mi, "/other"));
    }

    /// Deleting stops at the next check once the caller gave up (deadline) or the container's
    /// process is gone; what was not reached stays.
    #[test]
    fn deleting_stops_when_cancelled_or_when_the_process_exits() {
        // A cache of `4 * CHECK_EVERY` files cleared under `checks`: the outcome, and how many
        // files are left.
        let clear = |checks: &Checks| {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(tmp.path().join("cache")).unwrap();
            for i in 0..(4 * CHECK_EVERY) {
                std::fs::write(tmp.path().join(format!("cache/f{i}")), b"x").unwrap();
            }
            let out = run_in_root(
                &root_of(tmp.path()),
                "/cache",
                Mode::Clear { min_bytes: 0 },
                checks,
            );
            let left = std::fs::read_dir(tmp.path().join("cache")).unwrap().count();
            (out, left)
        };
        fn dead() -> bool {
            false
        }
        let (out, left) = clear(&Checks {
            alive: &dead,
            ..quiet()
        });
        match out {
            Ok(Outcome::Failed {
                before: Some(_),
                reason,
            }) => {
                assert!(reason.contains("process exited"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(left, 4 * CHECK_EVERY - (CHECK_EVERY - 1));

        let cancelled = AtomicBool::new(true);
        let (out, left) = clear(&Checks {
            cancel: &cancelled,
            ..quiet()
        });
        match out {
            Ok(Outcome::Failed { reason, .. }) => assert!(reason.contains("deadline"), "{reason}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(left, 4 * CHECK_EVERY, "nothing deleted once cancelled");
    }

    /// When the connection table cannot be read (the process is gone), nothing is deleted.
    #[test]
    fn an_unknowable_guard_deletes_nothing() {
        fn gone() -> Result<bool, Unavailable> {
            Err(Unavailable("no such process".into()))
        }
        let tmp = fixture();
        let checks = Checks {
            busy: &gone,
            ..quiet()
        };
        let out = run_in_root(
            &root_of(tmp.path()),
            "/cache",
            Mode::Clear { min_bytes: 0 },
            &checks,
        );
        assert_eq!(out, Err(Unavailable("no such process".into())));
        assert_eq!(
            std::fs::read_dir(tmp.path().join("cache")).unwrap().count(),
            6
        );
    }

    /// A mount point below the cache (a bind mount of the same filesystem, a file bind mount)
    /// is neither entered, counted nor removed; everything else is deleted, and the failure
    /// names the mount point.
    #[test]
    fn mount_points_below_the_cache_are_left_alone() {
        let tmp = fixture();
        let r = tmp.path();
        let inner = r.join("cache/inner");
        let file = r.join("cache/f.conf");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(&file, b"").unwrap();
        std::fs::write(r.join("outside/conf"), b"conf").unwrap();
        let bind = |src: &Path, dst: &Path| {
            let ok = std::process::Command::new("mount")
                .arg("--bind")
                .arg(src)
                .arg(dst)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mount --bind {src:?} {dst:?} (the tests run as root)");
        };
        bind(&r.join("outside"), &inner);
        bind(&r.join("outside/conf"), &file);
        let unmount = |p: &Path| {
            let _ = std::process::Command::new("umount").arg(p).status();
        };
        let checks = Checks {
            mounts_below: true,
            ..quiet()
        };
        let out = run_in_root(&root_of(r), "/cache", Mode::Clear { min_bytes: 0 }, &checks);
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let still =
            mounted.contains(inner.to_str().unwrap()) && mounted.contains(file.to_str().unwrap());
        unmount(&inner);
        unmount(&file);
        match out {
            Ok(Outcome::Failed { reason, .. }) => {
                assert!(
                    reason.contains("a mount point inside the cache directory"),
                    "{reason}"
                )
            }
            o => panic!("{o:?}"),
        }
        assert!(still, "both mounts are still in place");
        assert_eq!(std::fs::read(r.join("outside/canary")).unwrap(), b"keep");
        assert_eq!(std::fs::read(r.join("outside/conf")).unwrap(), b"conf");
        let mut left: Vec<String> = std::fs::read_dir(r.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["f.conf", "inner"], "everything else deleted");
    }

    /// Deep trees beyond MAX_DEPTH are left to the exec, not half-measured.
    #[test]
    fn a_too_deep_tree_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = tmp.path().join("cache");
        for _ in 0..(MAX_DEPTH + 2) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let out = run_in_root(&root_of(tmp.path()), "/cache", Mode::Measure, &quiet());
        assert!(
            matches!(out, Err(Unavailable(ref m)) if m.contains("levels")),
            "{out:?}"
        );
    }
}
