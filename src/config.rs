//! Configuration (README "Configuration"; the cache-path rule of docs/cache-paths.md#validation;
//! the disk pressure keys of docs/cache-paths.md#disk-pressure).
//!
//! Owns the layering (built-in defaults < TOML file < `ACESTREAM_AGENT_<SECTION>__<KEY>` env <
//! `AUTOSCALE_INTERVAL_S`), the duration/size/percentage parsing and every validation rule, so
//! the rest of the agent receives a `Config` that is already known to be sane. It must not touch
//! Docker, the network or the store: `check-config` runs it on machines without any of them.
//!
//! Each key is defined once, in its section's `section!` block: its type, its default, and the
//! serde helpers that read it (with its own checks) and print it for `check-config`. Rules that
//! involve several keys are in [`Config::validate`].
//!
//! Errors name the offending key (`ConfigError::Invalid { key }`), which `check-config` prints
//! before exiting 2; where the value came from (file or env var) is added to the message.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::Serialized;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::{self, Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

mod units;
use units::format_size;
pub use units::{format_duration, parse_duration, parse_size};

/// The file read when no `--config` is given; skipped silently when it does not exist.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/acestream-agent/config.toml";
/// Prefix of the per-key environment overrides (`ACESTREAM_AGENT_HTTP__LISTEN`).
pub const ENV_PREFIX: &str = "ACESTREAM_AGENT_";
/// Orchestrator-compatible override of `cleanup.interval`, in whole seconds.
pub const AUTOSCALE_ENV: &str = "AUTOSCALE_INTERVAL_S";

/// What `to_toml` prints instead of the token. Refused as a token value so that saving
/// `check-config` output as a config file cannot silently set a publicly known token.
const TOKEN_PLACEHOLDER: &str = "<set>";
/// Upper bound on `cleanup.concurrency`: each cleanup holds a Docker exec, and more than this
/// only queues work inside dockerd while making disk I/O spikier.
const MAX_CONCURRENCY: i128 = 64;
/// Upper bound on `store.history_per_engine`: one engine's history is read whole for
/// `/engines/{id}/cleanups`, so it must stay small.
const MAX_HISTORY_PER_ENGINE: i128 = 100_000;

/// What `section!` records about a section's keys besides their serde definitions.
struct Keys {
    /// In declaration order, which is the order `check-config` prints them in.
    fields: &'static [&'static str],
    /// Marked `env = verbatim`.
    verbatim: &'static [&'static str],
    /// Marked `unset = "note"`, with the note.
    unset: &'static [(&'static str, &'static str)],
}

const SECTIONS: &[(&str, Keys)] = &[
    ("http", HttpConfig::KEYS),
    ("docker", DockerConfig::KEYS),
    ("discovery", DiscoveryConfig::KEYS),
    ("health", HealthConfig::KEYS),
    ("activity", ActivityConfig::KEYS),
    ("cleanup", CleanupConfig::KEYS),
    ("pressure", PressureConfig::KEYS),
    ("heal", HealConfig::KEYS),
    ("streams", StreamsConfig::KEYS),
    ("store", StoreConfig::KEYS),
];

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The effective, validated configuration. `Config::default()` is the built-in defaults only
/// (no file, no environment; `store.path` is `./acestream-agent.redb`), handy for tests that
/// want a config and change a field or two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub docker: DockerConfig,
    pub discovery: DiscoveryConfig,
    pub health: HealthConfig,
    pub activity: ActivityConfig,
    pub cleanup: CleanupConfig,
    pub pressure: PressureConfig,
    pub heal: HealConfig,
    pub streams: StreamsConfig,
    pub store: StoreConfig,
}

