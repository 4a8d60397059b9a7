//! Disk pressure with every engine busy (README "Disk pressure and pressure-only operation"):
//! cache files of busy engines that no process of their container holds open, deleted oldest
//! first until the filesystem has room again.
//!
//! Why it is safe for a stream: an engine reads and writes its live cache through open files; a
//! file no process holds open is one the engine has finished with (or will fetch again). So the
//! rule is checked right before each delete, not once: every process of the container (its
//! memory cgroup's `cgroup.procs`, so `docker exec`ed ones too) has its `/proc/<pid>/fd` read
//! again, through the cgroup-checked handle (`procfs::ContainerProc`), and a file whose
//! (device, inode) is among them is left. Only regular files are deleted, never a directory or
//! a symlink's target, never outside the cache directory: the walk is the janitor's host walk's
//! (`cache::host`: the cache resolved inside the container's root, every step `O_NOFOLLOW` relative
//! to an open directory, other filesystems not entered), and a name is unlinked only while it
//! is still the inode that was listed.
//!
//! Where the host cannot reach a cache (no `CAP_SYS_PTRACE`, `cleanup.method = "exec"`), the
//! janitor runs [`EXEC_SCRIPT`] in the container instead: the same rule with `stat`.
//!
//! Blocking: the janitor runs these functions in `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{statat, unlinkat, AtFlags, FileType};
use rustix::io::Errno;

use crate::cache::host::{self, Resolve, Unavailable};
use crate::cache::path::validate_cache_path;
use crate::container::dir::list;
use crate::container::processes;
use crate::container::procfs::ContainerProc;

/// Deeper trees than this are not walked (as the janitor's host walk).
const MAX_DEPTH: usize = 128;

/// One busy engine's cache, opened from the host for one pass.
pub struct Cache {
    pub container_id: String,
    pid: u32,
    dir: OwnedFd,
    dev: u64,
    /// The container's `cgroup.procs`, where found.
    procs: Option<String>,
}

impl Cache {
    /// Opens the engine's cache directory inside its root, as the janitor's host walk does.
    /// A missing directory is `Ok(None)`; whatever the host cannot do is `Unavailable`.
    pub fn open(
        pid: u32,
        container_id: &str,
        cache_path: &str,
    ) -> Result<Option<Cache>, Unavailable> {
        validate_cache_path(cache_path).map_err(Unavailable)?;
        let unavailable = |e: io::Error| Unavailable(e.to_string());
        let proc = ContainerProc::open(pid, container_id).map_err(unavailable)?;
        let root = proc.root().map_err(unavailable)?;
        let mountinfo = proc.read("mountinfo").map_err(unavailable)?;
        if host::mounts_below(&mountinfo, cache_path) {
            return Err(Unavailable("mount points below the cache directory".into()));
        }
        let dir = match host::resolve_in_root(root.as_fd(), cache_path.trim_start_matches('/')) {
            Ok(fd) => fd,
            Err(Resolve::Missing) => return Ok(None),
            Err(Resolve::Refused(why)) => return Err(Unavailable(why)),
            Err(Resolve::Unavailable(u)) => return Err(u),
        };
        let dev = rustix::fs::fstat(&dir)
            .map_err(|e| Unavailable(format!("stat: {e}")))?
            .st_dev;
        let procs = processes::cgroup_procs(pid, container_id).map_err(unavailable)?;
        Ok(Some(Cache {
            container_id: container_id.to_string(),
            pid,
            dir,
            dev,
            procs,
        }))
    }

