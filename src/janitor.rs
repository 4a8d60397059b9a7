//! Cache janitor (docs/architecture.md#janitor, docs/safety.md#cleanups). Owns in-flight cleanups
//! and the cleanup triggers; never decides idleness itself (the registry does, and re-checks it
//! right before the delete).
//!
//! Rules in code: one cleanup at a time per engine (`inflight`, a guard that frees the id on
//! drop; failing to take it is the 409 of a manual cleanup), at most `cleanup.concurrency` at
//! once (`limit`), every measurement or cleanup bounded by `cleanup.exec_timeout`, and none
//! started on an engine whose previous one timed out and is still running (inside the
//! container, or as a host thread stuck in the filesystem), so a hung `du` cannot pile up one
//! more process per sweep. A host walk runs under `stuck::Guarded` keyed by engine, the guard
//! of disk pressure and the connection probe; a hung exec is Docker's to ask about.
//!
//! How a cache is reached (`cleanup.method`): from the host through `/proc/<pid>/root`
//! (`cache::host`, no exec: Docker's daemons spend nothing on a sweep that finds empty caches),
//! else, per cache and whenever the host cannot (no privilege, pid not verifiable), the fixed
//! script of `cache.rs` by `docker exec`. Both give the same [`Outcome`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{broadcast, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use crate::activity::ProbePorts;
use crate::cache::{self, busy, host, Mode, Outcome, Sizes};
use crate::config::CacheMethod;
use crate::docker::{DockerClient, DockerError};
use crate::logging;
use crate::metrics::{CacheAccess, Metrics};
use crate::model::{id12, CleanupRecord, EngineState, Trigger, Verdict};
use crate::registry::{RegistryCmd, RegistryError, RegistryEvent, RegistryHandle};
use crate::shutdown::Shutdown;
use crate::stuck::{Call, Guarded};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CleanupError {
    #[error("no engine {0}")]
    UnknownEngine(String),
    #[error("a cleanup or measurement of engine {0} is already running")]
    Busy(String),
    #[error("engine {0} has active streams; its cache is not cleaned while it streams")]
    HasStreams(String),
    #[error("engine {0} is not running")]
    NotRunning(String),
    /// Heal is restarting it (or another delete won the race).
    #[error("engine {0} is not cleaned now: {1}")]
    Restarting(String, &'static str),
    #[error("engine {0} is not cleaned: {1}")]
    InvalidCachePath(String, String),
    #[error(
        "engine {0}: a previous cache command timed out and is still running in the container"
    )]
    PreviousExecHung(String),
    #[error("engine {0} is not cleaned while Docker is unreachable")]
    DockerDown(String),
    #[error("the agent is shutting down")]
    Closed,
}

#[derive(Clone)]
pub struct Janitor {
    inner: Arc<Inner>,
}

struct Inner {
    registry: RegistryHandle,
    docker: DockerClient,
    /// std `Mutex`: held to insert or remove an id, never across an `.await`.
    inflight: Mutex<HashSet<String>>,
    /// Execs that timed out, per engine (Docker's exec id), until Docker says they ended.
    hung_execs: Mutex<HashMap<String, String>>,
    /// Host walks, per engine: one that outlived its deadline keeps that engine from a new
    /// cleanup until its thread returns.
    walks: Guarded,
    limit: Arc<Semaphore>,
    exec_timeout: Duration,
    min_bytes: u64,
    metrics: Arc<Metrics>,
    probes: ProbePorts,
    method: CacheMethod,
    /// Engines whose fallback from the host path to exec has been logged.
    fallback_said: logging::SaidOnce,
    reach: Reach,
}

/// What a decided measurement or cleanup is handed to: the engine's real cache (the host walk,
/// else `docker exec`), or in unit tests a stand-in. The seam sits after every rule the janitor
/// applies (idle, one at a time, the concurrency limit, the registry's re-check, the probe
/// pause), so the unit tests exercise all of them without Docker.
enum Reach {
    Cache,
    #[cfg(test)]
    Fake(tests::FakeCaches),
    /// Only the host walk replaced (by a blocking stand-in), behind the real deadline and
    /// stuck-call guard.
    #[cfg(test)]
    FakeWalk(tests::FakeWalk),
}

/// Sets a host walk's "cancel" flag when dropped: by the janitor when it stops waiting (its
/// deadline passed, or the agent is shutting down).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct InflightGuard {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// What a pass over busy engines' caches deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusyFreed {
    pub files: u64,
    pub bytes: u64,
    /// Engines that lost files.
    pub engines: u64,
}

/// One read-only measurement of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    pub bytes: u64,
    /// Missing, or no entries: nothing to clean.
    pub empty: bool,
}

/// When the janitor acts on its own; `None` is "off".
#[derive(Clone, Copy, Debug, Default)]
pub struct Triggers {
    /// Periodic sweep of idle engines (`cleanup.interval`).
    pub sweep: Option<Duration>,
    /// Idle time after the last stream before a stream-end cleanup (`cleanup.idle_grace`).
    pub idle_grace: Option<Duration>,
    /// Live size measurement of every engine (`cleanup.measure_interval`).
    pub measure: Option<Duration>,
}

pub struct JanitorConfig {
    pub exec_timeout: Duration,
    pub concurrency: usize,
    pub min_bytes: u64,
    pub method: CacheMethod,
}

impl Janitor {
    pub fn new(
        registry: RegistryHandle,
        docker: DockerClient,
        cfg: JanitorConfig,
        metrics: Arc<Metrics>,
    ) -> Janitor {
        Janitor {
            inner: Arc::new(Inner {
                registry,
                docker,
                inflight: Mutex::new(HashSet::new()),
                hung_execs: Mutex::new(HashMap::new()),
                walks: Guarded::new(
                    cfg.exec_timeout,
                    logging::cache_walk_stuck,
                    logging::cache_walk_recovered,
                ),
                limit: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
                exec_timeout: cfg.exec_timeout,
                min_bytes: cfg.min_bytes,
                metrics,
                probes: ProbePorts::default(),
                method: cfg.method,
                fallback_said: logging::SaidOnce::default(),
                reach: Reach::Cache,
            }),
        }
    }

