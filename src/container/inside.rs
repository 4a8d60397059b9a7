//! What discovery reads inside an engine container: its processes' command lines and
//! environments, the argument files they name, and which candidate cache paths exist there,
//! with symlinks resolved inside the container's root (docs/cache-paths.md#order,
//! docs/cache-paths.md#symlinks).
//!
//! From the host where it can: through the container's checked `/proc/<pid>` (`procfs`), its
//! children found from `task/<tid>/children` and each checked to be in the container's cgroup,
//! files opened with `openat2(RESOLVE_IN_ROOT)` so no symlink leads out of the container's
//! root. Else, with `docker exec`, one fixed script (the paths are arguments, never part of it)
//! and `head -c` for a file. Blocking: callers run the host functions in `spawn_blocking`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::cache::path::{Fact, Facts, Questions};
use crate::container::cmdline::Process;
use rustix::fs::{
    fstat, fstatvfs, openat, openat2, readlinkat, FileType, Mode, OFlags, ResolveFlags,
};

use crate::cache::host::{list, stat_at};
use crate::container::procfs::ContainerProc;

/// At most this many of a container's processes are read (breadth first from its main one).
const MAX_PROCESSES: usize = 64;
/// An argument file larger than this is read only this far.
pub const MAX_FILE: u64 = 64 * 1024;
/// `cmdline` and `environ` are read this far.
const MAX_PROC_FILE: u64 = 256 * 1024;
/// Symlinks followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

fn nul_separated(b: &[u8]) -> Vec<String> {
    b.split(|c| *c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The container's processes, its main one first, then their children breadth first, each
/// checked to be in the container's cgroup (a child that is not, or is gone, is skipped).
pub fn processes(pid: u32, container_id: &str) -> io::Result<Vec<Process>> {
    let main = ContainerProc::open(pid, container_id)?;
    let mut out = vec![];
    let mut queue = VecDeque::from([main]);
    let mut seen = vec![pid];
    while let Some(p) = queue.pop_front() {
        let argv = nul_separated(&p.read_bytes("cmdline", MAX_PROC_FILE).unwrap_or_default());
        // Another user's environment needs ptrace access (as the root does); without it
        // the variables of a `sh -c` script stay unknown.
        let env = nul_separated(&p.read_bytes("environ", MAX_PROC_FILE).unwrap_or_default());
        if !argv.is_empty() {
            out.push(Process { argv, env });
        }
        for child in p.children().unwrap_or_default() {
            if out.len() + queue.len() >= MAX_PROCESSES || seen.contains(&child) {
                continue;
            }
            seen.push(child);
            if let Ok(c) = ContainerProc::open(child, container_id) {
                queue.push_back(c);
            }
        }
    }
    Ok(out)
}

/// The file listing every process of the container (also those `docker exec` started, which
/// are no children of its main one): its memory cgroup's `cgroup.procs` on the host, found
/// once (the mount table is long on a host with many containers).
pub fn cgroup_procs(pid: u32, container_id: &str) -> io::Result<Option<String>> {
    let main = ContainerProc::open(pid, container_id)?;
    let cgroup = main.read("cgroup")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(memory_cgroup_dirs(&cgroup, &mounts, container_id)
        .into_iter()
        .map(|dir| format!("{dir}/cgroup.procs"))
        .find(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.lines().any(|l| l.trim() == pid.to_string()))
        }))
}

