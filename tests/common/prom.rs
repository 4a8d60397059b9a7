//! The ecosystem's own parts for the fleet tests: a real Prometheus and Alertmanager (Debian's
//! `prometheus` and `prometheus-alertmanager`) as child processes, killed on drop, and a
//! webhook receiver standing in for the person the alerts reach.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, try_http_get};

/// A child server with a log file; killed on drop, also when a test panics.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    fn spawn(mut cmd: Command, addr: SocketAddr, log: PathBuf, what: &str) -> Server {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({e}): bash .ci/run installs it"));
        Server { child, addr, log }
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits up to `within` for `GET /-/ready` to answer 200 (both servers have it); panics
    /// with the log tail.
    pub async fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}):\n{}", self.addr, self.log_tail());
            }
            if let Ok((200, _)) = try_http_get(self.addr, "/-/ready").await {
                println!("{} ready after {:?}", self.addr, start.elapsed());
                return;
            }
            assert!(
                start.elapsed() < within,
                "{} not ready within {within:?}:\n{}",
                self.addr,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `prometheus --config.file=<dir>/prometheus.yml` on a free loopback port, its data in `dir`.
pub fn start_prometheus(dir: &Path) -> Server {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new("/usr/bin/prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={addr}"));
    Server::spawn(cmd, addr, dir.join("prometheus.log"), "/usr/bin/prometheus")
}

/// The shipped alert rules with every `for:` cut to `for_`, then `replace`'s (from, to) pairs
/// applied; panics unless `alert` is among them and every `from` is found.
pub fn rules_for_tests(alert: &str, for_: &str, replace: &[(&str, &str)]) -> String {
    let mut rules: String = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus/acestream-agent.rules.yml"
    ))
    .expect("the shipped rules")
    .lines()
    .map(|l| match l.trim_start().strip_prefix("for: ") {
        Some(_) => format!("{}for: {for_}\n", &l[..l.len() - l.trim_start().len()]),
        None => format!("{l}\n"),
    })
    .collect();
    assert!(
        rules.contains(&format!("- alert: {alert}\n")),
        "no alert {alert} in the shipped rules"
    );
    for (from, to) in replace {
        assert!(rules.contains(from), "{from:?} not in the shipped rules");
        rules = rules.replace(from, to);
    }
    rules
}

/// A Prometheus in `dir` scraping `targets` (job `acestream-agent`) and evaluating `rules`,
/// both every second; ready when returned.
pub async fn start_with_rules(dir: &Path, targets: &[SocketAddr], rules: &str) -> Server {
    std::fs::write(dir.join("acestream-agent.rules.yml"), rules).expect("write the rules");
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - acestream-agent.rules.yml\nscrape_configs:\n  - job_name: acestream-agent\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("write prometheus.yml");
    let mut prom = start_prometheus(dir);
    prom.wait_ready(Duration::from_secs(30)).await;
    prom
}

/// Waits (up to `within`) until `alert` is firing; its firing series (`ALERTS{...}`).
pub async fn wait_firing(prom: SocketAddr, alert: &str, within: Duration) -> Vec<Value> {
    let q = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}");
    let q = &q;
    super::eventually(within, &format!("{alert} firing"), || async move {
        let r = query(prom, q).await?;
        (!r.is_empty()).then_some(r.clone()).ok_or(format!("{r:?}"))
    })
    .await
}

/// `prometheus-alertmanager --config.file=<dir>/alertmanager.yml` on a free loopback port, no
/// cluster (its gossip port would collide with a system Alertmanager's 9094).
pub fn start_alertmanager(dir: &Path) -> Server {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new("/usr/bin/prometheus-alertmanager");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("alertmanager.yml").display()
    ))
    .arg(format!("--storage.path={}", dir.join("am-data").display()))
    .arg(format!("--web.listen-address={addr}"))
    .arg("--cluster.listen-address=");
    Server::spawn(
        cmd,
        addr,
        dir.join("alertmanager.log"),
        "/usr/bin/prometheus-alertmanager",
    )
}

/// Percent-encodes everything but unreserved characters: a PromQL query in a URL.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's vector result (`[{metric, value: [t, "v"]}]`), `Err` with Prometheus'
/// error otherwise.
pub async fn query(prom: SocketAddr, q: &str) -> Result<Vec<Value>, String> {
    let (status, body) =
        try_http_get(prom, &format!("/api/v1/query?query={}", urlencode(q))).await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(format!("not a vector: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Whether Prometheus has evaluated every rule group at or after `t` (by `/api/v1/rules`'
/// `lastEvaluation`): a window counted in its own evaluations rather than slept.
pub async fn rules_evaluated_since(
    prom: SocketAddr,
    t: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let (status, body) = try_http_get(prom, "/api/v1/rules").await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        return Err("no rule groups".into());
    }
    for g in &groups {
        let last: chrono::DateTime<chrono::Utc> = g["lastEvaluation"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("group {} not evaluated yet", g["name"]))?;
        if last < t {
            return Err(format!("group {} last evaluated at {last}", g["name"]));
        }
    }
    Ok(())
}

/// `GET /api/v1/label/<label>/values?match[]=<selector>`, sorted: what Grafana's
/// `label_values(<selector>, <label>)` variable lists.
pub async fn label_values(
    prom: SocketAddr,
    label: &str,
    selector: &str,
) -> Result<Vec<String>, String> {
    let path = format!(
        "/api/v1/label/{label}/values?match[]={}",
        urlencode(selector)
    );
    let (status, body) = try_http_get(prom, &path).await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 {
        return Err(body);
    }
    let mut out: Vec<String> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

/// The value of a sample as `f64` (NaN if it is not one).
pub fn value(s: &Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One notification as Alertmanager's webhook sent it: the path it was sent to (the receiver)
/// and its JSON body (`status`, `alerts[]` with `labels`, `annotations`, `status`).
#[derive(Clone, Debug)]
pub struct Notification {
    pub path: String,
    pub body: Value,
}

/// A webhook receiver on a free loopback port: answers 200 to every POST and keeps what came.
pub struct Webhook {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Notification>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let addr = listener.local_addr().expect("its address");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let _ = serve_one(conn, sink).await;
                });
            }
        });
        Webhook { addr, got, task }
    }

    /// Every notification so far.
    pub fn all(&self) -> Vec<Notification> {
        self.got.lock().expect("webhook state").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut conn: tokio::net::TcpStream,
    sink: Arc<Mutex<Vec<Notification>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Alertmanager keeps connections alive: requests are read one after another.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + len])
            .unwrap_or_else(|e| Value::String(format!("not JSON: {e}")));
        sink.lock()
            .expect("webhook state")
            .push(Notification { path, body });
        buf.drain(..head_end + len);
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
}