    /// The (device, inode) of every file any process of the container holds open now.
    pub fn open_inodes(&self) -> io::Result<HashSet<(u64, u64)>> {
        let mut out = HashSet::new();
        for pid in processes::container_pids(self.pid, &self.container_id, self.procs.as_deref())? {
            // A process gone since the listing holds nothing; one that is not the container's
            // is refused by the cgroup check.
            if let Ok(p) = ContainerProc::open(pid, &self.container_id) {
                match p.open_inodes() {
                    Ok(v) => out.extend(v),
                    Err(e) if p.alive() => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// Every regular file below the cache directory (not following symlinks, not entering
    /// other filesystems), tagged with `cache`, the index of this cache in a pass.
    pub fn files(&self, cache: usize) -> io::Result<Vec<File>> {
        let mut out = vec![];
        let dir = Arc::new(rustix::io::dup(&self.dir)?);
        self.files_below(dir, cache, 1, &mut out)?;
        Ok(out)
    }

    fn files_below(
        &self,
        dir: Arc<OwnedFd>,
        cache: usize,
        depth: usize,
        out: &mut Vec<File>,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        for e in list(dir.as_fd())? {
            let st = match statat(&*dir, e.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err.into()),
            };
            if st.st_dev != self.dev {
                continue;
            }
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => out.push(File {
                    cache,
                    parent: dir.clone(),
                    name: e.name,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    size: st.st_size.max(0) as u64,
                    mtime: (st.st_mtime, st.st_mtime_nsec as i64),
                }),
                FileType::Directory => {
                    let sub = match crate::container::dir::open_dir_at(
                        dir.as_fd(),
                        e.name.as_c_str(),
                        rustix::fs::OFlags::NOFOLLOW,
                    ) {
                        Ok(f) => f,
                        Err(_) => continue,
                    };
                    if rustix::fs::fstat(&sub)?.st_dev != self.dev {
                        continue;
                    }
                    self.files_below(Arc::new(sub), cache, depth + 1, out)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A regular file of a cache, as listed.
pub struct File {
    pub cache: usize,
    parent: Arc<OwnedFd>,
    name: CString,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time (seconds, nanoseconds): the oldest go first.
    pub mtime: (i64, i64),
}

impl File {
    /// Unlinks the file if no process holds it open (`open`, read just before) and its name
    /// is still the regular file that was listed. Whether it was deleted.
    pub fn delete_unless_open(&self, open: &HashSet<(u64, u64)>) -> io::Result<bool> {
        if open.contains(&(self.dev, self.ino)) {
            return Ok(false);
        }
        let parent: BorrowedFd<'_> = self.parent.as_fd();
        let st = match statat(parent, self.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || (st.st_dev, st.st_ino) != (self.dev, self.ino)
        {
            return Ok(false);
        }
        match unlinkat(parent, self.name.as_c_str(), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a pass took from each cache: (files, bytes), by the caches' order.
pub type Freed = Vec<(u64, u64)>;

/// Deletes unopened files of `caches`, oldest first across all of them, asking `enough` after
/// each (free space is back above the threshold) and stopping then, or when `cancel` is set.
/// Before each delete the owning container's open files are read again (`open_of`: in the
/// agent, [`Cache::open_inodes`]).
pub fn free(
    caches: &[Cache],
    open_of: impl Fn(&Cache) -> io::Result<HashSet<(u64, u64)>>,
    mut enough: impl FnMut() -> bool,
    cancel: &AtomicBool,
) -> Freed {
    let mut freed: Freed = vec![(0, 0); caches.len()];
    if enough() {
        return freed;
    }
    let mut files: Vec<File> = caches
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.files(i).unwrap_or_default())
        .collect();
    files.sort_by_key(|f| f.mtime);
    for f in &files {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        // A cache whose processes cannot be read is not touched.
        let Ok(open) = open_of(&caches[f.cache]) else {
            continue;
        };
        if let Ok(true) = f.delete_unless_open(&open) {
            freed[f.cache].0 += 1;
            freed[f.cache].1 += f.size;
            if enough() {
                break;
            }
        }
    }
    freed
}

/// The exec fallback, run as `sh -c SCRIPT sh <cache dir> <bytes to free>`: the files below the
/// directory, oldest first, each deleted unless a process of the container holds it open (its
/// `/proc/*/fd`, read again before each), until the bytes are freed; prints
/// `freed <files> <bytes>`. The path is an argument, never part of the script.
pub const EXEC_SCRIPT: &str = r#"d=$1; want=$2
if [ ! -d "$d" ] || [ -L "$d" ]; then echo "freed 0 0"; exit 0; fi
cd "$d" || exit 3
find . -xdev -type f -exec stat -c '%Y %s %d:%i %n' -- {} + 2>/dev/null | sort -n | {
  freed=0; n=0
  while read -r mt size key name; do
    [ "$freed" -ge "$want" ] && break
    if stat -L -c '%d:%i' /proc/[0-9]*/fd/* 2>/dev/null | grep -qx "$key"; then continue; fi
    [ -f "$name" ] && [ ! -L "$name" ] || continue
    [ "$(stat -c '%d:%i' -- "$name" 2>/dev/null)" = "$key" ] || continue
    rm -f -- "$name" && freed=$((freed + size)) && n=$((n + 1))
  done
  echo "freed $n $freed"
}
"#;

/// The argv of [`EXEC_SCRIPT`] for one cache.
pub fn exec_argv(cache_path: &str, want: u64) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        EXEC_SCRIPT.into(),
        "sh".into(),
        cache_path.into(),
        want.to_string(),
    ]
}

/// (files, bytes) from the script's last line.
pub fn parse_exec(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().rev().find(|l| l.starts_with("freed "))?;
    let mut f = line.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// A cache in a temporary directory, as `Cache` would hold it (no container).
    fn cache_of(dir: &std::path::Path) -> Cache {
        let fd =
            crate::container::dir::open_dir_at(rustix::fs::CWD, dir, rustix::fs::OFlags::empty())
                .unwrap();
        let dev = rustix::fs::fstat(&fd).unwrap().st_dev;
        Cache {
            container_id: "test".into(),
            pid: std::process::id(),
            dir: fd,
            dev,
            procs: None,
        }
    }

    fn write(path: &std::path::Path, bytes: usize, age_s: i64) {
        std::fs::File::create(path)
            .unwrap()
            .write_all(&vec![1u8; bytes])
            .unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn inode(path: &std::path::Path) -> (u64, u64) {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn files_are_listed_regular_only_and_deleted_unless_open() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        write(&d.join("old"), 10, 300);
        write(&d.join("sub/older"), 20, 600);
        write(&d.join("open"), 30, 900);
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("keep"), 5, 1000);
        std::os::unix::fs::symlink(outside.path().join("keep"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("linkdir")).unwrap();
        let c = cache_of(d);
        let mut files = c.files(0).unwrap();
        files.sort_by_key(|f| f.mtime);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.name.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["open", "older", "old"]);
        let open: HashSet<(u64, u64)> = [inode(&d.join("open"))].into();
        assert!(!files[0].delete_unless_open(&open).unwrap());
        assert!(files[1].delete_unless_open(&open).unwrap());
        assert!(d.join("open").exists() && !d.join("sub/older").exists());
        // Replaced since the listing (another inode under the name): left alone.
        write(&d.join("old.new"), 10, 0);
        std::fs::rename(d.join("old.new"), d.join("old")).unwrap();
        assert!(!files[2].delete_unless_open(&open).unwrap());
        assert!(d.join("old").exists());
        assert!(outside.path().join("keep").exists());
        assert!(d.join("sub").is_dir() && d.join("link").is_symlink());
    }

    #[test]
    fn a_pass_deletes_oldest_first_across_caches_until_enough() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(&a.path().join("a1"), 100, 500);
        write(&b.path().join("b1"), 200, 400);
        write(&a.path().join("a2"), 300, 300);
        write(&b.path().join("b2"), 400, 200);
        let caches = [cache_of(a.path()), cache_of(b.path())];
        // The stand-in for the container's processes: the test's own, which hold nothing here.
        let mut deleted = 0u64;
        let freed = free(
            &caches,
            |_| Ok(HashSet::new()),
            || {
                deleted += 1;
                // Enough once three files are gone (the first call is before any delete).
                deleted > 3
            },
            &AtomicBool::new(false),
        );
        assert_eq!(freed, vec![(2, 400), (1, 200)]);
        assert!(!a.path().join("a1").exists() && !b.path().join("b1").exists());
        assert!(!a.path().join("a2").exists() && b.path().join("b2").exists());
        let none = free(
            &caches,
            |_| Ok(HashSet::new()),
            || true,
            &AtomicBool::new(false),
        );
        // A cache whose processes cannot be read gives nothing.
        let refused = free(
            &caches,
            |_| Err(io::Error::other("gone")),
            || false,
            &AtomicBool::new(false),
        );
        assert_eq!(refused, vec![(0, 0), (0, 0)]);
        assert_eq!(none, vec![(0, 0), (0, 0)]);
        assert!(b.path().join("b2").exists());
    }

    #[test]
    fn the_scripts_last_line_is_read() {
        assert_eq!(parse_exec("noise\nfreed 3 1500\n"), Some((3, 1500)));
        assert_eq!(parse_exec("freed x\n"), None);
        let argv = exec_argv("/c/a b", 10);
        assert_eq!(argv[4], "/c/a b");
        assert!(!argv[2].contains("/c/a b"));
    }
}