    #[cfg(test)]
    fn with_reach(mut self, reach: Reach) -> Janitor {
        Arc::get_mut(&mut self.inner)
            .expect("with_reach is called right after new, before any clone")
            .reach = reach;
        self
    }

    /// Shares the health checker's probe bookkeeping, so a delete pauses new checks of its
    /// engine and its live-stream guard ignores the checks in flight.
    pub fn with_probes(mut self, probes: ProbePorts) -> Janitor {
        Arc::get_mut(&mut self.inner)
            .expect("with_probes is called right after new, before any clone")
            .probes = probes;
        self
    }

    fn try_acquire(&self, id: &str) -> Option<InflightGuard> {
        let mut s = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.insert(id.to_string()).then(|| InflightGuard {
            inner: self.inner.clone(),
            id: id.to_string(),
        })
    }

    /// Measures (and clears) one cache: from the host where it can, else by exec. A timeout
    /// remembers the work as hung.
    async fn run_script(&self, e: &EngineState, mode: Mode) -> Outcome {
        let id = &e.engine.container_id;
        let path = match e.cache_to_clean() {
            Ok(c) => c.path.clone(),
            Err(why) => {
                return Outcome::Failed {
                    before: None,
                    reason: why.to_string(),
                }
            }
        };
        // While deleting, no new health check of this engine starts, and the ones already
        // running are named to the live-stream guard (see `activity::ProbePorts`): the engine's
        // port arms it, no delete while a client is connected to it inside the container.
        let _pause = matches!(mode, Mode::Clear { .. }).then(|| self.inner.probes.pause(id));
        let own = self.inner.probes.recent_ports();
        match &self.inner.reach {
            Reach::Cache => {}
            #[cfg(test)]
            Reach::Fake(f) => return f.run(id, mode).await,
            #[cfg(test)]
            Reach::FakeWalk(_) => {}
        }
        if self.inner.method == CacheMethod::Auto {
            match self.run_on_host(e, &path, mode, own.clone()).await {
                Ok(outcome) => {
                    self.inner.metrics.count_cache_access(CacheAccess::Host);
                    return outcome;
                }
                Err(host::Unavailable(why)) => logging::host_fallback(
                    &self.inner.fallback_said,
                    id,
                    "reach this engine's cache",
                    &why,
                ),
            }
        }
        let argv = cache::exec::guarded_argv(&path, mode, e.runtime.container_port, &own);
        let mut exec_id = None;
        let r = self
            .inner
            .docker
            .exec(id, &argv, self.inner.exec_timeout, |x| {
                exec_id = Some(x.to_string())
            })
            .await;
        self.inner.metrics.count_cache_access(CacheAccess::Exec);
        match r {
            Ok(out) => cache::exec::parse(out.exit_code, &out.stdout, &out.stderr),
            Err(err) => {
                if let (DockerError::ExecTimeout { .. }, Some(x)) = (&err, exec_id) {
                    self.inner
                        .hung_execs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), x);
                }
                Outcome::Failed {
                    before: None,
                    reason: err.to_string(),
                }
            }
        }
    }

    /// The host path (`cache::host`) off the async threads, bounded by the same deadline as an
    /// exec. `Unavailable` means nothing was done and the exec should run instead.
    async fn run_on_host(
        &self,
        e: &EngineState,
        path: &str,
        mode: Mode,
        own: Vec<u16>,
    ) -> Result<Outcome, host::Unavailable> {
        let cancel = Arc::new(AtomicBool::new(false));
        let work = self.host_walk(e, path, mode, own, cancel.clone());
        // Past the deadline the walk is told to stop: nothing is deleted after the janitor
        // has given up on it (its re-check and its record would be stale).
        // (Also when this future itself is dropped, at shutdown.)
        let _cancel_on_drop = SetOnDrop(cancel);
        match self.inner.walks.run(&e.engine.container_id, work).await {
            Call::Done(r) => r,
            Call::Panicked(why) => Ok(Outcome::Failed {
                before: None,
                reason: format!("cache walk failed: {why}"),
            }),
            // `previous_exec_hung` refused the engine if an earlier walk was still stuck, and
            // `inflight` lets one cleanup per engine run: this one timed out now.
            Call::Unavailable => Ok(Outcome::Failed {
                before: None,
                reason: format!(
                    "the cache walk did not finish within {:?} (filesystem not answering?)",
                    self.inner.exec_timeout
                ),
            }),
        }
    }

    /// The blocking host walk of one engine's cache, told to stop once `stop` is set.
    fn host_walk(
        &self,
        e: &EngineState,
        path: &str,
        mode: Mode,
        own: Vec<u16>,
        stop: Arc<AtomicBool>,
    ) -> Box<dyn FnOnce() -> Result<Outcome, host::Unavailable> + Send> {
        #[cfg(test)]
        if let Reach::FakeWalk(walk) = &self.inner.reach {
            let walk = walk.clone();
            let id = e.engine.container_id.clone();
            return Box::new(move || Ok(walk.run(&id, mode, &stop)));
        }
        let (pid, id, path, port) = (
            e.runtime.pid,
            e.engine.container_id.clone(),
            path.to_string(),
            e.runtime.container_port,
        );
        Box::new(move || {
            let t = host::Target {
                pid,
                container_id: &id,
                cache_path: &path,
                engine_port: port,
                own_ports: &own,
                cancel: &stop,
            };
            host::run(&t, mode)
        })
    }

    /// Whether earlier timed-out work still runs for this engine: its host walk not returned,
    /// or its exec still running in the container.
    async fn previous_exec_hung(&self, id: &str) -> bool {
        if self.inner.walks.is_stuck(id) {
            return true;
        }
        let exec = self
            .inner
            .hung_execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        let Some(exec) = exec else {
            return false;
        };
        let running = matches!(self.inner.docker.exec_running(&exec).await, Ok(true));
        if !running {
            // Finished, or unknown to Docker (container restarted): free to try again.
            self.inner
                .hung_execs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
        }
        running
    }

    /// One cleanup of one engine (docs/safety.md#cleanups): measure, re-check idle, delete, record.
    pub async fn cleanup(&self, id: &str, trigger: Trigger) -> Result<CleanupRecord, CleanupError> {
        let snap = self.inner.registry.snapshot();
        let e = snap
            .engines
            .iter()
            .find(|e| e.engine.container_id == id)
            .ok_or_else(|| CleanupError::UnknownEngine(id12(id).into()))?
            .clone();
        let short = e.id12().to_string();
        // While Docker is away the agent cannot see the container: it may be gone, stopped or
        // another one by now. Nothing runs against it until discovery has listed Docker again.
        if !snap.docker_up {
            return Err(CleanupError::DockerDown(short));
        }
        if !e.running {
            return Err(CleanupError::NotRunning(short));
        }
        if let Err(reason) = e.cache_to_clean() {
            return Err(CleanupError::InvalidCachePath(short, reason.to_string()));
        }
        if !e.is_idle() {
            return Err(CleanupError::HasStreams(short));
        }
        let _busy = self
            .try_acquire(id)
            .ok_or_else(|| CleanupError::Busy(short.clone()))?;
        if self.previous_exec_hung(id).await {
            return Err(CleanupError::PreviousExecHung(short));
        }
        let _permit = self
            .inner
            .limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CleanupError::Closed)?;
        let name = e.engine.container_name.clone();
        // The orchestrator's lines wait for the outcome: a cache with nothing in it leaves no info line.
        debug!(container_id = %short, trigger = %trigger, "cache cleanup starting");
        let started_at = Utc::now();
        let t0 = Instant::now();
        let mut record = CleanupRecord {
            container_id: id.to_string(),
            container_name: name.clone(),
            trigger,
            started_at,
            finished_at: started_at,
            duration_seconds: 0.0,
            size_before_bytes: None,
            freed_bytes: 0,
            remaining_bytes: None,
            verdict: Verdict::Cleaned,
        };
        // The idle re-check, inside the registry task, right before the one exec that
        // measures and deletes: no stream event can slip between the check and the exec.
        match self.inner.registry.begin_delete(id).await {
            Ok(()) => {}
            Err(RegistryError::HasStreams(_)) => {
                debug!(container_id = %short, "a stream started before the cleanup; nothing deleted");
                return Err(CleanupError::HasStreams(short));
            }
            Err(RegistryError::Closed) => return Err(CleanupError::Closed),
            Err(RegistryError::Busy(_, why)) => {
                return Err(CleanupError::Restarting(short, why));
            }
            Err(_) => return Err(CleanupError::NotRunning(short)),
        }
        let min_bytes = self.inner.min_bytes;
        match self.run_script(&e, Mode::Clear { min_bytes }).await {
            Outcome::Empty { before } => {
                debug!(container_id = %short, bytes = before, "cache empty; nothing to clean");
                record.verdict = Verdict::NothingToClean;
                record.size_before_bytes = Some(before);
                record.remaining_bytes = Some(before);
            }
            Outcome::Done(Sizes { before, after }) => {
                logging::cleanup_started(id, &name, trigger);
                logging::cache_size(id, &name, before);
                record.size_before_bytes = Some(before);
                match after {
                    Some(after) => {
                        logging::clearing(id, &name);
                        record.verdict = Verdict::Cleaned;
                        record.remaining_bytes = Some(after);
                        record.freed_bytes = before.saturating_sub(after);
                    }
                    None => {
                        debug!(container_id = %short, bytes = before, "cache below cleanup.min_bytes; not deleting");
                        record.verdict = Verdict::BelowMin;
                        record.remaining_bytes = Some(before);
                    }
                }
            }
            Outcome::Busy { before } => {
                debug!(container_id = %short, bytes = before,
                    "a client connected to the engine right before the delete; nothing deleted");
                // Not a cleanup: only a new current size, and the engine's cleaning mark cleared.
                record.finished_at = Utc::now();
                record.duration_seconds = t0.elapsed().as_secs_f64();
                record.verdict = Verdict::ClientAtDelete;
                record.size_before_bytes = Some(before);
                record.remaining_bytes = Some(before);
                let _ = self
                    .inner
                    .registry
                    .finish_cleanup(record, Some(before))
                    .await;
                return Err(CleanupError::HasStreams(short));
            }
            Outcome::Failed { before, reason } => {
                logging::cleanup_started(id, &name, trigger);
                if let Some(b) = before {
                    logging::cache_size(id, &name, b);
                }
                record.size_before_bytes = before;
                record.verdict = Verdict::Failed(format!("cache cleanup failed: {reason}"));
            }
        }
        let current = record.remaining_bytes;
        Ok(self.finish(record, current, t0).await)
    }

    /// Logs the outcome, observes the duration and hands the record to the registry, waiting
    /// until it has been committed so a caller that got the record can find it persisted.
    async fn finish(
        &self,
        mut record: CleanupRecord,
        current: Option<u64>,
        t0: Instant,
    ) -> CleanupRecord {
        record.finished_at = Utc::now();
        record.duration_seconds = t0.elapsed().as_secs_f64();
        let (id, name) = (&record.container_id, &record.container_name);
        match &record.verdict {
            Verdict::Cleaned => logging::cleared(
                id,
                name,
                record.trigger,
                record.freed_bytes,
                record.duration_seconds,
            ),
            Verdict::Failed(err) => {
                logging::cleanup_failed(id, name, record.trigger, err, record.duration_seconds)
            }
            // Measured, nothing deleted: not a cleanup, only a new current size.
            Verdict::BelowMin | Verdict::NothingToClean | Verdict::ClientAtDelete => {}
        }
        if record.verdict.is_cleanup() {
            self.inner
                .metrics
                .observe_cleanup(record.trigger, record.duration_seconds);
        }
        let _ = self
            .inner
            .registry
            .finish_cleanup(record.clone(), current)
            .await;
        record
    }

    /// The triggers: `idle_grace` after an engine's last stream ends, and the periodic sweep.
    /// A setting of "off" (`None`) disables its trigger.
    pub async fn run(
        self,
        mut events: broadcast::Receiver<RegistryEvent>,
        triggers: Triggers,
        mut shutdown: Shutdown,
    ) {
        let Triggers {
            sweep,
            idle_grace,
            measure,
        } = triggers;
        let mut timers: JoinSet<String> = JoinSet::new();
        let mut timer_of: HashMap<String, AbortHandle> = HashMap::new();
        let mut cleanups: JoinSet<()> = JoinSet::new();
        let mut sweeps: JoinSet<()> = JoinSet::new();
        let mut measures: JoinSet<()> = JoinSet::new();
        let every = |first: Duration, d: Duration| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + first, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut tick = sweep.map(|d| every(d, d));
        let mut measure_tick = measure.map(|d| every(d, d));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(RegistryEvent::BecameIdle { id, .. }) => {
                        if let Some(grace) = idle_grace {
                            if let Some(h) = timer_of.remove(&id) { h.abort(); }
                            let tid = id.clone();
                            let h = timers.spawn(async move {
                                tokio::time::sleep(grace).await;
                                tid
                            });
                            timer_of.insert(id, h);
                        }
                    }
                    Ok(RegistryEvent::BecameBusy { id }) | Ok(RegistryEvent::Removed { id }) => {
                        if let Some(h) = timer_of.remove(&id) { h.abort(); }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "janitor missed registry events; the sweep will catch up");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(done) = timers.join_next(), if !timers.is_empty() => {
                    // Detached from the timer: a cleanup that has started is never aborted
                    // half-way by a later event.
                    if let Ok(id) = done {
                        timer_of.remove(&id);
                        let j = self.clone();
                        cleanups.spawn(async move {
                            if let Err(e) = j.cleanup(&id, Trigger::StreamEnd).await {
                                debug!(container_id = %id12(&id), error = %e, "stream-end cleanup not run");
                            }
                        });
                    }
                }
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => {
                    if sweeps.is_empty() {
                        let j = self.clone();
                        sweeps.spawn(async move { j.sweep().await });
                    } else {
                        debug!("previous sweep still running; skipping this tick");
                    }
                }
                _ = async { measure_tick.as_mut().expect("guarded").tick().await }, if measure_tick.is_some() => {
                    if measures.is_empty() {
                        let j = self.clone();
                        measures.spawn(async move { j.measure_all().await });
                    }
                }
                Some(_) = sweeps.join_next(), if !sweeps.is_empty() => {}
                Some(_) = measures.join_next(), if !measures.is_empty() => {}
                Some(_) = cleanups.join_next(), if !cleanups.is_empty() => {}
                _ = shutdown.recv() => break,
            }
        }
        timers.abort_all();
        // A measurement changes nothing; it need not finish.
        measures.abort_all();
        // In-flight cleanups get a moment to finish and be recorded; `lib::run` bounds the
        // whole shutdown.
        let drain = async {
            while cleanups.join_next().await.is_some() {}
            while sweeps.join_next().await.is_some() {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
    }

    /// Measures every running engine's cache (docs/cache-paths.md#live-sizes), busy ones too: the
    /// script in measure mode only reads. Bounded by the same limit as cleanups; an engine whose
    /// previous exec hangs, or that is being cleaned, is skipped.
    pub async fn measure_all(&self) {
        let snap = self.inner.registry.snapshot();
        let mut set = JoinSet::new();
        for e in snap
            .engines
            .iter()
            .filter(|e| e.running && !e.cleaning && e.cache_to_clean().is_ok())
        {
            let j = self.clone();
            let e = e.clone();
            set.spawn(async move { j.measure(&e).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Measures one engine's cache read-only and records it as its current size.
    /// `None` when it could not be measured now: another exec of this engine is in flight (a
    /// cleanup reports the size itself), a previous one hangs, or the script failed.
    pub async fn measure(&self, e: &EngineState) -> Option<Measurement> {
        let id = &e.engine.container_id;
        // One exec per engine at a time, whatever it does.
        let _busy = self.try_acquire(id)?;
        if self.previous_exec_hung(id).await {
            return None;
        }
        let _permit = self.inner.limit.clone().acquire_owned().await.ok()?;
        let at = Utc::now();
        let (bytes, empty) = match self.run_script(e, Mode::Measure).await {
            Outcome::Empty { before } => (before, true),
            Outcome::Done(Sizes { before, .. }) | Outcome::Busy { before } => (before, false),
            Outcome::Failed { reason, .. } => {
                debug!(container_id = %e.id12(), error = %reason, "measuring the cache failed");
                return None;
            }
        };
        self.inner
            .registry
            .send(RegistryCmd::Measured {
                id: id.clone(),
                bytes,
                at,
                empty,
            })
            .await;
        Some(Measurement { bytes, empty })
    }

    /// Disk pressure with no idle engine left on a filesystem (`stat_path` reads it): deletes
    /// cache files of the busy `engines` that no process of their container holds open, oldest
    /// first, until the space available is back at `threshold` (`cache::busy`). From the host
    /// through the containers' roots, else by the fixed script in each container. One
    /// `pressure_busy` record for each engine that lost files; the orchestrator's per-engine lines are
    /// not logged (no cache was cleared), the caller says what the pass did in one line.
    pub async fn free_busy(
        &self,
        engines: Vec<EngineState>,
        stat_path: String,
        threshold: u64,
    ) -> BusyFreed {
        let started_at = Utc::now();
        let t0 = Instant::now();
        // Engines with another cache operation running are left for the next round.
        let mut guards = vec![];
        let mut engines: Vec<EngineState> = engines
            .into_iter()
            .filter(|e| match self.try_acquire(&e.engine.container_id) {
                Some(g) => {
                    guards.push(g);
                    true
                }
                None => false,
            })
            .collect();
        let enough = {
            let path = stat_path.clone();
            move || host::statvfs(&path).is_ok_and(|(avail, _)| avail >= threshold)
        };
        let mut freed: Vec<(String, String, u64, u64)> = vec![];
        let mut exec: Vec<EngineState> = vec![];
        if self.inner.method == CacheMethod::Auto {
            let cancel = Arc::new(AtomicBool::new(false));
            let _stop = SetOnDrop(cancel.clone());
            let wanted: Vec<(u32, String, String)> = engines
                .iter()
                .filter_map(|e| {
                    let cache = e.cache_to_clean().ok()?;
                    Some((
                        e.runtime.pid,
                        e.engine.container_id.clone(),
                        cache.path.clone(),
                    ))
                })
                .collect();
            let enough = enough.clone();
            let work = move || {
                let mut caches = vec![];
                let mut unavailable = vec![];
                for (pid, id, path) in &wanted {
                    match busy::Cache::open(*pid, id, path) {
                        Ok(Some(c)) => caches.push(c),
                        Ok(None) => {}
                        Err(why) => unavailable.push((id.clone(), why.0)),
                    }
                }
                let got = busy::free(&caches, busy::Cache::open_inodes, enough, &cancel);
                let got: Vec<(String, u64, u64)> = caches
                    .iter()
                    .zip(got)
                    .map(|(c, (n, b))| (c.container_id.clone(), n, b))
                    .collect();
                (got, unavailable)
            };
            match tokio::time::timeout(self.inner.exec_timeout, tokio::task::spawn_blocking(work))
                .await
            {
                Ok(Ok((got, unavailable))) => {
                    self.inner.metrics.count_cache_access(CacheAccess::Host);
                    for (id, n, b) in got {
                        if let Some(e) = engines.iter().find(|e| e.engine.container_id == id) {
                            freed.push((id, e.engine.container_name.clone(), n, b));
                        }
                    }
                    for (id, why) in unavailable {
                        logging::host_fallback(
                            &self.inner.fallback_said,
                            &id,
                            "reach this engine's cache",
                            &why,
                        );
                        exec.extend(
                            engines
                                .iter()
                                .find(|e| e.engine.container_id == id)
                                .cloned(),
                        );
                    }
                }
                _ => debug!("the host pass over busy engines' caches did not finish in time"),
            }
        } else {
            exec = std::mem::take(&mut engines);
        }
        for e in exec {
            let Ok((avail, _)) = ({
                let path = stat_path.clone();
                tokio::task::spawn_blocking(move || host::statvfs(&path))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            }) else {
                break;
            };
            if avail >= threshold {
                break;
            }
            let Ok(cache) = e.cache_to_clean() else {
                continue;
            };
            let argv = busy::exec_argv(&cache.path, threshold - avail);
            let id = &e.engine.container_id;
            let r = self
                .inner
                .docker
                .exec(id, &argv, self.inner.exec_timeout, |_| {})
                .await;
            self.inner.metrics.count_cache_access(CacheAccess::Exec);
            match r.ok().and_then(|o| busy::parse_exec(&o.stdout)) {
                Some((n, b)) => freed.push((id.clone(), e.engine.container_name.clone(), n, b)),
                None => debug!(container_id = %e.id12(), "the busy-files script failed"),
            }
        }
        let finished_at = Utc::now();
        let duration = t0.elapsed().as_secs_f64();
        let mut total = BusyFreed::default();
        for (id, name, n, b) in freed.into_iter().filter(|f| f.2 > 0) {
            total.files += n;
            total.bytes += b;
            total.engines += 1;
            let record = CleanupRecord {
                container_id: id,
                container_name: name,
                trigger: Trigger::PressureBusy,
                started_at,
                finished_at,
                duration_seconds: duration,
                size_before_bytes: None,
                freed_bytes: b,
                remaining_bytes: None,
                verdict: Verdict::Cleaned,
            };
            self.inner
                .metrics
                .observe_cleanup(Trigger::PressureBusy, duration);
            let _ = self.inner.registry.finish_cleanup(record, None).await;
        }
        drop(guards);
        total
    }

    /// `cleanup.min_bytes`: caches smaller than this are measured but never deleted.
    pub fn min_bytes(&self) -> u64 {
        self.inner.min_bytes
    }

    /// Whether a cleanup or measurement of this engine is running now.
    pub fn in_flight(&self, id: &str) -> bool {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// One periodic sweep over every idle engine not known to be empty, then `SweepDone`.
    pub async fn sweep(&self) {
        let snap = self.inner.registry.snapshot();
        let mut set = JoinSet::new();
        for e in snap
            .engines
            .iter()
            .filter(|e| e.running && e.is_idle() && !e.cleaning && e.cache_to_clean().is_ok())
            // Found empty with no stream since: nothing can have been written to it.
            .filter(|e| !e.known_empty())
        {
            let j = self.clone();
            let id = e.engine.container_id.clone();
            set.spawn(async move {
                match j.cleanup(&id, Trigger::Sweep).await {
                    Ok(_) | Err(CleanupError::Busy(_)) | Err(CleanupError::HasStreams(_)) => {}
                    Err(e) => debug!(container_id = %id12(&id), error = %e, "sweep skipped engine"),
                }
            });
        }
        while set.join_next().await.is_some() {}
        self.inner
            .registry
            .send(RegistryCmd::SweepDone(Utc::now()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    //! The registry and the janitor together, on a temp-dir store, in paused time, with the
    //! caches replaced by [`FakeCaches`]: every rule of when a cache is measured or cleaned,
    //! without Docker and without sleeping. What needs a real container (the host walk, the
    //! exec script, the live-stream guard inside it) is proven by tests/it/janitor.rs.

    use super::*;
    use crate::model::{CacheChoice, CacheMedium, CachePathSource, DiscoveredEngine, Runtime};
    use crate::registry::Registry;
    use crate::shutdown;
    use crate::store::Store;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    /// Caches in memory: a size per engine, every call recorded, how many run at once, and the
    /// engines whose next delete finds a client connected (the live-stream guard's answer).
    #[derive(Clone, Default)]
    pub(super) struct FakeCaches {
        sizes: Arc<Mutex<HashMap<String, u64>>>,
        calls: Arc<Mutex<Vec<(String, bool)>>>,
        running: Arc<AtomicUsize>,
        max_running: Arc<AtomicUsize>,
        busy_at_delete: Arc<Mutex<HashSet<String>>>,
        /// How long each call takes (virtual time).
        took: Duration,
        /// Held by a test to keep deletes from finishing.
        gate: Arc<tokio::sync::RwLock<()>>,
    }

    impl FakeCaches {
        pub(super) async fn run(&self, id: &str, mode: Mode) -> Outcome {
            let clear = matches!(mode, Mode::Clear { .. });
            self.calls.lock().unwrap().push((id.to_string(), clear));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.took).await;
            if clear {
                let _held = self.gate.read().await;
            }
            let before = self.sizes.lock().unwrap().get(id).copied().unwrap_or(0);
            self.running.fetch_sub(1, Ordering::SeqCst);
            if before == 0 {
                return Outcome::Empty { before: 0 };
            }
            match mode {
                Mode::Measure => Outcome::Done(Sizes {
                    before,
                    after: None,
                }),
                Mode::Clear { .. } if self.busy_at_delete.lock().unwrap().contains(id) => {
                    Outcome::Busy { before }
                }
                Mode::Clear { min_bytes } if before < min_bytes => Outcome::Done(Sizes {
                    before,
                    after: None,
                }),
                Mode::Clear { .. } => {
                    self.sizes.lock().unwrap().insert(id.to_string(), 0);
                    Outcome::Done(Sizes {
                        before,
                        after: Some(0),
                    })
                }
            }
        }

        fn set(&self, id: &str, bytes: u64) {
            self.sizes.lock().unwrap().insert(id.to_string(), bytes);
        }

        fn clears(&self, id: &str) -> usize {
            let calls = self.calls.lock().unwrap();
            calls.iter().filter(|(i, c)| i == id && *c).count()
        }

        fn calls_of(&self, id: &str) -> usize {
            let calls = self.calls.lock().unwrap();
            calls.iter().filter(|(i, _)| i == id).count()
        }
    }

    /// The host walk alone replaced: a walk of an engine in `hang` blocks until `release`,
    /// and every walk notes whether it had been told to stop by the time it returned.
    #[derive(Clone, Default)]
    pub(super) struct FakeWalk {
        hang: Arc<Mutex<HashSet<String>>>,
        released: Arc<(Mutex<bool>, std::sync::Condvar)>,
        returned: Arc<Mutex<Vec<(String, bool)>>>,
    }

    impl FakeWalk {
        pub(super) fn run(&self, id: &str, mode: Mode, stop: &AtomicBool) -> Outcome {
            if self.hang.lock().unwrap().contains(id) {
                let (done, cv) = &*self.released;
                let mut released = done.lock().unwrap();
                while !*released {
                    released = cv.wait(released).unwrap();
                }
            }
            let told = stop.load(Ordering::Acquire);
            self.returned.lock().unwrap().push((id.to_string(), told));
            let after = matches!(mode, Mode::Clear { .. }).then_some(0);
            Outcome::Done(Sizes {
                before: 1_000,
                after,
            })
        }

        fn release(&self) {
            let (done, cv) = &*self.released;
            *done.lock().unwrap() = true;
            cv.notify_all();
        }
    }

    struct Rig {
        registry: RegistryHandle,
        janitor: Janitor,
        fake: FakeCaches,
        store: Store,
        stop: shutdown::Trigger,
        _dir: tempfile::TempDir,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.stop.fire();
        }
    }

    fn id_of(n: usize) -> String {
        format!("{n:0>64}")
    }

    async fn rig(concurrency: usize, triggers: Triggers, fake: FakeCaches) -> Rig {
        rig_on(concurrency, triggers, fake, None, Duration::from_secs(60)).await
    }

    /// A rig whose janitor reaches caches through `walk` (the host path, with its deadline
    /// `exec_timeout`) instead of `fake`, when given.
    async fn rig_on(
        concurrency: usize,
        triggers: Triggers,
        fake: FakeCaches,
        walk: Option<FakeWalk>,
        exec_timeout: Duration,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb"), 100).unwrap();
        let (registry, parts) =
            Registry::new(store.clone(), HashSet::new(), Duration::from_secs(86_400)).unwrap();
        let (stop, shutdown) = shutdown::channel();
        tokio::spawn(registry.run(parts.rx, shutdown.clone()));
        let janitor = Janitor::new(
            parts.handle.clone(),
            DockerClient::new(None),
            JanitorConfig {
                exec_timeout,
                concurrency,
                min_bytes: 0,
                method: CacheMethod::Auto,
            },
            Arc::new(Metrics::new()),
        );
        let janitor = match walk {
            Some(w) => janitor.with_reach(Reach::FakeWalk(w)),
            None => janitor.with_reach(Reach::Fake(fake.clone())),
        };
        tokio::spawn(
            janitor
                .clone()
                .run(parts.events.subscribe(), triggers, shutdown),
        );
        parts.handle.send(RegistryCmd::DockerUp(true)).await;
        Rig {
            registry: parts.handle,
            janitor,
            fake,
            store,
            stop,
            _dir: dir,
        }
    }

    impl Rig {
        /// A running engine, idle, whose fake cache holds `bytes`.
        async fn engine(&self, n: usize, bytes: u64) -> String {
            let id = id_of(n);
            self.fake.set(&id, bytes);
            self.registry
                .send(RegistryCmd::Upsert(Box::new(DiscoveredEngine {
                    container_id: id.clone(),
                    container_name: format!("engine-{n}"),
                    image: "acestream/engine".into(),
                    labels: BTreeMap::new(),
                    host: "127.0.0.1".into(),
                    port: 6878,
                    runtime: Runtime {
                        pid: 4242,
                        container_port: 6878,
                        ..Runtime::default()
                    },
                    cache: CacheChoice {
                        path: "/cache".into(),
                        written: "/cache".into(),
                        source: CachePathSource::Config,
                        error: None,
                        medium: CacheMedium::Disk,
                    },
                    limits: Default::default(),
                })))
                .await;
            // A few rounds: on a multi-threaded runtime in real time the registry task may
            // not have run after one.
            for _ in 0..500 {
                self.settle().await;
                if self.find(&id).is_some_and(|e| e.running) {
                    break;
                }
            }
            assert!(self.state(&id).running, "engine {n} upserted");
            id
        }

        /// The probe's word: `clients` connections to the engine's port.
        async fn connections(&self, id: &str, clients: usize) {
            self.registry
                .send(RegistryCmd::Connections {
                    id: id.to_string(),
                    streams: (0..clients)
                        .map(|i| format!("conn:10.0.0.{i}:5000"))
                        .collect(),
                })
                .await;
            self.settle().await;
        }

        /// Lets the registry and janitor tasks run what is queued (time does not move while
        /// the runtime has work; a few yields and a zero sleep drain the channels).
        async fn settle(&self) {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }

        fn find(&self, id: &str) -> Option<EngineState> {
            self.registry
                .snapshot()
                .engines
                .iter()
                .find(|e| e.engine.container_id == id)
                .cloned()
        }

        fn state(&self, id: &str) -> EngineState {
            self.find(id).expect("engine in the snapshot")
        }
    }

    fn grace(d: Duration) -> Triggers {
        Triggers {
            idle_grace: Some(d),
            ..Triggers::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_end_cleans_once_after_the_idle_grace() {
        let r = rig(4, grace(Duration::from_secs(5)), FakeCaches::default()).await;
        let id = r.engine(1, 1_000).await;
        r.connections(&id, 1).await;
        r.connections(&id, 0).await;
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 0, "not before the grace has passed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 1, "once the grace has passed");
        let e = r.state(&id);
        assert_eq!(e.counters.get(Trigger::StreamEnd).cleanups, 1);
        assert_eq!(e.counters.get(Trigger::StreamEnd).freed_bytes, 1_000);
        assert_eq!(e.engine.cache_current_bytes, Some(0));
        // Nothing more happens by itself.
        tokio::time::sleep(Duration::from_secs(60)).await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 1, "one cleanup per stream end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_during_the_grace_cancels_the_cleanup() {
        let r = rig(4, grace(Duration::from_secs(5)), FakeCaches::default()).await;
        let id = r.engine(1, 1_000).await;
        r.connections(&id, 1).await;
        r.connections(&id, 0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.connections(&id, 1).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        r.settle().await;
        assert_eq!(
            r.fake.clears(&id),
            0,
            "the engine streamed again within the grace"
        );
        // The grace starts again from the next stream end.
        r.connections(&id, 0).await;
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 1);
    }

    /// In real time: a blocking walk keeps paused time from moving (tokio does not auto-advance
    /// while a `spawn_blocking` task runs), so its deadline would never come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_host_walk_holds_back_its_engine_only_until_it_returns() {
        let walk = FakeWalk::default();
        let deadline = Duration::from_millis(200);
        let r = rig_on(
            4,
            Triggers::default(),
            FakeCaches::default(),
            Some(walk.clone()),
            deadline,
        )
        .await;
        let (a, b) = (r.engine(1, 0).await, r.engine(2, 0).await);
        walk.hang.lock().unwrap().insert(a.clone());

        let rec = r.janitor.cleanup(&a, Trigger::Manual).await.unwrap();
        assert_eq!(
            rec.verdict,
            Verdict::Failed("cache cleanup failed: the cache walk did not finish within 200ms (filesystem not answering?)".into())
        );
        assert!(r.janitor.inner.walks.is_stuck(&a));
        // While that walk hangs, its engine gets no new one; another engine is cleaned.
        let err = r.janitor.cleanup(&a, Trigger::Manual).await.unwrap_err();
        assert_eq!(err, CleanupError::PreviousExecHung(id12(&a).into()));
        let rec = r.janitor.cleanup(&b, Trigger::Manual).await.unwrap();
        assert_eq!(rec.verdict, Verdict::Cleaned, "{rec:?}");
        assert_eq!(rec.freed_bytes, 1_000);

        // The hung walk returns: it had been told to stop (nothing deleted after the janitor
        // gave up on it), and the engine can be cleaned again.
        walk.hang.lock().unwrap().clear();
        walk.release();
        for _ in 0..500 {
            if !r.janitor.inner.walks.is_stuck(&a) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!r.janitor.inner.walks.is_stuck(&a));
        let returned = walk.returned.lock().unwrap().clone();
        assert_eq!(returned, vec![(b.clone(), false), (a.clone(), true)]);
        let rec = r.janitor.cleanup(&a, Trigger::Manual).await.unwrap();
        assert_eq!(rec.verdict, Verdict::Cleaned, "{rec:?}");
        assert_eq!(rec.freed_bytes, 1_000);
        let counts = || {
            let c = r.state(&a).counters.get(Trigger::Manual);
            (c.cleanups, c.failures)
        };
        for _ in 0..500 {
            if counts() == (1, 1) {
                break;
            }
            r.settle().await;
        }
        assert_eq!(counts(), (1, 1), "one cleanup, one failure (the hung walk)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_engine_is_refused_before_anything_runs() {
        let r = rig(4, Triggers::default(), FakeCaches::default()).await;
        let id = r.engine(1, 1_000).await;
        r.connections(&id, 1).await;
        let err = r.janitor.cleanup(&id, Trigger::Manual).await.unwrap_err();
        assert_eq!(err, CleanupError::HasStreams(id12(&id).into()));
        assert_eq!(r.fake.calls_of(&id), 0, "not even measured");
        let err = r
            .janitor
            .cleanup(&id_of(9), Trigger::Manual)
            .await
            .unwrap_err();
        assert_eq!(err, CleanupError::UnknownEngine(id12(&id_of(9)).into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_at_the_delete_leaves_the_cache_and_counts_nothing() {
        let r = rig(4, Triggers::default(), FakeCaches::default()).await;
        let id = r.engine(1, 5_000).await;
        r.fake.busy_at_delete.lock().unwrap().insert(id.clone());
        let err = r.janitor.cleanup(&id, Trigger::Manual).await.unwrap_err();
        assert_eq!(err, CleanupError::HasStreams(id12(&id).into()));
        r.settle().await;
        let e = r.state(&id);
        assert_eq!(e.counters.get(Trigger::Manual).cleanups, 0);
        assert_eq!(e.counters.get(Trigger::Manual).failures, 0);
        assert_eq!(
            e.engine.cache_current_bytes,
            Some(5_000),
            "measured, not deleted"
        );
        assert!(!e.cleaning, "the cleaning mark is cleared");
        assert!(r.store.history(&id, 10).unwrap().is_empty(), "no record");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_starts_during_the_delete_makes_the_engine_busy_after_it() {
        let fake = FakeCaches::default();
        let r = rig(4, Triggers::default(), fake.clone()).await;
        let id = r.engine(1, 5_000).await;
        let held = fake.gate.write().await;
        let j = r.janitor.clone();
        let cid = id.clone();
        let cleanup = tokio::spawn(async move { j.cleanup(&cid, Trigger::Manual).await });
        r.settle().await;
        assert!(r.state(&id).cleaning, "past the re-check, deleting");
        assert!(r.janitor.in_flight(&id));
        // A second cleanup of the same engine meanwhile: one at a time.
        let err = r.janitor.cleanup(&id, Trigger::Manual).await.unwrap_err();
        assert_eq!(err, CleanupError::Busy(id12(&id).into()));
        r.connections(&id, 1).await;
        drop(held);
        let record = cleanup.await.unwrap().unwrap();
        assert_eq!(record.freed_bytes, 5_000);
        r.settle().await;
        let e = r.state(&id);
        assert!(
            !e.cleaning && !e.is_idle(),
            "busy once the delete is over: {e:?}"
        );
        assert!(!r.janitor.in_flight(&id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_runs_at_most_concurrency_cleanups_at_once() {
        let fake = FakeCaches {
            took: Duration::from_secs(1),
            ..FakeCaches::default()
        };
        let r = rig(2, Triggers::default(), fake).await;
        let mut ids = vec![];
        for n in 0..6 {
            ids.push(r.engine(n, 100 + n as u64).await);
        }
        let busy = r.engine(7, 1_000).await;
        r.connections(&busy, 1).await;
        let t0 = tokio::time::Instant::now();
        r.janitor.sweep().await;
        // Six cleanups of 1 s (virtual), two at a time.
        assert_eq!(r.fake.max_running.load(Ordering::SeqCst), 2);
        assert_eq!(t0.elapsed().as_secs(), 3);
        r.settle().await;
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(r.fake.clears(id), 1, "engine {n}");
            assert_eq!(
                r.state(id).counters.get(Trigger::Sweep).freed_bytes,
                100 + n as u64
            );
        }
        assert_eq!(r.fake.calls_of(&busy), 0, "the busy engine is not swept");
        assert!(
            r.registry.snapshot().last_sweep.is_some(),
            "SweepDone recorded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_cache_is_no_cleanup_and_later_sweeps_skip_it() {
        let r = rig(4, Triggers::default(), FakeCaches::default()).await;
        let id = r.engine(1, 0).await;
        r.janitor.sweep().await;
        r.settle().await;
        assert_eq!(r.fake.calls_of(&id), 1);
        let e = r.state(&id);
        assert_eq!(
            e.counters.get(Trigger::Sweep).cleanups,
            0,
            "nothing to clean"
        );
        assert!(e.known_empty());
        assert!(r.store.history(&id, 10).unwrap().is_empty(), "no record");
        r.janitor.sweep().await;
        r.settle().await;
        assert_eq!(r.fake.calls_of(&id), 1, "known empty: not looked at again");
        // A stream since: it may have written, so the next sweep looks.
        r.connections(&id, 1).await;
        r.connections(&id, 0).await;
        r.fake.set(&id, 300);
        r.janitor.sweep().await;
        r.settle().await;
        assert_eq!(r.fake.clears(&id), 2);
        assert_eq!(r.state(&id).counters.get(Trigger::Sweep).freed_bytes, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_in_the_store_when_the_cleanup_returns() {
        let r = rig(4, Triggers::default(), FakeCaches::default()).await;
        let id = r.engine(1, 2_048).await;
        let record = r.janitor.cleanup(&id, Trigger::Manual).await.unwrap();
        // No settling: the answer itself waited for the commit.
        let stored = r.store.history(&id, 10).unwrap();
        assert_eq!(stored, vec![record.clone()]);
        assert_eq!(record.freed_bytes, 2_048);
        assert_eq!(record.verdict, Verdict::Cleaned);
    }

    #[tokio::test(start_paused = true)]
    async fn measuring_reads_every_running_engine_busy_ones_too() {
        let r = rig(4, Triggers::default(), FakeCaches::default()).await;
        let idle = r.engine(1, 700).await;
        let busy = r.engine(2, 900).await;
        r.connections(&busy, 1).await;
        r.janitor.measure_all().await;
        r.settle().await;
        assert_eq!(r.state(&idle).engine.cache_current_bytes, Some(700));
        assert_eq!(r.state(&busy).engine.cache_current_bytes, Some(900));
        assert_eq!(
            r.fake.clears(&idle) + r.fake.clears(&busy),
            0,
            "nothing deleted"
        );
    }
}
