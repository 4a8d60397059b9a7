//! Prometheus exposition for `/metrics` (README "Metrics", docs/architecture.md#metrics), text
//! format 0.0.4.
//!
//! Owns the process-wide instruments, the cleanup-duration histogram and the cache-access
//! counter, in a `prometheus::Registry`. Everything else (per-engine gauges and counters, agent state) is
//! built from a `Snapshot` at render time by `SnapshotCollector`, a `prometheus::core::Collector`
//! over it, as node_exporter builds const metrics inside `Update`: a gone container drops out on
//! its own, and a moment that never happened is simply not emitted (absent, never 0).
//! Per-engine counters are the store's `EngineState.counters`, so they survive restarts.
//!
//! Must not read Docker, the store or the clock: the output is a function of the snapshot,
//! the histogram and the version string only, which is what makes the golden file
//! (`tests/fixtures/metrics.prom`) possible.
//!
//! With `prometheus` built without default features, `prometheus::proto` is the crate's plain
//! Rust model (no protobuf). The collector only uses the accessors that model shares with the
//! protobuf one (`set_name`, `set_field_type`, `Metric::from_label`, `set_gauge`, ...).

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::sync::Notify;

use crate::model::{
    Counters, EngineState, Filesystem, HealTrigger, HealthStatus, Snapshot, Timestamp, Trigger,
};

/// Labels every per-engine series starts with (`container_id` is the 12-char prefix, as the
/// README's "Metrics" says).
const ENGINE: [&str; 2] = ["container_name", "container_id"];

/// One family the snapshot collector emits. `labels` are in the order values are given to
/// `series` and in which they appear on the line.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Family {
    Family {
        name,
        help,
        kind: MetricType::GAUGE,
        labels,
    }
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind: MetricType::COUNTER,
        labels,
    }
}

const ENGINE_INFO: Family = gauge(
    "acestream_engine_info",
    "AceStream engine container known to the agent; always 1, the labels carry its address, image and engine version (empty until read).",
    &["container_name", "container_id", "host", "port", "image", "version"],
);
const ENGINE_HEALTHY: Family = gauge(
    "acestream_engine_healthy",
    "1 if the engine's last health check succeeded, 0 if it failed; absent while never checked.",
    &ENGINE,
);
const ENGINE_ACTIVE_STREAMS: Family = gauge(
    "acestream_engine_active_streams",
    "Streams the engine is serving now, from stream events and the connection probe.",
    &ENGINE,
);
const ENGINE_CACHE_CURRENT_BYTES: Family = gauge(
    "acestream_engine_cache_current_bytes",
    "Size of the engine's cache directory at the latest measurement.",
    &ENGINE,
);
const ENGINE_CACHE_SIZE_BYTES: Family = gauge(
    "acestream_engine_cache_size_bytes",
    "Size of the engine's cache directory measured before its last cleanup.",
    &ENGINE,
);
const ENGINE_LAST_CACHE_CLEANUP: Family = gauge(
    "acestream_engine_last_cache_cleanup_timestamp_seconds",
    "Unix time of the engine's last cache cleanup; absent if never cleaned.",
    &ENGINE,
);
const ENGINE_LAST_STREAM_USAGE: Family = gauge(
    "acestream_engine_last_stream_usage_timestamp_seconds",
    "Unix time the engine last had at least one stream; absent if never used.",
    &ENGINE,
);
const ENGINE_LAST_HEALTH_CHECK: Family = gauge(
    "acestream_engine_last_health_check_timestamp_seconds",
    "Unix time of the engine's last health check; absent if never checked.",
    &ENGINE,
);
const CLEANUPS_TOTAL: Family = counter(
    "acestream_cache_cleanups_total",
    "Successful cache cleanups of the engine, by trigger.",
    &["container_name", "container_id", "trigger"],
);
const CLEANUP_FAILURES_TOTAL: Family = counter(
    "acestream_cache_cleanup_failures_total",
    "Failed cache cleanups of the engine, by trigger.",
    &["container_name", "container_id", "trigger"],
);
const FREED_BYTES_TOTAL: Family = counter(
    "acestream_cache_freed_bytes_total",
    "Bytes freed by cache cleanups of the engine, by trigger.",
    &["container_name", "container_id", "trigger"],
);
const RESTARTS_TOTAL: Family = counter(
    "acestream_engine_restarts_total",
    "Restarts of the engine's container by the agent (heal), by trigger: unhealthy, stalled, manual.",
    &["container_name", "container_id", "trigger"],
);
const ENGINE_LAST_RESTART: Family = gauge(
    "acestream_engine_last_restart_timestamp_seconds",
    "Unix time the agent last restarted the engine; absent if never.",
    &ENGINE,
);
const ENGINE_QUARANTINED: Family = gauge(
    "acestream_engine_quarantined",
    "1 if heal gave up on the engine (restarted heal.max_restarts times within heal.window and still stuck), else 0.",
    &ENGINE,
);
const ENGINE_PEERS: Family = gauge(
    "acestream_engine_peers",
    "Peers of the engine's started streams, summed, as the engine last said; absent while no stream of it has statistics.",
    &ENGINE,
);
const ENGINE_DOWNLOAD_SPEED: Family = gauge(
    "acestream_engine_download_speed_bytes",
    "Download speed of the engine's started streams, summed, in bytes per second; absent while no stream of it has statistics.",
    &ENGINE,
);
const ENGINE_UPLOAD_SPEED: Family = gauge(
    "acestream_engine_upload_speed_bytes",
    "Upload speed of the engine's started streams, summed, in bytes per second; absent while no stream of it has statistics.",
    &ENGINE,
);
const ENGINE_STALLED_STREAMS: Family = gauge(
    "acestream_engine_stalled_streams",
    "Started streams of the engine whose every answer for streams.stall_after said no peers and no download (or that got no answer).",
    &ENGINE,
);
const ENGINE_CACHE_LIMIT: Family = gauge(
    "acestream_engine_cache_limit_bytes",
    "The engine's own cache limit (its streams' disk_cache_stats, else its command line); absent when neither says.",
    &ENGINE,
);
const ENGINE_LOG_BYTES: Family = gauge(
    "acestream_engine_log_bytes",
    "Size of Docker's json-file log of the engine's container, rotated files included; rotation=\"false\" when its log config sets no max-size.",
    &["container_name", "container_id", "rotation"],
);
const AGENT_DOCKER_UP: Family = gauge(
    "acestream_agent_docker_up",
    "1 if the agent is connected to the Docker API, 0 while it is unreachable (engines shown are the last known).",
    &[],
);
const AGENT_ENGINES: Family = gauge(
    "acestream_agent_engines",
    "Engine containers known to the agent.",
    &[],
);
const AGENT_BUILD_INFO: Family = gauge(
    "acestream_agent_build_info",
    "Build of the running acestream-agent; always 1, the version label carries it.",
    &["version"],
);
const AGENT_LAST_SWEEP: Family = gauge(
    "acestream_agent_last_sweep_timestamp_seconds",
    "Unix time of the last periodic cleanup sweep; absent if none has run.",
    &[],
);
// An addition to the core metric set, the pressure watcher's liveness as the sweep's is above
// (a filesystem that does not answer is skipped, so only a stuck watcher stops moving it).
const AGENT_LAST_PRESSURE_CHECK: Family = gauge(
    "acestream_agent_last_pressure_check_timestamp_seconds",
    "Unix time the disk-pressure watcher last finished reading every filesystem it watches; absent before its first round.",
    &[],
);
// An addition to the core metric set, so a failing store (disk full, write error) is alertable
// without scraping logs; `/engines` then serves state that a restart would lose.
const AGENT_STORE_UP: Family = gauge(
    "acestream_agent_store_up",
    "1 if the agent's last store commit succeeded, 0 after a store error until the next good commit.",
    &[],
);