/// Every process of the container: `procs` (from [`cgroup_procs`]) read now, else its main
/// process's descendants.
pub fn container_pids(pid: u32, container_id: &str, procs: Option<&str>) -> io::Result<Vec<u32>> {
    if let Some(text) = procs.and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect());
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 4 * MAX_PROCESSES {
        if let Ok(p) = ContainerProc::open(out[i], container_id) {
            for c in p.children().unwrap_or_default() {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    Ok(out)
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

/// Entries of a directory inside `root` (not following a final symlink), sorted.
fn list_dir(root: &OwnedFd, dir: &str) -> Vec<String> {
    let rel = dir.trim_start_matches('/');
    let fd = openat2(
        root,
        if rel.is_empty() { "." } else { rel },
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    );
    let Ok(fd) = fd else { return vec![] };
    let mut v: Vec<String> = list(fd.as_fd())
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The answers to `q` inside `root`: each path resolved, and each glob's existing matches (a
/// glob has one `*` standing for one directory name).
pub fn survey(root: &OwnedFd, q: &Questions) -> Facts {
    let paths = q.paths.iter().map(|p| resolve(root, p)).collect();
    let globs = q
        .globs
        .iter()
        .map(|g| {
            let Some((pre, post)) = g.split_once('*') else {
                return vec![];
            };
            let (parent, prefix) = pre.rsplit_once('/').unwrap_or(("", pre));
            list_dir(root, parent)
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .filter_map(|n| {
                    let m = format!("{parent}/{n}{post}");
                    let f = resolve(root, &m);
                    f.exists.then_some((m, f))
                })
                .collect()
        })
        .collect();
    Facts { paths, globs }
}

/// The survey through `docker exec`, where the host's /proc is not visible: `$1…` are the paths,
/// then `--`, then the globs. Prints `H <home>`, one `P <i> <e|m|x> <resolved>` per path (exists,
/// missing, cannot be resolved) and one `G <i> <match> <resolved>` per existing glob match,
/// tab-separated. Symlinks are resolved component by component, as `resolve` does.
pub const SURVEY_SCRIPT: &str = r#"nl='
'; tab=$(printf '\t')
res() {
  todo=${1#/}; out=; n=0
  while [ -n "$todo" ]; do
    c=${todo%%/*}
    case "$todo" in */*) todo=${todo#*/} ;; *) todo= ;; esac
    case "$c" in ''|.) continue ;; ..) out=${out%/*}; continue ;; esac
    if [ -L "$out/$c" ]; then
      n=$((n+1)); [ "$n" -le 40 ] || return 1
      # Kept whole: `$(…)` would drop a target's trailing newlines.
      t=$(readlink -- "$out/$c" && echo .) || return 1
      t=${t%.}; t=${t%"$nl"}
      case "$t" in ''|*"$nl"*|*"$tab"*) return 1 ;; esac
      case "$t" in /*) out= ;; esac
      todo=${t#/}${todo:+/$todo}
    else
      out=$out/$c
    fi
  done
  printf '%s\n' "${out:-/}"
}
case "${HOME:-}" in *"$nl"*|*"$tab"*) h= ;; *) h=${HOME:-} ;; esac
printf 'H\t%s\n' "$h"
i=0; globs=
for p in "$@"; do
  if [ -z "$globs" ] && [ "$p" = -- ]; then globs=1; i=0; continue; fi
  if [ -z "$globs" ]; then
    if r=$(res "$p"); then
      if [ -e "$r" ] || [ -L "$r" ]; then e=e; else e=m; fi
      printf 'P\t%s\t%s\t%s\n' "$i" "$e" "$r"
    else
      printf 'P\t%s\tx\t\n' "$i"
    fi
  else
    for m in $p; do
      case "$m" in *"$nl"*|*"$tab"*) continue ;; esac
      { [ -e "$m" ] || [ -L "$m" ]; } || continue
      r=$(res "$m") && printf 'G\t%s\t%s\t%s\n' "$i" "$m" "$r"
    done
  fi
  i=$((i+1))
done
"#;

/// argv of the exec survey. Paths with control characters are never asked (the answers are
/// lines; such a path is refused as a cache path anyway).
pub fn survey_argv(q: &Questions) -> Vec<String> {
    let mut v: Vec<String> = ["sh", "-c", SURVEY_SCRIPT, "sh"]
        .into_iter()
        .map(String::from)
        .collect();
    v.extend(q.paths.iter().cloned());
    v.push("--".into());
    v.extend(q.globs.iter().cloned());
    v
}

/// The exec survey's output as `Facts` and `$HOME`; `None` when it is not the script's.
pub fn parse_survey(q: &Questions, stdout: &str) -> Option<(Facts, Option<String>)> {
    let mut home = None;
    let mut paths: Vec<Option<Fact>> = vec![None; q.paths.len()];
    let mut globs: Vec<Vec<(String, Fact)>> = vec![vec![]; q.globs.len()];
    let mut saw_home = false;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["H", h] => {
                saw_home = true;
                home = (!h.is_empty()).then(|| h.to_string());
            }
            ["P", i, kind, r] => {
                let Some(slot) = i.parse::<usize>().ok().and_then(|i| paths.get_mut(i)) else {
                    continue;
                };
                *slot = Some(match *kind {
                    "x" => Fact {
                        exists: false,
                        resolved: Err("too many levels of symbolic links".into()),
                    },
                    k => Fact {
                        exists: k == "e",
                        resolved: Ok(r.to_string()),
                    },
                });
            }
            ["G", i, m, r] => {
                if let Some(g) = i.parse::<usize>().ok().and_then(|i| globs.get_mut(i)) {
                    g.push((
                        m.to_string(),
                        Fact {
                            exists: true,
                            resolved: Ok(r.to_string()),
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    if !saw_home {
        return None;
    }
    for g in &mut globs {
        g.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let paths = paths
        .into_iter()
        .zip(&q.paths)
        .map(|(f, p)| {
            f.unwrap_or(Fact {
                exists: false,
                resolved: Ok(p.clone()),
            })
        })
        .collect();
    Some((Facts { paths, globs }, home))
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

// ---------------------------------------------------------------------------------------------
// Caches in memory (docs/cache-paths.md#caches-in-memory): the tmpfs's free space, the
// container's memory cgroup
// ---------------------------------------------------------------------------------------------

/// Free and total space of the tmpfs at `mountpoint` inside the container (statvfs on the
/// directory opened inside its root).
pub fn tmpfs_space(pid: u32, container_id: &str, mountpoint: &str) -> io::Result<(u64, u64)> {
    let root = root(pid, container_id)?;
    let rel = mountpoint.trim_start_matches('/');
    let fd = openat2(
        &root,
        if rel.is_empty() { "." } else { rel },
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(super::mountinfo::space(&fstatvfs(&fd)?))
}

/// The container's memory use and limit from its cgroup, found from its `/proc/<pid>/cgroup`
/// and the host's cgroup mounts.
pub fn memory_use(pid: u32, container_id: &str) -> io::Result<crate::model::MemoryUse> {
    let proc = ContainerProc::open(pid, container_id)?;
    let cgroup = proc.read("cgroup")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dirs = memory_cgroup_dirs(&cgroup, &mounts, container_id);
    let mut last = io::Error::other("no memory cgroup found for the container");
    for dir in dirs {
        let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}"));
        match read_memory(&dir, read) {
            Ok(m) => return Ok(m),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where the container's memory cgroup may be on the host, most likely first: the path its
/// `cgroup` file names under the host's memory (v1) or unified (v2) cgroup mount, then
/// Docker's usual places (a cgroup namespace can hide the real path).
pub fn memory_cgroup_dirs(cgroup: &str, mountinfo: &str, container_id: &str) -> Vec<String> {
    // (mountpoint, root) of the v1 memory hierarchy and of the v2 one.
    let (mut v1, mut v2) = (None, None);
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.is_empty() {
            continue;
        }
        let (root, mountpoint) = (
            crate::container::mountinfo::unescape(l[3]),
            crate::container::mountinfo::unescape(l[4]),
        );
        match r[0] {
            "cgroup"
                if r.get(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "memory")) =>
            {
                v1.get_or_insert((mountpoint, root));
            }
            "cgroup2" => {
                v2.get_or_insert((mountpoint, root));
            }
            _ => {}
        }
    }
    let join = |(mp, root): &(String, String), path: &str| {
        let rel = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(path);
        format!(
            "{}/{}",
            mp.trim_end_matches('/'),
            rel.trim_start_matches('/')
        )
        .trim_end_matches('/')
        .to_string()
    };
    let mut out = vec![];
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == "memory") {
            if let Some(m) = &v1 {
                out.push(join(m, path));
            }
        } else if controllers.is_empty() {
            if let Some(m) = &v2 {
                out.push(join(m, path));
            }
        }
    }
    for (m, path) in [
        (&v1, format!("/docker/{container_id}")),
        (&v2, format!("/system.slice/docker-{container_id}.scope")),
        (&v2, format!("/docker/{container_id}")),
    ] {
        if let Some(m) = m {
            let p = format!("{}{path}", m.0.trim_end_matches('/'));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Limits at or above this are "no limit" (v1 reports one near `i64::MAX`, page-aligned).
const NO_LIMIT: u64 = 1 << 60;

/// Memory use and limit from a cgroup directory's files, v2 (`memory.current`, `memory.max`)
/// or v1 (`memory.usage_in_bytes`, `memory.limit_in_bytes`), less `inactive_file` of
/// `memory.stat` (v1: `total_inactive_file`).
pub fn read_memory(
    dir: &str,
    read: impl Fn(&str) -> io::Result<String>,
) -> io::Result<crate::model::MemoryUse> {
    let num = |s: &str, what: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| io::Error::other(format!("{dir}/{what}: not a number: {:?}", s.trim())))
    };
    let stat_value = |stat: &str, key: &str| {
        stat.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let (usage, limit, inactive) = match read("memory.current") {
        Ok(current) => {
            let max = read("memory.max")?;
            let limit = match max.trim() {
                "max" => None,
                m => Some(num(m, "memory.max")?),
            };
            let stat = read("memory.stat").unwrap_or_default();
            (
                num(&current, "memory.current")?,
                limit,
                stat_value(&stat, "inactive_file"),
            )
        }
        Err(_) => {
            let usage = num(&read("memory.usage_in_bytes")?, "memory.usage_in_bytes")?;
            let limit = num(&read("memory.limit_in_bytes")?, "memory.limit_in_bytes")?;
            let stat = read("memory.stat").unwrap_or_default();
            (usage, Some(limit), stat_value(&stat, "total_inactive_file"))
        }
    };
    Ok(crate::model::MemoryUse {
        usage_bytes: usage.saturating_sub(inactive),
        limit_bytes: limit.filter(|l| *l > 0 && *l < NO_LIMIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    use crate::container::procfs::tests::root_of;

    /// A container-like tree: `/srv/ace/.ACEStream -> /dev/shm/.ACEStream` (absolute, so in
    /// the root), a relative link, a loop, a link that tries to climb out.
    fn tree() -> tempfile::TempDir {
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

    fn ok(exists: bool, p: &str) -> Fact {
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
    fn survey_answers_paths_and_globs() {
        let t = tree();
        let root = root_of(t.path());
        let q = Questions {
            paths: vec!["/dev/shm/.ACEStream".into(), "/nope".into()],
            globs: vec![
                "/home/*/.ACEStream".into(),
                "/srv/*/.ACEStream".into(),
                "/x/*/y".into(),
            ],
        };
        let f = survey(&root, &q);
        assert_eq!(
            f.paths,
            vec![ok(true, "/dev/shm/.ACEStream"), ok(false, "/nope")]
        );
        assert_eq!(
            f.globs[0],
            vec![
                (
                    "/home/a/.ACEStream".to_string(),
                    ok(true, "/home/a/.ACEStream")
                ),
                (
                    "/home/b/.ACEStream".to_string(),
                    ok(true, "/home/a/.ACEStream")
                ),
            ]
        );
        assert_eq!(
            f.globs[1],
            vec![(
                "/srv/ace/.ACEStream".to_string(),
                ok(true, "/dev/shm/.ACEStream")
            )]
        );
        assert!(f.globs[2].is_empty());
    }

    /// The exec script, run by the host's sh on paths in a temp tree (the host's root standing
    /// for the container's), answers as the host walk does on the same root.
    #[test]
    fn the_exec_script_answers_like_the_host_walk() {
        let t = tree();
        let base = t.path().canonicalize().unwrap();
        let b = base.to_str().unwrap();
        let q = Questions {
            paths: vec![
                format!("{b}/home/b/.ACEStream"),
                format!("{b}/nope/x"),
                format!("{b}/loop1"),
                format!("{b}/srv/file"),
            ],
            globs: vec![format!("{b}/home/*/.ACEStream")],
        };
        let argv = survey_argv(&q);
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("HOME", "/srv/eng")
            .output()
            .unwrap();
        let (facts, home) = parse_survey(&q, &String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(home.as_deref(), Some("/srv/eng"));
        let host = survey(&root_of(std::path::Path::new("/")), &q);
        assert_eq!(facts.paths[0], host.paths[0]);
        assert_eq!(facts.paths[0], ok(true, &format!("{b}/home/a/.ACEStream")));
        assert_eq!(facts.paths[1], ok(false, &format!("{b}/nope/x")));
        assert!(facts.paths[2].resolved.is_err());
        assert_eq!(facts.paths[3], host.paths[3]);
        assert_eq!(facts.globs, host.globs);
        assert_eq!(facts.globs[0].len(), 2);
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

    const ID: &str = "6987647a9864175e795ee6e9a3cdb6ae83d421b6f26562dbc33c845ea754bdaa";

    #[test]
    fn the_memory_cgroup_is_found_for_v1_and_v2() {
        let v1_mounts = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let v1 = format!("9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n");
        let dirs = memory_cgroup_dirs(&v1, v1_mounts, ID);
        assert_eq!(dirs[0], format!("/sys/fs/cgroup/memory/docker/{ID}"));
        let v2_mounts = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            memory_cgroup_dirs(&v2, v2_mounts, ID)[0],
            format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope")
        );
        // In a cgroup namespace the container's own path shows as `/`: Docker's usual place
        // comes next.
        let dirs = memory_cgroup_dirs("0::/\n", v2_mounts, ID);
        assert!(
            dirs.contains(&format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope")),
            "{dirs:?}"
        );
    }

    #[test]
    fn memory_use_less_the_page_cache_and_no_limit() {
        let files = |v: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                v.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| t.to_string())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
            }
        };
        let m = |usage, limit| crate::model::MemoryUse {
            usage_bytes: usage,
            limit_bytes: limit,
        };
        let v2 = files(&[
            ("memory.current", "1000\n"),
            ("memory.max", "4000\n"),
            ("memory.stat", "anon 10\ninactive_file 300\nshmem 600\n"),
        ]);
        assert_eq!(read_memory("/c", v2).unwrap(), m(700, Some(4000)));
        let v2 = files(&[("memory.current", "1000\n"), ("memory.max", "max\n")]);
        assert_eq!(read_memory("/c", v2).unwrap(), m(1000, None));
        let v1 = files(&[
            ("memory.usage_in_bytes", "5000\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory.stat",
                "cache 100\ninactive_file 1\ntotal_inactive_file 1000\n",
            ),
        ]);
        assert_eq!(read_memory("/c", v1).unwrap(), m(4000, None));
        let v1 = files(&[
            ("memory.usage_in_bytes", "5000"),
            ("memory.limit_in_bytes", "268435456"),
        ]);
        assert_eq!(read_memory("/c", v1).unwrap(), m(5000, Some(268435456)));
        assert!(read_memory("/c", files(&[])).is_err());
    }

    #[test]
    fn the_processes_of_this_test_are_not_a_containers() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let e = processes(std::process::id(), id).unwrap_err();
        assert!(
            e.to_string().contains("not in the container's cgroup"),
            "{e}"
        );
    }
}
