//! Shared harness for the integration tests (`mod common;` in each tests/*.rs).
//!
//! The agent's job is to watch real Docker containers, so the tests run real
//! ones: a fake AceStream engine (tests/fixtures/fake-engine) built locally
//! FROM scratch around the host's static busybox, because no registry can be
//! reached. Everything here is written for test runners that run many tests
//! at once, in threads (cargo test) or in separate processes (nextest):
//! image builds are serialised across processes, every container carries a
//! per-process run id and a unique name, and cleanup never touches another
//! live test's containers.
//!
//! Docker is driven through the `docker` CLI on purpose: it is independent of
//! the agent's own Docker client code (bollard), so a bug there cannot hide
//! itself by also breaking the harness.
#![allow(dead_code)] // each test file uses a different subset of the harness

mod case;
mod fleet;
mod host;
mod process;
pub mod prom;
// Not every test binary uses the in-process agent or a child process.
#[allow(unused_imports)]
pub use case::*;
#[allow(unused_imports)]
pub use fleet::*;
#[allow(unused_imports)]
pub use host::*;
#[allow(unused_imports)]
pub use process::*;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Label on every container the harness starts; its value is [`run_id`].
pub const TEST_LABEL: &str = "acestream-agent.test";
/// Unix time (seconds) at which the harness created the container; the
/// leftover sweep goes by this instead of parsing Docker's human-readable ages.
pub const TEST_CREATED_LABEL: &str = "acestream-agent.test.created";
/// The label the agent discovers engines by; set on engines by default.
pub const ENGINE_LABEL: &str = "acestream.engine";
/// The engine's HTTP port inside the container, as on a real engine.
pub const ENGINE_PORT: u16 = 6878;
/// Where a real engine (and so the fake one, unless CACHE_DIR says otherwise)
/// keeps its cache.
pub const DEFAULT_CACHE_DIR: &str = "/home/appuser/.ACEStream/.acestream_cache";
/// The engine's health endpoint; 200 means the engine answers HTTP.
pub const STATUS_PATH: &str = "/server/api?api_version=3&method=get_status";
/// The engine's version endpoint.
pub const VERSION_PATH: &str = "/webui/api/service?method=get_version";

/// Containers older than this are taken to be leftovers of killed test runs.
/// No test should take this long, so a parallel process's containers are safe.
const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// Upper bound for any single HTTP exchange, so a wedged server fails the test
/// instead of hanging it.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// docker CLI
// ---------------------------------------------------------------------------

/// Runs `docker ARGS`. A missing CLI panics with the same message as an
/// unreachable daemon, so a machine without Docker gives one clear reason.
fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need a running Docker daemon: cannot run the `docker` CLI: {e}")
        })
}

/// Runs `docker ARGS` and returns trimmed stdout, or an error that carries
/// the command and its stderr so a failing test explains itself.
fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = docker_output(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Like [`try_docker`], for calls that must work for the test to mean anything.
fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The median of a bench's repeated measurements (the mean of the middle two for an even
/// count).
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Whether a bench binary (`benches/<name>.rs`) was started by `cargo bench`, which passes
/// `--bench`. `cargo test --all-targets` runs the binary without it and `cargo nextest` asks it
/// to `--list` its tests: there are none, so it says nothing to nextest, points a person at the
/// right command, and the caller returns.
pub fn bench_requested(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--bench") {
        return true;
    }
    if !args.iter().any(|a| a == "--list") {
        eprintln!("benchmarks run with `cargo bench --bench {name}` (see BENCHMARKS.md)");
    }
    false
}

/// `docker ARGS` on the system daemon, for a test's own steps (stop, rename, inspect): its
/// trimmed stdout; panics with stderr when it fails.
pub fn docker_cli(args: &[&str]) -> String {
    docker(args)
}

/// An engine of this test case: `CASE_LABEL=<case>` (so only the case's agent sees it), named
/// `<prefix>-…`.
pub fn case_engine(case: &str, prefix: &str) -> TestEngineBuilder {
    TestEngine::builder()
        .name_prefix(prefix)
        .label(CASE_LABEL, case)
}

