//! Disk pressure (docs/cache-paths.md#disk-pressure): which host filesystem each engine's cache
//! lives on, its free space every `pressure.interval`, and, below `pressure.min_free`, cleanups of
//! the idle engines on it, largest cache first, re-reading free space after each, until it is back
//! above the threshold or no idle engine with something to free is left.
//!
//! Owns the mount resolution and the episode state of each filesystem. Never decides idleness
//! (the registry does, and re-checks it inside the janitor's cleanup right before deleting) and
//! never runs an exec itself (the janitor measures and cleans, within `cleanup.concurrency`).
//! Reports to the registry with `RegistryCmd::Filesystems`.
//!
//! Where a cache lives: the host source of the container mount (bind or volume) that holds the
//! cache path, else Docker's root directory; a tmpfs mount (and `/dev`, which Docker gives every
//! container as tmpfs) is memory, not disk, and is not watched. The filesystem of that host path
//! is the longest mount in `/proc/self/mountinfo` that holds it, named by where that filesystem
//! itself is mounted, so two bind mounts of one disk count once.
//!
//! Every call that touches a filesystem (statvfs, canonicalize) runs in `spawn_blocking` with a
//! deadline, because a hung mount (NFS, FUSE) blocks in the kernel: a path whose call timed out
//! is marked stuck and skipped until that call returns, so blocked threads do not pile up one per
//! tick (node_exporter's `stuckMountWatcher`).
//!
//! Exec cost: a pass measures the idle engines on the filesystem (one exec each) and cleans them
//! one at a time (one exec each) until free space is back. An engine idle ever since its last
//! cleanup has nothing to free and costs nothing; one handled in an episode (cleaned, or measured
//! with nothing to free) is not measured again in that episode unless it has streamed since. So
//! pressure that persists with nothing idle left costs no exec per tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tracing::debug;

use crate::cache;
use crate::cache::host::statvfs;
use crate::config::{BusyFiles, MinFree};
use crate::container::memory;
use crate::container::mountinfo::{filesystem_of, host_path, parse_mountinfo, MountEntry};
use crate::docker::DockerClient;
use crate::janitor::{CleanupError, Janitor};
use crate::logging;
use crate::model::{
    id12, CacheMedium, EngineState, Filesystem, MemoryUse, Snapshot, Timestamp, Trigger,
};
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;
use crate::stuck::{Call, Guarded};

/// Prefix of the key of a memory cache's tmpfs among the watched filesystems.
const MEMORY_KEY: &str = "memory:";

/// Whether a container's memory use is at or above `high` percent of its limit.
pub fn over_memory_high(m: MemoryUse, high: f64) -> bool {
    m.limit_bytes
        .is_some_and(|l| m.usage_bytes as f64 >= l as f64 * high / 100.0)
}

/// Deadline of one statvfs or canonicalize (node_exporter's default mount timeout).
pub const FS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MOUNTINFO: &str = "/proc/self/mountinfo";

// ---------------------------------------------------------------------------------------------
// Pure parts: threshold, plan (where a cache lives is `container::mountinfo`'s)
// ---------------------------------------------------------------------------------------------

/// `pressure.min_free` in bytes for a filesystem of `size` bytes.
pub fn threshold_bytes(min_free: MinFree, size: u64) -> u64 {
    match min_free {
        MinFree::Percent(p) => (size as f64 * p / 100.0).ceil() as u64,
        MinFree::Bytes(b) => b,
    }
}

/// One measured idle engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub bytes: u64,
}

/// The cleaning order: largest cache first. Empty caches (nothing to free) and caches below
/// `cleanup.min_bytes` (never deleted) are left out; ties go by name, so the order is stable.
pub fn plan(mut measured: Vec<Candidate>, min_bytes: u64) -> Vec<Candidate> {
    measured.retain(|c| c.bytes > 0 && c.bytes >= min_bytes);
    measured.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    measured
}

