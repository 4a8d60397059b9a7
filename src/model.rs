//! Plain data shared by every part of the agent (the `/engines` item of README "HTTP endpoints",
//! cleanup records, what the store keeps: docs/architecture.md#store).
//!
//! Nothing here does I/O. `Engine` *is* the `/engines` JSON item, field for field, so the
//! JSON view, the store and the metrics can never disagree on a name. What the JSON must not
//! show (per-trigger counters, container PID, network addresses) lives beside it in
//! `EngineState`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Moments are UTC; serde renders them as RFC 3339 (`2025-10-03T19:50:47.522053Z`).
pub type Timestamp = DateTime<Utc>;

/// The first 12 characters of a container id, as Docker's CLI and the orchestrator's log lines show it.
pub fn id12(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What started a cleanup (docs/architecture.md#janitor). Also the `trigger` label on the cleanup
/// metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    StreamEnd,
    Sweep,
    Manual,
    Pressure,
    /// Disk pressure with no idle engine left: files of busy engines no process holds open.
    PressureBusy,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Trigger::StreamEnd,
        Trigger::Sweep,
        Trigger::Manual,
        Trigger::Pressure,
        Trigger::PressureBusy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::StreamEnd => "stream_end",
            Trigger::Sweep => "sweep",
            Trigger::Manual => "manual",
            Trigger::Pressure => "pressure",
            Trigger::PressureBusy => "pressure_busy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

/// Counters of one trigger. Kept per engine in the store so they survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub cleanups: u64,
    pub failures: u64,
    pub freed_bytes: u64,
}

/// Per-trigger counters of one engine, indexed by `Trigger`. Stored as a list in `Trigger`
/// order; a store written before a trigger existed has a shorter one, read with zeros for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TriggerCounters(pub [Counters; 5]);

impl<'de> Deserialize<'de> for TriggerCounters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let stored: Vec<Counters> = Vec::deserialize(d)?;
        let mut c = TriggerCounters::default();
        if stored.len() > c.0.len() {
            return Err(serde::de::Error::custom(format!(
                "{} trigger counters, this build knows {}",
                stored.len(),
                c.0.len()
            )));
        }
        c.0[..stored.len()].copy_from_slice(&stored);
        Ok(c)
    }
}

impl TriggerCounters {
    pub fn get(&self, t: Trigger) -> Counters {
        self.0[t.index()]
    }

    pub fn get_mut(&mut self, t: Trigger) -> &mut Counters {
        &mut self.0[t.index()]
    }

    pub fn total(&self) -> Counters {
        self.0.iter().fold(Counters::default(), |a, c| Counters {
            cleanups: a.cleanups + c.cleanups,
            failures: a.failures + c.failures,
            freed_bytes: a.freed_bytes + c.freed_bytes,
        })
    }
}

/// One `/engines` item: the orchestrator's fields with the orchestrator's names and types, then the agent's
/// extras (README "HTTP endpoints").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    pub container_id: String,
    pub container_name: String,
    pub host: String,
    pub port: u16,
    pub streams: Vec<String>,
    pub health_status: HealthStatus,
    pub last_health_check: Option<Timestamp>,
    pub last_stream_usage: Option<Timestamp>,
    pub last_cache_cleanup: Option<Timestamp>,
    pub cache_size_bytes: Option<u64>,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub version: Option<String>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub cache_current_bytes: Option<u64>,
    pub cache_measured_at: Option<Timestamp>,
    pub cleanups_total: u64,
    pub cleanup_failures_total: u64,
    pub cache_freed_bytes_total: u64,
    pub last_cleanup_error: Option<String>,
    /// The cache directory inside the container, symlinks resolved (docs/cache-paths.md#symlinks).
    pub cache_path: String,
    /// Where `cache_path` came from; `null` until discovery has looked at the container.
    #[serde(default)]
    pub cache_path_source: Option<CachePathSource>,
    #[serde(default)]
    pub cache_medium: CacheMedium,
    pub cache_mountpoint: Option<String>,
    /// Restarts of the container by the agent (heal), every trigger.
    #[serde(default)]
    pub restarts_total: u64,
    #[serde(default)]
    pub last_restart: Option<Timestamp>,
    /// The first failed status probe since the engine last answered (or since its container
    /// last started); `null` while it answers.
    #[serde(default)]
    pub unhealthy_since: Option<Timestamp>,
    #[serde(default)]
    pub heal_state: HealState,
    /// Sums over its started streams' statistics, as the engine last answered them (README
    /// "Stream statistics"); `null` while no stream of it has statistics.
    #[serde(default)]
    pub peers: Option<u64>,
    #[serde(default)]
    pub speed_down_bytes: Option<u64>,
    #[serde(default)]
    pub speed_up_bytes: Option<u64>,
    #[serde(default)]
    pub stalled_streams: u64,
    /// The engine's own cache limit: what its streams' `disk_cache_stats` say, else its
    /// command line; `null` when neither says.
    #[serde(default)]
    pub cache_limit_bytes: Option<u64>,
    #[serde(default)]
    pub cache_limit_source: Option<CacheLimitSource>,
    /// `--live-cache-type` of its command line (`memory`, `disk`).
    #[serde(default)]
    pub live_cache_type: Option<String>,
    /// Size of Docker's `json-file` log of the container, rotated files included; `null` for
    /// another log driver or a log the agent cannot read.
    #[serde(default)]
    pub log_bytes: Option<u64>,
    /// Whether that log is rotated (its log config sets `max-size`); `null` without one.
    #[serde(default)]
    pub log_rotation: Option<bool>,
}

