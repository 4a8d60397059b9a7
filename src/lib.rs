//! acestream-agent: a per-host daemon for machines that run AceStream engine containers.
//!
//! ```text
//!  Docker API ──► discovery ──┐                       ┌──► views (render on change) ──► /engines, /metrics
//!  engine HTTP ─► health ─────┤                       │
//!  /proc/<pid>/net ► activity ┼──► registry (owner) ──┼──► janitor ◄── idle events, sweep tick, POST cleanup
//!  POST /events/* ────────────┘      │  persist        │       │ re-check idle, then measure + delete:
//!                                    │                 │       │ /proc/<pid>/root (cache::host) or docker exec
//!                                    ▼                 │       └──► registry (record)
//!                                  store (redb) ◄──────┤
//!  statvfs, mountinfo ──► pressure ◄── snapshots ──────┘
//!                           │ below pressure.min_free: janitor (measure, clean largest first)
//!                           └──► registry (filesystems, cache_mountpoint)
//! ```
//!
//! Every change goes to the registry task as a command; it persists the batch, then publishes
//! an `Arc<Snapshot>` on a `watch`. Workers read snapshots and send commands; nothing else
//! holds engine state. `run` takes an already bound listener and a shutdown future so tests
//! start the agent in-process on `127.0.0.1:0`.

// Public: what `main.rs`, the integration tests and the benchmarks use. The rest is private to
// the crate, so an item nothing uses is a warning rather than an API.
pub mod activity;
mod backoff;
pub mod cache;
pub mod cli;
pub mod config;
pub mod container;
mod discovery;
pub mod docker;
pub mod heal;
mod health;
pub mod http;
pub mod janitor;
pub mod logging;
pub mod metrics;
pub mod model;
mod notify;
mod pressure;
mod reach;
pub mod registry;
pub mod selfcheck;
mod shutdown;
mod stats;
pub mod store;
pub mod stuck;
mod whereami;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::activity::ProbePorts;
use crate::config::Config;
use crate::docker::DockerClient;
use crate::janitor::{Janitor, JanitorConfig};
use crate::metrics::Metrics;
use crate::model::Snapshot;
use crate::registry::{Registry, RegistryHandle};
use crate::store::{Store, StoreError};

/// How long shutdown waits for tasks (in-flight cleanups, the final store commit).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running agent: the handle tests use and `run` wraps.
pub struct Agent {
    pub addr: SocketAddr,
    pub registry: RegistryHandle,
    /// The health checker's connections to engines. Another `Janitor` over `registry` (the
    /// benchmark's) needs them, or its live-connection guard takes a health check that
    /// happens to be connected for a viewer and deletes nothing.
    pub probes: ProbePorts,
    trigger: shutdown::Trigger,
    tasks: JoinSet<()>,
}

