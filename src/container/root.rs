//! Files inside an engine container's root, read from the host: the root through the
//! container's checked `/proc/<pid>` (`procfs`), every open with `openat2(RESOLVE_IN_ROOT)` so
//! no symlink leads out of it, and a path's symlinks resolved component by component inside
//! it (docs/cache-paths.md#symlinks). Where the host cannot see the container's `/proc`, the
//! exec twin of `read_file` is `read_file_argv`. Blocking: callers run these in
//! `spawn_blocking`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{fstat, openat, openat2, readlinkat, FileType, Mode, OFlags, ResolveFlags};

use crate::container::dir::stat_at;
use crate::container::procfs::ContainerProc;

/// An argument file larger than this is read only this far.
pub const MAX_FILE: u64 = 64 * 1024;
/// Symlinks followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// One path as the container has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub exists: bool,
    /// With symlinks resolved inside the container's root; `Err` when that failed (a loop).
    pub resolved: Result<String, String>,
}

/// The container's root, through its checked `/proc/<pid>`.
pub fn root(pid: u32, container_id: &str) -> io::Result<OwnedFd> {
    ContainerProc::open(pid, container_id)?.root()
}

/// A file inside the container (an absolute path, or one relative to `workdir`), at most
/// `MAX_FILE` bytes; symlinks are followed inside the container's root only.
pub fn read_file(root: &OwnedFd, path: &str, workdir: &str) -> io::Result<String> {
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", workdir.trim_end_matches('/'))
    };
    let rel = full.trim_start_matches('/');
    // O_NONBLOCK: opening a FIFO does not wait for a writer; anything but a regular file
    // (a FIFO, a device) is then refused before it is read.
    let fd = openat2(
        root,
        if rel.is_empty() { "." } else { rel },
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    if FileType::from_raw_mode(fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!("{full} is not a regular file")));
    }
    let mut text = String::new();
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE)
        .read_to_end(&mut bytes)?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(text)
}

/// argv of the exec that reads an argument file: a regular file only (a FIFO would block), at
/// most `MAX_FILE` bytes.
pub fn read_file_argv(path: &str) -> Vec<String> {
    [
        "sh",
        "-c",
        r#"[ -f "$1" ] && exec head -c "$2" -- "$1""#,
        "sh",
        path,
        &MAX_FILE.to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn readlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    let target = readlinkat(dir, name, Vec::new())?;
    Ok(target.to_string_lossy().into_owned())
}

/// `path` with every symlink resolved inside `root` (an absolute link starts again at the
/// container's root; `..` never goes above it), and whether it exists. Components that do not
/// exist are kept as written. Never opens anything but directories, without following links.
pub fn resolve(root: &OwnedFd, path: &str) -> Fact {
    let mut todo: VecDeque<String> = path.split('/').map(str::to_string).collect();
    // The directories walked into, with their names.
    let mut stack: Vec<(String, OwnedFd)> = vec![];
    let mut links = 0;
    let mut tail: Vec<String> = vec![];
    let mut exists = true;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let dir = stack.last().map_or(root.as_fd(), |(_, fd)| fd.as_fd());
        let st = match stat_at(dir, c.as_bytes()) {
            Ok(st) => st,
            Err(_) => {
                // Missing from here on (or not readable): the rest is as written.
                exists = false;
                tail.push(c);
                tail.extend(todo.drain(..));
                break;
            }
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Fact {
                        exists: false,
                        resolved: Err("too many levels of symbolic links".into()),
                    };
                }
                let target = match readlink_at(dir, &c) {
                    Ok(t) => t,
                    Err(e) => {
                        return Fact {
                            exists: false,
                            resolved: Err(format!("reading the link {c}: {e}")),
                        }
                    }
                };
                if target.starts_with('/') {
                    stack.clear();
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_string());
                }
            }
            FileType::Directory => {
                match openat(
                    dir,
                    c.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => stack.push((c, fd)),
                    Err(_) => {
                        exists = false;
                        tail.push(c);
                        tail.extend(todo.drain(..));
                        break;
                    }
                }
            }
            _ => {
                // A file: the path ends here, or it goes through a file (missing beyond).
                exists = todo.iter().all(|t| t.is_empty() || t == ".");
                tail.push(c);
                tail.extend(todo.drain(..));
                break;
            }
        }
    }
    let mut parts: Vec<String> = stack.into_iter().map(|(n, _)| n).collect();
    for t in tail {
        match t.as_str() {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(t),
        }
    }
    Fact {
        exists,
        resolved: Ok(format!("/{}", parts.join("/"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    use crate::container::procfs::tests::root_of;

    /// A container-like tree: `/srv/ace/.ACEStream -> /dev/shm/.ACEStream` (absolute, so in
    /// the root), a relative link, a loop, a link that tries to climb out.
    pub(crate) fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("dev/shm/.ACEStream/.acestream_cache")).unwrap();
        std::fs::create_dir_all(r.join("srv/ace")).unwrap();
        std::fs::create_dir_all(r.join("home/a/.ACEStream")).unwrap();
        std::fs::create_dir_all(r.join("home/b")).unwrap();
        symlink("/dev/shm/.ACEStream", r.join("srv/ace/.ACEStream")).unwrap();
        symlink("../a/.ACEStream", r.join("home/b/.ACEStream")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink("../../../../../../etc", r.join("srv/up")).unwrap();
        std::fs::write(r.join("srv/file"), b"x").unwrap();
        t
    }

    pub(crate) fn ok(exists: bool, p: &str) -> Fact {
        Fact {
            exists,
            resolved: Ok(p.into()),
        }
    }

    #[test]
    fn resolve_follows_links_inside_the_root_only() {
        let t = tree();
        let root = root_of(t.path());
        assert_eq!(
            resolve(&root, "/srv/ace/.ACEStream/.acestream_cache"),
            ok(true, "/dev/shm/.ACEStream/.acestream_cache")
        );
        assert_eq!(
            resolve(&root, "/home/b/.ACEStream"),
            ok(true, "/home/a/.ACEStream")
        );
        assert_eq!(
            resolve(&root, "/srv/ace/.ACEStream/x/y"),
            ok(false, "/dev/shm/.ACEStream/x/y")
        );
        // `..` stops at the container's root: /etc of the container, never the host's.
        assert_eq!(resolve(&root, "/srv/up"), ok(false, "/etc"));
        assert_eq!(resolve(&root, "/srv/file"), ok(true, "/srv/file"));
        assert_eq!(
            resolve(&root, "/srv/file/below"),
            ok(false, "/srv/file/below")
        );
        assert!(resolve(&root, "/loop1/x").resolved.is_err());
        assert_eq!(resolve(&root, "/"), ok(true, "/"));
    }

    #[test]
    fn read_file_stays_in_the_root() {
        let t = tree();
        std::fs::write(t.path().join("srv/ace.conf"), "--http-port 7000\n").unwrap();
        symlink("/srv/ace.conf", t.path().join("srv/link.conf")).unwrap();
        let root = root_of(t.path());
        assert_eq!(
            read_file(&root, "/srv/link.conf", "/").unwrap(),
            "--http-port 7000\n"
        );
        assert_eq!(
            read_file(&root, "ace.conf", "/srv").unwrap(),
            "--http-port 7000\n"
        );
        assert!(read_file(&root, "/etc/passwd", "/").is_err());
        // A FIFO (nobody writing) is refused at once, not waited on.
        let fifo = t.path().join("srv/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = read_file(&root, "/srv/fifo", "/").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