/// `promtool check metrics` on an exposition text: (passed, what promtool said).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed; bash .ci/run installs it");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Checks once per process that the daemon answers, so that a missing daemon
/// produces one clear panic instead of a confusing failure deep in a test.
fn require_docker() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = docker_output(&["version", "--format", "{{.Server.Version}}"]);
        if !out.status.success() {
            panic!(
                "these tests need a running Docker daemon: `docker version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    });
}

/// Identifies this test process. Containers carry it in [`TEST_LABEL`], so a
/// test can restrict the agent's discovery to its own process's engines
/// (other test processes run engines with the same `acestream.engine` label
/// at the same time).
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("system clock before 1970")
            .as_millis();
        format!("{}-{millis}", std::process::id())
    })
}

/// Unix time now, in seconds with a fraction (what `docker events --since/--until` take).
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs_f64()
}

/// The `exec_create` events Docker saw for this case's engines in [since, until]: (container
/// id, action, which names the command: `exec_create: cat /proc/net/tcp …`).
pub fn exec_creates(case: &str, since: f64, until: f64) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &format!("{since:.3}"),
            "--until",
            &format!("{until:.3}"),
            "--filter",
            "event=exec_create",
            "--filter",
            &format!("label={CASE_LABEL}={case}"),
            "--format",
            // One JSON object a line: an action's command may span lines (the cache script).
            "{{json .}}",
        ])
        .output()
        .expect("docker events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("docker event {l:?}: {e}"));
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (text(&v["Actor"]["ID"]), text(&v["Action"]))
        })
        .collect()
}

/// A name no other test, thread or process uses: `<prefix>-<run id>-<n>`.
/// Also usable for per-test label values.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", run_id())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs()
}

/// Removes containers left behind by test processes that were killed before
/// their `Drop` ran. Only old ones: younger ones may belong to tests running
/// right now in other processes.
fn sweep_stale_containers() {
    let listing = match try_docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={TEST_LABEL}"),
        "--format",
        &format!("{{{{.ID}}}}\t{{{{.Label \"{TEST_CREATED_LABEL}\"}}}}"),
    ]) {
        Ok(listing) => listing,
        Err(e) => {
            eprintln!("harness: could not list leftover test containers: {e}");
            return;
        }
    };
    let now = unix_now();
    for line in listing.lines() {
        let mut fields = line.split('\t');
        let (Some(id), Some(created)) = (fields.next(), fields.next()) else {
            continue;
        };
        // No parseable timestamp: not ours to judge, leave it.
        let Ok(created) = created.trim().parse::<u64>() else {
            continue;
        };
        if now.saturating_sub(created) > STALE_AFTER.as_secs() {
            if let Err(e) = try_docker(&["rm", "-f", "-v", id]) {
                eprintln!("harness: could not remove leftover container {id}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// fake engine image
// ---------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-engine")
}

const BUSYBOX: &str = "/usr/bin/busybox";

/// FNV-1a: stable across Rust versions and processes (unlike `DefaultHasher`,
/// whose output std does not promise to keep), so every process of every
/// toolchain agrees on the image tag.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The fixture files (name, contents), sorted so the hash does not depend on
/// directory order.
fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let dir = fixture_dir();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry
            .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()));
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture file {}: {e}", path.display()));
        files.push((name, bytes));
    }
    files.sort();
    assert!(
        files.iter().any(|(name, _)| name == "Dockerfile"),
        "no Dockerfile in {}",
        dir.display()
    );
    files
}

/// Returns the tag of the fake engine image, building it if needed.
///
/// The tag is `acestream-agent-fake-engine:<hash of fixture files + busybox>`,
/// so editing a fixture file rebuilds, and an existing image is reused across
/// processes and runs. Builds are serialised across processes with a file
/// lock, because nextest starts many test processes at once and each would
/// otherwise build the same image. The first call in a process also removes
/// stale containers of killed earlier runs.
pub fn fake_engine_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            require_docker();
            sweep_stale_containers();
            build_image()
        })
        .clone()
}

