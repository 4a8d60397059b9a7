//! One container's full engine view from its inspect data and what the host (or `docker exec`)
//! shows of it: network namespace and its owner, addresses, processes and command line, cache
//! path and medium, mounts, log. Shared by the discovery loop and the stream-event lookup.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use tracing::{debug, warn};

use crate::cache;
use crate::container::cmdline::{self, EngineArgs};
use crate::container::{processes, root, survey};
use crate::docker::{DockerClient, DockerError};
use crate::logging;
use crate::model::{CacheChoice, DiscoveredEngine};
use crate::registry::CACHE_PATH_LABEL;

use super::matcher::{env_value, is_image_id, Matcher};
use super::response::{mounts_of, network_of, pid_of, NetRef, NetView, Owner};

/// What the host sees of an engine container's processes.
pub(super) struct HostRead {
    processes: Vec<cmdline::Process>,
    /// The argument files their command lines (and the image's) name, as read through the
    /// container's root: `None` for one that could not be read.
    files: HashMap<String, Option<String>>,
    /// The container's root could be opened (else the files are for `docker exec` to read:
    /// `/proc/<pid>/cmdline` is readable without the privilege `root` needs).
    root: bool,
}

/// Reads the container's processes and the argument files they name from the host. Blocking.
pub(super) fn host_read(
    pid: u32,
    id: &str,
    workdir: &str,
    image_words: &[String],
) -> Result<HostRead, String> {
    let processes = processes::processes(pid, id).map_err(|e| e.to_string())?;
    let root = root::root(pid, id).ok();
    let mut files = HashMap::new();
    let mut read = |p: &str| {
        let text = root
            .as_ref()
            .and_then(|r| root::read_file(r, p, workdir).ok());
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
pub(super) fn args_from(
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

/// When an engine whose command line or cache path was not settled at its start is read again.
pub(super) const READ_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// How many `container:` links are followed to the namespace's real owner.
pub(super) const MAX_OWNER_CHAIN: usize = 4;

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
pub(super) struct Learned {
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
pub(super) const MAX_EXEC_FILES: usize = 16;

/// Deadline of the host-side reads of one container (its /proc, its root).
pub(super) const HOST_READ_TIMEOUT: Duration = Duration::from_secs(5);

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
                root::root(pid, &id).map(|root| survey::survey(&root, &q2))
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
        let argv = root::read_file_argv(path);
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
        q: &survey::Questions,
    ) -> Option<(survey::Facts, Option<String>)> {
        let argv = survey::survey_argv(q);
        match self.docker.exec(id, &argv, self.exec_timeout, |_| {}).await {
            Ok(out) => survey::parse_survey(q, &out.stdout),
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

/// Containers inspected and read at once while listing.
pub(super) const LIST_CONCURRENCY: usize = 8;
