//! Whether the agent's probes can reach the engines: the network the agent itself runs on, and,
//! when a probe fails, whether the engine is listening all the same.
//!
//! Docker isolates bridge networks from each other (its `DOCKER-ISOLATION` iptables chains):
//! an agent in a container on a network of its own (compose's project network, a Swarm
//! overlay) reaches no engine on the default bridge, on another project's network or on the
//! host's network, though every one of them runs and listens. Its probes then only time out.
//! From the host's network namespace every engine address is reachable, as from a .deb
//! install; the shipped compose and Swarm files run the agent there (README, "Run it as a
//! container"). Where it still runs elsewhere, a failed probe of an engine whose own namespace
//! shows its port listening is explained once per engine, as a warning naming the network
//! mode the agent needs, instead of a bare "timed out".

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use tracing::{debug, info, warn};

use crate::activity;
use crate::container::{procfs, procnet};
use crate::docker::DockerClient;
use crate::logging::SaidOnce;
use crate::model::{id12, EngineState};

/// The network the agent runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnNetwork {
    /// Docker's name for it: `host`, `bridge` (the default bridge), a user-defined network's
    /// name (`acestream_default`), `container:<id12>`, `none`.
    pub mode: String,
    /// In the host's network namespace: every engine address is reachable from here.
    pub host: bool,
}

impl OwnNetwork {
    /// The agent not in a container: the host's namespace.
    pub fn host() -> OwnNetwork {
        OwnNetwork {
            mode: "host".into(),
            host: true,
        }
    }

    /// The agent's own container, from its inspect data. A Swarm task attached to the
    /// predefined `host` network shows it among its networks rather than as its mode.
    pub fn of(c: &ContainerInspectResponse) -> OwnNetwork {
        let mode = c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();
        let networks: Vec<String> = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        if mode == "host" || networks.iter().any(|n| n == "host") {
            return OwnNetwork::host();
        }
        let mode = match mode.as_str() {
            "" | "default" => networks.first().cloned().unwrap_or_else(|| "bridge".into()),
            m => match m.strip_prefix("container:") {
                Some(owner) => format!("container:{}", id12(owner)),
                None => m.to_string(),
            },
        };
        OwnNetwork { mode, host: false }
    }
}

/// Shared by discovery (which reads the agent's container when it connects to Docker), the
/// health prober (which asks after a failed probe) and `GET /agent`. Clones share one state.
#[derive(Clone)]
pub struct Reach {
    /// `None` until the agent's container was read (Docker not reached yet).
    own: Arc<RwLock<Option<OwnNetwork>>>,
    docker: DockerClient,
    exec_timeout: Duration,
    said: Arc<SaidOnce>,
}

impl Reach {
    /// `in_container`: the agent's network is learned from its container (`set_own`); else it
    /// is the host's.
    pub fn new(docker: DockerClient, exec_timeout: Duration, in_container: bool) -> Reach {
        Reach {
            own: Arc::new(RwLock::new((!in_container).then(OwnNetwork::host))),
            docker,
            exec_timeout,
            said: Arc::default(),
        }
    }

    pub fn own(&self) -> Option<OwnNetwork> {
        self.own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What discovery read of the agent's container; said at info when it changes.
    pub fn set_own(&self, n: OwnNetwork) {
        let mut own = self.own.write().unwrap_or_else(PoisonError::into_inner);
        if own.as_ref() != Some(&n) {
            info!(network_mode = %n.mode, "The agent's container runs on the {} network{}", n.mode,
                if n.host { "" } else { " (engines on other Docker networks may be out of its reach)" });
            *own = Some(n);
        }
    }

    /// After a failed probe of `e` at `addr`: whether the failure is the agent's network (the
    /// engine listens on its port in its own namespace, yet the agent, not on the host's
    /// network, cannot reach it). The first time for an engine this is a warning; the caller
    /// logs its own line otherwise.
    pub async fn explain(&self, e: &EngineState, addr: SocketAddr, error: &str) -> bool {
        let Some(own) = self.own().filter(|n| !n.host) else {
            return false;
        };
        let id = &e.engine.container_id;
        let port = e.runtime.container_port;
        if !self.listening(e).await {
            return false;
        }
        let name = &e.engine.container_name;
        if self.said.first(id) {
            warn!(container_id = %id12(id), container_name = %name, network_mode = %own.mode, error,
                "Engine {} ({name}) listens on port {port}, but the agent cannot reach it at {addr} ({error}): \
                 the agent's container is on the {} network, and Docker isolates networks from each other. \
                 Run the agent on the host's network (compose `network_mode: host`, Swarm the `host` network)",
                id12(id), own.mode);
        } else {
            debug!(container_id = %id12(id), error, "engine listening but unreachable from the agent's network");
        }
        true
    }

    /// Whether the engine's namespace has its port listening: its connection tables read from
    /// the host through its checked `/proc/<pid>`, else by `docker exec cat` (the agent without
    /// the host's /proc). Any failure is "not known to listen".
    async fn listening(&self, e: &EngineState) -> bool {
        let id = e.engine.container_id.clone();
        let (pid, port) = (e.runtime.pid, e.runtime.container_port);
        let host = tokio::task::spawn_blocking({
            let id = id.clone();
            move || procfs::ContainerProc::open(pid, &id)?.tcp_tables()
        });
        let text = match tokio::time::timeout(self.exec_timeout, host).await {
            Ok(Ok(Ok(text))) => text,
            _ => {
                let argv: Vec<String> = activity::EXEC_TABLES
                    .into_iter()
                    .map(String::from)
                    .collect();
                match self
                    .docker
                    .exec(&id, &argv, self.exec_timeout, |_| {})
                    .await
                {
                    Ok(out) => out.stdout,
                    Err(_) => return false,
                }
            }
        };
        procnet::listening(&text, port)
    }

    /// Forgets engines `keep` rejects (gone containers).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.said.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerInspectResponse, EndpointSettings, HostConfig, NetworkSettings,
    };
    use std::collections::HashMap;

    fn container(mode: &str, networks: &[&str]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            host_config: Some(HostConfig {
                network_mode: Some(mode.into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|n| (n.to_string(), EndpointSettings::default()))
                        .collect::<HashMap<_, _>>(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_agents_network_by_its_containers_mode_and_networks() {
        let of = |mode, nets: &[&str]| OwnNetwork::of(&container(mode, nets));
        assert_eq!(of("host", &["host"]), OwnNetwork::host());
        // A Swarm task on the predefined `host` network.
        assert_eq!(of("default", &["host"]), OwnNetwork::host());
        let own = |mode: &str| OwnNetwork {
            mode: mode.into(),
            host: false,
        };
        assert_eq!(of("default", &["bridge"]), own("bridge"));
        assert_eq!(of("bridge", &["bridge"]), own("bridge"));
        assert_eq!(
            of("acestream_default", &["acestream_default"]),
            own("acestream_default")
        );
        // A Swarm task on its stack's overlay.
        assert_eq!(
            of("default", &["acestream_default"]),
            own("acestream_default")
        );
        assert_eq!(
            of(
                "container:6987647a9864175e795ee6e9a3cdb6ae83d421b6f26562dbc33c845ea754bdaa",
                &[]
            ),
            own("container:6987647a9864")
        );
        assert_eq!(of("none", &["none"]), own("none"));
        assert_eq!(
            OwnNetwork::of(&ContainerInspectResponse::default()),
            own("bridge")
        );
    }
}