/// Where an engine's cache limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheLimitSource {
    /// `disk_cache_stats.disk_cache_limit` of a stream's statistics.
    Engine,
    /// `--cache-limit`, `--disk-cache-limit`, `--cache-max-bytes`, or `--memory-cache-limit`
    /// for a cache in memory.
    CommandLine,
}

/// What an engine's command line says of its cache limits (discovery reads it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheLimits {
    pub disk: Option<u64>,
    pub memory: Option<u64>,
    pub live_cache_type: Option<String>,
}

impl CacheLimits {
    /// The limit of the cache directory: the disk cache's, else for a cache in memory (a
    /// tmpfs) the memory cache's.
    pub fn of_cache(&self, medium: CacheMedium) -> Option<u64> {
        self.disk
            .or(self.memory.filter(|_| medium == CacheMedium::Memory))
    }
}

/// Where an engine stands with heal (README "Stuck engines").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealState {
    /// Answering, busy, or not a stuck engine (never healthy since its start).
    #[default]
    Ok,
    /// Stuck: failing every probe, counting toward `heal.after`.
    Waiting,
    /// Stuck again after a restart, counting toward a doubled wait.
    Backoff,
    /// Restarted `heal.max_restarts` times within `heal.window` and still stuck: left alone
    /// until it answers, someone else restarts it, or a person asks for a heal.
    Quarantined,
    /// Labelled to be left alone (`heal.skip_labels`, `acestream.heal=false`).
    Skipped,
    /// `heal.enabled = false`.
    Off,
}

impl HealState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealState::Ok => "ok",
            HealState::Waiting => "waiting",
            HealState::Backoff => "backoff",
            HealState::Quarantined => "quarantined",
            HealState::Skipped => "skipped",
            HealState::Off => "off",
        }
    }
}

/// What made the agent restart an engine. Also the `trigger` label of
/// `acestream_engine_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealTrigger {
    /// It failed every status probe for `heal.after` (or its back-off).
    Unhealthy,
    /// All its streams were stalled (`heal.stalled`).
    Stalled,
    /// `POST /engines/{id}/heal`.
    Manual,
}

impl HealTrigger {
    pub const ALL: [HealTrigger; 3] = [
        HealTrigger::Unhealthy,
        HealTrigger::Stalled,
        HealTrigger::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealTrigger::Unhealthy => "unhealthy",
            HealTrigger::Stalled => "stalled",
            HealTrigger::Manual => "manual",
        }
    }
}

impl fmt::Display for HealTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What heal remembers of one engine across agent restarts and `kill -9` (kept in the store
/// with the engine). The policy that reads it is in `heal`; the registry keeps it up to date
/// from health results, container starts and restart records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealBook {
    /// Restarts Docker carried out, by trigger (`HealTrigger::ALL` order).
    pub restarts: [u64; 3],
    /// When the agent's automatic restarts began (failed ones too), oldest first, kept for
    /// the longer of `heal.window` and an hour: the back-off and quarantine count and the
    /// host's hourly cap.
    pub recent: Vec<Timestamp>,
    /// Restarts before this moment no longer count toward the back-off and quarantine: the
    /// engine answered again, or someone else restarted it.
    pub counted_from: Option<Timestamp>,
    pub quarantined: Option<Timestamp>,
    /// The container process these facts are about (its pid): a new one is a container start.
    pub pid: u32,
    /// The engine answered its status probe since its container last started, or before the
    /// agent's own restart of it.
    pub healthy_since_start: bool,
    /// The agent asked Docker to restart the container and has not yet seen it start again: the
    /// next new process is the agent's doing.
    pub restart_pending: bool,
    /// Restarted by the agent and not yet healthy again (for the "healthy again" line).
    pub recovering: bool,
}