/// A config section: the struct with its serde derives and a `Default` built from the
/// `= default` beside each field, so a key's type, default and parsing stay on one line group.
/// Missing keys take the default through `#[serde(default)]`.
///
/// `; env = verbatim` marks a key whose env value is taken as written. Every other env value
/// goes through figment's value parser (so `8` is an integer and `[a,b]` an array), which
/// would turn a token such as `007` into the integer 7 or `true` into a bool.
/// `; unset = "note"` is what `check-config` prints for an optional key that is unset:
/// serialization skips it (TOML has no null), but an operator should still see the key.
macro_rules! section {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr
            $(; env = $verbatim:ident)? $(; unset = $note:literal)?,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }

        impl $name {
            const KEYS: Keys = Keys {
                fields: &[$(stringify!($field),)*],
                verbatim: &[$($((stringify!($verbatim), stringify!($field)).1,)?)*],
                unset: &[$($((stringify!($field), $note),)?)*],
            };
        }
    };
}

section! {
    pub struct HttpConfig {
        #[serde(deserialize_with = "listen", serialize_with = "display")]
        pub listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9477)); env = verbatim,
        /// When set, `POST`s need `Authorization: Bearer <token>`; when unset, loopback only.
        #[serde(deserialize_with = "token", serialize_with = "token_placeholder")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub token: Option<String> = None; env = verbatim;
            unset = "writes allowed from loopback only",
    }
}

section! {
    pub struct DockerConfig {
        /// `None`: bollard's defaults, which honour `DOCKER_HOST` and fall back to the local
        /// socket.
        #[serde(deserialize_with = "docker_host", skip_serializing_if = "Option::is_none")]
        pub host: Option<String> = None; env = verbatim;
            unset = "DOCKER_HOST, else the local socket",
    }
}

section! {
    pub struct DiscoveryConfig {
        #[serde(deserialize_with = "labels")]
        pub labels: Vec<LabelMatch> = vec![
            LabelMatch::new("orchestrator.managed", Some("acestream")),
            LabelMatch::new("acestream.engine", Some("true")),
        ],
        /// Globs on the image name (`*` and `?`).
        #[serde(deserialize_with = "images")]
        pub images: Vec<String> = vec!["*acestream*".into(), "*acelink*".into()],
        #[serde(deserialize_with = "int_in::<_, _, 1, 65_535>")]
        pub engine_port: u16 = 6878,
        #[serde(deserialize_with = "advertise_host")]
        pub advertise_host: String = hostname(); env = verbatim,
        #[serde(with = "duration")]
        pub resync_interval: Duration = Duration::from_secs(60),
    }
}

/// One `discovery.labels` entry: `key=value` (exact value) or `key` (present, any value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelMatch {
    pub key: String,
    pub value: Option<String>,
}

section! {
    pub struct HealthConfig {
        #[serde(with = "duration")]
        pub interval: Duration = Duration::from_secs(20),
        #[serde(with = "duration")]
        pub timeout: Duration = Duration::from_secs(5),
    }
}

section! {
    pub struct ActivityConfig {
        #[serde(with = "duration")]
        pub interval: Duration = Duration::from_secs(5),
    }
}

section! {
    pub struct CleanupConfig {
        /// Periodic sweep; `None` = `"off"`.
        #[serde(with = "duration_or_off")]
        pub interval: Option<Duration> = Some(Duration::from_secs(30)),
        /// Delay after the last stream ends; `None` = `"off"`.
        #[serde(with = "duration_or_off")]
        pub idle_grace: Option<Duration> = Some(Duration::from_secs(5)),
        /// Already checked by [`crate::cache::path::validate_cache_path`].
        #[serde(deserialize_with = "cache_path")]
        pub cache_path: String = "/home/appuser/.ACEStream/.acestream_cache".into();
            env = verbatim,
        #[serde(with = "duration")]
        pub exec_timeout: Duration = Duration::from_secs(60),
        #[serde(deserialize_with = "int_in::<_, _, 1, MAX_CONCURRENCY>")]
        pub concurrency: usize = 4,
        #[serde(with = "size")]
        pub min_bytes: u64 = 0,
        /// Live size measurement; `None` = `"off"`.
        #[serde(with = "duration_or_off")]
        pub measure_interval: Option<Duration> = Some(Duration::from_secs(5 * 60)),
        /// How caches are reached: from the host where the agent may, else `docker exec`.
        pub method: CacheMethod = CacheMethod::Auto,
    }
}

