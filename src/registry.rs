//! The engine registry (docs/architecture.md#registry): one task owns every engine's state, applies
//! commands from discovery, health, activity, the janitor and the HTTP API in one order, persists
//! each batch to the store, then publishes an `Arc<Snapshot>`.
//!
//! It decides *idle* (and tells the janitor on a broadcast); it never talks to Docker and
//! never decides *when* to clean. The idle re-check before deleting (`BeginDelete`) happens
//! here so that no stream event can slip between the check and the delete.

mod streams;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::logging;
use crate::model::{
    id12, CacheLimitSource, CleanupRecord, DiscoveredEngine, Engine, EngineState, Filesystem,
    HealBook, HealRecord, HealState, HealTrigger, HealthStatus, MemoryUse, Snapshot, StreamRecord,
    StreamStatus, Timestamp, Trigger, TriggerCounters, Verdict,
};
use crate::shutdown::Shutdown;
use crate::store::{Batch, PersistedEngine, Store};
use streams::StreamTable;

/// Label that overrides `cleanup.cache_path` for one container (docs/cache-paths.md#order).
pub const CACHE_PATH_LABEL: &str = "acestream.cache_path";
/// Streams kept started per engine; more are refused so a misbehaving proxy cannot grow the
/// agent's memory without bound.
pub const MAX_STREAMS_PER_ENGINE: usize = 1024;
/// Ended stream records kept in memory and the store (newest win), besides `store.retention`.
pub const MAX_ENDED_STREAMS: usize = 10_000;
/// Longest a `stream_started` answer is held for a delete of its engine's cache that was already
/// running when the stream arrived (see `Registry::held_starts`); past it the proxy is answered
/// anyway, with a warning: a janitor that never reports back must not stall the proxy for good.
pub const STREAM_ACK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    UnknownEngine(String),
    #[error("unknown stream {0}")]
    UnknownStream(String),
    #[error("engine {0} has active streams")]
    HasStreams(String),
    #[error("engine {0} is not running")]
    NotRunning(String),
    /// Its cache is being deleted, or it is being restarted.
    #[error("engine {0} is busy: {1}")]
    Busy(String, &'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("engine {0} already has {MAX_STREAMS_PER_ENGINE} active streams")]
    TooManyStreams(String),
    #[error("the agent is shutting down")]
    Closed,
}

/// What the orchestrator's proxy sends with `stream_started`
/// (docs/deployments.md#stream-events-from-proxies).
#[derive(Clone, Debug, Default)]
pub struct StreamStart {
    pub container_id: Option<String>,
    pub host: String,
    pub port: u16,
    pub stream_id: String,
    pub key_type: String,
    pub key: String,
    pub playback_session_id: String,
    pub stat_url: String,
    pub command_url: String,
    pub is_live: bool,
}

#[derive(Clone, Debug, Default)]
pub struct StreamEnd {
    pub container_id: Option<String>,
    pub stream_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RegistryEvent {
    /// The engine's last stream ended at `at`.
    BecameIdle {
        id: String,
        at: Timestamp,
    },
    BecameBusy {
        id: String,
    },
    Removed {
        id: String,
    },
}

#[derive(Debug)]
pub enum RegistryCmd {
    /// A full list of running engines: upsert these, every other engine is gone.
    Sync(Vec<DiscoveredEngine>),
    Upsert(Box<DiscoveredEngine>),
    Remove(String),
    DockerUp(bool),
    /// One more name of this host (Docker's, learned at connect), for stream events that name
    /// an engine by it and its published port.
    HostName(String),
    Health {
        id: String,
        status: HealthStatus,
        at: Timestamp,
        version: Option<String>,
    },
    /// Client connections seen by the probe, as stream ids `conn:<addr>:<port>`.
    Connections {
        id: String,
        streams: Vec<String>,
    },
    Measured {
        id: String,
        bytes: u64,
        /// When the measurement began.
        at: Timestamp,
        /// The directory was missing or held no entries.
        empty: bool,
    },
    StreamStarted(
        StreamStart,
        oneshot::Sender<Result<StreamRecord, RegistryError>>,
    ),
    StreamEnded(
        StreamEnd,
        oneshot::Sender<Result<Vec<StreamRecord>, RegistryError>>,
    ),
    ListStreams {
        container_id: Option<String>,
        status: Option<StreamStatus>,
        reply: oneshot::Sender<Vec<StreamRecord>>,
    },
    BeginDelete(String, oneshot::Sender<Result<(), RegistryError>>),
    FinishCleanup {
        record: CleanupRecord,
        /// Size after the cleanup.
        current_bytes: Option<u64>,
        /// Answered once the record is committed.
        ack: oneshot::Sender<()>,
    },
    SweepDone(Timestamp),
    /// The idle re-check right before heal restarts an engine; on `Ok` the restart is marked
    /// pending (and, for an automatic one, counted) and committed before the reply.
    BeginRestart {
        id: String,
        trigger: HealTrigger,
        /// Automatic restarts that began before this moment are forgotten (they count for
        /// neither the back-off nor the host's hourly cap any more).
        forget_before: Timestamp,
        reply: oneshot::Sender<Result<RestartStart, RegistryError>>,
    },
    FinishRestart {
        record: HealRecord,
        /// Answered once the record is committed.
        ack: oneshot::Sender<()>,
    },
    /// Heal gave up on a stuck engine until it answers, is restarted by someone else, or a
    /// person asks.
    Quarantine {
        id: String,
        at: Timestamp,
    },
    /// Where engines stand with heal now (only those that changed).
    HealStates(Vec<(String, HealState)>),
    /// Sizes of the engines' Docker logs (only those that changed; `None`: unreadable).
    LogSizes(Vec<(String, Option<u64>)>),
    /// One round of stream statistics (README "Stream statistics"): what each started stream's
    /// engine said at `at`.
    StreamStats {
        at: Timestamp,
        stall_after: Duration,
        results: Vec<(String, StatResult)>,
    },
    /// What the pressure task last read (docs/cache-paths.md#disk-pressure): every watched
    /// filesystem, and when given, the filesystem of each engine's cache (`None`: tmpfs or not
    /// resolvable).
    Filesystems {
        filesystems: Vec<Filesystem>,
        mountpoints: Option<Vec<(String, Option<String>)>>,
        /// The memory use of every engine whose cache is in memory and could be read.
        memory: Vec<(String, MemoryUse)>,
    },
}

/// What one stream's engine said of it.
#[derive(Clone, Debug, PartialEq)]
pub enum StatResult {
    Answer(StatAnswer),
    /// No answer in time, or no JSON: the stream's last values stay, and count as not flowing.
    Failed,
    /// The engine answered with an error (`{"response": null, "error": "…"}`).
    EngineError(String),
    /// The agent does not ask the engine for this `stat_url` (why).
    Refused(String),
}

/// The fields of an engine's statistics answer the agent keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatAnswer {
    pub status: Option<String>,
    pub peers: Option<u64>,
    /// KiB/s, as the engine says.
    pub speed_down: Option<u64>,
    pub speed_up: Option<u64>,
    pub downloaded: Option<u64>,
    pub uploaded: Option<u64>,
    /// `disk_cache_stats.disk_cache_limit`, bytes.
    pub disk_cache_limit: Option<u64>,
}

