//! The command line and configuration, out of process (README "Running it", "Configuration"):
//! layering (defaults < `--config` file < `ACESTREAM_AGENT_*` env, `AUTOSCALE_INTERVAL_S`), exit
//! code 2 naming the offending key, `--version`, `--help`.
//!
//! Every run gets a cleared environment (only `PATH` and what the test sets) and an explicit
//! `--config`, so neither the test runner's environment nor a host's
//! /etc/acestream-agent/config.toml can change the outcome.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_acestream-agent");

/// Exit code for configuration errors (src/main.rs, README "Configuration").
const CONFIG_ERROR: i32 = 2;

/// How long an invocation that must fail fast (bad config) may take before the test gives up.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to completion, killing it if it outlives `EXIT_DEADLINE` (the test then
/// fails with whatever it printed).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = command(args, env).spawn().expect("spawn acestream-agent");
    let end = Instant::now() + EXIT_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "acestream-agent {args:?} still running after {EXIT_DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Asserts that both `check-config` and `run` refuse the config with exit 2 and a message
/// naming `key` as "invalid value for `<key>`".
fn assert_refused(config: &Path, env: &[(&str, &str)], key: &str) {
    for mode in ["check-config", "run"] {
        let out = run(&[mode, "--config", s(config)], env);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(CONFIG_ERROR),
            "`{mode}` with {env:?} and {}: {:?}\nstderr: {err}",
            std::fs::read_to_string(config).unwrap_or_default(),
            out.status
        );
        assert!(
            err.contains(&format!("invalid value for `{key}`")),
            "`{mode}`: stderr must name `{key}`; got: {err}"
        );
        assert_eq!(stdout(&out), "", "`{mode}` prints no config on error");
    }
}

