//! The agent as a container (packaging/docker, packaging/compose): the image built by
//! `packaging/docker/build.sh` from this checkout, run with the shipped compose file (Debian's
//! docker-compose 1.29; `docker compose` where present) beside two engines. It finds them (and
//! never itself, though its image matches the globs it is given), advertises Docker's name for
//! the host, cleans from the host through `pid: host` (no `exec_create` in `docker events`),
//! reports healthy, stops cleanly on `docker stop` and keeps its history on the volume; without
//! `pid: host` it falls back to `docker exec`, says so once, and `GET /agent` tells which.
//! On the host's network, as shipped, it reaches engines wherever they run on the host (the
//! default bridge, another project's network, the host's network); on a network of its own it
//! says once which network mode it needs.

use crate::common;

use std::collections::HashMap;
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

/// A compose project in a directory of its own: `docker-compose -p NAME -f FILE…`, taken
/// down with its volumes on drop, also when the test panics.
struct Compose {
    name: String,
    dir: tempfile::TempDir,
    files: Vec<&'static str>,
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

/// The labels every container of a test carries: the run (the harness's sweep of leftovers)
/// and the case (what the case's agent discovers, and `exec_creates` filters on).
fn test_labels(case: &str) -> String {
    format!(
        "      - \"{TEST_LABEL}={}\"\n      - \"{TEST_CREATED_LABEL}={}\"\n      - \"{CASE_LABEL}={case}\"\n",
        run_id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    )
}

impl Compose {
    /// `files`: (name, text), in the order compose merges them.
    fn new(case: &str, files: &[(&'static str, String)]) -> Compose {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        Compose {
            name: case
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
                .to_lowercase(),
            dir,
            files: files.iter().map(|(f, _)| *f).collect(),
        }
    }

    fn command(&self) -> Command {
        let c = compose();
        let mut cmd = Command::new(&c[0]);
        cmd.args(&c[1..]).arg("-p").arg(&self.name);
        for f in &self.files {
            cmd.arg("-f").arg(self.dir.path().join(f));
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        stdout(&run(self.command().args(args)))
    }

    /// The container id of a service.
    fn id(&self, service: &str) -> String {
        let id = self.run(&["ps", "-q", service]);
        assert_eq!(id.len(), 64, "{service}: {id:?}");
        id
    }

    fn logs(&self, service: &str) -> String {
        let out = self
            .command()
            .args(["logs", "--no-color", service])
            .output()
            .expect("compose logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command().args(["down", "-v", "-t", "2"]).output();
    }
}

/// How a test runs the shipped compose file.
#[derive(Clone, Copy)]
struct Shape {
    /// As shipped; false drops `pid: host` (a Swarm service, a cautious operator).
    pid_host: bool,
    /// As shipped (`network_mode: host`); false is the agent on its project's own network,
    /// the file's shape before it ran on the host's network, its port published.
    host_network: bool,
    /// Two engines, `engine-a` and `engine-b`, in the agent's own project.
    engines: bool,
}

const AS_SHIPPED: Shape = Shape {
    pid_host: true,
    host_network: true,
    engines: true,
};

/// The shipped compose file and an override that points it at the test's image, port, token
/// and engines.
struct Project {
    compose: Compose,
    addr: SocketAddr,
    case: String,
}

/// The shipped compose file without the line `line` (an override cannot unset a key).
fn without_line(text: &str, line: &str) -> String {
    let cut: String = text
        .lines()
        .filter(|l| l.trim() != line)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(cut, text, "the shipped compose file has `{line}`");
    cut
}

/// The execs in the case's containers that the agent made: Docker's own runs of the agent
/// image's `HEALTHCHECK` (an exec in the agent's container, every 10 s) are not the agent's.
fn agent_made_execs(case: &str, since: f64, until: f64) -> Vec<(String, String)> {
    exec_creates(case, since, until)
        .into_iter()
        .filter(|(_, action)| !action.ends_with("/usr/bin/acestream-agent healthcheck"))
        .collect()
}

impl Project {
    /// `env`: more of the agent's environment (`KEY: "value"` lines' key and value).
    fn up(prefix: &str, shape: Shape, env: &[(&str, &str)]) -> Project {
        Project::up_for(&unique_name(prefix), shape, env)
    }

    /// For the engines of `case` (labelled `CASE_LABEL=case`), started by the test.
    fn up_for(case: &str, shape: Shape, env: &[(&str, &str)]) -> Project {
        let image = agent_image();
        let engine = fake_engine_image();
        let case = case.to_string();
        let port = free_port();
        let labels = test_labels(&case);
        let mut base =
            std::fs::read_to_string(repo().join("packaging/compose/compose.yml")).unwrap();
        assert!(
            !base.contains("ports:"),
            "on the host's network the agent publishes nothing"
        );
        if !shape.pid_host {
            base = without_line(&base, "pid: host");
        }
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ports = if shape.host_network {
            // On the host's network the agent binds the host's port: the test's own.
            env.push((
                "ACESTREAM_AGENT_HTTP__LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ));
            String::new()
        } else {
            base = without_line(&base, "network_mode: host");
            format!("    ports:\n      - \"127.0.0.1:{port}:9477\"\n")
        };
        let env: String = env
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        let engines = if shape.engines {
            format!(
                "  engine-a:\n    image: {engine}\n    labels:\n{labels}  engine-b:\n    image: {engine}\n    labels:\n{labels}"
            )
        } else {
            String::new()
        };
        let override_file = format!(
            r#"version: "2.4"
services:
  acestream-agent:
    image: {image}
{ports}    labels:
{labels}    environment:
      ACESTREAM_AGENT_HTTP__TOKEN: "{TOKEN}"
      ACESTREAM_AGENT_DISCOVERY__LABELS: "[{CASE_LABEL}={case}]"
      ACESTREAM_AGENT_DISCOVERY__IMAGES: '["{image_glob}"]'
      ACESTREAM_AGENT_CLEANUP__INTERVAL: "off"
      ACESTREAM_AGENT_CLEANUP__IDLE_GRACE: "off"
      ACESTREAM_AGENT_PRESSURE__MIN_FREE: "off"
      ACESTREAM_AGENT_ACTIVITY__INTERVAL: "500ms"
{env}{engines}"#,
            image_glob = image.split(':').next().unwrap().to_string() + ":*",
        );
        let p = Project {
            compose: Compose::new(
                &case,
                &[("compose.yml", base), ("compose.test.yml", override_file)],
            ),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            case,
        };
        p.compose(&["up", "-d"]);
        p
    }

    fn compose(&self, args: &[&str]) -> String {
        self.compose.run(args)
    }

    /// The container id of a service.
    fn id(&self, service: &str) -> String {
        self.compose.id(service)
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
        self.compose.logs("acestream-agent")
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
    let p = Project::up("ctr-compose", AS_SHIPPED, &[]);
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
    assert_eq!(info["network_mode"], "host", "{info}");
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
    let execs = agent_made_execs(&p.case, since, until);
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
    let p = Project::up(
        "ctr-nopid",
        Shape {
            pid_host: false,
            ..AS_SHIPPED
        },
        &[],
    );
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

/// The health interval of the reach tests: short, so "within two intervals" is seconds.
const HEALTH_INTERVAL: Duration = Duration::from_secs(3);

/// The engines of `case` as `/engines` lists them, by container id, read once.
async fn engines_by_id(p: &Project) -> Result<HashMap<String, Value>, String> {
    let (status, body) = try_http_get(p.addr, "/engines").await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 {
        return Err(body);
    }
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e["container_id"].as_str().unwrap_or("").to_string(), e))
        .collect())
}

/// Engines wherever they run on the host (the default bridge with a published port, a
/// network of another compose project with nothing published, the host's network) answer
/// the agent the shipped compose file runs: healthy within two health intervals, cleaned from
/// the host (no exec), and the agent's own probes never taken for streams. On its own project
/// network (the file's earlier shape) Docker's network isolation kept the first two unhealthy,
/// and the third is out of reach of any container not on the host's network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_anywhere_on_the_host_are_healthy_and_cleaned_from_the_host() {
    let case = unique_name("ctr-reach");
    // The default bridge, its port published as the common `docker run -p` line does.
    let bridge = case_engine(&case, "ctr-bridge").start();
    // Another compose project's network, nothing published (acexy's compose file).
    let other = Compose::new(
        &unique_name("ctr-other"),
        &[(
            "compose.yml",
            format!(
                "version: \"2.4\"\nservices:\n  engine:\n    image: {}\n    labels:\n{}",
                fake_engine_image(),
                test_labels(&case)
            ),
        )],
    );
    other.run(&["up", "-d"]);
    let project_engine = other.id("engine");
    // The host's network, on a port of its own.
    let port = free_port().to_string();
    let host = case_engine(&case, "ctr-hostnet")
        .publish(false)
        .docker_arg("--network")
        .docker_arg("host")
        .args(&["--http-port", &port])
        .start();
    let ids = [bridge.id.clone(), project_engine.clone(), host.id.clone()];

    let p = Project::up_for(
        &case,
        Shape {
            engines: false,
            ..AS_SHIPPED
        },
        &[(
            "ACESTREAM_AGENT_HEALTH__INTERVAL",
            &format!("{}s", HEALTH_INTERVAL.as_secs()),
        )],
    );
    p.wait_ready().await;
    let info = p.get("/agent").await;
    assert_eq!(info["network_mode"], "host", "{info}");
    assert_eq!(info["host_network"], true, "{info}");
    // The engines ran before the agent: its first list has them, and each is checked within
    // a second of being listed.
    let healthy = eventually(
        2 * HEALTH_INTERVAL,
        "all three engines healthy within two health intervals",
        || async {
            let list = engines_by_id(&p).await?;
            let ok = ids.iter().all(|id| {
                list.get(id)
                    .is_some_and(|e| e["health_status"] == "healthy")
            });
            ok.then_some(list.clone()).ok_or(format!("{list:?}"))
        },
    )
    .await;
    assert_eq!(healthy[&host.id]["port"], port.parse::<u64>().unwrap());

    // Two more health checks of each, and at every reading meanwhile no engine has a stream:
    // the agent's probe connections are its own, wherever the engine is.
    let first: HashMap<String, Value> = ids
        .iter()
        .map(|id| (id.clone(), healthy[id]["last_health_check"].clone()))
        .collect();
    let checks: std::sync::Mutex<HashMap<String, Vec<Value>>> = Default::default();
    eventually(
        4 * HEALTH_INTERVAL,
        "two more health checks of each engine",
        || async {
            let list = engines_by_id(&p).await?;
            let mut checks = checks.lock().unwrap();
            for id in &ids {
                let e = &list[id];
                assert_eq!(
                    e["streams"],
                    serde_json::json!([]),
                    "a probe taken for a stream: {e}"
                );
                assert_eq!(e["health_status"], "healthy", "{e}");
                let seen = checks.entry(id.clone()).or_default();
                let at = &e["last_health_check"];
                if *at != first[id] && !seen.contains(at) {
                    seen.push(at.clone());
                }
            }
            let done = ids
                .iter()
                .all(|id| checks.get(id).is_some_and(|c| c.len() >= 2));
            done.then_some(()).ok_or(format!("{checks:?}"))
        },
    )
    .await;

    // Each cache cleaned from the host, through the engine's /proc/<pid>/root.
    bridge.write_cache_file("live.1", 100_000);
    write_cache(&project_engine, 110_000);
    host.write_cache_file("live.1", 120_000);
    let since = unix_time();
    for (id, bytes) in ids.iter().zip([100_000u64, 110_000, 120_000]) {
        let record = p.cleanup(id).await;
        assert_eq!(record["success"], true, "{record}");
        assert!(record["freed_bytes"].as_u64() >= Some(bytes), "{record}");
    }
    let until = unix_time() + 0.5;
    assert_eq!(
        agent_made_execs(&case, since, until),
        Vec::<(String, String)>::new(),
        "execs during the cleanups"
    );
    assert!(bridge.list_cache().is_empty(), "{:?}", bridge.list_cache());
    assert!(host.list_cache().is_empty(), "{:?}", host.list_cache());
    let info = p.get("/agent").await;
    assert_eq!(info["cache_access"]["in_use"], "host", "{info}");
    assert_eq!(info["connection_probe"]["in_use"], "host", "{info}");
}

/// The agent on a network of its own (not the host's) beside an engine on the default
/// bridge: Docker's isolation drops its probes. The engine listens in its namespace, so the
/// agent says once, as a warning, that it needs the host's network, instead of a bare
/// "timed out"; `GET /agent` names the network it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_network_of_its_own_the_agent_says_it_needs_the_host_network() {
    let case = unique_name("ctr-isolated");
    let engine = case_engine(&case, "ctr-isolated").start();
    let p = Project::up_for(
        &case,
        Shape {
            host_network: false,
            engines: false,
            ..AS_SHIPPED
        },
        &[
            ("ACESTREAM_AGENT_HEALTH__INTERVAL", "2s"),
            ("ACESTREAM_AGENT_HEALTH__TIMEOUT", "1s"),
        ],
    );
    p.wait_ready().await;
    let info = p.get("/agent").await;
    assert_eq!(
        info["network_mode"],
        format!("{}_default", p.compose.name),
        "{info}"
    );
    assert_eq!(info["host_network"], false, "{info}");
    let needle = "listens on port 6878, but the agent cannot reach it";
    eventually(WAIT, "the warning", || async {
        let logs = p.logs();
        (!lines_with(&logs, needle).is_empty())
            .then_some(())
            .ok_or(logs)
    })
    .await;
    // Three more failed checks: still said once.
    let seen: std::sync::Mutex<Vec<Value>> = Default::default();
    eventually(WAIT, "three more health checks", || async {
        let list = engines_by_id(&p).await?;
        let e = list.get(&engine.id).ok_or(format!("{list:?}"))?;
        assert_eq!(e["health_status"], "unhealthy", "{e}");
        let at = e["last_health_check"].clone();
        let mut seen = seen.lock().unwrap();
        if !seen.contains(&at) {
            seen.push(at);
        }
        (seen.len() > 3).then_some(()).ok_or(format!("{seen:?}"))
    })
    .await;
    let logs = p.logs();
    let said = lines_with(&logs, needle);
    assert_eq!(said.len(), 1, "said once:\n{logs}");
    assert!(said[0].contains("WARN"), "{}", said[0]);
    assert!(said[0].contains(&engine.id[..12]), "{}", said[0]);
    assert!(said[0].contains("network_mode: host"), "{}", said[0]);
    assert!(
        said[0].contains(&format!("on the {}_default network", p.compose.name)),
        "{}",
        said[0]
    );
    let bare = format!("engine {} unhealthy", &engine.id[..12]);
    assert!(lines_with(&logs, &bare).is_empty(), "{logs}");
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
        "    networks:\n      - host\n",
        "  host:\n    name: host\n    external: true\n",
        "/var/run/docker.sock",
    ] {
        assert!(stack.contains(needed), "stack.yml lacks {needed:?}");
    }
    // On the host's network there is no port to publish.
    assert!(!stack.contains("ports:"), "{stack}");
}