/// `cleanup.method`: how the janitor reaches a container's cache directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMethod {
    /// Through `/proc/<pid>/root` from the host (no exec, no cost to Docker) where the agent
    /// has access (root, or `CAP_SYS_PTRACE` and the DAC capabilities), else `docker exec`.
    #[default]
    Auto,
    /// Always `docker exec` of the fixed cache script inside the container.
    Exec,
}

impl CacheMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMethod::Auto => "auto",
            CacheMethod::Exec => "exec",
        }
    }
}

section! {
    pub struct PressureConfig {
        #[serde(with = "duration")]
        pub interval: Duration = Duration::from_secs(10),
        /// `None` = `"off"`.
        #[serde(with = "min_free")]
        pub min_free: Option<MinFree> = Some(MinFree::Percent(10.0)),
        /// `None`: use `DockerRootDir` from Docker's info.
        #[serde(deserialize_with = "docker_root", serialize_with = "opt_path")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub docker_root: Option<PathBuf> = None; env = verbatim;
            unset = "DockerRootDir from Docker's info",
        /// A memory cache's container is under pressure at this share of its memory limit, in
        /// percent; `None` = `"off"`.
        #[serde(with = "memory_high")]
        pub memory_high: Option<f64> = Some(90.0),
        /// With no idle engine left under pressure: delete busy engines' cache files no
        /// process holds open (`unopened`), or touch busy engines never (`off`).
        pub busy_files: BusyFiles = BusyFiles::Unopened,
    }
}

/// `pressure.busy_files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusyFiles {
    Unopened,
    Off,
}

/// Free-space threshold of `pressure.min_free`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// Percentage of the filesystem's size, strictly between 0 and 100.
    Percent(f64),
    /// Absolute number of bytes available to unprivileged users.
    Bytes(u64),
}

section! {
    /// Restarting stuck engines (README "Stuck engines").
    pub struct HealConfig {
        pub enabled: bool = true,
        /// How long an engine that answered since its start must fail every probe.
        #[serde(with = "duration")]
        pub after: Duration = Duration::from_secs(3 * 60),
        /// Docker's `t` for the restart: SIGTERM, then SIGKILL after this (whole seconds).
        #[serde(with = "whole_seconds")]
        pub stop_timeout: Duration = Duration::from_secs(10),
        /// Restarts within `window` before an engine is quarantined.
        #[serde(deserialize_with = "int_in::<_, _, 1, 100>")]
        pub max_restarts: u32 = 3,
        #[serde(with = "duration")]
        pub window: Duration = Duration::from_secs(3600),
        /// Restarts by heal on this host in any hour, all engines together.
        #[serde(deserialize_with = "int_in::<_, _, 1, 10_000>")]
        pub max_per_hour: u32 = 10,
        /// Engines never restarted (someone else replaces them), as `discovery.labels`;
        /// `acestream.heal=false` always is.
        #[serde(deserialize_with = "labels")]
        pub skip_labels: Vec<LabelMatch> = vec![LabelMatch::new(
            "orchestrator.managed",
            Some("acestream"),
        )],
        /// An engine all of whose streams are stalled counts as stuck although it has streams.
        pub stalled: bool = false,
    }
}

section! {
    /// What the engines say about their streams (README "Stream statistics").
    pub struct StreamsConfig {
        /// How often each started stream's statistics are asked of its engine; `None` = `"off"`.
        #[serde(with = "duration_or_off")]
        pub stat_interval: Option<Duration> = Some(Duration::from_secs(10)),
        /// A stream whose every answer said no peers and no download for this long is stalled.
        #[serde(with = "duration")]
        pub stall_after: Duration = Duration::from_secs(120),
    }
}