impl StatAnswer {
    /// Data is moving: a peer, or a download speed.
    pub fn flowing(&self) -> bool {
        self.peers.unwrap_or(0) > 0 || self.speed_down.unwrap_or(0) > 0
    }
}

/// What the registry knew of an engine as its restart was approved.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartStart {
    pub container_name: String,
    pub unhealthy_since: Option<Timestamp>,
}

/// Cloneable access to the registry for every worker and the HTTP API.
#[derive(Clone)]
pub struct RegistryHandle {
    tx: mpsc::Sender<RegistryCmd>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl RegistryHandle {
    pub async fn send(&self, cmd: RegistryCmd) {
        // A closed registry means shutdown; the command no longer matters.
        let _ = self.tx.send(cmd).await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> RegistryCmd,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| RegistryError::Closed)?;
        rx.await.map_err(|_| RegistryError::Closed)
    }

    pub async fn stream_started(&self, s: StreamStart) -> Result<StreamRecord, RegistryError> {
        self.ask(|tx| RegistryCmd::StreamStarted(s, tx)).await?
    }

    pub async fn stream_ended(&self, s: StreamEnd) -> Result<Vec<StreamRecord>, RegistryError> {
        self.ask(|tx| RegistryCmd::StreamEnded(s, tx)).await?
    }

    pub async fn list_streams(
        &self,
        container_id: Option<String>,
        status: Option<StreamStatus>,
    ) -> Result<Vec<StreamRecord>, RegistryError> {
        self.ask(|reply| RegistryCmd::ListStreams {
            container_id,
            status,
            reply,
        })
        .await
    }

    /// The idle re-check right before deleting; on `Ok` the engine is marked cleaning.
    pub async fn begin_delete(&self, id: &str) -> Result<(), RegistryError> {
        let id = id.to_string();
        self.ask(|tx| RegistryCmd::BeginDelete(id, tx)).await?
    }

    /// Records a finished cleanup; returns once it is committed to the store (or kept for
    /// retry when the store cannot be written).
    pub async fn finish_cleanup(
        &self,
        record: CleanupRecord,
        current_bytes: Option<u64>,
    ) -> Result<(), RegistryError> {
        self.ask(|ack| RegistryCmd::FinishCleanup {
            record,
            current_bytes,
            ack,
        })
        .await
    }

    /// Heal's idle re-check right before a restart (see `RegistryCmd::BeginRestart`).
    pub async fn begin_restart(
        &self,
        id: &str,
        trigger: HealTrigger,
        forget_before: Timestamp,
    ) -> Result<RestartStart, RegistryError> {
        let id = id.to_string();
        self.ask(|reply| RegistryCmd::BeginRestart {
            id,
            trigger,
            forget_before,
            reply,
        })
        .await?
    }

    /// Records a finished restart; returns once it is committed.
    pub async fn finish_restart(&self, record: HealRecord) -> Result<(), RegistryError> {
        self.ask(|ack| RegistryCmd::FinishRestart { record, ack })
            .await
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// Finds an engine in a snapshot by full id, unique id prefix, or name (the `{id}` of README
/// "HTTP endpoints").
pub fn find<'a>(snapshot: &'a Snapshot, key: &str) -> Option<&'a EngineState> {
    lookup(snapshot.engines.iter(), key)
}

/// The one rule for naming an engine: exact full id or name, else a unique id prefix of at
/// least 4 characters; a leading `/` (Docker's name form) is ignored. Shared by the HTTP
/// lookups (on a snapshot) and the registry's own (stream events).
fn lookup<'a>(
    engines: impl Iterator<Item = &'a EngineState> + Clone,
    key: &str,
) -> Option<&'a EngineState> {
    let key = key.trim_start_matches('/');
    if key.is_empty() {
        return None;
    }
    if let Some(e) = engines
        .clone()
        .find(|e| e.engine.container_id == key || e.engine.container_name == key)
    {
        return Some(e);
    }
    let mut by_prefix =
        engines.filter(|e| key.len() >= 4 && e.engine.container_id.starts_with(key));
    match (by_prefix.next(), by_prefix.next()) {
        (Some(e), None) => Some(e),
        _ => None,
    }
}

/// Built by `lib::run`; `spawn` starts the owner task.
pub struct Registry {
    engines: HashMap<String, EngineState>,
    /// Engines Docker no longer runs, kept so a restarted container (same id) keeps its
    /// counters and history, and pruned after `store.retention`.
    gone: HashMap<String, PersistedEngine>,
    streams: StreamTable,
    conns: HashMap<String, Vec<String>>,
    store: Store,
    pending: Pending,
    docker_up: bool,
    store_error: Option<String>,
    last_sweep: Option<Timestamp>,
    last_pressure_check: Option<Timestamp>,
    filesystems: Vec<Filesystem>,
    /// Every name and address of this host, for matching `engine.host` of stream events
    /// against published ports.
    host_names: HashSet<String>,
    retention: Duration,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    events_tx: broadcast::Sender<RegistryEvent>,
    /// Replies held back until the batch that contains their change is committed and
    /// published: a proxy told "started" or a caller handed a cleanup record can rely on it.
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    /// `stream_started` answers for engines whose cache was being deleted when the stream
    /// arrived. The idle check refuses to *begin* a delete once a stream is known, but one
    /// already begun is running inside the container; the answer waits for its record, so a
    /// proxy told "started" knows no delete is running in that engine
    /// (docs/safety.md#stream-started-means-no-delete). Released by the engine's `FinishCleanup`, its removal, or
    /// `STREAM_ACK_WAIT`.
    held_starts: Vec<HeldStart>,
    /// Started streams by id: when data last moved (a peer or a download speed in an answer),
    /// or when the agent began watching them. In memory only: after a restart of the agent a
    /// stream's stall is timed afresh.
    flowing: HashMap<String, Timestamp>,
    /// When this registry began (what a stream started before it is watched from).
    began: Timestamp,
    /// `streams.stall_after`, as the statistics worker last said.
    stall_after: chrono::Duration,
}

