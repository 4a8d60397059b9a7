//! Discovery (SPEC §1): list running containers, follow Docker events, re-list every
//! `discovery.resync_interval`, reconnect with backoff. Sends `RegistryCmd::{Sync, Upsert,
//! Remove, DockerUp}`; owns no engine state.
//!
//! Shape after vector's docker_logs source: the events stream is opened `since` a timestamp
//! taken *before* the list, so a container started between the two is not missed (it is then
//! seen twice, which the registry's upsert makes harmless). Unlike vector, the first list also
//! retries, and the registry keeps the last known engines while Docker is away.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, LabelMatch};
use crate::docker::{DockerClient, DockerError};
use crate::model::{DiscoveredEngine, Mount, MountKind, Runtime};
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;

/// Label naming the engine's HTTP port inside the container.
pub const PORT_LABEL: &str = "acestream.http_port";
/// Label naming the host port the engine's HTTP port is published on.
pub const HOST_PORT_LABEL: &str = "host.http_port";

/// What makes a container an engine, and how to address it.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub labels: Vec<LabelMatch>,
    pub images: Vec<String>,
    pub engine_port: u16,
    pub advertise_host: String,
}

impl Matcher {
    pub fn from_config(cfg: &Config) -> Matcher {
        Matcher {
            labels: cfg.discovery.labels.clone(),
            images: cfg.discovery.images.clone(),
            engine_port: cfg.discovery.engine_port,
            advertise_host: cfg.discovery.advertise_host.clone(),
        }
    }

    pub fn is_engine(&self, image: &str, labels: &BTreeMap<String, String>) -> bool {
        let labels: std::collections::HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.labels.iter().any(|m| m.matches(&labels))
            || self.images.iter().any(|g| glob_match(g, image))
    }

    /// Builds the engine view of a container, or `None` if it is not an engine or not running.
    pub fn engine_from(&self, c: &ContainerInspectResponse) -> Option<DiscoveredEngine> {
        let id = c.id.clone()?;
        let config = c.config.as_ref();
        let labels: BTreeMap<String, String> = config
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let image = config
            .and_then(|c| c.image.clone())
            .or_else(|| c.image.clone())
            .unwrap_or_default();
        if !self.is_engine(&image, &labels) {
            return None;
        }
        let state = c.state.as_ref();
        if !state.and_then(|s| s.running).unwrap_or(false) {
            return None;
        }
        let pid = state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let name = c
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let container_port = labels
            .get(PORT_LABEL)
            .and_then(|p| p.parse().ok())
            .unwrap_or(self.engine_port);
        let net = c.network_settings.as_ref();
        let published = net
            .and_then(|n| n.ports.as_ref())
            .and_then(|p| p.get(&format!("{container_port}/tcp")))
            .and_then(|b| b.as_ref())
            .and_then(|b| {
                b.iter()
                    .filter_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                    .next()
            });
        let host_port = labels
            .get(HOST_PORT_LABEL)
            .and_then(|p| p.parse().ok())
            .or(published);
        let mut ips: Vec<IpAddr> = vec![];
        let mut aliases: Vec<String> = vec![];
        if let Some(nets) = net.and_then(|n| n.networks.as_ref()) {
            let mut nets: Vec<_> = nets.iter().collect();
            nets.sort_by(|a, b| a.0.cmp(b.0));
            for (_, ep) in nets {
                if let Some(ip) = ep.ip_address.as_deref().and_then(|s| s.parse().ok()) {
                    ips.push(ip);
                }
                for a in ep
                    .aliases
                    .iter()
                    .flatten()
                    .chain(ep.dns_names.iter().flatten())
                {
                    aliases.push(a.clone());
                }
            }
        }
        if let Some(h) = config.and_then(|c| c.hostname.clone()) {
            aliases.push(h);
        }
        aliases.push(id.get(..12).unwrap_or(&id).to_string());
        aliases.sort();
        aliases.dedup();
        let (host, port) = match (host_port, ips.first()) {
            (Some(hp), _) => (self.advertise_host.clone(), hp),
            (None, Some(ip)) => (ip.to_string(), container_port),
            (None, None) => (name.clone(), container_port),
        };
        let mounts = mounts_of(c);
        Some(DiscoveredEngine {
            container_id: id,
            container_name: name,
            image,
            labels,
            host,
            port,
            runtime: Runtime {
                pid,
                container_port,
                host_port,
                ips,
                aliases,
                mounts,
            },
        })
    }
}