section! {
    pub struct StoreConfig {
        /// Built-in default; systemd's `STATE_DIRECTORY` is a layer above it.
        #[serde(deserialize_with = "store_path", serialize_with = "path")]
        pub path: PathBuf = PathBuf::from("./acestream-agent.redb"); env = verbatim,
        #[serde(with = "duration")]
        pub retention: Duration = Duration::from_secs(7 * 86_400),
        /// `store.history_per_engine`: cleanup records kept per engine
        /// (docs/architecture.md#store).
        #[serde(deserialize_with = "int_in::<_, _, 1, MAX_HISTORY_PER_ENGINE>")]
        pub history_per_engine: usize = 100,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A `--config` file that is missing, any config file that cannot be read, or bad TOML.
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Layers: built-in defaults < the file (`file` if Some — must exist —, else
    /// /etc/acestream-agent/config.toml if it exists) < env `ACESTREAM_AGENT_<SECTION>__<KEY>` <
    /// AUTOSCALE_INTERVAL_S (seconds, sets cleanup.interval).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // Non-UTF-8 names cannot be ours; values are taken lossily so a stray byte in one of
        // ours is reported by validation rather than silently ignored.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect();
        Config::load_with(file, Path::new(DEFAULT_CONFIG_FILE), &env)
    }

    /// Testable core of [`Config::load`]: the environment is passed in, and `default_file` is
    /// the file read (if it exists) when `file` is `None`.
    pub fn load_with(
        file: Option<&Path>,
        default_file: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let file = read_file(file, default_file)?;
        let figment = layers(file, env)?;
        figment
            .extract::<Config>()
            .map_err(figment_error)
            .and_then(|mut config| {
                // Over the extracted config rather than as a layer: a bad cleanup.interval
                // below it is still an error, as the layers above a bad value are not.
                if let Some(interval) = autoscale_interval(env)? {
                    config.cleanup.interval = Some(interval);
                }
                config.validate().map(|()| config)
            })
            .map_err(|err| with_origin(err, &figment))
    }

    /// The rules that involve more than one key; each key's own rules are checked as it is
    /// read, by its deserializer.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.discovery.labels.is_empty() && self.discovery.images.is_empty() {
            return Err(invalid(
                "discovery.labels",
                "discovery.labels and discovery.images are both empty, \
                 so no container would ever be an engine",
            ));
        }
        Ok(())
    }

    /// The effective config as TOML with every key, for `check-config`. Durations come back as
    /// `"30s"`/`"1h30m"`/`"off"`, the token as `"<set>"`, unset keys as comments. Loading the
    /// output as a file gives an equal `Config` (except the token).
    pub fn to_toml(&self) -> String {
        // Every field serializes to a TOML string, integer or array of strings, and sections
        // only hold such values, so the serializer has nothing it could refuse.
        let text = toml::to_string(self).expect("a Config always serializes to TOML");
        let mut out = String::new();
        for block in text.split_terminator("\n\n") {
            if !out.is_empty() {
                out.push('\n');
            }
            let mut lines = block.lines();
            let header = lines.next().unwrap_or("");
            out.push_str(header);
            out.push('\n');
            let keys = SECTIONS.iter().find(|(s, _)| header == format!("[{s}]"));
            let note = |field: &str| {
                let (_, note) = keys?.1.unset.iter().find(|(k, _)| *k == field)?;
                Some(format!("# {field}: unset ({note})\n"))
            };
            // Each line is `field = value`, in declaration order; the note of an unset key goes
            // where that key would be.
            let mut fields = keys.map_or(&[][..], |(_, keys)| keys.fields).iter();
            for line in lines {
                for field in fields.by_ref() {
                    if line.starts_with(&format!("{field} = ")) {
                        break;
                    }
                    out.extend(note(field));
                }
                out.push_str(line);
                out.push('\n');
            }
            out.extend(fields.filter_map(|field| note(field)));
        }
        out
    }
}

/// A config file already read: its path (for messages) and its contents.
struct FileSource {
    path: PathBuf,
    text: String,
}