/// The engines a pass on `mountpoint` may measure: running, idle, not being cleaned, with a
/// valid cache path, on that filesystem (`on`: engine id → filesystem), with something to free:
/// not idle ever since its last cleanup (an idle engine writes nothing; what is left is the
/// empty directory, which `du` counts as a few bytes), and not already handled in this episode
/// (`done`: id → when) unless it has streamed since.
pub fn eligible<'a>(
    snapshot: &'a Snapshot,
    on: &HashMap<String, String>,
    mountpoint: &str,
    done: &HashMap<String, Timestamp>,
) -> Vec<&'a EngineState> {
    snapshot
        .engines
        .iter()
        .filter(|e| e.running && e.is_idle() && !e.cleaning && e.cache_to_clean().is_ok())
        .filter(|e| on.get(&e.engine.container_id).map(String::as_str) == Some(mountpoint))
        .filter(|e| !e.known_empty())
        .filter(
            |e| match (e.engine.last_cache_cleanup, e.engine.last_stream_usage) {
                (Some(cleaned), Some(used)) => used > cleaned,
                (Some(_), None) => false,
                (None, _) => true,
            },
        )
        .filter(|e| match done.get(&e.engine.container_id) {
            None => true,
            Some(at) => e.engine.last_stream_usage.is_some_and(|u| u > *at),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Filesystem calls with a deadline
// ---------------------------------------------------------------------------------------------

/// Size of a container's `json-file` log at `path` (a host path) with its rotated files
/// (`<name>.1`, `<name>.2.gz`, ...); read through `/proc/1/root` where the agent's own root
/// does not show it (the agent in a container with `pid: host`). `None`: not readable.
pub fn log_bytes(path: &str) -> Option<u64> {
    let p = std::path::Path::new(path);
    let (dir, name) = (p.parent()?, p.file_name()?.to_string_lossy().into_owned());
    let read = |dir: &std::path::Path| -> Option<u64> {
        let mut total = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let rotated = n
                .strip_prefix(&name)
                .and_then(|r| r.strip_prefix('.'))
                .map(|r| r.trim_end_matches(".gz"))
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()));
            if n == name || rotated {
                let len = e.metadata().ok()?.len();
                total = Some(total.unwrap_or(0) + len);
            }
        }
        total
    };
    read(dir).or_else(|| {
        let rel = dir.strip_prefix("/").ok()?;
        read(&std::path::Path::new("/proc/1/root").join(rel))
    })
}

