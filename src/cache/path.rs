//! Which directory inside an engine container is its cache (docs/cache-paths.md#order), and what
//! it is stored on (docs/cache-paths.md#storage).
//! Pure: the caller asks the container the [`Questions`] (does a path exist, what is it with
//! symlinks resolved, what matches a pattern) and hands the [`Facts`] to [`choose`].
//!
//! The first that applies: the `acestream.cache_path` label; the engine's command line
//! (`--cache-dir DIR`: `DIR/.acestream_cache` where the engine has made it, else `DIR`;
//! `--state-dir DIR`: `DIR/.acestream_cache`); `cleanup.cache_path` where it exists;
//! `$HOME/.ACEStream/.acestream_cache` where it exists; the first existing state directory of
//! public images (`WELL_KNOWN`); else `$HOME/...` (an engine that has not written yet). Every
//! path is validated like `cleanup.cache_path`, the flag's own value too (`--state-dir /etc`
//! is refused, though `/etc/.acestream_cache` would pass), and again once symlinks are
//! resolved inside the container's root: what is cleaned is the resolved path.

use crate::container::cmdline::EngineArgs;
use crate::container::mountinfo::{below, holding};
use crate::container::root::Fact;
use crate::container::survey::{Facts, Questions};
use crate::model::{CacheChoice, CacheMedium, CachePathSource, Mount, MountKind};

/// Top-level directories that must never be a cache path: clearing "the contents of the cache
/// directory" there would wipe the container's system. Only the directories themselves are
/// refused; anything below them (e.g. `/root/.ACEStream/...`, `/dev/shm/...`) is fine.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
];

/// The cache-path rule (docs/cache-paths.md#validation), for `cleanup.cache_path` and for
/// `acestream.cache_path` container labels: non-empty, absolute, normalised (no `.`/`..` segments,
/// no `//`, no trailing `/`), no control characters, not `/` and not a top-level system directory.
pub fn validate_cache_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("cache path must not be empty".into());
    }
    if p.chars().any(char::is_control) {
        return Err(format!(
            "cache path must not contain control characters: {p:?}"
        ));
    }
    if !p.starts_with('/') {
        return Err(format!("cache path must be absolute: {p:?}"));
    }
    if p == "/" {
        return Err("cache path must not be the root directory \"/\"".into());
    }
    if p.contains("//") {
        return Err(format!("cache path must be normalised (no \"//\"): {p:?}"));
    }
    if p.ends_with('/') {
        return Err(format!(
            "cache path must be normalised (no trailing \"/\"): {p:?}"
        ));
    }
    if p.split('/').any(|part| part == "." || part == "..") {
        return Err(format!(
            "cache path must be normalised (no \".\" or \"..\" segments): {p:?}"
        ));
    }
    if SYSTEM_DIRS.contains(&p) {
        return Err(format!(
            "cache path must not be a top-level system directory: {p:?}"
        ));
    }
    Ok(())
}

/// The cache directory below an engine's state directory.
pub const CACHE_DIR: &str = ".acestream_cache";

/// State directories of public engine images (docs/cache-paths.md#order), in the order tried; one
/// `*` stands for any one directory name.
pub const WELL_KNOWN: &[&str] = &[
    // krinkuto11/aceserve, the orchestrator's own engine image, and vstavrinov's symlink target.
    "/dev/shm/.ACEStream",
    "/root/.ACEStream",
    "/home/*/.ACEStream",
    "/srv/*/.ACEStream",
    "/acestream/.ACEStream",
    "/opt/acestream/.ACEStream",
    "/acestream.engine/.ACEStream",
    "/storage/.ACEStream",
];