impl HealBook {
    pub fn restarts(&self, t: HealTrigger) -> u64 {
        self.restarts[t as usize]
    }

    pub fn count_restart(&mut self, t: HealTrigger) {
        self.restarts[t as usize] += 1;
    }

    pub fn restarts_total(&self) -> u64 {
        self.restarts.iter().sum()
    }
}

/// One restart of an engine by the agent, as kept in its heal history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealRecord {
    pub container_id: String,
    pub container_name: String,
    pub trigger: HealTrigger,
    pub unhealthy_since: Option<Timestamp>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub duration_seconds: f64,
    pub success: bool,
    pub error: Option<String>,
}

/// Where an engine's cache path came from, in the order they are tried
/// (docs/cache-paths.md#order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePathSource {
    /// The container's `acestream.cache_path` label.
    Label,
    /// The engine's `--cache-dir` or `--state-dir`.
    CommandLine,
    /// `cleanup.cache_path`, which exists in the container.
    Config,
    /// `$HOME/.ACEStream/.acestream_cache` of the container's user.
    Home,
    /// A state directory public engine images keep (`/dev/shm/.ACEStream`, ...).
    WellKnown,
}

impl CachePathSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CachePathSource::Label => "label",
            CachePathSource::CommandLine => "command_line",
            CachePathSource::Config => "config",
            CachePathSource::Home => "home",
            CachePathSource::WellKnown => "well_known",
        }
    }
}

/// What an engine's cache is stored on (docs/cache-paths.md#storage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMedium {
    #[default]
    Disk,
    /// A tmpfs (`--tmpfs`, `--mount type=tmpfs`, `/dev/shm`): memory, charged to the
    /// container's memory cgroup.
    Memory,
}

impl CacheMedium {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMedium::Disk => "disk",
            CacheMedium::Memory => "memory",
        }
    }
}

/// The cache path discovery chose for an engine (docs/cache-paths.md#order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheChoice {
    /// Symlinks resolved inside the container's root.
    pub path: String,
    /// As chosen, before symlinks were resolved.
    pub written: String,
    pub source: CachePathSource,
    /// Why this path is refused; such an engine is never cleaned.
    pub error: Option<String>,
    pub medium: CacheMedium,
}

/// Whose network namespace a container runs in (`HostConfig.NetworkMode`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetMode {
    /// Its own (a bridge, a user-defined network, `none`).
    #[default]
    Own,
    /// The host's (`--network host`): its ports are the host's ports.
    Host,
    /// Another container's (`--network container:<id>`, compose `network_mode: service:<vpn>`),
    /// by that container's full id: the namespace owner, whose IP and published ports the
    /// engine's endpoint is.
    Container { owner: String },
}

/// Where and how to reach a running container; refreshed by discovery, never persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// Main process of the container, for `/proc/<pid>/net/tcp{,6}`; 0 when not running.
    pub pid: u32,
    /// The engine's HTTP port inside the container (its network namespace).
    pub container_port: u16,
    /// The host port clients reach `container_port` at, if any: published by the container (or
    /// by its namespace owner), or `container_port` itself on the host's network.
    pub host_port: Option<u16>,
    /// IPs of the network namespace on Docker's networks: the container's own, or its
    /// namespace owner's.
    pub ips: Vec<IpAddr>,
    /// Network aliases and names a proxy on the same Docker network may use.
    pub aliases: Vec<String>,
    pub net: NetMode,
    /// Where the agent's health and version checks go: the namespace's IP and the engine port
    /// (no docker-proxy in between), loopback on the host's network; `None`: nowhere (a
    /// container without a network, an owner that is not running).
    pub probe: Option<SocketAddr>,
    /// The container's mounts (inspect `Mounts`, plus `HostConfig.Tmpfs`), to find the host
    /// filesystem its cache lives on (docs/cache-paths.md#storage).
    pub mounts: Vec<Mount>,
    /// `docker pause`d: it answers nothing because someone froze it on purpose, which a restart
    /// would undo, so heal leaves it alone.
    pub paused: bool,
    /// Docker's `json-file` log of the container on the host (`LogPath`) and whether it is
    /// rotated; `None` for another log driver.
    pub log: Option<(String, bool)>,
}