/// `path` with symlinks resolved as far as the agent may look (a directory it cannot search
/// keeps the rest of the path as written).
fn canonical(path: &str) -> String {
    let mut base = std::path::PathBuf::from(path);
    let mut rest: Vec<std::ffi::OsString> = vec![];
    loop {
        if let Ok(c) = std::fs::canonicalize(&base) {
            let mut c = c;
            for r in rest.iter().rev() {
                c.push(r);
            }
            return c.to_string_lossy().into_owned();
        }
        match (base.file_name().map(|n| n.to_owned()), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                base = parent.to_path_buf();
            }
            _ => return path.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The task
// ---------------------------------------------------------------------------------------------

/// The pressure task's settings and handles; `run` starts it.
pub struct Pressure {
    pub registry: RegistryHandle,
    pub janitor: Janitor,
    pub docker: DockerClient,
    /// `pressure.interval`.
    pub interval: Duration,
    /// `pressure.min_free`; `None` ("off"): filesystems are still read and reported, never
    /// relieved.
    pub min_free: Option<MinFree>,
    /// `pressure.docker_root`; `None`: Docker's `DockerRootDir`.
    pub docker_root: Option<String>,
    /// `pressure.memory_high`, percent of a memory cache's container's memory limit.
    pub memory_high: Option<f64>,
    /// `pressure.busy_files`: what may be deleted of busy engines once no idle one is left.
    pub busy_files: BusyFiles,
    /// Deadline of each statvfs or canonicalize (`FS_CALL_TIMEOUT`).
    pub fs_timeout: Duration,
}

/// What a watched filesystem is and how it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FsKind {
    /// A host filesystem: statvfs of a visible mountpoint of it.
    Disk { stat_path: String },
    /// One container's tmpfs, read inside the container (statvfs through its `/proc/<pid>`
    /// root), and the container's memory cgroup beside it.
    Memory {
        id: String,
        name: String,
        pid: u32,
        mountpoint: String,
    },
}

/// One watched filesystem.
struct FsState {
    kind: FsKind,
    /// Last reading (avail, size); `None` until read once.
    last: Option<(u64, u64)>,
    /// A memory cache's container: its last memory use.
    memory: Option<MemoryUse>,
    /// The last statvfs failed (logged once, on the transition).
    unreadable: bool,
    episode: Option<Episode>,
}

/// A disk-pressure episode on one filesystem: from free space falling below the threshold to
/// it being back at or above it.
#[derive(Default)]
struct Episode {
    persists_warned: bool,
    /// Engines handled in this episode (cleaned, or with nothing to free), and when.
    done: HashMap<String, Timestamp>,
}

struct Worker {
    p: Pressure,
    guarded: Guarded,
    docker_root: Option<String>,
    docker_was_up: bool,
    /// Host path → the same with symlinks resolved.
    canonical: HashMap<String, String>,
    /// Last good mount table.
    mounts: Vec<MountEntry>,
    /// Engine id → filesystem key, for engines whose cache is on a watched filesystem (a disk:
    /// its mountpoint; a tmpfs: `MEMORY_KEY` + container id + its mountpoint).
    engine_fs: HashMap<String, String>,
    /// Memory caches whose container the host cannot read, already said.
    unwatched: logging::SaidOnce,
    filesystems: BTreeMap<String, FsState>,
    /// What the last resolution was based on; a change triggers a round at once.
    fingerprint: Vec<(String, String)>,
}

impl Pressure {
    /// Runs until shutdown: a round every `pressure.interval`, and one as soon as the set of
    /// engines (or Docker's reachability) changes, so a new engine gets its `cache_mountpoint`
    /// without waiting for the tick.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut snapshots = self.registry.subscribe();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut w = Worker {
            guarded: Guarded::new(
                self.fs_timeout,
                logging::filesystem_stuck,
                logging::filesystem_recovered,
            ),
            docker_root: self.docker_root.clone(),
            p: self,
            docker_was_up: false,
            canonical: HashMap::new(),
            mounts: Vec::new(),
            engine_fs: HashMap::new(),
            unwatched: logging::SaidOnce::default(),
            filesystems: BTreeMap::new(),
            fingerprint: Vec::new(),
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = snapshots.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    if fingerprint(&snap) == w.fingerprint {
                        continue;
                    }
                }
                _ = shutdown.recv() => return,
            }
            w.round(&shutdown).await;
        }
    }
}

/// Running engines and their cache paths, plus Docker's reachability.
fn fingerprint(snap: &Snapshot) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = snap
        .engines
        .iter()
        .filter(|e| e.running)
        .map(|e| (e.engine.container_id.clone(), e.engine.cache_path.clone()))
        .collect();
    v.push(("docker_up".into(), snap.docker_up.to_string()));
    v
}

impl Worker {
    async fn round(&mut self, shutdown: &Shutdown) {
        let snap = self.p.registry.snapshot();
        self.fingerprint = fingerprint(&snap);
        self.refresh_docker_root(&snap).await;
        let mountpoints = self.resolve(&snap).await;
        let names: Vec<String> = self.filesystems.keys().cloned().collect();
        for name in &names {
            self.read(name).await;
        }
        self.publish(Some(mountpoints)).await;
        self.log_sizes(&snap).await;
        for name in names {
            if shutdown.is_shutdown() {
                return;
            }
            if self
                .filesystems
                .get(&name)
                .is_some_and(|f| f.episode.is_some())
            {
                self.relieve(&name, shutdown).await;
            }
        }
    }