/// What the choice starts from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The `acestream.cache_path` label.
    pub label: Option<String>,
    pub args: EngineArgs,
    /// `cleanup.cache_path`.
    pub config_path: String,
    /// `$HOME` of the engine's process (or the container's user).
    pub home: Option<String>,
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// A flag's value as a path: refused like a cache path when it is not one (`/`, `/etc`, ...),
/// when the shell computes it as the engine starts (`$(…)`, `$PWD`: unknown here), and when it
/// is relative (relative to the engine's working directory, which the image's `WorkingDir`
/// need not be: `--cache-dir .` could be the engine's own install).
fn flag_path(flag: &str, value: &str) -> Result<String, String> {
    let shown = value.replace(crate::container::cmdline::UNKNOWN, "…");
    let invalid = |m: String| format!("invalid {flag} on the engine's command line: {m}");
    if value.contains(crate::container::cmdline::UNKNOWN) {
        return Err(invalid(format!(
            "{shown:?} is computed by the shell when the engine starts; name the cache with the \
             acestream.cache_path label"
        )));
    }
    if !value.starts_with('/') {
        return Err(invalid(format!(
            "{shown:?} is relative to the engine's working directory; name the cache with the \
             acestream.cache_path label"
        )));
    }
    validate_cache_path(value)
        .map(|()| value.to_string())
        .map_err(invalid)
}

fn home_cache(home: &str) -> String {
    join(&join(home, ".ACEStream"), CACHE_DIR)
}

/// The candidates in order: (path, state directory that counts as its existence, source).
fn plan(i: &Inputs) -> Plan {
    if let Some(label) = &i.label {
        return Plan::Fixed(
            validate_cache_path(label)
                .map(|()| label.clone())
                .map_err(|m| format!("invalid label acestream.cache_path: {m}")),
            CachePathSource::Label,
        );
    }
    if let Some(dir) = &i.args.cache_dir {
        return match flag_path("--cache-dir", dir) {
            Ok(d) => Plan::CacheDir(d),
            Err(e) => Plan::Fixed(Err(e), CachePathSource::CommandLine),
        };
    }
    if let Some(dir) = &i.args.state_dir {
        return Plan::Fixed(
            flag_path("--state-dir", dir).map(|d| join(&d, CACHE_DIR)),
            CachePathSource::CommandLine,
        );
    }
    Plan::Search
}

enum Plan {
    Fixed(Result<String, String>, CachePathSource),
    /// `--cache-dir D`: `D/.acestream_cache` if the engine made it, else `D`.
    CacheDir(String),
    Search,
}

/// Where `config_path` or `$HOME` count as existing: the path itself, or, for a path ending in
/// `.acestream_cache`, its state directory (an engine that has not cached yet has only that).
fn with_state_dir(path: &str) -> Vec<String> {
    let mut v = vec![path.to_string()];
    if let Some(parent) = path.strip_suffix(&format!("/{CACHE_DIR}")) {
        if !parent.is_empty() {
            v.push(parent.to_string());
        }
    }
    v
}

/// The questions for [`choose`]: every path it may pick, and what would make it apply (never a
/// path with control characters: refused as a cache path anyway, and the answers are lines).
pub fn questions(i: &Inputs) -> Questions {
    let mut q = ask(i);
    q.paths.retain(|p| !p.chars().any(char::is_control));
    q
}

fn ask(i: &Inputs) -> Questions {
    let mut q = Questions::default();
    match plan(i) {
        Plan::Fixed(Ok(p), _) => q.paths.push(p),
        Plan::Fixed(Err(_), _) => {}
        Plan::CacheDir(d) => {
            q.paths.push(join(&d, CACHE_DIR));
            q.paths.push(d);
        }
        Plan::Search => {
            q.paths.extend(with_state_dir(&i.config_path));
            if let Some(h) = &i.home {
                q.paths.extend(with_state_dir(&home_cache(h)));
            }
            for w in WELL_KNOWN {
                if w.contains('*') {
                    q.globs.push(w.to_string());
                } else {
                    q.paths.push(w.to_string());
                    q.paths.push(join(w, CACHE_DIR));
                }
            }
        }
    }
    q
}

