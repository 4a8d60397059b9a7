//! Live sizes' sibling, disk pressure (docs/cache-paths.md#disk-pressure), against real Docker and
//! a real small filesystem: each test mounts its own tmpfs (the tests run as root), bind-mounts
//! per-engine directories of it into fake engines as their caches, fills them from the host, and
//! then pushes the free space of that filesystem below `pressure.min_free` in steps, asserting
//! exactly which engines the agent cleans at each step.
//!
//! The tmpfs is a *host* filesystem here: what the agent must not watch are caches on a tmpfs
//! *container* mount (`--tmpfs`, `--mount type=tmpfs`), which are memory inside the container.
//!
//! Every test runs its own agent in-process, restricted to engines carrying a label unique to
//! the test, with the sweep and stream-end cleanups off (a pressure-only host).

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use acestream_agent::config::{CacheMethod, Config, MinFree};
use acestream_agent::Agent;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// A real small filesystem
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted on drop (also when the test panics). Declare it
/// before the engines that bind-mount it, so they are removed first.
struct Tmpfs {
    path: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        // Canonical, so it is exactly the mountpoint the kernel (and the agent) reports.
        let path = std::fs::canonicalize(dir.path()).unwrap().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "these tests mount a tmpfs and need root: mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }

    /// The mountpoint as the agent names it (`cache_mountpoint`, the `mountpoint` label).
    fn mountpoint(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// A directory on the filesystem (created).
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.path.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// (available to unprivileged users, size), straight from statvfs.
    fn space(&self) -> (u64, u64) {
        statvfs(&self.path)
    }

    fn avail(&self) -> u64 {
        self.space().0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a container not yet gone): detach it now, the kernel
            // frees it when the last user leaves.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn statvfs(path: &Path) -> (u64, u64) {
    let s = rustix::fs::statvfs(path).expect("statvfs");
    (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)
}

/// Writes a file of `bytes` (non-zero pattern; tmpfs stores every written page).
fn fill(path: &Path, bytes: u64) {
    fill_with(path, bytes, || {});
}

/// [`fill`], calling `after_each` after every MiB (or less, at the end) written.
fn fill_with(path: &Path, bytes: u64, mut after_each: impl FnMut()) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
        after_each();
    }
}

/// `fill` that notes when the filesystem under `path` went below `threshold` free bytes: the
/// crossing as exactly as the writer itself sees it (a poller starved of CPU can miss it,
/// when the agent is quick to clean it back above).
fn fill_noting_crossing(path: &Path, bytes: u64, threshold: u64) -> DateTime<Utc> {
    let dir = path.parent().expect("a file in a directory");
    let mut crossed = None;
    fill_with(path, bytes, || {
        if crossed.is_none() && statvfs(dir).0 < threshold {
            crossed = Some(Utc::now());
        }
    });
    crossed.expect("the fill never took free space below the threshold")
}

/// A measured size: the data written plus what `du` counts for directories (tmpfs: a few
/// dozen bytes per entry).
#[track_caller]
fn assert_near(v: &Value, bytes: u64) {
    let got = v.as_u64().unwrap_or_else(|| panic!("not a size: {v}"));
    assert!(
        got >= bytes && got - bytes <= 4096,
        "{got} is not {bytes} plus directory entries"
    );
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

// ---------------------------------------------------------------------------------------------
// The agent and its views
// ---------------------------------------------------------------------------------------------

/// Pressure-only config: no sweep, no stream-end cleanup, no periodic measuring; only this
/// test's engines; free space read every 200 ms.
fn config(case: &str, dir: &TempDir, min_free: Option<MinFree>) -> Config {
    let mut cfg = case_config(case, &dir.path().join("state.redb"));
    // Health checks once, right after discovery (tests wait for it, `wait_checked`): a check
    // connected at the moment of a delete makes the cache script's live-stream guard see a
    // client and skip that engine, which would make "exactly these engines" depend on timing.
    cfg.health.interval = Duration::from_secs(600);
    cfg.cleanup.exec_timeout = Duration::from_secs(10);
    cfg.pressure.interval = Duration::from_millis(200);
    cfg.pressure.min_free = min_free;
    // What these tests assert of busy engines: untouched. The busy-files pass has tests of
    // its own below (`every_engine_busy`), which turn it on.
    cfg.pressure.busy_files = acestream_agent::config::BusyFiles::Off;
    cfg
}

async fn start_agent(cfg: Config) -> Agent {
    logs();
    common::start_agent(cfg).await
}

/// `-v host:dest` on `docker run`.
fn bind(b: TestEngineBuilder, host: &Path, dest: &str) -> TestEngineBuilder {
    b.docker_arg("-v")
        .docker_arg(&format!("{}:{dest}", host.display()))
}

async fn engines(agent: &Agent) -> Vec<Value> {
    let (status, v) = http_get_json(agent.addr, "/engines").await;
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// Waits until `/engines` lists exactly `want` engines (by id) with these `cache_mountpoint`s.
async fn wait_mountpoints(agent: &Agent, want: &[(&TestEngine, Option<&str>)]) {
    let want: BTreeMap<String, Value> = want
        .iter()
        .map(|(e, m)| (e.id.clone(), m.map_or(Value::Null, Value::from)))
        .collect();
    let addr = agent.addr;
    let want = &want;
    eventually(
        Duration::from_secs(10),
        "every engine listed with its cache_mountpoint",
        || async move {
            let (_, body) = try_http_get(addr, "/engines").await?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let got: BTreeMap<String, Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        e["container_id"].as_str().unwrap_or("").to_string(),
                        e["cache_mountpoint"].clone(),
                    )
                })
                .collect();
            if &got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}, want {want:?}"))
            }
        },
    )
    .await;
}

/// Waits until every engine has had its first health check (within a second of discovery), so
/// none is in progress during an episode: see `config`.
async fn wait_checked(agent: &Agent, n: usize) {
    eventually(Duration::from_secs(10), "first health checks", || async {
        let list = engines(agent).await;
        let checked = list
            .iter()
            .filter(|e| e["last_health_check"].is_string())
            .count();
        (list.len() == n && checked == n)
            .then_some(())
            .ok_or(checked)
    })
    .await;
}