/// Labels of the filesystem families: a disk is named by its host mountpoint; a tmpfs holding
/// a memory cache is one container's, named by its path inside that container, and its series
/// also carry the engine's `container_name` and `container_id`.
const FS: [&str; 2] = ["mountpoint", "medium"];

const FILESYSTEM_AVAIL: Family = gauge(
    "acestream_filesystem_avail_bytes",
    "Space available to unprivileged users on a filesystem holding engine caches (statvfs f_bavail), by mountpoint; medium=\"memory\" for an engine's tmpfs.",
    &FS,
);
const FILESYSTEM_SIZE: Family = gauge(
    "acestream_filesystem_size_bytes",
    "Size of a filesystem holding engine caches, by mountpoint; medium=\"memory\" for an engine's tmpfs.",
    &FS,
);
// An addition to the core metric set: a memory cache's container against its memory limit
// (docs/cache-paths.md#caches-in-memory), which a full tmpfs squeezes.
const ENGINE_MEMORY_USAGE: Family = gauge(
    "acestream_engine_memory_usage_bytes",
    "Memory used by the container of an engine whose cache is in memory, less the page cache the kernel can drop (as docker stats shows it); its tmpfs cache counts.",
    &ENGINE,
);
const ENGINE_MEMORY_LIMIT: Family = gauge(
    "acestream_engine_memory_limit_bytes",
    "Memory limit of the container of an engine whose cache is in memory; absent when it has none.",
    &ENGINE,
);
// An addition to the core metric set: the threshold beside the free space, so a dashboard can draw
// one against the other without knowing the config (a percentage becomes bytes per filesystem).
const FILESYSTEM_MIN_FREE: Family = gauge(
    "acestream_filesystem_min_free_bytes",
    "pressure.min_free of the filesystem in bytes: below this much available space its idle engines are cleaned; absent when pressure cleanup is off.",
    &FS,
);
const DISK_PRESSURE: Family = gauge(
    "acestream_disk_pressure",
    "1 during a pressure episode on the filesystem (available space fell below pressure.min_free, or for a memory cache its container reached pressure.memory_high of its limit, and it is not back yet), else 0.",
    &FS,
);

/// Every family `SnapshotCollector` emits, for `Collector::desc` and the tests.
const SNAPSHOT_FAMILIES: [&Family; 32] = [
    &ENGINE_INFO,
    &ENGINE_HEALTHY,
    &ENGINE_ACTIVE_STREAMS,
    &ENGINE_CACHE_CURRENT_BYTES,
    &ENGINE_CACHE_SIZE_BYTES,
    &ENGINE_LAST_CACHE_CLEANUP,
    &ENGINE_LAST_STREAM_USAGE,
    &ENGINE_LAST_HEALTH_CHECK,
    &ENGINE_MEMORY_USAGE,
    &ENGINE_MEMORY_LIMIT,
    &CLEANUPS_TOTAL,
    &CLEANUP_FAILURES_TOTAL,
    &FREED_BYTES_TOTAL,
    &RESTARTS_TOTAL,
    &ENGINE_LAST_RESTART,
    &ENGINE_QUARANTINED,
    &ENGINE_PEERS,
    &ENGINE_DOWNLOAD_SPEED,
    &ENGINE_UPLOAD_SPEED,
    &ENGINE_STALLED_STREAMS,
    &ENGINE_CACHE_LIMIT,
    &ENGINE_LOG_BYTES,
    &AGENT_DOCKER_UP,
    &AGENT_ENGINES,
    &AGENT_BUILD_INFO,
    &AGENT_LAST_SWEEP,
    &AGENT_LAST_PRESSURE_CHECK,
    &AGENT_STORE_UP,
    &FILESYSTEM_AVAIL,
    &FILESYSTEM_SIZE,
    &FILESYSTEM_MIN_FREE,
    &DISK_PRESSURE,
];

const CLEANUP_DURATION_NAME: &str = "acestream_cache_cleanup_duration_seconds";
const CLEANUP_DURATION_HELP: &str =
    "Time taken by cache cleanups (measure and delete), by trigger, successful or not.";
/// A cleanup of an empty cache is one exec (~10 ms); a large one on a slow disk can take
/// minutes, up to `cleanup.exec_timeout`.
const CLEANUP_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

const CACHE_OPERATIONS_NAME: &str = "acestream_agent_cache_operations_total";
const CACHE_OPERATIONS_HELP: &str = "Cache measurements and cleanups by how the agent reached the \
     cache: host (through the container's root in /proc, no Docker call) or exec (one docker \
     exec each, which costs dockerd CPU).";

const CONNECTION_PROBES_NAME: &str = "acestream_agent_connection_probes_total";
const CONNECTION_PROBES_HELP: &str = "Connection probes of engines by how the agent read the \
     engine's connection table: host (its /proc/<pid>/net, no Docker call) or exec (one docker \
     exec each).";

const CLEANUP_INTERVAL_NAME: &str = "acestream_agent_cleanup_interval_seconds";
const CLEANUP_INTERVAL_HELP: &str = "cleanup.interval: seconds between periodic sweeps of idle \
     engines; absent when the periodic sweep is off.";

const PRESSURE_INTERVAL_NAME: &str = "acestream_agent_pressure_interval_seconds";
const PRESSURE_INTERVAL_HELP: &str =
    "pressure.interval: seconds between rounds of the disk-pressure watcher.";

/// How one cache measurement or cleanup reached the cache (`cleanup.method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheAccess {
    Host,
    Exec,
}

impl CacheAccess {
    pub const ALL: [CacheAccess; 2] = [CacheAccess::Host, CacheAccess::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheAccess::Host => "host",
            CacheAccess::Exec => "exec",
        }
    }
}