/// What kind of storage a container mount is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A host file or directory (`-v /host:/dest`, `--mount type=bind`).
    Bind,
    /// A Docker volume; its `source` is the volume's directory on the host.
    Volume,
    /// Memory (`--tmpfs`, `--mount type=tmpfs`): not disk, never watched.
    Tmpfs,
    /// Anything else (`npipe`, `cluster`, `image`): no host filesystem the agent can read.
    Other,
}

/// One container mount, as Docker's inspect shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// Path on the host (empty for tmpfs).
    pub source: String,
    /// Path inside the container.
    pub destination: String,
}

/// Free space of one host filesystem that holds engine caches (docs/cache-paths.md#disk-pressure),
/// as the pressure task last read it. `mountpoint` is the label value of the
/// `acestream_filesystem_*` metrics and the engines' `cache_mountpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filesystem {
    /// The host mountpoint (disk), or the tmpfs's path inside its container (memory).
    pub mountpoint: String,
    pub medium: CacheMedium,
    /// A tmpfs is one container's: its full id and name (`None` for disk).
    pub container: Option<(String, String)>,
    /// Space available to unprivileged users (`f_bavail * f_frsize`).
    pub avail_bytes: u64,
    /// Size of the filesystem (`f_blocks * f_frsize`).
    pub size_bytes: u64,
    /// `pressure.min_free` in bytes for this filesystem; `None` when pressure cleanup is off.
    pub min_free_bytes: Option<u64>,
    /// In a disk-pressure episode: free space fell below `min_free_bytes` and has not been back
    /// above it since.
    pub pressure: bool,
}

/// A container's memory, from its cgroup (v1 or v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// In use, less the page cache the kernel can drop (`inactive_file`), as `docker stats`
    /// shows it; tmpfs pages count (they cannot be dropped).
    pub usage_bytes: u64,
    /// `None`: no limit.
    pub limit_bytes: Option<u64>,
}

/// Everything the registry knows about one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineState {
    pub engine: Engine,
    pub counters: TriggerCounters,
    pub runtime: Runtime,
    /// The cache directory discovery chose for the container, whole: the path, where it came
    /// from, its medium, or why it is refused (such an engine is never cleaned). The served
    /// `cache_path`, `cache_path_source` and `cache_medium` are copied from it. `None` until
    /// discovery has read the container (an engine only remembered from the store). Workers
    /// read it through [`EngineState::cache_to_clean`].
    pub cache: Option<CacheChoice>,
    /// A cleanup passed its idle re-check and is deleting; see `registry::begin_delete`.
    pub cleaning: bool,
    /// The container's memory use and limit, for an engine whose cache is in memory, as the
    /// pressure task last read its cgroup.
    pub memory: Option<MemoryUse>,
    /// When a measurement or cleanup last began that found the cache with no entries (or
    /// left it so); `None` once one finds entries. An engine empty since before its last
    /// stream activity is not looked at by the sweep (docs/cache-paths.md#nothing-to-clean).
    pub cache_empty_since: Option<Timestamp>,
    /// Docker no longer lists it (kept from the store until discovery has re-listed).
    pub running: bool,
    pub heal: HealBook,
    /// Since when every started stream of it with statistics is stalled (at least one);
    /// `None` otherwise. Heal's `stalled` trigger.
    pub streams_stalled_since: Option<Timestamp>,
}

