//! Benchmark harness for BENCHMARKS.md: what the agent costs the host and how quickly it reacts,
//! and what its scrapes cost Prometheus, with a fleet sizing computed from them.
//!
//! ```sh
//! cargo bench --bench agent                          # full run (several minutes), prints the tables
//! ACESTREAM_BENCH_SMOKE=1 cargo bench --bench agent  # tiny run: 2-3 engines, 1 s loads, 2 files
//! ACESTREAM_BENCH_ONLY=scrape cargo bench --bench agent  # the scrape section alone
//! ACESTREAM_BENCH_ONLY=sweep cargo bench --bench agent   # the two sweep sections alone
//! ACESTREAM_BENCH_ONLY=heal cargo bench --bench agent    # heal's idle cost alone
//! ACESTREAM_BENCH_ONLY=stats cargo bench --bench agent   # statistics polling's cost alone
//! ACESTREAM_BENCH_ONLY=busy cargo bench --bench agent    # the fd walk of busy engines alone
//! ```
//!
//! Real Docker, fake engines (tests/fixtures/fake-engine, built by tests/common/mod.rs), the
//! release binary for everything a host pays for (HTTP serving, idle CPU and RSS, reactions),
//! and the library for what needs a clock around one call (the sweep, the store). Needs `wrk`
//! and `nginx` (Debian packages `wrk`, `nginx-light`): nginx serving the very same bytes is the
//! yardstick for reads, measured in the same run. Every figure is the median of several runs;
//! the sweep is reported as ratios to its baselines measured in the same run.
//!
//! `tests/it/bench_smoke.rs` runs this file in smoke mode so the harness cannot rot.
#![allow(dead_code)] // also compiled as a module of tests/it/bench_smoke.rs, without `main`

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use acestream_agent::config::{CacheMethod, Config};
use acestream_agent::docker::DockerClient;
use acestream_agent::janitor::{Janitor, JanitorConfig};
use acestream_agent::metrics::Metrics;
use acestream_agent::model::{
    CleanupRecord, Engine, EngineState, HealthStatus, Snapshot, Trigger, TriggerCounters,
};
use acestream_agent::store::{Batch, PersistedEngine, Store};
use acestream_agent::Agent;
use common::*;
use serde_json::{json, Value};

/// Label that puts an engine in the set the HTTP/reaction agent discovers.
const BENCH_LABEL: &str = "acestream-agent.bench";
/// Label of the subset the idle-cost and sweep agents discover.
const IDLE_LABEL: &str = "acestream-agent.bench.idle";

/// Sizes of one run.
#[derive(Clone, Debug)]
pub struct Params {
    pub smoke: bool,
    /// Repetitions of each measurement (the table shows the median).
    pub runs: usize,
    /// Engines behind `/engines` and `/metrics` under load.
    pub http_engines: usize,
    /// Idle engines for the idle-cost window and the sweep.
    pub idle_engines: usize,
    pub load: Duration,
    pub connections: usize,
    pub idle_window: Duration,
    pub files_per_engine: usize,
    pub file_bytes: usize,
    pub store_engines: usize,
    pub store_history: usize,
    pub reaction_runs: usize,
    /// `cleanup.idle_grace` of the reaction agent (the default in a full run).
    pub idle_grace: Duration,
    /// `ACESTREAM_BENCH_ONLY`: run one section only (`scrape`, `sweep`); `None`: every section.
    pub only: Option<String>,
    /// Engines behind the two scrape agents (scrapes and fleet sizing): a host of each size.
    pub scrape_engines: [usize; 2],
    /// Direct GETs of each kind (plain, gzip) per size for the scrape duration.
    pub scrape_gets: usize,
    /// Prometheus scrapes (1 s apart) to wait for per size.
    pub prom_scrapes: usize,
    /// `cleanup.interval` of the scrape agents: the first sweep has run before the bodies are
    /// taken (the default 30 s in a full run).
    pub scrape_sweep: Duration,
}

impl Params {
    pub fn full() -> Params {
        Params {
            smoke: false,
            runs: 3,
            http_engines: 50,
            idle_engines: 20,
            load: Duration::from_secs(10),
            connections: 32,
            idle_window: Duration::from_secs(60),
            files_per_engine: 200,
            file_bytes: (20 << 20) / 200,
            store_engines: 1000,
            store_history: 100,
            reaction_runs: 5,
            idle_grace: Config::default()
                .cleanup
                .idle_grace
                .expect("idle_grace on by default"),
            only: None,
            scrape_engines: [50, 150],
            scrape_gets: 50,
            prom_scrapes: 10,
            scrape_sweep: Config::default()
                .cleanup
                .interval
                .expect("sweep on by default"),
        }
    }

    pub fn smoke() -> Params {
        Params {
            smoke: true,
            runs: 1,
            http_engines: 2,
            idle_engines: 2,
            load: Duration::from_secs(1),
            connections: 4,
            idle_window: Duration::from_secs(1),
            files_per_engine: 2,
            file_bytes: 4096,
            store_engines: 10,
            store_history: 5,
            reaction_runs: 1,
            idle_grace: Duration::from_secs(1),
            only: None,
            scrape_engines: [2, 3],
            scrape_gets: 5,
            prom_scrapes: 2,
            scrape_sweep: Duration::from_secs(3),
        }
    }

    /// `ACESTREAM_BENCH_SMOKE=1` → smoke; `ACESTREAM_BENCH_RUNS=N` overrides the repetitions;
    /// `ACESTREAM_BENCH_ONLY=scrape` runs the scrape section (scrapes and fleet sizing) alone,
    /// `=sweep` the two sweep sections.
    pub fn from_env() -> Params {
        let smoke = std::env::var("ACESTREAM_BENCH_SMOKE").is_ok_and(|v| v != "0" && !v.is_empty());
        let mut p = if smoke {
            Params::smoke()
        } else {
            Params::full()
        };
        if let Some(n) = std::env::var("ACESTREAM_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            p.runs = n;
        }
        p.only = std::env::var("ACESTREAM_BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty());
        p
    }
}

/// Row names, in table order; the smoke test checks every one is printed.
pub const ROWS: &[&str] = &[
    "/engines req/s",
    "/engines p99",
    "/metrics req/s",
    "/metrics p99",
    "/metrics load: Docker API calls",
    "sweep vs docker CLI du+rm",
    "sweep with cleanup.method = \"exec\" vs docker CLI du+rm",
    "sweep vs host rm -rf of copies in /var/tmp",
    "sweep vs host rm of the same files through /proc/<pid>/root",
    "sweep vs host rm, caches bind-mounted from the host",
    "start -> in /engines",
    "last stream end -> cleanup recorded",
    "idle agent CPU",
    "idle added dockerd+containerd CPU",
    "idle agent RSS",
    "idle agent CPU, heal on vs off ({b} engines)",
    "heal pass over {b} engines",
    "statistics polling, one stream on each of {b} engines",
    "fd walk of {b} busy engines",
    "store open (+load)",
    "/engines render, store engines",
    "GET /engines, store engines",
    "/metrics body ({a} engines)",
    "/metrics body ({b} engines)",
    "GET /metrics, new connection ({a} engines)",
    "GET /metrics, new connection ({b} engines)",
    "Prometheus scrape ({a} engines)",
    "Prometheus scrape ({b} engines)",
    "series per engine",
    "series per host (not per engine)",
    "/engines read vs the best nginx ({a} engines)",
    "/engines read vs the best nginx ({b} engines)",
    "/metrics read vs the best nginx ({a} engines)",
    "/metrics read vs the best nginx ({b} engines)",
    "/metrics gzip read vs the best nginx ({a} engines)",
    "/metrics gzip read vs the best nginx ({b} engines)",
    "peak RSS under reads ({a} engines)",
    "peak RSS under reads ({b} engines)",
];

/// A row name of `ROWS` with the scrape sizes in: `{a}` and `{b}` stand for the two
/// `Params::scrape_engines`.
pub fn row_name(template: &str, p: &Params) -> String {
    template
        .replace("{a}", &p.scrape_engines[0].to_string())
        .replace("{b}", &p.scrape_engines[1].to_string())
}

/// The sizing table's title: the smoke test finds the main table's end by it.
pub const SIZING_TITLE: &str = "Sizing:";

struct Row {
    what: String,
    measured: String,
    baseline: String,
    target: String,
    met: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Further Markdown (the fleet sizing table), after the notes.
    sections: Vec<String>,
}

impl Table {
    fn row(
        &mut self,
        what: &str,
        measured: String,
        baseline: String,
        target: &str,
        met: Option<bool>,
    ) {
        let met = match met {
            Some(true) => "yes".to_string(),
            Some(false) => "**no**".to_string(),
            None => "n/a".to_string(),
        };
        let row = Row {
            what: what.to_string(),
            measured,
            baseline,
            target: target.to_string(),
            met,
        };
        eprintln!(
            "bench: {} | {} | {} | {} | {}",
            row.what, row.measured, row.baseline, row.target, row.met
        );
        self.rows.push(row);
    }

    fn render(&self, p: &Params) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| what | measured (median of {}) | baseline (same run) | target | met? |",
            p.runs
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.what, r.measured, r.baseline, r.target, r.met
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n- {n}");
        }
        for x in &self.sections {
            let _ = writeln!(s, "\n{x}");
        }
        s
    }
}

// ---------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_tool(name: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the benchmark needs `{name}` (Debian package {package}): apt-get install {package}"
    );
}

fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// (comm, utime+stime+cutime+cstime in ticks) of /proc/<pid>/stat.
fn proc_cpu(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // Fields after the comm: state is field 3; utime..cstime are fields 14..17.
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let f = |i: usize| {
        rest.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((comm, f(14) + f(15) + f(16) + f(17)))
}

/// CPU ticks used so far by dockerd, containerd, the shims (which reap runc, so exec costs
/// land in their cutime/cstime), runc and docker-proxy: pid -> (start time, ticks).
#[derive(Default)]
struct DockerCpu(std::collections::HashMap<u32, (u64, u64)>);

impl DockerCpu {
    fn now() -> DockerCpu {
        let mut m = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some((comm, start, t)) = proc_cpu_start(pid) {
                    if comm == "dockerd"
                        || comm == "containerd"
                        || comm.starts_with("containerd-shim")
                        || comm == "docker-proxy"
                        || comm == "runc"
                    {
                        m.insert(pid, (start, t));
                    }
                }
            }
        }
        DockerCpu(m)
    }

    /// CPU seconds used since `self` by the processes alive now (a process that exited in
    /// between is lost; one started in between counts in full).
    fn seconds_since(&self) -> f64 {
        let now = DockerCpu::now();
        let ticks: u64 = now
            .0
            .iter()
            .map(|(pid, (start, t))| match self.0.get(pid) {
                Some((s0, t0)) if s0 == start => t.saturating_sub(*t0),
                _ => *t,
            })
            .sum();
        ticks as f64 / clock_ticks()
    }
}

/// (comm, start time, CPU ticks) of a process.
fn proc_cpu_start(pid: u32) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let start: u64 = stat[close + 2..]
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()?;
    let (comm, t) = proc_cpu(pid)?;
    Some((comm, start, t))
}

fn process_cpu_seconds(pid: u32) -> f64 {
    proc_cpu(pid).map(|(_, t)| t).unwrap_or(0) as f64 / clock_ticks()
}

/// (VmRSS, VmHWM) in KiB.
fn process_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

// ---------------------------------------------------------------------------
// wrk and nginx
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
}

