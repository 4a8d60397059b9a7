//! Discovery (docs/architecture.md#discovery): list running containers, follow Docker events,
//! re-list every `discovery.resync_interval`, reconnect with backoff. Sends
//! `RegistryCmd::{Sync, Upsert, Remove, DockerUp}`; owns no engine state.
//!
//! Shape after vector's docker_logs source: the events stream is opened `since` a timestamp
//! taken *before* the list, so a container started between the two is not missed (it is then
//! seen twice, which the registry's upsert makes harmless). Unlike vector, the first list also
//! retries, and the registry keeps the last known engines while Docker is away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::cache;
use crate::config::{Config, LabelMatch};
use crate::container::cmdline::{self, EngineArgs};
use crate::container::inside;
use crate::docker::{DockerClient, DockerError};
use crate::logging;
use crate::model::{CacheChoice, DiscoveredEngine, Mount, MountKind, NetMode, Runtime};
use crate::registry::CACHE_PATH_LABEL;
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
fn env_value(env: &[String], key: &str) -> Option<String> {
    env.iter().rev().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

/// What the host sees of an engine container's processes.
struct HostRead {
    processes: Vec<cmdline::Process>,
    /// The argument files their command lines (and the image's) name, as read through the
    /// container's root: `None` for one that could not be read.
    files: HashMap<String, Option<String>>,
    /// The container's root could be opened (else the files are for `docker exec` to read:
    /// `/proc/<pid>/cmdline` is readable without the privilege `root` needs).
    root: bool,
}

/// Reads the container's processes and the argument files they name from the host. Blocking.
fn host_read(
    pid: u32,
    id: &str,
    workdir: &str,
    image_words: &[String],
) -> Result<HostRead, String> {
    let processes = inside::processes(pid, id).map_err(|e| e.to_string())?;
    let root = inside::root(pid, id).ok();
    let mut files = HashMap::new();
    let mut read = |p: &str| {
        let text = root
            .as_ref()
            .and_then(|r| inside::read_file(r, p, workdir).ok());
        files.insert(p.to_string(), text.clone());
        text
    };
    cmdline::pick_engine(&processes, &mut read);
    cmdline::expand_arg_files(image_words, &mut read);
    Ok(HostRead {
        processes,
        files,
        root: root.is_some(),
    })
}

/// The flags of the engine's processes (`None`: none names one) and of the image's command
/// line, with argument files from `files`, and `$HOME` of the engine process (or the main one).
fn args_from(
    processes: &[cmdline::Process],
    image_words: &[String],
    files: &HashMap<String, Option<String>>,
) -> (Option<EngineArgs>, EngineArgs, Option<String>) {
    let mut read = |p: &str| files.get(p).cloned().flatten();
    let found = cmdline::pick_engine(processes, &mut read);
    let home = found
        .as_ref()
        .and_then(|(i, _)| env_value(&processes[*i].env, "HOME"))
        .or_else(|| processes.first().and_then(|p| env_value(&p.env, "HOME")));
    let (words, _) = cmdline::expand_arg_files(image_words, &mut read);
    (found.map(|(_, a)| a), cmdline::parse_flags(&words), home)
}

/// The image name and labels of a container, from its inspect data.
fn image_and_labels(c: &ContainerInspectResponse) -> (String, BTreeMap<String, String>) {
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

/// Whose network namespace a container uses, as `HostConfig.NetworkMode` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetRef {
    Own,
    Host,
    /// `container:<id or name>` (compose's `service:<name>` arrives as this, with the id).
    Container(String),
}

pub fn network_of(c: &ContainerInspectResponse) -> NetRef {
    match c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
    {
        Some("host") => NetRef::Host,
        Some(m) => match m.strip_prefix("container:") {
            Some(r) if !r.is_empty() => NetRef::Container(r.to_string()),
            _ => NetRef::Own,
        },
        None => NetRef::Own,
    }
}

/// What a network namespace shows of itself in its owner's inspect data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetView {
    /// On Docker's networks, sorted by network name.
    pub ips: Vec<IpAddr>,
    pub aliases: Vec<String>,
    /// Container TCP port → the first host port it is published on.
    pub published: BTreeMap<u16, u16>,
}