impl EngineState {
    /// An engine as the store remembers it: not (yet) seen running, nothing known of its
    /// container.
    pub fn remembered(engine: Engine, counters: TriggerCounters, heal: HealBook) -> EngineState {
        EngineState {
            engine,
            counters,
            heal,
            streams_stalled_since: None,
            runtime: Runtime::default(),
            cache: None,
            cleaning: false,
            memory: None,
            cache_empty_since: None,
            running: false,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.engine.streams.is_empty()
    }

    /// The cache a cleanup or a measurement may touch: discovery's choice, or the reason there
    /// is none (the path is refused, or discovery has not read the container yet).
    pub fn cache_to_clean(&self) -> Result<&CacheChoice, &str> {
        match &self.cache {
            None => Err("the cache path is not known yet: discovery has not read the container"),
            Some(CacheChoice {
                error: Some(reason),
                ..
            }) => Err(reason),
            Some(c) => Ok(c),
        }
    }

    pub fn id12(&self) -> &str {
        id12(&self.engine.container_id)
    }

    /// Whether the cache is known to hold nothing: it was found empty (or cleaned) and the
    /// engine has had no stream since, so nothing can have been written to it.
    pub fn known_empty(&self) -> bool {
        self.cache_empty_since
            .is_some_and(|t| self.engine.last_stream_usage.is_none_or(|u| u < t))
    }
}

/// A container as discovery saw it (from list + inspect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredEngine {
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Address clients use: advertise host + published port, or container IP + engine port.
    pub host: String,
    pub port: u16,
    pub runtime: Runtime,
    pub cache: CacheChoice,
    pub limits: CacheLimits,
}

/// One cleanup attempt, as kept in the per-engine history and returned by the manual trigger.
/// Stored and served in the orchestrator's shape, four fields that together say what it came to
/// (`success`, `skipped_below_min`, `nothing_to_clean`, `error`: [`RecordWire`]); inside the
/// agent one [`Verdict`] says it, so no reader decodes the four again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "RecordWire", into = "RecordWire")]
pub struct CleanupRecord {
    pub container_id: String,
    pub container_name: String,
    pub trigger: Trigger,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub duration_seconds: f64,
    /// Size measured before deleting (the orchestrator's `cache_size_bytes`).
    pub size_before_bytes: Option<u64>,
    pub freed_bytes: u64,
    /// Size left after deleting (what a running engine wrote meanwhile, or files it could not delete).
    pub remaining_bytes: Option<u64>,
    pub verdict: Verdict,
}

/// What one cleanup attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deleted: `freed_bytes` freed, `remaining_bytes` left.
    Cleaned,
    /// Measured, then kept: the cache was below `cleanup.min_bytes`. A new current size, not
    /// a cleanup: never kept in the history nor counted.
    BelowMin,
    /// The cache directory was missing or held no entries: nothing to clean, which is not a
    /// cleanup (docs/cache-paths.md#nothing-to-clean). Only the answer to a manual cleanup;
    /// never kept in the history nor counted.
    NothingToClean,
    /// Measured, then nothing deleted: a client connected to the engine right before the
    /// delete. The engine is busy, not failing; the janitor answers the caller with "has
    /// streams", so such a record is never kept, counted nor returned.
    ClientAtDelete,
    /// The cleanup failed, with the reason.
    Failed(String),
}

impl Verdict {
    /// A cleanup in the orchestrator's sense, success or failure: counted, kept in the history,
    /// timed and logged with its lines. The other verdicts only bring a new current size.
    pub fn is_cleanup(&self) -> bool {
        matches!(self, Verdict::Cleaned | Verdict::Failed(_))
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Failed(_))
    }
}

/// A [`CleanupRecord`] as stored and served: the orchestrator's fields, in its order. A
/// record written before `skipped_below_min` or `nothing_to_clean` existed reads them as
/// `false`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordWire {
    container_id: String,
    container_name: String,
    trigger: Trigger,
    started_at: Timestamp,
    finished_at: Timestamp,
    duration_seconds: f64,
    success: bool,
    size_before_bytes: Option<u64>,
    freed_bytes: u64,
    remaining_bytes: Option<u64>,
    #[serde(default)]
    skipped_below_min: bool,
    #[serde(default)]
    nothing_to_clean: bool,
    error: Option<String>,
}

impl From<CleanupRecord> for RecordWire {
    fn from(r: CleanupRecord) -> RecordWire {
        let (success, skipped_below_min, nothing_to_clean, error) = match r.verdict {
            Verdict::Cleaned => (true, false, false, None),
            // Never written (the janitor keeps it to itself); as "kept" if it were.
            Verdict::BelowMin | Verdict::ClientAtDelete => (true, true, false, None),
            Verdict::NothingToClean => (true, false, true, None),
            Verdict::Failed(e) => (false, false, false, Some(e)),
        };
        RecordWire {
            container_id: r.container_id,
            container_name: r.container_name,
            trigger: r.trigger,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_seconds: r.duration_seconds,
            success,
            size_before_bytes: r.size_before_bytes,
            freed_bytes: r.freed_bytes,
            remaining_bytes: r.remaining_bytes,
            skipped_below_min,
            nothing_to_clean,
            error,
        }
    }
}