fn read_file(file: Option<&Path>, default_file: &Path) -> Result<Option<FileSource>, ConfigError> {
    let (path, required) = match file {
        Some(p) => (p, true),
        None => (default_file, false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(FileSource {
            path: path.to_owned(),
            text,
        })),
        // Only the implicit default file may be absent; an explicit --config that is missing
        // is almost always a typo, and running on defaults would hide it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::File {
            path: path.to_owned(),
            message: "not found".into(),
        }),
        Err(e) => Err(ConfigError::File {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Case-sensitive lookup in the passed-in environment (last assignment wins, as in a shell).
fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut values = env.iter().filter(|(k, _)| k == name);
    values.next_back().map(|(_, v)| v.as_str())
}

/// One figment layer made of an already parsed dict. We don't use figment's `Env` provider
/// because it reads the process environment, and `load_with` must be testable with an env
/// passed in; nor `Toml::file`, because we want to tell "missing" from "unreadable" ourselves.
struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Everything between the built-in defaults (which `#[serde(default)]` supplies) and
/// `AUTOSCALE_INTERVAL_S`, lowest first.
fn layers(file: Option<FileSource>, env: &[(String, String)]) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = state_directory(env) {
        figment = figment.merge(Serialized::default("store.path", path));
    }
    if let Some(FileSource { path, text }) = file {
        let dict: Dict = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let name = format!("TOML file {}", path.display());
        figment = figment.merge(Layer {
            metadata: Metadata::from(name, Source::File(path)),
            dict,
        });
    }
    for layer in env_layers(env) {
        figment = figment.merge(layer);
    }
    Ok(figment)
}

/// The default `store.path` under systemd, which sets `STATE_DIRECTORY` from `StateDirectory=`.
fn state_directory(env: &[(String, String)]) -> Option<String> {
    env_get(env, "STATE_DIRECTORY")
        // systemd passes several directories colon-separated when the unit lists several.
        .and_then(|dirs| dirs.split(':').next())
        .filter(|first| !first.is_empty())
        .map(|dir| {
            PathBuf::from(dir)
                .join("state.redb")
                .to_string_lossy()
                .into_owned()
        })
}

fn autoscale_interval(env: &[(String, String)]) -> Result<Option<Duration>, ConfigError> {
    // An empty value (`AUTOSCALE_INTERVAL_S=` from a compose file's `${X:-}`) means unset.
    let Some(value) = env_get(env, AUTOSCALE_ENV)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|&s| s > 0)
        .map(|secs| Some(Duration::from_secs(secs)))
        .ok_or_else(|| {
            invalid(
                AUTOSCALE_ENV,
                format!("{value:?} is not a positive whole number of seconds"),
            )
        })
}

/// Adds where the offending key was set: the file, or the env var by the name it was given.
fn with_origin(err: ConfigError, figment: &Figment) -> ConfigError {
    let ConfigError::Invalid { key, message } = err else {
        return err;
    };
    let origin = figment
        .find_metadata(&key)
        .and_then(|metadata| match &metadata.source {
            Some(Source::File(path)) => Some(format!("in {}", path.display())),
            Some(Source::Custom(var)) => Some(format!("set by {var}")),
            _ => None,
        });
    let message = match origin {
        Some(origin) => format!("{message} ({origin})"),
        None => message,
    };
    ConfigError::Invalid { key, message }
}

/// Mirrors `Env::prefixed(ENV_PREFIX).split("__")`: case-insensitive prefix, `__` nests,
/// keys lower-cased. One layer per variable, in order, so the last assignment wins as in a
/// shell, and `find_metadata` names the variable (as the operator spelled it) behind a key.
fn env_layers(env: &[(String, String)]) -> impl Iterator<Item = Layer> + '_ {
    env.iter().filter_map(|(name, raw)| {
        let rest = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .and_then(|_| name.get(ENV_PREFIX.len()..))?;
        let key = rest.trim().replace("__", ".").to_ascii_lowercase();
        // Same rule as figment's Env: a key with an empty segment is not a key.
        if key.split('.').any(str::is_empty) {
            return None;
        }
        let verbatim = key.split_once('.').is_some_and(|(section, field)| {
            (SECTIONS.iter()).any(|(s, keys)| *s == section && keys.verbatim.contains(&field))
        });
        let value = if verbatim {
            Value::from(raw.clone())
        } else {
            // Infallible: anything that is not a number, bool, array or dict stays a string.
            raw.parse::<Value>().unwrap_or_else(|e| match e {})
        };
        Some(Layer {
            metadata: Metadata::from(format!("env {name}"), Source::Custom(name.clone())),
            dict: figment::util::nest(&key, value).into_dict()?,
        })
    })
}