/// The agent's metrics: the process-wide instruments plus the descriptors of the families
/// built from snapshots. Cheap to clone (instruments and registry are shared), `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    cleanup_duration: HistogramVec,
    cache_operations: IntCounterVec,
    connection_probes: IntCounterVec,
    /// Raised when an instrument changes on its own (not with a snapshot), so the views
    /// render again: a measurement that fails publishes no new snapshot, yet was counted.
    changed: Arc<Notify>,
    descs: Vec<Desc>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let cleanup_duration = HistogramVec::new(
            HistogramOpts::new(CLEANUP_DURATION_NAME, CLEANUP_DURATION_HELP)
                .buckets(CLEANUP_DURATION_BUCKETS.to_vec()),
            &["trigger"],
        )
        .expect("constant histogram definition is valid (tested)");
        // Every trigger from the start, so rate() and histogram_quantile() see the first one.
        for trigger in Trigger::ALL {
            cleanup_duration.with_label_values(&[trigger.as_str()]);
        }
        let cache_operations = IntCounterVec::new(
            Opts::new(CACHE_OPERATIONS_NAME, CACHE_OPERATIONS_HELP),
            &["method"],
        )
        .expect("constant counter definition is valid (tested)");
        for method in CacheAccess::ALL {
            cache_operations.with_label_values(&[method.as_str()]);
        }
        let connection_probes = IntCounterVec::new(
            Opts::new(CONNECTION_PROBES_NAME, CONNECTION_PROBES_HELP),
            &["method"],
        )
        .expect("constant counter definition is valid (tested)");
        for method in CacheAccess::ALL {
            connection_probes.with_label_values(&[method.as_str()]);
        }
        let registry = Registry::new();
        registry
            .register(Box::new(cleanup_duration.clone()))
            .expect("a fresh registry holds no other collector");
        registry
            .register(Box::new(cache_operations.clone()))
            .expect("the instruments have different names");
        registry
            .register(Box::new(connection_probes.clone()))
            .expect("the instruments have different names");
        let descs = SNAPSHOT_FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.to_owned(),
                    f.help.to_owned(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .expect("constant family definitions are valid (tested)")
            })
            .collect();
        Metrics {
            registry,
            cleanup_duration,
            cache_operations,
            connection_probes,
            changed: Arc::new(Notify::new()),
            descs,
        }
    }

    /// Exports `cleanup.interval` (nothing when the sweep is off), so that an alert on stalled
    /// sweeps can scale with it and stays quiet on a host that never sweeps.
    pub fn with_sweep_interval(self, every: Option<std::time::Duration>) -> Metrics {
        match every {
            Some(every) => self.with_setting(CLEANUP_INTERVAL_NAME, CLEANUP_INTERVAL_HELP, every),
            None => self,
        }
    }

    /// Exports `pressure.interval`, so an alert on a stalled pressure watcher can scale with it
    /// (the watcher always runs: free space is read even with pressure cleanup off).
    pub fn with_pressure_interval(self, every: std::time::Duration) -> Metrics {
        self.with_setting(PRESSURE_INTERVAL_NAME, PRESSURE_INTERVAL_HELP, every)
    }

    /// A setting in seconds, as a gauge fixed at start-up.
    fn with_setting(self, name: &str, help: &str, value: std::time::Duration) -> Metrics {
        let g = Gauge::new(name, help).expect("constant gauge definition is valid (tested)");
        g.set(value.as_secs_f64());
        self.registry
            .register(Box::new(g))
            .expect("registered once, at start-up");
        self
    }

    /// Called once per cache measurement or cleanup that reached the cache, by the way it did.
    pub fn count_cache_access(&self, method: CacheAccess) {
        self.cache_operations
            .with_label_values(&[method.as_str()])
            .inc();
        self.changed.notify_one();
    }

    /// Called once per connection probe of an engine, by how it read the table. Not a reason
    /// to render again on its own (every engine, every `activity.interval`): it shows with the
    /// next rendering.
    pub fn count_probe(&self, method: CacheAccess) {
        self.connection_probes
            .with_label_values(&[method.as_str()])
            .inc();
    }

    /// Cache operations so far: (host, exec).
    pub fn cache_operations(&self) -> (u64, u64) {
        let c = |m: CacheAccess| self.cache_operations.with_label_values(&[m.as_str()]).get();
        (c(CacheAccess::Host), c(CacheAccess::Exec))
    }

    /// Connection probes so far: (host, exec).
    pub fn connection_probes(&self) -> (u64, u64) {
        let c = |m: CacheAccess| {
            self.connection_probes
                .with_label_values(&[m.as_str()])
                .get()
        };
        (c(CacheAccess::Host), c(CacheAccess::Exec))
    }

    /// Completes once an instrument has changed since the last call (changes coalesce).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Called once per finished cleanup (success or failure).
    pub fn observe_cleanup(&self, trigger: Trigger, seconds: f64) {
        // `max` also turns NaN into 0: one bad clock reading must not poison `_sum` for good.
        self.cleanup_duration
            .with_label_values(&[trigger.as_str()])
            .observe(seconds.max(0.0));
    }

    /// The whole exposition (text format 0.0.4) for this snapshot. Families are sorted by
    /// name; per-engine series keep the snapshot's order (by `container_name`).
    pub fn render(&self, snapshot: &Snapshot, agent_version: &str) -> String {
        let collector = SnapshotCollector {
            snapshot,
            agent_version,
            descs: &self.descs,
        };
        // Not registered in `self.registry`: its `gather` would re-sort series by label value
        // (putting `container_id` order over the snapshot's name order), and the collector
        // borrows a snapshot that changes on every render.
        let mut families = collector.collect();
        families.extend(self.registry.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));

        // ~2.5 KB per engine (20 series), ~8 KB of agent-wide families and histogram.
        let mut out = String::with_capacity(8 * 1024 + 2560 * snapshot.engines.len());
        // The encoder fails only on a family with no series or no name; `collect` drops the
        // former and the gather prunes its own, so this is unreachable. Serve what we have.
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "Rendering metrics failed");
        }
        out
    }
}

/// The families built from one snapshot, borrowed for the length of one render.
struct SnapshotCollector<'a> {
    snapshot: &'a Snapshot,
    agent_version: &'a str,
    descs: &'a [Desc],
}