impl From<RecordWire> for CleanupRecord {
    fn from(w: RecordWire) -> CleanupRecord {
        let verdict = match (w.success, w.error) {
            (false, e) | (true, e @ Some(_)) => {
                Verdict::Failed(e.unwrap_or_else(|| "unknown error".into()))
            }
            (true, None) if w.nothing_to_clean => Verdict::NothingToClean,
            (true, None) if w.skipped_below_min => Verdict::BelowMin,
            (true, None) => Verdict::Cleaned,
        };
        CleanupRecord {
            container_id: w.container_id,
            container_name: w.container_name,
            trigger: w.trigger,
            started_at: w.started_at,
            finished_at: w.finished_at,
            duration_seconds: w.duration_seconds,
            size_before_bytes: w.size_before_bytes,
            freed_bytes: w.freed_bytes,
            remaining_bytes: w.remaining_bytes,
            verdict,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Started,
    Ended,
}

/// A stream reported through the orchestrator-compatible event API
/// (docs/deployments.md#stream-events-from-proxies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: String,
    pub key_type: String,
    pub key: String,
    pub container_id: String,
    pub playback_session_id: String,
    pub stat_url: String,
    pub command_url: String,
    pub is_live: bool,
    pub started_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    pub status: StreamStatus,
    #[serde(flatten)]
    pub stats: StreamStats,
}

/// What the engine last said of a started stream (its `stat_url`), README "Stream statistics".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStats {
    pub peers: Option<u64>,
    /// The engine's `speed_down` (KiB/s) in bytes per second.
    pub speed_down_bytes: Option<u64>,
    pub speed_up_bytes: Option<u64>,
    pub downloaded_bytes: Option<u64>,
    pub uploaded_bytes: Option<u64>,
    /// The engine's `status` (`dl`, `prebuf`, ...), or why there is none (`error: …` from the
    /// engine, `refused: …` for a `stat_url` the agent does not ask).
    pub stat_status: Option<String>,
    /// When the engine last answered.
    pub stat_at: Option<Timestamp>,
    /// Every answer for `streams.stall_after` said no peers and no download (or none came).
    pub stalled: bool,
}

/// The agent's whole state at one moment, published by the registry after every change.
/// Views render from it; nothing reads Docker or the store to answer `/engines` or `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Sorted by `container_name`, then id.
    pub engines: Vec<EngineState>,
    pub docker_up: bool,
    /// Last store error (write failed, disk full); cleared by the next good commit.
    pub store_error: Option<String>,
    pub last_sweep: Option<Timestamp>,
    /// When the disk-pressure watcher last finished a round (read every filesystem it
    /// watches); `None` before its first. Its liveness: only a stuck watcher stops moving it
    /// (a filesystem that does not answer is skipped for the round).
    pub last_pressure_check: Option<Timestamp>,
    /// Filesystems holding engine caches, sorted by mountpoint (docs/cache-paths.md#storage).
    pub filesystems: Vec<Filesystem>,
}

