//! Connection probe (docs/architecture.md#activity): every `activity.interval`, the established
//! client connections of each engine's HTTP port, read from the host as `/proc/<pid>/net/tcp{,6}`
//! (no exec, no cost to Docker), through the container's checked `/proc/<pid>` (`procfs`). Where
//! the host's /proc does not show the container's process (the agent itself in a container without
//! `--pid=host`), falls back to `docker exec cat /proc/net/tcp /proc/net/tcp6`, said once per
//! engine at info. Sends `RegistryCmd::Connections` only when an engine's set changed.
//!
//! Cost: one tick reads every engine in one blocking task, through handles kept for the
//! containers' lives (`procfs::Kept`: opened and cgroup-checked again only when a pid
//! changes). A `spawn_blocking` per engine that re-opened and re-checked `/proc/<pid>` cost
//! ~100 µs per engine per tick, 2 % of a core at 150 engines and a 1 s interval; this costs
//! 6-7 µs, of which ~2 µs are the agent's and the rest the kernel rendering `net/snmp`
//! (BENCHMARKS.md, `cargo bench --bench probe`, which measures that floor too). The task
//! runs under the same stuck-call guard as disk pressure's statvfs (`stuck::Guarded`): a read
//! of `/proc` that does not return skips the host probe, instead of blocking one more thread
//! per tick.
//!
//! Also home of [`ProbePorts`]: the health checks' own connections, which this probe and the
//! janitor's live-connection guard must not count as clients.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::container::{procfs, procnet};
use crate::docker::DockerClient;
use crate::logging;
use crate::metrics::{CacheAccess, Metrics};
use crate::model::{id12, EngineState};
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;
use crate::stuck::{Call, Guarded};

pub const CONN_PREFIX: &str = "conn:";

/// The exec that reads a container's connection tables where the host's /proc does not show
/// its process.
pub const EXEC_TABLES: [&str; 3] = ["cat", "/proc/net/tcp", "/proc/net/tcp6"];

/// How long a probe's port stays excluded after its connection closed. The connection probe
/// reads `/proc` and looks ports up afterwards, and the engine's side of a closed connection
/// leaves ESTABLISHED only once the FIN has arrived: a check that ends in between would
/// otherwise be counted as a stream, once.
pub const RELEASED_PORT_GRACE: Duration = Duration::from_secs(1);

/// Local ports of the agent's probe connections: in flight (`None`), or closed at an instant
/// (kept for `RELEASED_PORT_GRACE`); and the engines whose cache is being deleted, which get
/// no new probe meanwhile. A std `Mutex`: held for an insert or a lookup, never across an
/// `.await`.
///
/// The janitor's last-moment guard (the delete script refuses while anything is connected to
/// the engine's port) must not mistake a health check for a client. It pauses the engine, then
/// passes `recent_ports()` to the script; a probe holds its port, then checks the pause. Both
/// steps go through this one lock, so a probe either started before the pause (its port is in
/// the list) or sees the pause and does not connect.
#[derive(Clone, Default)]
pub struct ProbePorts(Arc<Mutex<Probes>>);

#[derive(Default)]
struct Probes {
    ports: HashMap<u16, Option<Instant>>,
    paused: HashMap<String, usize>,
    /// Connections in flight, by engine: a number for each, unique over the agent's life.
    open: HashMap<String, Vec<u64>>,
    next: u64,
}

