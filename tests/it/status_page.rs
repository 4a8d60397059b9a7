//! The built-in status page (`GET /`, README "HTTP endpoints"), rendered by a real browser:
//! headless Chromium loads it from a running agent that watches two fake engines, and the test
//! reads the DOM the page's script built from `/engines`. What no test agent's engines show
//! (restarts hours ago, a quarantined engine, streams' peers and speeds, stalled streams, an
//! engine's own cache limit, a Docker log Docker does not rotate) it renders from a crafted
//! `/engines` body, served with the page.
//!
//! Needs Debian's `chromium` package; without it these tests fail and say so.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADVERTISE_HOST: &str = "status-page-host.example";
const CHROMIUM: &str = "chromium";
/// Where the screenshot is kept for people to look at: `target/status-page.png`.
const SCREENSHOT_NAME: &str = "status-page.png";

// ---------------------------------------------------------------------------
// set-up
// ---------------------------------------------------------------------------

async fn start_agent(prefix: &str) -> TestAgent {
    TestAgent::start(prefix, "127.0.0.1:0", |case, store| {
        let mut cfg = case_config(case, store);
        cfg.discovery.advertise_host = ADVERTISE_HOST.into();
        cfg.cleanup.exec_timeout = Duration::from_secs(10);
        events_only(&mut cfg);
        // Engines' Docker logs are read every pressure.interval: their start-up line soon.
        cfg.pressure.interval = Duration::from_millis(500);
        cfg
    })
    .await
}