/// The engine's cleanup records with trigger `pressure`, oldest first.
async fn pressure_records(agent: &Agent, e: &TestEngine) -> Vec<Value> {
    let (status, v) = http_get_json(agent.addr, &format!("/engines/{}/cleanups", e.id)).await;
    assert_eq!(status, 200, "{v}");
    let all = v.as_array().unwrap();
    assert!(
        all.iter().all(|r| r["trigger"] == "pressure"),
        "{}: a cleanup that pressure did not start on a pressure-only host: {v}",
        e.name
    );
    all.iter().rev().cloned().collect()
}

/// Waits until engine `e` has `n` pressure records; returns them.
async fn wait_records(agent: &Agent, e: &TestEngine, n: usize, what: &str) -> Vec<Value> {
    eventually(Duration::from_secs(10), what, || async {
        let r = pressure_records(agent, e).await;
        if r.len() >= n {
            Ok(r)
        } else {
            Err(format!("{} records", r.len()))
        }
    })
    .await
}

async fn metrics(agent: &Agent) -> String {
    let (status, body) = http_get(agent.addr, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// Value of the sample `name{labels}` (exact label set as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn fs_series(name: &str, mountpoint: &str) -> String {
    format!("{name}{{mountpoint=\"{mountpoint}\",medium=\"disk\"}}")
}

/// The series of a memory cache's tmpfs (its engine's labels first).
fn memory_series(name: &str, e: &TestEngine, mountpoint: &str) -> String {
    format!(
        "{name}{{container_name=\"{}\",container_id=\"{}\",mountpoint=\"{mountpoint}\",medium=\"memory\"}}",
        e.name,
        &e.id[..12]
    )
}

fn engine_series(name: &str, e: &TestEngine) -> String {
    format!(
        "{name}{{container_name=\"{}\",container_id=\"{}\"}}",
        e.name,
        &e.id[..12]
    )
}

async fn wait_disk_pressure(agent: &Agent, mountpoint: &str, want: f64) {
    let series = fs_series("acestream_disk_pressure", mountpoint);
    let series = &series;
    eventually(
        Duration::from_secs(10),
        &format!("{series} = {want}"),
        || async move {
            let m = metrics(agent).await;
            match sample(&m, series) {
                Some(v) if v == want => Ok(()),
                v => Err(format!("{v:?}")),
            }
        },
    )
    .await;
}

fn started_at(record: &Value) -> DateTime<Utc> {
    record["started_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no started_at in {record}"))
}

// ---------------------------------------------------------------------------------------------
// Captured logs (one subscriber per test process; lines are told apart by their mountpoint)
// ---------------------------------------------------------------------------------------------

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(
                std::env::var("PRESSURE_TEST_LOG")
                    .unwrap_or_else(|_| "acestream_agent=info".into()),
            )
            .with_writer(move || Sink(w.clone()))
            .try_init();
        buf
    })
    .clone()
}

/// Captured log lines that contain every one of `parts`.
fn log_lines(parts: &[&str]) -> Vec<String> {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Polls statvfs every 2 ms from a thread and notes the first moment free space is below
/// `threshold`: when the disk crossed it, as precisely as the test can see.
struct CrossingWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<DateTime<Utc>>>>,
}

impl CrossingWatch {
    fn start(path: &Path, threshold: u64) -> CrossingWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p) = (stop.clone(), path.to_path_buf());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if statvfs(&p).0 < threshold {
                    return Some(Utc::now());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        CrossingWatch {
            stop,
            handle: Some(handle),
        }
    }

    fn crossed_at(mut self) -> DateTime<Utc> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("free space never went below the threshold")
    }
}