/// The cache path and its source; `settled` is false while the choice may still change
/// without the container restarting (nothing it looked for exists yet), so it is asked again.
pub fn choose(i: &Inputs, q: &Questions, f: &Facts, mounts: &[Mount]) -> (CacheChoice, bool) {
    let fact = |p: &str| -> Option<&Fact> {
        let at = q.paths.iter().position(|x| x == p)?;
        f.paths.get(at)
    };
    let exists = |p: &str| fact(p).is_some_and(|f| f.exists);
    // The resolved form of a chosen path (or of its state directory plus the last part).
    let resolved = |p: &str| -> Result<String, String> {
        if let Some(r) = fact(p).map(|f| f.resolved.clone()) {
            return r;
        }
        Ok(p.to_string())
    };
    let (path, source, settled) = match plan(i) {
        Plan::Fixed(Err(e), source) => {
            // What was refused, as written (an unknown part shown as `…`).
            let named = match source {
                CachePathSource::Label => i.label.clone(),
                _ => i
                    .args
                    .cache_dir
                    .clone()
                    .or_else(|| i.args.state_dir.clone()),
            };
            let named = named
                .unwrap_or_default()
                .replace(crate::container::cmdline::UNKNOWN, "…");
            return (
                CacheChoice {
                    written: named.clone(),
                    path: named,
                    source,
                    error: Some(e),
                    medium: CacheMedium::Disk,
                },
                true,
            );
        }
        Plan::Fixed(Ok(p), source) => (p, source, true),
        Plan::CacheDir(d) => {
            let inner = join(&d, CACHE_DIR);
            if exists(&inner) {
                (inner, CachePathSource::CommandLine, true)
            } else {
                // Settled once the engine has made DIR without an `.acestream_cache` in it:
                // it caches straight into DIR.
                let settled = exists(&d);
                (d, CachePathSource::CommandLine, settled)
            }
        }
        Plan::Search => 'search: {
            if with_state_dir(&i.config_path).iter().any(|p| exists(p)) {
                break 'search (i.config_path.clone(), CachePathSource::Config, true);
            }
            if let Some(h) = &i.home {
                let p = home_cache(h);
                if with_state_dir(&p).iter().any(|p| exists(p)) {
                    break 'search (p, CachePathSource::Home, true);
                }
            }
            let mut globs = f.globs.iter();
            for w in WELL_KNOWN {
                if w.contains('*') {
                    if let Some((m, _)) = globs.next().and_then(|g| g.first()) {
                        break 'search (join(m, CACHE_DIR), CachePathSource::WellKnown, true);
                    }
                } else if exists(w) {
                    break 'search (join(w, CACHE_DIR), CachePathSource::WellKnown, true);
                }
            }
            match &i.home {
                Some(h) => (home_cache(h), CachePathSource::Home, false),
                None => (i.config_path.clone(), CachePathSource::Config, false),
            }
        }
    };
    // Symlinks resolved: of the path itself where it was asked, else of the state directory
    // it lies in (a glob match, a path not made yet).
    let resolved = match fact(&path) {
        Some(_) => resolved(&path),
        None => {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            let from_glob = f
                .globs
                .iter()
                .flatten()
                .find(|(m, _)| m == dir)
                .map(|(_, fact)| fact.resolved.clone());
            match from_glob.or_else(|| fact(dir).map(|f| f.resolved.clone())) {
                Some(Ok(d)) => Ok(join(&d, name)),
                Some(Err(e)) => Err(e),
                None => Ok(path.clone()),
            }
        }
    };
    let (final_path, error) = match resolved {
        Err(e) => (
            path.clone(),
            Some(format!("cache path {path} cannot be resolved: {e}")),
        ),
        Ok(r) => {
            let error = validate_cache_path(&r).err().map(|m| {
                if r == path {
                    format!("invalid cache path: {m}")
                } else {
                    format!("cache path {path} resolves to {r}: {m}")
                }
            });
            (r, error)
        }
    };
    let medium = medium(&final_path, mounts);
    (
        CacheChoice {
            path: final_path,
            written: path,
            source,
            error,
            medium,
        },
        settled,
    )
}