fn wrk_duration_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().map(|n| n * factor).unwrap_or(f64::NAN)
}

fn wrk(url: &str, p: &Params) -> Load {
    // One wrk thread: on 2 cores a second one only takes CPU from the server under test.
    let threads = std::env::var("ACESTREAM_BENCH_WRK_THREADS").unwrap_or_else(|_| "1".into());
    wrk_threads(url, p, &[], &threads)
}

/// wrk with `threads` load threads and request headers (`-H 'Name: value'` each).
fn wrk_threads(url: &str, p: &Params, headers: &[&str], threads: &str) -> Load {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{}", p.connections),
        &format!("-d{}s", p.load.as_secs().max(1)),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = run_ok(cmd.arg(url));
    let mut load = Load {
        rps: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
        requests: 0,
    };
    for line in out.lines() {
        let line = line.trim();
        if line.contains(" requests in ") {
            load.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            load.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("99%") {
            load.p99_ms = wrk_duration_ms(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            load.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    assert!(
        load.rps.is_finite() && load.p99_ms.is_finite(),
        "unexpected wrk output for {url}:\n{out}"
    );
    eprintln!(
        "bench: wrk {url} {headers:?}: {:.0} req/s, p99 {:.2} ms",
        load.rps, load.p99_ms
    );
    load
}

/// nginx serving files from a temp dir: the physical yardstick for reads.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `workers`: `worker_processes` (`1`, `auto`); `sendfile`: `sendfile on; tcp_nopush on;`
    /// (Debian's packaged nginx.conf sets both; nginx's built-in default is off);
    /// `server_extra`: more directives in the server block (e.g. a location).
    fn start(files: &[(&str, &[u8])], workers: &str, sendfile: bool, server_extra: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("nginx root");
        for (name, bytes) in files {
            let path = root.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("nginx directory");
            }
            std::fs::write(path, bytes).expect("nginx file");
        }
        let port = free_port();
        let user = if rustix::process::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let d = dir.path().display();
        let conf = format!(
            "{user}\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  types {{ }}\n  default_type application/octet-stream;\n\
             keepalive_requests 1000000000;\n  {sendfile}\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} {server_extra} }}\n}}\n",
            root = root.display(),
            sendfile = if sendfile {
                "sendfile on; tcp_nopush on;"
            } else {
                "sendfile off;"
            },
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nginx");
        let n = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // QUIT is nginx's graceful stop.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::QUIT,
        );
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Docker API proxy: counts what the agent asks Docker
// ---------------------------------------------------------------------------

/// A Unix socket in front of /var/run/docker.sock that counts the agent's Docker API
/// requests (and exec creations): the proof that a scrape never calls Docker, and what an
/// idle agent asks of Docker per minute.
struct DockerProxy {
    path: PathBuf,
    requests: Arc<std::sync::atomic::AtomicU64>,
    execs: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl DockerProxy {
    fn start(rt: &tokio::runtime::Runtime) -> DockerProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        let requests = Arc::new(AtomicU64::new(0));
        let execs = Arc::new(AtomicU64::new(0));
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&path).expect("proxy socket")
        };
        let (rq, ex) = (requests.clone(), execs.clone());
        let task = rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rq, ex) = (rq.clone(), ex.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let chunk = &buf[..n];
                            let count = |pat: &[u8]| {
                                chunk.windows(pat.len()).filter(|w| *w == pat).count() as u64
                            };
                            rq.fetch_add(count(b" HTTP/1.1\r\n"), Ordering::Relaxed);
                            ex.fetch_add(count(b"/exec HTTP/1.1\r\n"), Ordering::Relaxed);
                            if sw.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        DockerProxy {
            path,
            requests,
            execs,
            task,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// (requests, exec creations) so far.
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.requests.load(Ordering::Relaxed),
            self.execs.load(Ordering::Relaxed),
        )
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// the agent as a process (what a host runs)
// ---------------------------------------------------------------------------

struct AgentProc {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AgentProc {
    fn start(label: &str, extra_env: &[(&str, String)]) -> AgentProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("config.toml");
        std::fs::write(&empty, "").expect("config file");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acestream-agent"));
        cmd.arg("--config")
            .arg(&empty)
            .env("ACESTREAM_AGENT_HTTP__LISTEN", addr.to_string())
            .env("ACESTREAM_AGENT_DISCOVERY__LABELS", format!("[{label}]"))
            .env("ACESTREAM_AGENT_DISCOVERY__IMAGES", "[]")
            .env("ACESTREAM_AGENT_STORE__PATH", dir.path().join("state.redb"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("cannot start the agent binary");
        AgentProc {
            child,
            addr,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn engines_json(addr: SocketAddr) -> Vec<Value> {
    match try_http_get(addr, "/engines").await {
        Ok((200, body)) => serde_json::from_str::<Vec<Value>>(&body).unwrap_or_default(),
        _ => vec![],
    }
}

async fn wait_engines(addr: SocketAddr, ids: &[String], what: &str) {
    eventually(Duration::from_secs(30), what, || async move {
        let listed = engines_json(addr).await;
        let missing = ids
            .iter()
            .filter(|id| !listed.iter().any(|e| e["container_id"] == id.as_str()))
            .count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} of {} not listed yet", ids.len()))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// engines
// ---------------------------------------------------------------------------

/// The `TEST_CREATED_LABEL` value for bench engines: half an hour ahead, which protects them
/// from the harness's stale-container sweep of concurrent test processes (it removes test
/// containers older than 10 minutes; a full run takes longer).
/// Waits until every engine the agent lists has answered its health check.
async fn wait_all_healthy(addr: SocketAddr, within: Duration) {
    eventually(within, "health checks", || async {
        let listed = engines_json(addr).await;
        listed
            .iter()
            .all(|e| e["health_status"] == "healthy")
            .then_some(())
    })
    .await;
}

fn created_label() -> String {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 30 * 60)
        .to_string()
}

fn start_engines(run: &str, n: usize, idle: usize) -> Vec<TestEngine> {
    let created = created_label();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let run = run.to_string();
            let created = created.clone();
            (i, run, created)
        })
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.to_vec())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|(i, run, created)| {
                        let mut b = TestEngine::builder()
                            .name_prefix("ace-bench")
                            .publish(false)
                            .label(TEST_CREATED_LABEL, &created)
                            .label(BENCH_LABEL, &run);
                        if i < idle {
                            b = b.label(IDLE_LABEL, &run);
                        }
                        (i, b.start())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut engines: Vec<(usize, TestEngine)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("engine start thread"))
        .collect();
    engines.sort_by_key(|(i, _)| *i);
    engines.into_iter().map(|(_, e)| e).collect()
}

// ---------------------------------------------------------------------------
// sections
// ---------------------------------------------------------------------------

fn bench_http(
    p: &Params,
    agent: &AgentProc,
    proxy: &DockerProxy,
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    // The yardstick for these reads is nginx serving the same bytes: see `bench_reads`. Here:
    // the absolute rates and latencies, and what a load costs Docker.
    let base = format!("http://{}", agent.addr);
    let (engines_body, metrics_body) = rt.block_on(async {
        let (_, e) = http_get(agent.addr, "/engines").await;
        let (_, m) = http_get(agent.addr, "/metrics").await;
        (e, m)
    });
    // Warm-up.
    let warm = Params {
        load: Duration::from_secs(1),
        ..p.clone()
    };
    wrk(&format!("{base}/engines"), &warm);

    let mut ag_e = vec![];
    let mut ag_m = vec![];
    let mut dock_m = vec![];
    let mut dock_idle = vec![];
    let (mut api_load, mut api_idle, mut scrapes) = (0, 0, 0);
    let mut errors = 0;
    for _ in 0..p.runs {
        let a = wrk(&format!("{base}/engines"), p);
        // Docker's CPU over a window as long as the load, agent idle, then under the load.
        // Docker API requests too (through the counting proxy).
        let (r0, _) = proxy.counts();
        let d0 = DockerCpu::now();
        let t0 = Instant::now();
        std::thread::sleep(p.load);
        dock_idle.push(d0.seconds_since() / t0.elapsed().as_secs_f64() * 100.0);
        let (r1, _) = proxy.counts();
        let d0 = DockerCpu::now();
        let t0 = Instant::now();
        let am = wrk(&format!("{base}/metrics"), p);
        dock_m.push(d0.seconds_since() / t0.elapsed().as_secs_f64() * 100.0);
        let (r2, _) = proxy.counts();
        api_idle += r1 - r0;
        api_load += r2 - r1;
        scrapes += am.requests;
        errors += a.errors + am.errors;
        ag_e.push(a);
        ag_m.push(am);
    }
    let rps = |v: &[Load]| median(v.iter().map(|l| l.rps).collect());
    let p99 = |v: &[Load]| median(v.iter().map(|l| l.p99_ms).collect());
    let n = p.http_engines;
    let versus = "against nginx: the reads rows below";
    let ae = rps(&ag_e);
    table.row(
        &format!("/engines req/s ({n} engines, {} conns)", p.connections),
        format!("{ae:.0}"),
        versus.into(),
        "≥ 10,000",
        Some(ae >= 10_000.0),
    );
    let ap = p99(&ag_e);
    table.row(
        &format!("/engines p99 ({n} engines)"),
        format!("{ap:.2} ms"),
        "-".into(),
        "< 10 ms",
        Some(ap < 10.0),
    );
    let am = rps(&ag_m);
    table.row(
        &format!("/metrics req/s ({n} engines, {} conns)", p.connections),
        format!("{am:.0}"),
        versus.into(),
        "≥ 5,000",
        Some(am >= 5_000.0),
    );
    let amp = p99(&ag_m);
    table.row(
        &format!("/metrics p99 ({n} engines)"),
        format!("{amp:.2} ms"),
        "-".into(),
        "< 10 ms",
        Some(amp < 10.0),
    );
    let (dm, di) = (median(dock_m), median(dock_idle));
    table.row(
        "/metrics load: Docker API calls",
        format!(
            "{api_load} API requests in {scrapes} scrapes; dockerd+containerd {dm:.2} % of a core"
        ),
        format!("equal windows without load: {api_idle} requests, {di:.2} %"),
        "a scrape never calls Docker",
        Some((api_load as f64) < (scrapes as f64) / 1000.0),
    );
    table.notes.push(format!(
        "HTTP: wrk -t{} -c{} -d{}s --latency (load client on the same 2 cores), agent = release \
         binary, {} non-2xx/socket errors; /engines body {} bytes, /metrics body {} bytes",
        std::env::var("ACESTREAM_BENCH_WRK_THREADS").unwrap_or_else(|_| "1".into()),
        p.connections,
        p.load.as_secs(),
        errors,
        engines_body.len(),
        metrics_body.len()
    ));
}

fn bench_reaction(
    p: &Params,
    run: &str,
    agent: &AgentProc,
    engines: &[TestEngine],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let image = fake_engine_image();
    // Container start -> listed in /engines.
    let mut listed = vec![];
    let mut docker_start = vec![];
    for _ in 0..p.reaction_runs {
        let name = unique_name("ace-bench-react");
        let id = run_ok(Command::new("docker").args([
            "create",
            "--name",
            &name,
            "--label",
            &format!("{TEST_LABEL}={}", run_id()),
            "--label",
            &format!("{BENCH_LABEL}={run}"),
            &image,
        ]))
        .trim()
        .to_string();
        let t0 = Instant::now();
        run_ok(Command::new("docker").args(["start", &id]));
        let started = t0.elapsed();
        let seen = rt.block_on(async {
            loop {
                if engines_json(agent.addr)
                    .await
                    .iter()
                    .any(|e| e["container_id"] == id.as_str())
                {
                    return t0.elapsed();
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "engine {id} never listed"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        listed.push(ms(seen));
        docker_start.push(ms(started));
    }
    let l = median(listed);
    table.row(
        "start -> in /engines",
        format!("{l:.0} ms"),
        format!("`docker start` itself: {:.0} ms", median(docker_start)),
        "≤ 1 s",
        Some(l <= 1000.0),
    );

    // Last stream end (event API) -> cleanup recorded.
    let mut after = vec![];
    for engine in engines.iter().take(p.reaction_runs.min(engines.len())) {
        // What the stream left in the cache: an empty one is nothing to clean, never recorded.
        engine.write_cache_file("react.chunk", 64 * 1024);
        let waited = rt.block_on(async {
            let e = engines_json(agent.addr)
                .await
                .into_iter()
                .find(|e| e["container_id"] == engine.id.as_str())
                .expect("engine listed");
            let host = e["host"].as_str().expect("host").to_string();
            let port = e["port"].as_u64().expect("port");
            let before = e["cleanups_total"].as_u64().unwrap_or(0);
            let key = unique_name("k");
            let body = json!({
                "engine": {"host": host, "port": port},
                "stream": {"key_type": "content_id", "key": key},
                "session": {
                    "playback_session_id": "s",
                    "stat_url": format!("http://{host}:{port}/ace/stat/{key}/s"),
                    "command_url": format!("http://{host}:{port}/ace/cmd/{key}/s"),
                    "is_live": 1
                },
                "labels": {"stream_id": format!("{key}|s")}
            });
            let hdr = [("content-type", "application/json")];
            let (st, text) = http_post(
                agent.addr,
                "/events/stream_started",
                &body.to_string(),
                &hdr,
            )
            .await;
            assert_eq!(st, 200, "stream_started: {text}");
            let t0 = Instant::now();
            let end = json!({"stream_id": format!("{key}|s"), "reason": "bench"});
            let (st, text) =
                http_post(agent.addr, "/events/stream_ended", &end.to_string(), &hdr).await;
            assert_eq!(st, 200, "stream_ended: {text}");
            loop {
                let done = engines_json(agent.addr).await.iter().any(|e| {
                    e["container_id"] == engine.id.as_str()
                        && e["cleanups_total"].as_u64().unwrap_or(0) > before
                });
                if done {
                    return t0.elapsed();
                }
                assert!(
                    t0.elapsed() < p.idle_grace + Duration::from_secs(30),
                    "no cleanup recorded for {}",
                    engine.name
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        after.push(ms(waited));
    }
    let a = median(after);
    let grace = ms(p.idle_grace);
    table.row(
        "last stream end -> cleanup recorded",
        format!("{a:.0} ms (idle_grace + {:.0} ms)", a - grace),
        format!("idle_grace {grace:.0} ms"),
        "≤ idle_grace + 1 s",
        Some(a <= grace + 1000.0),
    );
}

fn bench_idle(
    p: &Params,
    run: &str,
    engines: &[TestEngine],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let n = p.idle_engines;
    let window = p.idle_window;
    // Baseline: the same engines, no agent.
    let mut base = vec![];
    for _ in 0..p.runs.min(2) {
        let d0 = DockerCpu::now();
        let t0 = Instant::now();
        std::thread::sleep(window);
        base.push(d0.seconds_since() / t0.elapsed().as_secs_f64() * 100.0);
    }
    let base = median(base);

    let proxy = DockerProxy::start(rt);
    let agent = AgentProc::start(
        &format!("{IDLE_LABEL}={run}"),
        &[("ACESTREAM_AGENT_DOCKER__HOST", proxy.host())],
    );
    let ids: Vec<String> = engines.iter().take(n).map(|e| e.id.clone()).collect();
    rt.block_on(wait_engines(
        agent.addr,
        &ids,
        "the idle engines to be listed",
    ));
    let pid = agent.pid();
    let mut agent_cpu = vec![];
    let mut docker_cpu = vec![];
    let (q0, x0) = proxy.counts();
    let t_all = Instant::now();
    for _ in 0..p.runs {
        let a0 = process_cpu_seconds(pid);
        let d0 = DockerCpu::now();
        let t0 = Instant::now();
        std::thread::sleep(window);
        let secs = t0.elapsed().as_secs_f64();
        agent_cpu.push((process_cpu_seconds(pid) - a0) / secs * 100.0);
        docker_cpu.push(d0.seconds_since() / secs * 100.0);
    }
    let (q1, x1) = proxy.counts();
    let minutes = t_all.elapsed().as_secs_f64() / 60.0;
    let (rss, hwm) = process_rss_kib(pid);
    agent.stop();
    drop(proxy);
    let a = median(agent_cpu);
    let d = median(docker_cpu);
    table.row(
        &format!(
            "idle agent CPU ({n} engines, default intervals, {}s windows)",
            window.as_secs()
        ),
        format!("{a:.3} % of a core"),
        "-".into(),
        "≤ 1 %",
        Some(a <= 1.0),
    );
    table.row(
        "idle added dockerd+containerd CPU",
        format!(
            "{:.3} % of a core ({d:.3} % with agent; the agent asked Docker {:.0} requests/min, \
             {:.0} execs/min)",
            d - base,
            (q1 - q0) as f64 / minutes,
            (x1 - x0) as f64 / minutes
        ),
        format!("no agent: {base:.3} %"),
        "≤ 1 %",
        Some(d - base <= 1.0),
    );
    let mib = |k: u64| k as f64 / 1024.0;
    table.row(
        "idle agent RSS",
        format!("{:.1} MiB (peak {:.1} MiB)", mib(rss), mib(hwm)),
        "-".into(),
        "≤ 20 MiB",
        Some(mib(hwm) <= 20.0),
    );
}

/// The agent's CPU over `idle_window` with a feature on and with it off, by turns (on, off;
/// off, on; ...) and one agent at a time (two at once would take each other's probes for
/// clients), each once every engine in `ids` answered and `prepare` (given the agent's address)
/// has run: (on, off) figures, percent of a core.
fn idle_by_turns(
    p: &Params,
    rt: &tokio::runtime::Runtime,
    label: &str,
    ids: &[String],
    env: impl Fn(bool) -> Vec<(&'static str, String)>,
    prepare: impl Fn(SocketAddr),
) -> (Vec<f64>, Vec<f64>) {
    let (mut on, mut off) = (vec![], vec![]);
    for round in 0..p.runs {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enabled in order {
            let env = env(enabled);
            let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
            let agent = AgentProc::start(label, &env);
            rt.block_on(wait_engines(agent.addr, ids, "the engines listed"));
            rt.block_on(wait_all_healthy(agent.addr, Duration::from_secs(60)));
            prepare(agent.addr);
            let pid = agent.pid();
            let a0 = process_cpu_seconds(pid);
            let t0 = Instant::now();
            std::thread::sleep(p.idle_window);
            let pct = (process_cpu_seconds(pid) - a0) / t0.elapsed().as_secs_f64() * 100.0;
            if enabled { &mut on } else { &mut off }.push(pct);
            agent.stop();
        }
    }
    (on, off)
}

/// The lowest and highest of a set of figures.
fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// What heal costs an idle host: a large host's engines (`scrape_engines[1]`) under an agent
/// with heal on and one with heal off, by turns (`idle_by_turns`); and the policy's pass over a
/// snapshot of that many engines, alone.
fn bench_heal(
    p: &Params,
    label: &str,
    ids: &[String],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let n = ids.len();
    eprintln!("bench: heal's idle cost");
    let (on, off) = idle_by_turns(
        p,
        rt,
        label,
        ids,
        |on| vec![("ACESTREAM_AGENT_HEAL__ENABLED", on.to_string())],
        |_| {},
    );
    let (off_lo, off_hi) = spread(&off);
    let (on_lo, on_hi) = spread(&on);
    let (a, b) = (median(on), median(off));
    // "Nothing measurable": the difference is within what the heal-off runs vary by among
    // themselves (or a hundredth of a percent of a core, the figure's last digit).
    let noise = (off_hi - off_lo).max(0.01);
    table.row(
        &format!("idle agent CPU, heal on vs off ({n} engines)"),
        format!("{a:.3} % of a core (on: {on_lo:.3}-{on_hi:.3})"),
        format!("heal off: {b:.3} % ({off_lo:.3}-{off_hi:.3})"),
        "on − off within the off runs' spread",
        Some(a - b <= noise),
    );

    let snap = Snapshot {
        engines: (0..n)
            .map(|i| EngineState {
                running: true,
                ..EngineState::remembered(fake_engine(i), Default::default(), Default::default())
            })
            .collect(),
        docker_up: true,
        ..Default::default()
    };
    let policy = acestream_agent::heal::Policy::from_config(&Config::default().heal);
    let now = chrono::Utc::now();
    let passes = 2000;
    let t0 = Instant::now();
    for _ in 0..passes {
        std::hint::black_box(policy.plan(std::hint::black_box(&snap), now));
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / passes as f64;
    table.row(
        &format!("heal pass over {n} engines"),
        format!("{us:.1} µs"),
        "-".into(),
        "-",
        None,
    );
}

/// What polling stream statistics costs: one stream on each engine (a stream event with a
/// `stat_url`, the engine answering a few hundred bytes), statistics at the default
/// `streams.stat_interval` against `off`, by turns (`idle_by_turns`).
fn bench_stats(
    p: &Params,
    label: &str,
    engines: &[TestEngine],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let n = engines.len();
    eprintln!("bench: statistics polling");
    let ids: Vec<String> = engines.iter().map(|e| e.id.clone()).collect();
    let answer = r#"{"response": {"status": "dl", "peers": 12, "speed_down": 512, "speed_up": 64, "downloaded": 104857600, "uploaded": 10485760, "disk_cache_stats": {"avail": 1073741824, "disk_cache_limit": 2147483648, "inactive_inuse": 0, "active_inuse": 1}}, "error": null}"#;
    for e in engines {
        e.exec(&[
            "sh",
            "-c",
            "printf '%s' \"$1\" > /tmp/stat.json",
            "sh",
            answer,
        ]);
    }
    let post_streams = |addr: SocketAddr| {
        rt.block_on(async {
            for (i, id) in ids.iter().enumerate() {
                let body = json!({
                    "container_id": id,
                    "engine": {"host": "127.0.0.1", "port": 1},
                    "stream": {"key_type": "infohash", "key": format!("k{i}")},
                    "session": {"playback_session_id": format!("s{i}"),
                                "stat_url": format!("http://127.0.0.1:6878/ace/stat/k{i}/s{i}"),
                                "command_url": "", "is_live": 1},
                });
                let (status, reply) =
                    http_post(addr, "/events/stream_started", &body.to_string(), &[]).await;
                assert_eq!(status, 200, "{reply}");
            }
        })
    };
    let default = Config::default()
        .streams
        .stat_interval
        .expect("on by default");
    let interval = acestream_agent::config::format_duration(default);
    let (on, off) = idle_by_turns(
        p,
        rt,
        label,
        &ids,
        |on| {
            let v = if on { interval.clone() } else { "off".into() };
            vec![("ACESTREAM_AGENT_STREAMS__STAT_INTERVAL", v)]
        },
        post_streams,
    );
    let (off_lo, off_hi) = spread(&off);
    let (on_lo, on_hi) = spread(&on);
    let (a, b) = (median(on), median(off));
    table.row(
        &format!("statistics polling, one stream on each of {n} engines"),
        format!(
            "{:.3} % of a core added (on: {a:.3} %, {on_lo:.3}-{on_hi:.3})",
            a - b
        ),
        format!("polling off: {b:.3} % ({off_lo:.3}-{off_hi:.3})"),
        "≤ +0.5 % of a core",
        Some(a - b <= 0.5),
    );
}

/// What a pass of disk pressure with every engine busy costs before it deletes anything: the
/// open files of every process of each engine's container (`cache::busy::Cache::open_inodes`,
/// what is read again before each delete) and the listing of its cache, for a large host's
/// engines, through the library in this process (root, as the agent's unit grants it).
fn bench_fd_walk(p: &Params, engines: &[TestEngine], table: &mut Table) {
    let n = engines.len();
    eprintln!("bench: fd walk");
    let caches: Vec<acestream_agent::cache::busy::Cache> = engines
        .iter()
        .filter_map(|e| {
            acestream_agent::cache::busy::Cache::open(e.pid(), &e.id, DEFAULT_CACHE_DIR)
                .ok()
                .flatten()
        })
        .collect();
    assert_eq!(caches.len(), n, "every cache opened from the host");
    let (mut walks, mut lists, mut fds) = (vec![], vec![], 0);
    for _ in 0..p.runs.max(3) {
        let t0 = Instant::now();
        fds = caches
            .iter()
            .map(|c| c.open_inodes().expect("open files").len())
            .sum::<usize>();
        walks.push(ms(t0.elapsed()));
        let t0 = Instant::now();
        for (i, c) in caches.iter().enumerate() {
            c.files(i).expect("cache listing");
        }
        lists.push(ms(t0.elapsed()));
    }
    let (w, l) = (median(walks), median(lists));
    table.row(
        &format!("fd walk of {n} busy engines"),
        format!(
            "{w:.1} ms ({:.0} µs per engine, {fds} open files), cache listing {l:.1} ms",
            w * 1000.0 / n as f64
        ),
        "-".into(),
        "-",
        None,
    );
}

/// The sections over a large host's engines (`scrape_engines[1]`), started once for all.
fn bench_large(
    p: &Params,
    run: &str,
    heal: bool,
    stats: bool,
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let n = p.scrape_engines[1];
    let large_run = format!("{run}-large");
    eprintln!("bench: starting {n} engines");
    let engines = start_engines(&large_run, n, 0);
    let ids: Vec<String> = engines.iter().map(|e| e.id.clone()).collect();
    let label = format!("{BENCH_LABEL}={large_run}");
    if heal {
        bench_heal(p, &label, &ids, table, rt);
    }
    if stats {
        bench_stats(p, &label, &engines, table, rt);
    }
    bench_fd_walk(p, &engines, table);
}

/// One exec per engine that writes `files` files of `bytes` zero bytes into the cache.
fn fill_caches(engines: &[TestEngine], p: &Params) {
    let script =
        r#"i=0; while [ $i -lt "$2" ]; do head -c "$3" /dev/zero > "$1/f$i"; i=$((i+1)); done"#;
    std::thread::scope(|s| {
        for chunk in engines.chunks(engines.len().div_ceil(4).max(1)) {
            s.spawn(move || {
                for e in chunk {
                    e.exec(&[
                        "sh",
                        "-c",
                        script,
                        "sh",
                        &e.cache_dir,
                        &p.files_per_engine.to_string(),
                        &p.file_bytes.to_string(),
                    ]);
                }
            });
        }
    });
}

fn fill_host(dir: &Path, engines: usize, p: &Params) -> Vec<PathBuf> {
    let zeros = vec![0u8; p.file_bytes];
    (0..engines)
        .map(|i| {
            let d = dir.join(format!("engine{i}"));
            std::fs::create_dir_all(&d).expect("host dir");
            for f in 0..p.files_per_engine {
                std::fs::write(d.join(format!("f{f}")), &zeros).expect("host file");
            }
            d
        })
        .collect()
}

/// Idle engines whose cache directory is bind-mounted from a host directory (as operators
/// often run them): the files a sweep deletes are then literally files on the host.
fn start_bind_engines(run: &str, n: usize, root: &Path) -> Vec<TestEngine> {
    let created = created_label();
    (0..n)
        .map(|i| {
            let dir = root.join(format!("engine{i}"));
            std::fs::create_dir_all(&dir).expect("bind source");
            TestEngine::builder()
                .name_prefix("ace-bench-bind")
                .publish(false)
                .label(TEST_CREATED_LABEL, &created)
                .label(IDLE_LABEL, run)
                .docker_arg("-v")
                .docker_arg(&format!("{}:{DEFAULT_CACHE_DIR}", dir.display()))
                .start()
        })
        .collect()
}

/// Where the sweep's caches live.
enum Caches<'a> {
    /// In each container's writable layer (Docker's storage driver; fuse-overlayfs here).
    ContainerLayer,
    /// Bind-mounted from these host directories, one per engine.
    Bind(&'a [PathBuf]),
}

fn bench_sweep(
    p: &Params,
    run: &str,
    engines: &[TestEngine],
    caches: Caches,
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let engines = &engines[..p.idle_engines.min(engines.len())];
    let layer = matches!(caches, Caches::ContainerLayer);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::default();
    cfg.discovery.labels = vec![format!("{IDLE_LABEL}={run}").parse().expect("label")];
    cfg.discovery.images = vec![];
    cfg.store.path = dir.path().join("state.redb");
    cfg.cleanup.interval = None;
    cfg.cleanup.idle_grace = None;
    cfg.cleanup.measure_interval = None;
    let concurrency = cfg.cleanup.concurrency;
    let exec_timeout = cfg.cleanup.exec_timeout;
    let agent = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Agent::start(cfg, listener).await.expect("agent starts")
    });
    let ids: Vec<String> = engines.iter().map(|e| e.id.clone()).collect();
    rt.block_on(wait_engines(
        agent.addr,
        &ids,
        "the sweep engines to be listed",
    ));
    let docker = DockerClient::new(None);
    rt.block_on(docker.reconnect()).expect("docker connects");
    let janitor_with = |method| {
        Janitor::new(
            agent.registry.clone(),
            docker.clone(),
            JanitorConfig {
                exec_timeout,
                concurrency,
                min_bytes: 0,
                method,
            },
            Arc::new(Metrics::new()),
        )
        // The agent's health checks keep running; like the agent's own janitor, these must
        // know them from viewers (else a check connected at the wrong moment skips a delete).
        .with_probes(agent.probes.clone())
    };
    // The default (caches reached from the host), and the exec fallback for comparison.
    let janitor = janitor_with(CacheMethod::Auto);
    let exec_janitor = janitor_with(CacheMethod::Exec);
    let total = |snap: &Snapshot| -> (u64, u64) {
        snap.engines
            .iter()
            .filter(|e| ids.contains(&e.engine.container_id))
            .fold((0, 0), |(n, b), e| {
                (
                    n + e.engine.cleanups_total,
                    b + e.engine.cache_freed_bytes_total,
                )
            })
    };
    // A sweep that did not record every engine: say why (each engine's state, and what one
    // manual cleanup of the first says) before giving up.
    let all_recorded = |what: &str, janitor: &Janitor, recorded: u64| {
        if recorded == engines.len() as u64 {
            return;
        }
        let snap = agent.snapshot();
        let states: Vec<String> = snap
            .engines
            .iter()
            .filter(|e| ids.contains(&e.engine.container_id))
            .map(|e| {
                format!(
                    "{} running={} idle={} cleaning={} err={:?} last={:?}",
                    e.engine.container_name,
                    e.running,
                    e.is_idle(),
                    e.cleaning,
                    e.cache.as_ref().and_then(|c| c.error.as_ref()),
                    e.engine.last_cleanup_error
                )
            })
            .collect();
        let one = rt.block_on(janitor.cleanup(&ids[0], Trigger::Manual));
        panic!(
            "{what} recorded {recorded} of {}: {states:#?}; a manual cleanup: {one:?}",
            engines.len()
        );
    };
    let host_dir = tempfile::tempdir_in("/var/tmp").expect("host tempdir");
    let mut sweep = vec![];
    let mut exec_sweep = vec![];
    let mut through_root = vec![];
    let mut cli = vec![];
    let mut host = vec![];
    let mut freed = 0;
    // What a stream does besides filling the cache: without one since a cache was found
    // empty, the sweep does not look at it again (docs/cache-paths.md#nothing-to-clean).
    let streamed = || {
        rt.block_on(async {
            for id in &ids {
                stream_visit(agent.addr, id).await;
            }
        })
    };
    for _ in 0..p.runs {
        // The agent's sweep: start -> all recorded.
        fill_caches(engines, p);
        streamed();
        let (n0, b0) = total(&agent.snapshot());
        let t0 = Instant::now();
        rt.block_on(janitor.sweep());
        let took = t0.elapsed();
        let (n1, b1) = total(&agent.snapshot());
        all_recorded("sweep", &janitor, n1 - n0);
        freed = b1 - b0;
        sweep.push(ms(took));

        if let Caches::Bind(dirs) = caches {
            // The very same files, deleted on the host by one process.
            fill_caches(engines, p);
            let t0 = Instant::now();
            run_ok(
                Command::new("find")
                    .args(dirs)
                    .args(["-mindepth", "1", "-delete"]),
            );
            host.push(ms(t0.elapsed()));
            continue;
        }

        // The same files deleted from the host through the containers' roots by one process
        // (what the agent's host path does, without the agent).
        fill_caches(engines, p);
        let roots: Vec<String> = engines
            .iter()
            .map(|e| format!("/proc/{}/root{}", e.pid(), e.cache_dir))
            .collect();
        let t0 = Instant::now();
        run_ok(
            Command::new("find")
                .args(&roots)
                .args(["-mindepth", "1", "-delete"]),
        );
        through_root.push(ms(t0.elapsed()));

        // The same sweep through `docker exec` (cleanup.method = "exec").
        fill_caches(engines, p);
        streamed();
        let (n0, _) = total(&agent.snapshot());
        let t0 = Instant::now();
        rt.block_on(exec_janitor.sweep());
        exec_sweep.push(ms(t0.elapsed()));
        let (n1, _) = total(&agent.snapshot());
        all_recorded("exec sweep", &exec_janitor, n1 - n0);

        // The docker CLI, sequentially: du, then rm, per engine.
        fill_caches(engines, p);
        let t0 = Instant::now();
        for e in engines {
            run_ok(Command::new("docker").args(["exec", &e.id, "du", "-sb", &e.cache_dir]));
            run_ok(Command::new("docker").args([
                "exec",
                &e.id,
                "sh",
                "-c",
                r#"rm -rf "$1"/*"#,
                "sh",
                &e.cache_dir,
            ]));
        }
        cli.push(ms(t0.elapsed()));
        assert!(
            engines[0].list_cache().is_empty(),
            "the CLI baseline did not delete"
        );

        // The same files deleted directly on the host.
        let dirs = fill_host(host_dir.path(), engines.len(), p);
        let t0 = Instant::now();
        run_ok(Command::new("rm").arg("-rf").args(&dirs));
        host.push(ms(t0.elapsed()));
    }
    rt.block_on(agent.stop());
    let mib = (p.files_per_engine * p.file_bytes) as f64 / (1 << 20) as f64;
    let n = engines.len();
    let (s, h) = (median(sweep), median(host));
    if !layer {
        table.row(
            &format!(
                "sweep vs host rm, caches bind-mounted from the host ({n} × {mib:.1} MiB in {} \
                 files)",
                p.files_per_engine
            ),
            format!("{:.2} × ({s:.0} ms)", s / h),
            format!("find -delete of the same files on the host: {h:.0} ms"),
            "≤ 2 ×",
            Some(s / h <= 2.0),
        );
        return;
    }
    let (c, x, r) = (median(cli), median(exec_sweep), median(through_root));
    let cli_baseline = format!("CLI du -sb + rm -rf per engine: {c:.0} ms");
    // (row, agent's time, baseline's time, baseline text, target ratio)
    let rows = [
        (
            format!(
                "sweep vs docker CLI du+rm ({n} idle engines × {mib:.1} MiB in {} files)",
                p.files_per_engine
            ),
            s,
            c,
            cli_baseline.clone(),
            0.4,
        ),
        (
            "sweep with cleanup.method = \"exec\" vs docker CLI du+rm".to_string(),
            x,
            c,
            cli_baseline,
            0.4,
        ),
        (
            "sweep vs host rm -rf of copies in /var/tmp".to_string(),
            s,
            h,
            format!("host rm -rf of the same files copied to /var/tmp: {h:.0} ms"),
            2.0,
        ),
        (
            "sweep vs host rm of the same files through /proc/<pid>/root".to_string(),
            s,
            r,
            format!("find -delete of the containers' caches from the host: {r:.0} ms"),
            2.0,
        ),
    ];
    for (what, took, base, base_text, target) in rows {
        table.row(
            &what,
            format!("{:.2} × ({took:.0} ms)", took / base),
            base_text,
            &format!("≤ {target} ×"),
            Some(took / base <= target),
        );
    }
    table.notes.push(format!(
        "sweep: Janitor::sweep() of the library with cleanup.concurrency = {concurrency} and the \
         default cleanup.method (caches reached from the host through /proc/<pid>/root), \
         freed {:.1} MiB per sweep; the CLI baseline runs du -sb and rm -rf per engine; \
         host files in /var/tmp (same filesystem as /var/lib/docker)",
        freed as f64 / (1 << 20) as f64
    ));
}

fn fake_engine(i: usize) -> Engine {
    let now = chrono::Utc::now();
    let id = format!("{i:064x}");
    Engine {
        container_id: id,
        container_name: format!("acestream-engine-{i}"),
        host: "10.0.0.1".into(),
        port: 40000 + (i % 20000) as u16,
        streams: vec![],
        health_status: HealthStatus::Healthy,
        last_health_check: Some(now),
        last_stream_usage: Some(now),
        last_cache_cleanup: Some(now),
        cache_size_bytes: Some(123_456_789),
        image: "ghcr.io/example/acestream:latest".into(),
        labels: [
            ("acestream.engine".to_string(), "true".to_string()),
            ("orchestrator.managed".to_string(), "acestream".to_string()),
        ]
        .into_iter()
        .collect(),
        version: Some("3.1.75".into()),
        first_seen: now,
        last_seen: now,
        cache_current_bytes: Some(1_234_567),
        cache_measured_at: Some(now),
        cleanups_total: 100,
        cleanup_failures_total: 1,
        cache_freed_bytes_total: 9_876_543_210,
        last_cleanup_error: None,
        cache_path: "/home/appuser/.ACEStream/.acestream_cache".into(),
        cache_path_source: None,
        cache_medium: Default::default(),
        cache_mountpoint: None,
        restarts_total: 0,
        last_restart: None,
        unhealthy_since: None,
        heal_state: Default::default(),
        peers: None,
        speed_down_bytes: None,
        speed_up_bytes: None,
        stalled_streams: 0,
        cache_limit_bytes: None,
        cache_limit_source: None,
        live_cache_type: None,
        log_bytes: None,
        log_rotation: None,
    }
}

fn bench_store(p: &Params, table: &mut Table, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let n = p.store_engines;
    let h = p.store_history;
    {
        let store = Store::open(&path, h).expect("store opens");
        let engines: Vec<Engine> = (0..n).map(fake_engine).collect();
        for chunk in engines.chunks(50) {
            let mut batch = Batch::default();
            for e in chunk {
                batch.engines.push(PersistedEngine {
                    engine: e.clone(),
                    counters: TriggerCounters::default(),
                    gone_at: None,
                    heal: Default::default(),
                });
                for k in 0..h {
                    let at = chrono::Utc::now() - chrono::Duration::minutes((h - k) as i64);
                    batch.records.push(CleanupRecord {
                        container_id: e.container_id.clone(),
                        container_name: e.container_name.clone(),
                        trigger: Trigger::Sweep,
                        started_at: at,
                        finished_at: at,
                        duration_seconds: 0.25,
                        size_before_bytes: Some(20 << 20),
                        freed_bytes: 20 << 20,
                        remaining_bytes: Some(0),
                        verdict: acestream_agent::model::Verdict::Cleaned,
                    });
                }
            }
            store.apply(&batch).expect("store write");
        }
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut open = vec![];
    let mut open_load = vec![];
    let mut loaded = None;
    for _ in 0..p.runs.max(3) {
        let t0 = Instant::now();
        let store = Store::open(&path, h).expect("store reopens");
        let t1 = t0.elapsed();
        let l = store.load().expect("store loads");
        open_load.push(ms(t0.elapsed()));
        open.push(ms(t1));
        assert_eq!(l.engines.len(), n, "store lost engines");
        loaded = Some(l);
        drop(store);
    }
    let (o, ol) = (median(open), median(open_load));
    table.row(
        &format!("store open (+load), {n} engines × {h} records"),
        format!("{o:.1} ms (+load {ol:.1} ms)"),
        format!("file {:.1} MiB", size as f64 / (1 << 20) as f64),
        "≤ 200 ms",
        Some(ol <= 200.0),
    );

    let snap = Snapshot {
        engines: loaded
            .expect("loaded")
            .engines
            .into_iter()
            .map(|pe| EngineState {
                running: true,
                ..EngineState::remembered(pe.engine, pe.counters, pe.heal)
            })
            .collect(),
        docker_up: true,
        store_error: None,
        last_sweep: None,
        // Fields the benchmark does not need (filesystems) stay empty.
        ..Default::default()
    };
    let mut render = vec![];
    let mut bytes = 0;
    for _ in 0..20 {
        let t0 = Instant::now();
        bytes = acestream_agent::http::views::engines_json(&snap).len();
        render.push(ms(t0.elapsed()));
    }
    let r = median(render);
    table.row(
        &format!("/engines render, store engines ({n})"),
        format!("{r:.2} ms ({bytes} bytes, once per change)"),
        "-".into(),
        "≤ 20 ms",
        Some(r <= 20.0),
    );

    // The whole agent on that store: Docker unreachable, so it serves the stored engines.
    let mut cfg = Config::default();
    cfg.store.path = path.clone();
    cfg.store.history_per_engine = h;
    cfg.docker.host = Some(format!("unix://{}/no-docker.sock", dir.path().display()));
    cfg.discovery.labels = vec!["acestream-agent.bench.none=1".parse().expect("label")];
    cfg.discovery.images = vec![];
    let (start, get, listed) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let t0 = Instant::now();
        let agent = Agent::start(cfg, listener)
            .await
            .expect("agent starts on the store");
        let start = t0.elapsed();
        let mut get = vec![];
        let mut listed = 0;
        for _ in 0..20 {
            let t0 = Instant::now();
            let (status, body) = http_get(agent.addr, "/engines").await;
            get.push(ms(t0.elapsed()));
            assert_eq!(status, 200);
            listed = serde_json::from_str::<Vec<Value>>(&body)
                .map(|v| v.len())
                .unwrap_or(0);
        }
        agent.stop().await;
        (start, median(get), listed)
    });
    table.row(
        &format!("GET /engines, store engines ({listed} listed)"),
        format!("{get:.2} ms (new connection, whole body)"),
        format!("Agent::start on the store: {:.0} ms", ms(start)),
        "≤ 20 ms",
        Some(get <= 20.0),
    );
}

// ---------------------------------------------------------------------------
// scrapes and fleet sizing (BENCHMARKS.md, "Scrapes and fleet sizing")
// ---------------------------------------------------------------------------

/// Hosts and engines per host of the fleet the sizing table is computed for.
const FLEET_HOSTS: usize = 100;
const FLEET_ENGINES: usize = 50;
/// Prometheus's scrape interval the sizing assumes (its usual 15 s).
const FLEET_INTERVAL_S: f64 = 15.0;
/// Series Prometheus adds per target: up, scrape_duration_seconds, scrape_samples_scraped,
/// scrape_samples_post_metric_relabeling, scrape_series_added.
const PROM_SERIES_PER_TARGET: usize = 5;
/// Head memory per series, a rule of thumb for Prometheus 2.x (see BENCHMARKS.md).
const PROM_BYTES_PER_SERIES: f64 = 3.0 * 1024.0;

/// One answer to a raw HTTP/1.1 GET: the body exactly as sent (gzip'd or not).
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GET on a new connection (what a scraper pays each interval), read to the last body byte.
fn raw_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
        assert!(n > 0, "GET {addr}{path}: closed before the headers");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut r = RawResponse {
        status,
        headers,
        body: buf[head_end + 4..].to_vec(),
    };
    match r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(len) => {
            while r.body.len() < len {
                let n = s
                    .read(&mut chunk)
                    .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
                assert!(
                    n > 0,
                    "GET {addr}{path}: closed {} bytes short",
                    len - r.body.len()
                );
                r.body.extend_from_slice(&chunk[..n]);
            }
            r.body.truncate(len);
        }
        None => {
            s.read_to_end(&mut r.body)
                .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
        }
    }
    r
}

const GZIP: (&str, &str) = ("Accept-Encoding", "gzip");

fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .ok()
        .map(|_| out)
}

/// One sample line of a text exposition: metric name and label pairs (values as written,
/// escapes kept).
struct SampleLine<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
}

fn sample_lines(text: &str) -> Vec<SampleLine<'_>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let mut labels = Vec::new();
        if line[end..].starts_with('{') {
            let b = line.as_bytes();
            let mut i = end + 1;
            while i < b.len() && b[i] != b'}' {
                let eq = i + line[i..].find('=').expect("label name=value");
                let lname = line[i..eq].trim_matches(|c| c == ',' || c == ' ');
                // The value: from the opening quote to the next unescaped one.
                let start = eq + 2;
                let mut j = start;
                while b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                labels.push((lname, &line[start..j]));
                i = j + 1;
                while i < b.len() && (b[i] == b',' || b[i] == b' ') {
                    i += 1;
                }
            }
        }
        out.push(SampleLine { name, labels });
    }
    out
}

/// (sample lines with a `container_id` label, the others).
fn series_split(text: &str) -> (usize, usize) {
    let lines = sample_lines(text);
    let engine = lines
        .iter()
        .filter(|l| l.labels.iter().any(|(k, _)| *k == "container_id"))
        .count();
    (engine, lines.len() - engine)
}

/// Robust Perception's estimate of Prometheus 2.x head memory for the series of one target
/// ("How much RAM does Prometheus 2.x need for cardinality and ingestion?"): 732 B per series,
/// 32 B per label pair, 120 B per unique label value, the series name twice, all doubled for
/// Go's garbage collector. `job` and `instance` are counted as the two labels Prometheus adds.
fn robust_perception_bytes(text: &str) -> f64 {
    let lines = sample_lines(text);
    let mut values: std::collections::HashSet<&str> = ["agent", "host:9100"].into();
    let mut bytes = 0.0;
    for l in &lines {
        bytes += 732.0 + 32.0 * (l.labels.len() + 2) as f64 + 2.0 * l.name.len() as f64;
        values.extend(l.labels.iter().map(|(_, v)| *v));
    }
    (bytes + 120.0 * values.len() as f64) * 2.0
}

/// A Prometheus server (Debian's /usr/bin/prometheus) scraping one target every second.
struct Prometheus {
    /// Spawned by the harness (`common::prom`), killed on drop.
    server: common::prom::Server,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let mut server = common::prom::start_prometheus(dir.path());
        let addr = server.addr;
        let t0 = Instant::now();
        loop {
            if let Some(status) = server.exited() {
                panic!("prometheus exited ({status}):\n{}", server.log_tail());
            }
            if std::net::TcpStream::connect(addr).is_ok()
                && raw_get(addr, "/-/ready", &[]).status == 200
            {
                return Prometheus {
                    server,
                    addr,
                    _dir: dir,
                };
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "prometheus not ready:\n{}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of an instant query whose result is one sample; `None` while there is none.
    fn scalar(&self, q: &str) -> Option<f64> {
        let enc = common::prom::urlencode(q);
        let r = raw_get(self.addr, &format!("/api/v1/query?query={enc}"), &[]);
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        assert_eq!(r.status, 200, "query {q}: {v}");
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }

    /// A sample of Prometheus's own /metrics (it does not scrape itself here).
    fn own_metric(&self, name: &str) -> f64 {
        let r = raw_get(self.addr, "/metrics", &[]);
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// What one agent's scrapes measured.
struct ScrapeAt {
    engines: usize,
    plain: Vec<u8>,
    gzip: Vec<u8>,
    /// The gzip body decompressed to the plain one taken around it.
    decompresses: bool,
    get_plain_ms: f64,
    get_gzip_ms: f64,
    engine_series: usize,
    host_series: usize,
    prom_avg_ms: f64,
    prom_median_ms: f64,
    prom_max_ms: f64,
    prom_scrapes: f64,
    prom_samples: f64,
    prom_samples_min: f64,
    prom_samples_max: f64,
    prom_up: f64,
    prom_head_series: f64,
    robust_perception_bytes: f64,
}

/// Removes engines from several threads at once (150 `docker rm -f` one after another take
/// minutes).
fn remove_engines(engines: Vec<TestEngine>) {
    let mut chunks: Vec<Vec<TestEngine>> = (0..8).map(|_| Vec::new()).collect();
    for (i, e) in engines.into_iter().enumerate() {
        chunks[i % 8].push(e);
    }
    std::thread::scope(|s| {
        for c in chunks {
            s.spawn(move || drop(c));
        }
    });
}

/// Gives every engine the state of a working host's engine: one stream, then its stream-end
/// cleanup of a non-empty cache (so every per-engine series exists: last stream, last cleanup,
/// size before it), and waits for the first periodic sweep (its timestamp is a host series).
fn use_and_clean(
    p: &Params,
    agent: &AgentProc,
    engines: &[TestEngine],
    rt: &tokio::runtime::Runtime,
) {
    let ids: Vec<&str> = engines.iter().map(|e| e.id.as_str()).collect();
    let pids: Vec<u32> = run_ok(
        Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}"])
            .args(&ids),
    )
    .lines()
    .map(|l| l.trim().parse().expect("pid"))
    .collect();
    assert_eq!(pids.len(), engines.len());
    rt.block_on(async {
        let listed = engines_json(agent.addr).await;
        let hdr = [("content-type", "application/json")];
        for (engine, pid) in engines.iter().zip(&pids) {
            let e = listed
                .iter()
                .find(|e| e["container_id"] == engine.id.as_str())
                .expect("engine listed");
            let host = e["host"].as_str().expect("host").to_string();
            let port = e["port"].as_u64().expect("port");
            let key = unique_name("scrape");
            let body = json!({
                "engine": {"host": host, "port": port},
                "stream": {"key_type": "content_id", "key": key},
                "session": {
                    "playback_session_id": "s",
                    "stat_url": format!("http://{host}:{port}/ace/stat/{key}/s"),
                    "command_url": format!("http://{host}:{port}/ace/cmd/{key}/s"),
                    "is_live": 1
                },
                "labels": {"stream_id": format!("{key}|s")}
            });
            let (st, text) = http_post(
                agent.addr,
                "/events/stream_started",
                &body.to_string(),
                &hdr,
            )
            .await;
            assert_eq!(st, 200, "stream_started: {text}");
            // What the stream left in the cache, written from the host through the
            // container's root (no exec): a busy engine is not swept, so this stays until the
            // stream-end cleanup.
            std::fs::write(
                format!("/proc/{pid}/root{}/scrape.chunk", engine.cache_dir),
                vec![0u8; 64 * 1024],
            )
            .expect("cache file through /proc/<pid>/root");
            let end = json!({"stream_id": format!("{key}|s"), "reason": "bench"});
            let (st, text) =
                http_post(agent.addr, "/events/stream_ended", &end.to_string(), &hdr).await;
            assert_eq!(st, 200, "stream_ended: {text}");
        }
        eventually(
            p.idle_grace + Duration::from_secs(60),
            "every engine's stream-end cleanup",
            || async {
                let listed = engines_json(agent.addr).await;
                let done = engines
                    .iter()
                    .filter(|e| {
                        listed.iter().any(|l| {
                            l["container_id"] == e.id.as_str()
                                && l["cleanups_total"].as_u64().unwrap_or(0) >= 1
                        })
                    })
                    .count();
                if done == engines.len() {
                    Ok(())
                } else {
                    Err(format!("{done} of {} cleaned", engines.len()))
                }
            },
        )
        .await;
        eventually(
            p.scrape_sweep + Duration::from_secs(60),
            "the first periodic sweep",
            || async {
                let (_, m) = try_http_get(agent.addr, "/metrics").await?;
                m.contains("\nacestream_agent_last_sweep_timestamp_seconds ")
                    .then_some(())
                    .ok_or_else(|| "no sweep yet".to_string())
            },
        )
        .await;
    });
}

/// Sizes, direct GETs and what a real Prometheus sees, for one agent.
fn measure_scrape(p: &Params, agent: &AgentProc, engines: usize) -> ScrapeAt {
    // The bodies: plain, gzip, plain again; the gzip one must decompress to the plain one
    // (a new rendering in between, e.g. a health check's timestamp, changes both: retry).
    let (mut plain, mut gzip, mut decompresses) = (vec![], vec![], false);
    for _ in 0..10 {
        let a = raw_get(agent.addr, "/metrics", &[]);
        let z = raw_get(agent.addr, "/metrics", &[GZIP]);
        let b = raw_get(agent.addr, "/metrics", &[]);
        assert!(a.status == 200 && z.status == 200, "GET /metrics failed");
        assert_eq!(a.header("content-encoding"), None, "plain body is encoded");
        assert_eq!(z.header("content-encoding"), Some("gzip"), "no gzip answer");
        (plain, gzip) = (a.body, z.body);
        if plain == b.body {
            decompresses = gunzip(&gzip).as_deref() == Some(plain.as_slice());
            break;
        }
    }
    // Scrape duration as a scraper pays it: connect, request, whole body.
    let (mut tp, mut tz) = (vec![], vec![]);
    for _ in 0..p.scrape_gets {
        let t0 = Instant::now();
        let r = raw_get(agent.addr, "/metrics", &[]);
        tp.push(ms(t0.elapsed()));
        assert_eq!(r.status, 200);
        let t0 = Instant::now();
        let r = raw_get(agent.addr, "/metrics", &[GZIP]);
        tz.push(ms(t0.elapsed()));
        assert_eq!(r.status, 200);
    }
    let text = String::from_utf8_lossy(&plain).into_owned();
    let (engine_series, host_series) = series_split(&text);
    // Kept for a look at the series: target/bench-scrape/metrics-<n>.txt and .gz.
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scrape");
    if std::fs::create_dir_all(&keep).is_ok() {
        let _ = std::fs::write(keep.join(format!("metrics-{engines}.txt")), &plain);
        let _ = std::fs::write(keep.join(format!("metrics-{engines}.gz")), &gzip);
    }

    // A real Prometheus (2.42 always sends Accept-Encoding: gzip).
    let prom = Prometheus::start(agent.addr);
    let sel = "{job=\"agent\"}";
    let t0 = Instant::now();
    let deadline = Duration::from_secs(p.prom_scrapes as u64 + 60);
    let scrapes = loop {
        let n = prom
            .scalar(&format!(
                "count_over_time(scrape_duration_seconds{sel}[10m])"
            ))
            .unwrap_or(0.0);
        if n >= p.prom_scrapes as f64 {
            break n;
        }
        assert!(
            t0.elapsed() < deadline,
            "prometheus scraped {n} times:\n{}",
            prom.server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let q = |e: &str| prom.scalar(e).unwrap_or(f64::NAN);
    let at = ScrapeAt {
        engines,
        decompresses,
        get_plain_ms: median(tp),
        get_gzip_ms: median(tz),
        engine_series,
        host_series,
        prom_avg_ms: q(&format!("avg_over_time(scrape_duration_seconds{sel}[10m])")) * 1000.0,
        prom_median_ms: q(&format!(
            "quantile_over_time(0.5, scrape_duration_seconds{sel}[10m])"
        )) * 1000.0,
        prom_max_ms: q(&format!("max_over_time(scrape_duration_seconds{sel}[10m])")) * 1000.0,
        prom_scrapes: scrapes,
        prom_samples: q(&format!("scrape_samples_scraped{sel}")),
        prom_samples_min: q(&format!("min_over_time(scrape_samples_scraped{sel}[10m])")),
        prom_samples_max: q(&format!("max_over_time(scrape_samples_scraped{sel}[10m])")),
        prom_up: q(&format!("min_over_time(up{sel}[10m])")),
        prom_head_series: prom.own_metric("prometheus_tsdb_head_series"),
        robust_perception_bytes: robust_perception_bytes(&text),
        plain,
        gzip,
    };
    drop(prom);
    at
}

/// `/metrics` with `Accept-Encoding: gzip` under load, against nginx serving the agent's own
/// gzip body (taken just before) with `Content-Encoding: gzip`; the agent's plain `/metrics`
/// in the same runs for comparison.
/// The nginx servers the reads are measured against: `worker_processes` 1 and `auto`, each with
/// nginx's built-in `sendfile off` and with `sendfile on; tcp_nopush on;` (Debian's packaged
/// nginx.conf). The yardstick is the fastest of them in each run.
const NGINX_SHAPES: [(&str, &str, bool); 4] = [
    ("workers 1", "1", false),
    ("workers auto", "auto", false),
    ("workers 1, sendfile", "1", true),
    ("workers auto, sendfile", "auto", true),
];

/// What a reads row compares: a path on the agent, a file on nginx, a request header.
struct Read {
    name: &'static str,
    agent_path: &'static str,
    nginx_path: &'static str,
    header: Option<&'static str>,
}

const READS: [Read; 3] = [
    Read {
        name: "/engines",
        agent_path: "/engines",
        nginx_path: "/engines",
        header: None,
    },
    Read {
        name: "/metrics",
        agent_path: "/metrics",
        nginx_path: "/metrics",
        header: None,
    },
    Read {
        name: "/metrics gzip",
        agent_path: "/metrics",
        nginx_path: "/gz/metrics",
        header: Some("Accept-Encoding: gzip"),
    },
];

/// What the reads section measured at one host size.
struct ReadsAt {
    engines: usize,
    /// req/s, `[read][server: the agent, then the NGINX_SHAPES][run]`.
    rps: Vec<Vec<Vec<f64>>>,
    hwm_kib: u64,
    errors: u64,
    /// Body sizes of the READS.
    bytes: [usize; 3],
}

/// Reads against the best nginx (the bar for reads: the agent's views served at least as fast as
/// the fastest nginx shape serves the same bytes): for each host size, an agent with the fast
/// intervals of the bar (health 2 s, activity 1 s: the views are rendered again during the
/// load), the same bytes served by the four nginx shapes, `wrk -t2` on each in turn, every
/// read and server once per run; then the agent's peak RSS.
fn bench_reads(
    p: &Params,
    run: &str,
    engines: &[TestEngine],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let load_at_start = loadavg();
    let [a, b] = p.scrape_engines;
    let threads = "2";
    let mut sizes = vec![];
    for (n, label) in [(a, IDLE_LABEL), (b, BENCH_LABEL)] {
        let agent = AgentProc::start(
            &format!("{label}={run}"),
            &[
                ("ACESTREAM_AGENT_HEALTH__INTERVAL", "2s".into()),
                ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "1s".into()),
            ],
        );
        let ids: Vec<String> = engines[..n].iter().map(|e| e.id.clone()).collect();
        rt.block_on(wait_engines(
            agent.addr,
            &ids,
            "every reads engine to be listed",
        ));
        rt.block_on(wait_all_healthy(agent.addr, Duration::from_secs(60)));
        // The bytes the agent serves now, for nginx to serve the same.
        let get = |path: &str, headers: &[(&str, &str)]| {
            let r = raw_get(agent.addr, path, headers);
            assert_eq!(r.status, 200, "GET {path} from the agent");
            r
        };
        let engines_body = get("/engines", &[]).body;
        let metrics_body = get("/metrics", &[]).body;
        let gz = get("/metrics", &[("Accept-Encoding", "gzip")]);
        assert_eq!(
            gz.header("content-encoding"),
            Some("gzip"),
            "agent did not gzip"
        );
        let files: [(&str, &[u8]); 3] = [
            ("engines", &engines_body),
            ("metrics", &metrics_body),
            ("gz/metrics", &gz.body),
        ];
        let nginx: Vec<(&str, Nginx)> = NGINX_SHAPES
            .iter()
            .map(|(shape, workers, sendfile)| {
                let n = Nginx::start(
                    &files,
                    workers,
                    *sendfile,
                    "location /gz/ { add_header Content-Encoding gzip; }",
                );
                (*shape, n)
            })
            .collect();
        for (_, n) in &nginx {
            let r = raw_get(
                SocketAddr::from(([127, 0, 0, 1], n.port)),
                "/gz/metrics",
                &[("Accept-Encoding", "gzip")],
            );
            assert!(
                r.body == gz.body && r.header("content-encoding") == Some("gzip"),
                "nginx does not serve the agent's gzip body as gzip"
            );
        }
        let base = format!("http://{}", agent.addr);
        let warm = Params {
            load: Duration::from_secs(1),
            ..p.clone()
        };
        let mut rps = vec![vec![vec![]; 1 + nginx.len()]; READS.len()];
        let mut errors = 0;
        // The smoke run (CI) skips the warm-up: it checks the table, not the figures.
        let first = if p.smoke { 1 } else { 0 };
        for r in first..=p.runs {
            let pp = if r == 0 { &warm } else { p };
            for (i, read) in READS.iter().enumerate() {
                let headers: Vec<&str> = read.header.into_iter().collect();
                let urls = std::iter::once(format!("{base}{}", read.agent_path)).chain(
                    nginx
                        .iter()
                        .map(|(_, n)| format!("http://127.0.0.1:{}{}", n.port, read.nginx_path)),
                );
                for (j, url) in urls.enumerate() {
                    let l = wrk_threads(&url, pp, &headers, threads);
                    // Run 0 warms every server up (and the agent's buffers).
                    if r > 0 {
                        errors += l.errors;
                        rps[i][j].push(l.rps);
                    }
                }
            }
        }
        let hwm = process_rss_kib(agent.pid()).1;
        agent.stop();
        drop(nginx);
        sizes.push(ReadsAt {
            engines: n,
            rps,
            hwm_kib: hwm,
            errors,
            bytes: [engines_body.len(), metrics_body.len(), gz.body.len()],
        });
    }
    for (i, read) in READS.iter().enumerate() {
        for ReadsAt {
            engines: n,
            rps,
            bytes,
            ..
        } in &sizes
        {
            let agent = median(rps[i][0].clone());
            // (shape, sendfile, median req/s), in NGINX_SHAPES order.
            let shapes: Vec<(&str, bool, f64)> = NGINX_SHAPES
                .iter()
                .enumerate()
                .map(|(j, (shape, _, sendfile))| (*shape, *sendfile, median(rps[i][j + 1].clone())))
                .collect();
            let (best_shape, _, best) =
                shapes
                    .iter()
                    .copied()
                    .fold(("", false, 0.0), |acc, x| if x.2 > acc.2 { x } else { acc });
            // Without sendfile: the original yardstick for reads (workers 1 and auto as the
            // harness ran nginx before).
            let best_plain = shapes
                .iter()
                .filter(|s| !s.1)
                .map(|s| s.2)
                .fold(0.0, f64::max);
            table.row(
                &format!("{} read vs the best nginx ({n} engines)", read.name),
                format!(
                    "{agent:.0} req/s = {:.2} × the best nginx ({:.2} × the best without sendfile)",
                    agent / best,
                    agent / best_plain
                ),
                format!(
                    "best: {best_shape}, {best:.0} req/s ({}); {} bytes",
                    shapes
                        .iter()
                        .map(|(s, _, v)| format!("{s}: {v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    bytes[i]
                ),
                "≥ 1.0 × the best nginx",
                Some(agent >= best),
            );
        }
    }
    for s in &sizes {
        let (n, hwm) = (s.engines, s.hwm_kib);
        let at_a = n == a;
        table.row(
            &format!("peak RSS under reads ({n} engines)"),
            format!("{} (VmHWM after every load)", mib(hwm as f64 * 1024.0)),
            "-".into(),
            if at_a {
                "≤ 24 MiB at the smaller host"
            } else {
                "-"
            },
            at_a.then_some(hwm <= 24 * 1024),
        );
    }
    let errors: u64 = sizes.iter().map(|s| s.errors).sum();
    table.notes.push(format!(
        "reads vs the best nginx: agent = release binary with health.interval 2 s and \
         activity.interval 1 s (rendering again during the loads); the bodies it served just \
         before, from nginx 1.22 with worker_processes 1 and auto, each with sendfile off \
         (nginx's default) and on (+ tcp_nopush, Debian's nginx.conf); wrk -t{threads} -c{} \
         -d{}s on each server in turn, every read and server once per run after a 1 s warm-up \
         round, {errors} non-2xx/socket errors; the agent's VmHWM read after all its loads; \
         load average at the start: {load_at_start}",
        p.connections,
        p.load.as_secs(),
    ));
}

fn kib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn mib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// The engines of the scrape and reads sections: `b` of them, all with BENCH_LABEL=<run>, the
/// first `a` also with IDLE_LABEL=<run> (a host of each size), each answering HTTP.
fn start_sized_engines(p: &Params, run: &str, rt: &tokio::runtime::Runtime) -> Vec<TestEngine> {
    let [a, b] = p.scrape_engines;
    assert!(a < b, "host sizes must grow");
    eprintln!("bench: starting {b} engines");
    let t0 = Instant::now();
    let engines = start_engines(run, b, a);
    rt.block_on(async {
        for e in &engines {
            let ip = e.ip();
            eventually(Duration::from_secs(60), "engine HTTP", || async move {
                try_http_get(SocketAddr::new(ip, ENGINE_PORT), STATUS_PATH).await
            })
            .await;
        }
    });
    eprintln!(
        "bench: {b} engines up in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    engines
}

fn bench_scrape(
    p: &Params,
    scrape_run: &str,
    engines: &[TestEngine],
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    let [a, b] = p.scrape_engines;
    let mut at = vec![];
    for (n, label) in [(a, IDLE_LABEL), (b, BENCH_LABEL)] {
        let t0 = Instant::now();
        let agent = AgentProc::start(
            &format!("{label}={scrape_run}"),
            &[
                (
                    "ACESTREAM_AGENT_CLEANUP__IDLE_GRACE",
                    format!("{}ms", p.idle_grace.min(Duration::from_secs(1)).as_millis()),
                ),
                (
                    "ACESTREAM_AGENT_CLEANUP__INTERVAL",
                    format!("{}ms", p.scrape_sweep.as_millis()),
                ),
            ],
        );
        let mine = &engines[..n];
        let ids: Vec<String> = mine.iter().map(|e| e.id.clone()).collect();
        rt.block_on(wait_engines(
            agent.addr,
            &ids,
            "every scrape engine to be listed",
        ));
        rt.block_on(eventually(
            Duration::from_secs(60),
            "health checks",
            || async {
                let listed = engines_json(agent.addr).await;
                (listed.len() == n && listed.iter().all(|e| e["health_status"] == "healthy"))
                    .then_some(())
            },
        ));
        use_and_clean(p, &agent, mine, rt);
        eprintln!(
            "bench: scrape: {n} engines in steady state after {:.0} s",
            t0.elapsed().as_secs_f64()
        );
        let s = measure_scrape(p, &agent, n);
        agent.stop();
        at.push(s);
    }
    for s in &at {
        let n = s.engines;
        let (pl, gz) = (s.plain.len(), s.gzip.len());
        table.row(
            &format!("/metrics body ({n} engines)"),
            format!(
                "{gz} bytes gzip ({:.1} % of plain, {:.0} bytes per engine)",
                gz as f64 / pl as f64 * 100.0,
                gz as f64 / n as f64
            ),
            format!("plain: {pl} bytes ({:.0} per engine)", pl as f64 / n as f64),
            "gzip body decompresses to the plain one",
            Some(s.decompresses),
        );
    }
    for s in &at {
        table.row(
            &format!("GET /metrics, new connection ({} engines)", s.engines),
            format!("{:.2} ms gzip (median of {})", s.get_gzip_ms, p.scrape_gets),
            format!("plain: {:.2} ms", s.get_plain_ms),
            "-",
            None,
        );
    }
    for s in &at {
        let lines = (s.engine_series + s.host_series) as f64;
        table.row(
            &format!("Prometheus scrape ({} engines)", s.engines),
            format!(
                "{:.2} ms scrape_duration_seconds, avg of {:.0} scrapes, gzip (median {:.2} ms, \
                 max {:.2} ms); {:.0} scrape_samples_scraped",
                s.prom_avg_ms, s.prom_scrapes, s.prom_median_ms, s.prom_max_ms, s.prom_samples
            ),
            format!(
                "direct GET gzip {:.2} ms, plain {:.2} ms; {lines:.0} sample lines in the \
                 body; head series {:.0}; up {:.0}",
                s.get_gzip_ms, s.get_plain_ms, s.prom_head_series, s.prom_up
            ),
            "samples scraped = sample lines = head series − 5, every scrape up",
            Some(
                s.prom_samples == lines
                    && s.prom_samples_min == s.prom_samples_max
                    && s.prom_head_series == lines + PROM_SERIES_PER_TARGET as f64
                    && s.prom_up == 1.0,
            ),
        );
    }
    let (sa, sb) = (&at[0], &at[1]);
    let pe = |s: &ScrapeAt| s.engine_series as f64 / s.engines as f64;
    table.row(
        "series per engine",
        format!(
            "{:.2} ({a} engines: {} sample lines with container_id), {:.2} ({b} engines: {})",
            pe(sa),
            sa.engine_series,
            pe(sb),
            sb.engine_series
        ),
        "-".into(),
        &format!("the same at {a} and {b} engines"),
        Some(sa.engine_series * b == sb.engine_series * a),
    );
    table.row(
        "series per host (not per engine)",
        format!(
            "{} ({a} engines), {} ({b} engines)",
            sa.host_series, sb.host_series
        ),
        format!("+ {PROM_SERIES_PER_TARGET} Prometheus adds per target (up, scrape_*)"),
        &format!("the same at {a} and {b} engines"),
        Some(sa.host_series == sb.host_series),
    );
    table.notes.push(format!(
        "scrapes: {b} fake engines, an agent (release binary, default intervals but \
         cleanup.interval {} ms and idle_grace {} ms) over the first {a}, then one over all \
         {b}; before measuring, every engine had one stream and its stream-end cleanup and the \
         first sweep had run (every per-engine series present; none of the memory-cache ones). \
         Bodies by a raw HTTP/1.1 client with and without Accept-Encoding: gzip; GET = \
         connect + request + last body byte, new connection each; Prometheus 2.42 \
         (scrape_interval 1s) scraping the agent alone; the bodies are kept in \
         target/bench-scrape/",
        p.scrape_sweep.as_millis(),
        p.idle_grace.min(Duration::from_secs(1)).as_millis()
    ));
    table.sections.push(sizing(sa, sb));
}

/// The fleet sizing table, computed (not measured) from the two hosts' figures: per-engine
/// and per-host parts by a straight line through them, at FLEET_ENGINES per host.
fn sizing(sa: &ScrapeAt, sb: &ScrapeAt) -> String {
    let (na, nb) = (sa.engines as f64, sb.engines as f64);
    let at = |va: f64, vb: f64| va + (vb - va) / (nb - na) * (FLEET_ENGINES as f64 - na);
    let series_host = at(
        (sa.engine_series + sa.host_series) as f64,
        (sb.engine_series + sb.host_series) as f64,
    ) + PROM_SERIES_PER_TARGET as f64;
    let plain = at(sa.plain.len() as f64, sb.plain.len() as f64);
    let gzip = at(sa.gzip.len() as f64, sb.gzip.len() as f64);
    let rp_per_series = {
        let lines = |s: &ScrapeAt| (s.engine_series + s.host_series) as f64;
        sb.robust_perception_bytes / lines(sb)
    };
    let h = FLEET_HOSTS as f64;
    let iv = FLEET_INTERVAL_S;
    let from = if sa.engines == FLEET_ENGINES {
        format!("measured at {FLEET_ENGINES} engines")
    } else {
        format!(
            "extrapolated to {FLEET_ENGINES} engines from {} and {}",
            sa.engines, sb.engines
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{SIZING_TITLE} {FLEET_HOSTS} hosts × {FLEET_ENGINES} engines, one scrape per host every \
         {iv:.0} s (computed from this run's per-host figures, {from}; not measured on a fleet)\n"
    );
    let _ = writeln!(
        s,
        "| quantity | per host | {FLEET_HOSTS} hosts | computed as |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let mut row = |q: &str, one: String, all: String, how: &str| {
        let _ = writeln!(s, "| {q} | {one} | {all} | {how} |");
    };
    row(
        "series",
        format!("{series_host:.0}"),
        format!("{:.0}", series_host * h),
        &format!(
            "per-host series + {FLEET_ENGINES} × per-engine series + {PROM_SERIES_PER_TARGET} \
             that Prometheus adds per target"
        ),
    );
    row(
        "samples ingested per second",
        format!("{:.1}", series_host / iv),
        format!("{:.0}", series_host * h / iv),
        &format!("series / {iv:.0} s"),
    );
    row(
        "scrape bytes per second, plain",
        format!("{}/s ({plain:.0} B per scrape)", kib(plain / iv)),
        format!("{}/s", kib(plain * h / iv)),
        "plain body / interval",
    );
    row(
        "scrape bytes per second, gzip (what Prometheus asks for)",
        format!("{}/s ({gzip:.0} B per scrape)", kib(gzip / iv)),
        format!(
            "{}/s ({:.1} % of plain)",
            kib(gzip * h / iv),
            gzip / plain * 100.0
        ),
        "gzip body / interval",
    );
    row(
        "Prometheus head memory, rule of thumb",
        mib(series_host * PROM_BYTES_PER_SERIES),
        mib(series_host * h * PROM_BYTES_PER_SERIES),
        "~3 KiB per head series (a rule of thumb for Prometheus 2.x, not a measurement)",
    );
    row(
        "Prometheus head memory, Robust Perception's 2.x formula",
        mib(series_host * rp_per_series),
        mib(series_host * h * rp_per_series),
        &format!(
            "{rp_per_series:.0} B per series: 732 B + 32 B per label pair + 120 B per unique \
             label value + the name twice, × 2 for Go's GC, averaged over this run's \
             {}-engine body",
            sb.engines
        ),
    );
    row(
        "Prometheus disk, 15 d retention",
        format!(
            "{}–{}",
            mib(series_host / iv * 86_400.0 * 15.0),
            mib(series_host / iv * 86_400.0 * 15.0 * 2.0)
        ),
        format!(
            "{}–{}",
            mib(series_host * h / iv * 86_400.0 * 15.0),
            mib(series_host * h / iv * 86_400.0 * 15.0 * 2.0)
        ),
        "samples/s × 15 d × 1–2 B per sample (Prometheus storage docs)",
    );
    s
}

// ---------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------

/// Runs every section and returns the Markdown table.
pub fn run(p: &Params) -> String {
    let only = p.only.as_deref();
    assert!(
        matches!(
            only,
            None | Some("scrape")
                | Some("reads")
                | Some("sweep")
                | Some("heal")
                | Some("stats")
                | Some("busy")
        ),
        "ACESTREAM_BENCH_ONLY={only:?}: the sections that run alone are `scrape`, `reads`, \
         `sweep`, `heal`, `stats` and `busy`"
    );
    require_tool("wrk", "wrk");
    require_tool("nginx", "nginx-light");
    require_tool("curl", "curl");
    require_tool("/usr/bin/prometheus", "prometheus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut table = Table::default();
    let t_all = Instant::now();
    let load_start = loadavg();
    let run = unique_name("bench");
    eprintln!("bench: params {p:?}");
    if only == Some("sweep") {
        eprintln!("bench: starting {} engines", p.idle_engines);
        let engines = start_engines(&run, p.idle_engines, p.idle_engines);
        bench_sweeps(p, &run, engines, &mut table, &rt);
    } else if matches!(only, Some("heal") | Some("stats") | Some("busy")) {
        bench_large(
            p,
            &run,
            only == Some("heal"),
            only == Some("stats"),
            &mut table,
            &rt,
        );
    } else {
        if only.is_none() {
            bench_all_but_scrape(p, &run, &mut table, &rt);
            bench_large(p, &run, true, true, &mut table, &rt);
        }
        let sized_run = format!("{run}-sized");
        let engines = start_sized_engines(p, &sized_run, &rt);
        if only != Some("reads") {
            eprintln!("bench: scrapes");
            bench_scrape(p, &sized_run, &engines, &mut table, &rt);
        }
        if only != Some("scrape") {
            eprintln!("bench: reads against the best nginx");
            bench_reads(p, &sized_run, &engines, &mut table, &rt);
        }
        eprintln!("bench: removing {} engines", engines.len());
        remove_engines(engines);
    }

    table.notes.push(format!(
        "machine: {} cores, load average before/after: {} / {}; total bench time {:.0} s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_start,
        loadavg(),
        t_all.elapsed().as_secs_f64()
    ));
    table.render(p)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every section before the scrapes (the cost and reaction table of BENCHMARKS.md).
fn bench_all_but_scrape(p: &Params, run: &str, table: &mut Table, rt: &tokio::runtime::Runtime) {
    bench_store(p, table, rt);

    eprintln!(
        "bench: starting {} engines",
        p.http_engines.max(p.idle_engines)
    );
    let engines = start_engines(run, p.http_engines.max(p.idle_engines), p.idle_engines);
    rt.block_on(async {
        for e in &engines {
            let ip = e.ip();
            eventually(Duration::from_secs(20), "engine HTTP", || async move {
                try_http_get(SocketAddr::new(ip, ENGINE_PORT), STATUS_PATH).await
            })
            .await;
        }
    });

    // HTTP serving and reactions: one agent over every engine, sweep off (the stream-end
    // trigger is under test), idle_grace the default.
    let proxy = DockerProxy::start(rt);
    let agent = AgentProc::start(
        &format!("{BENCH_LABEL}={run}"),
        &[
            ("ACESTREAM_AGENT_DOCKER__HOST", proxy.host()),
            ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".into()),
            (
                "ACESTREAM_AGENT_CLEANUP__IDLE_GRACE",
                format!("{}ms", p.idle_grace.as_millis()),
            ),
        ],
    );
    let ids: Vec<String> = engines.iter().map(|e| e.id.clone()).collect();
    rt.block_on(wait_engines(agent.addr, &ids, "every engine to be listed"));
    // Health results in, so the bodies are the steady-state ones.
    rt.block_on(wait_all_healthy(agent.addr, Duration::from_secs(30)));
    eprintln!("bench: HTTP");
    bench_http(p, &agent, &proxy, table, rt);
    eprintln!("bench: reactions");
    bench_reaction(p, run, &agent, &engines, table, rt);
    agent.stop();

    eprintln!("bench: idle cost");
    bench_idle(p, run, &engines, table, rt);
    bench_sweeps(p, run, engines, table, rt);
}

/// The sweep over the engines' own caches (which it fills), then over bind-mounted ones.
fn bench_sweeps(
    p: &Params,
    run: &str,
    engines: Vec<TestEngine>,
    table: &mut Table,
    rt: &tokio::runtime::Runtime,
) {
    eprintln!("bench: sweep");
    bench_sweep(p, run, &engines, Caches::ContainerLayer, table, rt);
    drop(engines);
    eprintln!("bench: sweep, bind-mounted caches");
    let bind_run = format!("{run}-bind");
    let bind_root = tempfile::tempdir_in("/var/tmp").expect("bind sources");
    let bind_engines = start_bind_engines(&bind_run, p.idle_engines, bind_root.path());
    let bind_dirs: Vec<PathBuf> = (0..bind_engines.len())
        .map(|i| bind_root.path().join(format!("engine{i}")))
        .collect();
    bench_sweep(
        p,
        &bind_run,
        &bind_engines,
        Caches::Bind(&bind_dirs),
        table,
        rt,
    );
    drop(bind_engines);
}

fn main() {
    if !bench_requested("agent") {
        return;
    }
    let p = Params::from_env();
    let table = run(&p);
    println!("{table}");
}
