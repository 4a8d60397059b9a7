//! Logging: journald when systemd started us, stderr otherwise (docs/architecture.md#logging), and
//! the orchestrator's four cleanup lines, each emitted from exactly one function so text and fields cannot
//! drift.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tracing::{debug, info};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::model::{format_gb, format_mb, id12, MemoryUse, Trigger};

/// True when stderr is the journal stream systemd gave us (`JOURNAL_STREAM=<dev>:<inode>`
/// matching stderr), the documented way to tell "run by systemd" from "run in a terminal".
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(
                    journald
                        .with_syslog_identifier("acestream-agent".into())
                        // Fields under their own names (CONTAINER_ID, BYTES, ...), so
                        // `journalctl CONTAINER_ID=…` works like the JSON and metric labels.
                        .with_field_prefix(None)
                        // info is "informational" (6) in syslog terms; the crate's default
                        // would make every cleanup a "notice".
                        .with_priority_mappings(tracing_journald::PriorityMappings {
                            info: tracing_journald::Priority::Informational,
                            ..tracing_journald::PriorityMappings::new()
                        })
                        .with_filter(filter()),
                )
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter()),
        )
        .try_init();
}

pub fn cleanup_started(container_id: &str, container_name: &str, trigger: Trigger) {
    let id = id12(container_id);
    match trigger {
        Trigger::Sweep => info!(container_id = %id, container_name, trigger = %trigger,
            "Running periodic cache cleanup for idle engine {id}"),
        _ => info!(container_id = %id, container_name, trigger = %trigger,
            "Running {trigger} cache cleanup for engine {id}"),
    }
}

pub fn cache_size(container_id: &str, container_name: &str, bytes: u64) {
    let id = id12(container_id);
    info!(container_id = %id, container_name, bytes,
        "Cache size for container {id}: {bytes} bytes ({})", format_mb(bytes));
}

pub fn clearing(container_id: &str, container_name: &str) {
    let id = id12(container_id);
    info!(container_id = %id, container_name, "Clearing AceStream cache for container {id}");
}

pub fn cleared(
    container_id: &str,
    container_name: &str,
    trigger: Trigger,
    freed: u64,
    seconds: f64,
) {
    let id = id12(container_id);
    info!(container_id = %id, container_name, trigger = %trigger, bytes = freed, duration_seconds = seconds,
        "Successfully cleared AceStream cache for container {id} (freed {})", format_mb(freed));
}

pub fn cleanup_failed(
    container_id: &str,
    container_name: &str,
    trigger: Trigger,
    reason: &str,
    seconds: f64,
) {
    let id = id12(container_id);
    tracing::warn!(container_id = %id, container_name, trigger = %trigger, duration_seconds = seconds,
        error = reason, "Cache cleanup failed for container {id}: {reason}");
}

/// A disk-pressure episode starts on `mountpoint` (docs/cache-paths.md#disk-pressure); logged
/// once per episode.
pub fn pressure_started(mountpoint: &str, avail: u64, threshold_bytes: u64, threshold: &str) {
    info!(mountpoint, bytes = avail, threshold_bytes,
        "Disk pressure on {mountpoint}: {} free, below {threshold}; cleaning idle engines largest first",
        format_gb(avail));
}

/// Still below the threshold and no idle engine left to clean; once per episode.
pub fn pressure_persists(mountpoint: &str, avail: u64, threshold_bytes: u64) {
    tracing::warn!(
        mountpoint,
        bytes = avail,
        threshold_bytes,
        "Disk pressure on {mountpoint} persists: no idle engine left to clean"
    );
}

/// No idle engine left under pressure: files of busy engines no process held open were deleted.
pub fn pressure_busy_freed(mountpoint: &str, files: u64, bytes: u64, engines: u64) {
    tracing::warn!(
        mountpoint,
        files,
        bytes,
        engines,
        trigger = "pressure_busy",
        "Disk pressure on {mountpoint}: no idle engine left; deleted {files} cache files no engine holds open ({}) from {engines} busy engines",
        format_mb(bytes)
    );
}

/// Free space is back at or above the threshold: the episode is over.
pub fn pressure_resolved(mountpoint: &str, avail: u64, threshold_bytes: u64) {
    info!(
        mountpoint,
        bytes = avail,
        threshold_bytes,
        "Disk pressure on {mountpoint} resolved: {} free",
        format_gb(avail)
    );
}

/// A memory cache (docs/cache-paths.md#caches-in-memory) under pressure: its tmpfs below
/// `pressure.min_free` (`threshold_bytes`), or its container's memory at `pressure.memory_high`
/// (`memory`).
pub fn memory_pressure_started(
    container_id: &str,
    container_name: &str,
    mountpoint: &str,
    avail: u64,
    threshold_bytes: Option<u64>,
    memory: Option<MemoryUse>,
) {
    let id = id12(container_id);
    let why = match (threshold_bytes, memory) {
        (Some(t), _) => format!(
            "{} free on its tmpfs, below {}",
            format_mb(avail),
            format_mb(t)
        ),
        (None, Some(m)) => format!(
            "the container uses {} of its {} memory limit",
            format_mb(m.usage_bytes),
            format_mb(m.limit_bytes.unwrap_or(0))
        ),
        (None, None) => format!("{} free on its tmpfs", format_mb(avail)),
    };
    info!(container_id = %id, container_name, mountpoint, bytes = avail,
        "Memory pressure on {mountpoint} of engine {id}: {why}; cleaning it when idle");
}

