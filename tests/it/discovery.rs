//! Discovery against the real Docker daemon (docs/architecture.md#discovery, the store, `/readyz`,
//! `/metrics`): engines show up and go away within a second of Docker's events, only matching
//! containers count, and a Docker that goes away (or is away from the start) leaves `/engines`
//! answering from memory and the store.
//!
//! Every test restricts discovery to a label value unique to it, because other test processes
//! run engines with the default `acestream.engine=true` label at the same time. The agent runs
//! in-process on a multi-threaded runtime, so the blocking `docker` CLI calls of the harness
//! never stall it.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use acestream_agent::config::Config;
use acestream_agent::Agent;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Label key that ties engines to the one test that started them.
/// What the agent advertises as `host`, distinct from anything Docker reports.
const ADVERTISE_HOST: &str = "agent-under-test.example";
/// A new engine shows in `/engines` within a second (and, by the same events, a gone one leaves
/// it), as README "What it does" says.
const EVENT_BOUND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Agent config that sees only containers labelled `CASE_LABEL=<case>`, with a temp store and
/// no cleanups (discovery is what is under test).
fn config(case: &str, store: &Path) -> Config {
    let mut cfg = case_config(case, store);
    cfg.discovery.advertise_host = ADVERTISE_HOST.to_string();
    cfg.health.timeout = Duration::from_secs(1);
    cfg
}

fn engine(case: &str, prefix: &str) -> TestEngine {
    TestEngine::builder()
        .name_prefix(prefix)
        .label(CASE_LABEL, case)
        .start()
}

async fn engines(agent: &Agent) -> Vec<Value> {
    engines_at(agent.addr).await
}