/// Serves the status page at `/` and `engines` as the `/engines` body (404 for anything
/// else), one request per connection: the page as an agent serves it, with engines no test
/// agent has (quarantined, restarted hours ago). Lives as long as the test's runtime.
async fn serve_page_with(engines: &Value) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stub agent");
    let addr = listener.local_addr().unwrap();
    let engines = engines.to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let engines = engines.clone();
            tokio::spawn(async move {
                let mut req = vec![];
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, content_type, body) = match path {
                    "/" => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        include_str!("../../src/http/status.html").to_string(),
                    ),
                    "/engines" => ("200 OK", "application/json", engines),
                    _ => ("404 Not Found", "text/plain", "not found".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// An `/engines` item as the agent writes it (`model::Engine`), healthy and idle, never
/// cleaned nor restarted, no stream statistics nor cache limit nor Docker log size known;
/// `fields` set on top.
/// The real-agent test checks that the agent writes exactly these keys.
fn engine_json(id_char: char, name: &str, fields: Value) -> Value {
    let now = chrono::Utc::now();
    let mut e = json!({
        "container_id": id_char.to_string().repeat(64),
        "container_name": name,
        "host": ADVERTISE_HOST,
        "port": 6878,
        "streams": [],
        "health_status": "healthy",
        "last_health_check": rfc3339(now),
        "last_stream_usage": null,
        "last_cache_cleanup": null,
        "cache_size_bytes": null,
        "image": "acestream/engine:latest",
        "labels": {},
        "version": null,
        "first_seen": rfc3339(now - chrono::Duration::days(5)),
        "last_seen": rfc3339(now),
        "cache_current_bytes": null,
        "cache_measured_at": null,
        "cleanups_total": 0,
        "cleanup_failures_total": 0,
        "cache_freed_bytes_total": 0,
        "last_cleanup_error": null,
        "cache_path": "/home/appuser/.ACEStream/.acestream_cache",
        "cache_path_source": "config",
        "cache_medium": "disk",
        "cache_mountpoint": null,
        "restarts_total": 0,
        "last_restart": null,
        "unhealthy_since": null,
        "heal_state": "ok",
        "peers": null,
        "speed_down_bytes": null,
        "speed_up_bytes": null,
        "stalled_streams": 0,
        "cache_limit_bytes": null,
        "cache_limit_source": null,
        "live_cache_type": null,
        "log_bytes": null,
        "log_rotation": null
    });
    for (k, v) in fields.as_object().expect("an object of fields") {
        e[k] = v.clone();
    }
    e
}

/// A moment as `/engines` writes it (chrono's serde: RFC 3339, UTC).
fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> Value {
    json!(t)
}

// ---------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------

/// Two engines as the page should show them: `used` was cleaned by a manual cleanup of
/// 1.5 MiB and then got a stream (event API), `idle` was never used nor cleaned.
async fn two_engines(agent: &TestAgent) -> (TestEngine, TestEngine) {
    let used = agent.engine("page-a-used").await;
    let idle = agent.engine("page-b-idle").await;
    agent.wait_healthy(&used).await;
    agent.wait_healthy(&idle).await;
    used.write_cache_file("movie.chunk", 1536 * 1024);
    let (status, body) = http_post(
        agent.addr(),
        &format!("/engines/{}/cleanup", used.id),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "manual cleanup: {body}");
    let started = json!({
        "container_id": used.id,
        "engine": {"host": "127.0.0.1", "port": used.host_port},
        "stream": {"key_type": "content_id", "key": "page"},
        "session": {"playback_session_id": "s", "stat_url": "", "command_url": "", "is_live": 1}
    });
    let (status, body) = http_post(
        agent.addr(),
        "/events/stream_started",
        &started.to_string(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 200, "stream_started: {body}");
    (used, idle)
}

/// Runs headless Chromium with `args` and the URL; returns stdout. Async (tokio::process):
/// the agent under test serves the page from this same runtime.
async fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
        &profile_arg,
    ])
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{CHROMIUM} did not finish within 60 s loading {url}"))
        .unwrap_or_else(|e| {
            panic!(
                "these tests need headless Chromium: cannot run `{CHROMIUM}` ({e}); \
                 install it with `apt-get install chromium`"
            )
        });
    assert!(
        out.status.success(),
        "{CHROMIUM} failed ({}) loading {url}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("Chromium's DOM dump is UTF-8")
}

async fn dump_dom(url: &str) -> String {
    chromium(&["--dump-dom"], url).await
}

// ---------------------------------------------------------------------------
// reading the dumped DOM (Chromium serialises it in a stable form)
// ---------------------------------------------------------------------------

fn decode_entities(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Value of attribute `name` in a start tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(decode_entities(&tag[start..start + len]))
}

/// Text of the first element after `from` that starts with `open` (e.g. `<span class="value"`).
fn text_after(html: &str, from: usize, open: &str, close: &str) -> Option<String> {
    let start = from + html[from..].find(open)?;
    let content = start + html[start..].find('>')? + 1;
    let end = content + html[content..].find(close)?;
    Some(decode_entities(&html[content..end]))
}

#[derive(Debug)]
struct Card {
    container_id: String,
    title: String,
    /// The health badge (the first one).
    badge: String,
    /// Every badge in the card's head, in page order: health, then `quarantined` if so.
    badges: Vec<String>,
    /// (data-row, label, value) in page order.
    rows: Vec<(String, String, String)>,
}

impl Card {
    fn has_row(&self, key: &str) -> bool {
        self.rows.iter().any(|(k, _, _)| k == key)
    }

    fn row(&self, key: &str) -> &str {
        self.rows
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("card {} has no row {key:?}: {self:?}", self.title))
    }
}

/// Every `section.card[data-container-id]` of the dumped DOM, in page order.
fn cards(dom: &str) -> Vec<Card> {
    let mut out = vec![];
    let mut at = 0;
    while let Some(p) = dom[at..].find("<section") {
        let start = at + p;
        let tag_end = start + dom[start..].find('>').expect("unterminated <section> tag");
        let tag = &dom[start..=tag_end];
        let end = tag_end
            + dom[tag_end..]
                .find("</section>")
                .expect("unclosed <section>");
        at = end;
        let classes = attr(tag, "class").unwrap_or_default();
        if !classes.split_whitespace().any(|c| c == "card") {
            continue;
        }
        let Some(container_id) = attr(tag, "data-container-id") else {
            continue;
        };
        let body = &dom[tag_end..end];
        let title = text_after(body, 0, "<h2", "</h2>").expect("card has a title");
        let badge = text_after(body, 0, "<span class=\"badge", "</span>").unwrap_or_default();
        let head_end = body.find(" class=\"rows\"").unwrap_or(body.len());
        let mut badges = vec![];
        let mut b = 0;
        while let Some(p) = body[b..head_end].find("<span class=\"badge") {
            badges.push(text_after(body, b + p, "<span", "</span>").expect("badge text"));
            b += p + 1;
        }
        let mut rows = vec![];
        let mut r = 0;
        while let Some(p) = body[r..].find(" data-row=\"") {
            let tag_start = body[..r + p].rfind('<').expect("row tag start");
            let tag_end = r + p + body[r + p..].find('>').expect("row tag end");
            let key = attr(&body[tag_start..=tag_end], "data-row").expect("data-row");
            let label =
                text_after(body, tag_end, "<span class=\"label\"", "</span>").expect("row label");
            let value =
                text_after(body, tag_end, "<span class=\"value\"", "</span>").expect("row value");
            rows.push((key, label, value));
            r = tag_end;
        }
        out.push(Card {
            container_id,
            title,
            badge,
            badges,
            rows,
        });
    }
    out
}