impl ProbePorts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Probes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's own connection to `engine` from local `port`, until the guard is dropped.
    pub(crate) fn hold(&self, port: u16, engine: &str) -> PortGuard {
        let mut p = self.lock();
        p.ports.insert(port, None);
        p.next += 1;
        let seq = p.next;
        p.open.entry(engine.to_string()).or_default().push(seq);
        PortGuard {
            ports: self.clone(),
            port,
            engine: engine.to_string(),
            seq,
        }
    }

    /// The agent's connections to `engine` in flight now (opaque numbers, for
    /// [`ProbePorts::still_open`]).
    pub fn open_to(&self, engine: &str) -> Vec<u64> {
        self.lock().open.get(engine).cloned().unwrap_or_default()
    }

    /// How many of `before` are still in flight: connections open all the time since
    /// `before` was taken.
    pub fn still_open(&self, engine: &str, before: &[u64]) -> u64 {
        let p = self.lock();
        let now = p.open.get(engine).map(Vec::as_slice).unwrap_or(&[]);
        before.iter().filter(|s| now.contains(s)).count() as u64
    }

    /// Whether `port` was a probe connection at any moment since `since` (or shortly before):
    /// what the connection probe asks about a table it started reading at `since`, so that a
    /// check that finished while the table was being read is still recognised.
    pub fn held_since(&self, port: u16, since: Instant) -> bool {
        match self.lock().ports.get(&port) {
            Some(None) => true,
            Some(Some(released)) => *released + RELEASED_PORT_GRACE >= since,
            None => false,
        }
    }

    /// Ports of probes in flight or closed within `RELEASED_PORT_GRACE`.
    pub fn recent_ports(&self) -> Vec<u16> {
        let now = Instant::now();
        let mut v: Vec<u16> = self
            .lock()
            .ports
            .iter()
            .filter(|(_, r)| r.is_none_or(|at| now.duration_since(at) <= RELEASED_PORT_GRACE))
            .map(|(p, _)| *p)
            .collect();
        v.sort_unstable();
        v
    }

    /// No new probe of `engine` until the guard is dropped.
    pub fn pause(&self, engine: &str) -> PauseGuard {
        *self.lock().paused.entry(engine.to_string()).or_default() += 1;
        PauseGuard {
            ports: self.clone(),
            engine: engine.to_string(),
        }
    }

    pub(crate) fn is_paused(&self, engine: &str) -> bool {
        self.lock().paused.contains_key(engine)
    }
}

pub struct PauseGuard {
    ports: ProbePorts,
    engine: String,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        let mut p = self.ports.lock();
        if let Some(n) = p.paused.get_mut(&self.engine) {
            *n -= 1;
            if *n == 0 {
                p.paused.remove(&self.engine);
            }
        }
    }
}

pub(crate) struct PortGuard {
    ports: ProbePorts,
    port: u16,
    engine: String,
    seq: u64,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        let mut s = self.ports.lock();
        let now = Instant::now();
        s.ports.insert(self.port, Some(now));
        if let Some(open) = s.open.get_mut(&self.engine) {
            open.retain(|x| *x != self.seq);
            if open.is_empty() {
                s.open.remove(&self.engine);
            }
        }
        // Bounded by the ports that closed within the grace period.
        s.ports
            .retain(|_, r| r.is_none_or(|at| now.duration_since(at) <= RELEASED_PORT_GRACE));
    }
}

pub struct Activity {
    pub registry: RegistryHandle,
    pub docker: DockerClient,
    pub interval: Duration,
    pub exec_timeout: Duration,
    pub ports: ProbePorts,
    pub metrics: Arc<Metrics>,
}

/// The key of the probe's host reads in its stuck-call guard.
const HOST_READ: &str = "the containers' connection tables";

/// What the host's /proc gave for one engine this tick.
enum HostRead {
    Tables(String),
    /// Not readable from the host: why (the probe falls back to exec).
    Failed(String),
    /// No pid known: the exec, without a fallback to say (as before the host path).
    None,
}

/// Reads the connection tables of every engine in `wanted` (container id, pid, whether it has
/// clients listed now) through `kept`, in this thread; drops the handles of containers no
/// longer wanted first. See [`tables_needed`] for when an engine's tables are not read.
pub fn read_all(
    kept: &mut procfs::Kept,
    wanted: &[(String, u32, bool)],
    ports: &ProbePorts,
) -> Vec<io::Result<String>> {
    let ids: HashSet<&str> = wanted.iter().map(|(id, _, _)| id.as_str()).collect();
    kept.retain(|id| ids.contains(id));
    wanted
        .iter()
        .map(|(id, pid, listed)| {
            let before = ports.open_to(id);
            kept.connection_tables(*pid, id, |n| {
                !tables_needed(n, &before, || ports.still_open(id, &before), *listed)
            })
        })
        .collect()
}

