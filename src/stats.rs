//! Stream statistics (README "Stream statistics"): every `streams.stat_interval`, each started
//! stream's engine is asked what it says of the stream (`stat_url`), a bounded number at once,
//! and the answers go to the registry in one command per round.
//!
//! A `stat_url` comes from whoever posted the stream event, so it must never make the agent
//! fetch anything else: only its path and query are used, and only a path under `/ace/stat/`
//! (what the engine serves statistics at), sent to the engine's own probe address (its IP, or
//! loopback on the host's network) as the health probe is; another host, port or scheme in
//! the URL is ignored or refused. The requests hold their local ports in [`ProbePorts`], so the
//! connection probe never takes them for clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::Value;
use tracing::debug;

use crate::activity::ProbePorts;
use crate::health::{http_get, probe_addr};
use crate::model::{StreamRecord, StreamStatus};
use crate::registry::{RegistryCmd, RegistryHandle, StatAnswer, StatResult};
use crate::shutdown::Shutdown;

/// Statistics requests in flight at once.
const CONCURRENCY: usize = 16;
/// What a statistics answer may weigh; the engine's is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;
/// The path prefix of the engine's statistics.
const STAT_PREFIX: &str = "/ace/stat/";

/// The path and query the engine is asked for a `stat_url`, or why it is not asked. Pure.
pub fn stat_target(stat_url: &str) -> Result<String, String> {
    let url = stat_url.trim();
    let rest = if url.starts_with('/') {
        url
    } else {
        let (scheme, after) = url
            .split_once("://")
            .ok_or_else(|| "stat_url is neither an http URL nor a path".to_string())?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("stat_url scheme {scheme:?} is not http"));
        }
        // The authority (host, port, credentials) is the engine's own address, whatever the
        // URL says.
        match after.find(['/', '?', '#']) {
            Some(i) => &after[i..],
            None => "/",
        }
    };
    let path_query = rest.split('#').next().unwrap_or("");
    if !path_query.starts_with(STAT_PREFIX) {
        return Err(format!("stat_url path is not under {STAT_PREFIX}"));
    }
    if path_query
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
        || path_query.split(['/', '?']).any(|seg| seg == "..")
    {
        return Err("stat_url path has blanks, control characters or ..".into());
    }
    Ok(path_query.to_string())
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An engine's statistics answer: `{"response": {...}, "error": null}`. Pure.
pub fn parse_answer(body: &[u8]) -> StatResult {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return StatResult::Failed;
    };
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let text = e
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        return StatResult::EngineError(text.chars().take(200).collect());
    }
    let Some(r) = v.get("response").filter(|r| r.is_object()) else {
        return StatResult::Failed;
    };
    let n = |k: &str| r.get(k).and_then(number);
    StatResult::Answer(StatAnswer {
        status: r
            .get("status")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(64).collect()),
        peers: n("peers"),
        speed_down: n("speed_down"),
        speed_up: n("speed_up"),
        downloaded: n("downloaded"),
        uploaded: n("uploaded"),
        disk_cache_limit: r
            .get("disk_cache_stats")
            .and_then(|d| d.get("disk_cache_limit"))
            .and_then(number)
            .filter(|b| *b > 0),
    })
}

pub struct StreamStats {
    pub registry: RegistryHandle,
    pub interval: Duration,
    pub timeout: Duration,
    pub stall_after: Duration,
    pub ports: ProbePorts,
}

