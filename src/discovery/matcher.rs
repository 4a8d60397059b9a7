//! Which containers are engines (`discovery.labels`, `discovery.images`; never the agent
//! itself), and an engine's address, port and runtime from its inspect data (`engine_from`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bollard::models::ContainerInspectResponse;

use crate::config::{Config, LabelMatch};
use crate::model::{CacheChoice, DiscoveredEngine, NetMode, Runtime};

use super::response::{log_of, mounts_of, network_of, pid_of, NetRef, NetView, Owner};
use super::{AGENT_IMAGE_TITLE, HOST_PORT_LABEL, IMAGE_TITLE_LABEL, PORT_LABEL};

/// What makes a container an engine, and how to address it.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub labels: Vec<LabelMatch>,
    pub images: Vec<String>,
    pub engine_port: u16,
    pub advertise_host: String,
    /// The agent's own container, when it runs in one: never an engine (its image matches
    /// `*acestream*`).
    pub own_id: Option<String>,
}

impl Matcher {
    pub fn from_config(cfg: &Config) -> Matcher {
        Matcher {
            labels: cfg.discovery.labels.clone(),
            images: cfg.discovery.images.clone(),
            engine_port: cfg.discovery.engine_port,
            advertise_host: cfg.discovery.advertise_host.clone(),
            own_id: None,
        }
    }

    pub fn is_engine(&self, image: &str, labels: &BTreeMap<String, String>) -> bool {
        // A container of the agent's own image (itself, or another agent on this host) is never
        // an engine, though `*acestream*` matches its image name.
        if labels.get(IMAGE_TITLE_LABEL).map(String::as_str) == Some(AGENT_IMAGE_TITLE) {
            return false;
        }
        let labels: std::collections::HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.labels.iter().any(|m| m.matches(&labels))
            || self.images.iter().any(|g| glob_match(g, image))
    }

    /// Whether the container is an engine by its labels and image (inspect data).
    pub fn is_engine_container(&self, c: &ContainerInspectResponse) -> bool {
        let (image, labels) = image_and_labels(c);
        !self.is_own(c.id.as_deref().unwrap_or("")) && self.is_engine(&image, &labels)
    }

    /// Whether `id` is the agent's own container.
    pub fn is_own(&self, id: &str) -> bool {
        self.own_id.as_deref() == Some(id)
    }

    /// Builds the engine view of a container, or `None` if it is not an engine or not running.
    /// `owner` is the namespace owner of a container in another container's network
    /// namespace (`network_of` says whose), as `Owner::of` read it; `port` the engine's HTTP
    /// port from its command line, when it names one (the label wins over it).
    pub fn engine_from(
        &self,
        c: &ContainerInspectResponse,
        owner: Option<&Owner>,
        port: Option<u16>,
        cache: CacheChoice,
    ) -> Option<DiscoveredEngine> {
        let id = c.id.clone()?;
        let (image, labels) = image_and_labels(c);
        if self.is_own(&id) || !self.is_engine(&image, &labels) {
            return None;
        }
        let state = c.state.as_ref();
        if !state.and_then(|s| s.running).unwrap_or(false) {
            return None;
        }
        let pid = pid_of(c);
        let name = c
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let container_port = labels
            .get(PORT_LABEL)
            .and_then(|p| p.parse().ok())
            .or(port)
            .unwrap_or(self.engine_port);
        let label_host_port = labels.get(HOST_PORT_LABEL).and_then(|p| p.parse().ok());
        let own = NetView::of(c);
        let (net, view) = match (network_of(c), owner) {
            (NetRef::Host, _) => (NetMode::Host, None),
            (NetRef::Container(_), Some(o)) if o.host_network => (
                NetMode::Container {
                    owner: o.id.clone(),
                },
                None,
            ),
            (NetRef::Container(_), Some(o)) => (
                NetMode::Container {
                    owner: o.id.clone(),
                },
                Some(o.view.clone().unwrap_or_default()),
            ),
            // The owner could not be read: nothing of the namespace is known.
            (NetRef::Container(r), None) => {
                (NetMode::Container { owner: r }, Some(NetView::default()))
            }
            (NetRef::Own, _) => (NetMode::Own, Some(own.clone())),
        };
        let on_host_network = view.is_none();
        let view = view.unwrap_or_default();
        let host_port = label_host_port.or(if on_host_network {
            Some(container_port)
        } else {
            view.published.get(&container_port).copied()
        });
        let ips = view.ips.clone();
        let mut aliases = view.aliases.clone();
        aliases.extend(own.aliases.iter().cloned());
        if let Some(h) = c.config.as_ref().and_then(|c| c.hostname.clone()) {
            aliases.push(h);
        }
        aliases.push(id.get(..12).unwrap_or(&id).to_string());
        aliases.sort();
        aliases.dedup();
        // `host` is always something a client on this host can dial, never a bare name.
        let (host, port) = match (host_port, ips.first()) {
            (Some(hp), _) => (self.advertise_host.clone(), hp),
            (None, Some(ip)) => (ip.to_string(), container_port),
            (None, None) => (self.advertise_host.clone(), container_port),
        };
        let probe = if on_host_network {
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                container_port,
            ))
        } else {
            ips.first()
                .map(|ip| SocketAddr::new(*ip, container_port))
                .or_else(|| host_port.map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)))
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
                net,
                probe,
                mounts,
                paused: state.and_then(|s| s.paused).unwrap_or(false),
                log: log_of(c),
            },
            cache,
            limits: Default::default(),
        })
    }
}

/// A variable of an environment list (`KEY=VALUE`), the last one set.
pub(super) fn env_value(env: &[String], key: &str) -> Option<String> {
    env.iter().rev().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

/// The image name and labels of a container, from its inspect data.
pub(super) fn image_and_labels(c: &ContainerInspectResponse) -> (String, BTreeMap<String, String>) {
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
    (image, labels)
}

/// Whether `image`, as Docker's container list shows it, is an image ID (`sha256:<hex>`, or a
/// bare 12- or 64-digit hex ID) rather than a name. Empty counts as unknown too.
pub(super) fn is_image_id(image: &str) -> bool {
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