impl Drop for CrossingWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Disk pressure (docs/cache-paths.md#disk-pressure) on a 128 MiB filesystem with
/// `min_free = "32MiB"` and the sweep and the stream-end cleanup off. Idle engines A (30 MiB), B
/// (20 MiB, its cache at a label path on a mount of a parent directory) and C (10 MiB), and D,
/// streaming, all on the tmpfs; E idle with 5 MiB on Docker's disk, which has plenty of room.
///
/// 1. D's stream writes free space below the threshold: A alone is cleaned (largest first, and
///    one is enough).
/// 2. A file written on the host: B alone is cleaned (A is empty now).
/// 3. A larger file: C is cleaned, free space stays below, nothing idle is left: the pressure
///    persists (one warning), `acestream_disk_pressure` stays 1, and the ticks that follow cost
///    no exec.
/// 4. The host files go: the episode ends.
///
/// D (busy) and E (another filesystem) are never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_cleans_idle_engines_largest_first_until_free_space_is_back() {
    let case = unique_name("pressure-steps");
    let tmp = Tmpfs::mount(128);
    let mp = tmp.mountpoint().to_string();
    let (a_dir, b_dir, c_dir, d_dir, host_dir) = (
        tmp.dir("a"),
        tmp.dir("b"),
        tmp.dir("c"),
        tmp.dir("d"),
        tmp.dir("host"),
    );
    let b_cache = b_dir.join("ace/cache");
    std::fs::create_dir_all(&b_cache).unwrap();
    fill(&a_dir.join("a.bin"), 30 * MIB);
    fill(&b_cache.join("b.bin"), 20 * MIB);
    fill(&c_dir.join("c.bin"), 10 * MIB);
    fill(&d_dir.join("d.bin"), MIB);

    let a = bind(case_engine(&case, "prs-a"), &a_dir, DEFAULT_CACHE_DIR).start();
    let b = bind(case_engine(&case, "prs-b"), &b_dir, "/data")
        .label("acestream.cache_path", "/data/ace/cache")
        .env("CACHE_DIR", "/data/ace/cache")
        .start();
    let c = bind(case_engine(&case, "prs-c"), &c_dir, DEFAULT_CACHE_DIR).start();
    let d = bind(case_engine(&case, "prs-d"), &d_dir, DEFAULT_CACHE_DIR).start();
    let e = case_engine(&case, "prs-e").start();
    e.write_cache_file("e.bin", 5 * MIB);
    d.wait_http_ready().await;
    let docker_fs = docker_root_filesystem();

    let dir = tempfile::tempdir().unwrap();
    // A size, not a percentage: the threshold applies to every watched filesystem, and E's (the
    // host's disk, shared with everything else running here) must stay well above it.
    let agent = start_agent(config(&case, &dir, Some(MinFree::Bytes(32 * MIB)))).await;
    wait_mountpoints(
        &agent,
        &[
            (&a, Some(&mp)),
            (&b, Some(&mp)),
            (&c, Some(&mp)),
            (&d, Some(&mp)),
            (&e, Some(&docker_fs)),
        ],
    )
    .await;
    wait_checked(&agent, 5).await;
    let (avail, size) = tmp.space();
    assert_eq!(size, 128 * MIB);
    let threshold = 32 * MIB;
    println!("tmpfs {mp}: {} MiB free of {}", avail / MIB, size / MIB);
    assert!(avail > threshold + 30 * MIB, "{avail}");
    let m = metrics(&agent).await;
    assert_eq!(
        sample(&m, &fs_series("acestream_filesystem_size_bytes", &mp)),
        Some(size as f64)
    );
    assert_eq!(
        sample(&m, &fs_series("acestream_filesystem_min_free_bytes", &mp)),
        Some(threshold as f64)
    );
    assert_eq!(
        sample(&m, &fs_series("acestream_disk_pressure", &mp)),
        Some(0.0)
    );
    let reported = sample(&m, &fs_series("acestream_filesystem_avail_bytes", &mp)).unwrap();
    assert!(
        (reported - avail as f64).abs() <= 2.0 * MIB as f64,
        "reported {reported}, statvfs {avail}"
    );

    // D streams; the agent sees it busy.
    let viewer = d.stream_client();
    let d_name = d.name.clone();
    eventually(Duration::from_secs(10), "D busy", || async {
        let list = engines(&agent).await;
        list.iter()
            .any(|x| {
                x["container_name"] == d_name.as_str()
                    && x["streams"].as_array().is_some_and(|s| !s.is_empty())
            })
            .then_some(())
    })
    .await;

    // Step 1: 2 MiB above the threshold; D's stream (640 KiB/s) takes it below.
    fill(&host_dir.join("fill-1"), tmp.avail() - threshold - 2 * MIB);
    let watch = CrossingWatch::start(&tmp.path, threshold);
    let ra = wait_records(&agent, &a, 1, "A cleaned by pressure").await;
    let crossed = watch.crossed_at();
    let latency = started_at(&ra[0]) - crossed;
    println!(
        "step 1: free space crossed the threshold at {crossed}; first pressure cleanup started {} ms later",
        latency.num_milliseconds()
    );
    assert!(
        latency.num_milliseconds() >= 0 && latency.num_milliseconds() < 2_000,
        "{latency}"
    );
    wait_disk_pressure(&agent, &mp, 0.0).await;
    assert!(
        tmp.avail() >= threshold,
        "free space back above the threshold"
    );
    assert_eq!(ra.len(), 1);
    assert_eq!(ra[0]["success"], true, "{}", ra[0]);
    assert_near(&ra[0]["size_before_bytes"], 30 * MIB);
    assert_near(&ra[0]["freed_bytes"], 30 * MIB);
    for (x, what) in [(&b, "B"), (&c, "C"), (&d, "D (busy)"), (&e, "E (other fs)")] {
        assert!(
            pressure_records(&agent, x).await.is_empty(),
            "step 1 cleaned {what}"
        );
    }
    assert_eq!(files_in(&a_dir), 0);
    assert!(b_cache.join("b.bin").exists() && c_dir.join("c.bin").exists());

    // Step 2: a file on the host takes free space 10 MiB below; B (20 MiB) is enough.
    fill(&host_dir.join("fill-2"), tmp.avail() - threshold + 10 * MIB);
    let rb = wait_records(&agent, &b, 1, "B cleaned by pressure").await;
    wait_disk_pressure(&agent, &mp, 0.0).await;
    assert!(
        tmp.avail() >= threshold,
        "free space back above the threshold"
    );
    assert_near(&rb[0]["freed_bytes"], 20 * MIB);
    assert!(!b_cache.join("b.bin").exists());
    assert!(b_cache.is_dir(), "the cache directory itself is kept");
    assert_eq!(pressure_records(&agent, &a).await.len(), 1, "A again");
    for (x, what) in [(&c, "C"), (&d, "D (busy)"), (&e, "E (other fs)")] {
        assert!(
            pressure_records(&agent, x).await.is_empty(),
            "step 2 cleaned {what}"
        );
    }

    // Step 3: 20 MiB below; C frees 10 MiB, and nothing idle is left.
    fill(&host_dir.join("fill-3"), tmp.avail() - threshold + 20 * MIB);
    let rc = wait_records(&agent, &c, 1, "C cleaned by pressure").await;
    assert_near(&rc[0]["freed_bytes"], 10 * MIB);
    let persists = format!("Disk pressure on {mp} persists: no idle engine left to clean");
    eventually(Duration::from_secs(5), "the persists warning", || async {
        (!log_lines(&[&persists]).is_empty()).then_some(())
    })
    .await;
    // A few more rounds while the pressure persists: no exec, no cleanup, still 1.
    let quiet_from = unix_time();
    after_pressure_rounds(&agent, 5).await;
    let quiet_to = unix_time();
    assert!(tmp.avail() < threshold);
    let m = metrics(&agent).await;
    assert_eq!(
        sample(&m, &fs_series("acestream_disk_pressure", &mp)),
        Some(1.0)
    );
    let execs: Vec<String> = exec_creates(&case, quiet_from, quiet_to)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        execs.is_empty(),
        "persisting pressure with nothing idle left ran {} execs: {execs:?}",
        execs.len()
    );
    let warned = log_lines(&[&persists]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    for (x, n, what) in [(&a, 1, "A"), (&b, 1, "B"), (&c, 1, "C")] {
        assert_eq!(pressure_records(&agent, x).await.len(), n, "{what}");
    }
    // The busy engine: never cleaned, its cache only grew.
    assert!(pressure_records(&agent, &d).await.is_empty());
    assert!(d_dir.join("d.bin").exists());
    assert!(files_in(&d_dir) > 10, "D's stream chunks are all there");
    assert!(viewer.bytes_read() > 0 && !viewer.is_closed());
    assert!(pressure_records(&agent, &e).await.is_empty());
    let m = metrics(&agent).await;
    let series = |x: &TestEngine, t: &str| {
        format!(
            "acestream_cache_cleanups_total{{container_name=\"{}\",container_id=\"{}\",trigger=\"{t}\"}}",
            x.name,
            &x.id[..12]
        )
    };
    for x in [&a, &b, &c] {
        assert_eq!(sample(&m, &series(x, "pressure")), Some(1.0), "{}", x.name);
        assert_eq!(sample(&m, &series(x, "sweep")), Some(0.0), "{}", x.name);
    }
    assert_eq!(sample(&m, &series(&d, "pressure")), Some(0.0));

    // Step 4: the host files go; the episode ends.
    for f in ["fill-1", "fill-2", "fill-3"] {
        std::fs::remove_file(host_dir.join(f)).unwrap();
    }
    wait_disk_pressure(&agent, &mp, 0.0).await;

    let started = log_lines(&[
        &format!("Disk pressure on {mp}: "),
        "below 32.00 MB; cleaning idle engines largest first",
    ]);
    assert_eq!(started.len(), 3, "one line per episode: {started:?}");
    let resolved = log_lines(&[&format!("Disk pressure on {mp} resolved")]);
    assert_eq!(resolved.len(), 3, "{resolved:?}");
    drop(viewer);
    agent.stop().await;
}