/// The memory cache's pressure is over.
pub fn memory_pressure_resolved(
    container_id: &str,
    container_name: &str,
    mountpoint: &str,
    avail: u64,
) {
    let id = id12(container_id);
    info!(container_id = %id, container_name, mountpoint, bytes = avail,
        "Memory pressure on {mountpoint} of engine {id} resolved: {} free", format_mb(avail));
}

/// Still under pressure with the engine busy or its cache empty; once per episode.
pub fn memory_pressure_persists(
    container_id: &str,
    container_name: &str,
    mountpoint: &str,
    avail: u64,
) {
    let id = id12(container_id);
    tracing::warn!(container_id = %id, container_name, mountpoint, bytes = avail,
        "Memory pressure on {mountpoint} of engine {id} persists: it is busy or has nothing to clean");
}

/// A memory cache the host cannot look into (no /proc of the container): not watched.
pub fn memory_cache_unwatched(container_id: &str, why: &str) {
    let id = id12(container_id);
    info!(container_id = %id, reason = why,
        "Cannot watch the memory cache of engine {id} from the host ({why}); it is cleaned by the sweep and stream ends only");
}

/// statvfs on `mountpoint` did not return in time: the mount is skipped until the call returns.
pub fn filesystem_stuck(mountpoint: &str, seconds: f64) {
    tracing::warn!(mountpoint, timeout_seconds = seconds,
        "Reading free space on {mountpoint} timed out after {seconds}s; skipping it until that call returns");
}

/// A stuck statvfs call returned at last.
pub fn filesystem_recovered(mountpoint: &str) {
    info!(mountpoint, "Reading free space on {mountpoint} works again");
}

/// statvfs failed (mount gone, no permission); logged on the transition, not every tick.
pub fn filesystem_unreadable(mountpoint: &str, error: &str) {
    tracing::warn!(
        mountpoint,
        error,
        "Cannot read free space on {mountpoint}: {error}"
    );
}

/// Engines a fallback was already reported for (see [`host_fallback`]).
#[derive(Debug, Default)]
pub struct SaidOnce(Mutex<HashSet<String>>);

impl SaidOnce {
    /// True the first time for `id`.
    pub fn first(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string())
    }

    /// Forgets the engines `keep` rejects (gone containers).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id| keep(id));
    }
}

/// Heal is about to restart a stuck engine (warning: a recoverable fault the agent acts on).
pub fn heal_restarting(
    id: &str,
    name: &str,
    trigger: crate::model::HealTrigger,
    failing_for: std::time::Duration,
    n: usize,
    window: std::time::Duration,
) {
    let failing =
        crate::config::format_duration(std::time::Duration::from_secs(failing_for.as_secs()));
    let window = crate::config::format_duration(window);
    let id12 = id12(id);
    match trigger {
        crate::model::HealTrigger::Stalled => {
            tracing::warn!(container_id = %id12, container_name = %name, restart = n, trigger = %trigger,
            "Engine {id12} ({name}) has had every stream stalled for {failing}; restarting it (restart {n} within {window})")
        }
        _ => {
            tracing::warn!(container_id = %id12, container_name = %name, restart = n, trigger = %trigger,
            "Engine {id12} ({name}) has not answered its status API for {failing}; restarting it (restart {n} within {window})")
        }
    }
}

/// An engine the agent restarted answers its status probe again.
pub fn heal_recovered(id: &str, name: &str) {
    info!(container_id = %id12(id), container_name = %name,
        "Engine {} is healthy again after its restart", id12(id));
}

/// An engine restarted `n` times within the window is stuck once more: left alone (error:
/// it needs a person).
pub fn heal_quarantined(id: &str, name: &str, n: usize, window: std::time::Duration) {
    let window = crate::config::format_duration(window);
    tracing::error!(container_id = %id12(id), container_name = %name, restarts = n,
        "Engine {} restarted {n} times within {window} and is still stuck; quarantined until it is healthy or restarted by hand", id12(id));
}

/// "Cannot <what> from the host (<why>); using docker exec": once per engine at info (every
/// exec costs dockerd CPU, which an operator should know of), the repeats at debug. One line
/// shape for the cache janitor and the connection probe.
pub fn host_fallback(said: &SaidOnce, id: &str, what: &str, why: &str) {
    if said.first(id) {
        info!(container_id = %id12(id), "Cannot {what} from the host ({why}); using docker exec");
    } else {
        debug!(container_id = %id12(id), reason = %why, "Cannot {what} from the host; using docker exec");
    }
}

/// The connection probe's read of the containers' `/proc` did not return in time: no host
/// probe until it does.
pub fn proc_read_stuck(what: &str, seconds: f64) {
    tracing::warn!(timeout_seconds = seconds,
        "Reading {what} from /proc timed out after {seconds}s; skipping the host probe until that read returns");
}

/// A host walk of an engine's cache (keyed by container id) outlived its deadline.
pub fn cache_walk_stuck(container_id: &str, seconds: f64) {
    let id = id12(container_id);
    tracing::warn!(container_id = %id, timeout_seconds = seconds,
        "The walk of this engine's cache did not return within {seconds}s (filesystem not answering?); no new cleanup of it until it does");
}

/// A hung host walk of an engine's cache returned at last.
pub fn cache_walk_recovered(container_id: &str) {
    let id = id12(container_id);
    info!(container_id = %id, "The hung walk of this engine's cache returned; it can be cleaned again");
}

/// A stuck read of `/proc` returned at last.
pub fn proc_read_recovered(what: &str) {
    info!("Reading {what} from /proc works again");
}
