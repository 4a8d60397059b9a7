//! Discovery (docs/architecture.md#discovery): list running containers, follow Docker events,
//! re-list every `discovery.resync_interval`, reconnect with backoff. Sends
//! `RegistryCmd::{Sync, Upsert, Remove, DockerUp}`; owns no engine state.
//!
//! Shape after vector's docker_logs source: the events stream is opened `since` a timestamp
//! taken *before* the list, so a container started between the two is not missed (it is then
//! seen twice, which the registry's upsert makes harmless). Unlike vector, the first list also
//! retries, and the registry keeps the last known engines while Docker is away.
//!
//! By job: `response` (what one inspect response says, pure), `matcher` (is it an engine,
//! where is it), `inspect` (everything one container's view takes beyond that: its namespace
//! owner, processes, command line, cache), `lookup` (a container a stream event names before
//! it is listed), and the loop, here. Each uses only those before it.

mod inspect;
mod lookup;
mod matcher;
mod response;

pub use inspect::Inspector;
use inspect::READ_AGAIN_AFTER;
pub use lookup::Lookup;
pub use matcher::Matcher;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::docker::{DockerClient, DockerError};
use crate::model::{DiscoveredEngine, NetMode};
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;

/// Label naming the engine's HTTP port inside the container.
pub const PORT_LABEL: &str = "acestream.http_port";
/// The OCI title label the agent's image carries (packaging/docker/Dockerfile), which Docker
/// copies into its containers' labels.
pub const IMAGE_TITLE_LABEL: &str = "org.opencontainers.image.title";
pub const AGENT_IMAGE_TITLE: &str = "acestream-agent";
/// Label naming the host port the engine's HTTP port is published on.
pub const HOST_PORT_LABEL: &str = "host.http_port";

pub struct Discovery {
    pub docker: DockerClient,
    pub registry: RegistryHandle,
    pub inspector: Inspector,
    pub resync: Duration,
    /// The agent runs in a container and `discovery.advertise_host` was left to its default
    /// (the container's hostname, which no client can dial): Docker's name for the host is
    /// advertised instead.
    pub advertise_docker_name: bool,
    /// Told the agent's own network when Docker is reached (the agent in a container).
    pub reach: crate::reach::Reach,
}

impl Discovery {
    async fn list(&self) -> Result<Vec<DiscoveredEngine>, DockerError> {
        self.inspector.list().await
    }

    /// Re-reads one container: upserted while it is a running engine, removed otherwise.
    async fn refresh(&self, id: &str) -> Result<(), DockerError> {
        match self.inspector.engine_by_id(id).await? {
            Some(d) => self.registry.send(RegistryCmd::Upsert(Box::new(d))).await,
            None => {
                self.registry
                    .send(RegistryCmd::Remove(id.to_string()))
                    .await
            }
        }
        Ok(())
    }

    async fn on_event(&self, action: &str, id: &str) -> Result<(), DockerError> {
        match action {
            // A paused engine fails its probes but is frozen on purpose: heal must know.
            "start" | "rename" | "pause" | "unpause" => self.refresh(id).await?,
            "die" | "stop" | "destroy" => {
                self.registry
                    .send(RegistryCmd::Remove(id.to_string()))
                    .await
            }
            _ => return Ok(()),
        }
        // Engines in this container's network namespace: their endpoint is its IP and its
        // published ports, which a stop or a restart changes.
        let snap = self.registry.snapshot();
        let dependents = snap.engines.iter().filter(|e| {
            e.running && matches!(&e.runtime.net, NetMode::Container { owner } if owner == id)
        });
        for e in dependents {
            debug!(container_id = %crate::model::id12(&e.engine.container_id),
                owner = %crate::model::id12(id), action, "namespace owner changed; re-reading the engine");
            self.refresh(&e.engine.container_id).await?;
        }
        Ok(())
    }