/// The mountpoint of the filesystem holding Docker's root directory, as `stat` names it.
fn docker_root_filesystem() -> String {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.DockerRootDir}}"])
        .output()
        .unwrap();
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    mount_of(&root)
}

fn mount_of(path: &str) -> String {
    let out = Command::new("stat")
        .args(["-c", "%m", path])
        .output()
        .unwrap();
    assert!(out.status.success(), "stat {path}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Which disk (docs/cache-paths.md#storage): a bind mount is on its host source's filesystem, an
/// anonymous volume on the filesystem of its directory under Docker's root, a cache with no mount
/// on Docker's root filesystem; a tmpfs container mount (`--tmpfs` or `--mount type=tmpfs`) and
/// `/dev/shm` are memory: `cache_mountpoint` is the tmpfs inside the container, `cache_medium`
/// memory, and their series carry `medium="memory"` and the engine's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_mountpoint_is_the_host_filesystem_or_the_containers_tmpfs() {
    let case = unique_name("pressure-which-disk");
    let tmp = Tmpfs::mount(16);
    let bound = bind(
        case_engine(&case, "prs-bind"),
        &tmp.dir("e"),
        DEFAULT_CACHE_DIR,
    )
    .start();
    let plain = case_engine(&case, "prs-plain").start();
    let volume = case_engine(&case, "prs-vol")
        .docker_arg("-v")
        .docker_arg(DEFAULT_CACHE_DIR)
        .start();
    let tmpfs_flag = case_engine(&case, "prs-tmpfs")
        .docker_arg("--tmpfs")
        .docker_arg(DEFAULT_CACHE_DIR)
        .start();
    let tmpfs_mount = case_engine(&case, "prs-tmpfsm")
        .docker_arg("--mount")
        .docker_arg(&format!("type=tmpfs,destination={DEFAULT_CACHE_DIR}"))
        .start();
    let shm = case_engine(&case, "prs-shm")
        .label(
            "acestream.cache_path",
            "/dev/shm/.ACEStream/.acestream_cache",
        )
        .env("CACHE_DIR", "/dev/shm/.ACEStream/.acestream_cache")
        .start();
    let docker_fs = docker_root_filesystem();
    let volume_dir = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Source}}{{end}}",
            &volume.id,
        ])
        .output()
        .unwrap();
    let volume_fs = mount_of(String::from_utf8_lossy(&volume_dir.stdout).trim());
    let mp = tmp.mountpoint().to_string();
    println!("Docker's root filesystem: {docker_fs}; volume: {volume_fs}; tmpfs: {mp}");

    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(&case, &dir, Some(MinFree::Percent(1.0)))).await;
    wait_mountpoints(
        &agent,
        &[
            (&bound, Some(&mp)),
            (&plain, Some(&docker_fs)),
            (&volume, Some(&volume_fs)),
            (&tmpfs_flag, Some(DEFAULT_CACHE_DIR)),
            (&tmpfs_mount, Some(DEFAULT_CACHE_DIR)),
            (&shm, Some("/dev/shm")),
        ],
    )
    .await;
    let list = engines(&agent).await;
    for e in [&bound, &plain, &volume, &tmpfs_flag, &tmpfs_mount, &shm] {
        let j = list
            .iter()
            .find(|x| x["container_id"] == e.id.as_str())
            .unwrap();
        let memory = [&tmpfs_flag.id, &tmpfs_mount.id, &shm.id].contains(&&e.id);
        assert_eq!(
            j["cache_medium"],
            if memory { "memory" } else { "disk" },
            "{j}"
        );
    }
    let list = engines(&agent).await;
    let shm_json = list
        .iter()
        .find(|x| x["container_id"] == shm.id.as_str())
        .unwrap();
    assert_eq!(
        shm_json["cache_path"],
        "/dev/shm/.ACEStream/.acestream_cache"
    );

    // One series per watched disk, and one per memory cache's tmpfs, with its engine.
    let m = eventually(Duration::from_secs(5), "filesystem series", || async {
        let m = metrics(&agent).await;
        (sample(&m, &fs_series("acestream_filesystem_avail_bytes", &mp)).is_some()
            && sample(
                &m,
                &memory_series("acestream_filesystem_avail_bytes", &shm, "/dev/shm"),
            )
            .is_some())
        .then_some(m)
    })
    .await;
    for (e, tmpfs) in [
        (&tmpfs_flag, DEFAULT_CACHE_DIR),
        (&tmpfs_mount, DEFAULT_CACHE_DIR),
        (&shm, "/dev/shm"),
    ] {
        for family in [
            "acestream_filesystem_avail_bytes",
            "acestream_filesystem_size_bytes",
            "acestream_filesystem_min_free_bytes",
            "acestream_disk_pressure",
        ] {
            let v = sample(&m, &memory_series(family, e, tmpfs));
            assert!(v.is_some(), "{family} of {}:\n{m}", e.name);
        }
        // Docker's default /dev/shm is 64 MiB; the --tmpfs default is half the memory.
        assert!(
            sample(
                &m,
                &memory_series("acestream_filesystem_size_bytes", e, tmpfs)
            ) > Some(0.0)
        );
    }
    let mut want = vec![mp.clone(), docker_fs.clone(), volume_fs.clone()];
    want.sort();
    want.dedup();
    for family in [
        "acestream_filesystem_avail_bytes",
        "acestream_filesystem_size_bytes",
        "acestream_filesystem_min_free_bytes",
        "acestream_disk_pressure",
    ] {
        let mut got: Vec<String> = m
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{family}{{mountpoint=\"")))
            .map(|l| l.split('"').next().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want, "{family}");
    }
    let (_, size) = tmp.space();
    assert_eq!(
        sample(&m, &fs_series("acestream_filesystem_size_bytes", &mp)),
        Some(size as f64)
    );
    // "1%" in bytes, per filesystem.
    assert_eq!(
        sample(&m, &fs_series("acestream_filesystem_min_free_bytes", &mp)),
        Some((size as f64 / 100.0).ceil())
    );
    let (_, docker_size) = statvfs(Path::new(&docker_fs));
    assert_eq!(
        sample(
            &m,
            &fs_series("acestream_filesystem_size_bytes", &docker_fs)
        ),
        Some(docker_size as f64)
    );
    assert_eq!(
        sample(
            &m,
            &fs_series("acestream_filesystem_min_free_bytes", &docker_fs)
        ),
        Some((docker_size as f64 / 100.0).ceil())
    );
    agent.stop().await;
}

