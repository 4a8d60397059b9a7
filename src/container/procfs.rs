//! One container's `/proc/<pid>`, seen from the host: opened once, checked to be the
//! container's, and every later read relative to that handle. The janitor's host path
//! (`cache::host`), discovery's reads inside the container (`inside`), disk pressure's memory caches
//! and the connection probe (`activity`) all go through it.
//!
//! Why a handle and not paths: the pid is Docker's for that container, but a pid is reused
//! once its process exits. Opened relative to a pinned `/proc/<pid>`, a file of a process that
//! is gone fails to open (`ENOENT`/`ESRCH`) instead of being another process's; the cgroup
//! check at the open (the process's cgroup names the container id) rules out a pid that was
//! never the container's (the agent in a pid namespace of its own, a stale pid).
//!
//! Blocking: callers run these functions in `spawn_blocking`.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{openat, Dir, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::container::dir::open_dir_at;
use crate::container::procnet;

/// One container's `/proc/<pid>`, opened once and checked to be the container's (its cgroup
/// names it). Every later read goes through this handle: a pid reused meanwhile cannot
/// substitute another process, and once the process is gone the reads fail.
pub struct ContainerProc {
    dir: OwnedFd,
    pid: u32,
}

impl ContainerProc {
    pub fn open(pid: u32, container_id: &str) -> io::Result<ContainerProc> {
        if pid == 0 {
            return Err(io::Error::other("the container's process id is not known"));
        }
        let dir = open_dir_at(CWD, format!("/proc/{pid}").as_str(), OFlags::empty())
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}: {e}")))?;
        let proc = ContainerProc { dir, pid };
        if !in_cgroup_of(&proc.read("cgroup")?, container_id) {
            return Err(io::Error::other(format!(
                "process {pid} is not in the container's cgroup"
            )));
        }
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn open_file(&self, name: &str) -> io::Result<OwnedFd> {
        Ok(openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// At most `max` bytes of a file of `/proc/<pid>/`, read from the start of a new open.
    fn read_max(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let fd = self.open_file(name)?;
        read_to_max(max, |buf, _| rustix::io::read(&fd, buf))
    }

    /// A file of `/proc/<pid>/`; errors name it and keep their kind.
    pub fn read(&self, name: &str) -> io::Result<String> {
        self.read_max(name, u64::MAX)
            .and_then(utf8)
            .map_err(|e| self.named(name, e))
    }

    /// A file of `/proc/<pid>/` as bytes (`cmdline`, `environ`: NUL-separated), at most `max`.
    pub fn read_bytes(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        self.read_max(name, max).map_err(|e| self.named(name, e))
    }

    /// `e` of file `name`, named by its path, its kind kept.
    fn named(&self, name: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("/proc/{}/{name}: {e}", self.pid))
    }

    /// Whether the process checked at the open still runs: its `stat` still opens through
    /// the pinned handle (never through a reused pid).
    pub fn alive(&self) -> bool {
        self.open_file("stat").is_ok()
    }

    /// The process's root directory (the container's), for lookups inside it. Following the
    /// magic link needs ptrace access to the process (root, or `CAP_SYS_PTRACE`).
    pub fn root(&self) -> io::Result<OwnedFd> {
        openat(
            &self.dir,
            "root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/{}/root: {e}", self.pid)))
    }

    /// The process's children (of all its threads), from `task/<tid>/children`.
    pub fn children(&self) -> io::Result<Vec<u32>> {
        let task = open_dir_at(&self.dir, "task", OFlags::empty())?;
        let mut out = vec![];
        for e in Dir::read_from(&task)? {
            let e = e?;
            let tid = e.file_name().to_string_lossy();
            if tid == "." || tid == ".." {
                continue;
            }
            // Through the pinned handle like every other read; a thread gone since the
            // listing has no children to give.
            if let Ok(text) = self.read(&format!("task/{tid}/children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The (device, inode) of every file the process holds open, from its `fd` directory
    /// (following each descriptor's link is what ptrace access allows). A descriptor closed
    /// while listing is skipped.
    pub fn open_inodes(&self) -> io::Result<Vec<(u64, u64)>> {
        let fds = open_dir_at(&self.dir, "fd", OFlags::empty()).map_err(|e| self.named("fd", e))?;
        let mut out = vec![];
        for e in Dir::read_from(&fds)? {
            let e = e?;
            let name = e.file_name();
            if name.to_bytes().first().is_none_or(|b| !b.is_ascii_digit()) {
                continue;
            }
            match rustix::fs::statat(&fds, name, rustix::fs::AtFlags::empty()) {
                Ok(st) => out.push((st.st_dev, st.st_ino)),
                Err(Errno::NOENT) | Err(Errno::BADF) => continue,
                Err(e) => return Err(self.named("fd", e.into())),
            }
        }
        Ok(out)
    }

    /// The connection tables of the container's network namespace (`procnet::read_tables`).
    pub fn connection_tables(&self) -> io::Result<String> {
        procnet::read_tables(|f| self.read(f))
    }

    /// Both TCP tables of the namespace whatever is established, listening sockets included
    /// (`net/tcp6` optional, as in `procnet::read_tables`).
    pub fn tcp_tables(&self) -> io::Result<String> {
        let mut text = self.read("net/tcp")?;
        if let Ok(t6) = self.read("net/tcp6") {
            text.push('\n');
            text.push_str(&t6);
        }
        Ok(text)
    }
}

/// The connection tables of a container's network namespace (`procnet::read_tables`), read
/// from the host through its checked `/proc/<pid>` ([`ContainerProc`]): a pid that is not the
/// container's (the agent in a pid namespace of its own, a pid reused after the container
/// stopped) is an error, never another process's connections.
pub fn connection_tables(pid: u32, container_id: &str) -> io::Result<String> {
    ContainerProc::open(pid, container_id)?.connection_tables()
}

/// Checked handles kept for the containers' lives, by container id: opened and checked when a
/// container is first seen or its pid changes (a restart), and reused until then, so a probe
/// every second costs a read, not an open and a cgroup check.
#[derive(Default)]
pub struct Kept(HashMap<String, Watched>);

/// One container's kept handle, with its connection-table files kept open too (opened the
/// first time a read needs them) and read again from offset 0 each time: a `/proc` file
/// renders its text afresh on every read from the start, and the open (a lookup through
/// `/proc/<pid>/net`) costs more than the read. An open file of `/proc/<pid>/net` keeps the
/// network namespace it was opened in even after the process exits, so every read first asks
/// the pidfd whether the process still runs: once it is gone the files are never read again.
/// Without a pidfd (a kernel before 5.3) nothing is kept but the handle.
struct Watched {
    proc: ContainerProc,
    pidfd: Option<OwnedFd>,
    files: HashMap<String, OwnedFd>,
}

/// A pidfd of process `pid`; `None` where the kernel has none (before 5.3).
fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// A `/proc` file's text.
fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

impl Watched {
    fn open(pid: u32, container_id: &str) -> io::Result<Watched> {
        // The pidfd first: a process still running after the handle was opened and checked is
        // the one both name (its pid cannot have been reused while it runs).
        let pidfd = pidfd_of(pid);
        let proc = ContainerProc::open(pid, container_id)?;
        let w = Watched {
            proc,
            pidfd,
            files: HashMap::new(),
        };
        w.running()?;
        Ok(w)
    }

    /// An error once the process has exited.
    fn running(&self) -> io::Result<()> {
        if self.exited() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {} exited", self.proc.pid),
            ));
        }
        Ok(())
    }

    /// Whether the process has exited (its pidfd is readable); without a pidfd, never.
    fn exited(&self) -> bool {
        let Some(fd) = &self.pidfd else { return false };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
    }

    /// A file of `/proc/<pid>/` through a kept descriptor (`net/snmp`, `net/tcp`, `net/tcp6`).
    fn read(&mut self, name: &str) -> io::Result<String> {
        if self.pidfd.is_none() {
            return self.proc.read(name);
        }
        if !self.files.contains_key(name) {
            let fd = self
                .proc
                .open_file(name)
                .map_err(|e| self.proc.named(name, e))?;
            self.files.insert(name.to_string(), fd);
        }
        let fd = &self.files[name];
        if name == SINGLE_RECORD {
            read_single_record(fd)
        } else {
            read_to_max(u64::MAX, |buf, at| rustix::io::pread(fd, buf, at))
        }
        .and_then(utf8)
        .map_err(|e| self.proc.named(name, e))
    }

    fn connection_tables(&mut self, all_ours: &mut dyn FnMut(u64) -> bool) -> io::Result<String> {
        self.running()?;
        procnet::read_tables_unless(|f| self.read(f), all_ours)
    }
}