    /// Runs until shutdown. Every failure ends the current session; the loop reconnects after
    /// a backoff and starts over with a fresh list.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut up = false;
        // Whether this outage was already reported: the first failure is a warning (an agent
        // that never reached Docker must say why on a default log level), the retries debug.
        let mut reported = false;
        loop {
            let err = tokio::select! {
                e = self.session(&mut backoff, &mut up) => e,
                _ = shutdown.recv() => return,
            };
            if up {
                warn!(error = %err, "lost Docker; serving last known state, reconnecting");
            } else if !reported {
                warn!(error = %err, "Docker unreachable; serving the last known state, retrying with backoff");
            } else {
                debug!(error = %err, "Docker still unreachable");
            }
            reported = true;
            up = false;
            self.registry.send(RegistryCmd::DockerUp(false)).await;
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    async fn session(&self, backoff: &mut Backoff, up: &mut bool) -> DockerError {
        if let Err(e) = self.docker.reconnect().await {
            return e;
        }
        match self.docker.host_name().await {
            Ok(Some(name)) if self.advertise_docker_name => {
                if self.inspector.advertise_host() != name {
                    info!(advertise_host = %name, "In a container: engines published on the host are advertised at Docker's name for it, {name}");
                }
                self.inspector.set_advertise_host(name.clone());
                self.registry.send(RegistryCmd::HostName(name)).await;
            }
            Ok(_) => {}
            Err(e) => return e,
        }
        if let Some(own) = &self.inspector.matcher.own_id {
            match self.docker.inspect(own).await {
                Ok(c) => self.reach.set_own(crate::reach::OwnNetwork::of(&c)),
                Err(e) => return e,
            }
        }
        // Taken before the list: events from this second on are replayed by Docker.
        let since = chrono::Utc::now().timestamp() - 1;
        let mut events = match self.docker.events(since) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let engines = match self.list().await {
            Ok(l) => l,
            Err(e) => return e,
        };
        info!(
            engines = engines.len(),
            "Docker connected; listed running engines"
        );
        self.registry.send(RegistryCmd::Sync(engines)).await;
        self.registry.send(RegistryCmd::DockerUp(true)).await;
        *up = true;
        backoff.reset();
        let mut resync = tokio::time::interval(self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        // Engines read once more shortly after they started: a wrapper may not have started
        // the engine with its flags yet, nor the engine made its cache directory.
        let mut again: JoinSet<String> = JoinSet::new();
        let mut pending: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        let action = ev.action.unwrap_or_default();
                        let Some(id) = ev.actor.and_then(|a| a.id) else { continue };
                        debug!(action = %action, container_id = %crate::model::id12(&id), "docker event");
                        if let Err(e) = self.on_event(&action, &id).await {
                            return e;
                        }
                        if action == "start" && self.inspector.unsettled(&id) && pending.insert(id.clone()) {
                            again.spawn(async move {
                                tokio::time::sleep(READ_AGAIN_AFTER).await;
                                id
                            });
                        }
                    }
                    Some(Err(e)) => return e,
                    None => return DockerError::Api { call: "events", message: "stream ended".into() },
                },
                Some(Ok(id)) = again.join_next(), if !again.is_empty() => {
                    pending.remove(&id);
                    if self.registry.snapshot().engines.iter().any(|e| e.engine.container_id == id && e.running) {
                        if let Err(e) = self.refresh(&id).await {
                            return e;
                        }
                    }
                }
                _ = resync.tick() => match self.list().await {
                    Ok(l) => {
                        let ids: HashSet<&str> = l.iter().map(|d| d.container_id.as_str()).collect();
                        self.inspector.retain(|id| ids.contains(id));
                        self.registry.send(RegistryCmd::Sync(l)).await
                    }
                    Err(e) => return e,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matcher::{glob_match, is_image_id};
    use super::response::{NetView, Owner};
    use super::*;
    use crate::config::LabelMatch;
    use crate::model::CacheChoice;
    use bollard::models::ContainerInspectResponse;
    use std::collections::BTreeMap;

    #[test]
    fn glob_matches_whole_names() {
        assert!(glob_match(
            "*acestream*",
            "ghcr.io/x/acestream-engine:latest"
        ));
        assert!(glob_match("*acelink*", "acelink"));
        assert!(!glob_match("*acestream*", "nginx:latest"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "x"));
        assert!(glob_match("fake-*:*", "fake-engine:abc"));
    }

    #[test]
    fn image_ids_are_told_from_names() {
        assert!(is_image_id(
            "sha256:762ba2a47c9272f72a523aed092dafe8944e5f1262c5981e8e0220839f9cea0a"
        ));
        assert!(is_image_id("762ba2a47c92"));
        assert!(is_image_id(""));
        assert!(!is_image_id("acestream/engine:latest"));
        assert!(!is_image_id("sha256:nothex"));
        assert!(!is_image_id("762ba2a47c9"));
    }

    fn cache() -> CacheChoice {
        CacheChoice {
            path: "/c".into(),
            written: "/c".into(),
            source: crate::model::CachePathSource::Config,
            error: None,
            medium: crate::model::CacheMedium::Disk,
        }
    }

    fn matcher() -> Matcher {
        Matcher {
            labels: vec!["acestream.engine=true".parse().unwrap()],
            images: vec![],
            engine_port: 6878,
            advertise_host: "engines.example.net".into(),
            own_id: None,
        }
    }

    /// An inspect response as Docker 20.10 gives it, cut to the fields discovery reads.
    fn inspect(
        id: &str,
        network_mode: &str,
        settings: serde_json::Value,
    ) -> ContainerInspectResponse {
        serde_json::from_value(serde_json::json!({
            "Id": id,
            "Name": format!("/{id}-name"),
            "State": {"Running": true, "Pid": 4242},
            "Config": {"Image": "x", "Hostname": "h", "Labels": {"acestream.engine": "true"}},
            "HostConfig": {"NetworkMode": network_mode},
            "NetworkSettings": settings,
        }))
        .unwrap()
    }

    fn bridge(ip: &str, ports: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "Ports": ports,
            "Networks": {"bridge": {"IPAddress": ip, "Aliases": null, "DNSNames": null}}
        })
    }

