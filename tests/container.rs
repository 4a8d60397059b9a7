//! The agent as a container (packaging/docker, packaging/compose): the image built by
//! `packaging/docker/build.sh` from this checkout, run with the shipped compose file (Debian's
//! docker-compose 1.29; `docker compose` where present) beside two engines. It finds them (and
//! never itself, though its image matches the globs it is given), advertises Docker's name for
//! the host, cleans from the host through `pid: host` (no `exec_create` in `docker events`),
//! reports healthy, stops cleanly on `docker stop` and keeps its history on the volume; without
//! `pid: host` it falls back to `docker exec`, says so once, and `GET /agent` tells which.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "container-test-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    stdout(&run(Command::new("docker").args(args)))
}

/// A compose project of the shipped compose file and an override that points it at the
/// test's image, port, token and engines; `docker-compose down -v` on drop.
struct Project {
    name: String,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    case: String,
}

fn compose() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

impl Project {
    /// `pid_host`: as shipped; false drops `pid: host` (a Swarm service, a cautious operator).
    fn up(prefix: &str, pid_host: bool) -> Project {
        let image = agent_image();
        let engine = fake_engine_image();
        let case = unique_name(prefix);
        let name = case
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
            .to_lowercase();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let labels = format!(
            "      - \"{TEST_LABEL}={}\"\n      - \"{TEST_CREATED_LABEL}={}\"\n      - \"{CASE_LABEL}={case}\"\n",
            run_id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        // Compose merges the override into the shipped file; `pid` cannot be unset by an
        // override, so the no-pid run writes the shipped file without it.
        let base = std::fs::read_to_string(repo().join("packaging/compose/compose.yml")).unwrap();
        // An override adds to `ports` rather than replacing it: the test's own port (the
        // shipped 9477 may be taken) is written into the copy.
        let base = base.replace("\"9477:9477\"", &format!("\"127.0.0.1:{port}:9477\""));
        let base = if pid_host {
            base
        } else {
            let cut: String = base
                .lines()
                .filter(|l| l.trim() != "pid: host")
                .map(|l| format!("{l}\n"))
                .collect();
            assert_ne!(cut, base, "the shipped compose file has `pid: host`");
            cut
        };
        std::fs::write(dir.path().join("compose.yml"), base).unwrap();
        let override_file = format!(
            r#"version: "2.4"
services:
  acestream-agent:
    image: {image}
    labels:
{labels}    environment:
      ACESTREAM_AGENT_HTTP__TOKEN: "{TOKEN}"
      ACESTREAM_AGENT_DISCOVERY__LABELS: "[{CASE_LABEL}={case}]"
      ACESTREAM_AGENT_DISCOVERY__IMAGES: '["{image_glob}"]'
      ACESTREAM_AGENT_CLEANUP__INTERVAL: "off"
      ACESTREAM_AGENT_CLEANUP__IDLE_GRACE: "off"
      ACESTREAM_AGENT_PRESSURE__MIN_FREE: "off"
      ACESTREAM_AGENT_ACTIVITY__INTERVAL: "500ms"
  engine-a:
    image: {engine}
    labels:
{labels}  engine-b:
    image: {engine}
    labels:
{labels}"#,
            image_glob = image.split(':').next().unwrap().to_string() + ":*",
        );
        std::fs::write(dir.path().join("compose.test.yml"), override_file).unwrap();
        let p = Project {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            case,
        };
        p.compose(&["up", "-d"]);
        p
    }

    fn compose(&self, args: &[&str]) -> String {
        let c = compose();
        let mut cmd = Command::new(&c[0]);
        cmd.args(&c[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.dir.path().join("compose.yml"))
            .arg("-f")
            .arg(self.dir.path().join("compose.test.yml"))
            .args(args);
        stdout(&run(&mut cmd))
    }

    /// The container id of a service.
    fn id(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        assert_eq!(id.len(), 64, "{service}: {id:?}");
        id
    }

    async fn wait_ready(&self) {
        eventually(WAIT, "the agent answering /readyz", || async {
            let (status, body) = try_http_get(self.addr, "/readyz").await?;
            (status == 200).then_some(()).ok_or(body)
        })
        .await;
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = http_get_json(self.addr, path).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn cleanup(&self, id: &str) -> Value {
        let auth = format!("Bearer {TOKEN}");
        let (status, body) = http_post(
            self.addr,
            &format!("/engines/{id}/cleanup"),
            "",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn logs(&self) -> String {
        let c = compose();
        let out = Command::new(&c[0])
            .args(&c[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.dir.path().join("compose.yml"))
            .arg("-f")
            .arg(self.dir.path().join("compose.test.yml"))
            .args(["logs", "--no-color", "acestream-agent"])
            .output()
            .expect("compose logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let c = compose();
        let _ = Command::new(&c[0])
            .args(&c[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.dir.path().join("compose.yml"))
            .arg("-f")
            .arg(self.dir.path().join("compose.test.yml"))
            .args(["down", "-v", "-t", "2"])
            .output();
    }
}

fn write_cache(id: &str, bytes: u64) {
    docker(&[
        "exec",
        id,
        "/usr/bin/busybox",
        "sh",
        "-c",
        &format!("head -c {bytes} /dev/urandom > {DEFAULT_CACHE_DIR}/live.1"),
    ]);
}

async fn wait_engines(p: &Project, ids: &[&str]) -> Vec<Value> {
    eventually(WAIT, "both engines listed and healthy", || async {
        let (_, body) = try_http_get(p.addr, "/engines").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let list = v.as_array().cloned().unwrap_or_default();
        let ok = list.len() == ids.len()
            && ids.iter().all(|id| {
                list.iter()
                    .any(|e| e["container_id"] == *id && e["health_status"] == "healthy")
            });
        ok.then_some(list).ok_or(body)
    })
    .await
}

#[test]
fn the_image_is_small_labelled_and_has_a_healthcheck() {
    let image = agent_image();
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", image])
        .parse()
        .unwrap();
    println!("{image}: {size} bytes");
    assert!(size <= 20 * 1024 * 1024, "{size} bytes");
    let labels: Value = serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Labels}}",
        image,
    ]))
    .unwrap();
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "MIT");
    assert!(labels["org.opencontainers.image.source"].is_string());
    let hc = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        image,
    ]);
    assert_eq!(hc, r#"["CMD","/usr/bin/acestream-agent","healthcheck"]"#);
    // Nothing but the binary: no shell to run anything else with.
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a shell in the image");
    let version = docker(&["run", "--rm", image, "--version"]);
    assert_eq!(
        version,
        format!("acestream-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_compose_runs_it_the_agent_cleans_from_the_host_stops_cleanly_and_keeps_its_history() {
    let p = Project::up("ctr-compose", true);
    let (a, b, agent) = (p.id("engine-a"), p.id("engine-b"), p.id("acestream-agent"));
    p.wait_ready().await;
    let list = wait_engines(&p, &[&a, &b]).await;
    assert!(
        list.iter().all(|e| e["container_id"] != agent.as_str()),
        "the agent took itself for an engine: {list:?}"
    );
    let docker_name = docker(&["info", "-f", "{{.Name}}"]);
    let info = p.get("/agent").await;
    assert_eq!(info["in_container"], true, "{info}");
    assert_eq!(info["container_id"], agent.as_str(), "{info}");
    assert_eq!(info["advertise_host"], docker_name.as_str(), "{info}");
    assert_eq!(info["docker"]["up"], true, "{info}");
    assert!(info["docker"]["version"].is_string(), "{info}");

    // A cleanup from the host: no exec in either engine.
    write_cache(&a, 200_000);
    let since = unix_time();
    let record = p.cleanup(&a).await;
    assert!(record["freed_bytes"].as_u64() >= Some(200_000), "{record}");
    let until = unix_time() + 0.5;
    eventually(WAIT, "a connection probe after the cleanup", || async {
        let i = p.get("/agent").await;
        (i["connection_probe"]["host"].as_u64() > Some(0)).then_some(())
    })
    .await;
    let execs = exec_creates(&p.case, since, until);
    assert_eq!(
        execs,
        Vec::<(String, String)>::new(),
        "execs during the cleanup"
    );
    let info = p.get("/agent").await;
    assert_eq!(info["cache_access"]["in_use"], "host", "{info}");
    assert_eq!(info["connection_probe"]["in_use"], "host", "{info}");

    // HEALTHCHECK: healthy.
    eventually(WAIT, "docker's health status healthy", || async {
        let s = docker(&["inspect", "-f", "{{.State.Health.Status}}", &agent]);
        (s == "healthy").then_some(()).ok_or(s)
    })
    .await;

    // docker stop: SIGTERM, exit 0 well within the grace time, the store closed.
    let t0 = Instant::now();
    p.compose(&["stop", "acestream-agent"]);
    let took = t0.elapsed();
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &agent]);
    println!("docker stop took {took:?}, exit code {code}");
    assert_eq!(code, "0", "{}", p.logs());
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(p.logs().contains("acestream-agent stopped"));

    // Started again on the same volume: the history is there.
    p.compose(&["start", "acestream-agent"]);
    p.wait_ready().await;
    wait_engines(&p, &[&a, &b]).await;
    let history = p.get(&format!("/engines/{a}/cleanups")).await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0]["started_at"], record["started_at"]);
    let e = p.get(&format!("/engines/{a}")).await;
    assert_eq!(e["cleanups_total"], 1, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pid_host_the_agent_works_through_exec_and_says_so() {
    let p = Project::up("ctr-nopid", false);
    let (a, b) = (p.id("engine-a"), p.id("engine-b"));
    p.wait_ready().await;
    wait_engines(&p, &[&a, &b]).await;
    write_cache(&b, 150_000);
    let since = unix_time();
    let record = p.cleanup(&b).await;
    assert!(record["freed_bytes"].as_u64() >= Some(150_000), "{record}");
    let until = unix_time() + 0.5;
    let execs = exec_creates(&p.case, since, until);
    assert!(
        execs.iter().any(|(id, _)| id == &b),
        "the cleanup ran through exec: {execs:?}"
    );
    let info = p.get("/agent").await;
    assert_eq!(info["cache_access"]["in_use"], "exec", "{info}");
    assert_eq!(info["connection_probe"]["in_use"], "exec", "{info}");
    let logs = p.logs();
    let said = lines_with(&logs, "Cannot reach this engine's cache from the host");
    assert_eq!(said.len(), 1, "said once:\n{logs}");
    assert!(said[0].contains(&b[..12]), "{}", said[0]);
}

/// The shipped compose files are valid for the compose at hand, and the Prometheus configs
/// beside them (compose and Swarm) pass `promtool check config` with the shipped rules.
#[test]
fn the_shipped_compose_and_prometheus_files_are_valid() {
    let c = compose();
    let dir = repo().join("packaging/compose");
    run(Command::new(&c[0]).args(&c[1..]).args([
        "-f",
        dir.join("compose.yml").to_str().unwrap(),
        "-f",
        dir.join("compose.prometheus.yml").to_str().unwrap(),
        "config",
        "-q",
    ]));
    for config in [
        "packaging/compose/prometheus.yml",
        "packaging/swarm/prometheus.yml",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(repo().join(config), tmp.path().join("prometheus.yml")).unwrap();
        std::fs::copy(
            repo().join("config/prometheus/acestream-agent.rules.yml"),
            tmp.path().join("acestream-agent.rules.yml"),
        )
        .unwrap();
        let out = run(Command::new("promtool").args([
            "check",
            "config",
            tmp.path().join("prometheus.yml").to_str().unwrap(),
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("SUCCESS: 1 rule files found"),
            "{config}: {text}"
        );
    }
    // The stack file, as `docker stack deploy` reads it (the compose parser of the CLI).
    let stack = std::fs::read_to_string(repo().join("packaging/swarm/stack.yml")).unwrap();
    for needed in [
        "mode: global",
        "mode: host",
        "published: 9477",
        "/var/run/docker.sock",
    ] {
        assert!(stack.contains(needed), "stack.yml lacks {needed:?}");
    }
}