/// Every name and address a proxy may use for this host
/// (docs/deployments.md#stream-events-from-proxies).
fn host_names(cfg: &Config) -> HashSet<String> {
    let mut names: HashSet<String> = [
        cfg.discovery.advertise_host.clone(),
        config::hostname(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "0.0.0.0".into(),
        "host.docker.internal".into(),
    ]
    .into_iter()
    .map(|s| s.to_ascii_lowercase())
    .collect();
    names.extend(local_ips());
    names
}

/// Addresses of this host's interfaces (getifaddrs).
// The one unsafe block of the agent: neither std nor rustix wraps getifaddrs.
#[allow(unsafe_code)]
fn local_ips() -> Vec<String> {
    let mut out = vec![];
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let addr = (*p).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(
                            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string(),
                        );
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_string());
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

impl Agent {
    /// Opens the store (a store that cannot be opened is an error, never replaced), then
    /// starts every task. The agent serves from the store at once, Docker or not.
    pub async fn start(cfg: Config, listener: TcpListener) -> Result<Agent, AgentError> {
        let addr = listener.local_addr()?;
        let path = cfg.store.path.clone();
        let history = cfg.store.history_per_engine;
        let store = tokio::task::spawn_blocking(move || Store::open(&path, history))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        // Loading the store is redb reads: off the async threads, like every other store call.
        let (registry, parts) = {
            let (store, names, retention) = (store.clone(), host_names(&cfg), cfg.store.retention);
            tokio::task::spawn_blocking(move || Registry::new(store, names, retention))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??
        };
        let (trigger, shutdown) = shutdown::channel();
        let metrics = Arc::new(
            Metrics::new()
                .with_sweep_interval(cfg.cleanup.interval)
                .with_pressure_interval(cfg.pressure.interval),
        );
        let docker = DockerClient::new(cfg.docker.host.clone());
        let own_id = whereami::own_container_id();
        // Docker's container, by its own id (not `/.dockerenv`: sandboxes that are no Docker
        // container of this daemon carry it too).
        let in_container = own_id.is_some();
        let matcher = discovery::Matcher {
            own_id: own_id.clone(),
            ..discovery::Matcher::from_config(&cfg)
        };
        if let Some(id) = &own_id {
            info!(container_id = %model::id12(id), "Running in container {}; it is never taken for an engine", model::id12(id));
        }
        let inspector = discovery::Inspector::new(
            docker.clone(),
            matcher,
            cfg.cleanup.cache_path.clone(),
            cfg.cleanup.exec_timeout,
        );
        let ports = ProbePorts::default();
        let reach = reach::Reach::new(docker.clone(), cfg.cleanup.exec_timeout, in_container);
        let janitor = Janitor::new(
            parts.handle.clone(),
            docker.clone(),
            JanitorConfig {
                exec_timeout: cfg.cleanup.exec_timeout,
                concurrency: cfg.cleanup.concurrency,
                min_bytes: cfg.cleanup.min_bytes,
                method: cfg.cleanup.method,
            },
            metrics.clone(),
        )
        .with_probes(ports.clone());
        let mut tasks = JoinSet::new();
        let janitor_events = parts.events.subscribe();
        tasks.spawn(registry.run(parts.rx, shutdown.clone()));
        let (rendered_tx, rendered_rx) = watch::channel(Arc::new(http::views::render(
            parts.handle.snapshot(),
            &metrics,
        )));
        tasks.spawn(http::views::run(
            parts.handle.subscribe(),
            rendered_tx,
            metrics.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(
            discovery::Discovery {
                docker: docker.clone(),
                registry: parts.handle.clone(),
                inspector: inspector.clone(),
                resync: cfg.discovery.resync_interval,
                advertise_docker_name: in_container
                    && cfg.discovery.advertise_host == config::hostname(),
                reach: reach.clone(),
            }
            .run(shutdown.clone()),
        );
        tasks.spawn(
            health::Health {
                registry: parts.handle.clone(),
                interval: cfg.health.interval,
                timeout: cfg.health.timeout,
                ports: ports.clone(),
                reach: reach.clone(),
            }
            .run(shutdown.clone()),
        );
        tasks.spawn(
            activity::Activity {
                registry: parts.handle.clone(),
                docker: docker.clone(),
                interval: cfg.activity.interval,
                exec_timeout: cfg.cleanup.exec_timeout,
                ports: ports.clone(),
                metrics: metrics.clone(),
            }
            .run(shutdown.clone()),
        );
        tasks.spawn(
            pressure::Pressure {
                registry: parts.handle.clone(),
                janitor: janitor.clone(),
                docker: docker.clone(),
                interval: cfg.pressure.interval,
                min_free: cfg.pressure.min_free,
                docker_root: cfg
                    .pressure
                    .docker_root
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                memory_high: cfg.pressure.memory_high,
                busy_files: cfg.pressure.busy_files,
                fs_timeout: pressure::FS_CALL_TIMEOUT,
            }
            .run(shutdown.clone()),
        );
        if let Some(interval) = cfg.streams.stat_interval {
            tasks.spawn(
                stats::StreamStats {
                    registry: parts.handle.clone(),
                    interval,
                    timeout: cfg.health.timeout,
                    stall_after: cfg.streams.stall_after,
                    ports: ports.clone(),
                }
                .run(shutdown.clone()),
            );
        }
        let (heal, heal_handle) = heal::Heal::new(
            parts.handle.clone(),
            docker.clone(),
            heal::Policy::from_config(&cfg.heal),
            cfg.heal.stop_timeout,
        );
        tasks.spawn(heal.run(shutdown.clone()));
        tasks.spawn(janitor.clone().run(
            janitor_events,
            janitor::Triggers {
                sweep: cfg.cleanup.interval,
                idle_grace: cfg.cleanup.idle_grace,
                measure: cfg.cleanup.measure_interval,
            },
            shutdown.clone(),
        ));
        let state = Arc::new(http::AppState {
            rendered: rendered_rx,
            registry: parts.handle.clone(),
            lookup: discovery::Lookup::new(inspector, parts.handle.clone()),
            agent: http::AgentFacts {
                in_container,
                container_id: own_id,
                docker: docker.clone(),
                cleanup_method: cfg.cleanup.method,
                metrics: metrics.clone(),
                reach,
            },
            janitor,
            heal: heal_handle,
            store,
            token: cfg.http.token.clone(),
            history_limit: cfg.store.history_per_engine,
        });
        tasks.spawn(http::serve(listener, state, shutdown));
        info!(%addr, version = env!("CARGO_PKG_VERSION"), "acestream-agent listening");
        // Ready for systemd (Type=notify): the store is open and requests are being accepted.
        if let Err(e) = notify::notify("READY=1") {
            warn!(error = %e, "cannot notify systemd of readiness");
        }
        Ok(Agent {
            addr,
            registry: parts.handle,
            probes: ports,
            trigger,
            tasks,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.registry.snapshot()
    }

    /// Signals shutdown and waits up to `SHUTDOWN_GRACE` for the tasks; aborts what is left.
    pub async fn stop(mut self) {
        let _ = notify::notify("STOPPING=1");
        self.trigger.fire();
        let wait = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
            warn!("shutdown grace period over; aborting remaining tasks");
            self.tasks.abort_all();
        }
        info!("acestream-agent stopped");
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::start(cfg, listener).await?;
    shutdown.await;
    info!("shutting down");
    agent.stop().await;
    Ok(())
}