/// The container's mounts: inspect's `Mounts` (bind, volume, `--mount type=tmpfs`) plus
/// `HostConfig.Tmpfs`, where `--tmpfs` mounts appear (they are not listed in `Mounts`).
fn mounts_of(c: &ContainerInspectResponse) -> Vec<Mount> {
    let mut out: Vec<Mount> = c
        .mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let kind = match m.typ.as_deref() {
                Some("bind") => MountKind::Bind,
                Some("volume") => MountKind::Volume,
                Some("tmpfs") => MountKind::Tmpfs,
                _ => MountKind::Other,
            };
            Some(Mount {
                kind,
                source: m.source.clone().unwrap_or_default(),
                destination: m.destination.clone()?,
            })
        })
        .collect();
    if let Some(tmpfs) = c.host_config.as_ref().and_then(|h| h.tmpfs.as_ref()) {
        let mut dests: Vec<&String> = tmpfs.keys().collect();
        dests.sort();
        for d in dests {
            out.push(Mount {
                kind: MountKind::Tmpfs,
                source: String::new(),
                destination: d.clone(),
            });
        }
    }
    out
}

/// Whether `image`, as Docker's container list shows it, is an image ID (`sha256:<hex>`, or a
/// bare 12- or 64-digit hex ID) rather than a name. Empty counts as unknown too.
fn is_image_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    image.is_empty()
        || ((hex.len() == 12 || hex.len() == 64) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Shell-style glob with `*` and `?`, on the whole string (image names have no path rules).
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub struct Discovery {
    pub docker: DockerClient,
    pub registry: RegistryHandle,
    pub matcher: Matcher,
    pub resync: Duration,
}

impl Discovery {
    async fn list(&self) -> Result<Vec<DiscoveredEngine>, DockerError> {
        let summaries = self.docker.list_running().await?;
        let mut out = vec![];
        for s in summaries {
            let Some(id) = s.id else { continue };
            // Cheap pre-filter on the list's own labels and image before an inspect per container.
            // Once the name a container was created from points to another image (a newer pull
            // of the same tag), Docker lists the old image's ID instead of the name; only
            // inspect's `Config.Image` still has the name the image globs must see.
            let labels: BTreeMap<String, String> =
                s.labels.unwrap_or_default().into_iter().collect();
            let image = s.image.as_deref().unwrap_or("");
            let name_unknown = !self.matcher.images.is_empty()
                && (s.image_id.as_deref() == Some(image) || is_image_id(image));
            if !name_unknown && !self.matcher.is_engine(image, &labels) {
                continue;
            }
            match self.docker.inspect(&id).await {
                Ok(c) => out.extend(self.matcher.engine_from(&c)),
                Err(DockerError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn on_event(&self, action: &str, id: &str) -> Result<(), DockerError> {
        match action {
            "start" | "rename" => match self.docker.inspect(id).await {
                Ok(c) => match self.matcher.engine_from(&c) {
                    Some(d) => self.registry.send(RegistryCmd::Upsert(d)).await,
                    None => {
                        self.registry
                            .send(RegistryCmd::Remove(id.to_string()))
                            .await
                    }
                },
                Err(DockerError::NotFound { .. }) => {
                    self.registry
                        .send(RegistryCmd::Remove(id.to_string()))
                        .await
                }
                Err(e) => return Err(e),
            },
            "die" | "stop" | "destroy" => {
                self.registry
                    .send(RegistryCmd::Remove(id.to_string()))
                    .await
            }
            _ => {}
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
                    }
                    Some(Err(e)) => return e,
                    None => return DockerError::Api { call: "events", message: "stream ended".into() },
                },
                _ = resync.tick() => match self.list().await {
                    Ok(l) => self.registry.send(RegistryCmd::Sync(l)).await,
                    Err(e) => return e,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(m.is_engine("busybox", &l("acestream.engine", "true")));
        assert!(!m.is_engine("busybox", &l("acestream.engine", "false")));
        assert!(m.is_engine("busybox", &l("flag", "anything")));
        assert!(m.is_engine("my/acestream:1", &BTreeMap::new()));
        assert!(!m.is_engine("busybox", &BTreeMap::new()));
    }
}