impl NetView {
    pub fn of(c: &ContainerInspectResponse) -> NetView {
        let mut v = NetView::default();
        let Some(net) = c.network_settings.as_ref() else {
            return v;
        };
        if let Some(nets) = net.networks.as_ref() {
            let mut nets: Vec<_> = nets.iter().collect();
            nets.sort_by(|a, b| a.0.cmp(b.0));
            for (_, ep) in nets {
                if let Some(ip) = ep.ip_address.as_deref().and_then(|s| s.parse().ok()) {
                    v.ips.push(ip);
                }
                for a in ep
                    .aliases
                    .iter()
                    .flatten()
                    .chain(ep.dns_names.iter().flatten())
                {
                    v.aliases.push(a.clone());
                }
            }
        }
        for (key, bindings) in net.ports.iter().flatten() {
            let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host = bindings
                .iter()
                .flatten()
                .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok());
            if let Some(h) = host {
                v.published.insert(port, h);
            }
        }
        v
    }
}

/// The namespace owner of a container in `container:` network mode, followed to the end of a
/// chain (an owner may itself use another's namespace), as far as the agent can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The direct owner's full id: its events are followed.
    pub id: String,
    /// The chain ends in a container on the host's network.
    pub host_network: bool,
    /// What the namespace shows (IPs, published ports); `None` when the owner is not running.
    pub view: Option<NetView>,
    /// The owner's main process, 0 when not running.
    pub pid: u32,
}

/// When an engine whose command line or cache path was not settled at its start is read again.
const READ_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// How many `container:` links are followed to the namespace's real owner.
const MAX_OWNER_CHAIN: usize = 4;

/// The container's main process as Docker reports it; 0 when not running (or not known).
/// The container's `json-file` log on the host and whether its config rotates it (`max-size`
/// set, as Docker merges the daemon's `log-opts` into each container's); `local` rotates by
/// itself.
fn log_of(c: &ContainerInspectResponse) -> Option<(String, bool)> {
    let path = c.log_path.clone().filter(|p| !p.is_empty())?;
    let config = c.host_config.as_ref()?.log_config.as_ref()?;
    let rotated = config.typ.as_deref() == Some("local")
        || config
            .config
            .as_ref()
            .and_then(|m| m.get("max-size"))
            .is_some_and(|s| !matches!(s.trim(), "" | "-1" | "0"));
    Some((path, rotated))
}

fn pid_of(c: &ContainerInspectResponse) -> u32 {
    c.state
        .as_ref()
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0)
}