    const ID: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
    const OWNER: &str = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_bridged_engine_is_its_published_port_or_its_ip() {
        let m = matcher();
        let c = inspect(
            ID,
            "default",
            bridge(
                "172.17.0.5",
                serde_json::json!({
                    "6878/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32820"}]
                }),
            ),
        );
        let d = m.engine_from(&c, None, None, cache()).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 32820));
        assert_eq!(d.runtime.net, NetMode::Own);
        assert_eq!(d.runtime.probe, Some("172.17.0.5:6878".parse().unwrap()));
        // Unpublished, on a user-defined network: its IP and the engine port.
        let c = inspect(
            ID,
            "acenet",
            serde_json::json!({
                "Ports": {},
                "Networks": {"acenet": {"IPAddress": "10.9.0.3", "Aliases": ["engine"], "DNSNames": ["engine", "x"]}}
            }),
        );
        let d = m.engine_from(&c, None, None, cache()).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("10.9.0.3", 6878));
        assert!(d.runtime.aliases.contains(&"engine".to_string()));
        // No network at all: not a bare name, the host and the engine port; nowhere to probe.
        let c = inspect(ID, "none", serde_json::json!({"Ports": {}, "Networks": {}}));
        let d = m.engine_from(&c, None, None, cache()).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 6878));
        assert_eq!(d.runtime.probe, None);
    }

    #[test]
    fn a_host_network_engine_is_the_advertised_host_and_probed_on_loopback() {
        let mut c = inspect(
            ID,
            "host",
            serde_json::json!({
                "Ports": {},
                "Networks": {"host": {"IPAddress": "", "Aliases": null}}
            }),
        );
        c.config
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("acestream.http_port".into(), "16211".into());
        let d = matcher().engine_from(&c, None, None, cache()).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 16211));
        assert_eq!(d.runtime.net, NetMode::Host);
        assert_eq!(d.runtime.host_port, Some(16211));
        assert_eq!(d.runtime.probe, Some("127.0.0.1:16211".parse().unwrap()));
        assert!(d.runtime.ips.is_empty());
        // The port from the command line when no label names it; the label wins over it.
        let c = inspect(ID, "host", serde_json::json!({"Ports": {}, "Networks": {}}));
        assert_eq!(
            matcher()
                .engine_from(&c, None, Some(16214), cache())
                .unwrap()
                .port,
            16214
        );
    }

    #[test]
    fn an_engine_in_another_containers_namespace_takes_the_owners_address() {
        let m = matcher();
        let c = inspect(
            ID,
            &format!("container:{OWNER}"),
            serde_json::json!({"Ports": {}, "Networks": {}}),
        );
        let owner = |view: Option<NetView>| Owner {
            id: OWNER.into(),
            host_network: false,
            view,
            pid: 0,
        };
        let published = NetView {
            ips: vec!["172.17.0.9".parse().unwrap()],
            aliases: vec!["gluetun".into()],
            published: BTreeMap::from([(6878, 40001), (6879, 40002)]),
        };
        let d = m
            .engine_from(&c, Some(&owner(Some(published.clone()))), None, cache())
            .unwrap();
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 40001));
        assert_eq!(
            d.runtime.net,
            NetMode::Container {
                owner: OWNER.into()
            }
        );
        assert_eq!(d.runtime.probe, Some("172.17.0.9:6878".parse().unwrap()));
        assert!(d.runtime.aliases.contains(&"gluetun".to_string()));
        // Another engine of the same namespace is told apart by its port.
        let d = m
            .engine_from(
                &c,
                Some(&owner(Some(published.clone()))),
                Some(6879),
                cache(),
            )
            .unwrap();
        assert_eq!(d.port, 40002);
        // Not published by the owner: the owner's IP and the engine port.
        let d = m
            .engine_from(&c, Some(&owner(Some(published))), Some(7000), cache())
            .unwrap();
        assert_eq!((d.host.as_str(), d.port), ("172.17.0.9", 7000));
        // The owner stopped: no address of its own, nowhere to probe, never a bare name.
        let d = m
            .engine_from(&c, Some(&owner(None)), None, cache())
            .unwrap();
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 6878));
        assert_eq!(d.runtime.probe, None);
        // An owner on the host's network: as if the engine were.
        let host = Owner {
            id: OWNER.into(),
            host_network: true,
            view: None,
            pid: 0,
        };
        let d = m.engine_from(&c, Some(&host), None, cache()).unwrap();
        assert_eq!(d.runtime.probe, Some("127.0.0.1:6878".parse().unwrap()));
        assert_eq!((d.host.as_str(), d.port), ("engines.example.net", 6878));
    }

    #[test]
    fn matches_label_or_image() {
        let m = Matcher {
            labels: vec![
                LabelMatch {
                    key: "acestream.engine".into(),
                    value: Some("true".into()),
                },
                LabelMatch {
                    key: "flag".into(),
                    value: None,
                },
            ],
            images: vec!["*acestream*".into()],
            engine_port: 6878,
            advertise_host: "h".into(),
            own_id: None,
        };
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(m.is_engine("busybox", &l("acestream.engine", "true")));
        assert!(!m.is_engine("busybox", &l("acestream.engine", "false")));
        assert!(m.is_engine("busybox", &l("flag", "anything")));
        assert!(m.is_engine("my/acestream:1", &BTreeMap::new()));
        assert!(!m.is_engine("busybox", &BTreeMap::new()));
        // The agent's own image: never an engine, whatever matches.
        let mut agent = l("acestream.engine", "true");
        agent.insert(IMAGE_TITLE_LABEL.into(), AGENT_IMAGE_TITLE.into());
        assert!(!m.is_engine("my/acestream:1", &agent));
    }
}