async fn engines_at(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = http_get_json(addr, "/engines").await;
    assert_eq!(status, 200, "GET /engines: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("/engines is not an array: {body}"))
        .clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["container_id"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Waits until `/engines` is exactly `want` (as a set, each id once); returns the list.
async fn wait_for_engines(agent: &Agent, want: &[&str], within: Duration) -> Vec<Value> {
    let want = sorted(want.iter().map(|s| s.to_string()).collect());
    eventually(within, &format!("/engines to be exactly {want:?}"), || {
        let want = want.clone();
        async move {
            let list = engines(agent).await;
            let got = sorted(ids(&list));
            if got == want {
                Ok(list)
            } else {
                Err(got)
            }
        }
    })
    .await
}

/// Starts polling `/engines` in the background, before the caller changes anything, until
/// `pred` holds; the task returns the wall-clock moment the answer that satisfied it arrived:
/// an upper bound of when the agent's view changed, not delayed by the `docker` CLI call the
/// caller makes meanwhile.
fn watch_engines(
    addr: SocketAddr,
    what: &'static str,
    pred: impl Fn(&[String]) -> bool + Send + Sync + 'static,
) -> tokio::task::JoinHandle<DateTime<Utc>> {
    tokio::spawn(async move {
        let pred = &pred;
        eventually(Duration::from_secs(10), what, || async move {
            let list = engines_at(addr).await;
            let now = Utc::now();
            let got = ids(&list);
            if pred(&got) {
                Ok(now)
            } else {
                Err(got)
            }
        })
        .await
    })
}

async fn metric(agent: &Agent, name: &str) -> Option<String> {
    let (status, body) = http_get(agent.addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics while testing {name}: {body}");
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
}

async fn readyz(agent: &Agent) -> u16 {
    http_get(agent.addr, "/readyz").await.0
}

/// Waits until the agent reports Docker up (metrics and `/readyz`), i.e. discovery has listed
/// Docker and follows its events.
async fn wait_docker_up(agent: &Agent, within: Duration) {
    eventually(
        within,
        "acestream_agent_docker_up 1 and /readyz 200",
        || async {
            let up = metric(agent, "acestream_agent_docker_up").await;
            let ready = readyz(agent).await;
            (up.as_deref() == Some("1") && ready == 200)
                .then_some(())
                .ok_or((up, ready))
        },
    )
    .await;
}

async fn wait_docker_down(agent: &Agent, within: Duration) {
    eventually(
        within,
        "acestream_agent_docker_up 0 and /readyz 503",
        || async {
            let up = metric(agent, "acestream_agent_docker_up").await;
            let ready = readyz(agent).await;
            (up.as_deref() == Some("0") && ready == 503)
                .then_some(())
                .ok_or((up, ready))
        },
    )
    .await;
}

fn unix_secs(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// When Docker emitted `event` (start, die, ...) for container `id`, from Docker's own event
/// log: the moment the container really started or stopped, independent of how long the
/// `docker` CLI call around it took.
fn docker_event_time(id: &str, event: &str, since: SystemTime) -> DateTime<Utc> {
    let since = since - Duration::from_secs(2);
    let out = docker_cli(&[
        "events",
        "--since",
        &unix_secs(since),
        "--until",
        &unix_secs(SystemTime::now()),
        "--filter",
        &format!("container={id}"),
        "--filter",
        &format!("event={event}"),
        "--format",
        "{{.TimeNano}}",
    ]);
    let nanos: i64 = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {event} event for {id} in docker's log: {out:?}"));
    DateTime::from_timestamp_nanos(nanos)
}

fn millis(d: chrono::TimeDelta) -> i64 {
    d.num_milliseconds()
}

// ---------------------------------------------------------------------------------------------
// A unix-socket proxy in front of the Docker socket, with a switch that cuts every connection
// and refuses new ones: Docker "going away" without touching the real daemon.
// ---------------------------------------------------------------------------------------------

struct DockerProxy {
    path: PathBuf,
    up: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl DockerProxy {
    const UPSTREAM: &'static str = "/var/run/docker.sock";

    fn start(dir: &Path) -> DockerProxy {
        let path = dir.join("docker.sock");
        let listener = UnixListener::bind(&path).expect("bind the proxy socket");
        let (up, rx) = watch::channel(true);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*rx.borrow() {
                    // Refused: closed before a byte is read, like a daemon that is gone.
                    drop(client);
                    continue;
                }
                let mut cut = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = UnixStream::connect(Self::UPSTREAM).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                    // Both sockets drop here: the agent sees its connection closed.
                });
            }
        });
        DockerProxy { path, up, accept }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.accept.abort();
    }
}

/// A container the harness builder cannot make (another image, or created but not started);
/// labelled like the harness's own so the leftover sweep knows it, removed on drop.
struct RawContainer {
    id: String,
}

impl RawContainer {
    fn new(verb: &str, name: &str, labels: &[(&str, &str)], image: &str) -> RawContainer {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let mut args: Vec<String> = vec![verb.into()];
        if verb == "run" {
            args.push("-d".into());
        }
        args.extend(["--name".into(), name.into()]);
        args.extend(["-p".into(), format!("127.0.0.1::{ENGINE_PORT}")]);
        let mut all = vec![
            (TEST_LABEL.to_string(), run_id().to_string()),
            (TEST_CREATED_LABEL.to_string(), created),
        ];
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in all {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.push(image.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RawContainer {
            id: docker_cli(&args),
        }
    }
}

impl Drop for RawContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.id])
            .output();
    }
}

/// An extra tag of the fake engine image, removed (untagged) on drop.
struct ImageTag(String);