/// The container's mounts: inspect's `Mounts` (bind, volume, `--mount type=tmpfs`) plus
/// `HostConfig.Tmpfs`, where `--tmpfs` mounts appear (they are not listed in `Mounts`).
pub fn mounts_of(c: &ContainerInspectResponse) -> Vec<Mount> {
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

/// Builds the full engine view of a container: its inspect data, and what it takes beyond it
/// (the namespace owner's inspect for `container:` network mode). Shared by the discovery loop
/// and the stream-event lookup of containers not listed yet.
#[derive(Clone)]
pub struct Inspector {
    pub docker: DockerClient,
    pub matcher: Matcher,
    /// `cleanup.cache_path`.
    default_cache_path: String,
    /// Deadline of the execs that read an engine container when its /proc is not visible.
    exec_timeout: Duration,
    /// What was learned of each engine container's process (its command line, its cache
    /// path), while that process runs and nothing of it may still change. std `Mutex`: held
    /// to look up or store, never across an `.await`.
    learned: Arc<Mutex<HashMap<String, Learned>>>,
    /// Engines left in a restarted owner's old namespace, already reported.
    stranded: Arc<logging::SaidOnce>,
    /// `advertise_host` learned from Docker (the agent in a container, with no
    /// `discovery.advertise_host` of its own): Docker's name for the host. std `RwLock`, held
    /// to read or replace it.
    advertise: Arc<std::sync::RwLock<Option<String>>>,
}

/// What discovery learned of one engine process.
#[derive(Clone, Debug)]
struct Learned {
    pid: u32,
    args: EngineArgs,
    cache: CacheChoice,
    /// Nothing of it can change while the process runs: its flags came from the process
    /// itself (or from the image, where the process cannot be seen), and what the cache
    /// path depends on exists.
    settled: bool,
    /// The cache path existed (its resolution is kept for the process, `keep_resolution`).
    cache_settled: bool,
}

/// Argument files of one container read through `docker exec` at most.
const MAX_EXEC_FILES: usize = 16;

/// Deadline of the host-side reads of one container (its /proc, its root).
const HOST_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Inspector {
    pub fn new(
        docker: DockerClient,
        matcher: Matcher,
        default_cache_path: String,
        exec_timeout: Duration,
    ) -> Inspector {
        Inspector {
            docker,
            matcher,
            default_cache_path,
            exec_timeout: exec_timeout.min(Duration::from_secs(10)),
            learned: Arc::default(),
            stranded: Arc::default(),
            advertise: Arc::default(),
        }
    }

    /// From now on, engines published on the host are at `host`.
    pub fn set_advertise_host(&self, host: String) {
        *self
            .advertise
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(host);
    }

    /// The address engines published on the host are at.
    pub fn advertise_host(&self) -> String {
        self.advertise
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| self.matcher.advertise_host.clone())
    }

    /// Whether what was learned of the engine may still change without a restart (its
    /// process had not named its flags yet, or its cache directory did not exist yet).
    pub fn unsettled(&self, id: &str) -> bool {
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .is_some_and(|l| !l.settled)
    }

    /// Forgets the containers `keep` rejects (gone ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
    }

    /// The engine view of an inspected container; `None` if it is not a running engine.
    pub async fn engine(&self, c: &ContainerInspectResponse) -> Option<DiscoveredEngine> {
        if !self.matcher.is_engine_container(c) {
            return None;
        }
        if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return None;
        }
        let owner = match network_of(c) {
            NetRef::Container(r) => Some(self.owner(&r).await),
            _ => None,
        };
        let learned = self.learn(c).await;
        let learned_host = self
            .advertise
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let matcher = match learned_host {
            Some(h) => std::borrow::Cow::Owned(Matcher {
                advertise_host: h,
                ..self.matcher.clone()
            }),
            None => std::borrow::Cow::Borrowed(&self.matcher),
        };
        let mut d = matcher.engine_from(
            c,
            owner.as_ref(),
            learned.args.http_port,
            learned.cache.clone(),
        )?;
        d.limits = crate::model::CacheLimits {
            disk: learned.args.disk_cache_limit,
            memory: learned.args.memory_cache_limit,
            live_cache_type: learned.args.live_cache_type.clone(),
        };
        if let Some(o) = &owner {
            self.check_namespace(&d, o);
        }
        Some(d)
    }

    /// The engine's flags and cache path: remembered for its process once settled, else
    /// learned again (docs/architecture.md#discovery, docs/cache-paths.md#order).
    async fn learn(&self, c: &ContainerInspectResponse) -> Learned {
        let id = c.id.clone().unwrap_or_default();
        let pid = pid_of(c);
        let before = self
            .learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .filter(|l| l.pid == pid)
            .cloned();
        if let Some(l) = before.as_ref().filter(|l| l.settled) {
            return l.clone();
        }
        let config = c.config.as_ref();
        let list = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
        let image_env = list(config.and_then(|c| c.env.as_ref()));
        let entrypoint = list(config.and_then(|c| c.entrypoint.as_ref()));
        let cmd = list(config.and_then(|c| c.cmd.as_ref()));
        let workdir = config
            .and_then(|c| c.working_dir.clone())
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        let label = config
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(CACHE_PATH_LABEL).cloned());
        let env_home = env_value(&image_env, "HOME");
        let user = config.and_then(|c| c.user.clone()).unwrap_or_default();
        let root_user = matches!(user.split(':').next().unwrap_or(""), "" | "root" | "0");
        let short = crate::model::id12(&id).to_string();

        // From the host: the processes themselves, their argument files, the container's
        // root. Not visible (the agent in a pid namespace of its own, no privilege): the image.
        let image_words =
            cmdline::effective_argv(&cmdline::image_argv(&entrypoint, &cmd), &image_env, false);
        let host = {
            let (id, workdir, words) = (id.clone(), workdir.clone(), image_words.clone());
            let work = tokio::task::spawn_blocking(move || host_read(pid, &id, &workdir, &words));
            match tokio::time::timeout(HOST_READ_TIMEOUT, work).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("reading the container's processes timed out".to_string()),
            }
        };
        let host = match host {
            // The processes are visible but not the container's root (no CAP_SYS_PTRACE):
            // their argument files are read through `docker exec`.
            Ok(mut h) if !h.root => {
                let words: Vec<Vec<String>> = h
                    .processes
                    .iter()
                    .map(|p| cmdline::effective_argv(&p.argv, &p.env, !p.env.is_empty()))
                    .chain([image_words.clone()])
                    .collect();
                h.files.clear();
                self.fetch_files(&id, &words, &mut h.files).await;
                Ok(h)
            }
            r => r,
        };
        let (args, home, settled_args, from_host) = match host {
            Ok(h) => match args_from(&h.processes, &image_words, &h.files) {
                (Some(args), _, home) => (args, home, true, true),
                // No process names a flag (yet: a wrapper may not have started the engine).
                (None, image, home) => (image, home, false, true),
            },
            Err(why) => {
                debug!(container_id = %short, reason = %why,
                    "the engine's processes are not visible from the host; reading its image's command line");
                let args = self.image_args(&id, &image_words).await;
                (args, None, true, false)
            }
        };
        let mut inputs = cache::path::Inputs {
            label,
            args: args.clone(),
            config_path: self.default_cache_path.clone(),
            home: home
                .or(env_home)
                .or_else(|| root_user.then(|| "/root".to_string())),
        };
        let mut q = cache::path::questions(&inputs);
        let facts = if from_host {
            let (id, q2) = (id.clone(), q.clone());
            let work = tokio::task::spawn_blocking(move || {
                inside::root(pid, &id).map(|root| inside::survey(&root, &q2))
            });
            match tokio::time::timeout(HOST_READ_TIMEOUT, work).await {
                Ok(Ok(Ok(f))) => Some(f),
                _ => None,
            }
        } else {
            None
        };
        let facts = match facts {
            Some(f) => Some(f),
            None => match self.exec_survey(&id, &q).await {
                Some((f, exec_home)) if inputs.home.is_none() && exec_home.is_some() => {
                    // The user's home, known only inside: the questions change with it.
                    inputs.home = exec_home;
                    q = cache::path::questions(&inputs);
                    self.exec_survey(&id, &q).await.map(|(f, _)| f).or(Some(f))
                }
                Some((f, _)) => Some(f),
                None => None,
            },
        };
        let asked = facts.is_some();
        let (mut cache, settled_cache) =
            cache::path::choose(&inputs, &q, &facts.unwrap_or_default(), &mounts_of(c));
        if let Some(b) = before.filter(|b| b.cache_settled) {
            let now = cache.path.clone();
            cache = cache::path::keep_resolution(&b.cache, cache);
            if cache.path != now {
                debug!(container_id = %short, cache_path = %cache.path, resolves_now_to = %now,
                    "the cache path resolves elsewhere than at discovery; keeping the path discovered");
            }
        }
        let learned = Learned {
            pid,
            args,
            cache,
            settled: settled_args && settled_cache && asked,
            cache_settled: settled_cache && asked,
        };
        debug!(container_id = %short, port = ?learned.args.http_port, cache_path = %learned.cache.path,
            source = learned.cache.source.as_str(), settled = learned.settled, "engine container read");
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, learned.clone());
        learned
    }

    /// The flags of the image's `Entrypoint` + `Cmd` (`words`, variables expanded), its
    /// argument files read inside the container by `docker exec`.
    async fn image_args(&self, id: &str, words: &[String]) -> EngineArgs {
        let mut files = HashMap::new();
        self.fetch_files(id, &[words.to_vec()], &mut files).await;
        let (words, _) = cmdline::expand_arg_files(words, &mut |p| files.get(p).cloned().flatten());
        cmdline::parse_flags(&words)
    }

    /// Reads through `docker exec` the argument files these command lines name, as they are
    /// named (a file may name another), at most `MAX_EXEC_FILES` of them.
    async fn fetch_files(
        &self,
        id: &str,
        word_lists: &[Vec<String>],
        files: &mut HashMap<String, Option<String>>,
    ) {
        for _ in 0..4 {
            let mut new: Vec<String> = vec![];
            for words in word_lists {
                let (_, asked) =
                    cmdline::expand_arg_files(words, &mut |p| files.get(p).cloned().flatten());
                new.extend(asked.into_iter().filter(|p| !files.contains_key(p)));
            }
            new.sort();
            new.dedup();
            if new.is_empty() {
                return;
            }
            for p in new {
                let text = if files.len() < MAX_EXEC_FILES {
                    self.exec_read(id, &p).await
                } else {
                    None
                };
                files.insert(p, text);
            }
        }
    }

    async fn exec_read(&self, id: &str, path: &str) -> Option<String> {
        let argv = inside::read_file_argv(path);
        match self.docker.exec(id, &argv, self.exec_timeout, |_| {}).await {
            Ok(out) if out.exit_code == 0 => Some(out.stdout),
            Ok(out) => {
                debug!(container_id = %crate::model::id12(id), path, stderr = %out.stderr.trim(), "cannot read the argument file");
                None
            }
            Err(e) => {
                debug!(container_id = %crate::model::id12(id), path, error = %e, "cannot read the argument file");
                None
            }
        }
    }

    async fn exec_survey(
        &self,
        id: &str,
        q: &cache::path::Questions,
    ) -> Option<(cache::path::Facts, Option<String>)> {
        let argv = inside::survey_argv(q);
        match self.docker.exec(id, &argv, self.exec_timeout, |_| {}).await {
            Ok(out) => inside::parse_survey(q, &out.stdout),
            Err(e) => {
                debug!(container_id = %crate::model::id12(id), error = %e, "cannot look inside the engine container");
                None
            }
        }
    }

    /// Docker does not move a container to its namespace owner's new namespace when the owner
    /// restarts: the engine is left in the old one, which nothing reaches. Said once per
    /// owner process, as a warning (the engine is also unhealthy from then on).
    fn check_namespace(&self, d: &DiscoveredEngine, o: &Owner) {
        let netns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if d.runtime.pid == 0 || o.pid == 0 || o.host_network {
            return;
        }
        let (Some(engine), Some(owner)) = (netns(d.runtime.pid), netns(o.pid)) else {
            return;
        };
        let key = format!("{}/{}", d.container_id, o.pid);
        if engine != owner && self.stranded.first(&key) {
            warn!(container_id = %crate::model::id12(&d.container_id), container_name = %d.container_name,
                owner = %crate::model::id12(&o.id),
                "Engine {} is no longer in the network namespace of {} (it restarted): nothing \
                 can reach the engine until it is restarted too",
                d.container_name, crate::model::id12(&o.id));
        }
    }

    /// Inspects `id` and builds its engine view; `Ok(None)` if Docker does not have it or it is
    /// not a running engine.
    pub async fn engine_by_id(&self, id: &str) -> Result<Option<DiscoveredEngine>, DockerError> {
        match self.docker.inspect(id).await {
            Ok(c) => Ok(self.engine(&c).await),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The namespace owner named by `reference` (an id or a name), followed through a chain of
    /// `container:` owners. What cannot be read (gone, Docker failing) is an owner with no view:
    /// the engine is then reachable at no known address, which is the truth.
    async fn owner(&self, reference: &str) -> Owner {
        let mut next = reference.to_string();
        let mut direct: Option<String> = None;
        for _ in 0..MAX_OWNER_CHAIN {
            let Ok(o) = self.docker.inspect(&next).await else {
                break;
            };
            let id = o.id.clone().unwrap_or_else(|| next.clone());
            let direct = direct.get_or_insert(id).clone();
            let state = o.state.as_ref();
            let running = state.and_then(|s| s.running).unwrap_or(false);
            let pid = pid_of(&o);
            match network_of(&o) {
                NetRef::Host => {
                    return Owner {
                        id: direct,
                        host_network: true,
                        view: None,
                        pid,
                    }
                }
                NetRef::Container(r) => next = r,
                NetRef::Own => {
                    return Owner {
                        id: direct,
                        host_network: false,
                        view: running.then(|| NetView::of(&o)),
                        pid,
                    }
                }
            }
        }
        Owner {
            id: direct.unwrap_or_else(|| reference.to_string()),
            host_network: false,
            view: None,
            pid: 0,
        }
    }
}

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

impl Inspector {
    /// Every running engine, as Docker lists them.
    pub async fn list(&self) -> Result<Vec<DiscoveredEngine>, DockerError> {
        let summaries = self.docker.list_running().await?;
        let matcher = &self.matcher;
        let mut ids = vec![];
        for s in summaries {
            let Some(id) = s.id else { continue };
            // Cheap pre-filter on the list's own labels and image before an inspect per container.
            // Once the name a container was created from points to another image (a newer pull
            // of the same tag), Docker lists the old image's ID instead of the name; only
            // inspect's `Config.Image` still has the name the image globs must see.
            let labels: BTreeMap<String, String> =
                s.labels.unwrap_or_default().into_iter().collect();
            let image = s.image.as_deref().unwrap_or("");
            let name_unknown = !matcher.images.is_empty()
                && (s.image_id.as_deref() == Some(image) || is_image_id(image));
            if matcher.is_own(&id) || (!name_unknown && !matcher.is_engine(image, &labels)) {
                continue;
            }
            ids.push(id);
        }
        // Several at once: reading a container (its /proc, or its image's files by exec where
        // /proc is not visible) must not hold up the others.
        let read = futures_util::stream::iter(ids)
            .map(|id| async move {
                match self.docker.inspect(&id).await {
                    Ok(c) => Ok(self.engine(&c).await),
                    Err(DockerError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(LIST_CONCURRENCY);
        let results: Vec<Result<Option<DiscoveredEngine>, DockerError>> = read.collect().await;
        let mut out = vec![];
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// Looks up in Docker what a stream event names but the registry does not have yet
/// (docs/deployments.md#stream-events-from-proxies: a container seconds old, or the agent just
/// started and its first list is not done): by container id one inspect, by address one list. At
/// most one lookup runs at a time; a list is not repeated for a request that arrived before the
/// last one began (it was answered by it), and an id Docker did not have as an engine is not asked
/// again for a second, so a misbehaving proxy cannot turn its requests into a load on Docker.
#[derive(Clone)]
pub struct Lookup {
    inspector: Inspector,
    registry: RegistryHandle,
    gate: Arc<tokio::sync::Mutex<LookupState>>,
}

#[derive(Default)]
struct LookupState {
    last_list: Option<std::time::Instant>,
    misses: HashMap<String, std::time::Instant>,
}

/// Containers inspected and read at once while listing.
const LIST_CONCURRENCY: usize = 8;
/// Lists made for stream events are at least this far apart.
const MIN_LIST_SPACING: Duration = Duration::from_secs(1);
/// How long an id that Docker did not have as an engine is not asked about again.
const MISS_TTL: Duration = Duration::from_secs(1);
/// Misses remembered at most.
const MAX_MISSES: usize = 1024;

impl Lookup {
    pub fn new(inspector: Inspector, registry: RegistryHandle) -> Lookup {
        Lookup {
            inspector,
            registry,
            gate: Arc::default(),
        }
    }

    /// The address engines published on the host are advertised at.
    pub fn advertise_host(&self) -> String {
        self.inspector.advertise_host()
    }

    /// Brings the engine a stream event names into the registry if Docker has it, before the
    /// event is applied again (commands are applied in order: the upsert comes first).
    /// `arrived` is when the request came in.
    pub async fn find(&self, container_id: Option<&str>, arrived: std::time::Instant) {
        let mut state = self.gate.lock().await;
        if self.inspector.docker.ensure_connected().await.is_err() {
            return;
        }
        match container_id {
            Some(id) => {
                let now = std::time::Instant::now();
                state
                    .misses
                    .retain(|_, at| now.duration_since(*at) < MISS_TTL);
                if state.misses.contains_key(id) {
                    return;
                }
                match self.inspector.engine_by_id(id).await {
                    Ok(Some(d)) => self.registry.send(RegistryCmd::Upsert(Box::new(d))).await,
                    Ok(None) | Err(_) => {
                        if state.misses.len() < MAX_MISSES {
                            state.misses.insert(id.to_string(), now);
                        }
                    }
                }
            }
            None => {
                // Answered by a list that began after the request came, or one less than a
                // second ago (a flood of unknown addresses costs one list a second).
                if state
                    .last_list
                    .is_some_and(|t| t >= arrived || t.elapsed() < MIN_LIST_SPACING)
                {
                    return;
                }
                let began = std::time::Instant::now();
                let Ok(list) = self.inspector.list().await else {
                    return;
                };
                // Stamped once done: a list cut short (the request's deadline) answered nobody.
                state.last_list = Some(began);
                let snap = self.registry.snapshot();
                for d in list {
                    let known = snap
                        .engines
                        .iter()
                        .any(|e| e.running && e.engine.container_id == d.container_id);
                    if !known {
                        self.registry.send(RegistryCmd::Upsert(Box::new(d))).await;
                    }
                }
            }
        }
    }
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