/// The cost of one episode (docs/cache-paths.md#disk-pressure: the idle engines are measured, then
/// cleaned largest first): ten idle engines of 2..20 MiB on one filesystem, free space 45 MiB below
/// the threshold. The three largest (20 + 18 + 16 MiB) are enough: one measuring exec per idle
/// engine plus one exec per cleanup, 13 in all, counted from Docker's own `exec_create` events.
/// With `cleanup.method = "exec"`: the default reaches caches from the host and costs no exec at
/// all (`pressure_episode_from_the_host_costs_no_exec`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_episode_with_ten_idle_engines_costs_one_exec_each_plus_one_per_cleanup() {
    let per_engine = ten_engine_episode("pressure-cost", CacheMethod::Exec).await;
    let want: BTreeMap<u64, usize> = (1..=10).map(|i| (i, if i >= 8 { 2 } else { 1 })).collect();
    assert_eq!(per_engine, want);
}

/// The same episode with the default `cleanup.method`: the same three engines cleaned, and not
/// one exec (measured and cleaned from the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_episode_from_the_host_costs_no_exec() {
    let per_engine = ten_engine_episode("pressure-cost-host", CacheMethod::Auto).await;
    assert_eq!(per_engine, BTreeMap::new());
}

/// Runs the episode described above; returns the execs Docker saw per engine (1..=10).
async fn ten_engine_episode(prefix: &str, method: CacheMethod) -> BTreeMap<u64, usize> {
    let case = unique_name(prefix);
    let tmp = Tmpfs::mount(256);
    let host_dir = tmp.dir("host");
    let mut list = vec![];
    for i in 1..=10u64 {
        let d = tmp.dir(&format!("e{i:02}"));
        fill(&d.join("cache.bin"), 2 * i * MIB);
        let e = bind(
            case_engine(&case, &format!("prs-cost{i:02}")),
            &d,
            DEFAULT_CACHE_DIR,
        )
        .start();
        list.push((i, e, d));
    }
    let threshold = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir, Some(MinFree::Bytes(threshold)));
    cfg.cleanup.method = method;
    let agent = start_agent(cfg).await;
    let mp = tmp.mountpoint().to_string();
    let want: Vec<(&TestEngine, Option<&str>)> = list
        .iter()
        .map(|(_, e, _)| (e, Some(mp.as_str())))
        .collect();
    wait_mountpoints(&agent, &want).await;
    wait_checked(&agent, 10).await;

    let since = unix_time();
    let crossed = fill_noting_crossing(
        &host_dir.join("fill"),
        tmp.avail() - threshold + 45 * MIB,
        threshold,
    );
    wait_disk_pressure(&agent, &mp, 1.0).await;
    wait_disk_pressure(&agent, &mp, 0.0).await;
    let until = unix_time();
    assert!(tmp.avail() >= threshold);

    let mut first_start: Option<DateTime<Utc>> = None;
    let mut cleaned = vec![];
    for (i, e, d) in &list {
        let r = pressure_records(&agent, e).await;
        if let Some(rec) = r.first() {
            cleaned.push(*i);
            println!("engine {i}: {rec}");
            assert_eq!(r.len(), 1, "{}", e.name);
            assert_near(&rec["freed_bytes"], 2 * i * MIB);
            assert_eq!(files_in(d), 0);
            let s = started_at(rec);
            first_start = Some(first_start.map_or(s, |f| f.min(s)));
        } else {
            assert!(d.join("cache.bin").exists(), "{}", e.name);
        }
    }
    assert_eq!(cleaned, [8, 9, 10], "the three largest, no more");
    let latency = first_start.unwrap() - crossed;
    println!(
        "10 idle engines: first pressure cleanup started {} ms after free space crossed the threshold",
        latency.num_milliseconds()
    );
    // An exec's create event is logged before the exec runs, so every one is in by now; a
    // bound 0.3 s past `until` (the clocks of this test and the daemon) makes `docker events`
    // stream live until then, no sleep needed.
    let execs: Vec<String> = exec_creates(&case, since, until + 0.3)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut per_engine: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &execs {
        let (i, _, _) = list
            .iter()
            .find(|(_, e, _)| &e.id == id)
            .unwrap_or_else(|| panic!("exec in an unknown container {id}"));
        *per_engine.entry(*i).or_default() += 1;
    }
    println!(
        "one pressure episode ({method:?}), 10 idle engines, 3 cleanups: {} execs \
         ({per_engine:?})",
        execs.len()
    );
    agent.stop().await;
    per_engine
}

/// `pressure.min_free = "off"`: free space is still read and exported (no threshold), and a
/// full filesystem gets no cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_off_reports_free_space_and_never_cleans() {
    let case = unique_name("pressure-off");
    let tmp = Tmpfs::mount(16);
    let d = tmp.dir("e");
    fill(&d.join("cache.bin"), 4 * MIB);
    let e = bind(case_engine(&case, "prs-off"), &d, DEFAULT_CACHE_DIR).start();
    fill(&tmp.dir("host").join("fill"), tmp.avail() - 256 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(&case, &dir, None)).await;
    let mp = tmp.mountpoint().to_string();
    wait_mountpoints(&agent, &[(&e, Some(&mp))]).await;
    let m = eventually(Duration::from_secs(5), "filesystem series", || async {
        let m = metrics(&agent).await;
        sample(&m, &fs_series("acestream_filesystem_avail_bytes", &mp))
            .is_some()
            .then_some(m)
    })
    .await;
    let avail = sample(&m, &fs_series("acestream_filesystem_avail_bytes", &mp)).unwrap();
    assert!(avail <= 512.0 * 1024.0, "{avail}");
    assert_eq!(
        sample(&m, &fs_series("acestream_disk_pressure", &mp)),
        Some(0.0)
    );
    assert!(!m.contains("acestream_filesystem_min_free_bytes"));
    // Several pressure rounds: nothing cleaned.
    after_pressure_rounds(&agent, 4).await;
    assert!(pressure_records(&agent, &e).await.is_empty());
    assert!(d.join("cache.bin").exists());
    agent.stop().await;
}