/// The kept file whose text the kernel renders as one record (`single_open`): a read that does
/// not fill the buffer has all of it. Reading on to the end would cost a second rendering, as
/// a `pread` past the start of a `/proc` file renders it again from the start to get there.
const SINGLE_RECORD: &str = "net/snmp";

/// A single-record `/proc` file from offset 0, in one read where it fits 4 KiB (`net/snmp` is
/// ~1.5 KiB), else read to the end.
fn read_single_record(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4 << 10];
    loop {
        match rustix::io::pread(fd, &mut buf, 0) {
            Ok(n) if n < buf.len() => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(_) => return read_to_max(u64::MAX, |b, at| rustix::io::pread(fd, b, at)),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// At most `max` bytes, read by `read(buffer, offset)` until it gives 0. Plain reads to the
/// end: std's `read_to_end` first asks a file's size (a statx and an lseek more per read, and
/// /proc says 0), which a probe every second of every engine pays for.
fn read_to_max(
    max: u64,
    mut read: impl FnMut(&mut [u8], u64) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = 4096u64;
    loop {
        let room = (max - out.len() as u64).min(chunk) as usize;
        if room == 0 {
            return Ok(out);
        }
        let start = out.len();
        out.resize(start + room, 0);
        match read(&mut out[start..], start as u64) {
            Ok(0) => {
                out.truncate(start);
                return Ok(out);
            }
            Ok(n) => out.truncate(start + n),
            Err(Errno::INTR) => out.truncate(start),
            Err(e) => return Err(e.into()),
        }
        chunk = (chunk * 2).min(1 << 20);
    }
}

impl Kept {
    /// The container's connection tables through its kept handle (none read when `all_ours`
    /// says every established connection is the agent's, see `procnet::read_tables_unless`).
    /// A read that fails through a kept handle is tried once more through a new one: the
    /// process it pinned is gone, and a new one may have the same pid (a restart Docker reports
    /// with the old pid).
    pub fn connection_tables(
        &mut self,
        pid: u32,
        container_id: &str,
        mut all_ours: impl FnMut(u64) -> bool,
    ) -> io::Result<String> {
        if let Some(w) = self.0.get_mut(container_id).filter(|w| w.proc.pid == pid) {
            if let Ok(text) = w.connection_tables(&mut all_ours) {
                return Ok(text);
            }
        }
        self.0.remove(container_id);
        let mut w = Watched::open(pid, container_id)?;
        let text = w.connection_tables(&mut all_ours)?;
        self.0.insert(container_id.to_string(), w);
        Ok(text)
    }

    /// Drops the handles of containers not in `keep` (gone, stopped, or read otherwise).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.0.retain(|id, _| keep(id));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a cgroup file names the container: a path component that is the id, or systemd's
/// `docker-<id>.scope` (not merely a string containing it: nested containers' paths do).
fn in_cgroup_of(cgroup: &str, container_id: &str) -> bool {
    container_id.len() >= 12
        && cgroup.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("");
            path.split('/').any(|c| {
                c == container_id
                    || c.strip_prefix("docker-")
                        .and_then(|c| c.strip_suffix(".scope"))
                        .is_some_and(|c| c == container_id)
            })
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory of the test's own, pinned as a container's root is (the cache walk's
    /// and the container readers' tests build their trees under it).
    pub(crate) fn root_of(p: &std::path::Path) -> OwnedFd {
        open_dir_at(rustix::fs::CWD, p, OFlags::PATH).expect("open the test's root")
    }

    #[test]
    fn connection_tables_refuse_a_process_that_is_not_the_containers() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        // This test's own process: readable, but not in that container's cgroup.
        let err = connection_tables(std::process::id(), id).unwrap_err();
        assert!(
            err.to_string().contains("not in the container's cgroup"),
            "{err}"
        );
        assert!(connection_tables(0, id).is_err());
        // A pid that does not exist.
        let err = connection_tables(u32::MAX - 1, id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// The kept handles refuse what a new open refuses, and keep nothing they refused.
    #[test]
    fn kept_handles_are_checked_like_a_new_open() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut kept = Kept::default();
        let err = kept
            .connection_tables(std::process::id(), id, |_| false)
            .unwrap_err();
        assert!(
            err.to_string().contains("not in the container's cgroup"),
            "{err}"
        );
        assert!(kept.connection_tables(0, id, |_| false).is_err());
        assert!(kept.is_empty());
    }

    /// A process's handle without the cgroup check (these tests' processes are in no
    /// container), kept the way `Kept` keeps a container's.
    fn watched(pid: u32) -> Watched {
        let dir = open_dir_at(CWD, format!("/proc/{pid}").as_str(), OFlags::empty()).unwrap();
        let pidfd = pidfd_of(pid);
        assert!(pidfd.is_some(), "pidfd_open (Linux 5.3+)");
        Watched {
            proc: ContainerProc { dir, pid },
            pidfd,
            files: HashMap::new(),
        }
    }

    /// A connection to a new listener: (its port, the client's address, both ends).
    fn connect() -> (u16, std::net::SocketAddr, [std::net::TcpStream; 2]) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        (port, client.local_addr().unwrap(), [client, server])
    }

    /// The kept files are read afresh each time (a connection made after they were opened is
    /// in the next read, one closed is not), and once the process has exited they are never
    /// read again.
    #[test]
    fn kept_files_show_the_namespace_now_and_nothing_once_the_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut w = watched(child.id());
        // One connection held throughout: `CurrEstab` > 0, so the tables are read.
        let (a_port, a, _a) = connect();
        let tables = w.connection_tables(&mut |_| false).unwrap();
        assert_eq!(procnet::clients_of(&tables, a_port), vec![a], "{tables}");
        let mut kept: Vec<_> = w.files.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["net/snmp", "net/tcp", "net/tcp6"]);
        let (b_port, b, b_ends) = connect();
        let tables = w.connection_tables(&mut |_| false).unwrap();
        assert_eq!(procnet::clients_of(&tables, b_port), vec![b], "{tables}");
        drop(b_ends);
        let tables = w.connection_tables(&mut |_| false).unwrap();
        assert_eq!(procnet::clients_of(&tables, b_port), vec![], "{tables}");
        assert_eq!(procnet::clients_of(&tables, a_port), vec![a], "{tables}");
        assert!(!w.exited());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(w.exited());
        let err = w.connection_tables(&mut |_| false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("exited"), "{err}");
    }

    #[test]
    fn the_container_id_must_be_a_whole_cgroup_component() {
        let id = "6987647a9864175e795ee6e9a3cdb6ae83d421b6f26562dbc33c845ea754bdaa";
        let other = "1111111111111111111111111111111111111111111111111111111111111111";
        for (cgroup, want) in [
            (
                format!("9:name=systemd:/docker/{id}\n8:pids:/docker/{id}\n"),
                true,
            ),
            (format!("0::/docker/{id}\n"), true),
            (format!("0::/system.slice/docker-{id}.scope\n"), true),
            (format!("0::/system.slice/docker-{id}.scope/init\n"), true),
            // Docker in Docker: the outer container's id is only a prefix of this path.
            (format!("0::/docker/{id}/docker/{other}\n"), true),
            (format!("0::/docker/{other}\n"), false),
            (format!("0::/docker/x{id}\n"), false),
            (format!("0::/my-{id}-parent/docker/{other}\n"), false),
            ("0::/\n".to_string(), false),
        ] {
            assert_eq!(in_cgroup_of(&cgroup, id), want, "{cgroup}");
        }
        // The nested container is found by its own id, not by the outer one's.
        assert!(in_cgroup_of(
            &format!("0::/docker/{id}/docker/{other}\n"),
            other
        ));
        assert!(!in_cgroup_of("0::/docker/abc\n", "abc"), "too short an id");
    }
}
