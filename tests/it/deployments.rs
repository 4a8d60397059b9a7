//! The shapes engines are really deployed in (docs/deployments.md), each against real containers:
//! host networking, another container's network namespace (a VPN container), a user-defined
//! network. In each, `/engines` must name an address a client on this host can dial, the
//! health check must reach the engine, and streams must be told apart by port when engines
//! share one network namespace.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// The agent's `discovery.advertise_host` by default: this machine's hostname.
fn advertised() -> String {
    acestream_agent::config::hostname()
}

fn streams(v: &Value) -> Vec<String> {
    v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `stream_started` as a proxy sends it, naming the engine only by `host:port`; must be 200.
/// The stream record.
async fn started_by_address(case: &Case, host: &str, port: u16) -> Value {
    let body = serde_json::json!({
        "engine": {"host": host, "port": port},
        "stream": {"key_type": "content_id", "key": host},
        "session": {"playback_session_id": "s", "stat_url": "http://x/ace/stat/a/s",
                    "command_url": "http://x/cmd", "is_live": 1}
    });
    let (status, rec) = http_post(
        case.agent.addr,
        "/events/stream_started",
        &body.to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{rec}");
    serde_json::from_str(&rec).unwrap()
}

/// A client on the engine's HTTP port, reading its stream.
fn viewer(addr: SocketAddr) -> StreamClient {
    StreamClient::connect(addr, "field")
}

async fn reading(client: &StreamClient) {
    eventually(WAIT, "the viewer reading", || async {
        (client.bytes_read() > 0).then_some(())
    })
    .await;
}

/// An engine that is idle now and stays so across `probes` connection probes (the agent's
/// own health checks included), as a client of another engine in the same namespace must
/// never make it look busy.
async fn stays_idle(case: &Case, key: &str, probes: u32) {
    for _ in 0..probes {
        let v = case.engine_json(key).await;
        assert_eq!(streams(&v), Vec::<String>::new(), "{key} looked busy: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--network host` with only `acestream.http_port` labelled (3 of 22 public setups): the
/// endpoint is `advertise_host` and the engine port, health is checked on loopback, and of two
/// engines in the host's namespace only the one a client is connected to is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_engines_are_the_advertised_host_told_apart_by_port() {
    let (name, dir, cfg) = new_case("field-host");
    let ports = [free_port(), free_port()];
    let engines: Vec<TestEngine> = ports
        .iter()
        .map(|p| {
            TestEngine::builder()
                .name_prefix("field-host")
                .label(CASE_LABEL, &name)
                .label("acestream.http_port", &p.to_string())
                .publish(false)
                .docker_arg("--network")
                .docker_arg("host")
                .args(&["--http-port", &p.to_string()])
                .start()
        })
        .collect();
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let case = Case::start(dir, cfg).await;
    for (i, e) in engines.iter().enumerate() {
        let v = case
            .wait_engine(&e.id, WAIT, "healthy on loopback", |v| {
                v["health_status"] == "healthy"
            })
            .await;
        assert_eq!(v["host"], advertised().as_str(), "{v}");
        assert_eq!(v["port"], ports[i], "{v}");
    }
    // The health checks themselves: no stream on either.
    stays_idle(&case, &engines[0].id, 6).await;
    stays_idle(&case, &engines[1].id, 1).await;

    let client = viewer(addr(0));
    reading(&client).await;
    let busy = case
        .wait_engine(&engines[0].id, WAIT, "the client's stream", |v| {
            streams(v).len() == 1
        })
        .await;
    assert!(streams(&busy)[0].starts_with("conn:127.0.0.1:"), "{busy}");
    stays_idle(&case, &engines[1].id, 6).await;

    // The busy one is never cleaned; the idle neighbour is.
    engines[0].write_cache_file("a.chunk", 100_000);
    engines[1].write_cache_file("b.chunk", 100_000);
    let (status, body) = http_post(
        case.agent.addr,
        &format!("/engines/{}/cleanup", engines[0].id),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = http_post(
        case.agent.addr,
        &format!("/engines/{}/cleanup", engines[1].id),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(engines[1].list_cache().is_empty());
    assert!(engines[0].list_cache().contains(&"a.chunk".to_string()));

    // A proxy on this host names the engine by localhost and its port.
    let rec = started_by_address(&case, "localhost", ports[1]).await;
    assert_eq!(rec["container_id"], engines[1].id.as_str());
    drop(client);
    case.agent.stop().await;
}

/// Engines in another container's network namespace (`--network container:<vpn>`, compose
/// `network_mode: service:gluetun`): the endpoint is the namespace owner's published port for
/// each engine's port, the health check goes to the owner's IP, a client of one engine is not
/// a stream of the other, and an owner that restarts (new published ports) or stops is
/// followed like any Docker event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_behind_a_vpn_container_take_its_address_and_follow_it() {
    let (name, dir, cfg) = new_case("field-vpn");
    // The namespace owner: not an engine, publishing both engines' ports, as gluetun does.
    let owner = TestEngine::builder()
        .name_prefix("field-vpn-owner")
        .without_label(ENGINE_LABEL)
        .docker_arg("-p")
        .docker_arg("127.0.0.1::6879")
        .docker_arg("--entrypoint")
        .docker_arg("/bin/sh")
        .args(&["-c", "trap 'exit 0' TERM; sleep 100000 & wait"])
        .start();
    let published = |port: u16| -> u16 {
        let out = docker_cli(&["port", &owner.id, &format!("{port}/tcp")]);
        out.lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published port for {port}: {out:?}"))
    };
    let ns = format!("container:{}", owner.id);
    let engine = |port: u16| {
        TestEngine::builder()
            .name_prefix("field-vpn")
            .label(CASE_LABEL, &name)
            .label("acestream.http_port", &port.to_string())
            .publish(false)
            .docker_arg("--network")
            .docker_arg(&ns)
            .args(&["--http-port", &port.to_string()])
            .start()
    };
    let engines = [engine(6878), engine(6879)];
    let case = Case::start(dir, cfg).await;
    for (e, port) in engines.iter().zip([6878, 6879]) {
        let v = case
            .wait_engine(&e.id, WAIT, "healthy through the owner's IP", |v| {
                v["health_status"] == "healthy"
            })
            .await;
        assert_eq!(v["host"], advertised().as_str(), "{v}");
        assert_eq!(v["port"], published(port), "{v}");
    }

    let client = viewer(SocketAddr::from(([127, 0, 0, 1], published(6878))));
    reading(&client).await;
    case.wait_engine(&engines[0].id, WAIT, "the client's stream", |v| {
        streams(v).len() == 1
    })
    .await;
    stays_idle(&case, &engines[1].id, 6).await;
    drop(client);

    // The owner restarts: new published ports, and the engines stay in the namespace they
    // were started in, which nothing reaches any more (Docker does not move them).
    let before = published(6878);
    docker_cli(&["restart", "-t", "1", &owner.id]);
    let after = published(6878);
    let v = case
        .wait_engine(&engines[0].id, WAIT, "the owner's new port", |v| {
            v["port"] == after
        })
        .await;
    assert_eq!(v["host"], advertised().as_str(), "{v}");
    println!("owner restarted: port {before} -> {after}");
    case.wait_engine(
        &engines[0].id,
        WAIT,
        "unhealthy in the old namespace",
        |v| v["health_status"] == "unhealthy",
    )
    .await;

    // The owner stops: no address of its own left, never a bare name.
    docker_cli(&["stop", "-t", "1", &owner.id]);
    let v = case
        .wait_engine(&engines[1].id, WAIT, "the owner gone", |v| {
            v["port"] == 6879
        })
        .await;
    assert_eq!(v["host"], advertised().as_str(), "{v}");
    case.agent.stop().await;
}

/// A user-defined network without published ports (the acexy compose file): the engine is its
/// IP on that network and the engine port, and a proxy on that network names it by its alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_a_user_defined_network_is_its_ip_and_alias() {
    let (name, dir, cfg) = new_case("field-net");
    let net = unique_name("field-net");
    docker_cli(&[
        "network",
        "create",
        "--label",
        &format!("{TEST_LABEL}={}", run_id()),
        &net,
    ]);
    struct Net(String);
    impl Drop for Net {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["network", "rm", &self.0])
                .output();
        }
    }
    let _net = Net(net.clone());
    let engine = TestEngine::builder()
        .name_prefix("field-net")
        .label(CASE_LABEL, &name)
        .publish(false)
        .docker_arg("--network")
        .docker_arg(&net)
        .docker_arg("--network-alias")
        .docker_arg("acestream")
        .start();
    let case = Case::start(dir, cfg).await;
    let ip = docker_cli(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &engine.id,
    ]);
    let v = case
        .wait_engine(&engine.id, WAIT, "healthy at its IP", |v| {
            v["health_status"] == "healthy"
        })
        .await;
    assert_eq!(
        (v["host"].as_str(), v["port"].as_u64()),
        (Some(ip.as_str()), Some(6878)),
        "{v}"
    );
    let rec = started_by_address(&case, "acestream", 6878).await;
    assert_eq!(rec["container_id"], engine.id.as_str());
    drop(engine);
    case.agent.stop().await;
}