/// Fills `bytes` into the engine's cache from inside the container (zeros: a tmpfs stores
/// every page written).
fn fill_in(e: &TestEngine, name: &str, bytes: u64) {
    e.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        r#"head -c "$2" /dev/zero > "$1""#,
        "sh",
        &format!("{}/{name}", e.cache_dir),
        &bytes.to_string(),
    ]);
}

/// Caches in memory (docs/cache-paths.md#caches-in-memory), with the sweep and the stream-end
/// cleanup off: A's tmpfs (`--mount type=tmpfs,tmpfs-size=64m`) filled to 94 % is below
/// `min_free = 10%` of it and is cleaned by pressure alone, while B at 12 % of the same size is
/// left alone; C's tmpfs has room, but its container (`--memory 128m`) uses more than
/// `memory_high = 50%` of its limit with the cache charged to it, and is cleaned too, while D at
/// 15 % is left. What the agent saw is in `/engines` (`cache_medium`, `cache_mountpoint`) and
/// `/metrics` (the tmpfs's free space, the container's memory use and limit), and said in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_caches_are_cleaned_by_pressure_on_their_tmpfs_and_their_memory_limit() {
    let case = unique_name("pressure-memory");
    let tmpfs =
        |size: &str| format!("type=tmpfs,destination=/home/appuser/.ACEStream,tmpfs-size={size}");
    let start = |prefix: &str, size: &str, memory: &str| {
        case_engine(&case, prefix)
            .docker_arg("--mount")
            .docker_arg(&tmpfs(size))
            .docker_arg("--memory")
            .docker_arg(memory)
            .start()
    };
    let a = start("prs-mem-a", "64m", "256m");
    let b = start("prs-mem-b", "64m", "256m");
    let c = start("prs-mem-c", "200m", "128m");
    let d = start("prs-mem-d", "200m", "128m");
    for e in [&a, &b, &c, &d] {
        e.wait_http_ready().await;
    }
    fill_in(&a, "live.a", 60 * MIB);
    fill_in(&b, "live.b", 8 * MIB);
    fill_in(&c, "live.c", 80 * MIB);
    fill_in(&d, "live.d", 20 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir, Some(MinFree::Percent(10.0)));
    cfg.pressure.memory_high = Some(50.0);
    let agent = start_agent(cfg).await;
    let tmp_mp = "/home/appuser/.ACEStream";
    wait_mountpoints(
        &agent,
        &[
            (&a, Some(tmp_mp)),
            (&b, Some(tmp_mp)),
            (&c, Some(tmp_mp)),
            (&d, Some(tmp_mp)),
        ],
    )
    .await;
    let ra = wait_records(&agent, &a, 1, "A cleaned for its tmpfs").await;
    let rc = wait_records(&agent, &c, 1, "C cleaned for its memory limit").await;
    assert!(ra[0]["freed_bytes"].as_u64() >= Some(60 * MIB), "{}", ra[0]);
    assert!(rc[0]["freed_bytes"].as_u64() >= Some(80 * MIB), "{}", rc[0]);
    assert_eq!(a.list_cache(), Vec::<String>::new());
    assert_eq!(c.list_cache(), Vec::<String>::new());
    // Several more pressure rounds: B and D are never touched.
    after_pressure_rounds(&agent, 4).await;
    for (e, file) in [(&b, "live.b"), (&d, "live.d")] {
        assert_eq!(
            pressure_records(&agent, e).await,
            Vec::<Value>::new(),
            "{}",
            e.name
        );
        assert_eq!(e.list_cache(), vec![file.to_string()], "{}", e.name);
    }
    let list = engines(&agent).await;
    for e in [&a, &b, &c, &d] {
        let j = list
            .iter()
            .find(|x| x["container_id"] == e.id.as_str())
            .unwrap();
        assert_eq!(j["cache_medium"], "memory", "{j}");
    }
    let m = metrics(&agent).await;
    let size = |e| {
        sample(
            &m,
            &memory_series("acestream_filesystem_size_bytes", e, tmp_mp),
        )
    };
    assert_eq!(size(&a), Some(64.0 * MIB as f64));
    assert_eq!(size(&c), Some(200.0 * MIB as f64));
    assert_eq!(
        sample(
            &m,
            &memory_series("acestream_filesystem_min_free_bytes", &a, tmp_mp)
        ),
        Some(((64 * MIB) as f64 / 10.0).ceil())
    );
    assert_eq!(
        sample(
            &m,
            &engine_series("acestream_engine_memory_limit_bytes", &c)
        ),
        Some(128.0 * MIB as f64)
    );
    // D's cache is charged to its container: at least the 20 MiB written, below the limit.
    let used = sample(
        &m,
        &engine_series("acestream_engine_memory_usage_bytes", &d),
    )
    .unwrap();
    assert!(
        (20.0 * MIB as f64..64.0 * MIB as f64).contains(&used),
        "{used}"
    );
    for e in [&a, &b, &c, &d] {
        assert_eq!(
            sample(&m, &memory_series("acestream_disk_pressure", e, tmp_mp)),
            Some(0.0),
            "{}: the pressure is over",
            e.name
        );
    }
    let said =
        |e: &TestEngine| log_lines(&["Memory pressure on /home/appuser/.ACEStream", &e.id[..12]]);
    assert!(
        said(&a).iter().any(|l| l.contains("free on its tmpfs")),
        "{:?}",
        said(&a)
    );
    assert!(
        said(&c)
            .iter()
            .any(|l| l.contains("of its 128.00 MB memory limit")),
        "{:?}",
        said(&c)
    );
    assert!(said(&b).is_empty() && said(&d).is_empty());
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Every engine busy
// ---------------------------------------------------------------------------------------------