/// Turns figment's error into `Invalid` with a `section.key` name. Unknown fields carry the
/// path of their parent plus the field name in the kind.
fn figment_error(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let message = match &err.kind {
        Kind::UnknownField(field, expected) => {
            // figment usually reports the unknown field's own path already; not always.
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            if path.len() == 1 {
                format!("unknown section (known: {})", expected.join(", "))
            } else {
                format!(
                    "unknown key (known in [{}]: {})",
                    path[0],
                    expected.join(", ")
                )
            }
        }
        // Our section structs' names mean nothing to an operator: say "table" instead.
        Kind::InvalidType(actual, expected) if expected.starts_with("struct ") => {
            format!("invalid type: found {actual}, expected a table")
        }
        kind => kind.to_string(),
    };
    // Deeper paths (an array index) are part of the value, not of the key's name.
    let key = if path.is_empty() {
        "config".to_owned()
    } else {
        path.iter().take(2).cloned().collect::<Vec<_>>().join(".")
    };
    ConfigError::Invalid { key, message }
}

// ---------------------------------------------------------------------------------------------
// Serde helpers: each reads one kind of value as written and applies its key's own rules.
// figment adds the key's path to their errors.
// ---------------------------------------------------------------------------------------------

/// A string or a number as written. Durations, sizes and counts accept both, because env
/// values such as `8` or `30` reach us as integers, and the meaning (seconds, bytes) is fixed
/// per key.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Text(String),
    Int(i128),
    Float(f64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::try_from(v).unwrap_or(i128::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `T` as written and turns it into the key's value with `f`, whose error is the message.
fn read<'de, D, T, U>(d: D, f: impl FnOnce(T) -> Result<U, String>) -> Result<U, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    f(T::deserialize(d)?).map_err(D::Error::custom)
}

/// An array of strings; a single string is taken as a one-element list, which is what
/// `ACESTREAM_AGENT_DISCOVERY__LABELS=acestream.engine=true` (no brackets) means.
#[derive(Debug, Clone, PartialEq)]
struct StringList(Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(StringList(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    read(d, |s: String| {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address and port such as \"0.0.0.0:9477\""))
    })
}

fn token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, |token: String| {
        if token.is_empty() {
            return Err(
                "must not be empty (leave it unset to allow writes from loopback only)".into(),
            );
        }
        if token == TOKEN_PLACEHOLDER {
            return Err("\"<set>\" is the placeholder check-config prints, not a token".into());
        }
        // It travels in `Authorization: Bearer <token>`, where whitespace would split it.
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace or control characters".into());
        }
        Ok(Some(token))
    })
}

fn token_placeholder<S: Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(TOKEN_PLACEHOLDER)
}

fn docker_host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, |h: String| {
        if h.trim().is_empty() {
            return Err(
                "must not be empty (leave it unset to use DOCKER_HOST or the local socket)".into(),
            );
        }
        Ok(Some(h))
    })
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LabelMatch>, D::Error> {
    read(d, |StringList(items)| {
        items.iter().map(|s| s.parse::<LabelMatch>()).collect()
    })
}

fn images<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    read(d, |StringList(items)| {
        for image in &items {
            if image.is_empty() {
                return Err("image globs must not be empty".into());
            }
            if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("image glob {image:?} contains whitespace"));
            }
            // Image names never contain commas; one here is a comma-separated list given as a
            // single string, which would silently match nothing.
            if image.contains(',') {
                return Err(format!(
                    "image glob {image:?} contains ','; give several globs as an array: \
                     [\"a*\", \"b*\"]"
                ));
            }
        }
        Ok(items)
    })
}

fn advertise_host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    read(d, |h: String| {
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{h:?} is not a host name or address"));
        }
        Ok(h)
    })
}

fn cache_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    read(d, |p: String| {
        crate::cache::path::validate_cache_path(&p).map(|()| p)
    })
}

fn docker_root<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    read(d, |p: String| {
        if !p.starts_with('/') || p.chars().any(char::is_control) {
            return Err(format!("must be an absolute path: {p:?}"));
        }
        Ok(Some(PathBuf::from(p)))
    })
}