/// Whether an engine's connection tables must be read, given `established` (its namespace's
/// `CurrEstab`), the agent's own connections to it in flight when that was read (`ours`), how
/// many of those are still in flight now (`still_open`), and whether the engine has clients
/// listed. An engine with no client listed whose established connections are, in number, no
/// more than the agent's own open all the while has none to find, and its tables are skipped
/// (a new client could hide only behind a connection of the agent's that Docker's network has
/// not completed yet, microseconds; the next tick sees it, and the janitor's guard before a
/// delete reads the tables whatever the count). An engine with clients listed is always read:
/// a health check the engine has already closed is no longer ESTABLISHED on its side while
/// the agent still holds it, so the count would take the listed client for the agent's own and
/// end its stream.
pub fn tables_needed(
    established: u64,
    ours: &[u64],
    still_open: impl FnOnce() -> u64,
    clients_listed: bool,
) -> bool {
    clients_listed || ours.is_empty() || established > still_open()
}

impl Activity {
    pub async fn run(self, mut shutdown: Shutdown) {
        let said = logging::SaidOnce::default();
        let guarded = Guarded::new(
            self.exec_timeout,
            logging::proc_read_stuck,
            logging::proc_read_recovered,
        );
        // Moved into each tick's blocking task and back; lost (re-opened later) only when a
        // read is stuck and the task never came back.
        let mut kept = procfs::Kept::default();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let snap = self.registry.snapshot();
            let running: Vec<&EngineState> = snap.engines.iter().filter(|e| e.running).collect();
            // Taken before reading: a health check that ends while the tables are read is still
            // in them, and must still be recognised as the agent's own
            // (`ProbePorts::held_since`).
            let since = Instant::now();
            let wanted: Vec<(String, u32, bool)> = running
                .iter()
                .filter(|e| e.runtime.pid > 0)
                .map(|e| {
                    let listed = e.engine.streams.iter().any(|s| s.starts_with(CONN_PREFIX));
                    (e.engine.container_id.clone(), e.runtime.pid, listed)
                })
                .collect();
            let mut host: HashMap<String, HostRead> = HashMap::new();
            if !wanted.is_empty() {
                let mine = std::mem::take(&mut kept);
                let ports = self.ports.clone();
                let work = move || {
                    let mut mine = mine;
                    let tables = read_all(&mut mine, &wanted, &ports);
                    (mine, wanted, tables)
                };
                if let Call::Done((back, wanted, tables)) = guarded.run(HOST_READ, work).await {
                    kept = back;
                    for ((id, _, _), t) in wanted.into_iter().zip(tables) {
                        let r = match t {
                            Ok(text) => HostRead::Tables(text),
                            Err(e) => HostRead::Failed(e.to_string()),
                        };
                        host.insert(id, r);
                    }
                }
            }
            let probes = running.iter().map(|e| {
                let read = match host.remove(&e.engine.container_id) {
                    Some(r) => r,
                    None if e.runtime.pid > 0 => {
                        // The tick's host read is stuck (said once by the guard): these
                        // engines wait for it rather than cost an exec each.
                        return futures_util::future::Either::Left(async { (None, None) });
                    }
                    None => HostRead::None,
                };
                futures_util::future::Either::Right(self.probe(e, read, since))
            });
            let results = futures_util::future::join_all(probes).await;
            for (e, (cmd, fallback)) in running.iter().zip(results) {
                if let Some(why) = fallback {
                    // One exec per engine per activity.interval from now on.
                    let id = &e.engine.container_id;
                    logging::host_fallback(&said, id, "read this engine's connections", &why);
                }
                if let Some(cmd) = cmd {
                    self.registry.send(cmd).await;
                }
            }
            said.retain(|id| snap.engines.iter().any(|e| e.engine.container_id == id));
        }
    }

    /// The engine's change of connections, if any, and why the host's /proc could not be
    /// used when the probe fell back to exec.
    async fn probe(
        &self,
        e: &EngineState,
        read: HostRead,
        since: Instant,
    ) -> (Option<RegistryCmd>, Option<String>) {
        let id = &e.engine.container_id;
        let (text, fallback) = match read {
            HostRead::Tables(t) => (Some(t), None),
            HostRead::Failed(why) => (None, Some(why)),
            HostRead::None => (None, None),
        };
        let text = match text {
            Some(t) => {
                self.metrics.count_probe(CacheAccess::Host);
                t
            }
            None => {
                self.metrics.count_probe(CacheAccess::Exec);
                let argv: Vec<String> = EXEC_TABLES.into_iter().map(String::from).collect();
                match self.docker.exec(id, &argv, self.exec_timeout, |_| {}).await {
                    Ok(out) => out.stdout,
                    Err(err) => {
                        debug!(container_id = %id12(id), error = %err, "connection probe failed");
                        return (None, fallback);
                    }
                }
            }
        };
        let mut streams: Vec<String> = procnet::clients_of(&text, e.runtime.container_port)
            .into_iter()
            .filter(|a| !self.ports.held_since(a.port(), since))
            .map(|a| format!("{CONN_PREFIX}{}:{}", a.ip(), a.port()))
            .collect();
        streams.sort();
        streams.dedup();
        let current: Vec<&String> = e
            .engine
            .streams
            .iter()
            .filter(|s| s.starts_with(CONN_PREFIX))
            .collect();
        let same =
            current.len() == streams.len() && current.iter().zip(&streams).all(|(a, b)| *a == b);
        let cmd = (!same).then(|| RegistryCmd::Connections {
            id: id.clone(),
            streams,
        });
        (cmd, fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ProbePorts {
        /// Whether `port` is a probe connection now (only the tests ask).
        fn contains(&self, port: u16) -> bool {
            self.lock().ports.get(&port).is_some_and(Option::is_none)
        }
    }

    #[test]
    fn the_agents_connections_open_all_along_are_counted_per_engine() {
        let p = ProbePorts::default();
        let a = p.hold(4001, "e1");
        let before = p.open_to("e1");
        assert_eq!(p.still_open("e1", &before), 1);
        // Opened after the count began: not one of those open all along.
        let b = p.hold(4002, "e1");
        assert_eq!(p.still_open("e1", &before), 1);
        assert!(p.open_to("e2").is_empty());
        assert_eq!(p.still_open("e2", &before), 0);
        // Closed meanwhile: its engine-side socket may be gone already, so it no longer
        // counts.
        drop(a);
        assert_eq!(p.still_open("e1", &before), 0);
        drop(b);
        assert!(p.open_to("e1").is_empty());
    }

    /// The skip of the tables is for engines without clients only. A health check the engine
    /// has closed already (its side no longer ESTABLISHED, `CurrEstab` 1: the client) while
    /// the agent still holds it (`still_open` 1) looks, by count, like "all ours": reading
    /// nothing then ended the listed client's stream for one tick (seen under load).
    #[test]
    fn a_listed_client_is_never_taken_for_the_agents_own_connection() {
        let p = ProbePorts::default();
        let _check = p.hold(4001, "e1");
        let before = p.open_to("e1");
        let still = || p.still_open("e1", &before);
        assert!(tables_needed(1, &before, still, true));
        // Without a client listed the count may skip the read: nothing to end.
        assert!(!tables_needed(1, &before, still, false));
        // More established than the agent's own: someone else is there.
        assert!(tables_needed(2, &before, still, false));
        // None of the agent's in flight: always read.
        assert!(tables_needed(1, &[], || 0, false));
    }

    #[test]
    fn probe_ports_are_released_on_drop() {
        let p = ProbePorts::default();
        let before = Instant::now();
        {
            let _g = p.hold(4242, "e");
            assert!(p.contains(4242));
            assert!(p.held_since(4242, Instant::now()));
        }
        assert!(!p.contains(4242));
        // A table read that began while the check was open still excludes it.
        assert!(p.held_since(4242, before));
        assert!(!p.held_since(4243, before));
        let later = Instant::now() + RELEASED_PORT_GRACE + Duration::from_millis(10);
        assert!(!p.held_since(4242, later));
    }
}