/// An image built `FROM` the fake engine with `dockerfile_lines` after it (e.g. `RUN ...`,
/// `ENV HOME=...`), tagged by a hash of both, built once (no context: nothing is copied).
pub fn derived_image(dockerfile_lines: &str) -> String {
    let base = fake_engine_image();
    let dockerfile = format!("FROM {base}\n{dockerfile_lines}\n");
    let tag = format!(
        "acestream-agent-fake-engine-derived:{:016x}",
        fnv1a(0xcbf2_9ce4_8422_2325, dockerfile.as_bytes())
    );
    if image_exists(&tag) {
        return tag;
    }
    let mut child = Command::new("docker")
        .args([
            "build",
            "--force-rm",
            "--label",
            &format!("{TEST_LABEL}.image=1"),
            "-t",
            &tag,
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success() || image_exists(&tag),
        "building {tag} from\n{dockerfile}failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

/// The image, built once per test process (and once at a time across processes) by the
/// documented command, into this build's target directory.
pub fn agent_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        fake_engine_image();
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .to_path_buf();
        let lock_path = std::env::temp_dir().join("acestream-agent-image-build.lock");
        let lock = std::fs::File::create(&lock_path).expect("the build lock");
        lock.lock().expect("lock the image build");
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/docker/build.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .env("IMAGE", "acestream-agent-test")
            .output()
            .expect("packaging/docker/build.sh");
        assert!(
            out.status.success(),
            "packaging/docker/build.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "built {} in {:?}",
            String::from_utf8_lossy(&out.stdout).trim(),
            t0.elapsed()
        );
        "acestream-agent-test:latest".to_string()
    })
}

fn image_exists(tag: &str) -> bool {
    docker_output(&["image", "inspect", "--format", "{{.Id}}", tag])
        .status
        .success()
}