impl Collector for SnapshotCollector<'_> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.snapshot;
        let engines = &s.engines;
        let mut out = Vec::with_capacity(SNAPSHOT_FAMILIES.len());

        out.push(family(
            &ENGINE_INFO,
            engines.iter().map(|e| {
                let en = &e.engine;
                let port = en.port.to_string();
                let version = en.version.as_deref().unwrap_or("");
                series(
                    &ENGINE_INFO,
                    &[
                        &en.container_name,
                        e.id12(),
                        &en.host,
                        &port,
                        &en.image,
                        version,
                    ],
                    1.0,
                )
            }),
        ));
        out.push(per_engine(&ENGINE_HEALTHY, engines, |e| {
            match e.engine.health_status {
                HealthStatus::Healthy => Some(1.0),
                HealthStatus::Unhealthy => Some(0.0),
                HealthStatus::Unknown => None,
            }
        }));
        out.push(per_engine(&ENGINE_ACTIVE_STREAMS, engines, |e| {
            Some(e.engine.streams.len() as f64)
        }));
        out.push(per_engine(&ENGINE_CACHE_CURRENT_BYTES, engines, |e| {
            e.engine.cache_current_bytes.map(|b| b as f64)
        }));
        out.push(per_engine(&ENGINE_CACHE_SIZE_BYTES, engines, |e| {
            e.engine.cache_size_bytes.map(|b| b as f64)
        }));
        out.push(per_engine(&ENGINE_LAST_CACHE_CLEANUP, engines, |e| {
            e.engine.last_cache_cleanup.map(unix_seconds)
        }));
        out.push(per_engine(&ENGINE_LAST_STREAM_USAGE, engines, |e| {
            e.engine.last_stream_usage.map(unix_seconds)
        }));
        out.push(per_engine(&ENGINE_LAST_HEALTH_CHECK, engines, |e| {
            e.engine.last_health_check.map(unix_seconds)
        }));
        out.push(per_engine(&ENGINE_MEMORY_USAGE, engines, |e| {
            e.memory.map(|m| m.usage_bytes as f64)
        }));
        out.push(per_engine(&ENGINE_MEMORY_LIMIT, engines, |e| {
            e.memory.and_then(|m| m.limit_bytes).map(|b| b as f64)
        }));

        out.push(per_trigger(&CLEANUPS_TOTAL, engines, |c| c.cleanups));
        out.push(per_trigger(&CLEANUP_FAILURES_TOTAL, engines, |c| {
            c.failures
        }));
        out.push(per_trigger(&FREED_BYTES_TOTAL, engines, |c| c.freed_bytes));
        out.push(family(
            &RESTARTS_TOTAL,
            engines.iter().flat_map(|e| {
                HealTrigger::ALL.into_iter().map(move |t| {
                    series(
                        &RESTARTS_TOTAL,
                        &[&e.engine.container_name, e.id12(), t.as_str()],
                        e.heal.restarts(t) as f64,
                    )
                })
            }),
        ));
        out.push(per_engine(&ENGINE_LAST_RESTART, engines, |e| {
            e.engine.last_restart.map(unix_seconds)
        }));
        out.push(per_engine(&ENGINE_QUARANTINED, engines, |e| {
            Some(flag(e.heal.quarantined.is_some()))
        }));
        out.push(per_engine(&ENGINE_PEERS, engines, |e| {
            e.engine.peers.map(|v| v as f64)
        }));
        out.push(per_engine(&ENGINE_DOWNLOAD_SPEED, engines, |e| {
            e.engine.speed_down_bytes.map(|v| v as f64)
        }));
        out.push(per_engine(&ENGINE_UPLOAD_SPEED, engines, |e| {
            e.engine.speed_up_bytes.map(|v| v as f64)
        }));
        out.push(per_engine(&ENGINE_STALLED_STREAMS, engines, |e| {
            Some(e.engine.stalled_streams as f64)
        }));
        out.push(per_engine(&ENGINE_CACHE_LIMIT, engines, |e| {
            e.engine.cache_limit_bytes.map(|v| v as f64)
        }));
        out.push(family(
            &ENGINE_LOG_BYTES,
            engines.iter().filter_map(|e| {
                let bytes = e.engine.log_bytes?;
                let rotation = if e.engine.log_rotation == Some(true) {
                    "true"
                } else {
                    "false"
                };
                Some(series(
                    &ENGINE_LOG_BYTES,
                    &[&e.engine.container_name, e.id12(), rotation],
                    bytes as f64,
                ))
            }),
        ));

        out.push(single(&AGENT_DOCKER_UP, Some(flag(s.docker_up))));
        out.push(single(&AGENT_ENGINES, Some(engines.len() as f64)));
        out.push(family(
            &AGENT_BUILD_INFO,
            [series(&AGENT_BUILD_INFO, &[self.agent_version], 1.0)],
        ));
        out.push(single(&AGENT_LAST_SWEEP, s.last_sweep.map(unix_seconds)));
        out.push(single(
            &AGENT_LAST_PRESSURE_CHECK,
            s.last_pressure_check.map(unix_seconds),
        ));
        out.push(single(&AGENT_STORE_UP, Some(flag(s.store_error.is_none()))));

        let fss = &s.filesystems;
        let per_fs = |f: &Family, value: &dyn Fn(&Filesystem) -> Option<f64>| {
            family(
                f,
                fss.iter().filter_map(|x| {
                    let v = value(x)?;
                    let medium = x.medium.as_str();
                    Some(match &x.container {
                        Some((id, name)) => labeled(
                            f,
                            &[
                                ("container_name", name),
                                ("container_id", crate::model::id12(id)),
                                ("mountpoint", &x.mountpoint),
                                ("medium", medium),
                            ],
                            v,
                        ),
                        None => series(f, &[&x.mountpoint, medium], v),
                    })
                }),
            )
        };
        out.push(per_fs(&FILESYSTEM_AVAIL, &|x| Some(x.avail_bytes as f64)));
        out.push(per_fs(&FILESYSTEM_SIZE, &|x| Some(x.size_bytes as f64)));
        out.push(per_fs(&FILESYSTEM_MIN_FREE, &|x| {
            x.min_free_bytes.map(|b| b as f64)
        }));
        out.push(per_fs(&DISK_PRESSURE, &|x| Some(flag(x.pressure))));

        // The encoder refuses a family without series (no engines, all health unknown, ...).
        out.retain(|f| !f.get_metric().is_empty());
        out
    }
}

fn family(f: &Family, metrics: impl IntoIterator<Item = proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.to_owned());
    mf.set_help(f.help.to_owned());
    mf.set_field_type(f.kind);
    mf.set_metric(metrics.into_iter().collect());
    mf
}

/// One sample of `f`; `values` pair up with `f.labels`.
fn series(f: &Family, values: &[&str], value: f64) -> proto::Metric {
    debug_assert_eq!(f.labels.len(), values.len(), "{}", f.name);
    let pairs: Vec<(&str, &str)> = f
        .labels
        .iter()
        .copied()
        .zip(values.iter().copied())
        .collect();
    labeled(f, &pairs, value)
}

