//! Parsing `/proc/<pid>/mountinfo` (proc(5)), for the disk-pressure resolution of cache
//! filesystems and for finding mounts below a cache directory.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape("a\\134b\\011c\\012"), "a\\b\tc\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        let e = parse_mountinfo("31 30 0:31 / /cache/disk\\040two rw - ext4 /dev/sdb rw\n");
        assert_eq!(e[0].mountpoint, "/cache/disk two");
    }
}
