//! A fleet under one Prometheus and one Alertmanager (README "Many hosts"): three hosts on this
//! machine, each its own Docker daemon in its own network namespace with its own agent and store
//! (tests/common/fleet.rs), one real Prometheus with the shipped scrape config (its
//! `file_sd_configs` and relabelling) and the shipped rules (`for:` shortened), one real
//! Alertmanager with the shipped example config (waits shortened), and a webhook receiver in the
//! test standing in for the person the alerts reach.
//!
//! Asserted against the live Prometheus: every host is an `instance` named after it; the
//! dashboard's Instance variable lists the three; the Hosts table and the fleet-wide top ten of
//! idle caches return, query by query, the values each agent's `/engines` gives. Then one engine
//! on one host is made unhealthy and one host's cache filesystem crosses its threshold: exactly
//! those two alerts reach the receiver, named by host and engine or filesystem, with words a
//! person can act on, and they resolve when fixed. Then one agent dies: `up == 0` for that host
//! only, the fleet panels keep the others, and AcestreamAgentDown reaches the receiver.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::prom::{self, Notification, Webhook};
use common::*;
use serde_json::Value;

const TOKEN: &str = "fleet-token";
const WAIT: Duration = Duration::from_secs(90);
/// The dashboard's job and instance selectors as Grafana sends them with "All" selected.
const ALL: &str = r#"job=~"acestream-agent", instance=~".+""#;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The dashboard's queries by "panel title/refId", with the variables as Grafana sends them
/// for All: the test runs what the shipped dashboard runs.
fn dashboard_queries() -> BTreeMap<String, String> {
    let d: Value = serde_json::from_str(&repo("grafana/dashboards/acestream-agent.json")).unwrap();
    let mut out = BTreeMap::new();
    let mut stack: Vec<Value> = d["panels"].as_array().unwrap().clone();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace(r#"job=~"$job", instance=~"$instance""#, ALL)
                .replace("$__rate_interval", "15s")
                .replace("$__range", "1h");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            out.insert(
                format!(
                    "{}/{}",
                    p["title"].as_str().unwrap(),
                    t["refId"].as_str().unwrap()
                ),
                expr,
            );
        }
    }
    out
}

/// The shipped prometheus.yml for this test: 1 s intervals, the example static targets
/// removed (they do not exist here), Alertmanager at `am`, the rules with `for:` shortened to
/// 3 s, the fleet's hosts in a targets file under the shipped `file_sd_configs` glob, each
/// with the `host` label the shipped relabelling turns into `instance`.
fn prometheus_config(dir: &Path, am: SocketAddr, fleet: &Fleet) {
    let shipped = repo("config/prometheus/prometheus.yml");
    let statics = "    static_configs:\n      - targets:\n          - engines-host-1.example.net:9477\n          - engines-host-2.example.net:9477\n";
    assert!(
        shipped.contains(statics),
        "the shipped static targets moved"
    );
    assert!(
        shipped.contains("- targets/*.yml"),
        "the shipped file_sd glob moved"
    );
    let config = shipped
        .replace(statics, "")
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace(
            "evaluation_interval: 15s",
            "evaluation_interval: 1s\n  scrape_timeout: 1s",
        )
        .replace("- localhost:9093", &format!("- {am}"));
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let rules: String = repo("config/prometheus/acestream-agent.rules.yml")
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 3s\n", &l[..l.len() - l.trim_start().len()]),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(rules.contains("for: 3s") && !rules.contains("for: 2m"));
    std::fs::write(dir.join("acestream-agent.rules.yml"), rules).unwrap();
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    let targets: String = fleet
        .hosts
        .iter()
        .map(|h| {
            format!(
                "- targets: ['{}']\n  labels:\n    host: {}\n",
                h.agent_addr(),
                h.name
            )
        })
        .collect();
    std::fs::write(dir.join("targets/fleet.yml"), targets).unwrap();
}

/// The shipped alertmanager.yml with the waits shortened and its webhooks at `hook`.
fn alertmanager_config(dir: &Path, hook: SocketAddr) {
    let shipped = repo("config/alertmanager/alertmanager.yml");
    let config = shipped
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s")
        .replace("http://127.0.0.1:5001/", &format!("http://{hook}/"));
    assert_eq!(config.matches(&hook.to_string()).count(), 2, "{config}");
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
}

