//! Caches in memory (docs/cache-paths.md#caches-in-memory): the free space of a tmpfs inside
//! an engine container, and the container's memory use and limit from its memory cgroup (v1
//! or v2), found from its `/proc/<pid>/cgroup` and the host's cgroup mounts. Blocking:
//! callers run these in `spawn_blocking`.

use std::io;

use rustix::fs::{fstatvfs, openat2, Mode, OFlags, ResolveFlags};

use crate::container::mountinfo::{space, unescape};
use crate::container::procfs::ContainerProc;
use crate::container::root::root;

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
    Ok(space(&fstatvfs(&fd)?))
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
        let (root, mountpoint) = (unescape(l[3]), unescape(l[4]));
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
}