struct HeldStart {
    id: String,
    until: tokio::time::Instant,
    reply: Box<dyn FnOnce() + Send>,
}

#[derive(Default)]
struct Pending {
    engines: HashSet<String>,
    records: Vec<CleanupRecord>,
    heal_records: Vec<HealRecord>,
    streams: HashSet<String>,
    delete_streams: HashSet<String>,
    last_sweep: Option<Timestamp>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.engines.is_empty()
            && self.records.is_empty()
            && self.heal_records.is_empty()
            && self.streams.is_empty()
            && self.delete_streams.is_empty()
            && self.last_sweep.is_none()
    }
}

pub struct RegistryParts {
    pub handle: RegistryHandle,
    pub events: broadcast::Sender<RegistryEvent>,
    pub rx: mpsc::Receiver<RegistryCmd>,
}

impl Registry {
    /// Loads what the store remembers: engines not known to be gone are shown as they were
    /// until discovery has listed Docker (so `/engines` answers from the store while Docker is
    /// down), and streams started by events stay started.
    pub fn new(
        store: Store,
        host_names: HashSet<String>,
        retention: Duration,
    ) -> Result<(Registry, RegistryParts), crate::store::StoreError> {
        let loaded = store.load()?;
        let mut engines = HashMap::new();
        let mut gone = HashMap::new();
        for p in loaded.engines {
            if p.gone_at.is_some() {
                gone.insert(p.engine.container_id.clone(), p);
            } else {
                let id = p.engine.container_id.clone();
                let mut engine = p.engine;
                // Stream statistics are live values: none until the engine is asked again.
                engine.peers = None;
                engine.speed_down_bytes = None;
                engine.speed_up_bytes = None;
                engine.stalled_streams = 0;
                engines.insert(id, EngineState::remembered(engine, p.counters, p.heal));
            }
        }
        // A stall is timed afresh by this run (`flowing`); the flags of the last run's say
        // nothing yet.
        let streams = StreamTable::new(loaded.streams.into_iter().map(|mut r| {
            r.stats.stalled = false;
            r
        }));
        let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let (events_tx, _) = broadcast::channel(1024);
        let (tx, rx) = mpsc::channel(1024);
        let mut reg = Registry {
            engines,
            gone,
            streams,
            conns: HashMap::new(),
            store,
            pending: Pending::default(),
            docker_up: false,
            store_error: None,
            last_sweep: loaded.last_sweep,
            last_pressure_check: None,
            filesystems: Vec::new(),
            host_names,
            retention,
            snapshot_tx,
            events_tx: events_tx.clone(),
            after_commit: Vec::new(),
            held_starts: Vec::new(),
            flowing: HashMap::new(),
            began: Utc::now(),
            stall_after: chrono::Duration::MAX,
        };
        let ids: Vec<String> = reg.engines.keys().cloned().collect();
        for id in ids {
            reg.refresh_streams(&id, Utc::now());
        }
        reg.publish();
        Ok((
            reg,
            RegistryParts {
                handle: RegistryHandle { tx, snapshots },
                events: events_tx,
                rx,
            },
        ))
    }