impl ImageTag {
    fn new(tag: &str) -> ImageTag {
        docker_cli(&["tag", &fake_engine_image(), tag]);
        ImageTag(tag.to_string())
    }
}

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_engine_listed_within_one_second() {
    let case = unique_name("disc-new");
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(&case, &dir.path().join("state.redb"))).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;
    assert_eq!(engines(&agent).await, Vec::<Value>::new());

    let before_run = SystemTime::now();
    let listed = watch_engines(agent.addr, "a new engine in /engines", |ids| {
        !ids.is_empty()
    });
    let e = engine(&case, "disc-new");
    let run_returned = Utc::now();
    let listed_at = listed.await.unwrap();
    assert_eq!(ids(&engines(&agent).await), vec![e.id.clone()]);
    let started_at = docker_event_time(&e.id, "start", before_run);

    let latency = listed_at - started_at;
    println!(
        "new engine listed {} ms after Docker's start event ({} ms after `docker run` was \
         invoked; the harness's start() returned {} ms after the start event)",
        millis(latency),
        millis(listed_at - DateTime::<Utc>::from(before_run)),
        millis(run_returned - started_at)
    );
    assert!(
        latency <= chrono::TimeDelta::from_std(EVENT_BOUND).unwrap(),
        "engine listed {} ms after it started; discovery allows 1 s",
        millis(latency)
    );

    let (status, item) = http_get_json(agent.addr, &format!("/engines/{}", e.id)).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["container_id"], e.id.as_str());
    assert_eq!(item["container_name"], e.name.as_str());
    assert_eq!(
        item["host"], ADVERTISE_HOST,
        "host = discovery.advertise_host"
    );
    assert_eq!(
        item["port"],
        u64::from(e.host_port),
        "port = the host port published for 6878"
    );
    assert_eq!(item["image"], fake_engine_image().as_str());
    let labels = item["labels"].as_object().expect("labels is an object");
    assert_eq!(labels.get(CASE_LABEL), Some(&Value::from(case.as_str())));
    assert_eq!(labels.get(ENGINE_LABEL), Some(&Value::from("true")));
    assert_eq!(labels.get(TEST_LABEL), Some(&Value::from(run_id())));
    let first_seen: DateTime<Utc> = item["first_seen"]
        .as_str()
        .expect("first_seen is a string")
        .parse()
        .expect("first_seen is RFC 3339");
    assert!(
        first_seen >= started_at - chrono::TimeDelta::milliseconds(50) && first_seen <= listed_at,
        "first_seen {first_seen} should lie between the start ({started_at}) and the first \
         listing ({listed_at})"
    );
    assert_eq!(item["streams"], Value::Array(vec![]));

    agent.stop().await;
}