fn store_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    read(d, |p: String| {
        if p.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(PathBuf::from(p))
    })
}

/// An integer key within `MIN..=MAX`; numeric strings are accepted too.
fn int_in<'de, D, T, const MIN: i128, const MAX: i128>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    read(d, |value| {
        let n = match value {
            Scalar::Int(n) => n,
            Scalar::Text(s) => s
                .trim()
                .parse::<i128>()
                .map_err(|_| format!("{s:?} is not a whole number"))?,
            Scalar::Float(f) => return Err(format!("{f} is not a whole number")),
        };
        if n < MIN || n > MAX {
            return Err(format!("must be between {MIN} and {MAX}, got {n}"));
        }
        T::try_from(n).map_err(|_| "out of range".to_owned())
    })
}

fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn opt_path<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => path(p, s),
        None => s.serialize_none(),
    }
}

/// A duration that cannot be `"off"`.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        read(d, |value| match value {
            Scalar::Text(s) if s.trim() == "off" => Err("cannot be \"off\" (only \
                cleanup.interval, cleanup.idle_grace, cleanup.measure_interval, \
                streams.stat_interval and pressure.min_free can)"
                .into()),
            v => scalar_duration(v),
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

/// A duration of whole seconds, zero allowed (Docker's restart `t`).
mod whole_seconds {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        read(d, |value| {
            let d = match value {
                Scalar::Int(0) => Duration::ZERO,
                Scalar::Text(s) if s.trim() == "0" || s.trim() == "0s" => Duration::ZERO,
                v => scalar_duration(v)?,
            };
            if d.subsec_nanos() != 0 {
                return Err(format!(
                    "{} is not a whole number of seconds",
                    format_duration(d)
                ));
            }
            Ok(d)
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

/// A duration or `"off"` (`None`).
mod duration_or_off {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        read(d, |value| match value {
            Scalar::Text(s) if s.trim() == "off" => Ok(None),
            v => scalar_duration(v).map(Some),
        })
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.map_or_else(|| "off".to_owned(), format_duration))
    }
}

fn scalar_duration(value: Scalar) -> Result<Duration, String> {
    match value {
        Scalar::Text(s) => parse_duration(&s),
        Scalar::Int(n) if n > 0 => u64::try_from(n)
            .map(Duration::from_secs)
            .map_err(|_| format!("{n} seconds is too large")),
        Scalar::Int(n) => Err(format!("duration must be greater than zero, got {n}")),
        Scalar::Float(f) => Err(format!(
            "{f} is not a whole number of seconds; write a duration such as \"1500ms\""
        )),
    }
}

/// A size in bytes; printed with a unit where that is exact, and `0` as the integer it is.
mod size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d, scalar_size)
    }

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        match n {
            0 => s.serialize_u64(0),
            n => s.serialize_str(&format_size(*n)),
        }
    }
}

fn scalar_size(value: Scalar) -> Result<u64, String> {
    match value {
        Scalar::Text(s) => parse_size(&s),
        Scalar::Int(n) => {
            u64::try_from(n).map_err(|_| format!("size must not be negative, got {n}"))
        }
        Scalar::Float(f) => Err(format!(
            "{f} is not a whole number of bytes; write a size such as \"1.5GiB\""
        )),
    }
}

impl<'de> Deserialize<'de> for CacheMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |value| match value {
            Scalar::Text(s) if s.trim() == "auto" => Ok(CacheMethod::Auto),
            Scalar::Text(s) if s.trim() == "exec" => Ok(CacheMethod::Exec),
            Scalar::Text(s) => Err(format!("expected \"auto\" or \"exec\", got {s:?}")),
            _ => Err("expected \"auto\" or \"exec\"".to_owned()),
        })
    }
}