fn build_image() -> String {
    let files = fixture_files();
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("the fake engine image needs a static busybox at {BUSYBOX} (Debian package busybox-static): {e}")
    });
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for (name, bytes) in &files {
        hash = fnv1a(hash, name.as_bytes());
        hash = fnv1a(hash, &[0]);
        hash = fnv1a(hash, &(bytes.len() as u64).to_le_bytes());
        hash = fnv1a(hash, bytes);
    }
    hash = fnv1a(hash, &busybox);
    let tag = format!("acestream-agent-fake-engine:{hash:016x}");
    if image_exists(&tag) {
        return tag;
    }

    let lock_path = std::env::temp_dir().join("acestream-agent-fake-engine-build.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open build lock {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Another process may have built it while we waited for the lock.
    if image_exists(&tag) {
        return tag;
    }

    let context = tempfile::tempdir().expect("cannot create a temporary docker build context");
    for (name, bytes) in &files {
        std::fs::write(context.path().join(name), bytes)
            .unwrap_or_else(|e| panic!("cannot write {name} into the build context: {e}"));
    }
    std::fs::write(context.path().join("busybox"), &busybox)
        .expect("cannot copy busybox into the build context");
    // COPY keeps the mode from the context, and fs::write creates 0644 files:
    // without this, RUN cannot execute busybox ("permission denied").
    for name in files
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(["busybox"])
    {
        std::fs::set_permissions(
            context.path().join(name),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap_or_else(|e| panic!("cannot make {name} executable in the build context: {e}"));
    }
    let context_path = context
        .path()
        .to_str()
        .expect("temporary directory path is not UTF-8");
    let out = docker_output(&[
        "build",
        "--force-rm",
        "--label",
        &format!("{TEST_LABEL}.image=1"),
        "-t",
        &tag,
        context_path,
    ]);
    if !out.status.success() {
        panic!(
            "building the fake engine image {tag} from {} failed ({}):\n{}\n{}",
            fixture_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tag
    // `lock` is released when dropped here, after the tag exists.
}

// ---------------------------------------------------------------------------
// TestEngine
// ---------------------------------------------------------------------------

/// Options for [`TestEngine`]; see [`TestEngine::builder`].
#[derive(Debug, Clone)]
pub struct TestEngineBuilder {
    labels: Vec<(String, String)>,
    env: Vec<(String, String)>,
    name_prefix: String,
    publish: bool,
    extra_args: Vec<String>,
    image: Option<String>,
    cmd: Vec<String>,
    cache_dir: Option<String>,
}

impl TestEngineBuilder {
    /// Adds or replaces a label (including the default `acestream.engine`).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.retain(|(k, _)| k != key);
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Drops a label, e.g. `acestream.engine` to start a container the agent
    /// must not treat as an engine. The test run label cannot be dropped:
    /// cleanup of leftovers relies on it.
    pub fn without_label(mut self, key: &str) -> Self {
        self.labels.retain(|(k, _)| k != key);
        self
    }

    /// Sets an environment variable: FAKE_VERSION, CACHE_DIR, HANG_DU=1, ...
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Prefix of the container name, so `docker ps` shows which test it is.
    pub fn name_prefix(mut self, prefix: &str) -> Self {
        self.name_prefix = prefix.to_string();
        self
    }

    /// Whether to publish 6878 on a random 127.0.0.1 port (default true).
    /// Unpublished engines are reachable only at their container IP.
    pub fn publish(mut self, publish: bool) -> Self {
        self.publish = publish;
        self
    }

    /// Passes extra arguments to `docker run` (before the image), for cases
    /// the builder does not cover, e.g. `--network none`.
    pub fn docker_arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// Arguments after the image: the engine's own command line (`--http-port N`,
    /// `--cache-dir D`, `@file`, ...), or a command when the entrypoint is replaced.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Another image than the fake engine (one derived from it, see [`derived_image`]).
    pub fn image(mut self, image: &str) -> Self {
        self.image = Some(image.to_string());
        self
    }

    /// Where the engine keeps its cache when its command line or image says so rather than
    /// CACHE_DIR (for the cache helpers).
    pub fn cache_dir(mut self, dir: &str) -> Self {
        self.cache_dir = Some(dir.to_string());
        self
    }

    /// Starts the container (building the image first if needed). Returns
    /// once Docker reports it started; HTTP may need a moment more, see
    /// [`TestEngine::wait_http_ready`].
    pub fn start(self) -> TestEngine {
        let image = self.image.clone().unwrap_or_else(fake_engine_image);
        let name = unique_name(&self.name_prefix);
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| {
            self.env
                .iter()
                .find(|(k, _)| k == "CACHE_DIR")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| DEFAULT_CACHE_DIR.to_string())
        });

        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.push("--label".into());
        args.push(format!("{TEST_LABEL}={}", run_id()));
        args.push("--label".into());
        args.push(format!("{TEST_CREATED_LABEL}={}", unix_now()));
        for (k, v) in &self.labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        for (k, v) in &self.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        if self.publish {
            args.push("-p".into());
            args.push(format!("127.0.0.1::{ENGINE_PORT}"));
        }
        args.extend(self.extra_args.iter().cloned());
        args.push(image);
        args.extend(self.cmd.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&args);

        // From here on Drop removes the container, whatever fails next.
        let mut engine = TestEngine {
            id,
            name,
            host_port: 0,
            cache_dir,
            removed: AtomicBool::new(false),
        };
        if self.publish {
            engine.host_port = engine.published_port();
        }
        engine
    }
}

/// A running fake engine container, removed (`docker rm -f`) on drop, also
/// when the test panics, so failing tests leave nothing behind.
///
/// The methods that talk to Docker block (they run the `docker` CLI). That is
/// fine in `#[tokio::test]` code: each call takes well under a second.
#[derive(Debug)]
pub struct TestEngine {
    /// Full container id.
    pub id: String,
    /// Container name (unique, see [`unique_name`]).
    pub name: String,
    /// Host port on 127.0.0.1 that forwards to 6878; 0 if not published.
    pub host_port: u16,
    /// Cache directory inside the container.
    pub cache_dir: String,
    removed: AtomicBool,
}

impl TestEngine {
    /// Defaults: label `acestream.engine=true`, 6878 published on 127.0.0.1,
    /// name prefix `ace-test`.
    pub fn builder() -> TestEngineBuilder {
        TestEngineBuilder {
            labels: vec![(ENGINE_LABEL.to_string(), "true".to_string())],
            env: Vec::new(),
            name_prefix: "ace-test".to_string(),
            publish: true,
            extra_args: Vec::new(),
            image: None,
            cmd: Vec::new(),
            cache_dir: None,
        }
    }

    /// An engine with all defaults, started.
    pub fn start() -> TestEngine {
        Self::builder().start()
    }

    fn published_port(&self) -> u16 {
        let mapping = docker(&["port", &self.id, &format!("{ENGINE_PORT}/tcp")]);
        let first = mapping.lines().next().unwrap_or_default();
        first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "unexpected `docker port` output for {}: {mapping:?}",
                    self.name
                )
            })
    }

    /// 127.0.0.1:<host port>, the address tests reach the engine at.
    pub fn addr(&self) -> SocketAddr {
        assert!(
            self.host_port != 0,
            "engine {} was started with publish(false)",
            self.name
        );
        SocketAddr::from(([127, 0, 0, 1], self.host_port))
    }

    /// Runs a command in the container and returns its trimmed stdout; panics
    /// with stderr when it fails, since tests use it to set up state.
    pub fn exec(&self, args: &[&str]) -> String {
        self.try_exec(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`exec`](Self::exec) for commands that are expected to fail sometimes.
    pub fn try_exec(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["exec", self.id.as_str()];
        full.extend_from_slice(args);
        try_docker(&full)
    }

    /// Creates `<cache dir>/<name>` (subdirectories allowed) with `bytes`
    /// random bytes: random, so no filesystem can store it sparsely or
    /// compressed and `du` sees the full size.
    pub fn write_cache_file(&self, name: &str, bytes: u64) {
        let path = format!("{}/{name}", self.cache_dir);
        self.exec(&[
            "/usr/bin/busybox",
            "sh",
            "-c",
            r#"mkdir -p "$(dirname "$1")" && head -c "$2" /dev/urandom > "$1""#,
            "sh",
            &path,
            &bytes.to_string(),
        ]);
    }

    /// Disk usage of the cache dir in KiB (`du -sk`, directory blocks
    /// included). Calls busybox explicitly so it works on HANG_DU engines.
    pub fn cache_du_k(&self) -> u64 {
        let out = self.exec(&["/usr/bin/busybox", "du", "-sk", &self.cache_dir]);
        out.split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("unexpected du output in {}: {out:?}", self.name))
    }

    /// Files under the cache dir, relative to it, sorted.
    pub fn list_cache(&self) -> Vec<String> {
        let out = self.exec(&["/usr/bin/busybox", "find", &self.cache_dir, "-type", "f"]);
        let prefix = format!("{}/", self.cache_dir.trim_end_matches('/'));
        let mut files: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
            .collect();
        files.sort();
        files
    }

    /// Host pid of the container's init process (what the agent uses to read
    /// `/proc/<pid>/net/tcp6`); 0 when the container is not running.
    pub fn pid(&self) -> u32 {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &self.id]);
        pid.parse()
            .unwrap_or_else(|_| panic!("unexpected pid {pid:?} for {}", self.name))
    }

    /// The container's IP on its (first) Docker network.
    pub fn ip(&self) -> IpAddr {
        let ips = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &self.id,
        ]);
        ips.split_whitespace()
            .next()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("container {} has no IP address: {ips:?}", self.name))
    }

    /// Stops the container but keeps it, e.g. to test that the agent notices
    /// an engine going away. The engine exits on SIGTERM at once; the 5 s
    /// grace only matters if that ever breaks.
    pub fn stop(&self) {
        docker(&["stop", "-t", "5", &self.id]);
    }

    /// Removes the container now rather than at drop.
    pub fn remove(&self) {
        if !self.removed.swap(true, Ordering::SeqCst) {
            docker(&["rm", "-f", "-v", &self.id]);
        }
    }

    /// Number of ESTABLISHED TCP connections to port 6878 inside the
    /// container, read from `/proc/<pid>/net/tcp{,6}` like the agent does.
    /// Tests use it to know a client is really connected before asserting
    /// what the agent makes of it. Needs root on the host, as the agent does.
    pub fn established_connections(&self) -> usize {
        let pid = self.pid();
        assert!(pid != 0, "container {} is not running", self.name);
        let port = format!("{ENGINE_PORT:04X}");
        ["tcp", "tcp6"]
            .iter()
            .map(|file| {
                let path = format!("/proc/{pid}/net/{file}");
                let table = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
                table
                    .lines()
                    .skip(1)
                    .filter(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.len() > 3
                            && fields[1].rsplit(':').next() == Some(port.as_str())
                            && fields[3] == "01"
                    })
                    .count()
            })
            .sum()
    }

    /// Waits until get_status answers 200, which a fresh container does
    /// within a fraction of a second; panics after 10 s.
    pub async fn wait_http_ready(&self) {
        let addr = self.addr();
        eventually(
            Duration::from_secs(10),
            &format!("engine {} to answer get_status", self.name),
            || async move {
                match try_http_get(addr, STATUS_PATH).await {
                    Ok((200, body)) => Ok(body),
                    Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
                    Err(e) => Err(e),
                }
            },
        )
        .await;
    }

    /// Opens a stream client on this engine's published port.
    pub fn stream_client(&self) -> StreamClient {
        StreamClient::connect(self.addr(), "x")
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        // No panic here: this may run while a failed test is unwinding.
        if let Err(e) = try_docker(&["rm", "-f", "-v", &self.id]) {
            eprintln!("harness: could not remove test engine {}: {e}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// eventually
// ---------------------------------------------------------------------------

/// What an [`eventually`] attempt returns: `Option` (None = not yet) or
/// `Result` (the error is kept as the last value seen, for the panic message).
pub trait Attempt {
    type Value;
    fn into_attempt(self) -> Result<Self::Value, String>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn into_attempt(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: std::fmt::Debug> Attempt for Result<T, E> {
    type Value = T;
    fn into_attempt(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Polls `f` every ~20 ms until it yields a value, and returns it; panics
/// after `deadline` with `what` and the last value seen.
///
/// Tests wait with this instead of sleeping: a sleep is either too short on a
/// loaded machine (flaky) or too long everywhere (slow). An attempt that is
/// still running at the deadline is abandoned, so a hung call cannot hang the
/// test.
pub async fn eventually<F, Fut>(
    deadline: Duration,
    what: &str,
    mut f: F,
) -> <Fut::Output as Attempt>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Attempt,
{
    let start = Instant::now();
    let end = start + deadline;
    let mut last = String::from("(no attempt finished)");
    let mut attempts = 0u32;
    loop {
        let remaining = end.saturating_duration_since(Instant::now());
        attempts += 1;
        match tokio::time::timeout(remaining, f()).await {
            Ok(outcome) => match outcome.into_attempt() {
                Ok(value) => return value,
                Err(e) => last = e,
            },
            Err(_) => last = format!("attempt still running at the deadline; before that: {last}"),
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} ({attempts} attempts) waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// HTTP client helpers
// ---------------------------------------------------------------------------

/// One HTTP/1.1 request with a fresh connection (no pool state leaks between
/// tests), returning status and body. Errors (connect, timeout, ...) come
/// back as text for [`eventually`] to report.
pub async fn try_http_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("invalid request {method} {path}: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{method} http://{addr}{path}: {e:?}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} http://{addr}{path}: reading body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!("{method} http://{addr}{path}: no complete answer within {HTTP_TIMEOUT:?}")
        })?
}

/// GET that reports failure as `Err`, for use inside [`eventually`].
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    try_http_request("GET", addr, path, "", &[]).await
}

/// `acestream_agent_cache_operations_total` of a running agent by method: (host, exec).
pub async fn cache_operations(addr: SocketAddr) -> (u64, u64) {
    let (status, text) = try_http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let count = |method: &str| -> u64 {
        let head = format!("acestream_agent_cache_operations_total{{method=\"{method}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(head.as_str()))
            .unwrap_or_else(|| panic!("no {head} in:\n{text}"))
            .parse()
            .unwrap()
    };
    (count("host"), count("exec"))
}

/// GET that must get an answer (any status); panics if none comes.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// POST that must get an answer (any status); panics if none comes.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    try_http_request("POST", addr, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// GET whose body must be JSON (whatever the status: error bodies are JSON
/// too); panics with the raw body if it is not.
pub async fn http_get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("GET http://{addr}{path} (HTTP {status}) did not return JSON ({e}): {body:?}")
    });
    (status, json)
}

// ---------------------------------------------------------------------------
// StreamClient
// ---------------------------------------------------------------------------

#[derive(Default)]
struct StreamState {
    body_bytes: AtomicU64,
    status: Mutex<Option<u16>>,
    closed: AtomicBool,
    gaps: Mutex<Gaps>,
}

/// When body bytes last arrived, and the longest wait between two arrivals.
#[derive(Default, Clone, Copy)]
struct Gaps {
    last: Option<Instant>,
    longest: Duration,
}

/// A viewer: a raw TCP connection that requests `/ace/getstream` and reads
/// the body for as long as it lives, like a player would. While it exists
/// the engine has an ESTABLISHED connection on 6878 and keeps filling its
/// cache; dropping it closes the connection. Raw std TCP on a thread, so it
/// works without (and independently of) any async runtime.
pub struct StreamClient {
    stream: TcpStream,
    state: Arc<StreamState>,
    reader: Option<JoinHandle<()>>,
}

impl StreamClient {
    /// Connects to `addr` and requests `/ace/getstream?id=<id>`.
    pub fn connect(addr: SocketAddr, id: &str) -> StreamClient {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("stream client cannot connect to {addr}: {e}"));
        let request = format!("GET /ace/getstream?id={id} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("stream client cannot send its request to {addr}: {e}"));
        let mut reader_stream = stream
            .try_clone()
            .expect("cannot clone the stream client socket");
        let state = Arc::new(StreamState::default());
        let reader_state = Arc::clone(&state);
        let reader = std::thread::Builder::new()
            .name("stream-client".into())
            .spawn(move || read_stream(&mut reader_stream, &reader_state))
            .expect("cannot spawn the stream client thread");
        StreamClient {
            stream,
            state,
            reader: Some(reader),
        }
    }

    /// Body bytes received so far (response head excluded).
    pub fn bytes_read(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// HTTP status of the response, once its status line has arrived.
    pub fn status(&self) -> Option<u16> {
        *self
            .state
            .status
            .lock()
            .expect("stream client state poisoned")
    }

    /// The longest wait between two reads of body bytes so far, and since the last one.
    pub fn longest_gap(&self) -> Duration {
        let g = *self
            .state
            .gaps
            .lock()
            .expect("stream client state poisoned");
        g.longest
            .max(g.last.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// True once the server closed the connection or reading failed.
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("stream client socket has no local address")
    }
}

fn read_stream(stream: &mut TcpStream, state: &StreamState) {
    let mut head: Vec<u8> = Vec::new();
    let mut in_body = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if in_body {
            state.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
            let mut g = state.gaps.lock().expect("stream client state poisoned");
            let now = Instant::now();
            if let Some(last) = g.last {
                g.longest = g.longest.max(now - last);
            }
            g.last = Some(now);
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = std::str::from_utf8(&head[..end])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok());
            *state.status.lock().expect("stream client state poisoned") = status;
            state
                .body_bytes
                .fetch_add((head.len() - end - 4) as u64, Ordering::SeqCst);
            in_body = true;
        }
    }
    state.closed.store(true, Ordering::SeqCst);
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        // Shutdown wakes the reader thread's blocking read; the socket itself
        // closes when the last handle (ours and the thread's clone) is gone.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