/// The status page's display rule for sizes, as the orchestrator's examples show them: 1024-based, two
/// decimals, `N/A` for null or 0.
fn format_bytes(b: Option<u64>) -> String {
    let Some(b) = b.filter(|b| *b != 0) else {
        return "N/A".into();
    };
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut n = b as f64;
    let mut i = 0;
    while n >= 1024.0 && i < units.len() - 1 {
        n /= 1024.0;
        i += 1;
    }
    format!("{n:.2} {}", units[i])
}

/// `^\d+\.\d{2} (KB|MB)$`
fn looks_like_kb_or_mb(s: &str) -> bool {
    let Some((num, unit)) = s.split_once(' ') else {
        return false;
    };
    let Some((int, frac)) = num.split_once('.') else {
        return false;
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() == 2
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (unit == "KB" || unit == "MB")
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp for integration tests.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_one_card_per_engine_with_the_seed_rows() {
    let agent = start_agent("page-cards").await;
    let (used, idle) = two_engines(&agent).await;
    // Each engine's Docker log holds its start-up line once the agent has read it.
    eventually(
        Duration::from_secs(20),
        "both engines' Docker log sizes",
        || async {
            let (_, v) = http_get_json(agent.addr(), "/engines").await;
            let read = v.as_array().is_some_and(|l| {
                l.len() == 2 && l.iter().all(|e| e["log_bytes"].as_u64() > Some(0))
            });
            read.then_some(()).ok_or(v)
        },
    )
    .await;
    let (status, engines) = http_get_json(agent.addr(), "/engines").await;
    assert_eq!(status, 200);
    let engines = engines.as_array().expect("/engines is an array").clone();
    assert_eq!(engines.len(), 2);

    let dom = dump_dom(&format!("http://{}/", agent.addr())).await;
    let cards = cards(&dom);
    assert_eq!(cards.len(), 2, "one card per engine; DOM:\n{dom}");

    // Same order as /engines (by container_name): page-a-used first.
    for (card, e) in cards.iter().zip(&engines) {
        assert_eq!(card.container_id, e["container_id"].as_str().unwrap());
        assert_eq!(
            card.title,
            format!("Engine: {}", e["container_name"].as_str().unwrap())
        );
        assert_eq!(card.badge, "healthy");
        // Heal: never restarted, not quarantined, so no badge but the health one.
        assert_eq!(card.badges, ["healthy"], "{card:?}");
        assert_eq!(e["restarts_total"], 0, "{e}");
        assert_eq!(e["last_restart"], Value::Null, "{e}");
        assert_eq!(e["heal_state"], "ok", "{e}");
        assert_eq!(card.row("restarts"), "0");
        assert_eq!(card.row("last-restart"), "Never");
        // Stream statistics: the used engine's stream has no stat_url, the idle one none, so
        // no engine has any; no cache limit on their command lines either.
        for k in [
            "peers",
            "speed_down_bytes",
            "speed_up_bytes",
            "cache_limit_bytes",
            "cache_limit_source",
            "live_cache_type",
        ] {
            assert_eq!(e[k], Value::Null, "{k}: {e}");
        }
        assert_eq!(e["stalled_streams"], 0, "{e}");
        assert_eq!(card.row("peers"), "N/A");
        assert_eq!(card.row("speed-down"), "N/A");
        assert_eq!(card.row("speed-up"), "N/A");
        assert!(!card.has_row("stalled"), "no stalled streams: {card:?}");
        assert_eq!(card.row("cache-limit"), "N/A");
        assert!(
            !card.has_row("live-cache"),
            "no --live-cache-type: {card:?}"
        );
        // Docker's log of the container: rotated, as this machine's /etc/docker/daemon.json
        // sets log-opts max-size for every container.
        let log = e["log_bytes"].as_u64().expect("a log size");
        assert_eq!(e["log_rotation"], true, "{e}");
        assert_eq!(
            card.row("log-size"),
            format!("{} (rotated)", format_bytes(Some(log)))
        );
        // The crafted engines of the other tests have exactly the agent's fields.
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object().expect("an object").keys().cloned().collect()
        };
        assert_eq!(
            keys(e),
            keys(&engine_json('x', "x", json!({}))),
            "/engines item fields vs engine_json"
        );
        let labels: Vec<&str> = card
            .rows
            .iter()
            .take(6)
            .map(|(_, l, _)| l.as_str())
            .collect();
        assert_eq!(
            labels,
            [
                "Endpoint:",
                "Active Streams:",
                "Last Used:",
                "Health Check:",
                "Cache Cleanup:",
                "Cache Size:"
            ],
            "the orchestrator's panel rows, in its order"
        );
        assert_eq!(
            card.row("endpoint"),
            format!("{}:{}", e["host"].as_str().unwrap(), e["port"]),
            "endpoint = /engines host:port"
        );
        assert_eq!(card.row("health-check"), "Just now");
        // Small print: where the cache is and why there.
        assert_eq!(
            card.row("cache-path"),
            format!(
                "{} ({})",
                e["cache_path"].as_str().unwrap(),
                e["cache_path_source"].as_str().unwrap()
            )
        );
        assert_eq!(
            card.row("cache-path"),
            "/home/appuser/.ACEStream/.acestream_cache (config)"
        );
    }
    let (a, b) = (&cards[0], &cards[1]);
    let (ea, eb) = (&engines[0], &engines[1]);
    assert_eq!(a.container_id, used.id);
    assert_eq!(b.container_id, idle.id);
    assert_eq!(
        a.row("endpoint"),
        format!("{ADVERTISE_HOST}:{}", used.host_port)
    );

    assert_eq!(a.row("active-streams"), "1");
    assert_eq!(a.row("last-used"), "Just now");
    assert_eq!(a.row("cache-cleanup"), "Just now");
    let size = ea["cache_size_bytes"]
        .as_u64()
        .expect("cleaned engine has a size");
    let shown = a.row("cache-size");
    println!("cache_size_bytes {size} shown as {shown:?}");
    assert!(looks_like_kb_or_mb(shown), "size format: {shown:?}");
    assert_eq!(shown, format_bytes(Some(size)));
    // 1.5 MiB plus the directory entry (a few KiB of du -sb) is 1.50 MB whatever du adds.
    assert_eq!(shown, "1.50 MB");

    assert_eq!(eb["cache_size_bytes"], Value::Null);
    assert_eq!(b.row("active-streams"), "0");
    assert_eq!(b.row("last-used"), "Never");
    assert_eq!(b.row("cache-cleanup"), "Never");
    assert_eq!(b.row("cache-size"), "N/A");

    // Self-contained: nothing loaded from elsewhere.
    let (_, page) = http_get(agent.addr(), "/").await;
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(
            !page.contains(external),
            "external asset {external:?} in the page"
        );
    }
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_restarts_and_marks_quarantined_engines() {
    // Three engines heal has dealt with, as /engines reports them: one it gave up on, one
    // stuck again after a restart (waiting longer before the next), one healed days ago.
    let now = chrono::Utc::now();
    let ago = |secs: i64| rfc3339(now - chrono::Duration::seconds(secs));
    let engines = json!([
        engine_json(
            'a',
            "heal-a-quarantined",
            json!({
                "health_status": "unhealthy",
                "restarts_total": 3,
                "last_restart": ago(2 * 3600 + 300),
                "unhealthy_since": ago(3 * 3600),
                "heal_state": "quarantined"
            })
        ),
        engine_json(
            'b',
            "heal-b-backoff",
            json!({
                "health_status": "unhealthy",
                "restarts_total": 1,
                "last_restart": ago(5 * 60 + 10),
                "unhealthy_since": ago(4 * 60),
                "heal_state": "backoff"
            })
        ),
        engine_json(
            'c',
            "heal-c-healed",
            json!({
                "restarts_total": 2,
                "last_restart": ago(3 * 86400 + 3600)
            })
        ),
    ]);
    let addr = serve_page_with(&engines).await;
    let dom = dump_dom(&format!("http://{addr}/")).await;
    let cards = cards(&dom);
    let shown: Vec<(&str, Vec<&str>, &str, &str)> = cards
        .iter()
        .map(|c| {
            (
                c.title.as_str(),
                c.badges.iter().map(String::as_str).collect(),
                c.row("restarts"),
                c.row("last-restart"),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "Engine: heal-a-quarantined",
                vec!["unhealthy", "quarantined"],
                "3",
                "2h ago"
            ),
            ("Engine: heal-b-backoff", vec!["unhealthy"], "1", "5m ago"),
            ("Engine: heal-c-healed", vec!["healthy"], "2", "3d ago"),
        ],
        "(title, badges, restarts, last restart) per card; DOM:\n{dom}"
    );
    assert_eq!(cards[0].container_id, "a".repeat(64));
    // The badge is marked for scripts and says what to do.
    let at = dom
        .find("<span class=\"badge badge-quarantined\"")
        .expect("a quarantined badge in the DOM");
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    assert_eq!(
        attr(tag, "data-heal").as_deref(),
        Some("quarantined"),
        "{tag}"
    );
    assert!(
        attr(tag, "title").is_some_and(|t| t.contains("POST /engines/aaaaaaaaaaaa/heal")),
        "{tag}"
    );
    // The rest of the card as for any engine.
    assert_eq!(cards[0].row("endpoint"), format!("{ADVERTISE_HOST}:6878"));
    assert_eq!(cards[0].row("last-used"), "Never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_stream_statistics_stalls_and_the_cache_limit() {
    // Three engines as /engines reports them once the agent polls their streams' statistics:
    // one busy with a limit its streams state, one whose streams all get nothing (its limit
    // from its command line, its live cache in memory), one with no statistics at all.
    let engines = json!([
        engine_json(
            'a',
            "stats-a-busy",
            json!({
                "streams": ["s-a1", "s-a2"],
                "peers": 12,
                "speed_down_bytes": 1_572_864,
                "speed_up_bytes": 204_800,
                "stalled_streams": 1,
                "cache_current_bytes": 268_435_456,
                "cache_limit_bytes": 1_073_741_824_u64,
                "cache_limit_source": "engine",
                "live_cache_type": "disk"
            })
        ),
        engine_json(
            'b',
            "stats-b-stalled",
            json!({
                "streams": ["s-b1", "s-b2"],
                "peers": 0,
                "speed_down_bytes": 0,
                "speed_up_bytes": 0,
                "stalled_streams": 2,
                "cache_limit_bytes": 2_147_483_648_u64,
                "cache_limit_source": "command_line",
                "live_cache_type": "memory"
            })
        ),
        engine_json('c', "stats-c-none", json!({})),
    ]);
    let addr = serve_page_with(&engines).await;
    let dom = dump_dom(&format!("http://{addr}/")).await;
    let cards = cards(&dom);
    let row_or_none = |c: &Card, k: &str| c.has_row(k).then(|| c.row(k).to_string());
    // (title, peers, down, up, stalled, cache limit, live cache) per card.
    type Shown<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<String>,
        &'a str,
        Option<String>,
    );
    let shown: Vec<Shown> = cards
        .iter()
        .map(|c| {
            (
                c.title.as_str(),
                c.row("peers"),
                c.row("speed-down"),
                c.row("speed-up"),
                row_or_none(c, "stalled"),
                c.row("cache-limit"),
                row_or_none(c, "live-cache"),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "Engine: stats-a-busy",
                "12",
                "1.50 MB/s",
                "200.00 KB/s",
                Some("1".to_string()),
                "1.00 GB (engine)",
                Some("disk".to_string())
            ),
            (
                "Engine: stats-b-stalled",
                "0",
                "0.00 B/s",
                "0.00 B/s",
                Some("2".to_string()),
                "2.00 GB (command line)",
                Some("memory".to_string())
            ),
            (
                "Engine: stats-c-none",
                "N/A",
                "N/A",
                "N/A",
                None,
                "N/A",
                None
            ),
        ],
        "(title, peers, down, up, stalled, cache limit, live cache) per card; DOM:\n{dom}"
    );
    // The rows' labels, and their place: stream statistics right under the separator, the
    // limit beside the current cache.
    let a = &cards[0];
    let keys: Vec<(&str, &str)> = a
        .rows
        .iter()
        .map(|(k, l, _)| (k.as_str(), l.as_str()))
        .skip(6)
        .take(6)
        .collect();
    assert_eq!(
        keys,
        [
            ("peers", "Peers:"),
            ("speed-down", "Download:"),
            ("speed-up", "Upload:"),
            ("stalled", "Stalled Streams:"),
            ("current-cache", "Current Cache:"),
            ("cache-limit", "Cache Limit:"),
        ],
        "{a:?}"
    );
    assert_eq!(a.row("current-cache"), "256.00 MB");
    assert_eq!(a.row("active-streams"), "2");
    // The stalled row says what it means and what to do.
    let at = dom
        .find(" data-row=\"stalled\"")
        .expect("a stalled row in the DOM");
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..at + dom[at..].find('>').unwrap()];
    assert!(
        attr(tag, "title")
            .is_some_and(|t| t.contains("streams.stall_after") && t.contains("heal.stalled")),
        "{tag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_docker_log_size_and_whether_docker_rotates_it() {
    // Engines' Docker logs as /engines reports them: one rotated by Docker, one not rotated
    // and past the 1 GiB of the AcestreamEngineLogLarge alert, one not rotated and small, one
    // rotated and still empty, one with another log driver (null).
    let engines = json!([
        engine_json(
            'a',
            "log-a-rotated",
            json!({"log_bytes": 50_331_648, "log_rotation": true})
        ),
        engine_json(
            'b',
            "log-b-unrotated-large",
            json!({"log_bytes": 2_147_483_648_u64, "log_rotation": false})
        ),
        engine_json(
            'c',
            "log-c-unrotated-small",
            json!({"log_bytes": 1_572_864, "log_rotation": false})
        ),
        engine_json(
            'd',
            "log-d-empty",
            json!({"log_bytes": 0, "log_rotation": true})
        ),
        engine_json('e', "log-e-none", json!({})),
    ]);
    let addr = serve_page_with(&engines).await;
    let dom = dump_dom(&format!("http://{addr}/")).await;
    let cards = cards(&dom);
    let shown: Vec<(&str, &str)> = cards
        .iter()
        .map(|c| (c.title.as_str(), c.row("log-size")))
        .collect();
    assert_eq!(
        shown,
        [
            ("Engine: log-a-rotated", "48.00 MB (rotated)"),
            ("Engine: log-b-unrotated-large", "2.00 GB (not rotated)"),
            ("Engine: log-c-unrotated-small", "1.50 MB (not rotated)"),
            ("Engine: log-d-empty", "0.00 B (rotated)"),
            ("Engine: log-e-none", "N/A"),
        ],
        "(title, log size) per card; DOM:\n{dom}"
    );
    // Small print, under the cache limit.
    for c in &cards {
        let at = c.rows.iter().position(|(k, _, _)| k == "log-size").unwrap();
        assert_eq!(c.rows[at].1, "Log Size:", "{c:?}");
        assert_eq!(c.rows[at - 1].0, "cache-limit", "{c:?}");
    }
    // An unrotated log says what to do about it; past 1 GiB it is marked, as the alert fires.
    let tags: Vec<&str> = dom
        .match_indices(" data-row=\"log-size\"")
        .map(|(at, _)| {
            let start = dom[..at].rfind('<').unwrap();
            &dom[start..at + dom[at..].find('>').unwrap()]
        })
        .collect();
    assert_eq!(tags.len(), 5, "{tags:?}");
    let marks: Vec<(Option<String>, Option<String>, bool)> = tags
        .iter()
        .map(|t| {
            (
                attr(t, "data-rotation"),
                attr(t, "data-large"),
                attr(t, "title").is_some_and(|t| {
                    t.contains("--log-opt max-size=10m --log-opt max-file=3")
                        && t.contains("/etc/docker/daemon.json")
                        && t.contains("never deletes or truncates")
                }),
            )
        })
        .collect();
    let unrotated = |large: bool| {
        (
            Some("false".to_string()),
            large.then(|| "1".to_string()),
            true,
        )
    };
    assert_eq!(
        marks,
        [
            (None, None, false),
            unrotated(true),
            unrotated(false),
            (None, None, false),
            (None, None, false),
        ],
        "(data-rotation, data-large, advice) per log row: {tags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_screenshot_is_written() {
    let agent = start_agent("page-shot").await;
    let _engines = two_engines(&agent).await;
    let path = target_dir().join(SCREENSHOT_NAME);
    let _ = std::fs::remove_file(&path);
    let shot = format!("--screenshot={}", path.display());
    chromium(
        &[&shot, "--window-size=1200,800"],
        &format!("http://{}/", agent.addr()),
    )
    .await;
    let len = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()))
        .len();
    println!("screenshot {} ({len} bytes)", path.display());
    let head = std::fs::read(&path).expect("read the screenshot");
    assert!(
        head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        path.display()
    );
    assert!(
        len > 10 * 1024,
        "a rendered page, not a blank one: {len} bytes"
    );
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_rules_format_sizes_and_times_as_the_seed() {
    // The page's own formatBytes/timeAgo, evaluated by Chromium on a copy of the page.
    let page = include_str!("../../src/http/status.html");
    let probe = r#"<pre id="rules"></pre>
<script>
(function () {
  var now = Date.now();
  function ago(ms) { return new Date(now - ms).toISOString(); }
  var out = {
    sizes: [null, undefined, 0, 1536, 524288, 10485760, 1572864, 1073741824, 1099511627776 * 3]
      .map(function (b) { return window.formatBytes(b); }),
    speeds: [null, undefined, 0, 512, 1536, 204800, 1572864, 1073741824]
      .map(function (b) { return window.formatSpeed(b); }),
    times: [null, ago(0), ago(59 * 1000), ago(-30 * 1000), ago(2 * 60 * 1000 + 5000),
            ago(59 * 60 * 1000), ago(3 * 3600 * 1000 + 60000), ago(23 * 3600 * 1000),
            ago(2 * 86400 * 1000 + 3600000), ago(40 * 86400 * 1000)]
      .map(function (t) { return window.timeAgo(t); })
  };
  document.getElementById("rules").textContent = JSON.stringify(out);
})();
</script>
</body>"#;
    assert!(page.contains("</body>"), "status.html has a body end tag");
    let page = page.replacen("</body>", probe, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rules.html");
    std::fs::write(&file, page).expect("write the probe page");

    let dom = dump_dom(&format!("file://{}", file.display())).await;
    let json = text_after(&dom, 0, "<pre id=\"rules\"", "</pre>")
        .unwrap_or_else(|| panic!("no rules output in the DOM:\n{dom}"));
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(
        v["sizes"],
        json!([
            "N/A",
            "N/A",
            "N/A",
            "1.50 KB",
            "512.00 KB",
            "10.00 MB",
            "1.50 MB",
            "1.00 GB",
            "3.00 TB"
        ])
    );
    assert_eq!(
        v["speeds"],
        json!([
            "N/A",
            "N/A",
            "0.00 B/s",
            "512.00 B/s",
            "1.50 KB/s",
            "200.00 KB/s",
            "1.50 MB/s",
            "1.00 GB/s"
        ])
    );
    assert_eq!(
        v["times"],
        json!([
            "Never", "Just now", "Just now", "Just now", "2m ago", "59m ago", "3h ago", "23h ago",
            "2d ago", "40d ago"
        ])
    );
    // The Rust copy of the size rule used above agrees with the page's.
    assert_eq!(format_bytes(Some(1572864)), "1.50 MB");
    assert_eq!(format_bytes(Some(524288)), "512.00 KB");
    assert_eq!(format_bytes(Some(0)), "N/A");
}
