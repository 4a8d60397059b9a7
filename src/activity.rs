//! Connection probe (SPEC §3): every `activity.interval`, the established client connections
//! of each engine's HTTP port, read from the host as `/proc/<pid>/net/tcp{,6}` (no exec, no
//! cost to Docker), once `/proc/<pid>` is known to be the container's (its cgroup). Where the
//! host's /proc does not show the container's process (the agent itself in a container without
//! `--pid=host`), falls back to `docker exec cat /proc/net/tcp /proc/net/tcp6`, said once per
//! engine at info.
//! Sends `RegistryCmd::Connections` only when an engine's set changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::docker::DockerClient;
use crate::health::ProbePorts;
use crate::metrics::{CacheAccess, Metrics};
use crate::model::{id12, EngineState};
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;
use crate::{logging, procfs, procnet};

pub const CONN_PREFIX: &str = "conn:";

pub struct Activity {
    pub registry: RegistryHandle,
    pub docker: DockerClient,
    pub interval: Duration,
    pub exec_timeout: Duration,
    pub ports: ProbePorts,
    pub metrics: Arc<Metrics>,
}

/// Both tables of the container's network namespace, from the host's /proc once the pid is
/// known to be the container's (`procfs::connection_tables`), off the async threads.
async fn read_proc(pid: u32, container_id: String) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || procfs::connection_tables(pid, &container_id))
        .await
        .map_err(std::io::Error::other)?
}

impl Activity {
    pub async fn run(self, mut shutdown: Shutdown) {
        let said = logging::SaidOnce::default();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let snap = self.registry.snapshot();
            let running: Vec<&EngineState> = snap.engines.iter().filter(|e| e.running).collect();
            let probes = running.iter().map(|e| self.probe(e));
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
    async fn probe(&self, e: &EngineState) -> (Option<RegistryCmd>, Option<String>) {
        let id = &e.engine.container_id;
        // Taken before reading: a health check that ends while the table is read is still in
        // it, and must still be recognised as the agent's own (`ProbePorts::held_since`).
        let since = Instant::now();
        let mut fallback = None;
        let text = match (e.runtime.pid > 0).then_some(()) {
            Some(()) => match read_proc(e.runtime.pid, id.clone()).await {
                Ok(t) => Some(t),
                Err(err) => {
                    fallback = Some(err.to_string());
                    None
                }
            },
            None => None,
        };
        let text = match text {
            Some(t) => {
                self.metrics.count_probe(CacheAccess::Host);
                t
            }
            None => {
                self.metrics.count_probe(CacheAccess::Exec);
                let argv: Vec<String> = ["cat", "/proc/net/tcp", "/proc/net/tcp6"]
                    .into_iter()
                    .map(String::from)
                    .collect();
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
