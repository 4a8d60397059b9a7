//! Mounts, in one place: parsing `/proc/<pid>/mountinfo` (proc(5)), and the geometry the
//! agent asks of mounts: which mount holds a path (a container's mounts from Docker's inspect
//! and the host's table alike), where on the host an engine's cache lives, which filesystem
//! holds a host path, and a filesystem's space.

use crate::model::{Mount, MountKind};

/// One line of `/proc/self/mountinfo`: the fields the resolution needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The directory of the filesystem mounted here (`/` for the whole filesystem).
    pub root: String,
    pub mountpoint: String,
}

/// Parses mountinfo (proc(5)); paths have space, tab, newline and backslash as octal escapes.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent) = (f.next()?, f.next()?);
            let (dev, root, mountpoint) = (f.next()?, f.next()?, f.next()?);
            Some(MountEntry {
                dev: dev.to_string(),
                root: unescape(root),
                mountpoint: unescape(mountpoint),
            })
        })
        .collect()
}

/// Decodes the octal escapes (`\ooo`) mountinfo uses for space, tab, newline and backslash.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The part of `path` below `prefix`, component-wise (`/a/b` is below `/a`, `/ab` is not);
/// `""` when they are equal.
pub(crate) fn below<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.strip_prefix('/');
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Of `mounts`, the one whose mount point (`at`) is the longest holding `path`, with the rest of
/// `path` below it: the mount a file at `path` is on. Of equal mount points the last, which
/// hides the others. The one answer to that question for the container's mounts (from
/// Docker's inspect) and for the host's mount table alike.
pub(crate) fn holding<T>(
    path: &str,
    mounts: impl IntoIterator<Item = T>,
    at: impl Fn(&T) -> &str,
) -> Option<(T, &str)> {
    mounts
        .into_iter()
        .filter_map(|m| {
            let rest = below(path, at(&m))?;
            Some((m, rest))
        })
        .max_by_key(|(m, _)| at(m).trim_end_matches('/').len())
}

/// (available to unprivileged users, size) in bytes of a statvfs result.
pub(crate) fn space(s: &rustix::fs::StatVfs) -> (u64, u64) {
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    (
        s.f_bavail.saturating_mul(unit),
        s.f_blocks.saturating_mul(unit),
    )
}

fn join(base: &str, rest: &str) -> String {
    if rest.is_empty() {
        base.to_string()
    } else {
        format!("{}/{rest}", base.trim_end_matches('/'))
    }
}

/// Where on the host an engine's cache lives: the host source of the mount holding
/// `cache_path` (the one with the longest destination) plus the rest of the path, else Docker's
/// root directory. `None` when the cache is memory (a tmpfs mount, or `/dev`, a tmpfs in every
/// container) or on no host path the agent can read (a volume without a host directory).
pub(crate) fn host_path(
    cache_path: &str,
    mounts: &[Mount],
    docker_root: Option<&str>,
) -> Option<String> {
    match holding(cache_path, mounts, |m| m.destination.as_str()) {
        Some((m, rest)) => match m.kind {
            MountKind::Bind | MountKind::Volume if m.source.starts_with('/') => {
                Some(join(&m.source, rest))
            }
            _ => None,
        },
        None if below(cache_path, "/dev").is_some() => None,
        None => docker_root.map(str::to_string),
    }
}

/// The filesystem holding `path` (absolute, symlinks resolved): the mount with the longest
/// mountpoint containing it (of equal ones the last, which hides the others). Returns its name,
/// the mountpoint of the same device where the whole filesystem is mounted (root `/`, the
/// shortest if several) so that bind mounts of one disk count once, and the path to statvfs
/// (the visible mount itself). `None` if no mount holds it.
pub(crate) fn filesystem_of(path: &str, entries: &[MountEntry]) -> Option<(String, String)> {
    let (e, _) = holding(path, entries, |e| e.mountpoint.as_str())?;
    let name = entries
        .iter()
        .filter(|o| o.dev == e.dev)
        .min_by_key(|o| (o.root != "/", o.mountpoint.len(), o.mountpoint.as_str()))
        .map_or(&e.mountpoint, |o| &o.mountpoint);
    Some((name.clone(), e.mountpoint.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_component_wise() {
        assert_eq!(below("/a/b", "/a"), Some("b"));
        assert_eq!(below("/a/b", "/a/"), Some("b"));
        assert_eq!(below("/a", "/a"), Some(""));
        assert_eq!(below("/ab", "/a"), None);
        assert_eq!(below("/a/b", "/"), Some("a/b"));
        assert_eq!(below("/a/b/c", "/a/b"), Some("c"));
    }

    #[test]
    fn the_longest_mount_point_holding_a_path_wins_and_the_last_of_equals() {
        let mounts = [
            ("/", 1),
            ("/srv/", 2),
            ("/srv/e1", 3),
            ("/srv/e", 4),
            ("/srv/e1", 5),
        ];
        let find = |path: &str, mounts: &[(&'static str, i32)]| {
            holding(path, mounts.iter().copied(), |m| m.0).map(|(m, rest)| (m.1, rest.to_string()))
        };
        assert_eq!(find("/srv/e1/c", &mounts), Some((5, "c".into())));
        assert_eq!(find("/srv/e", &mounts), Some((4, "".into())));
        assert_eq!(find("/srv/x", &mounts), Some((2, "x".into())));
        assert_eq!(find("/etc", &mounts), Some((1, "etc".into())));
        assert_eq!(find("/etc", &[("/srv", 1)]), None);
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape("a\\134b\\011c\\012"), "a\\b\tc\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        let e = parse_mountinfo("31 30 0:31 / /cache/disk\\040two rw - ext4 /dev/sdb rw\n");
        assert_eq!(e[0].mountpoint, "/cache/disk two");
    }
}