/// A valid base config, so each case changes exactly one thing.
fn base(files: &Files) -> PathBuf {
    files.write(
        "base.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n",
            s(&files.path("state.redb"))
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[test]
fn check_config_prints_the_effective_config() {
    let files = Files::new();
    let store = files.path("from-env/state.redb");
    let config = files.write(
        "agent.toml",
        r#"
[http]
listen = "127.0.0.1:19477"

[discovery]
labels = ["team=media", "acestream.engine"]
engine_port = 16878

[health]
interval = "90s"
timeout = "3s"

[cleanup]
interval = "10m"
concurrency = 2
cache_path = "/root/.ACEStream/.acestream_cache"

[store]
path = "/var/lib/from-file/state.redb"
"#,
    );
    let out = run(
        &["check-config", "--config", s(&config)],
        &[
            ("ACESTREAM_AGENT_HEALTH__INTERVAL", "2m"),
            ("ACESTREAM_AGENT_CLEANUP__CONCURRENCY", "8"),
            ("ACESTREAM_AGENT_STORE__PATH", s(&store)),
            (
                "ACESTREAM_AGENT_DISCOVERY__ADVERTISE_HOST",
                "media-host.lan",
            ),
            ("AUTOSCALE_INTERVAL_S", "45"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let cfg: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("check-config output is not TOML ({e}):\n{text}"));
    let get = |section: &str, key: &str| -> toml::Value {
        cfg.get(section)
            .and_then(|t| t.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("no {section}.{key} in:\n{text}"))
    };
    let str_of = |section: &str, key: &str| get(section, key).as_str().unwrap().to_string();

    // From the file.
    assert_eq!(str_of("http", "listen"), "127.0.0.1:19477");
    assert_eq!(
        get("discovery", "labels"),
        toml::Value::Array(vec!["team=media".into(), "acestream.engine".into()])
    );
    assert_eq!(get("discovery", "engine_port").as_integer(), Some(16878));
    assert_eq!(str_of("health", "timeout"), "3s");
    assert_eq!(
        str_of("cleanup", "cache_path"),
        "/root/.ACEStream/.acestream_cache"
    );
    // Env over file.
    assert_eq!(str_of("health", "interval"), "2m");
    assert_eq!(get("cleanup", "concurrency").as_integer(), Some(8));
    assert_eq!(str_of("store", "path"), s(&store));
    assert_eq!(str_of("discovery", "advertise_host"), "media-host.lan");
    // AUTOSCALE_INTERVAL_S (seconds) sets cleanup.interval, over the file's 10m.
    assert_eq!(str_of("cleanup", "interval"), "45s");
    // Built-in defaults where nobody said anything.
    assert_eq!(
        get("discovery", "images"),
        toml::Value::Array(vec!["*acestream*".into(), "*acelink*".into()])
    );
    assert_eq!(str_of("activity", "interval"), "5s");
    assert_eq!(str_of("cleanup", "idle_grace"), "5s");
    assert_eq!(str_of("cleanup", "exec_timeout"), "1m");
    assert_eq!(str_of("store", "retention"), "7d");
    assert_eq!(str_of("pressure", "min_free"), "10%");
    assert_eq!(str_of("pressure", "memory_high"), "90%");

    // check-config only reads: no store file, no directory for it.
    assert!(
        !store.parent().unwrap().exists(),
        "check-config must not create the store"
    );
}

#[test]
fn check_config_output_is_a_loadable_config() {
    let files = Files::new();
    let first = run(
        &["check-config", "--config", s(&base(&files))],
        &[("AUTOSCALE_INTERVAL_S", "45")],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let saved = files.write("saved.toml", &stdout(&first));
    let second = run(&["check-config", "--config", s(&saved)], &[]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(stdout(&second), stdout(&first));
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let files = Files::new();
    let config = files.write(
        "typo.toml",
        &format!(
            "{}\n[cleanup]\nintervall = \"30s\"\n",
            std::fs::read_to_string(base(&files)).unwrap()
        ),
    );
    assert_refused(&config, &[], "cleanup.intervall");
    assert_refused(
        &base(&files),
        &[("ACESTREAM_AGENT_HTTP__LISTN", "127.0.0.1:1")],
        "http.listn",
    );
}

#[test]
fn bad_duration_exits_2_naming_the_key() {
    let files = Files::new();
    let config = base(&files);
    for (var, value, key) in [
        (
            "ACESTREAM_AGENT_CLEANUP__INTERVAL",
            "5 parsecs",
            "cleanup.interval",
        ),
        ("ACESTREAM_AGENT_HEALTH__TIMEOUT", "soon", "health.timeout"),
        (
            "ACESTREAM_AGENT_CLEANUP__IDLE_GRACE",
            "-5s",
            "cleanup.idle_grace",
        ),
        ("ACESTREAM_AGENT_STORE__RETENTION", "7x", "store.retention"),
        ("AUTOSCALE_INTERVAL_S", "30s", "AUTOSCALE_INTERVAL_S"),
    ] {
        assert_refused(&config, &[(var, value)], key);
    }
    let in_file = files.write(
        "duration.toml",
        &format!(
            "{}\n[discovery]\nresync_interval = \"a minute\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    );
    assert_refused(&in_file, &[], "discovery.resync_interval");
}

#[test]
fn bad_cache_paths_exit_2_naming_the_key() {
    let files = Files::new();
    let config = base(&files);
    for path in [
        "/",
        "/etc",
        "relative",
        "relative/cache",
        "/a/../b",
        "/a/./b",
        "",
    ] {
        assert_refused(
            &config,
            &[("ACESTREAM_AGENT_CLEANUP__CACHE_PATH", path)],
            "cleanup.cache_path",
        );
    }
    // The same rule for the file.
    let in_file = files.write(
        "cache.toml",
        &format!(
            "{}\n[cleanup]\ncache_path = \"/usr\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    );
    assert_refused(&in_file, &[], "cleanup.cache_path");
    // Control: a normal absolute path below a system directory is fine.
    let ok = run(
        &["check-config", "--config", s(&config)],
        &[(
            "ACESTREAM_AGENT_CLEANUP__CACHE_PATH",
            "/dev/shm/.ACEStream/.acestream_cache",
        )],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}

#[test]
fn zero_concurrency_exits_2_naming_the_key() {
    let files = Files::new();
    let config = base(&files);
    assert_refused(
        &config,
        &[("ACESTREAM_AGENT_CLEANUP__CONCURRENCY", "0")],
        "cleanup.concurrency",
    );
    let in_file = files.write(
        "concurrency.toml",
        &format!(
            "{}\n[cleanup]\nconcurrency = 0\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    );
    assert_refused(&in_file, &[], "cleanup.concurrency");
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let files = Files::new();
    let missing = files.path("no-such-dir/agent.toml");
    for mode in ["check-config", "run"] {
        let out = run(&[mode, "--config", s(&missing)], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(CONFIG_ERROR), "`{mode}`: {err}");
        assert!(
            err.contains(s(&missing)),
            "`{mode}`: stderr must name {}; got: {err}",
            missing.display()
        );
        assert!(err.contains("not found"), "`{mode}`: {err}");
    }
    assert!(
        !files.path("state.redb").exists(),
        "nothing was started on defaults"
    );
}

#[test]
fn listen_address_in_use_exits_2_naming_http_listen() {
    let files = Files::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(
        &["run", "--config", s(&base(&files))],
        &[
            ("ACESTREAM_AGENT_HTTP__LISTEN", &addr),
            (
                "ACESTREAM_AGENT_DISCOVERY__LABELS",
                "acestream-agent.test.case=cli-listen-in-use",
            ),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(CONFIG_ERROR), "stderr: {err}");
    assert!(
        err.contains("invalid value for `http.listen`"),
        "stderr must name http.listen: {err}"
    );
    assert!(err.contains(&addr), "stderr must say which address: {err}");
    drop(taken);
}

#[test]
fn version_prints_the_version() {
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("acestream-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_run_and_check_config() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"run"), "run missing from:\n{text}");
    assert!(
        commands.contains(&"check-config"),
        "check-config missing from:\n{text}"
    );
    assert!(text.contains("--config"), "--config missing from:\n{text}");
    assert!(
        text.contains("--version"),
        "--version missing from:\n{text}"
    );
}