/// A choice made again for the same engine process (`again`), keeping the resolution learned
/// first (`first`, of a path that existed then) where the same path is chosen: a cache
/// directory, or one on its way, swapped for a symlink since is then refused by the cleanup,
/// which never follows one, instead of followed to wherever the link points now. A first
/// resolution that was refused (a link to `/etc`) is not kept: the path is judged afresh, as at
/// discovery.
pub fn keep_resolution(first: &CacheChoice, again: CacheChoice) -> CacheChoice {
    if first.error.is_some() || first.written != again.written || first.path == again.path {
        return again;
    }
    CacheChoice {
        path: first.path.clone(),
        error: None,
        medium: first.medium,
        ..again
    }
}

/// The tmpfs holding a memory cache at `path`, as a path inside the container: the tmpfs mount
/// (the longest destination holding it; a bind of the host's `/dev/shm` counts), else
/// `/dev/shm` or `/dev`, which Docker mounts as tmpfs in every container.
pub fn tmpfs_of(path: &str, mounts: &[Mount]) -> String {
    if let Some((m, _)) = holding(path, mounts, |m| m.destination.as_str()) {
        return m.destination.trim_end_matches('/').to_string();
    }
    if below(path, "/dev/shm").is_some() {
        "/dev/shm".into()
    } else {
        "/dev".into()
    }
}