/// Old cache pieces (16 MiB each, 3, 2 and 1 hours old) in `dir`, named `old-<age>h`.
fn old_pieces(dir: &Path) {
    for hours in [3u64, 2, 1] {
        let path = dir.join(format!("old-{hours}h"));
        fill(&path, 16 * MIB);
        let t = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// The stream files an engine holds open (`<id>-<pid>.live`), by name, with their inodes.
fn live_files(dir: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".live"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

/// Three engines, each streaming to a real client, caches on one small filesystem holding old
/// pieces; then the filesystem is pushed below `pressure.min_free` from outside the caches.
/// Unopened: free space comes back above the threshold, the old pieces go oldest first, no
/// file held open is gone, every client keeps receiving without a gap over a second, and the
/// records say what was freed (the orchestrator's fields untouched). Off: nothing of a busy engine is
/// touched, and the agent says pressure persists.
async fn every_engine_busy(busy_files: acestream_agent::config::BusyFiles, method: CacheMethod) {
    use acestream_agent::config::BusyFiles;
    let case = unique_name("pressure-busy");
    let tmp = Tmpfs::mount(256);
    let mp = tmp.mountpoint().to_string();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.dir(n)).collect();
    for d in &dirs {
        old_pieces(d);
    }
    let engines: Vec<TestEngine> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            bind(
                case_engine(&case, &format!("prs-busy{i}")),
                d,
                DEFAULT_CACHE_DIR,
            )
            .start()
        })
        .collect();
    for e in &engines {
        e.wait_http_ready().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let threshold = 64 * MIB;
    let mut cfg = config(&case, &dir, Some(MinFree::Bytes(threshold)));
    cfg.pressure.busy_files = busy_files;
    cfg.cleanup.method = method;
    let agent = start_agent(cfg).await;
    let want: Vec<(&TestEngine, Option<&str>)> =
        engines.iter().map(|e| (e, Some(mp.as_str()))).collect();
    wait_mountpoints(&agent, &want).await;
    wait_checked(&agent, 3).await;
    let clients: Vec<StreamClient> = engines.iter().map(|e| e.stream_client()).collect();
    for e in &engines {
        wait_engine(
            agent.addr,
            &e.id,
            Duration::from_secs(10),
            "streaming",
            |v| v["streams"].as_array().is_some_and(|s| !s.is_empty()),
        )
        .await;
    }
    // The agent sees a client's connection before the engine's handler has opened its file.
    let live: Vec<BTreeMap<String, u64>> = eventually(
        Duration::from_secs(10),
        "each stream's open file",
        || async {
            let live: Vec<BTreeMap<String, u64>> = dirs.iter().map(|d| live_files(d)).collect();
            live.iter()
                .all(|l| l.len() == 1)
                .then_some(live.clone())
                .ok_or(format!("{live:?}"))
        },
    )
    .await;
    // Pushed below the threshold from outside any cache.
    let avail = tmp.avail();
    assert!(avail > threshold + 20 * MIB, "{} MiB free", avail / MIB);
    fill(&tmp.path.join("pusher"), avail - threshold + 16 * MIB);
    // The episode's first line (the metric may be 1 for less than a scrape: the pass follows
    // the reading at once).
    let started = format!("Disk pressure on {mp}: ");
    eventually(Duration::from_secs(10), "the episode's start", || async {
        (!log_lines(&[&started, "below"]).is_empty()).then_some(())
    })
    .await;

    match busy_files {
        BusyFiles::Unopened => {
            // The episode's end, said once the pass has freed enough: the metric alone can
            // read 0 before the episode's 1 was ever published (the pass follows the reading
            // at once), and waiting for 0 then passed before anything was freed.
            let resolved = format!("Disk pressure on {mp} resolved: ");
            eventually(Duration::from_secs(10), "the episode's end", || async {
                (!log_lines(&[&resolved]).is_empty()).then_some(())
            })
            .await;
            wait_disk_pressure(&agent, &mp, 0.0).await;
            assert!(
                tmp.avail() >= threshold - 4 * MIB,
                "{} MiB free",
                tmp.avail() / MIB
            );
            // Oldest first: every old piece left is younger than every one deleted, across the
            // engines from the host; within each engine by the exec's script, which runs in one
            // container after another.
            let per_dir: Vec<(Vec<u64>, Vec<u64>)> = dirs
                .iter()
                .map(|d| {
                    let (mut deleted, mut left) = (vec![], vec![]);
                    for hours in [3u64, 2, 1] {
                        if d.join(format!("old-{hours}h")).exists() {
                            left.push(hours);
                        } else {
                            deleted.push(hours);
                        }
                    }
                    (deleted, left)
                })
                .collect();
            let groups: Vec<(Vec<u64>, Vec<u64>)> = if method == CacheMethod::Exec {
                per_dir
            } else {
                vec![per_dir.into_iter().fold((vec![], vec![]), |mut a, (d, l)| {
                    a.0.extend(d);
                    a.1.extend(l);
                    a
                })]
            };
            assert!(groups.iter().any(|(d, _)| !d.is_empty()), "nothing deleted");
            for (deleted, left) in &groups {
                assert!(
                    deleted.iter().all(|d| left.iter().all(|l| l <= d)),
                    "not oldest first: deleted {deleted:?}, left {left:?}"
                );
            }
            // No file held open is gone (the same inodes, still there).
            for (d, before) in dirs.iter().zip(&live) {
                let now = live_files(d);
                for (name, ino) in before {
                    assert_eq!(now.get(name), Some(ino), "{name} in {}", d.display());
                }
            }
            // What was freed, per engine, in its pressure_busy record.
            let mut freed_total = 0;
            for (e, d) in engines.iter().zip(&dirs) {
                let (_, v) =
                    http_get_json(agent.addr, &format!("/engines/{}/cleanups", e.id)).await;
                let gone = [3u64, 2, 1]
                    .iter()
                    .filter(|h| !d.join(format!("old-{h}h")).exists())
                    .count() as u64;
                let records: Vec<&Value> = v.as_array().unwrap().iter().collect();
                let freed: u64 = records
                    .iter()
                    .map(|r| {
                        assert_eq!(r["trigger"], "pressure_busy", "{r}");
                        assert_eq!(r["success"], true, "{r}");
                        r["freed_bytes"].as_u64().unwrap()
                    })
                    .sum();
                assert!(
                    freed >= gone * 16 * MIB,
                    "{}: {freed} for {gone} pieces",
                    e.name
                );
                freed_total += freed;
                let ej = wait_engine(agent.addr, &e.id, Duration::from_secs(5), "listed", |_| {
                    true
                })
                .await;
                assert_eq!(ej["last_cache_cleanup"], Value::Null, "{ej}");
                assert_eq!(ej["cache_size_bytes"], Value::Null, "{ej}");
                if !records.is_empty() {
                    let m = metrics(&agent).await;
                    let series = format!(
                        "acestream_cache_cleanups_total{{container_name=\"{}\",container_id=\"{}\",trigger=\"pressure_busy\"}}",
                        e.name,
                        &e.id[..12]
                    );
                    assert_eq!(sample(&m, &series), Some(records.len() as f64));
                }
            }
            assert!(freed_total >= 16 * MIB);
            let said = log_lines(&[&format!(
                "Disk pressure on {mp}: no idle engine left; deleted "
            )]);
            assert!(!said.is_empty(), "no pressure_busy line");
            assert!(
                said[0].contains("cache files no engine holds open ("),
                "{}",
                said[0]
            );
            assert!(said[0].contains("busy engines"), "{}", said[0]);
        }
        BusyFiles::Off => {
            let said = format!("Disk pressure on {mp} persists: no idle engine left to clean");
            eventually(Duration::from_secs(10), "the persists line", || async {
                (!log_lines(&[&said]).is_empty()).then_some(())
            })
            .await;
            for d in &dirs {
                for hours in [3u64, 2, 1] {
                    assert!(d.join(format!("old-{hours}h")).exists());
                }
            }
            for e in &engines {
                let (_, v) =
                    http_get_json(agent.addr, &format!("/engines/{}/cleanups", e.id)).await;
                assert_eq!(v, serde_json::json!([]), "{}", e.name);
            }
        }
    }
    // Every client kept receiving: bytes still arrive, and never a gap over a second.
    for c in &clients {
        let got = c.bytes_read();
        eventually(Duration::from_secs(5), "more stream bytes", || async {
            (c.bytes_read() > got).then_some(()).ok_or(c.bytes_read())
        })
        .await;
        assert!(
            c.longest_gap() < Duration::from_secs(1),
            "a client waited {:?}",
            c.longest_gap()
        );
    }
    std::fs::remove_file(tmp.path.join("pusher")).unwrap();
    drop(clients);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_engine_busy_unopened_cache_files_go_oldest_first_and_streams_play_on() {
    every_engine_busy(
        acestream_agent::config::BusyFiles::Unopened,
        CacheMethod::Auto,
    )
    .await;
}

/// The same through `docker exec` of the fixed script (`cleanup.method = "exec"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_engine_busy_the_exec_fallback_deletes_only_unopened_files_too() {
    every_engine_busy(
        acestream_agent::config::BusyFiles::Unopened,
        CacheMethod::Exec,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_busy_files_off_nothing_of_a_busy_engine_is_touched() {
    every_engine_busy(acestream_agent::config::BusyFiles::Off, CacheMethod::Auto).await;
}

// ---------------------------------------------------------------------------------------------
// Engine logs
// ---------------------------------------------------------------------------------------------

/// Docker's log of an engine is another disk filler: an engine that logs a lot with rotation
/// off shows `log_bytes` growing and `log_rotation` false, and fires `AcestreamEngineLogLarge`
/// in a real Prometheus (its threshold cut from 1 GiB to 200 kB, its `for:` to 1 s). The
/// engine runs on a private daemon: this machine's own sets `max-size` for every container.
/// Beside it, an engine of the system daemon: rotated, never alerted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_log_growing_without_rotation_fires_the_alert() {
    let case = unique_name("pressure-log");
    let host = PrivateHost::start();
    let image = fake_engine_image();
    host.load(&[&image]);
    let noisy = host.run(&[
        "run",
        "-d",
        "--label",
        &format!("{CASE_LABEL}={case}"),
        "-e",
        "LOG_SPAM=1",
        &image,
    ]);
    let quiet = case_engine(&case, "prs-log-quiet")
        .env("LOG_SPAM", "1")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir, None);
    cfg.pressure.interval = Duration::from_millis(500);
    cfg.docker.host = Some(host.docker_host.clone());
    let agent = start_agent(cfg).await;
    let first = wait_engine(
        agent.addr,
        &noisy,
        Duration::from_secs(20),
        "a log size",
        |e| e["log_bytes"].as_u64() > Some(0),
    )
    .await;
    assert_eq!(first["log_rotation"], false, "{first}");
    let grown = wait_engine(
        agent.addr,
        &noisy,
        Duration::from_secs(20),
        "its log growing",
        |e| e["log_bytes"].as_u64() > first["log_bytes"].as_u64(),
    )
    .await;
    println!("log {} -> {} bytes", first["log_bytes"], grown["log_bytes"]);
    let series = format!(
        "acestream_engine_log_bytes{{container_name=\"{}\",container_id=\"{}\",rotation=\"false\"}}",
        grown["container_name"].as_str().unwrap(),
        &noisy[..12]
    );
    assert!(sample(&metrics(&agent).await, &series).is_some_and(|v| v > 0.0));

    // The system daemon's engine: rotated (its daemon.json sets max-size), on a second agent.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg2 = config(&case, &dir2, None);
    cfg2.pressure.interval = Duration::from_millis(500);
    let system = start_agent(cfg2).await;
    let rotated = wait_engine(
        system.addr,
        &quiet.id,
        Duration::from_secs(20),
        "a log size",
        |e| e["log_bytes"].as_u64() > Some(0),
    )
    .await;
    assert_eq!(rotated["log_rotation"], true, "{rotated}");

    let prom_dir = tempfile::tempdir().unwrap();
    // The shipped expression, its 1 GiB threshold cut to 200 kB.
    let rules = common::prom::rules_for_tests(
        "AcestreamEngineLogLarge",
        "1s",
        &[("> 1073741824", "> 200000")],
    );
    let prom =
        common::prom::start_with_rules(prom_dir.path(), &[agent.addr, system.addr], &rules).await;
    let firing = common::prom::wait_firing(
        prom.addr,
        "AcestreamEngineLogLarge",
        Duration::from_secs(60),
    )
    .await;
    let ids: Vec<&str> = firing
        .iter()
        .filter_map(|a| a["metric"]["container_id"].as_str())
        .collect();
    assert_eq!(ids, vec![&noisy[..12]], "{firing:?}");
    system.stop().await;
    agent.stop().await;
}