/// Shared body of the two "gone" tests: `go_away` makes one of two engines stop running; it
/// must leave `/engines` within a second of Docker's die event, and the other must stay.
async fn engine_disappears(case: &str, go_away: impl FnOnce(&TestEngine)) {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(case, &dir.path().join("state.redb"))).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;
    let stays = engine(case, "disc-stays");
    let goes = engine(case, "disc-goes");
    wait_for_engines(&agent, &[&stays.id, &goes.id], Duration::from_secs(5)).await;

    let before = SystemTime::now();
    let id = goes.id.clone();
    let gone = watch_engines(agent.addr, "the engine to leave /engines", move |ids| {
        !ids.contains(&id)
    });
    go_away(&goes);
    let gone_at = gone.await.unwrap();
    let died_at = docker_event_time(&goes.id, "die", before);
    let latency = gone_at - died_at;
    println!(
        "engine left /engines {} ms after Docker's die event ({} ms after the docker command \
         was invoked)",
        millis(latency),
        millis(gone_at - DateTime::<Utc>::from(before))
    );
    assert!(
        latency <= chrono::TimeDelta::from_std(EVENT_BOUND).unwrap(),
        "engine still listed {} ms after it died; discovery allows 1 s",
        millis(latency)
    );

    // Only that one went, and the other is untouched.
    let list = wait_for_engines(&agent, &[&stays.id], Duration::from_secs(1)).await;
    assert_eq!(list[0]["container_name"], stays.name.as_str());
    let (status, _) = http_get(agent.addr, &format!("/engines/{}", goes.id)).await;
    assert_eq!(status, 404, "a gone engine is not served by id");
    assert_eq!(
        metric(&agent, "acestream_agent_engines").await.as_deref(),
        Some("1")
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_engine_disappears_within_one_second() {
    let case = unique_name("disc-rm");
    engine_disappears(&case, |e| e.remove()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_engine_disappears_within_one_second() {
    let case = unique_name("disc-stop");
    engine_disappears(&case, |e| e.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_matched_by_image_glob() {
    let case = unique_name("disc-glob");
    // Image names must be lower case; the run id is digits and dashes.
    let tag = ImageTag::new(&format!("agent-glob-{case}:v1"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir.path().join("state.redb"));
    cfg.discovery.labels = vec![];
    cfg.discovery.images = vec![format!("*glob-{case}:*")];
    let agent = start_agent(cfg).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;

    // The same fake engine under its usual name, even carrying the test's case label: the
    // labels list is empty, so only the image name can make a container an engine.
    let same_image_other_name = engine(&case, "disc-glob-plain");
    let by_image = RawContainer::new("run", &unique_name("disc-glob-tagged"), &[], &tag.0);
    let list = wait_for_engines(&agent, &[&by_image.id], Duration::from_secs(5)).await;
    assert_eq!(list[0]["image"], tag.0.as_str());
    assert!(
        list[0]["labels"].get(ENGINE_LABEL).is_none(),
        "matched without any engine label: {}",
        list[0]
    );
    // Not merely late: Docker reports the plain one's start before the tagged one's (its
    // `docker run` returned first), and discovery handles events one at a time, so the plain
    // one was judged before the tagged one was listed.
    assert_eq!(ids(&engines(&agent).await), vec![by_image.id.clone()]);
    drop(same_image_other_name);

    agent.stop().await;
    drop(by_image);
}

/// Addressing (docs/deployments.md#addresses): published port on `advertise_host` (label
/// `host.http_port` over the mapping), else the container's IP and engine port (label
/// `acestream.http_port` over `discovery.engine_port`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_address_follows_port_labels_and_mapping() {
    let case = unique_name("disc-addr");
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(&case, &dir.path().join("state.redb"))).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;

    let unpublished = TestEngine::builder()
        .name_prefix("disc-addr-ip")
        .label(CASE_LABEL, &case)
        .publish(false)
        .start();
    let host_port_label = TestEngine::builder()
        .name_prefix("disc-addr-hostport")
        .label(CASE_LABEL, &case)
        .label("host.http_port", "41234")
        .publish(false)
        .start();
    let published_label_wins = TestEngine::builder()
        .name_prefix("disc-addr-both")
        .label(CASE_LABEL, &case)
        .label("host.http_port", "41235")
        .start();
    let other_port = TestEngine::builder()
        .name_prefix("disc-addr-port")
        .label(CASE_LABEL, &case)
        .label("acestream.http_port", "7000")
        .start();
    let list = wait_for_engines(
        &agent,
        &[
            &unpublished.id,
            &host_port_label.id,
            &published_label_wins.id,
            &other_port.id,
        ],
        Duration::from_secs(5),
    )
    .await;
    let addr_of = |e: &TestEngine| {
        let item = list
            .iter()
            .find(|i| i["container_id"] == e.id.as_str())
            .unwrap();
        (
            item["host"].as_str().unwrap().to_string(),
            item["port"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        addr_of(&unpublished),
        (unpublished.ip().to_string(), u64::from(ENGINE_PORT)),
        "unpublished: container IP and engine port"
    );
    assert_eq!(
        addr_of(&host_port_label),
        (ADVERTISE_HOST.to_string(), 41234),
        "host.http_port label on advertise_host"
    );
    assert_eq!(
        addr_of(&published_label_wins),
        (ADVERTISE_HOST.to_string(), 41235),
        "host.http_port label over the Docker mapping"
    );
    // 6878 is published, but the engine listens on 7000, which is not.
    assert_eq!(
        addr_of(&other_port),
        (other_port.ip().to_string(), 7000),
        "acestream.http_port label, unpublished"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_engine_shows_its_new_name() {
    let case = unique_name("disc-rename");
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(config(&case, &dir.path().join("state.redb"))).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;
    let e = engine(&case, "disc-rename");
    let before = wait_for_engines(&agent, &[&e.id], Duration::from_secs(5)).await;

    let new_name = unique_name("disc-renamed");
    let asked = SystemTime::now();
    docker_cli(&["rename", &e.id, &new_name]);
    let renamed_at = eventually(Duration::from_secs(5), "the new name in /engines", || {
        let new_name = new_name.clone();
        let agent = &agent;
        async move {
            let list = engines(agent).await;
            let now = Utc::now();
            (list.len() == 1 && list[0]["container_name"] == new_name.as_str())
                .then_some((now, list[0].clone()))
                .ok_or(list)
        }
    })
    .await;
    let (at, item) = renamed_at;
    let latency = at - docker_event_time(&e.id, "rename", asked);
    println!("rename shown {} ms after Docker's event", millis(latency));
    assert!(latency <= chrono::TimeDelta::from_std(EVENT_BOUND).unwrap());
    assert_eq!(
        item["first_seen"], before[0]["first_seen"],
        "same engine record"
    );
    let (status, _) = http_get(agent.addr, &format!("/engines/{new_name}")).await;
    assert_eq!(status, 200, "found by its new name");
    agent.stop().await;
}

/// `docker pull` of a newer `…/acestream:latest` moves the tag off the image running engines
/// were created from; Docker's container list then shows the old image's ID instead of its
/// name. The engine is still the same engine: the periodic re-list must not drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_glob_match_survives_the_tag_moving() {
    let case = unique_name("disc-retag");
    let tag = ImageTag::new(&format!("agent-retag-{case}:latest"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir.path().join("state.redb"));
    cfg.discovery.labels = vec![];
    cfg.discovery.images = vec![format!("agent-retag-{case}:*")];
    cfg.discovery.resync_interval = Duration::from_millis(100);
    let agent = start_agent(cfg).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;
    let c = RawContainer::new("run", &unique_name("disc-retag"), &[], &tag.0);
    wait_for_engines(&agent, &[&c.id], Duration::from_secs(5)).await;

    drop(tag);
    let listed_as = docker_cli(&[
        "ps",
        "--filter",
        &format!("id={}", c.id),
        "--format",
        "{{.Image}}",
    ]);
    assert!(
        !listed_as.contains("agent-retag"),
        "precondition: Docker lists the container by image ID now, got {listed_as:?}"
    );

    // Ten re-lists or more (no events: nothing starts or stops); the engine stays through
    // every one of them.
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let list = engines(&agent).await;
        assert_eq!(
            ids(&list),
            vec![c.id.clone()],
            "engine dropped by a re-list"
        );
        assert_eq!(list[0]["image"], format!("agent-retag-{case}:latest"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_engine_containers_are_ignored() {
    let case = unique_name("disc-ignore");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&case, &dir.path().join("state.redb"));
    // An image glob that matches nothing running, so only the label can match.
    cfg.discovery.images = vec![format!("no-such-image-{case}")];
    let agent = start_agent(cfg).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;

    // Same label key, another value.
    let other_value = TestEngine::builder()
        .name_prefix("disc-ignore-value")
        .label(CASE_LABEL, &format!("{case}-other"))
        .start();
    // No engine labels at all.
    let unlabelled = TestEngine::builder()
        .name_prefix("disc-ignore-plain")
        .without_label(ENGINE_LABEL)
        .start();
    // Matching label, but created and never started: not running, so not an engine.
    let not_running = RawContainer::new(
        "create",
        &unique_name("disc-ignore-created"),
        &[(CASE_LABEL, &case)],
        &fake_engine_image(),
    );
    // Started last: once the agent lists it, it has handled the others' start events.
    let real = engine(&case, "disc-ignore-real");

    wait_for_engines(&agent, &[&real.id], Duration::from_secs(5)).await;
    // A forced full re-list sees the same: restart the agent on the same store.
    agent.stop().await;
    let mut cfg = config(&case, &dir.path().join("state.redb"));
    cfg.discovery.images = vec![format!("no-such-image-{case}")];
    let agent = start_agent(cfg).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;
    let list = wait_for_engines(&agent, &[&real.id], Duration::from_secs(1)).await;
    assert_eq!(list.len(), 1);
    for (what, id) in [
        ("other label value", &other_value.id),
        ("no label", &unlabelled.id),
        ("not running", &not_running.id),
    ] {
        let (status, _) = http_get(agent.addr, &format!("/engines/{id}")).await;
        assert_eq!(status, 404, "container with {what} must not be an engine");
    }
    assert_eq!(
        metric(&agent, "acestream_agent_engines").await.as_deref(),
        Some("1")
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_socket_loss_is_survived() {
    let case = unique_name("disc-loss");
    let dir = tempfile::tempdir().unwrap();
    let proxy = DockerProxy::start(dir.path());
    let mut cfg = config(&case, &dir.path().join("state.redb"));
    cfg.docker.host = Some(proxy.host());
    let agent = start_agent(cfg).await;
    wait_docker_up(&agent, Duration::from_secs(10)).await;

    let stays = engine(&case, "disc-loss-stays");
    let removed_meanwhile = engine(&case, "disc-loss-removed");
    let before = wait_for_engines(
        &agent,
        &[&stays.id, &removed_meanwhile.id],
        Duration::from_secs(5),
    )
    .await;

    proxy.cut();
    let cut_at = Instant::now();
    wait_docker_down(&agent, Duration::from_secs(5)).await;
    println!(
        "Docker loss noticed within {} ms",
        cut_at.elapsed().as_millis()
    );
    // Served from memory meanwhile, exactly as before.
    let during = engines(&agent).await;
    assert_eq!(
        sorted(ids(&during)),
        sorted(ids(&before)),
        "/engines while Docker is away"
    );
    for item in &during {
        let was = before
            .iter()
            .find(|b| b["container_id"] == item["container_id"])
            .unwrap();
        for field in [
            "container_name",
            "host",
            "port",
            "image",
            "labels",
            "first_seen",
        ] {
            assert_eq!(
                item[field], was[field],
                "{field} changed while Docker was away"
            );
        }
    }
    let (status, metrics) = http_get(agent.addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics answers while Docker is down");
    assert!(metrics.contains(&format!("container_name=\"{}\"", stays.name)));

    removed_meanwhile.remove();
    let started_meanwhile = engine(&case, "disc-loss-started");
    // Still down: nothing reaches the agent.
    assert_eq!(readyz(&agent).await, 503);

    proxy.restore();
    let restored_at = Instant::now();
    wait_docker_up(&agent, Duration::from_secs(15)).await;
    let after = wait_for_engines(
        &agent,
        &[&stays.id, &started_meanwhile.id],
        Duration::from_secs(2),
    )
    .await;
    println!(
        "Docker back and engines resynced within {} ms of the socket's return",
        restored_at.elapsed().as_millis()
    );
    let unique: BTreeSet<String> = ids(&after).into_iter().collect();
    assert_eq!(unique.len(), after.len(), "duplicate engines: {after:?}");
    let (status, _) = http_get(agent.addr, &format!("/engines/{}", removed_meanwhile.id)).await;
    assert_eq!(status, 404);
    let stays_after = after
        .iter()
        .find(|e| e["container_id"] == stays.id.as_str())
        .unwrap();
    let stays_before = before
        .iter()
        .find(|e| e["container_id"] == stays.id.as_str())
        .unwrap();
    assert_eq!(
        stays_after["first_seen"], stays_before["first_seen"],
        "the engine that stayed is the same record, not a new one"
    );

    // Events flow again after the reconnect (not only the resync list).
    let after_reconnect = engine(&case, "disc-loss-late");
    wait_for_engines(
        &agent,
        &[&stays.id, &started_meanwhile.id, &after_reconnect.id],
        Duration::from_secs(2),
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_served_from_the_store_when_docker_is_down_at_start() {
    let case = unique_name("disc-store");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.redb");

    let a = start_agent(config(&case, &store)).await;
    let e = engine(&case, "disc-store");
    let seen = wait_for_engines(&a, &[&e.id], Duration::from_secs(10)).await;
    a.stop().await;

    let mut cfg = config(&case, &store);
    cfg.docker.host = Some(format!(
        "unix://{}",
        dir.path().join("no-docker-here.sock").display()
    ));
    let b = start_agent(cfg).await;
    let list = engines(&b).await;
    assert_eq!(ids(&list), vec![e.id.clone()], "served from the store");
    for field in [
        "container_id",
        "container_name",
        "host",
        "port",
        "image",
        "labels",
        "first_seen",
    ] {
        assert_eq!(list[0][field], seen[0][field], "{field} from the store");
    }
    let (status, item) = http_get_json(b.addr, &format!("/engines/{}", &e.id[..12])).await;
    assert_eq!(status, 200, "{item}");

    // Docker never answers: down, and it stays down (discovery keeps retrying in the
    // background; a few of its attempts fit in this second).
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        assert_eq!(
            metric(&b, "acestream_agent_docker_up").await.as_deref(),
            Some("0")
        );
        let (status, body) = http_get_json(b.addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["docker_up"], false);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids(&engines(&b).await), vec![e.id.clone()]);
    b.stop().await;
}

/// A `stream_started` body addressing the engine by `host:port`, or by container id.
fn started_at(host: &str, port: u16, container_id: Option<&str>, key: &str) -> String {
    let mut v = serde_json::json!({
        "engine": {"host": host, "port": port},
        "stream": {"key_type": "content_id", "key": key},
        "session": {"playback_session_id": key, "stat_url": format!("http://x/ace/stat/a/{key}"),
                    "command_url": "http://x/cmd", "is_live": 1},
        "labels": {"stream_id": key}
    });
    if let Some(id) = container_id {
        v["container_id"] = id.into();
    }
    v.to_string()
}

/// A stream event for a container the agent has not listed yet
/// (docs/deployments.md#stream-events-from-proxies) is looked up in Docker before it is answered. A
/// proxy that posts `stream_started` the moment the agent answers `/healthz` (the first container
/// list not done yet), by address or by container id, and one that posts for a container started a
/// moment ago, are answered 200 for the right engine; a container Docker does not have as an engine
/// is still 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_event_right_after_start_finds_its_engine() {
    let case = unique_name("disc-first-ms");
    let by_addr = engine(&case, "disc-first-addr");
    let by_id = engine(&case, "disc-first-id");
    let not_engine = TestEngine::builder()
        .name_prefix("disc-first-other")
        .without_label(ENGINE_LABEL)
        .start();
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let env = case_env(&case, port, &dir.path().join("state.redb"));
        let log = dir.path().join("agent.log");
        let _agent = Running(agent_command(dir.path(), &env, &log).spawn().unwrap());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // As fast as a client can: the first 200 of /healthz, then the events at once.
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = try_http_get(addr, "/healthz").await {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no /healthz");
            tokio::task::yield_now().await;
        }
        let up = Instant::now();
        let (body_a, body_b) = (
            started_at("127.0.0.1", by_addr.host_port, None, &format!("a{round}")),
            started_at("x", 1, Some(&by_id.id[..12]), &format!("b{round}")),
        );
        let a = try_http_request("POST", addr, "/events/stream_started", &body_a, &[]);
        let b = try_http_request("POST", addr, "/events/stream_started", &body_b, &[]);
        let (a, b) = tokio::join!(a, b);
        let took = up.elapsed();
        let (sa, ba) = a.unwrap();
        let (sb, bb) = b.unwrap();
        println!("round {round}: answered {took:?} after /healthz: {sa} {sb}");
        assert_eq!(sa, 200, "round {round}, by address: {ba}");
        assert_eq!(sb, 200, "round {round}, by id: {bb}");
        assert!(ba.contains(&by_addr.id), "{ba}");
        assert!(bb.contains(&by_id.id), "{bb}");
        if round == ROUNDS - 1 {
            // A container started a moment ago, before its start event could be applied.
            let fresh = engine(&case, "disc-first-fresh");
            let (s, body) = http_post(
                addr,
                "/events/stream_started",
                &started_at("127.0.0.1", fresh.host_port, None, "fresh"),
                &[],
            )
            .await;
            assert_eq!(s, 200, "{body}");
            assert!(body.contains(&fresh.id), "{body}");
            let (s, body) = http_post(
                addr,
                "/events/stream_started",
                &started_at("x", 1, Some(&not_engine.id), "other"),
                &[],
            )
            .await;
            assert_eq!(s, 404, "not an engine: {body}");
            assert!(body.contains("no discovered engine"), "{body}");
        }
    }
}