/// One sample of `f` with these labels (a series may carry more than the family's own: a
/// memory cache's tmpfs names its engine).
fn labeled(f: &Family, pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let labels = pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    let mut m = proto::Metric::from_label(labels);
    if f.kind == MetricType::COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

/// A per-engine family; engines whose `value` is `None` get no series.
fn per_engine(
    f: &Family,
    engines: &[EngineState],
    value: impl Fn(&EngineState) -> Option<f64>,
) -> MetricFamily {
    family(
        f,
        engines
            .iter()
            .filter_map(|e| value(e).map(|v| series(f, &[&e.engine.container_name, e.id12()], v))),
    )
}

/// A per-engine counter with every trigger, zeros included, so `rate()` sees the first increment.
fn per_trigger(f: &Family, engines: &[EngineState], pick: fn(Counters) -> u64) -> MetricFamily {
    family(
        f,
        engines.iter().flat_map(|e| {
            Trigger::ALL.into_iter().map(move |t| {
                series(
                    f,
                    &[&e.engine.container_name, e.id12(), t.as_str()],
                    pick(e.counters.get(t)) as f64,
                )
            })
        }),
    )
}

/// An agent-wide family without labels; `None` leaves it out.
fn single(f: &Family, value: Option<f64>) -> MetricFamily {
    family(f, value.map(|v| series(f, &[], v)))
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Microsecond precision: exact in an f64 for the next few centuries, and the encoder then
/// prints `1759521047.522053` rather than a long binary fraction.
fn unix_seconds(t: Timestamp) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// A fixed snapshot for golden and view tests: no wall clock anywhere.
#[cfg(test)]
pub mod testing {
    use std::collections::BTreeMap;

    use chrono::DateTime;

    use crate::model::{
        CacheMedium, Counters, Engine, EngineState, Filesystem, HealthStatus, MemoryUse, Runtime,
        Snapshot, Timestamp, Trigger, TriggerCounters,
    };

    pub fn ts(secs: i64, micros: u32) -> Timestamp {
        DateTime::from_timestamp(secs, micros * 1000).expect("fixed timestamps are in range")
    }

    /// 2025-10-03T19:50:47Z, the moment every golden timestamp is relative to.
    pub const T0: i64 = 1_759_521_047;

    pub fn engine(id: &str, name: &str) -> EngineState {
        EngineState {
            engine: Engine {
                container_id: id.to_owned(),
                container_name: name.to_owned(),
                host: "agent-host.lan".to_owned(),
                port: 6878,
                streams: Vec::new(),
                health_status: HealthStatus::Healthy,
                last_health_check: Some(ts(T0 - 5, 0)),
                last_stream_usage: None,
                last_cache_cleanup: None,
                cache_size_bytes: None,
                image: "ghcr.io/krinkuto11/acestream-http-proxy:latest".to_owned(),
                labels: BTreeMap::new(),
                version: Some("3.2.11".to_owned()),
                first_seen: ts(T0 - 86_400, 0),
                last_seen: ts(T0, 0),
                cache_current_bytes: None,
                cache_measured_at: None,
                cleanups_total: 0,
                cleanup_failures_total: 0,
                cache_freed_bytes_total: 0,
                last_cleanup_error: None,
                cache_path: "/home/appuser/.ACEStream/.acestream_cache".to_owned(),
                cache_path_source: None,
                cache_medium: Default::default(),
                cache_mountpoint: Some("/var/lib/docker".to_owned()),
                restarts_total: 0,
                last_restart: None,
                unhealthy_since: None,
                heal_state: Default::default(),
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
            counters: TriggerCounters::default(),
            runtime: Runtime::default(),
            cache: Some(crate::model::CacheChoice {
                path: "/home/appuser/.ACEStream/.acestream_cache".to_owned(),
                written: "/home/appuser/.ACEStream/.acestream_cache".to_owned(),
                source: crate::model::CachePathSource::Home,
                error: None,
                medium: Default::default(),
            }),
            cleaning: false,
            memory: None,
            cache_empty_since: None,
            running: true,
            heal: Default::default(),
            streams_stalled_since: None,
        }
    }

    /// Engines: one cleaned (sweep and stream_end counters, one sweep failure), one never
    /// cleaned and busy (cache on tmpfs), one unhealthy and never measured, one never
    /// health-checked whose name needs every escape (`"`, `\`, newline) and is not ASCII.
    pub fn golden_snapshot() -> Snapshot {
        let mut cleaned = engine(
            "3f2a9c0d1e4b5a697887766554433221aabbccddeeff00112233445566778899",
            "acestream-1",
        );
        {
            let e = &mut cleaned.engine;
            e.last_stream_usage = Some(ts(T0 - 3_600, 250_000));
            e.last_cache_cleanup = Some(ts(T0 - 1_800, 522_053));
            e.cache_size_bytes = Some(734_003_200);
            e.cache_current_bytes = Some(4_096);
            e.cache_measured_at = Some(ts(T0 - 60, 0));
        }
        *cleaned.counters.get_mut(Trigger::Sweep) = Counters {
            cleanups: 3,
            failures: 1,
            freed_bytes: 1_610_612_736,
        };
        *cleaned.counters.get_mut(Trigger::StreamEnd) = Counters {
            cleanups: 2,
            failures: 0,
            freed_bytes: 734_003_200,
        };
        let t = cleaned.counters.total();
        cleaned.engine.cleanups_total = t.cleanups;
        cleaned.engine.cleanup_failures_total = t.failures;
        cleaned.engine.cache_freed_bytes_total = t.freed_bytes;

        let mut busy = engine(
            "7c1e5b2a90d8f4e3c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a190807060504",
            "acestream-2",
        );
        {
            let e = &mut busy.engine;
            e.port = 6879;
            e.streams = vec![
                "abc123|session-1".to_owned(),
                "conn:172.18.0.5:51234".to_owned(),
            ];
            e.last_stream_usage = Some(ts(T0, 0));
            e.cache_current_bytes = Some(268_435_456);
            e.cache_measured_at = Some(ts(T0 - 60, 0));
            e.cache_path = "/dev/shm/.ACEStream/.acestream_cache".to_owned();
            // Two streams the engine reports on, one of them stalled; its limit from a stream.
            e.peers = Some(12);
            e.speed_down_bytes = Some(1_572_864);
            e.speed_up_bytes = Some(204_800);
            e.stalled_streams = 1;
            e.cache_limit_bytes = Some(1_073_741_824);
            e.cache_limit_source = Some(crate::model::CacheLimitSource::Engine);
            e.live_cache_type = Some("memory".to_owned());
            e.log_bytes = Some(52_428_800);
            e.log_rotation = Some(true);
            e.cache_medium = CacheMedium::Memory;
            e.cache_mountpoint = Some("/dev/shm".to_owned());
        }
        busy.memory = Some(MemoryUse {
            usage_bytes: 301_989_888,
            limit_bytes: Some(536_870_912),
        });
        let busy_shm = Filesystem {
            mountpoint: "/dev/shm".to_owned(),
            medium: CacheMedium::Memory,
            container: Some((
                busy.engine.container_id.clone(),
                busy.engine.container_name.clone(),
            )),
            avail_bytes: 67_108_864,
            size_bytes: 536_870_912,
            min_free_bytes: Some(53_687_092),
            pressure: false,
        };

        let mut unhealthy = engine(
            "a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff",
            "acestream-3",
        );
        {
            let e = &mut unhealthy.engine;
            e.host = "172.18.0.7".to_owned();
            e.health_status = HealthStatus::Unhealthy;
            e.version = None;
            e.image = "acestream/engine:3.1.74".to_owned();
            e.cache_mountpoint = Some("/srv/acestream".to_owned());
            // Its log is not rotated and has grown large.
            e.log_bytes = Some(2_147_483_648);
            e.log_rotation = Some(false);
            // Restarted three times by heal and once by hand, then quarantined.
            e.unhealthy_since = Some(ts(T0 - 900, 0));
            e.last_restart = Some(ts(T0 - 1_200, 125_000));
            e.restarts_total = 4;
            e.heal_state = crate::model::HealState::Quarantined;
        }
        unhealthy.heal.restarts = [3, 0, 1];
        unhealthy.heal.quarantined = Some(ts(T0 - 600, 0));

        let mut odd = engine(
            "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
            "acestream-4 \"quoted\" back\\slash\nnext line ✓ ünï 日本",
        );
        {
            let e = &mut odd.engine;
            e.port = 6880;
            e.health_status = HealthStatus::Unknown;
            e.last_health_check = None;
            e.version = None;
        }

        Snapshot {
            engines: vec![cleaned, busy, unhealthy, odd],
            docker_up: true,
            store_error: None,
            last_sweep: Some(ts(T0 - 300, 0)),
            last_pressure_check: Some(ts(T0 - 4, 0)),
            // One filesystem in a pressure episode, one not, and the busy engine's tmpfs.
            filesystems: vec![
                busy_shm,
                Filesystem {
                    mountpoint: "/srv/acestream".to_owned(),
                    medium: CacheMedium::Disk,
                    container: None,
                    avail_bytes: 1_073_741_824,
                    size_bytes: 107_374_182_400,
                    min_free_bytes: Some(10_737_418_240),
                    pressure: true,
                },
                Filesystem {
                    mountpoint: "/var/lib/docker".to_owned(),
                    medium: CacheMedium::Disk,
                    container: None,
                    avail_bytes: 53_687_091_200,
                    size_bytes: 268_435_456_000,
                    min_free_bytes: Some(26_843_545_600),
                    pressure: false,
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::testing::{engine, golden_snapshot, T0};
    use super::*;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.prom");

    /// The golden rendering: the fixed snapshot plus a few histogram observations.
    fn golden_render() -> String {
        let m = Metrics::new()
            .with_sweep_interval(Some(std::time::Duration::from_secs(30)))
            .with_pressure_interval(std::time::Duration::from_secs(10));
        m.observe_cleanup(Trigger::Sweep, 0.375);
        m.observe_cleanup(Trigger::Sweep, 1.5);
        m.observe_cleanup(Trigger::StreamEnd, 0.03125);
        m.count_cache_access(CacheAccess::Host);
        m.count_cache_access(CacheAccess::Host);
        m.count_cache_access(CacheAccess::Exec);
        m.render(&golden_snapshot(), "0.0.0-golden")
    }

    /// Lines of `text` that are samples of exactly `name` (not `name_bucket`, ...).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    fn promtool_check(text: &str) -> (bool, String, String) {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "promtool is required by this test and could not be run ({e}); \
                 install it (Debian: apt-get install prometheus) and put it on PATH"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn golden_file_matches_rendering() {
        let rendered = golden_render();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            // Write-then-rename: the promtool test may be reading it in parallel.
            std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
            let tmp = format!("{GOLDEN}.tmp");
            std::fs::write(&tmp, &rendered).unwrap();
            std::fs::rename(&tmp, GOLDEN).unwrap();
        }
        let golden = std::fs::read_to_string(GOLDEN)
            .unwrap_or_else(|e| panic!("{GOLDEN}: {e}; run `UPDATE_GOLDEN=1 cargo test` once"));
        if golden != rendered {
            let diff: Vec<String> = golden
                .lines()
                .zip(rendered.lines())
                .enumerate()
                .filter(|(_, (g, r))| g != r)
                .take(5)
                .map(|(i, (g, r))| format!("line {}:\n  golden:   {g}\n  rendered: {r}", i + 1))
                .collect();
            panic!(
                "/metrics differs from {GOLDEN} ({} vs {} lines); if intended, rerun with \
                 UPDATE_GOLDEN=1\n{}",
                golden.lines().count(),
                rendered.lines().count(),
                diff.join("\n")
            );
        }
    }

    #[test]
    fn promtool_accepts_golden_file_and_fresh_renderings() {
        let golden = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("{GOLDEN}: {e}"));
        let empty = Metrics::new().render(&Snapshot::default(), "0.0.0-test");
        for (what, text) in [
            ("golden file", golden),
            ("golden rendering", golden_render()),
            ("empty snapshot", empty),
        ] {
            let (ok, stdout, stderr) = promtool_check(&text);
            assert!(
                ok && stdout.is_empty() && stderr.is_empty(),
                "promtool check metrics on {what}: success={ok}\nstdout: {stdout}\nstderr: {stderr}"
            );
        }
    }

    #[test]
    fn metrics_can_be_shared_across_tasks() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        send_sync_static::<Metrics>();
        // A clone observes into the same histogram.
        let m = Metrics::new();
        m.clone().observe_cleanup(Trigger::Pressure, 2.0);
        let out = m.render(&Snapshot::default(), "1.2.3");
        assert!(out
            .contains("acestream_cache_cleanup_duration_seconds_count{trigger=\"pressure\"} 1\n"));
    }

    #[tokio::test]
    async fn cache_access_is_counted_by_method_and_wakes_the_views() {
        let m = Metrics::new();
        let fresh = m.render(&Snapshot::default(), "1.2.3");
        // Both methods from the start, so rate() sees the first operation.
        assert!(fresh.contains("acestream_agent_cache_operations_total{method=\"host\"} 0\n"));
        assert!(fresh.contains("acestream_agent_cache_operations_total{method=\"exec\"} 0\n"));
        // Nothing changed yet: no wake-up pending.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), m.changed()).await;
        assert!(idle.is_err(), "woke up without a change");
        m.count_cache_access(CacheAccess::Exec);
        m.clone().count_cache_access(CacheAccess::Exec);
        m.count_cache_access(CacheAccess::Host);
        // Three changes, one wake-up (they coalesce), and the render has all three.
        tokio::time::timeout(std::time::Duration::from_secs(1), m.changed())
            .await
            .expect("a change wakes the views");
        let again = tokio::time::timeout(std::time::Duration::from_millis(20), m.changed()).await;
        assert!(again.is_err(), "changes did not coalesce");
        let out = m.render(&Snapshot::default(), "1.2.3");
        assert!(out.contains("acestream_agent_cache_operations_total{method=\"host\"} 1\n"));
        assert!(out.contains("acestream_agent_cache_operations_total{method=\"exec\"} 2\n"));
    }

    #[test]
    fn sweep_interval_is_exported_only_when_the_sweep_is_on() {
        let on = Metrics::new()
            .with_sweep_interval(Some(std::time::Duration::from_millis(90_500)))
            .render(&Snapshot::default(), "1.2.3");
        assert!(
            on.lines()
                .any(|l| l == "acestream_agent_cleanup_interval_seconds 90.5"),
            "{on}"
        );
        let off = Metrics::new()
            .with_sweep_interval(None)
            .render(&Snapshot::default(), "1.2.3");
        assert!(
            !off.contains("acestream_agent_cleanup_interval_seconds"),
            "{off}"
        );
    }

    #[test]
    fn pressure_interval_is_exported() {
        let out = Metrics::new()
            .with_pressure_interval(std::time::Duration::from_millis(2_500))
            .render(&Snapshot::default(), "1.2.3");
        assert!(
            out.lines()
                .any(|l| l == "acestream_agent_pressure_interval_seconds 2.5"),
            "{out}"
        );
    }

    #[test]
    fn family_definitions_are_valid_and_documented() {
        let valid_label = |l: &str| {
            l.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && l.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        };
        let mut names: Vec<&str> = SNAPSHOT_FAMILIES.iter().map(|f| f.name).collect();
        names.push(CLEANUP_DURATION_NAME);
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            SNAPSHOT_FAMILIES.len() + 1,
            "duplicate family name"
        );
        for f in SNAPSHOT_FAMILIES {
            assert!(f.name.starts_with("acestream_"), "{}", f.name);
            assert_eq!(
                f.name.ends_with("_total"),
                f.kind == MetricType::COUNTER,
                "{}: `_total` exactly on counters",
                f.name
            );
            assert!(f.labels.iter().all(|l| valid_label(l)), "{}", f.name);
            if f.name.starts_with("acestream_engine_") || f.name.starts_with("acestream_cache_") {
                assert_eq!(f.labels[..2], ENGINE, "{}: engine labels first", f.name);
            }
        }
        // `new` builds a `Desc` per family, which checks names and non-empty help.
        assert_eq!(Metrics::new().descs.len(), SNAPSHOT_FAMILIES.len());
    }

    #[test]
    fn engine_series_carry_name_and_12_char_id() {
        let out = Metrics::new().render(&golden_snapshot(), "1.2.3");
        assert_eq!(
            samples(&out, "acestream_engine_info")[0],
            "acestream_engine_info{container_name=\"acestream-1\",container_id=\"3f2a9c0d1e4b\",\
             host=\"agent-host.lan\",port=\"6878\",\
             image=\"ghcr.io/krinkuto11/acestream-http-proxy:latest\",version=\"3.2.11\"} 1"
        );
        // Unknown version is an empty label, not a missing series.
        assert!(samples(&out, "acestream_engine_info")[2]
            .contains("container_id=\"a0b1c2d3e4f5\",host=\"172.18.0.7\",port=\"6878\",image=\"acestream/engine:3.1.74\",version=\"\"} 1"));
        assert_eq!(samples(&out, "acestream_engine_info").len(), 4);
    }

    #[test]
    fn gauges_follow_the_engine_fields() {
        let out = Metrics::new().render(&golden_snapshot(), "1.2.3");
        let one = "{container_name=\"acestream-1\",container_id=\"3f2a9c0d1e4b\"}";
        let two = "{container_name=\"acestream-2\",container_id=\"7c1e5b2a90d8\"}";
        for line in [
            format!("acestream_engine_active_streams{one} 0"),
            format!("acestream_engine_active_streams{two} 2"),
            format!("acestream_engine_cache_current_bytes{one} 4096"),
            format!("acestream_engine_cache_current_bytes{two} 268435456"),
            format!("acestream_engine_cache_size_bytes{one} 734003200"),
            format!(
                "acestream_engine_last_cache_cleanup_timestamp_seconds{one} {}.522053",
                T0 - 1_800
            ),
            format!(
                "acestream_engine_last_stream_usage_timestamp_seconds{one} {}.25",
                T0 - 3_600
            ),
            format!("acestream_engine_last_health_check_timestamp_seconds{one} {}", T0 - 5),
            format!("acestream_engine_healthy{one} 1"),
            "acestream_engine_healthy{container_name=\"acestream-3\",container_id=\"a0b1c2d3e4f5\"} 0"
                .to_owned(),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn unknown_health_and_missing_moments_are_absent_not_zero() {
        let out = Metrics::new().render(&golden_snapshot(), "1.2.3");
        // acestream-4 was never checked: no healthy series, no health-check timestamp.
        let healthy = samples(&out, "acestream_engine_healthy");
        assert_eq!(healthy.len(), 3);
        assert!(healthy.iter().all(|l| !l.contains("ffeeddccbbaa")));
        let checked = samples(&out, "acestream_engine_last_health_check_timestamp_seconds");
        assert_eq!(checked.len(), 3);
        assert!(checked.iter().all(|l| !l.contains("ffeeddccbbaa")));
        // Only acestream-1 was ever cleaned and has a size from before a cleanup.
        for name in [
            "acestream_engine_last_cache_cleanup_timestamp_seconds",
            "acestream_engine_cache_size_bytes",
        ] {
            let s = samples(&out, name);
            assert_eq!(s.len(), 1, "{name}: {s:?}");
            assert!(s[0].contains("acestream-1"), "{name}: {s:?}");
        }
        // Never measured: acestream-3 and -4.
        assert_eq!(
            samples(&out, "acestream_engine_cache_current_bytes").len(),
            2
        );
        // Used: acestream-1 and -2.
        assert_eq!(
            samples(&out, "acestream_engine_last_stream_usage_timestamp_seconds").len(),
            2
        );
    }

    #[test]
    fn families_without_series_are_left_out() {
        let mut snap = Snapshot::default();
        let mut e = engine("0123456789abcdef", "solo");
        e.engine.health_status = HealthStatus::Unknown;
        e.engine.last_health_check = None;
        snap.engines.push(e);
        let out = Metrics::new().render(&snap, "1.2.3");
        for name in [
            "acestream_engine_healthy",
            "acestream_engine_last_health_check_timestamp_seconds",
            "acestream_agent_last_sweep_timestamp_seconds",
        ] {
            assert!(!out.contains(name), "{name} present in\n{out}");
        }
        assert!(out.contains("acestream_engine_info{container_name=\"solo\""));
    }

    #[test]
    fn counters_list_every_trigger_per_engine_with_zeros() {
        let out = Metrics::new().render(&golden_snapshot(), "1.2.3");
        for name in [
            "acestream_cache_cleanups_total",
            "acestream_cache_cleanup_failures_total",
            "acestream_cache_freed_bytes_total",
        ] {
            // Four engines, every trigger.
            assert_eq!(samples(&out, name).len(), 4 * Trigger::ALL.len(), "{name}");
        }
        let one = "container_name=\"acestream-1\",container_id=\"3f2a9c0d1e4b\"";
        for line in [
            format!("acestream_cache_cleanups_total{{{one},trigger=\"sweep\"}} 3"),
            format!("acestream_cache_cleanups_total{{{one},trigger=\"stream_end\"}} 2"),
            format!("acestream_cache_cleanups_total{{{one},trigger=\"manual\"}} 0"),
            format!("acestream_cache_cleanup_failures_total{{{one},trigger=\"sweep\"}} 1"),
            format!("acestream_cache_cleanup_failures_total{{{one},trigger=\"pressure\"}} 0"),
            format!("acestream_cache_freed_bytes_total{{{one},trigger=\"sweep\"}} 1610612736"),
            format!("acestream_cache_freed_bytes_total{{{one},trigger=\"stream_end\"}} 734003200"),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?}");
        }
        assert!(out.contains("# TYPE acestream_cache_cleanups_total counter\n"));
    }

    #[test]
    fn agent_wide_families() {
        let m = Metrics::new();
        let mut snap = golden_snapshot();
        let out = m.render(&snap, "1.2.3");
        for line in [
            "acestream_agent_docker_up 1",
            "acestream_agent_engines 4",
            "acestream_agent_build_info{version=\"1.2.3\"} 1",
            "acestream_agent_store_up 1",
            &format!("acestream_agent_last_sweep_timestamp_seconds {}", T0 - 300),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?}");
        }

        snap.docker_up = false;
        snap.store_error = Some("disk full".to_owned());
        snap.last_sweep = None;
        snap.engines.clear();
        let out = m.render(&snap, "1.2.3");
        assert!(out.lines().any(|l| l == "acestream_agent_docker_up 0"));
        assert!(out.lines().any(|l| l == "acestream_agent_store_up 0"));
        assert!(out.lines().any(|l| l == "acestream_agent_engines 0"));
        assert!(!out.contains("acestream_agent_last_sweep_timestamp_seconds"));
        assert!(!out.contains("acestream_engine_"));
        assert!(!out.contains("acestream_cache_cleanups_total"));
    }

    #[test]
    fn filesystem_families_follow_the_snapshot() {
        let mut snap = golden_snapshot();
        let out = Metrics::new().render(&snap, "1.2.3");
        for line in [
            "acestream_filesystem_avail_bytes{mountpoint=\"/srv/acestream\",medium=\"disk\"} 1073741824",
            "acestream_filesystem_size_bytes{mountpoint=\"/srv/acestream\",medium=\"disk\"} 107374182400",
            "acestream_filesystem_min_free_bytes{mountpoint=\"/srv/acestream\",medium=\"disk\"} 10737418240",
            "acestream_disk_pressure{mountpoint=\"/srv/acestream\",medium=\"disk\"} 1",
            "acestream_filesystem_avail_bytes{mountpoint=\"/var/lib/docker\",medium=\"disk\"} 53687091200",
            "acestream_disk_pressure{mountpoint=\"/var/lib/docker\",medium=\"disk\"} 0",
            // A memory cache's tmpfs names its engine, and its container's memory is beside it.
            "acestream_filesystem_avail_bytes{container_name=\"acestream-2\",container_id=\"7c1e5b2a90d8\",mountpoint=\"/dev/shm\",medium=\"memory\"} 67108864",
            "acestream_disk_pressure{container_name=\"acestream-2\",container_id=\"7c1e5b2a90d8\",mountpoint=\"/dev/shm\",medium=\"memory\"} 0",
            "acestream_engine_memory_usage_bytes{container_name=\"acestream-2\",container_id=\"7c1e5b2a90d8\"} 301989888",
            "acestream_engine_memory_limit_bytes{container_name=\"acestream-2\",container_id=\"7c1e5b2a90d8\"} 536870912",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?}");
        }
        assert_eq!(
            samples(&out, "acestream_engine_memory_usage_bytes").len(),
            1
        );
        // Pressure cleanup off: free space is still reported, the threshold is absent.
        for f in &mut snap.filesystems {
            f.min_free_bytes = None;
            f.pressure = false;
        }
        let out = Metrics::new().render(&snap, "1.2.3");
        assert!(!out.contains("acestream_filesystem_min_free_bytes"));
        assert_eq!(samples(&out, "acestream_disk_pressure").len(), 3);
        assert_eq!(samples(&out, "acestream_filesystem_size_bytes").len(), 3);
        // No filesystem known (no engines yet): no series at all.
        let out = Metrics::new().render(&Snapshot::default(), "1.2.3");
        assert!(!out.contains("acestream_filesystem_") && !out.contains("acestream_disk_pressure"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = Snapshot::default();
        let mut e = engine("0123456789abcdef", "a\"b\\c\nd ✓ 日本");
        e.engine.image = "img\\\"x\"".to_owned();
        snap.engines.push(e);
        let out = Metrics::new().render(&snap, "v\"1\n");
        assert!(
            out.contains(
                "acestream_engine_info{container_name=\"a\\\"b\\\\c\\nd ✓ 日本\",\
                 container_id=\"0123456789ab\",host=\"agent-host.lan\",port=\"6878\",\
                 image=\"img\\\\\\\"x\\\"\",version=\"3.2.11\"} 1\n"
            ),
            "{out}"
        );
        assert!(out.contains("acestream_agent_build_info{version=\"v\\\"1\\n\"} 1\n"));
        // No raw newline inside a sample: every line is a comment or starts a sample.
        assert!(out
            .lines()
            .all(|l| l.starts_with("# ") || l.starts_with("acestream_")));
        let (ok, stdout, stderr) = promtool_check(&out);
        assert!(
            ok && stdout.is_empty() && stderr.is_empty(),
            "{stdout}{stderr}"
        );
    }

    #[test]
    fn series_keep_snapshot_order_and_families_sort_by_name() {
        let mut snap = Snapshot::default();
        // Names sorted (as the registry publishes them), ids deliberately in reverse order.
        snap.engines.push(engine("ffff00000000aaaa", "alpha"));
        snap.engines.push(engine("0000ffffffffbbbb", "beta"));
        let out = Metrics::new().render(&snap, "1.2.3");
        let streams = samples(&out, "acestream_engine_active_streams");
        assert!(streams[0].contains("alpha") && streams[1].contains("beta"));

        let families: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = families.clone();
        sorted.sort_unstable();
        assert_eq!(families, sorted);
        // Every family has HELP right before TYPE.
        for f in &families {
            assert!(out.contains(&format!("# HELP {f} ")), "{f} without HELP");
        }
        // Rendering is a pure function of its inputs.
        assert_eq!(out, Metrics::new().render(&snap, "1.2.3"));
    }

    #[test]
    fn cleanup_histogram_has_every_trigger_and_counts_observations() {
        let m = Metrics::new();
        let out = m.render(&Snapshot::default(), "1.2.3");
        for t in Trigger::ALL {
            let line =
                format!("acestream_cache_cleanup_duration_seconds_count{{trigger=\"{t}\"}} 0");
            assert!(out.lines().any(|l| l == line), "missing {line:?}");
        }
        m.observe_cleanup(Trigger::Manual, 0.2);
        m.observe_cleanup(Trigger::Manual, 90.0);
        m.observe_cleanup(Trigger::Manual, f64::NAN);
        let out = m.render(&Snapshot::default(), "1.2.3");
        for line in [
            "acestream_cache_cleanup_duration_seconds_bucket{trigger=\"manual\",le=\"0.01\"} 1",
            "acestream_cache_cleanup_duration_seconds_bucket{trigger=\"manual\",le=\"0.25\"} 2",
            "acestream_cache_cleanup_duration_seconds_bucket{trigger=\"manual\",le=\"60\"} 2",
            "acestream_cache_cleanup_duration_seconds_bucket{trigger=\"manual\",le=\"120\"} 3",
            "acestream_cache_cleanup_duration_seconds_bucket{trigger=\"manual\",le=\"+Inf\"} 3",
            "acestream_cache_cleanup_duration_seconds_sum{trigger=\"manual\"} 90.2",
            "acestream_cache_cleanup_duration_seconds_count{trigger=\"manual\"} 3",
            "acestream_cache_cleanup_duration_seconds_count{trigger=\"sweep\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // Agent-wide: no engine labels on the histogram.
        assert!(
            !samples(&out, "acestream_cache_cleanup_duration_seconds_count")
                .iter()
                .any(|l| l.contains("container_"))
        );
    }

    #[test]
    fn every_engine_has_the_same_series_and_the_host_series_do_not_grow() {
        let mut snap = golden_snapshot();
        let template = snap.engines[0].clone();
        let engines = |n: usize| -> Vec<_> {
            (0..n)
                .map(|i| {
                    let mut e = template.clone();
                    e.engine.container_id =
                        format!("{i:012x}{}", &template.engine.container_id[12..]);
                    e.engine.container_name = format!("acestream-{i:02}");
                    e
                })
                .collect()
        };
        let m = Metrics::new();
        m.observe_cleanup(Trigger::Sweep, 1.0);
        snap.engines = engines(1);
        let one = m.render(&snap, "1.2.3");
        snap.engines = engines(50);
        let fifty = m.render(&snap, "1.2.3");
        let series = |text: &str, id: Option<&str>| -> usize {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter(|l| match id {
                    Some(id) => l.contains(&format!("container_id=\"{id}\"")),
                    None => !l.contains("container_id=\""),
                })
                .count()
        };
        let per_engine = series(&one, Some(&snap.engines[0].engine.container_id[..12]));
        assert!(
            per_engine >= 20,
            "{per_engine} series for one engine:\n{one}"
        );
        for e in &snap.engines {
            assert_eq!(
                series(&fifty, Some(&e.engine.container_id[..12])),
                per_engine,
                "{}",
                e.engine.container_name
            );
        }
        assert_eq!(series(&fifty, None), series(&one, None), "host series");
        assert_eq!(samples(&fifty, "acestream_engine_info").len(), 50);
    }
}
