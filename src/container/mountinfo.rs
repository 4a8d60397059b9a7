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
    use crate::model::{Mount, MountKind};

    fn bind(src: &str, dst: &str) -> Mount {
        Mount {
            kind: MountKind::Bind,
            source: src.into(),
            destination: dst.into(),
        }
    }

    fn mount(kind: MountKind, src: &str, dst: &str) -> Mount {
        Mount {
            kind,
            source: src.into(),
            destination: dst.into(),
        }
    }

    const CACHE: &str = "/home/appuser/.ACEStream/.acestream_cache";

    #[test]
    fn cache_on_a_bind_mount_is_on_its_host_source() {
        let m = [bind("/srv/e1", CACHE)];
        assert_eq!(
            host_path(CACHE, &m, Some("/var/lib/docker")).as_deref(),
            Some("/srv/e1")
        );
        // A mount of a parent directory: the rest of the path follows the source.
        let m = [bind("/srv/home", "/home/appuser")];
        assert_eq!(
            host_path(CACHE, &m, None).as_deref(),
            Some("/srv/home/.ACEStream/.acestream_cache")
        );
        // The longest destination wins, whatever the order.
        let m = [
            bind("/srv/cache", "/data/ace/cache"),
            bind("/srv/data", "/data"),
        ];
        assert_eq!(
            host_path("/data/ace/cache", &m, None).as_deref(),
            Some("/srv/cache")
        );
        assert_eq!(
            host_path("/data/other", &m, None).as_deref(),
            Some("/srv/data/other")
        );
        // `/dat` is no prefix of `/data/...`.
        let m = [bind("/srv/x", "/dat")];
        assert_eq!(host_path("/data/c", &m, Some("/d")).as_deref(), Some("/d"));
    }

    #[test]
    fn cache_on_a_volume_is_in_the_volume_directory() {
        let m = [mount(
            MountKind::Volume,
            "/var/lib/docker/volumes/v/_data",
            "/home/appuser/.ACEStream",
        )];
        assert_eq!(
            host_path(CACHE, &m, None).as_deref(),
            Some("/var/lib/docker/volumes/v/_data/.acestream_cache")
        );
        // A volume driver without a host directory: not watched.
        let m = [mount(MountKind::Volume, "", CACHE)];
        assert_eq!(host_path(CACHE, &m, Some("/var/lib/docker")), None);
    }

    #[test]
    fn tmpfs_caches_are_not_watched() {
        let m = [mount(MountKind::Tmpfs, "", CACHE)];
        assert_eq!(host_path(CACHE, &m, Some("/var/lib/docker")), None);
        // A tmpfs over a parent, under a bind: the longer one (tmpfs) holds the cache.
        let m = [
            bind("/srv/home", "/home"),
            mount(MountKind::Tmpfs, "", "/home/appuser/.ACEStream"),
        ];
        assert_eq!(host_path(CACHE, &m, Some("/var/lib/docker")), None);
        // /dev and /dev/shm are tmpfs in every container, mounted or not.
        assert_eq!(
            host_path(
                "/dev/shm/.ACEStream/.acestream_cache",
                &[],
                Some("/var/lib/docker")
            ),
            None
        );
        // Unless the operator bind-mounts disk there.
        let m = [bind("/srv/shm", "/dev/shm")];
        assert_eq!(
            host_path("/dev/shm/c", &m, None).as_deref(),
            Some("/srv/shm/c")
        );
        let m = [mount(MountKind::Other, "", CACHE)];
        assert_eq!(host_path(CACHE, &m, Some("/var/lib/docker")), None);
    }

    #[test]
    fn cache_without_a_mount_is_under_docker_root() {
        let m = [bind("/srv/logs", "/var/log")];
        assert_eq!(
            host_path(CACHE, &m, Some("/var/lib/docker")).as_deref(),
            Some("/var/lib/docker")
        );
        // Docker's root not known yet: not resolvable for now.
        assert_eq!(host_path(CACHE, &[], None), None);
    }

    const MOUNTINFO_TEXT: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 254:0 /var/lib/docker /var/lib/docker rw,relatime shared:1 - ext4 /dev/vda rw
50 27 8:17 / /srv/disk\\040two rw,relatime - ext4 /dev/sdb1 rw
51 27 0:60 / /tmp/t rw - tmpfs tmpfs rw,size=65536k
52 51 0:61 / /tmp/t rw - tmpfs tmpfs rw,size=1024k
53 27 8:17 /sub /mnt/sub rw - ext4 /dev/sdb1 rw
";

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let e = parse_mountinfo(MOUNTINFO_TEXT);
        assert_eq!(e.len(), 8);
        assert_eq!(
            e[3],
            MountEntry {
                dev: "254:0".into(),
                root: "/var/lib/docker".into(),
                mountpoint: "/var/lib/docker".into()
            }
        );
        assert_eq!(e[4].mountpoint, "/srv/disk two");
    }

    #[test]
    fn filesystem_is_the_longest_mount_named_by_where_the_disk_is_mounted() {
        let e = parse_mountinfo(MOUNTINFO_TEXT);
        let fs = |p: &str| filesystem_of(p, &e);
        // A bind of a subdirectory of the root disk is the root disk.
        assert_eq!(
            fs("/var/lib/docker/volumes/v/_data"),
            Some(("/".into(), "/var/lib/docker".into()))
        );
        assert_eq!(fs("/home/x"), Some(("/".into(), "/".into())));
        assert_eq!(
            fs("/srv/disk two/e1"),
            Some(("/srv/disk two".into(), "/srv/disk two".into()))
        );
        // A subdirectory of the second disk mounted elsewhere is that disk.
        assert_eq!(
            fs("/mnt/sub/c"),
            Some(("/srv/disk two".into(), "/mnt/sub".into()))
        );
        // Of two mounts on one path, the last hides the first.
        let (name, stat) = fs("/tmp/t/e1").unwrap();
        assert_eq!((name.as_str(), stat.as_str()), ("/tmp/t", "/tmp/t"));
        assert_eq!(
            e.iter()
                .rev()
                .find(|m| m.mountpoint == "/tmp/t")
                .unwrap()
                .dev,
            "0:61"
        );
        assert_eq!(filesystem_of("/x", &[]), None);
    }

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