/// Whether `path` is on a tmpfs: the container mount holding it (the longest destination) is a
/// tmpfs, or a bind of a tmpfs of the host (`/dev/shm`), or, with no mount holding it, it lies
/// under `/dev`, which Docker mounts as a tmpfs in every container (and `/dev/shm` with it).
pub fn medium(path: &str, mounts: &[Mount]) -> CacheMedium {
    let memory = match holding(path, mounts, |m| m.destination.as_str()) {
        Some((m, _)) => {
            m.kind == MountKind::Tmpfs
                || (m.kind == MountKind::Bind && below(&m.source, "/dev/shm").is_some())
        }
        None => below(path, "/dev").is_some(),
    };
    if memory {
        CacheMedium::Memory
    } else {
        CacheMedium::Disk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_cache_path_table() {
        let cases: &[(&str, bool)] = &[
            ("/", false),
            ("/etc", false),
            ("/home", false),
            ("/tmp", false),
            ("/var", false),
            ("relative", false),
            ("./cache", false),
            ("/a/../b", false),
            ("/a/./b", false),
            ("/a/..", false),
            ("/a//b", false),
            ("/a/", false),
            ("", false),
            ("/a\0b", false),
            ("/a\nb", false),
            ("/home/appuser/.ACEStream/.acestream_cache", true),
            ("/root/.ACEStream/.acestream_cache", true),
            ("/dev/shm/.ACEStream/.acestream_cache", true),
            ("/cache", true),
            ("/etc/acestream", true),
            ("/a/..b/c.", true),
        ];
        for (path, ok) in cases {
            assert_eq!(
                validate_cache_path(path).is_ok(),
                *ok,
                "{path:?}: {:?}",
                validate_cache_path(path)
            );
        }
        assert_eq!(
            validate_cache_path("foo").unwrap_err(),
            "cache path must be absolute: \"foo\""
        );
    }

    const CONFIG: &str = "/home/appuser/.ACEStream/.acestream_cache";

    fn inputs() -> Inputs {
        Inputs {
            config_path: CONFIG.into(),
            home: Some("/root".into()),
            ..Inputs::default()
        }
    }

    /// Facts for the questions: `existing` paths exist (and resolve to themselves, or as
    /// `links` says); globs match the existing paths of their shape.
    fn facts(q: &Questions, existing: &[&str], links: &[(&str, &str)]) -> Facts {
        let resolve = |p: &str| -> String {
            for (from, to) in links {
                if p == *from || p.starts_with(&format!("{from}/")) {
                    return format!("{to}{}", &p[from.len()..]);
                }
            }
            p.to_string()
        };
        let fact = |p: &str| Fact {
            exists: existing.contains(&p),
            resolved: Ok(resolve(p)),
        };
        Facts {
            paths: q.paths.iter().map(|p| fact(p)).collect(),
            globs: q
                .globs
                .iter()
                .map(|g| {
                    let (pre, post) = g.split_once('*').unwrap();
                    let mut m: Vec<(String, Fact)> = existing
                        .iter()
                        .filter(|e| {
                            e.starts_with(pre)
                                && e.ends_with(post)
                                && !e[pre.len()..e.len() - post.len()].contains('/')
                        })
                        .map(|e| (e.to_string(), fact(e)))
                        .collect();
                    m.sort_by(|a, b| a.0.cmp(&b.0));
                    m
                })
                .collect(),
        }
    }

    fn pick(i: &Inputs, existing: &[&str]) -> (CacheChoice, bool) {
        pick_with(i, existing, &[], &[])
    }

    fn pick_with(
        i: &Inputs,
        existing: &[&str],
        links: &[(&str, &str)],
        mounts: &[Mount],
    ) -> (CacheChoice, bool) {
        let q = questions(i);
        choose(i, &q, &facts(&q, existing, links), mounts)
    }

    fn at(c: &(CacheChoice, bool)) -> (&str, CachePathSource, Option<&str>, bool) {
        (c.0.path.as_str(), c.0.source, c.0.error.as_deref(), c.1)
    }

    #[test]
    fn the_label_comes_first_and_is_validated() {
        let i = Inputs {
            label: Some("/data/cache".into()),
            args: EngineArgs {
                cache_dir: Some("/x".into()),
                ..Default::default()
            },
            ..inputs()
        };
        assert_eq!(
            at(&pick(&i, &[CONFIG])),
            ("/data/cache", CachePathSource::Label, None, true)
        );
        let i = Inputs {
            label: Some("/etc".into()),
            ..inputs()
        };
        let c = pick(&i, &[]);
        assert_eq!(c.0.source, CachePathSource::Label);
        assert!(c
            .0
            .error
            .as_deref()
            .unwrap()
            .starts_with("invalid label acestream.cache_path: "));
    }

    #[test]
    fn command_line_flags_come_next_and_their_values_are_validated() {
        let cache_dir = |d: &str| Inputs {
            args: EngineArgs {
                cache_dir: Some(d.into()),
                ..Default::default()
            },
            ..inputs()
        };
        // DIR itself until the engine has made DIR/.acestream_cache, then that.
        assert_eq!(
            at(&pick(&cache_dir("/srv/ace/cache"), &[CONFIG])),
            ("/srv/ace/cache", CachePathSource::CommandLine, None, false)
        );
        assert_eq!(
            at(&pick(&cache_dir("/fs"), &["/fs/.acestream_cache"])),
            (
                "/fs/.acestream_cache",
                CachePathSource::CommandLine,
                None,
                true
            )
        );
        let state = Inputs {
            args: EngineArgs {
                state_dir: Some("/tmp/state/.ACEStream".into()),
                ..Default::default()
            },
            ..inputs()
        };
        assert_eq!(
            at(&pick(&state, &[])),
            (
                "/tmp/state/.ACEStream/.acestream_cache",
                CachePathSource::CommandLine,
                None,
                true
            )
        );
        for (flag, value) in [
            ("--cache-dir", "/"),
            ("--cache-dir", "/tmp"),
            ("--state-dir", "/etc"),
            ("--cache-dir", "/a/../etc"),
            // Relative, or computed by the shell: not known to be the engine's cache.
            ("--cache-dir", "."),
            ("--cache-dir", "cache"),
            ("--cache-dir", "\u{0}/data"),
            ("--state-dir", "../x"),
        ] {
            let mut i = inputs();
            if flag == "--cache-dir" {
                i.args.cache_dir = Some(value.into());
            } else {
                i.args.state_dir = Some(value.into());
            }
            let c = pick(&i, &["/.acestream_cache", "/etc/.acestream_cache"]);
            let e = c.0.error.unwrap_or_default();
            assert!(
                e.starts_with(&format!("invalid {flag} on the engine's command line: ")),
                "{value}: {e}"
            );
            assert!(
                questions(&i).paths.is_empty(),
                "nothing of {value} is looked at"
            );
        }
    }

    #[test]
    fn config_then_home_then_well_known_then_home_again() {
        let i = inputs();
        assert_eq!(
            at(&pick(&i, &[CONFIG])),
            (CONFIG, CachePathSource::Config, None, true)
        );
        // The state directory alone counts: an engine that has not cached yet.
        assert_eq!(
            at(&pick(&i, &["/home/appuser/.ACEStream"])).1,
            CachePathSource::Config
        );
        let home = Inputs {
            home: Some("/srv/eng".into()),
            ..inputs()
        };
        assert_eq!(
            at(&pick(&home, &["/srv/eng/.ACEStream"])),
            (
                "/srv/eng/.ACEStream/.acestream_cache",
                CachePathSource::Home,
                None,
                true
            )
        );
        assert_eq!(
            at(&pick(&i, &["/dev/shm/.ACEStream", "/root/.ACEStream"])),
            (
                "/root/.ACEStream/.acestream_cache",
                CachePathSource::Home,
                None,
                true
            ),
            "HOME=/root before the well-known list"
        );
        let nobody = Inputs {
            home: None,
            ..inputs()
        };
        assert_eq!(
            at(&pick(&nobody, &["/dev/shm/.ACEStream", "/root/.ACEStream"])),
            (
                "/dev/shm/.ACEStream/.acestream_cache",
                CachePathSource::WellKnown,
                None,
                true
            )
        );
        assert_eq!(
            at(&pick(
                &nobody,
                &[
                    "/srv/ace/.ACEStream",
                    "/home/zed/.ACEStream",
                    "/home/abc/.ACEStream"
                ]
            )),
            (
                "/home/abc/.ACEStream/.acestream_cache",
                CachePathSource::WellKnown,
                None,
                true
            )
        );
        // Nothing written yet: $HOME's, asked again later.
        assert_eq!(
            at(&pick(&home, &[])),
            (
                "/srv/eng/.ACEStream/.acestream_cache",
                CachePathSource::Home,
                None,
                false
            )
        );
        assert_eq!(
            at(&pick(&nobody, &[])),
            (CONFIG, CachePathSource::Config, None, false)
        );
    }

    #[test]
    fn symlinks_are_resolved_and_the_result_validated() {
        // vstavrinov/acestream-engine: ~/.ACEStream -> /dev/shm/.ACEStream.
        let i = Inputs {
            home: Some("/srv/ace".into()),
            ..inputs()
        };
        let c = pick_with(
            &i,
            &["/srv/ace/.ACEStream"],
            &[("/srv/ace/.ACEStream", "/dev/shm/.ACEStream")],
            &[],
        );
        assert_eq!(
            at(&c),
            (
                "/dev/shm/.ACEStream/.acestream_cache",
                CachePathSource::Home,
                None,
                true
            )
        );
        assert_eq!(c.0.medium, CacheMedium::Memory, "/dev/shm is memory");
        // A glob match that is a link.
        let nobody = Inputs {
            home: None,
            ..inputs()
        };
        let c = pick_with(
            &nobody,
            &["/srv/x/.ACEStream"],
            &[("/srv/x/.ACEStream", "/data/state")],
            &[],
        );
        assert_eq!(c.0.path, "/data/state/.acestream_cache");
        // A link to a system directory is refused by its resolved name.
        let label = Inputs {
            label: Some("/cache".into()),
            ..inputs()
        };
        let c = pick_with(&label, &["/cache"], &[("/cache", "/etc")], &[]);
        assert_eq!(c.0.error.as_deref(), Some("cache path /cache resolves to /etc: cache path must not be a top-level system directory: \"/etc\""));
        // A loop.
        let q = questions(&label);
        let f = Facts {
            paths: vec![Fact {
                exists: false,
                resolved: Err("too many levels of symbolic links".into()),
            }],
            globs: vec![],
        };
        let c = choose(&label, &q, &f, &[]);
        assert!(c.0.error.unwrap().contains("cannot be resolved"));
        // Not asked (no /proc, no exec): as written.
        assert_eq!(choose(&label, &q, &Facts::default(), &[]).0.path, "/cache");
    }

    /// Read again for the same process, a path that existed keeps its first resolution when it
    /// has become a symlink since (to a plain directory or to a system one); a refused first
    /// resolution, or another path chosen, is judged afresh.
    #[test]
    fn a_path_read_again_keeps_its_first_resolution() {
        let label = Inputs {
            label: Some("/cache".into()),
            ..inputs()
        };
        let first = pick(&label, &["/cache"]).0;
        assert_eq!(
            (first.path.as_str(), first.written.as_str()),
            ("/cache", "/cache")
        );
        let swapped = pick_with(&label, &["/cache"], &[("/cache", "/outside")], &[]).0;
        assert_eq!(swapped.path, "/outside", "followed when judged alone");
        assert_eq!(keep_resolution(&first, swapped.clone()), first);
        let to_etc = pick_with(&label, &["/cache"], &[("/cache", "/etc")], &[]).0;
        assert!(to_etc.error.is_some());
        assert_eq!(keep_resolution(&first, to_etc.clone()), first);
        // Refused at discovery: what the container shows now counts.
        assert_eq!(keep_resolution(&to_etc, swapped.clone()), swapped);
        // Another path (the engine started with its flags since): its own resolution.
        let other = Inputs {
            label: Some("/data".into()),
            ..inputs()
        };
        let moved = pick_with(&other, &["/data"], &[("/data", "/srv/data")], &[]).0;
        assert_eq!(keep_resolution(&first, moved.clone()), moved);
        // A link there at discovery stays followed: the same resolution again.
        let linked = pick_with(&label, &["/cache"], &[("/cache", "/srv/c")], &[]).0;
        assert_eq!(keep_resolution(&linked, linked.clone()).path, "/srv/c");
    }

    #[test]
    fn memory_is_a_tmpfs_mount_dev_or_a_bind_of_dev_shm() {
        let m = |kind, src: &str, dst: &str| Mount {
            kind,
            source: src.into(),
            destination: dst.into(),
        };
        assert_eq!(medium(CONFIG, &[]), CacheMedium::Disk);
        assert_eq!(
            medium("/dev/shm/.ACEStream/.acestream_cache", &[]),
            CacheMedium::Memory
        );
        let tmpfs = [m(MountKind::Tmpfs, "", "/root/.ACEStream")];
        assert_eq!(
            medium("/root/.ACEStream/.acestream_cache", &tmpfs),
            CacheMedium::Memory
        );
        assert_eq!(medium("/root/.ACEStreamx/c", &tmpfs), CacheMedium::Disk);
        let over = [
            m(MountKind::Tmpfs, "", "/root"),
            m(
                MountKind::Volume,
                "/var/lib/docker/volumes/v/_data",
                "/root/.ACEStream",
            ),
        ];
        assert_eq!(
            medium("/root/.ACEStream/.acestream_cache", &over),
            CacheMedium::Disk
        );
        assert_eq!(
            medium("/dev/shm/c", &[m(MountKind::Bind, "/srv/disk", "/dev/shm")]),
            CacheMedium::Disk
        );
        assert_eq!(
            medium(
                "/cache/x",
                &[m(MountKind::Bind, "/dev/shm/engine1", "/cache")]
            ),
            CacheMedium::Memory
        );
        assert_eq!(
            tmpfs_of("/root/.ACEStream/.acestream_cache", &tmpfs),
            "/root/.ACEStream"
        );
        assert_eq!(
            tmpfs_of("/dev/shm/.ACEStream/.acestream_cache", &[]),
            "/dev/shm"
        );
        assert_eq!(tmpfs_of("/dev/x", &[]), "/dev");
    }
}