    /// The engines' Docker logs, another disk filler: their sizes (told to the registry when
    /// they changed). Read-only: Docker owns the logs.
    async fn log_sizes(&mut self, snap: &Snapshot) {
        let wanted: Vec<(String, String, Option<u64>)> = snap
            .engines
            .iter()
            .filter(|e| e.running)
            .filter_map(|e| {
                let (path, _) = e.runtime.log.as_ref()?;
                Some((
                    e.engine.container_id.clone(),
                    path.clone(),
                    e.engine.log_bytes,
                ))
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let work = move || {
            wanted
                .into_iter()
                .filter_map(|(id, path, before)| {
                    let now = log_bytes(&path);
                    (now != before).then_some((id, now))
                })
                .collect::<Vec<_>>()
        };
        if let Call::Done(changed) = self.guarded.run("engine logs", work).await {
            if !changed.is_empty() {
                self.p.registry.send(RegistryCmd::LogSizes(changed)).await;
            }
        }
    }

    /// Asks Docker for its root directory once, and again after each reconnect (a restarted
    /// daemon may have moved it), unless `pressure.docker_root` is set.
    async fn refresh_docker_root(&mut self, snap: &Snapshot) {
        let reconnected = snap.docker_up && !self.docker_was_up;
        self.docker_was_up = snap.docker_up;
        if self.p.docker_root.is_some() || !snap.docker_up {
            return;
        }
        if self.docker_root.is_none() || reconnected {
            match self.p.docker.root_dir().await {
                Ok(Some(root)) => self.docker_root = Some(root),
                Ok(None) => debug!("Docker reports no root directory"),
                Err(e) => debug!(error = %e, "cannot read Docker's root directory"),
            }
        }
    }

    /// Finds each running engine's filesystem; adds newly seen filesystems and drops those no
    /// engine is on any more. Returns every running engine's `cache_mountpoint`.
    async fn resolve(&mut self, snap: &Snapshot) -> Vec<(String, Option<String>)> {
        let running = || snap.engines.iter().filter(|e| e.running);
        let memory: Vec<(&EngineState, String)> = running()
            .filter_map(|e| match e.cache_to_clean() {
                Ok(c) if c.medium == CacheMedium::Memory => {
                    Some((e, cache::path::tmpfs_of(&c.path, &e.runtime.mounts)))
                }
                _ => None,
            })
            .collect();
        let hosts: Vec<(String, Option<String>)> = running()
            .filter(|e| e.engine.cache_medium != CacheMedium::Memory)
            .map(|e| {
                let host = e.cache_to_clean().ok().and_then(|c| {
                    host_path(&c.path, &e.runtime.mounts, self.docker_root.as_deref())
                });
                (e.engine.container_id.clone(), host)
            })
            .collect();
        // Only paths in use are kept: engines come and go, each with its own bind source.
        let in_use: HashSet<&String> = hosts.iter().filter_map(|(_, h)| h.as_ref()).collect();
        self.canonical.retain(|h, _| in_use.contains(h));
        let new: HashSet<&String> = in_use
            .into_iter()
            .filter(|h| !self.canonical.contains_key(*h))
            .collect();
        for h in new {
            let p = h.clone();
            if let Call::Done(c) = self.guarded.run(h, move || canonical(&p)).await {
                self.canonical.insert(h.clone(), c);
            }
        }
        if let Call::Done(Ok(text)) = self
            .guarded
            .run(MOUNTINFO, || std::fs::read_to_string(MOUNTINFO))
            .await
        {
            self.mounts = parse_mountinfo(&text);
        }
        let mut out = Vec::with_capacity(hosts.len() + memory.len());
        let mut engine_fs = HashMap::new();
        let mut seen: HashMap<String, FsKind> = HashMap::new();
        for (id, host) in hosts {
            // A path not yet canonicalized (its call is stuck) waits for a later round.
            let fs = host
                .and_then(|h| self.canonical.get(&h).cloned())
                .map(|c| filesystem_of(&c, &self.mounts).unwrap_or_else(|| (c.clone(), c)));
            match fs {
                Some((name, stat_path)) => {
                    seen.insert(name.clone(), FsKind::Disk { stat_path });
                    engine_fs.insert(id.clone(), name.clone());
                    out.push((id, Some(name)));
                }
                None => out.push((id, None)),
            }
        }
        for (e, mountpoint) in memory {
            let id = e.engine.container_id.clone();
            let key = format!("{MEMORY_KEY}{id}:{mountpoint}");
            seen.insert(
                key.clone(),
                FsKind::Memory {
                    id: id.clone(),
                    name: e.engine.container_name.clone(),
                    pid: e.runtime.pid,
                    mountpoint: mountpoint.clone(),
                },
            );
            engine_fs.insert(id.clone(), key);
            out.push((id, Some(mountpoint)));
        }
        self.filesystems.retain(|name, _| seen.contains_key(name));
        for (name, kind) in seen {
            self.filesystems
                .entry(name)
                .and_modify(|f| f.kind.clone_from(&kind))
                .or_insert(FsState {
                    kind,
                    last: None,
                    memory: None,
                    unreadable: false,
                    episode: None,
                });
        }
        self.engine_fs = engine_fs;
        out
    }

    /// Reads one filesystem's free space (and for a memory cache its container's memory) and
    /// starts or ends its episode.
    async fn read(&mut self, name: &str) {
        let Some(fs) = self.filesystems.get_mut(name) else {
            return;
        };
        let reading = match fs.kind.clone() {
            FsKind::Disk { stat_path } => {
                let path = stat_path.clone();
                match self.guarded.run(&stat_path, move || statvfs(&path)).await {
                    Call::Done(r) => r.map(|v| (v, None)),
                    Call::Unavailable | Call::Panicked(_) => return,
                }
            }
            FsKind::Memory {
                id,
                pid,
                mountpoint,
                ..
            } => {
                let work = {
                    let (id, mountpoint) = (id.clone(), mountpoint.clone());
                    move || {
                        let space = memory::tmpfs_space(pid, &id, &mountpoint)?;
                        // No cgroup to read (another cgroup namespace, no /sys/fs/cgroup):
                        // watched by its free space only.
                        Ok::<_, std::io::Error>((space, memory::memory_use(pid, &id).ok()))
                    }
                };
                match self.guarded.run(name, work).await {
                    Call::Done(Err(e)) if !fs.unreadable => {
                        if self.unwatched.first(&id) {
                            logging::memory_cache_unwatched(&id, &e.to_string());
                        }
                        fs.unreadable = true;
                        return;
                    }
                    Call::Done(r) => r,
                    Call::Unavailable | Call::Panicked(_) => return,
                }
            }
        };
        match reading {
            Ok((v, memory)) => {
                fs.last = Some(v);
                fs.memory = memory;
                fs.unreadable = false;
            }
            Err(e) => {
                if !fs.unreadable {
                    logging::filesystem_unreadable(name, &e.to_string());
                }
                fs.unreadable = true;
                return;
            }
        }
        let Some((avail, size)) = fs.last else {
            return;
        };
        let threshold = self.p.min_free.map(|m| threshold_bytes(m, size));
        let low_space = threshold.is_some_and(|t| avail < t);
        let high_memory = match (&fs.kind, fs.memory, self.p.memory_high) {
            (FsKind::Memory { .. }, Some(m), Some(high)) => over_memory_high(m, high),
            _ => false,
        };
        if low_space || high_memory {
            if fs.episode.is_none() {
                match &fs.kind {
                    FsKind::Disk { .. } => {
                        let (t, min_free) = (threshold.unwrap_or(0), self.p.min_free);
                        let text = min_free.map(|m| m.to_string()).unwrap_or_default();
                        logging::pressure_started(name, avail, t, &text);
                    }
                    FsKind::Memory {
                        id,
                        name: n,
                        mountpoint,
                        ..
                    } => logging::memory_pressure_started(
                        id,
                        n,
                        mountpoint,
                        avail,
                        threshold.filter(|_| low_space),
                        fs.memory.filter(|_| high_memory),
                    ),
                }
                fs.episode = Some(Episode::default());
            }
        } else if fs.episode.take().is_some() {
            match &fs.kind {
                FsKind::Disk { .. } => {
                    logging::pressure_resolved(name, avail, threshold.unwrap_or(0))
                }
                FsKind::Memory {
                    id,
                    name: n,
                    mountpoint,
                    ..
                } => logging::memory_pressure_resolved(id, n, mountpoint, avail),
            }
        }
    }

    /// Tells the registry what was read (and, after a resolution, every engine's filesystem).
    async fn publish(&self, mountpoints: Option<Vec<(String, Option<String>)>>) {
        let filesystems = self
            .filesystems
            .iter()
            .filter_map(|(name, f)| {
                let (avail, size) = f.last?;
                let (mountpoint, medium, container) = match &f.kind {
                    FsKind::Disk { .. } => (name.clone(), CacheMedium::Disk, None),
                    FsKind::Memory {
                        id,
                        name: n,
                        mountpoint,
                        ..
                    } => (
                        mountpoint.clone(),
                        CacheMedium::Memory,
                        Some((id.clone(), n.clone())),
                    ),
                };
                Some(Filesystem {
                    mountpoint,
                    medium,
                    container,
                    avail_bytes: avail,
                    size_bytes: size,
                    min_free_bytes: self.p.min_free.map(|m| threshold_bytes(m, size)),
                    pressure: f.episode.is_some(),
                })
            })
            .collect();
        let memory = self
            .filesystems
            .values()
            .filter_map(|f| match (&f.kind, f.memory) {
                (FsKind::Memory { id, .. }, Some(m)) => Some((id.clone(), m)),
                _ => None,
            })
            .collect();
        self.p
            .registry
            .send(RegistryCmd::Filesystems {
                filesystems,
                mountpoints,
                memory,
            })
            .await;
    }

    fn episode(&mut self, name: &str) -> Option<&mut Episode> {
        self.filesystems.get_mut(name)?.episode.as_mut()
    }

    /// One pass over a filesystem under pressure: measure its idle engines, clean them largest
    /// first, re-reading free space after each, and stop once it is back above the threshold.
    async fn relieve(&mut self, name: &str, shutdown: &Shutdown) {
        let snap = self.p.registry.snapshot();
        // Nothing can be measured or cleaned while Docker is away; the episode goes on and the
        // next round after the reconnect picks it up.
        if !snap.docker_up {
            return;
        }
        let Some(ep) = self.filesystems.get(name).and_then(|f| f.episode.as_ref()) else {
            return;
        };
        let engines: Vec<EngineState> = eligible(&snap, &self.engine_fs, name, &ep.done)
            .into_iter()
            .cloned()
            .collect();
        // Set when an idle engine could not be handled now (another exec of it was running):
        // then something may still be freed, and "persists" would be premature.
        let mut pending = false;
        let mut measured = vec![];
        let mut set = JoinSet::new();
        for e in engines {
            let j = self.p.janitor.clone();
            set.spawn(async move {
                let bytes = j.measure(&e).await;
                (e, bytes)
            });
        }
        let now = Utc::now();
        while let Some(r) = set.join_next().await {
            let Ok((e, bytes)) = r else { continue };
            let id = e.engine.container_id.clone();
            match bytes {
                // Nothing to free in it.
                Some(m) if m.empty => {
                    if let Some(ep) = self.episode(name) {
                        ep.done.insert(id, now);
                    }
                }
                Some(m) => measured.push(Candidate {
                    id,
                    name: e.engine.container_name.clone(),
                    bytes: m.bytes,
                }),
                None if self.p.janitor.in_flight(&id) => pending = true,
                // Cannot be measured (refused path, hung exec): nothing to do for it here.
                None => {
                    if let Some(ep) = self.episode(name) {
                        ep.done.insert(id, now);
                    }
                }
            }
        }
        let order = plan(measured.clone(), self.p.janitor.min_bytes());
        if let Some(ep) = self.episode(name) {
            for c in measured.iter().filter(|c| !order.contains(c)) {
                ep.done.insert(c.id.clone(), now);
            }
        }
        for c in order {
            if shutdown.is_shutdown() {
                return;
            }
            match self.p.janitor.cleanup(&c.id, Trigger::Pressure).await {
                Ok(_) => {
                    if let Some(ep) = self.episode(name) {
                        ep.done.insert(c.id.clone(), Utc::now());
                    }
                }
                // A stream started (busy now: not idle, not a candidate) or another cleanup of
                // it is running (it is being cleaned anyway; look again next round).
                Err(CleanupError::HasStreams(_)) => continue,
                Err(CleanupError::Busy(_)) => {
                    pending = true;
                    continue;
                }
                Err(CleanupError::Closed) | Err(CleanupError::DockerDown(_)) => return,
                Err(e) => {
                    debug!(container_id = %id12(&c.id), error = %e, "pressure cleanup not run");
                    if let Some(ep) = self.episode(name) {
                        ep.done.insert(c.id.clone(), Utc::now());
                    }
                    continue;
                }
            }
            self.read(name).await;
            self.publish(None).await;
            if self.episode(name).is_none() {
                return;
            }
        }
        if pending {
            return;
        }
        let Some(fs) = self.filesystems.get(name) else {
            return;
        };
        let (last, kind) = (fs.last, fs.kind.clone());
        let threshold = self
            .p
            .min_free
            .zip(last)
            .map_or(0, |(m, (_, size))| threshold_bytes(m, size));
        // No idle engine left: the files busy engines no longer hold open (a disk only: a
        // memory cache's tmpfs is one engine's, cleaned when it is idle).
        if let (BusyFiles::Unopened, FsKind::Disk { stat_path }) = (self.p.busy_files, &kind) {
            let busy: Vec<EngineState> = snap
                .engines
                .iter()
                .filter(|e| e.running && !e.is_idle() && e.cache_to_clean().is_ok())
                .filter(|e| {
                    self.engine_fs
                        .get(&e.engine.container_id)
                        .map(String::as_str)
                        == Some(name)
                })
                .cloned()
                .collect();
            if !busy.is_empty() && !shutdown.is_shutdown() {
                let freed = self
                    .p
                    .janitor
                    .free_busy(busy, stat_path.clone(), threshold)
                    .await;
                if freed.bytes > 0 {
                    logging::pressure_busy_freed(name, freed.files, freed.bytes, freed.engines);
                    self.read(name).await;
                    self.publish(None).await;
                    if self.episode(name).is_none() {
                        return;
                    }
                }
            }
        }
        let last = self.filesystems.get(name).and_then(|f| f.last);
        if let (Some(ep), Some((avail, _))) = (self.episode(name), last) {
            if !ep.persists_warned {
                ep.persists_warned = true;
                match kind {
                    FsKind::Disk { .. } => logging::pressure_persists(name, avail, threshold),
                    FsKind::Memory {
                        id,
                        name,
                        mountpoint,
                        ..
                    } => logging::memory_pressure_persists(&id, &name, &mountpoint, avail),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{engine, ts, T0};

    #[test]
    fn threshold_is_a_share_of_the_size_or_a_size() {
        assert_eq!(threshold_bytes(MinFree::Percent(10.0), 1000), 100);
        assert_eq!(threshold_bytes(MinFree::Percent(12.5), 1001), 126);
        assert_eq!(threshold_bytes(MinFree::Bytes(5 << 30), 1 << 40), 5 << 30);
    }

    fn cand(id: &str, bytes: u64) -> Candidate {
        Candidate {
            id: id.into(),
            name: format!("n-{id}"),
            bytes,
        }
    }

    #[test]
    fn plan_is_largest_first_without_empty_or_small_caches() {
        let got = plan(
            vec![
                cand("a", 10),
                cand("b", 300),
                cand("c", 0),
                cand("d", 50),
                cand("e", 300),
                cand("f", 4),
            ],
            5,
        );
        let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["b", "e", "d", "a"]);
        let ids: Vec<String> = plan(vec![cand("z", 1), cand("y", 0)], 0)
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["z"]);
    }

    #[test]
    fn only_idle_engines_on_the_filesystem_are_eligible() {
        let mut snap = Snapshot::default();
        let full = |name: &str| format!("{name}-0123456789abcdef");
        let mk = |id: &str| {
            let mut e = engine(&full(id), id);
            e.engine.last_stream_usage = Some(ts(T0 - 100, 0));
            e
        };
        let idle = mk("idle");
        let mut busy = mk("busy");
        busy.engine.streams = vec!["s".into()];
        let mut cleaning = mk("cleaning");
        cleaning.cleaning = true;
        let mut refused = mk("refused");
        if let Some(c) = refused.cache.as_mut() {
            c.error = Some("bad label".into());
        }
        let mut gone = mk("gone");
        gone.running = false;
        let elsewhere = mk("elsewhere");
        let done_quiet = mk("donequiet");
        let mut done_streamed = mk("donestreamed");
        done_streamed.engine.last_stream_usage = Some(ts(T0, 0));
        let unresolved = mk("unresolved");
        let mut cleaned = mk("cleaned");
        cleaned.engine.last_cache_cleanup = Some(ts(T0 - 10, 0));
        let mut cleaned_unused = mk("cleanedunused");
        cleaned_unused.engine.last_stream_usage = None;
        cleaned_unused.engine.last_cache_cleanup = Some(ts(T0 - 10, 0));
        let mut used_since = mk("usedsince");
        used_since.engine.last_cache_cleanup = Some(ts(T0 - 200, 0));
        let never_used = {
            let mut e = mk("neverused");
            e.engine.last_stream_usage = None;
            e
        };
        snap.engines = vec![
            idle,
            busy,
            cleaning,
            refused,
            gone,
            elsewhere,
            done_quiet,
            done_streamed,
            unresolved,
            cleaned,
            cleaned_unused,
            used_since,
            never_used,
        ];
        let mut on: HashMap<String, String> = snap
            .engines
            .iter()
            .map(|e| (e.engine.container_id.clone(), "/fs".to_string()))
            .collect();
        on.insert(full("elsewhere"), "/other".into());
        on.remove(&full("unresolved"));
        let done = HashMap::from([
            (full("donequiet"), ts(T0 - 50, 0)),
            (full("donestreamed"), ts(T0 - 50, 0)),
        ]);
        let names: Vec<&str> = eligible(&snap, &on, "/fs", &done)
            .iter()
            .map(|e| e.engine.container_name.as_str())
            .collect();
        assert_eq!(names, ["idle", "donestreamed", "usedsince", "neverused"]);
    }

    #[test]
    fn a_log_counts_its_rotated_files_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("abc-json.log");
        for (name, len) in [
            ("abc-json.log", 100),
            ("abc-json.log.1", 20),
            ("abc-json.log.2.gz", 3),
            ("abc-json.log.tmp", 1000),
            ("abc-json.logx", 1000),
            ("other-json.log", 1000),
        ] {
            std::fs::write(d.path().join(name), vec![b'x'; len]).unwrap();
        }
        assert_eq!(log_bytes(log.to_str().unwrap()), Some(123));
        assert_eq!(log_bytes("/nonexistent/dir/x-json.log"), None);
    }

    #[test]
    fn canonical_resolves_symlinks_of_existing_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        let link = dir.path().join("link/missing/deeper");
        assert_eq!(
            canonical(link.to_str().unwrap()),
            format!("{}/missing/deeper", real.display())
        );
        assert_eq!(canonical("relative/path"), "relative/path");
    }
}