    /// The owner loop: drain what is queued, persist once, publish once.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RegistryCmd>, mut shutdown: Shutdown) {
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut changed = false;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        changed |= self.apply(cmd);
                        while let Ok(cmd) = rx.try_recv() {
                            changed |= self.apply(cmd);
                        }
                    }
                    None => break,
                },
                _ = retry.tick() => self.release_overdue_starts(),
                _ = prune.tick() => changed |= self.prune().await,
                _ = shutdown.recv() => {
                    // Take what is already queued (finished cleanups) before the final commit.
                    while let Ok(cmd) = rx.try_recv() {
                        self.apply(cmd);
                    }
                    self.persist().await;
                    self.release_starts(|_| true);
                    break;
                }
            }
            changed |= self.persist().await;
            if changed {
                self.publish();
            }
            for reply in self.after_commit.drain(..) {
                reply();
            }
        }
        for reply in self.after_commit.drain(..) {
            reply();
        }
    }

    fn publish(&self) {
        let mut engines: Vec<EngineState> = self.engines.values().cloned().collect();
        engines.sort_by(|a, b| {
            (&a.engine.container_name, &a.engine.container_id)
                .cmp(&(&b.engine.container_name, &b.engine.container_id))
        });
        self.snapshot_tx.send_replace(Arc::new(Snapshot {
            engines,
            docker_up: self.docker_up,
            store_error: self.store_error.clone(),
            last_sweep: self.last_sweep,
            last_pressure_check: self.last_pressure_check,
            filesystems: self.filesystems.clone(),
        }));
    }

    /// Writes pending changes in one transaction; returns whether the store status changed.
    async fn persist(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let batch = self.batch();
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.apply(&batch))
            .await
            .unwrap_or_else(|e| {
                Err(crate::store::StoreError::Io {
                    path: self.store.path().to_path_buf(),
                    message: format!("store task failed: {e}"),
                })
            });
        match result {
            Ok(()) => {
                self.pending = Pending::default();
                if self.store_error.take().is_some() {
                    info!("store writable again; pending changes committed");
                    return true;
                }
                false
            }
            Err(e) => {
                // Pending changes stay queued and are retried, so nothing is lost while the
                // disk is full or read-only.
                let msg = e.to_string();
                let changed = self.store_error.as_deref() != Some(msg.as_str());
                if changed {
                    error!(error = %msg, "cannot write the store; keeping changes in memory and retrying");
                }
                self.store_error = Some(msg);
                changed
            }
        }
    }

    fn batch(&self) -> Batch {
        let mut b = Batch::default();
        for id in &self.pending.engines {
            if let Some(e) = self.engines.get(id) {
                b.engines.push(PersistedEngine {
                    engine: e.engine.clone(),
                    counters: e.counters,
                    gone_at: None,
                    heal: e.heal.clone(),
                });
            } else if let Some(g) = self.gone.get(id) {
                b.engines.push(g.clone());
            } else {
                b.delete_engines.push(id.clone());
            }
        }
        b.records = self.pending.records.clone();
        b.heal_records = self.pending.heal_records.clone();
        for id in &self.pending.streams {
            if let Some(s) = self.streams.get(id) {
                b.streams.push(s.clone());
            }
        }
        b.delete_streams = self.pending.delete_streams.iter().cloned().collect();
        b.last_sweep = self.pending.last_sweep;
        b
    }

    async fn prune(&mut self) -> bool {
        let now = Utc::now();
        let Ok(retention) = chrono::Duration::from_std(self.retention) else {
            return false;
        };
        let cutoff = now - retention;
        let before = self.gone.len() + self.streams.len();
        self.gone
            .retain(|_, g| g.gone_at.is_none_or(|at| at >= cutoff));
        self.streams
            .retain(|s| s.ended_at.is_none_or(|at| at >= cutoff));
        let store = self.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.prune(now, retention)).await {
            warn!(error = %e, "pruning the store failed");
        }
        before != self.gone.len() + self.streams.len()
    }

    fn emit(&self, ev: RegistryEvent) {
        // No receiver (janitor not running in a test) is fine.
        let _ = self.events_tx.send(ev);
    }

    /// Applies one command; returns whether the snapshot changed.
    fn apply(&mut self, cmd: RegistryCmd) -> bool {
        let now = Utc::now();
        match cmd {
            RegistryCmd::Sync(list) => {
                let seen: HashSet<String> = list.iter().map(|d| d.container_id.clone()).collect();
                for d in list {
                    self.upsert(d, now);
                }
                let stale: Vec<String> = self
                    .engines
                    .keys()
                    .filter(|id| !seen.contains(*id))
                    .cloned()
                    .collect();
                for id in stale {
                    self.remove(&id, now);
                }
                true
            }
            RegistryCmd::Upsert(d) => {
                self.upsert(*d, now);
                true
            }
            RegistryCmd::Remove(id) => self.remove(&id, now),
            RegistryCmd::HostName(name) => {
                self.host_names.insert(name.to_ascii_lowercase());
                false
            }
            RegistryCmd::DockerUp(up) => {
                let changed = self.docker_up != up;
                self.docker_up = up;
                changed
            }
            RegistryCmd::Health {
                id,
                status,
                at,
                version,
            } => {
                let Some(e) = self.engines.get_mut(&id) else {
                    return false;
                };
                e.engine.health_status = status;
                e.engine.last_health_check = Some(at);
                if version.is_some() {
                    e.engine.version = version;
                }
                heal_on_health(e, status, at);
                self.pending.engines.insert(id);
                true
            }
            RegistryCmd::Connections { id, streams } => {
                if !self.engines.contains_key(&id) {
                    return false;
                }
                if streams.is_empty() {
                    self.conns.remove(&id);
                } else {
                    self.conns.insert(id.clone(), streams);
                }
                self.refresh_streams(&id, now)
            }
            RegistryCmd::Measured {
                id,
                bytes,
                at,
                empty,
            } => {
                let Some(e) = self.engines.get_mut(&id) else {
                    return false;
                };
                e.engine.cache_current_bytes = Some(bytes);
                e.engine.cache_measured_at = Some(at);
                e.cache_empty_since = empty.then_some(at);
                self.pending.engines.insert(id);
                true
            }
            RegistryCmd::StreamStarted(s, reply) => {
                let r = self.stream_started(s, now);
                let changed = r.is_ok();
                let cleaning = r
                    .as_ref()
                    .ok()
                    .and_then(|rec| self.engines.get(&rec.container_id))
                    .filter(|e| e.cleaning)
                    .map(|e| e.engine.container_id.clone());
                let reply: Box<dyn FnOnce() + Send> = Box::new(move || {
                    let _ = reply.send(r);
                });
                match cleaning {
                    Some(id) => self.held_starts.push(HeldStart {
                        id,
                        until: tokio::time::Instant::now() + STREAM_ACK_WAIT,
                        reply,
                    }),
                    None => self.after_commit.push(reply),
                }
                changed
            }
            RegistryCmd::StreamEnded(s, reply) => {
                let r = self.stream_ended(s, now);
                let changed = matches!(&r, Ok(v) if !v.is_empty());
                self.after_commit.push(Box::new(move || {
                    let _ = reply.send(r);
                }));
                changed
            }
            RegistryCmd::ListStreams {
                container_id,
                status,
                reply,
            } => {
                let full = container_id.as_deref().map(|c| {
                    self.resolve_id(c)
                        .map(str::to_string)
                        .unwrap_or_else(|| c.to_string())
                });
                let mut v: Vec<StreamRecord> = self
                    .streams
                    .values()
                    .filter(|s| full.as_ref().is_none_or(|c| &s.container_id == c))
                    .filter(|s| status.is_none_or(|st| s.status == st))
                    .cloned()
                    .collect();
                v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
                let _ = reply.send(v);
                false
            }
            RegistryCmd::BeginDelete(id, reply) => {
                let r = match self.engines.get_mut(&id) {
                    None => Err(RegistryError::UnknownEngine(format!(
                        "no engine {}",
                        id12(&id)
                    ))),
                    Some(e) if !e.running => Err(RegistryError::NotRunning(e.id12().into())),
                    Some(e) if !e.is_idle() => Err(RegistryError::HasStreams(e.id12().into())),
                    Some(e) if e.heal.restart_pending => Err(RegistryError::Busy(
                        e.id12().into(),
                        "it is being restarted",
                    )),
                    Some(e) => {
                        e.cleaning = true;
                        Ok(())
                    }
                };
                let changed = r.is_ok();
                let _ = reply.send(r);
                changed
            }
            RegistryCmd::FinishCleanup {
                record,
                current_bytes,
                ack,
            } => {
                self.finish_cleanup(record, current_bytes);
                self.after_commit.push(Box::new(move || {
                    let _ = ack.send(());
                }));
                true
            }
            RegistryCmd::SweepDone(at) => {
                self.last_sweep = Some(at);
                self.pending.last_sweep = Some(at);
                true
            }
            RegistryCmd::BeginRestart {
                id,
                trigger,
                forget_before,
                reply,
            } => {
                let r = self.begin_restart(&id, trigger, forget_before, now);
                let changed = r.is_ok();
                // After the commit: a restart approved is one the store already counts, so a
                // `kill -9` during it cannot lose it.
                self.after_commit.push(Box::new(move || {
                    let _ = reply.send(r);
                }));
                changed
            }
            RegistryCmd::FinishRestart { record, ack } => {
                self.finish_restart(record);
                self.after_commit.push(Box::new(move || {
                    let _ = ack.send(());
                }));
                true
            }
            RegistryCmd::Quarantine { id, at } => {
                let Some(e) = self.engines.get_mut(&id) else {
                    return false;
                };
                e.heal.quarantined = Some(at);
                e.engine.heal_state = HealState::Quarantined;
                self.pending.engines.insert(id);
                true
            }
            RegistryCmd::StreamStats {
                at,
                stall_after,
                results,
            } => self.stream_stats(at, stall_after, results),
            RegistryCmd::LogSizes(sizes) => {
                let mut changed = false;
                for (id, bytes) in sizes {
                    if let Some(e) = self.engines.get_mut(&id) {
                        if e.engine.log_bytes != bytes {
                            e.engine.log_bytes = bytes;
                            changed = true;
                        }
                    }
                }
                changed
            }
            RegistryCmd::HealStates(states) => {
                let mut changed = false;
                for (id, state) in states {
                    if let Some(e) = self.engines.get_mut(&id) {
                        if e.engine.heal_state != state {
                            e.engine.heal_state = state;
                            self.pending.engines.insert(id);
                            changed = true;
                        }
                    }
                }
                changed
            }
            RegistryCmd::Filesystems {
                filesystems,
                mountpoints,
                memory,
            } => {
                let mut changed = self.filesystems != filesystems;
                self.filesystems = filesystems;
                if mountpoints.is_some() {
                    // A whole round (the pressure task's in-between reports carry none).
                    self.last_pressure_check = Some(Utc::now());
                    changed = true;
                }
                let memory: HashMap<String, MemoryUse> = memory.into_iter().collect();
                for e in self.engines.values_mut() {
                    let m = memory.get(&e.engine.container_id).copied();
                    if e.memory != m {
                        e.memory = m;
                        changed = true;
                    }
                }
                for (id, mp) in mountpoints.into_iter().flatten() {
                    if let Some(e) = self.engines.get_mut(&id) {
                        if e.engine.cache_mountpoint != mp {
                            e.engine.cache_mountpoint = mp;
                            self.pending.engines.insert(id);
                            changed = true;
                        }
                    }
                }
                changed
            }
        }
    }

    fn upsert(&mut self, d: DiscoveredEngine, now: Timestamp) {
        let cache_path = d.cache.path.clone();
        let id = d.container_id.clone();
        let restarted = match self.engines.get(&id) {
            Some(e) => e.runtime.pid != d.runtime.pid,
            None => true,
        };
        let state = match self.engines.remove(&id) {
            Some(e) => e,
            None => {
                let (engine, counters, heal) = match self.gone.remove(&id) {
                    Some(g) => (g.engine, g.counters, g.heal),
                    None => (
                        Engine {
                            container_id: id.clone(),
                            container_name: d.container_name.clone(),
                            host: d.host.clone(),
                            port: d.port,
                            streams: vec![],
                            health_status: HealthStatus::Unknown,
                            last_health_check: None,
                            last_stream_usage: None,
                            last_cache_cleanup: None,
                            cache_size_bytes: None,
                            image: d.image.clone(),
                            labels: d.labels.clone(),
                            version: None,
                            first_seen: now,
                            last_seen: now,
                            cache_current_bytes: None,
                            cache_measured_at: None,
                            cleanups_total: 0,
                            cleanup_failures_total: 0,
                            cache_freed_bytes_total: 0,
                            last_cleanup_error: None,
                            cache_path: cache_path.clone(),
                            cache_path_source: Some(d.cache.source),
                            cache_medium: d.cache.medium,
                            cache_mountpoint: None,
                            restarts_total: 0,
                            last_restart: None,
                            unhealthy_since: None,
                            heal_state: HealState::Ok,
                            peers: None,
                            speed_down_bytes: None,
                            speed_up_bytes: None,
                            stalled_streams: 0,
                            cache_limit_bytes: None,
                            cache_limit_source: None,
                            live_cache_type: None,
                            log_bytes: None,
                            log_rotation: None,
                        },
                        TriggerCounters::default(),
                        HealBook::default(),
                    ),
                };
                info!(container_id = %id12(&id), container_name = %d.container_name,
                    "Engine discovered: {} ({})", d.container_name, id12(&id));
                EngineState {
                    running: true,
                    ..EngineState::remembered(engine, counters, heal)
                }
            }
        };
        let mut e = state;
        if restarted {
            // A new process may be a new engine version.
            e.engine.version = None;
        }
        if restarted || e.engine.cache_path != cache_path {
            // Found empty was about another process or another directory.
            e.cache_empty_since = None;
        }
        e.engine.container_name = d.container_name;
        e.engine.image = d.image;
        e.engine.labels = d.labels;
        e.engine.host = d.host;
        e.engine.port = d.port;
        e.engine.last_seen = now;
        if e.engine.cache_path != cache_path || e.engine.cache_path_source != Some(d.cache.source) {
            info!(container_id = %id12(&id), container_name = %e.engine.container_name,
                cache_path = %cache_path, source = d.cache.source.as_str(), medium = d.cache.medium.as_str(),
                "Cache of {} ({}): {cache_path} (from {})", e.engine.container_name, id12(&id), d.cache.source.as_str());
        }
        e.engine.cache_path = cache_path;
        e.engine.cache_path_source = Some(d.cache.source);
        e.engine.cache_medium = d.cache.medium;
        // What a stream of this process reported wins over the command line; a new process
        // may run with another limit.
        if restarted || e.engine.cache_limit_source != Some(CacheLimitSource::Engine) {
            let limit = d.limits.of_cache(d.cache.medium);
            e.engine.cache_limit_bytes = limit;
            e.engine.cache_limit_source = limit.map(|_| CacheLimitSource::CommandLine);
        }
        e.engine.live_cache_type = d.limits.live_cache_type.clone();
        e.engine.log_rotation = d.runtime.log.as_ref().map(|(_, rotated)| *rotated);
        if d.runtime.log.is_none() {
            e.engine.log_bytes = None;
        }
        let was_refused = e.cache.as_ref().and_then(|c| c.error.as_ref());
        if let Some(err) = &d.cache.error {
            if was_refused != Some(err) {
                warn!(container_id = %id12(&id), error = err.as_str(), "engine will not be cleaned");
            }
            e.engine.last_cleanup_error = Some(err.clone());
        }
        e.cache = Some(d.cache);
        heal_on_start(&mut e, d.runtime.pid, now);
        e.runtime = d.runtime;
        e.running = true;
        self.engines.insert(id.clone(), e);
        self.pending.engines.insert(id.clone());
        self.refresh_streams(&id, now);
    }

    fn remove(&mut self, id: &str, now: Timestamp) -> bool {
        let Some(e) = self.engines.remove(id) else {
            return false;
        };
        // No delete runs in a container that is gone.
        self.release_starts(|h| h.id == id);
        info!(container_id = %id12(id), container_name = %e.engine.container_name,
            "Engine gone: {} ({})", e.engine.container_name, id12(id));
        self.conns.remove(id);
        // Streams die with their container; nobody will send their `ended`.
        for sid in self.streams.started_ids(id) {
            if self.streams.end(&sid, now).is_some() {
                self.pending.streams.insert(sid);
            }
        }
        let mut engine = e.engine;
        if !engine.streams.is_empty() {
            engine.last_stream_usage = Some(now);
        }
        engine.streams.clear();
        self.gone.insert(
            id.to_string(),
            PersistedEngine {
                engine,
                counters: e.counters,
                gone_at: Some(now),
                heal: e.heal,
            },
        );
        self.pending.engines.insert(id.to_string());
        self.cap_ended_streams();
        self.emit(RegistryEvent::Removed { id: id.to_string() });
        true
    }

    /// Moves the held `stream_started` answers that `which` picks to the replies sent after the
    /// next commit.
    fn release_starts(&mut self, which: impl Fn(&HeldStart) -> bool) {
        let (go, stay): (Vec<_>, Vec<_>) = self.held_starts.drain(..).partition(|h| which(h));
        self.held_starts = stay;
        self.after_commit.extend(go.into_iter().map(|h| h.reply));
    }

    fn release_overdue_starts(&mut self) {
        let now = tokio::time::Instant::now();
        for h in self.held_starts.iter().filter(|h| h.until <= now) {
            warn!(container_id = %id12(&h.id),
                "answering stream_started although the cache delete that was running in this engine has not reported back within {}s",
                STREAM_ACK_WAIT.as_secs());
        }
        self.release_starts(|h| h.until <= now);
    }

    /// Recomputes `streams` from both sources and emits idle/busy transitions.
    fn refresh_streams(&mut self, id: &str, now: Timestamp) -> bool {
        let mut streams = self.streams.started_ids(id);
        if let Some(c) = self.conns.get(id) {
            streams.extend(c.iter().cloned());
        }
        streams.sort();
        streams.dedup();
        let Some(e) = self.engines.get_mut(id) else {
            return false;
        };
        if e.engine.streams == streams {
            return false;
        }
        let was_idle = e.engine.streams.is_empty();
        let now_idle = streams.is_empty();
        e.engine.streams = streams;
        e.engine.last_stream_usage = Some(now);
        self.pending.engines.insert(id.to_string());
        self.sum_stats(id);
        match (was_idle, now_idle) {
            (false, true) => self.emit(RegistryEvent::BecameIdle {
                id: id.to_string(),
                at: now,
            }),
            (true, false) => self.emit(RegistryEvent::BecameBusy { id: id.to_string() }),
            _ => {}
        }
        true
    }

    fn resolve_id(&self, key: &str) -> Option<&str> {
        lookup(self.engines.values(), key).map(|e| e.engine.container_id.as_str())
    }

    /// Finds the engine a proxy means by `engine.host:engine.port`
    /// (docs/deployments.md#stream-events-from-proxies).
    fn resolve_addr(&self, host: &str, port: u16) -> Option<&str> {
        let host = host
            .trim()
            .trim_start_matches('/')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let this_host = self.host_names.contains(&host);
        self.engines
            .values()
            .filter(|e| e.running)
            .find(|e| {
                let r = &e.runtime;
                let on_network = port == r.container_port
                    && (e.engine.container_name.to_ascii_lowercase() == host
                        || r.aliases.iter().any(|a| a.to_ascii_lowercase() == host)
                        || r.ips.iter().any(|ip| ip.to_string() == host));
                let published = this_host && r.host_port == Some(port);
                let advertised =
                    e.engine.host.to_ascii_lowercase() == host && e.engine.port == port;
                on_network || published || advertised
            })
            .map(|e| e.engine.container_id.as_str())
    }

    fn stream_started(
        &mut self,
        s: StreamStart,
        now: Timestamp,
    ) -> Result<StreamRecord, RegistryError> {
        let id = match s.container_id.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => self
                .resolve_id(c)
                .ok_or_else(|| {
                    RegistryError::UnknownEngine(format!(
                        "no discovered engine with container id {c:?}"
                    ))
                })?
                .to_string(),
            None => self
                .resolve_addr(&s.host, s.port)
                .ok_or_else(|| {
                    RegistryError::UnknownEngine(format!(
                        "no discovered engine at {}:{}",
                        s.host, s.port
                    ))
                })?
                .to_string(),
        };
        let active = self.streams.started_count(&id);
        let exists = self
            .streams
            .get(&s.stream_id)
            .is_some_and(|r| r.container_id == id && r.status == StreamStatus::Started);
        if !exists && active >= MAX_STREAMS_PER_ENGINE {
            return Err(RegistryError::TooManyStreams(id12(&id).into()));
        }
        let record = StreamRecord {
            id: s.stream_id.clone(),
            key_type: s.key_type,
            key: s.key,
            container_id: id.clone(),
            playback_session_id: s.playback_session_id,
            stat_url: s.stat_url,
            command_url: s.command_url,
            is_live: s.is_live,
            started_at: now,
            ended_at: None,
            status: StreamStatus::Started,
            stats: Default::default(),
        };
        // A stream id moving to another engine ends where it was.
        let previous = self.streams.insert(record.clone());
        self.pending.streams.insert(s.stream_id.clone());
        self.pending.delete_streams.remove(&s.stream_id);
        if let Some(p) = previous.filter(|p| p.container_id != id) {
            self.refresh_streams(&p.container_id, now);
        }
        self.refresh_streams(&id, now);
        self.cap_ended_streams();
        Ok(record)
    }

    fn stream_ended(
        &mut self,
        s: StreamEnd,
        now: Timestamp,
    ) -> Result<Vec<StreamRecord>, RegistryError> {
        let container = match s.container_id.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(
                self.resolve_id(c)
                    .map(str::to_string)
                    // The container may be gone already; its streams were ended then.
                    .or_else(|| {
                        self.streams
                            .values()
                            .find(|r| r.container_id.starts_with(c))
                            .map(|r| r.container_id.clone())
                    })
                    .ok_or_else(|| {
                        RegistryError::UnknownEngine(format!(
                            "no discovered engine with container id {c:?}"
                        ))
                    })?,
            ),
            None => None,
        };
        let ids: Vec<String> = match (&s.stream_id, &container) {
            (Some(sid), _) => {
                let r = self
                    .streams
                    .get(sid)
                    .filter(|r| container.as_ref().is_none_or(|c| &r.container_id == c))
                    .ok_or_else(|| RegistryError::UnknownStream(sid.clone()))?;
                if r.status == StreamStatus::Ended {
                    // The proxy may retry; an ended stream stays as it is.
                    return Ok(vec![]);
                }
                vec![sid.clone()]
            }
            (None, Some(c)) => self.streams.started_ids(c),
            (None, None) => {
                return Err(RegistryError::BadRequest(
                    "stream_ended needs a stream_id or a container_id".into(),
                ))
            }
        };
        let mut ended = vec![];
        let mut engines = HashSet::new();
        for sid in ids {
            if let Some(r) = self.streams.end(&sid, now) {
                engines.insert(r.container_id.clone());
                ended.push(r);
                self.pending.streams.insert(sid);
            }
        }
        for id in engines {
            self.refresh_streams(&id, now);
        }
        // Ending is what makes ended records pile up: cap them here too, not only on start.
        self.cap_ended_streams();
        Ok(ended)
    }

    /// Keeps the newest `MAX_ENDED_STREAMS` ended records so 100,000 distinct stream ids cannot
    /// grow memory without bound.
    fn cap_ended_streams(&mut self) {
        while self.streams.ended_count() > MAX_ENDED_STREAMS {
            let Some(id) = self.streams.pop_oldest_ended() else {
                break;
            };
            self.pending.streams.remove(&id);
            self.pending.delete_streams.insert(id);
        }
    }

    /// Applies one round of statistics to the started streams, then each engine's sums.
    fn stream_stats(
        &mut self,
        at: Timestamp,
        stall_after: Duration,
        results: Vec<(String, StatResult)>,
    ) -> bool {
        let stall_after = chrono::Duration::from_std(stall_after).unwrap_or(chrono::Duration::MAX);
        let mut engines = HashSet::new();
        let mut changed = false;
        self.stall_after = stall_after;
        self.flowing.retain(|sid, _| {
            self.streams
                .get(sid)
                .is_some_and(|r| r.status == StreamStatus::Started)
        });
        for (sid, result) in results {
            let (container_id, watched_from) = match self.streams.get(&sid) {
                Some(r) if r.status == StreamStatus::Started => {
                    (r.container_id.clone(), r.started_at.max(self.began))
                }
                _ => continue,
            };
            let flowing_at = *self.flowing.entry(sid.clone()).or_insert(watched_from);
            if let StatResult::Answer(a) = &result {
                if let (Some(limit), Some(e)) =
                    (a.disk_cache_limit, self.engines.get_mut(&container_id))
                {
                    let from_engine = (Some(limit), Some(CacheLimitSource::Engine));
                    if (e.engine.cache_limit_bytes, e.engine.cache_limit_source) != from_engine {
                        (e.engine.cache_limit_bytes, e.engine.cache_limit_source) = from_engine;
                        self.pending.engines.insert(container_id.clone());
                        changed = true;
                    }
                }
            }
            let Some(st) = self.streams.stats_mut(&sid) else {
                continue;
            };
            let flowing_at = match result {
                StatResult::Answer(a) => {
                    st.peers = a.peers;
                    st.speed_down_bytes = a.speed_down.map(|k| k.saturating_mul(1024));
                    st.speed_up_bytes = a.speed_up.map(|k| k.saturating_mul(1024));
                    st.downloaded_bytes = a.downloaded;
                    st.uploaded_bytes = a.uploaded;
                    st.stat_status = a.status.clone();
                    st.stat_at = Some(at);
                    if a.flowing() {
                        self.flowing.insert(sid.clone(), at);
                        at
                    } else {
                        flowing_at
                    }
                }
                StatResult::Failed => flowing_at,
                StatResult::EngineError(e) => {
                    st.stat_status = Some(format!("error: {e}"));
                    flowing_at
                }
                StatResult::Refused(why) => {
                    st.stat_status = Some(format!("refused: {why}"));
                    flowing_at
                }
            };
            st.stalled = at - flowing_at >= stall_after;
            engines.insert(container_id);
        }
        // Published only when an engine's figures changed: a round that changed only the
        // streams' `stat_at` re-renders no view (the streams are read on request).
        for id in &engines {
            changed |= self.sum_stats(id);
        }
        changed
    }

    /// An engine's sums over its started streams' statistics, and since when all of them
    /// are stalled; whether any of that changed.
    fn sum_stats(&mut self, id: &str) -> bool {
        let Some(e) = self.engines.get_mut(id) else {
            return false;
        };
        let before = (
            e.engine.peers,
            e.engine.speed_down_bytes,
            e.engine.speed_up_bytes,
            e.engine.stalled_streams,
            e.streams_stalled_since,
        );
        let started: Vec<&StreamRecord> = self
            .streams
            .started_ids(id)
            .iter()
            .filter_map(|sid| self.streams.get(sid))
            .collect();
        let sum = |f: fn(&StreamRecord) -> Option<u64>| -> Option<u64> {
            started
                .iter()
                .filter_map(|r| f(r))
                .reduce(|a, b| a.saturating_add(b))
        };
        e.engine.peers = sum(|r| r.stats.peers);
        e.engine.speed_down_bytes = sum(|r| r.stats.speed_down_bytes);
        e.engine.speed_up_bytes = sum(|r| r.stats.speed_up_bytes);
        let watched: Vec<&&StreamRecord> =
            started.iter().filter(|r| !r.stat_url.is_empty()).collect();
        let stalled = watched.iter().filter(|r| r.stats.stalled).count();
        e.engine.stalled_streams = stalled as u64;
        e.streams_stalled_since = (stalled > 0 && stalled == watched.len())
            .then(|| {
                watched
                    .iter()
                    .filter_map(|r| self.flowing.get(&r.id))
                    .max()
                    .and_then(|t| t.checked_add_signed(self.stall_after))
            })
            .flatten();
        before
            != (
                e.engine.peers,
                e.engine.speed_down_bytes,
                e.engine.speed_up_bytes,
                e.engine.stalled_streams,
                e.streams_stalled_since,
            )
    }

    fn begin_restart(
        &mut self,
        id: &str,
        trigger: HealTrigger,
        forget_before: Timestamp,
        now: Timestamp,
    ) -> Result<RestartStart, RegistryError> {
        let e = match self.engines.get_mut(id) {
            None => {
                return Err(RegistryError::UnknownEngine(format!(
                    "no engine {}",
                    id12(id)
                )))
            }
            Some(e) => e,
        };
        if !e.running {
            return Err(RegistryError::NotRunning(e.id12().into()));
        }
        // A stalled engine is restarted with its streams (they get nothing); any other only
        // when idle.
        let stalled = trigger == HealTrigger::Stalled && e.streams_stalled_since.is_some();
        if !e.is_idle() && !stalled {
            return Err(RegistryError::HasStreams(e.id12().into()));
        }
        if e.cleaning {
            return Err(RegistryError::Busy(
                e.id12().into(),
                "its cache is being deleted",
            ));
        }
        if e.heal.restart_pending {
            return Err(RegistryError::Busy(
                e.id12().into(),
                "it is being restarted",
            ));
        }
        if e.runtime.paused {
            return Err(RegistryError::Busy(
                e.id12().into(),
                "it is paused (docker unpause it first)",
            ));
        }
        e.heal.recent.retain(|t| *t >= forget_before);
        if trigger != HealTrigger::Manual {
            e.heal.recent.push(now);
        }
        e.heal.restart_pending = true;
        let start = RestartStart {
            container_name: e.engine.container_name.clone(),
            unhealthy_since: e.engine.unhealthy_since,
        };
        self.pending.engines.insert(id.to_string());
        Ok(start)
    }

    fn finish_restart(&mut self, record: HealRecord) {
        let id = record.container_id.clone();
        let (engine, heal) = if let Some(e) = self.engines.get_mut(&id) {
            (&mut e.engine, &mut e.heal)
        } else if let Some(g) = self.gone.get_mut(&id) {
            (&mut g.engine, &mut g.heal)
        } else {
            return;
        };
        if record.success {
            heal.count_restart(record.trigger);
            heal.recovering = true;
            engine.last_restart = Some(record.finished_at);
            engine.restarts_total = heal.restarts_total();
        } else {
            // Docker did not restart it (or did not say so in time): a new process seen later
            // is taken for someone else's restart, which asks nothing of the engine's past.
            heal.restart_pending = false;
        }
        self.pending.engines.insert(id);
        self.pending.heal_records.push(record);
    }

    fn finish_cleanup(&mut self, record: CleanupRecord, current_bytes: Option<u64>) {
        let id = record.container_id.clone();
        // Answered with the batch that holds this record, like every reply.
        self.release_starts(|h| h.id == id);
        let (engine, counters) = if let Some(e) = self.engines.get_mut(&id) {
            e.cleaning = false;
            // Found empty, or emptied: empty since the work began (a stream that wrote
            // meanwhile has a later `last_stream_usage`, so `known_empty` stays false).
            e.cache_empty_since =
                matches!(record.verdict, Verdict::Cleaned | Verdict::NothingToClean)
                    .then_some(record.started_at);
            (&mut e.engine, &mut e.counters)
        } else if let Some(g) = self.gone.get_mut(&id) {
            (&mut g.engine, &mut g.counters)
        } else {
            return;
        };
        if let Some(b) = current_bytes {
            engine.cache_current_bytes = Some(b);
            engine.cache_measured_at = Some(record.finished_at);
        }
        if !record.verdict.is_cleanup() {
            // Nothing to clean (docs/cache-paths.md#nothing-to-clean), kept below the minimum,
            // or a client at the delete: a new current size, not a cleanup. No record, no
            // counter, and the orchestrator's fields keep describing the last cleanup.
            self.pending.engines.insert(id);
            return;
        }
        let c = counters.get_mut(record.trigger);
        if let Verdict::Failed(err) = &record.verdict {
            c.failures += 1;
            engine.last_cleanup_error = Some(err.clone());
        } else {
            c.cleanups += 1;
            c.freed_bytes += record.freed_bytes;
            // The orchestrator's two fields describe the last cleanup of an idle engine; files taken
            // from a busy one under pressure are no such cleanup.
            if record.trigger != Trigger::PressureBusy {
                engine.last_cache_cleanup = Some(record.finished_at);
                engine.cache_size_bytes = record.size_before_bytes;
            }
            engine.last_cleanup_error = None;
        }
        let total = counters.total();
        engine.cleanups_total = total.cleanups;
        engine.cleanup_failures_total = total.failures;
        engine.cache_freed_bytes_total = total.freed_bytes;
        self.pending.engines.insert(id);
        self.pending.records.push(record);
    }
}