impl Serialize for CacheMethod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `pressure.min_free`: a percentage in (0, 100), a size, or `"off"`.
mod min_free {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MinFree>, D::Error> {
        read(d, |value| {
            let text = match value {
                Scalar::Text(s) => s,
                other => return check_min_bytes(scalar_size(other)?),
            };
            let text = text.trim();
            if text == "off" {
                return Ok(None);
            }
            if let Some(number) = text.strip_suffix('%') {
                let p: f64 = number
                    .trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not a percentage such as \"10%\""))?;
                if !(p > 0.0 && p < 100.0) {
                    return Err(format!(
                        "percentage must be between 0% and 100% (exclusive), got {text:?}"
                    ));
                }
                return Ok(Some(MinFree::Percent(p)));
            }
            let n = parse_size(text).map_err(|_| {
                format!(
                    "{text:?} is not a percentage such as \"10%\", a size such as \"5GiB\", \
                     or \"off\""
                )
            })?;
            check_min_bytes(n)
        })
    }

    fn check_min_bytes(n: u64) -> Result<Option<MinFree>, String> {
        if n == 0 {
            return Err(
                "must be greater than zero (use \"off\" to disable pressure cleanups)".into(),
            );
        }
        Ok(Some(MinFree::Bytes(n)))
    }

    pub fn serialize<S: Serializer>(m: &Option<MinFree>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            None => s.serialize_str("off"),
            Some(MinFree::Percent(p)) => s.serialize_str(&format!("{p}%")),
            Some(MinFree::Bytes(n)) => s.serialize_str(&format_size(*n)),
        }
    }
}

/// `pressure.memory_high`: a percentage of the container's memory limit in (0, 100], or "off".
mod memory_high {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        read(d, |value| {
            let Scalar::Text(text) = value else {
                return Err(
                    "must be a percentage of the container's memory limit such as \
                            \"90%\", or \"off\""
                        .into(),
                );
            };
            let text = text.trim();
            if text == "off" {
                return Ok(None);
            }
            let p: f64 = text
                .strip_suffix('%')
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| {
                    format!("{text:?} is not a percentage such as \"90%\", or \"off\"")
                })?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "percentage must be above 0% and at most 100%, got {text:?}"
                ));
            }
            Ok(Some(p))
        })
    }

    pub fn serialize<S: Serializer>(p: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.map_or_else(|| "off".to_owned(), |p| format!("{p}%")))
    }
}

// ---------------------------------------------------------------------------------------------
// LabelMatch, MinFree
// ---------------------------------------------------------------------------------------------

impl LabelMatch {
    fn new(key: &str, value: Option<&str>) -> Self {
        LabelMatch {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    /// True when `labels` has this key and, for `key=value`, exactly this value.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        match (&self.value, labels.get(&self.key)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(have)) => want == have,
        }
    }
}

impl Serialize for LabelMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `"key=value"` or `"key"`; the value may be empty (`"key="` matches a label set to "").
impl FromStr for LabelMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        if key.is_empty() {
            return Err(format!(
                "label {s:?} has an empty key; write \"key=value\" or \"key\""
            ));
        }
        // Docker label keys never contain whitespace; a padded key would silently never match.
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("label key in {s:?} contains whitespace"));
        }
        Ok(LabelMatch::new(key, value))
    }
}

impl fmt::Display for LabelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}", self.key, v),
            None => f.write_str(&self.key),
        }
    }
}

/// `10%`, or a 1024-based size with two decimals in the orchestrator's unit style (`5.00 GB`), so it
/// reads the same as the free space beside it in the disk-pressure log line.
impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(n) => {
                const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
                let mut value = n as f64;
                let mut unit = 0;
                while value >= 1024.0 && unit < UNITS.len() - 1 {
                    value /= 1024.0;
                    unit += 1;
                }
                if unit == 0 {
                    write!(f, "{n} bytes")
                } else {
                    write!(f, "{value:.2} {}", UNITS[unit])
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostname
// ---------------------------------------------------------------------------------------------

/// The machine's hostname (default `discovery.advertise_host`), "localhost" if unavailable.
pub fn hostname() -> String {
    let uts = rustix::system::uname();
    match uts.nodename().to_str() {
        Ok(name) if !name.trim().is_empty() => name.to_owned(),
        _ => "localhost".into(),
    }
}

/// The unit tests are in their own file so that this one reads as the definition of the keys.
#[cfg(test)]
mod tests;
