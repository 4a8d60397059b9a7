//! The agent as a Swarm global service (packaging/swarm): a second Docker daemon, private to
//! this test, in a network namespace of its own (a real second host has its own network), made
//! a one-node swarm; the shipped stack deployed on it; its agent task, on the host's network,
//! serves `/engines` with the node's engines healthy (the daemon isolates its networks from
//! each other as on a real host: from the stack's own overlay they were unreachable), reading
//! them through `docker exec` (a Swarm service has no `pid: host`), and a real Prometheus with
//! the shipped `dockerswarm_sd_configs` finds the node's agent and scrapes it. The system
//! daemon is never made a swarm node; the private one is torn down whatever happens.

use crate::common;

use std::net::SocketAddr;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "swarm-test-token";

/// A Prometheus for the test (`common::prom`, killed on drop) and the directory of its config.
struct Prometheus {
    server: common::prom::Server,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// The shipped swarm scrape config, pointed at `docker_host`, refreshed and scraped every
    /// second or two instead of 30 s and 15 s.
    fn start(docker_host: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/swarm/prometheus.yml"
        ))
        .unwrap();
        let config = shipped
            .replace(
                "host: unix:///var/run/docker.sock",
                &format!("host: {docker_host}"),
            )
            .replace("refresh_interval: 30s", "refresh_interval: 2s")
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        assert_ne!(config, shipped);
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/prometheus/acestream-agent.rules.yml"
            ),
            dir.path().join("acestream-agent.rules.yml"),
        )
        .unwrap();
        Prometheus {
            server: common::prom::start_prometheus(dir.path()),
            _dir: dir,
        }
    }

    async fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        common::prom::query(self.server.addr, q).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_service_runs_an_agent_per_node_and_prometheus_finds_it() {
    let image = agent_image();
    let engine_image = fake_engine_image();
    let mut host = PrivateHost::start();
    host.load(&[image, &engine_image]);
    host.swarm_init();
    let node_name = host.run(&["info", "-f", "{{.Name}}"]);
    let engines: Vec<String> = (0..2)
        .map(|_| {
            host.run(&[
                "run",
                "-d",
                "--label",
                "acestream.engine=true",
                &engine_image,
            ])
        })
        .collect();

    // The shipped stack, on this node's socket (a real node's is /var/run/docker.sock), with
    // the test's image and a token for the cleanup below.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/swarm/stack.yml"
    ))
    .unwrap();
    let stack = shipped
        .replace(
            "source: /var/run/docker.sock",
            &format!("source: {}", host.socket().display()),
        )
        .replace("image: acestream-agent:latest", &format!("image: {image}"))
        .replace(
            "# ACESTREAM_AGENT_HTTP__TOKEN: \"change-me\"",
            &format!("ACESTREAM_AGENT_HTTP__TOKEN: \"{TOKEN}\""),
        );
    assert!(stack.contains(TOKEN) && stack.contains(image));
    let stack_file = host.dir().join("stack.yml");
    std::fs::write(&stack_file, stack).unwrap();
    host.run(&[
        "stack",
        "deploy",
        "-c",
        stack_file.to_str().unwrap(),
        "acestream",
    ]);

    // The node's agent, on the node's own address (the host's network).
    let agent = SocketAddr::from((host.addr, 9477));
    let list = eventually(
        WAIT,
        "the node's engines in the agent task's /engines",
        || async {
            let (status, body) = try_http_get(agent, "/engines").await?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let list = v.as_array().cloned().unwrap_or_default();
            let ok = status == 200
                && list.len() == 2
                && engines.iter().all(|id| {
                    list.iter().any(|e| {
                        e["container_id"] == id.as_str() && e["health_status"] == "healthy"
                    })
                });
            ok.then_some(list).ok_or(body)
        },
    )
    .await;
    // Unpublished, on the node's default bridge: each engine is its IP there.
    for id in &engines {
        let ip = host.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", id]);
        let e = list
            .iter()
            .find(|e| e["container_id"] == id.as_str())
            .unwrap();
        assert_eq!(e["host"], ip.as_str(), "{e}");
    }
    let info = eventually(WAIT, "a connection probe through exec", || async {
        let (_, body) = try_http_get(agent, "/agent").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (v["connection_probe"]["exec"].as_u64() > Some(0))
            .then_some(v.clone())
            .ok_or(body)
    })
    .await;
    assert_eq!(info["in_container"], true, "{info}");
    assert_eq!(info["network_mode"], "host", "{info}");
    assert_eq!(info["advertise_host"], node_name.as_str(), "{info}");
    assert_eq!(info["connection_probe"]["in_use"], "exec", "{info}");

    // A cleanup through exec (no pid: host in a Swarm service).
    host.run(&[
        "exec",
        &engines[0],
        "/usr/bin/busybox",
        "sh",
        "-c",
        &format!("head -c 120000 /dev/urandom > {DEFAULT_CACHE_DIR}/live.1"),
    ]);
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_post(
        agent,
        &format!("/engines/{}/cleanup", engines[0]),
        "",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let record: Value = serde_json::from_str(&body).unwrap();
    assert!(record["freed_bytes"].as_u64() >= Some(120_000), "{record}");
    let (_, body) = try_http_get(agent, "/agent").await.unwrap();
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["cache_access"]["in_use"], "exec", "{info}");

    // Prometheus with the shipped dockerswarm_sd config finds the task and scrapes it.
    let prom = Prometheus::start(&host.docker_host);
    let up = eventually(WAIT, "up == 1 for the node's agent", || async {
        let r = prom.query("up{job=\"acestream-agent\"}").await?;
        match r.as_slice() {
            [s] if s["value"][1] == "1" => Ok(s.clone()),
            _ => Err(format!("{r:?}")),
        }
    })
    .await;
    assert_eq!(up["metric"]["instance"], node_name.as_str(), "{up}");
    let engines_seen = eventually(WAIT, "the agent's engines in Prometheus", || async {
        let r = prom
            .query("acestream_agent_engines{job=\"acestream-agent\"}")
            .await?;
        match r.as_slice() {
            [s] => Ok(s["value"][1].as_str().unwrap_or("").to_string()),
            _ => Err(format!("{r:?}")),
        }
    })
    .await;
    assert_eq!(engines_seen, "2");
    drop(prom);
}