/// Heal's facts after a status probe: the first failure since the engine last answered starts
/// `unhealthy_since`; an answer clears it, makes the engine one that was healthy since its
/// start, ends a quarantine (its restarts count afresh) and ends a recovery.
fn heal_on_health(e: &mut EngineState, status: HealthStatus, at: Timestamp) {
    match status {
        HealthStatus::Healthy => {
            e.engine.unhealthy_since = None;
            e.heal.healthy_since_start = true;
            if e.heal.quarantined.take().is_some() {
                e.heal.counted_from = Some(at);
            }
            if std::mem::take(&mut e.heal.recovering) {
                logging::heal_recovered(&e.engine.container_id, &e.engine.container_name);
            }
        }
        HealthStatus::Unhealthy => {
            e.engine.unhealthy_since.get_or_insert(at);
        }
        HealthStatus::Unknown => {}
    }
}

/// Heal's facts when discovery reads the engine: a new container process is a container start.
/// The agent's own restart keeps what the engine's health was before it (a stuck engine that
/// stays stuck is restarted again after its back-off); anyone else's starts afresh: not yet
/// healthy since this start, out of quarantine, its restarts counted anew.
fn heal_on_start(e: &mut EngineState, pid: u32, now: Timestamp) {
    let h = &mut e.heal;
    if pid == 0 || pid == h.pid {
        return;
    }
    if h.restart_pending {
        h.restart_pending = false;
    } else {
        h.healthy_since_start = false;
        h.recovering = false;
        if h.pid != 0 {
            h.quarantined = None;
            h.counted_from = Some(now);
        }
    }
    h.pid = pid;
    e.engine.unhealthy_since = None;
}

/// The registry's rules as unit tests on a temporary store, in paused time.
#[cfg(test)]
mod tests;