/// `1.50 MB`-style size, 1024-based, two decimals, as the orchestrator logs and displays sizes.
pub fn format_mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// `12.34 GB`-style size, 1024-based, two decimals (the disk-pressure log lines).
pub fn format_gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record as stored and served keeps the orchestrator's four fields, in its order, for
    /// every verdict; records written before the verdict existed read back as what they said.
    #[test]
    fn a_cleanup_record_keeps_the_orchestrators_shape() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let record = |verdict| CleanupRecord {
            container_id: "c".into(),
            container_name: "n".into(),
            trigger: Trigger::Manual,
            started_at: at,
            finished_at: at,
            duration_seconds: 0.25,
            size_before_bytes: Some(10),
            freed_bytes: 7,
            remaining_bytes: Some(3),
            verdict,
        };
        let head = r#"{"container_id":"c","container_name":"n","trigger":"manual","started_at":"2026-12-07T10:00:00.500Z","finished_at":"2026-12-07T10:00:00.500Z","duration_seconds":0.25,"#;
        let cases = [
            (
                Verdict::Cleaned,
                r#""success":true,"size_before_bytes":10,"freed_bytes":7,"remaining_bytes":3,"skipped_below_min":false,"nothing_to_clean":false,"error":null}"#,
            ),
            (
                Verdict::BelowMin,
                r#""success":true,"size_before_bytes":10,"freed_bytes":7,"remaining_bytes":3,"skipped_below_min":true,"nothing_to_clean":false,"error":null}"#,
            ),
            (
                Verdict::NothingToClean,
                r#""success":true,"size_before_bytes":10,"freed_bytes":7,"remaining_bytes":3,"skipped_below_min":false,"nothing_to_clean":true,"error":null}"#,
            ),
            (
                Verdict::Failed("cache cleanup failed: x".into()),
                r#""success":false,"size_before_bytes":10,"freed_bytes":7,"remaining_bytes":3,"skipped_below_min":false,"nothing_to_clean":false,"error":"cache cleanup failed: x"}"#,
            ),
        ];
        for (verdict, tail) in cases {
            let r = record(verdict);
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(text, format!("{head}{tail}"));
            assert_eq!(serde_json::from_str::<CleanupRecord>(&text).unwrap(), r);
        }
        // A record from before `skipped_below_min` and `nothing_to_clean`.
        let old = format!(
            "{head}{}",
            r#""success":true,"size_before_bytes":10,"freed_bytes":7,"remaining_bytes":3,"error":null}"#
        );
        assert_eq!(
            serde_json::from_str::<CleanupRecord>(&old).unwrap(),
            record(Verdict::Cleaned)
        );
        // A failure stored without its reason still reads as a failure.
        let bare = format!(
            "{head}{}",
            r#""success":false,"size_before_bytes":null,"freed_bytes":0,"remaining_bytes":null,"error":null}"#
        );
        let r: CleanupRecord = serde_json::from_str(&bare).unwrap();
        assert!(r.verdict.is_failure() && r.verdict.is_cleanup(), "{r:?}");
        // A client at the delete is no cleanup, and apart from a cache below the minimum.
        assert!(!Verdict::ClientAtDelete.is_cleanup());
        assert_ne!(Verdict::ClientAtDelete, Verdict::BelowMin);
    }

    #[test]
    fn trigger_names_match_spec() {
        let names: Vec<_> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            ["stream_end", "sweep", "manual", "pressure", "pressure_busy"]
        );
        assert_eq!(
            serde_json::to_string(&Trigger::StreamEnd).unwrap(),
            "\"stream_end\""
        );
    }

    #[test]
    fn id12_is_a_prefix_and_tolerates_short_ids() {
        assert_eq!(id12("0123456789abcdef"), "0123456789ab");
        assert_eq!(id12("abc"), "abc");
    }

    #[test]
    fn format_mb_is_1024_based_with_two_decimals() {
        assert_eq!(format_mb(10 * 1024 * 1024), "10.00 MB");
        assert_eq!(format_mb(1536 * 1024), "1.50 MB");
        assert_eq!(format_mb(0), "0.00 MB");
        assert_eq!(format_gb(5 << 30), "5.00 GB");
        assert_eq!(format_gb(3 << 29), "1.50 GB");
    }

    #[test]
    fn counters_of_a_store_from_before_pressure_busy_are_read_with_zeros() {
        let four = r#"[{"cleanups":1,"failures":0,"freed_bytes":5},{"cleanups":0,"failures":0,"freed_bytes":0},{"cleanups":0,"failures":0,"freed_bytes":0},{"cleanups":2,"failures":1,"freed_bytes":7}]"#;
        let c: TriggerCounters = serde_json::from_str(four).unwrap();
        assert_eq!(c.get(Trigger::StreamEnd).freed_bytes, 5);
        assert_eq!(c.get(Trigger::Pressure).cleanups, 2);
        assert_eq!(c.get(Trigger::PressureBusy), Counters::default());
        let back: TriggerCounters =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let six = format!(
            "[{}]",
            [r#"{"cleanups":0,"failures":0,"freed_bytes":0}"#; 6].join(",")
        );
        assert!(serde_json::from_str::<TriggerCounters>(&six).is_err());
    }

    #[test]
    fn counters_total_sums_triggers() {
        let mut c = TriggerCounters::default();
        c.get_mut(Trigger::Sweep).cleanups = 2;
        c.get_mut(Trigger::Manual).freed_bytes = 7;
        c.get_mut(Trigger::Pressure).failures = 1;
        let t = c.total();
        assert_eq!((t.cleanups, t.failures, t.freed_bytes), (2, 1, 7));
    }
}