impl StreamStats {
    pub async fn run(self, mut shutdown: Shutdown) {
        // The first round half an interval after the start: the connection probe also ticks
        // from the start, and a round's burst of connections landing on its reads makes them
        // read the engines' whole connection tables.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.interval / 2,
            self.interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let Ok(streams) = self
                .registry
                .list_streams(None, Some(StreamStatus::Started))
                .await
            else {
                return;
            };
            let streams: Vec<StreamRecord> = streams
                .into_iter()
                .filter(|s| !s.stat_url.is_empty())
                .collect();
            if streams.is_empty() {
                continue;
            }
            let snap = self.registry.snapshot();
            let addrs: HashMap<&str, SocketAddr> = snap
                .engines
                .iter()
                .filter(|e| e.running)
                .filter_map(|e| Some((e.engine.container_id.as_str(), probe_addr(e)?)))
                .collect();
            // Owned futures: a spawned task's borrows inside a stream of futures do not satisfy
            // the compiler's higher-ranked bounds.
            let asks: Vec<_> = streams
                .into_iter()
                .map(|s| {
                    let addr = addrs.get(s.container_id.as_str()).copied();
                    let (ports, timeout) = (self.ports.clone(), self.timeout);
                    async move {
                        let r = ask(&s, addr, timeout, &ports).await;
                        (s.id, r)
                    }
                })
                .collect();
            let results: Vec<(String, StatResult)> = futures_util::stream::iter(asks)
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            self.registry
                .send(RegistryCmd::StreamStats {
                    at: Utc::now(),
                    stall_after: self.stall_after,
                    results,
                })
                .await;
        }
    }
}

/// One stream's statistics from its engine at `addr` (`None`: the engine has no address now).
async fn ask(
    s: &StreamRecord,
    addr: Option<SocketAddr>,
    timeout: Duration,
    ports: &ProbePorts,
) -> StatResult {
    let path = match stat_target(&s.stat_url) {
        Ok(p) => p,
        Err(why) => return StatResult::Refused(why),
    };
    let Some(addr) = addr else {
        return StatResult::Failed;
    };
    match http_get(addr, &path, timeout, ports, &s.container_id).await {
        Ok((_, body)) if body.len() <= MAX_ANSWER => parse_answer(&body),
        Ok(_) => StatResult::Failed,
        Err(e) => {
            debug!(stream = %s.id, error = %e, "no statistics");
            StatResult::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_path_and_query_under_ace_stat_are_asked() {
        let ok = |u: &str| stat_target(u).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:6878/ace/stat/abc/s1"),
            "/ace/stat/abc/s1"
        );
        // Another host, port, credentials: the engine is asked all the same.
        assert_eq!(
            ok("http://user:pw@169.254.169.254:80/ace/stat/abc/s1?x=1#frag"),
            "/ace/stat/abc/s1?x=1"
        );
        assert_eq!(ok("HTTPS://proxy.example/ace/stat/a/b"), "/ace/stat/a/b");
        assert_eq!(ok("/ace/stat/a/b"), "/ace/stat/a/b");
        for bad in [
            "file:///etc/passwd",
            "unix:/var/run/docker.sock",
            "unix:///var/run/docker.sock:/containers/json",
            "gopher://x/ace/stat/a",
            "http://127.0.0.1:2375/containers/json",
            "http://engine/server/api?method=stop",
            "http://engine",
            "/ace/stat/../../server/api",
            "/ace/stat/a b",
            "ace/stat/a",
            "",
        ] {
            assert!(stat_target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_engines_answer_and_its_errors() {
        let body = br#"{"response": {"status": "dl", "peers": 7, "speed_down": 512,
            "speed_up": 40, "downloaded": 1048576, "uploaded": 2048.0,
            "disk_cache_stats": {"avail": 1000, "disk_cache_limit": 2147483648,
            "inactive_inuse": 0, "active_inuse": 5}}, "error": null}"#;
        assert_eq!(
            parse_answer(body),
            StatResult::Answer(StatAnswer {
                status: Some("dl".into()),
                peers: Some(7),
                speed_down: Some(512),
                speed_up: Some(40),
                downloaded: Some(1_048_576),
                uploaded: Some(2048),
                disk_cache_limit: Some(2_147_483_648),
            })
        );
        assert_eq!(
            parse_answer(br#"{"response": null, "error": "unknown playback session id"}"#),
            StatResult::EngineError("unknown playback session id".into())
        );
        assert_eq!(parse_answer(b"<html>"), StatResult::Failed);
        assert_eq!(parse_answer(br#"{"response": 3}"#), StatResult::Failed);
        assert!(matches!(
            parse_answer(br#"{"response": {"peers": -1, "status": 5}}"#),
            StatResult::Answer(StatAnswer {
                peers: None,
                status: None,
                ..
            })
        ));
    }
}