/// (alertname, instance, status) of every alert in every notification, with the path it
/// reached: the receiver.
fn alerts(got: &[Notification]) -> Vec<(String, Value)> {
    got.iter()
        .flat_map(|n| {
            n.body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| (n.path.clone(), a))
        })
        .collect()
}

fn firing_names(got: &[Notification]) -> BTreeSet<(String, String)> {
    alerts(got)
        .iter()
        .filter(|(_, a)| a["status"] == "firing")
        .map(|(_, a)| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                a["labels"]["instance"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The first alert named `name` on `instance` with `status`, and the receiver path it reached.
fn find(got: &[Notification], name: &str, instance: &str, status: &str) -> Option<(String, Value)> {
    alerts(got).into_iter().find(|(_, a)| {
        a["labels"]["alertname"] == name
            && a["labels"]["instance"] == instance
            && a["status"] == status
    })
}

async fn engines(addr: SocketAddr) -> Result<Vec<Value>, String> {
    let (status, body) = try_http_get(addr, "/engines").await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    match (status, v.as_array()) {
        (200, Some(list)) => Ok(list.clone()),
        _ => Err(format!("HTTP {status}: {body}")),
    }
}

/// The smallest free space the agent reports for its disks (not its memory caches).
async fn least_free(addr: SocketAddr) -> Result<f64, String> {
    let (_, text) = try_http_get(addr, "/metrics").await?;
    text.lines()
        .filter(|l| {
            l.starts_with("acestream_filesystem_avail_bytes{") && !l.contains("medium=\"memory\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::min)
        .ok_or_else(|| format!("no filesystem series:\n{text}"))
}

/// Per instance, the value of each sample of an instant query.
async fn by_instance(prom: SocketAddr, q: &str) -> Result<BTreeMap<String, f64>, String> {
    Ok(prom::query(prom, q)
        .await?
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                prom::value(s),
            )
        })
        .collect())
}

fn is_idle(e: &Value) -> bool {
    e["streams"].as_array().is_none_or(|s| s.is_empty())
}

/// What the Hosts table must show for `hosts`, from their agents' `/engines` and `/metrics`,
/// against what Prometheus returns for the table's queries: `Ok` when every column matches
/// for exactly these hosts.
async fn hosts_table_matches(
    prom: SocketAddr,
    q: &BTreeMap<String, String>,
    hosts: &[(&str, SocketAddr)],
    freed: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let mut want: BTreeMap<&str, BTreeMap<char, f64>> = BTreeMap::new();
    for (name, addr) in hosts {
        let list = engines(*addr).await?;
        let cache: u64 = list
            .iter()
            .map(|e| e["cache_current_bytes"].as_u64().unwrap_or(0))
            .sum();
        let cols = want.entry(name).or_default();
        cols.insert('B', list.len() as f64);
        cols.insert('C', list.iter().filter(|e| is_idle(e)).count() as f64);
        cols.insert('D', cache as f64);
        cols.insert('F', least_free(*addr).await?);
    }
    for col in ['B', 'C', 'D', 'E', 'F'] {
        let got = by_instance(prom, &q[&format!("Hosts/{col}")]).await?;
        let names: BTreeSet<&str> = got.keys().map(String::as_str).collect();
        // What a host freed in the last hour stays in the past hour's samples after its agent
        // is gone; every other column is the hosts being scraped.
        let expect: BTreeSet<&str> = match col {
            'E' => freed.keys().map(String::as_str).collect(),
            _ => hosts.iter().map(|(n, _)| *n).collect(),
        };
        if names != expect {
            return Err(format!("Hosts/{col}: instances {names:?}, want {expect:?}"));
        }
        for name in expect {
            let v = got[name];
            let ok = match col {
                // Free space moves with whatever else writes to the host's disk.
                'F' => {
                    let w = want[name][&'F'];
                    (v - w).abs() <= (w * 0.01).max(16.0 * 1048576.0)
                }
                // increase() over a 1 h window extrapolates a little past the samples.
                'E' => {
                    let f = freed[name] as f64;
                    v >= f && v <= f * 1.5
                }
                _ => v == want[name][&col],
            };
            if !ok {
                return Err(format!(
                    "Hosts/{col} on {name}: Prometheus {v}, the agent {:?} (freed {:?})",
                    want.get(name).and_then(|w| w.get(&col)),
                    freed.get(name)
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_under_one_prometheus_and_alertmanager() {
    let image = fake_engine_image();
    let mut fleet = Fleet::start("fleet", 3, &[&image]);

    // Engines: five idle ones on hosts 1 and 3, four on host 2, each with a cache of its own
    // size (so the fleet-wide order is known), and on host 2 one more whose cache is on a
    // small filesystem of its own (the one that will cross its threshold).
    let mut ids: Vec<Vec<(String, String, u16)>> = vec![];
    for (i, h) in fleet.hosts.iter().enumerate() {
        let n = if i == 1 { 4 } else { 5 };
        let mut list = vec![];
        for j in 0..n {
            let name = format!("{}-e{j}", h.name);
            let (id, port) = h.engine(&image, &name, &[]);
            let kib = 64 * (2 + j * 3 + i);
            h.host.run(&[
                "exec",
                &id,
                "/usr/bin/busybox",
                "sh",
                "-c",
                &format!("mkdir -p {DEFAULT_CACHE_DIR} && head -c {} /dev/zero > {DEFAULT_CACHE_DIR}/seg.1", kib * 1024),
            ]);
            list.push((id, name, port));
        }
        ids.push(list);
    }
    let small = fleet.hosts[1].loop_fs(128);
    let busy_name = format!("{}-busy", fleet.hosts[1].name);
    let (busy_id, busy_port) = fleet.hosts[1].engine(
        &image,
        &busy_name,
        &["-v", &format!("{}:{DEFAULT_CACHE_DIR}", small.display())],
    );

    let env = vec![
        ("ACESTREAM_AGENT_HTTP__TOKEN", TOKEN.to_string()),
        ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "500ms".to_string()),
        ("ACESTREAM_AGENT_HEALTH__INTERVAL", "1s".to_string()),
        ("ACESTREAM_AGENT_HEALTH__TIMEOUT", "1s".to_string()),
        // No sweep and no stream-end cleanup: the idle caches stay for the panels, and only
        // disk pressure and the manual cleanups below free anything.
        ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".to_string()),
        ("ACESTREAM_AGENT_CLEANUP__IDLE_GRACE", "off".to_string()),
        (
            "ACESTREAM_AGENT_CLEANUP__MEASURE_INTERVAL",
            "1s".to_string(),
        ),
        ("ACESTREAM_AGENT_PRESSURE__INTERVAL", "1s".to_string()),
        ("ACESTREAM_AGENT_PRESSURE__MIN_FREE", "48MiB".to_string()),
        // The busy engine's big file below is held open by nothing: with the default
        // (`unopened`) the agent would delete it and the pressure this test needs would end.
        ("ACESTREAM_AGENT_PRESSURE__BUSY_FILES", "off".to_string()),
    ];
    for h in fleet.hosts.iter_mut() {
        h.start_agent(&env);
    }
    let hosts: Vec<(String, SocketAddr)> = fleet
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.agent_addr()))
        .collect();
    for (i, (name, addr)) in hosts.iter().enumerate() {
        let want = ids[i].len() + usize::from(i == 1);
        eventually(
            WAIT,
            &format!("{name}'s engines healthy and measured"),
            || async {
                let list = engines(*addr).await?;
                let ok = list.len() == want
                    && list.iter().all(|e| {
                        e["health_status"] == "healthy" && e["cache_current_bytes"].is_u64()
                    })
                    && ids[i].iter().all(|(id, _, _)| {
                        list.iter().any(|e| {
                            e["container_id"] == id.as_str()
                                && e["cache_current_bytes"].as_u64() > Some(0)
                        })
                    });
                ok.then_some(()).ok_or(format!("{list:?}"))
            },
        )
        .await;
    }

    // One Prometheus and one Alertmanager over the fleet.
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    alertmanager_config(dir.path(), hook.addr);
    let mut am = prom::start_alertmanager(dir.path());
    am.wait_ready(Duration::from_secs(30)).await;
    prometheus_config(dir.path(), am.addr, &fleet);
    let mut prometheus = prom::start_prometheus(dir.path());
    prometheus.wait_ready(Duration::from_secs(30)).await;
    let p = prometheus.addr;
    let names: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
    eventually(WAIT, "up == 1 for the three hosts, by name", || async {
        let up = by_instance(p, r#"up{job="acestream-agent"}"#).await?;
        let ok = up.len() == 3 && names.iter().all(|n| up.get(*n) == Some(&1.0));
        ok.then_some(()).ok_or(format!("{up:?}"))
    })
    .await;
    // The dashboard's Instance variable, as Grafana asks for it.
    let d: Value = serde_json::from_str(&repo("grafana/dashboards/acestream-agent.json")).unwrap();
    let var = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .unwrap()["query"]
        .as_str()
        .unwrap()
        .to_string();
    let selector = var
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(", instance)"))
        .unwrap()
        .replace("$job", "acestream-agent");
    assert_eq!(
        prom::label_values(p, "instance", &selector).await.unwrap(),
        names,
        "the Instance variable ({var})"
    );

    // A few scrapes with nothing freed, then one manual cleanup per host: freed bytes known.
    eventually(WAIT, "three scrapes of every host", || async {
        let n = by_instance(p, r#"count_over_time(up{job="acestream-agent"}[1m])"#).await?;
        let ok = n.len() == 3 && n.values().all(|c| *c >= 3.0);
        ok.then_some(()).ok_or(format!("{n:?}"))
    })
    .await;
    let mut freed: BTreeMap<String, u64> = BTreeMap::new();
    let auth = format!("Bearer {TOKEN}");
    for (i, (name, addr)) in hosts.iter().enumerate() {
        let (id, _, _) = &ids[i][0];
        let (status, body) = http_post(
            *addr,
            &format!("/engines/{id}/cleanup"),
            "",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        let f = r["freed_bytes"].as_u64().unwrap();
        assert!(f >= (64 * (2 + i) * 1024) as u64, "{name}: {r}");
        freed.insert(name.clone(), f);
    }

    // The Hosts table, column by column, against each agent.
    let q = dashboard_queries();
    let all: Vec<(&str, SocketAddr)> = hosts.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    eventually(WAIT, "the Hosts table matches every agent", || {
        hosts_table_matches(p, &q, &all, &freed)
    })
    .await;
    let up = by_instance(p, &q["Hosts/A"]).await.unwrap();
    assert_eq!(up.len(), 3, "{up:?}");
    assert!(up.values().all(|v| *v == 1.0), "{up:?}");

    // The ten largest idle caches across the fleet, from the three /engines.
    let top_q = &q["Largest idle caches across the fleet/A"];
    let top = eventually(WAIT, "the fleet's top ten idle caches", || async {
        let mut want: Vec<(String, String, f64)> = vec![];
        for (name, addr) in &hosts {
            for e in engines(*addr).await? {
                if is_idle(&e) {
                    want.push((
                        name.clone(),
                        e["container_name"].as_str().unwrap().to_string(),
                        e["cache_current_bytes"].as_u64().unwrap_or(0) as f64,
                    ));
                }
            }
        }
        want.sort_by(|a, b| b.2.total_cmp(&a.2));
        // Ties at the cut would make the answer ambiguous: the sizes are all different.
        if want.len() <= 10 || want[9].2 == want[10].2 {
            return Err(format!("an ambiguous top ten: {want:?}"));
        }
        want.truncate(10);
        let got: Vec<(String, String, f64)> = prom::query(p, top_q)
            .await?
            .iter()
            .map(|s| {
                (
                    s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                    s["metric"]["container_name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    prom::value(s),
                )
            })
            .collect();
        let (a, b): (BTreeSet<_>, BTreeSet<_>) = (
            got.iter()
                .map(|(h, c, v)| (h.clone(), c.clone(), *v as u64))
                .collect(),
            want.iter()
                .map(|(h, c, v)| (h.clone(), c.clone(), *v as u64))
                .collect(),
        );
        (a == b)
            .then_some(got.clone())
            .ok_or(format!("Prometheus {got:?}, the agents {want:?}"))
    })
    .await;
    assert!(
        top.iter().any(|t| t.0 == names[0]) && top.iter().any(|t| t.0 == names[2]),
        "the top ten spans hosts: {top:?}"
    );
    assert!(
        !top.iter().any(|t| ids.iter().any(|l| l[0].1 == t.1)),
        "the cleaned engines are not among the largest: {top:?}"
    );
    println!("top ten idle caches across the fleet: {top:?}");
    assert!(
        hook.all().is_empty(),
        "no alert in a healthy fleet: {:?}",
        hook.all()
    );

    // Trouble on two hosts: an engine on host 1 stops answering its health check (its listener
    // SIGSTOPped), and on host 2 a busy engine's cache fills its filesystem past pressure.min_free.
    let h1 = &fleet.hosts[0];
    let (sick_id, sick_name, _) = &ids[0][1];
    let nc = eventually(Duration::from_secs(10), "one nc listener", || async {
        let pids = h1
            .host
            .run(&["exec", sick_id, "/usr/bin/busybox", "pidof", "nc"]);
        (!pids.is_empty() && !pids.contains(' ')).then_some(pids)
    })
    .await;
    h1.host
        .run(&["exec", sick_id, "/usr/bin/busybox", "kill", "-STOP", &nc]);
    let h2 = &fleet.hosts[1];
    let viewer = StreamClient::connect(SocketAddr::from((h2.host.addr, busy_port)), "fleet");
    let (_, h2_addr) = hosts[1];
    eventually(WAIT, "host 2's busy engine streaming", || async {
        let list = engines(h2_addr).await?;
        list.iter()
            .any(|e| e["container_id"] == busy_id.as_str() && !is_idle(e))
            .then_some(())
            .ok_or(format!("{list:?}"))
    })
    .await;
    h2.host.run(&[
        "exec",
        &busy_id,
        "/usr/bin/busybox",
        "sh",
        "-c",
        &format!("head -c {} /dev/zero > {DEFAULT_CACHE_DIR}/big.1", 70 << 20),
    ]);

    let want: BTreeSet<(String, String)> = [
        ("AcestreamEngineUnhealthy", names[0]),
        ("AcestreamDiskPressureUnresolved", names[1]),
    ]
    .iter()
    .map(|(a, i)| (a.to_string(), i.to_string()))
    .collect();
    eventually(WAIT, "the two alerts at the receiver", || async {
        let got = firing_names(&hook.all());
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    let got = hook.all();
    let (path, a) = find(&got, "AcestreamEngineUnhealthy", names[0], "firing").unwrap();
    assert_eq!(
        path, "/alerts",
        "a warning goes to the operators' receiver: {a}"
    );
    assert_eq!(a["labels"]["container_name"], sick_name.as_str(), "{a}");
    assert_eq!(a["labels"]["container_id"], &sick_id[..12], "{a}");
    assert_eq!(a["labels"]["severity"], "warning", "{a}");
    let summary = a["annotations"]["summary"].as_str().unwrap();
    let description = a["annotations"]["description"].as_str().unwrap();
    assert!(summary.contains(sick_name.as_str()), "{summary}");
    assert!(
        description.contains(names[0])
            && description.contains(sick_name.as_str())
            && description.contains("restart"),
        "{description}"
    );
    let (path, a) = find(&got, "AcestreamDiskPressureUnresolved", names[1], "firing").unwrap();
    assert_eq!(path, "/pages", "critical pages: {a}");
    let mountpoint = a["labels"]["mountpoint"].as_str().unwrap().to_string();
    assert_eq!(mountpoint, small.display().to_string(), "{a}");
    let summary = a["annotations"]["summary"].as_str().unwrap();
    let description = a["annotations"]["description"].as_str().unwrap();
    assert!(
        summary.contains(&mountpoint) && summary.contains(names[1]),
        "{summary}"
    );
    assert!(description.contains("GET /engines"), "{description}");
    println!("fired: {summary} / {description}");

    // Nothing else in the next seconds (every rule evaluated for 5 s more, by Prometheus' own
    // clock, and Alertmanager's 1 s group wait behind it): no other host, no other rule.
    let mark = chrono::Utc::now() + chrono::Duration::seconds(5);
    eventually(WAIT, "5 s more of rule evaluations", || {
        prom::rules_evaluated_since(p, mark)
    })
    .await;
    assert_eq!(firing_names(&hook.all()), want);

    // Fixed: the listener resumes; the viewer leaves, so the agent can clean the cache under
    // pressure. Both alerts resolve at the receiver.
    h1.host
        .run(&["exec", sick_id, "/usr/bin/busybox", "kill", "-CONT", &nc]);
    drop(viewer);
    eventually(WAIT, "both alerts resolved at the receiver", || async {
        let got = hook.all();
        let ok = find(&got, "AcestreamEngineUnhealthy", names[0], "resolved").is_some()
            && find(
                &got,
                "AcestreamDiskPressureUnresolved",
                names[1],
                "resolved",
            )
            .is_some();
        ok.then_some(()).ok_or(format!("{:?}", alerts(&got)))
    })
    .await;
    let list = engines(h2_addr).await.unwrap();
    let busy = list
        .iter()
        .find(|e| e["container_id"] == busy_id.as_str())
        .unwrap();
    assert!(
        busy["cache_freed_bytes_total"].as_u64() >= Some(70 << 20),
        "the pressure cleanup freed the big file: {busy}"
    );

    // Host 3's agent dies.
    fleet.hosts[2].kill_agent();
    eventually(WAIT, "up == 0 for host 3 only", || async {
        let up = by_instance(p, &q["Hosts/A"]).await?;
        let ok = up.get(names[0]) == Some(&1.0)
            && up.get(names[1]) == Some(&1.0)
            && up.get(names[2]) == Some(&0.0);
        ok.then_some(()).ok_or(format!("{up:?}"))
    })
    .await;
    // The Instance variable still lists it (so its DOWN row shows), the panels keep the others.
    assert_eq!(
        prom::label_values(p, "instance", &selector).await.unwrap(),
        names
    );
    let mut freed_now = freed.clone();
    let busy_freed = busy["cache_freed_bytes_total"].as_u64().unwrap();
    *freed_now.get_mut(names[1]).unwrap() += busy_freed;
    eventually(WAIT, "the Hosts table keeps hosts 1 and 2", || {
        hosts_table_matches(p, &q, &all[..2], &freed_now)
    })
    .await;
    eventually(WAIT, "AcestreamAgentDown at the receiver", || async {
        find(&hook.all(), "AcestreamAgentDown", names[2], "firing")
            .ok_or(format!("{:?}", firing_names(&hook.all())))
    })
    .await;
    let (path, a) = find(&hook.all(), "AcestreamAgentDown", names[2], "firing").unwrap();
    assert_eq!(path, "/pages", "{a}");
    let description = a["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains(names[2]) && description.contains("journalctl"),
        "{description}"
    );
    let mut all_fired = want.clone();
    all_fired.insert(("AcestreamAgentDown".into(), names[2].into()));
    assert_eq!(firing_names(&hook.all()), all_fired);
    drop(prometheus);
    drop(am);
    drop(fleet);
}

/// The shipped scrape config with the shipped targets file, as Prometheus reads them: every
/// target's `instance` is its host (the `host` label, else the address without the port), the
/// file's other labels are kept and `host` itself is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scrape_config_names_instances_by_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        repo("config/prometheus/prometheus.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("acestream-agent.rules.yml"),
        repo("config/prometheus/acestream-agent.rules.yml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("targets")).unwrap();
    std::fs::write(
        dir.path().join("targets/acestream-agent.yml"),
        repo("config/prometheus/targets/acestream-agent.yml"),
    )
    .unwrap();
    let mut prometheus = prom::start_prometheus(dir.path());
    prometheus.wait_ready(Duration::from_secs(30)).await;
    let targets = eventually(WAIT, "the five shipped targets", || async {
        let (_, body) = try_http_get(prometheus.addr, "/api/v1/targets").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let t: BTreeMap<String, Value> = v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or("").to_string(),
                    t["labels"].clone(),
                )
            })
            .collect();
        (t.len() == 5).then_some(t).ok_or(body)
    })
    .await;
    let instance = |url: &str| targets[url]["instance"].as_str().unwrap().to_string();
    assert_eq!(
        instance("http://engines-host-1.example.net:9477/metrics"),
        "engines-host-1.example.net"
    );
    assert_eq!(instance("http://10.0.1.11:9477/metrics"), "10.0.1.11");
    assert_eq!(instance("http://10.0.2.21:9477/metrics"), "engines-fra-1");
    let fra = &targets["http://10.0.2.21:9477/metrics"];
    assert_eq!(fra["site"], "fra1", "{fra}");
    assert_eq!(fra["job"], "acestream-agent", "{fra}");
    assert!(
        fra.get("host").is_none(),
        "the host label is dropped: {fra}"
    );
}

/// The shipped Alertmanager example is valid for Debian's Alertmanager.
#[test]
fn shipped_alertmanager_config_passes_amtool() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alertmanager/alertmanager.yml");
    let out = std::process::Command::new("amtool")
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("amtool (Debian package prometheus-alertmanager; bash .ci/run installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 receivers") && text.contains("1 inhibit rules"),
        "{text}"
    );
}
