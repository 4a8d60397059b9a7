//! A container's processes, read from the host through its checked `/proc/<pid>`
//! (`procfs`): the main one and its children for their command lines and environments (what
//! discovery reads), and every process of the container, also those `docker exec` started,
//! for the busy-files check. Blocking: callers run these in `spawn_blocking`.

use std::collections::VecDeque;
use std::io;

use crate::container::cmdline::Process;
use crate::container::memory::memory_cgroup_dirs;
use crate::container::procfs::ContainerProc;

/// At most this many of a container's processes are read (breadth first from its main one).
const MAX_PROCESSES: usize = 64;
/// `cmdline` and `environ` are read this far.
const MAX_PROC_FILE: u64 = 256 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

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
