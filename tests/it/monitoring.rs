//! The monitoring kit operators import: the Grafana dashboard
//! (grafana/dashboards/acestream-agent.json), its provisioning files and the Prometheus alert
//! rules (config/prometheus/). What is proven here:
//!
//! - the rules pass `promtool check rules`, and `promtool test rules` fires every alert from
//!   synthetic series with its labels and annotations checked;
//! - the scrape config example passes `promtool check config`;
//! - the dashboard keeps the rules of Grafana's dashboard linter (templated datasource, job and
//!   instance variables and matchers, `$__rate_interval` in rates, counters only under
//!   rate/irate/increase, units and descriptions, no overlapping panels), and its engine table
//!   has exactly the orchestrator panel's rows as columns;
//! - against a real Prometheus (Debian's `prometheus` binary, started here on a free loopback
//!   port) scraping a running agent that watches two real fake engines (one idle and cleaned, one
//!   streaming), every dashboard query, with the variables substituted as Grafana would, and
//!   every alert rule returns the expected series for those engines.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `.ci/run` installs it).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use acestream_agent::config::{Config, MinFree};
use acestream_agent::Agent;
use common::*;
use serde_json::Value;

const DASHBOARD: &str = "grafana/dashboards/acestream-agent.json";
const RULES: &str = "config/prometheus/acestream-agent.rules.yml";
const RULES_TEST: &str = "config/prometheus/acestream-agent.rules.test.yml";
const SCRAPE_EXAMPLE: &str = "config/prometheus/prometheus.yml";
const DATASOURCE_PROVISIONING: &str = "grafana/provisioning/datasources/acestream-prometheus.yml";
const DASHBOARD_PROVISIONING: &str = "grafana/provisioning/dashboards/acestream-agent.yml";
/// The scrape job name the example config uses and `AcestreamAgentDown` matches.
const JOB: &str = "acestream-agent";
/// Grafana's current dashboard schema version (its `LATEST_VERSION`, Grafana 12.2+).
const SCHEMA_VERSION: u64 = 42;
/// Grafana units used by the dashboard linter's panel-units-rule, the ones that can apply here.
const KNOWN_UNITS: &[&str] = &[
    "none",
    "string",
    "short",
    "percent",
    "percentunit",
    "bytes",
    "decbytes",
    "kbytes",
    "mbytes",
    "gbytes",
    "binBps",
    "Bps",
    "dateTimeAsIso",
    "dateTimeAsLocal",
    "dateTimeFromNow",
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurations",
    "dtdhms",
    "cps",
    "ops",
    "cpm",
    "opm",
    "bool",
    "bool_on_off",
];
/// The orchestrator's engine panel, top to bottom (the orchestrator's engine card, whose rows the
/// dashboard's "Engine details" table has as columns: README "Monitoring").
const SEED_ENGINE_ROWS: [&str; 7] = [
    "Engine",
    "Endpoint",
    "Active Streams",
    "Last Used",
    "Health Check",
    "Cache Cleanup",
    "Cache Size",
];

// ---------------------------------------------------------------------------
// files and tools
// ---------------------------------------------------------------------------

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read_repo_file(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Runs a tool from the `prometheus` package; a missing one fails with the reason.
fn run_tool(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): install Debian's `prometheus` package (bash .ci/run does)")
        })
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Alert names in the rules file, in order (`- alert: Name` lines).
fn alert_names() -> Vec<String> {
    read_repo_file(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// dashboard walking
// ---------------------------------------------------------------------------

/// Every panel, rows and the panels nested in collapsed rows included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in dash["panels"]
        .as_array()
        .expect("dashboard has a panels array")
    {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter());
        }
    }
    out
}

fn is_row(p: &Value) -> bool {
    p["type"] == "row"
}

fn title(p: &Value) -> &str {
    p["title"].as_str().unwrap_or("<untitled>")
}

fn targets(p: &Value) -> Vec<&Value> {
    p["targets"]
        .as_array()
        .map(|t| t.iter().collect())
        .unwrap_or_default()
}

fn expr(t: &Value) -> &str {
    t["expr"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------
// a small PromQL scanner: enough to find vector selectors, their ranges and the function
// they are passed to, which is what the linter rules look at
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Selector {
    /// Metric name, empty for `{...}` selectors.
    name: String,
    /// The matchers between the braces, split and trimmed.
    matchers: Vec<String>,
    /// The `[...]` range, if any.
    range: Option<String>,
    /// The function whose first argument this selector is, if any.
    func: Option<String>,
}

impl Selector {
    /// The selector as PromQL, without its range: what to query to see the series it picks.
    fn instant(&self) -> String {
        if self.matchers.is_empty() {
            self.name.clone()
        } else {
            format!("{}{{{}}}", self.name, self.matchers.join(", "))
        }
    }
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal starting at `i` (quote char at `i`).
fn skip_string(s: &[char], i: usize) -> usize {
    let q = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != q {
        if s[j] == '\\' && q != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Index just past the bracket group opening at `i`, strings respected.
fn skip_group(s: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            '"' | '\'' | '`' => {
                j = skip_string(s, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        s.iter().collect::<String>()
    )
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Splits matchers on top-level commas.
fn split_matchers(inner: &str) -> Vec<String> {
    let chars: Vec<char> = inner.chars().collect();
    let mut out = vec![];
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                let end = skip_string(&chars, i);
                cur.extend(&chars[i..end.min(chars.len())]);
                i = end;
                continue;
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The vector selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = vec![];
    // The last two significant tokens, to know which function a selector is passed to.
    let mut prev: [String; 2] = [String::new(), String::new()];
    let push_tok = |prev: &mut [String; 2], t: String| {
        prev[0] = std::mem::replace(&mut prev[1], t);
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
            push_tok(&mut prev, "\"".into());
        } else if c == '[' {
            i = skip_group(&s, i, '[', ']');
            push_tok(&mut prev, "]".into());
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (or a duration after `offset`): digits, dots, exponents, units.
            i += 1;
            while i < s.len()
                && (s[i].is_ascii_alphanumeric()
                    || s[i] == '.'
                    || ((s[i] == '+' || s[i] == '-') && matches!(s[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            push_tok(&mut prev, "0".into());
        } else if is_ident_start(c) || c == '{' {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let name: String = s[start..i].iter().collect();
            let lower = name.to_ascii_lowercase();
            let next = skip_ws(&s, i);
            if GROUPING.contains(&lower.as_str()) {
                // The label list that follows is not a selector.
                i = if s.get(next) == Some(&'(') {
                    skip_group(&s, next, '(', ')')
                } else {
                    next
                };
                push_tok(&mut prev, ")".into());
                continue;
            }
            if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) {
                push_tok(&mut prev, name);
                continue;
            }
            if s.get(next) == Some(&'(') && !name.is_empty() {
                // A function call; its parenthesis is the next token.
                push_tok(&mut prev, name);
                i = next;
                continue;
            }
            let func = (prev[1] == "("
                && !prev[0].is_empty()
                && is_ident_start(prev[0].chars().next().unwrap()))
            .then(|| prev[0].clone());
            let mut matchers = vec![];
            i = if s.get(next) == Some(&'{') {
                let end = skip_group(&s, next, '{', '}');
                let inner: String = s[next + 1..end - 1].iter().collect();
                matchers = split_matchers(&inner);
                end
            } else {
                i
            };
            let after = skip_ws(&s, i);
            let range = if s.get(after) == Some(&'[') {
                let end = skip_group(&s, after, '[', ']');
                i = end;
                Some(s[after + 1..end - 1].iter().collect::<String>())
            } else {
                None
            };
            out.push(Selector {
                name,
                matchers,
                range,
                func,
            });
            push_tok(&mut prev, "sel".into());
        } else {
            push_tok(&mut prev, c.to_string());
            i += 1;
        }
    }
    out
}

/// Splits `expr` at its last top-level comparison (`==`, `!=`, `>=`, `<=`, `>`, `<`):
/// `(signal, "op threshold")`. The rules are written `<signal> <comparison> <threshold>`.
fn split_threshold(expr: &str) -> Option<(String, String)> {
    let s: Vec<char> = expr.chars().collect();
    let mut depth = 0i32;
    let mut last = None;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&s, i);
                continue;
            }
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            '=' | '!' | '>' | '<' if depth == 0 => {
                let two = s.get(i + 1) == Some(&'=');
                // `=~` and `!~` only occur inside braces; a lone `=` is not PromQL here.
                if s[i] == '>' || s[i] == '<' || two {
                    last = Some(i);
                    i += if two { 2 } else { 1 };
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    last.map(|at| {
        let signal: String = s[..at].iter().collect();
        let rest: String = s[at..].iter().collect();
        (signal.trim().to_string(), rest.trim().to_string())
    })
}

#[test]
fn promql_scanner_finds_selectors_ranges_and_functions() {
    let sels = selectors(
        r#"sum by (le, trigger) (rate(a_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])) >= 0 and on (job) b_total or max(label_join(c{x="}{"}, "e", ":", "h", "p")) * 3600 > bool 1e+09"#,
    );
    let summary: Vec<(String, usize, Option<String>, Option<String>)> = sels
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.matchers.len(),
                s.range.clone(),
                s.func.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "a_bucket".into(),
                2,
                Some("$__rate_interval".into()),
                Some("rate".into())
            ),
            ("b_total".into(), 0, None, None),
            ("c".into(), 1, None, Some("label_join".into())),
        ]
    );
    assert_eq!(
        split_threshold("(a and on (x) b == 0) > 2.147483648e+09"),
        Some(("(a and on (x) b == 0)".into(), "> 2.147483648e+09".into()))
    );
    assert_eq!(
        split_threshold("time() - a > 300"),
        Some(("time() - a".into(), "> 300".into()))
    );
    assert_eq!(split_threshold(r#"up{job="x"}"#), None);
}

// ---------------------------------------------------------------------------
// Prometheus rules and config
// ---------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check() {
    let out = run_tool("promtool", &["check", "rules", RULES]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "promtool check rules {RULES} failed:\n{text}"
    );
    let names = alert_names();
    assert_eq!(
        names,
        [
            "AcestreamAgentDown",
            "AcestreamAgentDockerUnreachable",
            "AcestreamAgentStoreFailing",
            "AcestreamCacheCleanupsFailing",
            "AcestreamIdleEngineCacheLarge",
            "AcestreamCleanupSweepStalled",
            "AcestreamPressureWatcherStalled",
            "AcestreamEngineUnhealthy",
            "AcestreamEngineQuarantined",
            "AcestreamEngineStreamsStalled",
            "AcestreamEngineCacheOverLimit",
            "AcestreamDiskPressureUnresolved",
            "AcestreamFilesystemFillingUp",
            "AcestreamMemoryCacheNearLimit",
            "AcestreamEngineLogLarge",
        ]
    );
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool found a different number of rules than the {} alerts listed:\n{text}",
        names.len()
    );
}

#[test]
fn every_alert_fires_from_synthetic_series_with_its_labels_and_annotations() {
    let tests = read_repo_file(RULES_TEST);
    for name in alert_names() {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - exp_labels:"
            )),
            "{RULES_TEST} has no case where {name} fires with expected labels"
        );
    }
    let out = run_tool("promtool", &["test", "rules", RULES_TEST]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "promtool test rules {RULES_TEST} failed:\n{text}"
    );
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn scrape_config_example_passes_promtool_check() {
    let out = run_tool("promtool", &["check", "config", SCRAPE_EXAMPLE]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "promtool check config {SCRAPE_EXAMPLE} failed:\n{text}"
    );
    let config = read_repo_file(SCRAPE_EXAMPLE);
    assert!(
        config.contains(&format!("job_name: {JOB}")),
        "the example must use the job name AcestreamAgentDown matches ({JOB})"
    );
    assert!(
        config.contains("acestream-agent.rules.yml"),
        "the example loads the rules"
    );
}

// ---------------------------------------------------------------------------
// dashboard structure (Grafana dashboard linter rules)
// ---------------------------------------------------------------------------

#[test]
fn dashboard_follows_the_grafana_dashboard_linter_rules() {
    let dash = dashboard();
    let mut problems: Vec<String> = vec![];

    // Classic model, current schema, importable (no fixed id) and provisionable (no __inputs).
    assert_eq!(dash["schemaVersion"], SCHEMA_VERSION, "schemaVersion");
    assert!(
        dash["id"].is_null(),
        "id must be null so import and provisioning assign one"
    );
    assert_eq!(dash["uid"], "acestream-agent");
    assert!(
        dash.get("__inputs").is_none(),
        "__inputs breaks file provisioning"
    );
    assert!(!dash["title"].as_str().unwrap_or("").is_empty(), "title");

    // template-datasource-rule, template-job-rule, template-instance-rule, template-label-promql-rule.
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(ds["label"], "Data source");
    for (name, label) in [("job", "Job"), ("instance", "Instance")] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}: a Prometheus query variable");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name} datasource");
        assert_eq!(v["label"], label, "{name} label");
        assert_eq!(v["multi"], true, "{name} multi-select");
        assert_eq!(v["includeAll"], true, "{name} includes All");
        assert_eq!(v["allValue"], ".+", "{name} allValue");
        assert_eq!(v["refresh"], 2, "{name} refreshes on time range change");
        let q = v["query"].as_str().expect("string query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(&format!(", {name})")))
            .unwrap_or_else(|| {
                panic!("{name}: query must be label_values(<selector>, {name}): {q}")
            });
        assert_eq!(selectors(inner).len(), 1, "{name}: one selector in {q}");
    }
    assert!(
        var("instance")["query"]
            .as_str()
            .unwrap()
            .contains(r#"job=~"$job""#),
        "instance values follow the selected job"
    );

    let panels = all_panels(&dash);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, i64, i64, i64, i64)> = vec![];
    let mut exprs = 0;
    for p in &panels {
        let t = title(p);
        if !ids.insert(p["id"].as_i64().unwrap_or(-1)) {
            problems.push(format!("{t}: duplicate or missing panel id {}", p["id"]));
        }
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap_or(-1),
            g["y"].as_i64().unwrap_or(-1),
            g["w"].as_i64().unwrap_or(0),
            g["h"].as_i64().unwrap_or(0),
        );
        if x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > 24 {
            problems.push(format!("{t}: gridPos out of the 24-column grid: {g}"));
        }
        boxes.push((t.to_string(), x, y, w, h));
        if is_row(p) {
            continue;
        }
        // panel-title-description-rule
        if p["description"]
            .as_str()
            .is_none_or(|d| d.trim().len() < 20)
        {
            problems.push(format!("{t}: no description"));
        }
        // panel-datasource-rule
        if p["datasource"]["uid"] != "${datasource}" || p["datasource"]["type"] != "prometheus" {
            problems.push(format!(
                "{t}: datasource is {}, not ${{datasource}}",
                p["datasource"]
            ));
        }
        // panel-units-rule (every panel here, not only the linter's types)
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        if !KNOWN_UNITS.contains(&unit) {
            problems.push(format!(
                "{t}: unit {unit:?} is missing or not a Grafana unit"
            ));
        }
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for prop in o["properties"].as_array().into_iter().flatten() {
                if prop["id"] == "unit"
                    && !KNOWN_UNITS.contains(&prop["value"].as_str().unwrap_or(""))
                {
                    problems.push(format!(
                        "{t}: override unit {} is not a Grafana unit",
                        prop["value"]
                    ));
                }
            }
        }
        if p["type"] == "heatmap" && p["options"]["yAxis"]["unit"] != "s" {
            problems.push(format!("{t}: heatmap y axis must be in seconds"));
        }
        // panel-no-targets-rule
        let ts = targets(p);
        if ts.is_empty() {
            problems.push(format!("{t}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for tg in ts {
            exprs += 1;
            let e = expr(tg);
            let r = tg["refId"].as_str().unwrap_or("");
            if r.is_empty() || !refs.insert(r) {
                problems.push(format!("{t}: missing or duplicate refId {r:?}"));
            }
            if tg["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "{t}/{r}: target datasource is {}",
                    tg["datasource"]
                ));
            }
            let sels = selectors(e);
            if sels.is_empty() {
                problems.push(format!("{t}/{r}: no metric selector in {e}"));
            }
            for s in sels {
                // target-job-rule, target-instance-rule
                for m in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                    if !s.matchers.iter().any(|x| x == m) {
                        problems.push(format!("{t}/{r}: {} lacks {m}", s.instant()));
                    }
                }
                // target-rate-interval-rule
                if matches!(s.func.as_deref(), Some("rate" | "irate"))
                    && s.range.as_deref() != Some("$__rate_interval")
                {
                    problems.push(format!(
                        "{t}/{r}: {}(...) must use [$__rate_interval]",
                        s.func.as_deref().unwrap_or("")
                    ));
                }
                // target-counter-agg-rule
                if s.name.ends_with("_total")
                    && (s.range.is_none()
                        || !matches!(s.func.as_deref(), Some("rate" | "irate" | "increase")))
                {
                    problems.push(format!(
                        "{t}/{r}: counter {} not under rate/irate/increase",
                        s.name
                    ));
                }
            }
        }
    }
    // No two panels overlap.
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let overlap = a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4;
            if overlap {
                problems.push(format!("panels {:?} and {:?} overlap", a.0, b.0));
            }
        }
    }
    println!("{} panels, {exprs} queries checked", panels.len());
    assert!(
        problems.is_empty(),
        "dashboard lint problems:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn dashboard_has_the_panels_operators_need() {
    let dash = dashboard();
    let panels = all_panels(&dash);
    let by_title: HashMap<&str, &Value> = panels
        .iter()
        .filter(|p| !is_row(p))
        .map(|p| (title(p), *p))
        .collect();
    assert_eq!(
        by_title.len(),
        panels.iter().filter(|p| !is_row(p)).count(),
        "panel titles are unique"
    );
    let metric_of = |t: &str| -> Vec<String> {
        let p = by_title
            .get(t)
            .unwrap_or_else(|| panic!("no panel titled {t:?}"));
        targets(p)
            .iter()
            .flat_map(|tg| selectors(expr(tg)))
            .map(|s| s.name)
            .collect()
    };
    let expect = [
        (
            "Engines",
            vec![
                "acestream_agent_engines",
                "acestream_engine_healthy",
                "acestream_engine_active_streams",
            ],
        ),
        (
            "Cache on disk",
            vec!["acestream_engine_cache_current_bytes"],
        ),
        (
            "Freed in the last hour",
            vec!["acestream_cache_freed_bytes_total"],
        ),
        (
            "Cleanups in the last hour",
            vec![
                "acestream_cache_cleanups_total",
                "acestream_cache_cleanup_failures_total",
            ],
        ),
        (
            "Agent connectivity",
            vec![
                "acestream_agent_docker_up",
                "acestream_agent_store_up",
                "up",
            ],
        ),
        (
            "Since last sweep",
            vec!["acestream_agent_last_sweep_timestamp_seconds"],
        ),
        (
            "Cache size per engine",
            vec![
                "acestream_engine_cache_current_bytes",
                "acestream_engine_cache_size_bytes",
            ],
        ),
        (
            "Bytes freed per hour, by engine",
            vec!["acestream_cache_freed_bytes_total"],
        ),
        (
            "Cleanup duration",
            vec!["acestream_cache_cleanup_duration_seconds_bucket"],
        ),
        (
            "Cleanup duration quantiles, by trigger",
            vec!["acestream_cache_cleanup_duration_seconds_bucket"],
        ),
    ];
    for (t, metrics) in expect {
        let got = metric_of(t);
        for m in metrics {
            assert!(
                got.iter().any(|g| g == m),
                "panel {t:?} does not query {m}: {got:?}"
            );
        }
    }
    assert_eq!(by_title["Cleanup duration"]["type"], "heatmap");
    // The fleet row is the first row and its panels sit right under it.
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| is_row(p))
        .map(|p| title(p))
        .collect();
    assert_eq!(rows.first(), Some(&"Fleet"), "rows: {rows:?}");
    // Disk (docs/cache-paths.md#disk-pressure): free space against the threshold per filesystem,
    // pressure episodes, and the live caches stacked.
    assert!(rows.contains(&"Disk"), "rows: {rows:?}");
    assert!(
        rows.contains(&"Memory caches"),
        "the Disk row's memory twin: {rows:?}"
    );
    // Heal: how often the agent restarts engines, and which it gave up on.
    assert!(rows.contains(&"Heal"), "rows: {rows:?}");
    // Streams: what the engines say of their streams (peers, speeds, stalls) and their own
    // cache limit.
    assert!(rows.contains(&"Streams"), "rows: {rows:?}");
    for (t, metrics) in [
        (
            "Free space vs threshold, by filesystem",
            vec![
                "acestream_filesystem_avail_bytes",
                "acestream_filesystem_min_free_bytes",
            ],
        ),
        (
            "Disk pressure, by filesystem",
            vec!["acestream_disk_pressure"],
        ),
        (
            "Live cache per engine, stacked",
            vec!["acestream_engine_cache_current_bytes"],
        ),
        (
            "Cleanups per hour, by trigger",
            vec!["acestream_cache_cleanups_total"],
        ),
        (
            "Cache operations per hour, by method",
            vec!["acestream_agent_cache_operations_total"],
        ),
        (
            "Memory cache free space vs threshold, by engine",
            vec![
                "acestream_filesystem_avail_bytes",
                "acestream_filesystem_min_free_bytes",
            ],
        ),
        (
            "Container memory vs limit, by engine",
            vec![
                "acestream_engine_memory_usage_bytes",
                "acestream_engine_memory_limit_bytes",
            ],
        ),
        (
            "Memory pressure, by engine",
            vec!["acestream_disk_pressure"],
        ),
        (
            "Restarts in the time range",
            vec!["acestream_engine_restarts_total"],
        ),
        ("Quarantined engines", vec!["acestream_engine_quarantined"]),
        (
            "Restarts and quarantine, by engine",
            vec![
                "acestream_engine_quarantined",
                "acestream_engine_restarts_total",
            ],
        ),
        (
            "Restarts per hour, by engine and trigger",
            vec!["acestream_engine_restarts_total"],
        ),
        ("Peers per engine", vec!["acestream_engine_peers"]),
        (
            "Download and upload speed, by engine",
            vec![
                "acestream_engine_download_speed_bytes",
                "acestream_engine_upload_speed_bytes",
            ],
        ),
        (
            "Stalled streams, by engine",
            vec!["acestream_engine_stalled_streams"],
        ),
        (
            "Cache vs its engine's limit, by engine",
            vec![
                "acestream_engine_cache_current_bytes",
                "acestream_engine_cache_limit_bytes",
            ],
        ),
        // Docker's logs, another disk filler, beside the live caches.
        (
            "Docker log size per engine",
            vec!["acestream_engine_log_bytes"],
        ),
    ] {
        let got = metric_of(t);
        for m in metrics {
            assert!(
                got.iter().any(|g| g == m),
                "panel {t:?} does not query {m}: {got:?}"
            );
        }
    }
    assert_eq!(
        by_title["Live cache per engine, stacked"]["fieldConfig"]["defaults"]["custom"]["stacking"]
            ["mode"],
        "normal"
    );
    // Speeds per second, sizes in bytes, both 1024-based as the status page shows them.
    for (t, unit) in [
        ("Download and upload speed, by engine", "binBps"),
        ("Cache vs its engine's limit, by engine", "bytes"),
        ("Docker log size per engine", "bytes"),
        ("Peers per engine", "short"),
        ("Stalled streams, by engine", "short"),
    ] {
        assert_eq!(
            by_title[t]["fieldConfig"]["defaults"]["unit"], unit,
            "{t}: unit"
        );
    }
    // Whether Docker rotates each log is what makes a large one a problem: in every legend.
    for tg in targets(by_title["Docker log size per engine"]) {
        let legend = tg["legendFormat"].as_str().unwrap_or("");
        assert!(
            legend.contains("{{container_name}}") && legend.contains("{{rotation}}"),
            "Docker log size per engine/{}: legend {legend:?} names the engine and its rotation",
            tg["refId"]
        );
    }
}

#[test]
fn engine_table_has_the_seed_panel_rows_as_columns() {
    let dash = dashboard();
    let panels = all_panels(&dash);
    let table = panels
        .iter()
        .find(|p| title(p) == "Engine details")
        .expect("an `Engine details` panel");
    assert_eq!(table["type"], "table");
    let ts = targets(table);
    for t in &ts {
        assert_eq!(
            t["instant"], true,
            "{}: one row per engine needs instant queries",
            t["refId"]
        );
        assert_eq!(t["format"], "table", "{}: table format", t["refId"]);
    }

    // Fields each query produces: its `by (...)` labels (or the metric's own) and `Value #<ref>`.
    let mut fields: BTreeSet<String> = BTreeSet::new();
    for t in &ts {
        let e = expr(t);
        let by = e
            .split_once("by (")
            .and_then(|(_, rest)| rest.split_once(')'))
            .unwrap_or_else(|| panic!("table query {} must aggregate `by (...)` so the merge joins on engine labels only: {e}", t["refId"]))
            .0;
        fields.extend(by.split(',').map(|l| l.trim().to_string()));
        fields.insert(format!("Value #{}", t["refId"].as_str().unwrap()));
    }
    fields.insert("Time".into());

    let tr = table["transformations"]
        .as_array()
        .expect("transformations");
    assert_eq!(
        tr[0]["id"], "merge",
        "rows of all queries merged (outer join) per engine"
    );
    let org = &tr[1];
    assert_eq!(org["id"], "organize");
    let o = &org["options"];
    let excluded: BTreeSet<String> = o["excludeByName"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| **v == true)
        .map(|(k, _)| k.clone())
        .collect();
    let mut shown: Vec<(i64, String)> = fields
        .iter()
        .filter(|f| !excluded.contains(*f))
        .map(|f| {
            let idx = o["indexByName"][f]
                .as_i64()
                .unwrap_or_else(|| panic!("shown field {f} has no position"));
            let name = o["renameByName"][f]
                .as_str()
                .unwrap_or_else(|| panic!("shown field {f} is not renamed to an orchestrator row"))
                .to_string();
            (idx, name)
        })
        .collect();
    shown.sort();
    let columns: Vec<&str> = shown.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(columns, SEED_ENGINE_ROWS, "table columns");

    // Display rules per column.
    let overrides = table["fieldConfig"]["overrides"].as_array().unwrap();
    let props = |col: &str| -> &Vec<Value> {
        overrides
            .iter()
            .find(|o| o["matcher"]["id"] == "byName" && o["matcher"]["options"] == col)
            .unwrap_or_else(|| panic!("no override for column {col}"))["properties"]
            .as_array()
            .unwrap()
    };
    let prop = |col: &str, id: &str| -> Value {
        props(col)
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["value"].clone())
            .unwrap_or(Value::Null)
    };
    let null_text = |col: &str| -> Option<String> {
        prop(col, "mappings").as_array()?.iter().find_map(|m| {
            (m["type"] == "special" && m["options"]["match"] == "null").then(|| {
                m["options"]["result"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
        })
    };
    for col in ["Last Used", "Health Check", "Cache Cleanup"] {
        assert_eq!(prop(col, "unit"), "dateTimeFromNow", "{col} shows time ago");
        assert_eq!(
            null_text(col).as_deref(),
            Some("Never"),
            "{col} without a series"
        );
    }
    assert_eq!(
        prop("Cache Size", "unit"),
        "bytes",
        "Cache Size is 1024-based"
    );
    assert_eq!(
        prop("Cache Size", "decimals"),
        2,
        "Cache Size has two decimals"
    );
    assert_eq!(null_text("Cache Size").as_deref(), Some("N/A"));
    // Timestamps become milliseconds for dateTimeFromNow.
    for (r, m) in [
        ("C", "acestream_engine_last_stream_usage_timestamp_seconds"),
        ("D", "acestream_engine_last_health_check_timestamp_seconds"),
        ("E", "acestream_engine_last_cache_cleanup_timestamp_seconds"),
    ] {
        let t = ts.iter().find(|t| t["refId"] == r).unwrap();
        assert!(
            expr(t).contains(m) && expr(t).ends_with("* 1000"),
            "{r}: {}",
            expr(t)
        );
    }
}

#[test]
fn grafana_provisioning_loads_the_dashboard_from_a_folder() {
    let ds = read_repo_file(DATASOURCE_PROVISIONING);
    for line in [
        "apiVersion: 1",
        "datasources:",
        "type: prometheus",
        "access: proxy",
        "url: ",
    ] {
        assert!(
            ds.contains(line),
            "{DATASOURCE_PROVISIONING} lacks `{line}`"
        );
    }
    let prov = read_repo_file(DASHBOARD_PROVISIONING);
    for line in [
        "apiVersion: 1",
        "providers:",
        "type: file",
        "options:",
        "path: ",
    ] {
        assert!(
            prov.contains(line),
            "{DASHBOARD_PROVISIONING} lacks `{line}`"
        );
    }
    assert!(
        !prov.contains('\t') && !ds.contains('\t'),
        "YAML must not contain tabs"
    );
    let path = prov
        .lines()
        .find_map(|l| l.trim().strip_prefix("path:"))
        .unwrap()
        .trim();
    assert!(
        path.starts_with('/'),
        "provider path must be an absolute folder: {path}"
    );
    assert!(
        prov.contains(&format!("{path}/acestream-agent.json")),
        "the provider file tells where acestream-agent.json goes"
    );
    // A provisioned dashboard must not depend on a datasource uid of one installation.
    let dash = read_repo_file(DASHBOARD);
    assert!(!dash.contains("${DS_"), "no import-only datasource inputs");
}

// ---------------------------------------------------------------------------
// live: a real Prometheus scraping a real agent
// ---------------------------------------------------------------------------

/// A Prometheus server on a free loopback port (`common::prom`), with this test's config:
/// the agent its one target, the shipped rules, 1 s intervals.
struct PromServer {
    server: common::prom::Server,
    addr: SocketAddr,
}

impl PromServer {
    fn start(dir: &Path, agent: SocketAddr) -> PromServer {
        let rules = repo_path(RULES);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{agent}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let server = common::prom::start_prometheus(dir);
        let addr = server.addr;
        PromServer { server, addr }
    }

    async fn wait_ready(&mut self) {
        self.server.wait_ready(Duration::from_secs(20)).await;
    }

    /// `GET /api/v1/query`; `Ok(samples)` for a vector result, `Err` with Prometheus' error
    /// otherwise (invalid PromQL included).
    async fn query(&self, q: &str, time: Option<f64>) -> Result<Vec<Sample>, String> {
        let mut path = format!("/api/v1/query?query={}", common::prom::urlencode(q));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = try_http_get(self.addr, &path).await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {} {}", v["errorType"], v["error"]));
        }
        let data = &v["data"];
        if data["resultType"] != "vector" {
            return Err(format!("expected a vector, got {}", data["resultType"]));
        }
        Ok(data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Sample {
                labels: r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
                time: r["value"][0].as_f64().unwrap_or(f64::NAN),
                value: r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    time: f64,
    value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// What the test knows about its two engines, for the expectations.
struct Ctx {
    idle: String,
    streaming: String,
    /// container_name -> "host:port" from `/engines`.
    endpoints: HashMap<String, String>,
    /// Evaluation time of every query (Prometheus' clock, seconds).
    at: f64,
}

type Check = Box<dyn Fn(&[Sample], &Ctx) -> Result<(), String>>;

fn check(f: impl Fn(&[Sample], &Ctx) -> Result<(), String> + 'static) -> Check {
    Box::new(f)
}

/// Exactly one series whose value satisfies `ok`.
fn one(what: &'static str, ok: impl Fn(f64) -> bool + 'static) -> Check {
    check(move |r, _| match r {
        [s] if ok(s.value) => Ok(()),
        [s] => Err(format!("value {} is not {what}", s.value)),
        _ => Err(format!("expected one series ({what}), got {}", r.len())),
    })
}

#[derive(Clone, Copy)]
enum Who {
    Idle,
    Streaming,
}

/// One series per engine in `want` (by container_name), exactly those unless `optional`
/// names the other one; `ok(engine, sample, ctx)` checks each.
fn per_engine(
    want: &'static [Who],
    optional: Option<Who>,
    ok: impl Fn(Who, &Sample, &Ctx) -> Result<(), String> + 'static,
) -> Check {
    check(move |r, ctx| {
        let name_of = |w: Who| match w {
            Who::Idle => ctx.idle.as_str(),
            Who::Streaming => ctx.streaming.as_str(),
        };
        let mut seen = BTreeSet::new();
        for s in r {
            let name = s.label("container_name");
            let who = [Who::Idle, Who::Streaming]
                .into_iter()
                .find(|w| name_of(*w) == name)
                .ok_or_else(|| format!("series of an unknown engine {name:?}: {:?}", s.labels))?;
            let wanted = want.iter().any(|w| name_of(*w) == name)
                || optional.is_some_and(|o| name_of(o) == name);
            if !wanted {
                return Err(format!("unexpected series for {name}: {s:?}"));
            }
            if !seen.insert(name.to_string()) {
                return Err(format!("two series for {name}"));
            }
            ok(who, s, ctx).map_err(|e| format!("{name}: {e}"))?;
        }
        for w in want {
            if !seen.contains(name_of(*w)) {
                return Err(format!(
                    "no series for {}; got {:?}",
                    name_of(*w),
                    r.iter().map(|s| &s.labels).collect::<Vec<_>>()
                ));
            }
        }
        Ok(())
    })
}

fn both() -> &'static [Who] {
    &[Who::Idle, Who::Streaming]
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// A timestamp in milliseconds that must be within the last two minutes.
fn recent_ms(s: &Sample, ctx: &Ctx) -> Result<(), String> {
    let t = s.value / 1000.0;
    ensure(t <= ctx.at + 1.0 && t >= ctx.at - 120.0, || {
        format!("timestamp {t} not within 2 minutes before {}", ctx.at)
    })
}

/// Expected result of every dashboard query ("panel title/refId"), in a healthy run: two
/// engines, both healthy; the idle one swept every 2 s and freed of 1 MiB once; the streaming one
/// with a connected client, never cleaned.
fn dashboard_expectations() -> Vec<(&'static str, Check)> {
    vec![
        ("Engines/A", one("2 engines", |v| v == 2.0)),
        ("Engines/B", one("2 healthy", |v| v == 2.0)),
        ("Engines/C", one("1 idle", |v| v == 1.0)),
        ("Engines/D", one("1 streaming", |v| v == 1.0)),
        // The idle engine's cache after its cleanup; the streaming one is not measured while the
        // agent has no periodic measurement (cleanup.measure_interval is not implemented yet).
        (
            "Cache on disk/A",
            one("a size under 1 MiB", |v| (0.0..1_048_576.0).contains(&v)),
        ),
        (
            "Freed in the last hour/A",
            one("at least the 1 MiB freed", |v| v >= 1_000_000.0),
        ),
        (
            "Cleanups in the last hour/A",
            one("at least one", |v| v >= 1.0),
        ),
        (
            "Cleanups in the last hour/B",
            one("zero failures", |v| v == 0.0),
        ),
        ("Agent connectivity/A", one("Docker up", |v| v == 1.0)),
        ("Agent connectivity/B", one("store up", |v| v == 1.0)),
        ("Agent connectivity/C", one("scraped", |v| v == 1.0)),
        (
            "Since last sweep/A",
            one("at most 30 s (sweep every 2 s)", |v| {
                (0.0..=30.0).contains(&v)
            }),
        ),
        // The per-host table: one row for the one host.
        ("Hosts/A", one("scraped", |v| v == 1.0)),
        ("Hosts/B", one("2 engines", |v| v == 2.0)),
        ("Hosts/C", one("1 idle", |v| v == 1.0)),
        (
            "Hosts/D",
            one("a size under 1 MiB", |v| (0.0..1_048_576.0).contains(&v)),
        ),
        (
            "Hosts/E",
            one("at least the 1 MiB freed", |v| v >= 1_000_000.0),
        ),
        ("Hosts/F", one("some free space", |v| v > 0.0)),
        // The idle engine only: the streaming one is not idle.
        (
            "Largest idle caches across the fleet/A",
            per_engine(&[Who::Idle], None, |_, s, _| {
                ensure(s.value < 1_048_576.0, || {
                    format!("{} bytes left after cleanup", s.value)
                })
            }),
        ),
        (
            "Engine details/A",
            per_engine(both(), None, |_, s, ctx| {
                let want = &ctx.endpoints[s.label("container_name")];
                ensure(s.label("endpoint") == want, || {
                    format!("endpoint {:?}, /engines says {want:?}", s.label("endpoint"))
                })
            }),
        ),
        (
            "Engine details/B",
            per_engine(both(), None, |who, s, _| match who {
                Who::Idle => ensure(s.value == 0.0, || format!("{} streams", s.value)),
                Who::Streaming => ensure(s.value >= 1.0, || format!("{} streams", s.value)),
            }),
        ),
        // Both used: the idle engine had a short stream (the one that left the 1 MiB behind).
        // "Never" is the streaming engine's "Cache Cleanup" below, by the same rule (no series).
        (
            "Engine details/C",
            per_engine(both(), None, |_, s, ctx| recent_ms(s, ctx)),
        ),
        (
            "Engine details/D",
            per_engine(both(), None, |_, s, ctx| recent_ms(s, ctx)),
        ),
        // Never cleaned: the streaming engine's "Cache Cleanup" shows "Never".
        (
            "Engine details/E",
            per_engine(&[Who::Idle], None, |_, s, ctx| recent_ms(s, ctx)),
        ),
        (
            "Engine details/F",
            per_engine(&[Who::Idle], None, |_, s, _| {
                ensure(s.value >= 0.0, || format!("size {}", s.value))
            }),
        ),
        (
            "Cache size per engine/A",
            per_engine(&[Who::Idle], Some(Who::Streaming), |who, s, _| match who {
                Who::Idle => ensure(s.value < 1_048_576.0, || {
                    format!("{} bytes left after cleanup", s.value)
                }),
                Who::Streaming => Ok(()),
            }),
        ),
        (
            "Cache size per engine/B",
            per_engine(&[Who::Idle], None, |_, _, _| Ok(())),
        ),
        (
            "Bytes freed per hour, by engine/A",
            per_engine(both(), None, |who, s, _| match who {
                Who::Idle => ensure(s.value > 0.0, || format!("freed {} B/h", s.value)),
                Who::Streaming => ensure(s.value == 0.0, || format!("freed {} B/h", s.value)),
            }),
        ),
        (
            "Active streams per engine/A",
            per_engine(both(), None, |who, s, _| match who {
                Who::Idle => ensure(s.value == 0.0, || format!("{} streams", s.value)),
                Who::Streaming => ensure(s.value >= 1.0, || format!("{} streams", s.value)),
            }),
        ),
        (
            "Engine health/A",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 1.0, || format!("healthy = {}", s.value))
            }),
        ),
        // Heal: both engines healthy all along, so never restarted nor quarantined; every
        // trigger's series is there at 0.
        (
            "Restarts in the time range/A",
            check(|r, _| {
                let got: BTreeMap<&str, f64> =
                    r.iter().map(|s| (s.label("trigger"), s.value)).collect();
                ensure(
                    got.keys().copied().eq(["manual", "stalled", "unhealthy"]),
                    || format!("triggers {got:?}"),
                )?;
                ensure(got.values().all(|v| *v == 0.0), || {
                    format!("restarts: {got:?}")
                })
            }),
        ),
        (
            "Quarantined engines/A",
            one("none quarantined", |v| v == 0.0),
        ),
        (
            "Restarts and quarantine, by engine/A",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 0.0, || format!("quarantined = {}", s.value))
            }),
        ),
        ("Restarts and quarantine, by engine/B", no_restarts()),
        ("Restarts and quarantine, by engine/C", no_restarts()),
        ("Restarts and quarantine, by engine/D", no_restarts()),
        ("Restarts and quarantine, by engine/E", no_restarts()),
        // Only restarted engines are drawn: none. Checked for validity (and its selector for
        // matching series) only.
        (
            "Restarts per hour, by engine and trigger/A",
            check(|r, _| ensure(r.is_empty(), || format!("{r:?}"))),
        ),
        // Streams: no stream of either engine has statistics (the streaming one's viewer is a
        // connection, the idle one's visit ended at once), so peers and speeds are absent, and
        // neither engine states a cache limit; see ABSENT_IN_LIVE_RUN.
        ("Peers per engine/A", empty()),
        ("Download and upload speed, by engine/A", empty()),
        ("Download and upload speed, by engine/B", empty()),
        // Present for every engine, 0 without watched streams.
        (
            "Stalled streams, by engine/A",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 0.0, || format!("{} stalled", s.value))
            }),
        ),
        ("Cache vs its engine's limit, by engine/A", empty()),
        ("Cache vs its engine's limit, by engine/B", empty()),
        (
            "Cleanup duration/A",
            check(|r, _| {
                let les: BTreeSet<&str> = r.iter().map(|s| s.label("le")).collect();
                ensure(les.len() == 15 && les.contains("+Inf"), || {
                    format!("buckets {les:?}")
                })?;
                let inf = r.iter().find(|s| s.label("le") == "+Inf").unwrap();
                ensure(inf.value > 0.0, || "no cleanup in the interval".into())
            }),
        ),
        ("Cleanup duration quantiles, by trigger/A", sweep_quantile()),
        ("Cleanup duration quantiles, by trigger/B", sweep_quantile()),
        (
            // The agent runs as root here: every cache is reached from the host.
            "Cache operations per hour, by method/A",
            check(|r, _| {
                let got: BTreeMap<&str, f64> =
                    r.iter().map(|s| (s.label("method"), s.value)).collect();
                ensure(got.keys().copied().eq(["exec", "host"]), || {
                    format!("methods {got:?}")
                })?;
                ensure(got["host"] > 0.0 && got["exec"] == 0.0, || {
                    format!("host only: {got:?}")
                })
            }),
        ),
        (
            "Cleanups per hour, by trigger/A",
            check(|r, _| {
                let got: BTreeMap<&str, f64> =
                    r.iter().map(|s| (s.label("trigger"), s.value)).collect();
                ensure(
                    got.keys().copied().eq([
                        "manual",
                        "pressure",
                        "pressure_busy",
                        "stream_end",
                        "sweep",
                    ]),
                    || format!("triggers {got:?}"),
                )?;
                ensure(got["sweep"] > 0.0, || format!("no sweep cleanups: {got:?}"))?;
                ensure(got.iter().all(|(k, v)| *k == "sweep" || *v == 0.0), || {
                    format!("only sweeps ran: {got:?}")
                })
            }),
        ),
        // Absent by design: only engines with failures are drawn, and there are none. The query
        // is checked for validity (and its selector for matching series) only.
        (
            "Cleanup failures per hour, by engine/A",
            check(|r, _| ensure(r.is_empty(), || format!("{r:?}"))),
        ),
        // The idle engine keeps its cache in its container's own filesystem: one disk,
        // Docker's root, with pressure.min_free = 1 byte and so never under pressure.
        (
            "Free space vs threshold, by filesystem/A",
            one_filesystem(|v| v > 1.0),
        ),
        (
            "Free space vs threshold, by filesystem/B",
            one_filesystem(|v| v == 1.0),
        ),
        (
            "Disk pressure, by filesystem/A",
            one_filesystem(|v| v == 0.0),
        ),
        // The streaming engine's tmpfs: 256 MiB, far from full, and its container far from
        // its 512 MiB limit.
        (
            "Memory cache free space vs threshold, by engine/A",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.label("mountpoint") == "/home/appuser/.ACEStream", || {
                    format!("{:?}", s.labels)
                })?;
                ensure(
                    (128.0 * 1048576.0..=256.0 * 1048576.0).contains(&s.value),
                    || format!("{} bytes free", s.value),
                )
            }),
        ),
        (
            "Memory cache free space vs threshold, by engine/B",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.value == 1.0, || format!("min_free {}", s.value))
            }),
        ),
        (
            "Container memory vs limit, by engine/A",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.value > 0.0 && s.value < 256.0 * 1048576.0, || {
                    format!("{} bytes used", s.value)
                })
            }),
        ),
        (
            "Container memory vs limit, by engine/B",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.value == 512.0 * 1048576.0, || {
                    format!("limit {}", s.value)
                })
            }),
        ),
        (
            "Memory pressure, by engine/A",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.value == 0.0, || format!("pressure {}", s.value))
            }),
        ),
        // Both engines run on this machine's Docker daemon, whose /etc/docker/daemon.json sets
        // log-opts max-size: their logs are rotated, and small.
        (
            "Docker log size per engine/A",
            per_engine(both(), None, |_, s, _| {
                ensure(s.label("rotation") == "true", || {
                    format!("rotation {:?}", s.label("rotation"))
                })?;
                ensure((0.0..1_073_741_824.0).contains(&s.value), || {
                    format!("{} bytes", s.value)
                })
            }),
        ),
        (
            "Live cache per engine, stacked/A",
            per_engine(&[Who::Idle], Some(Who::Streaming), |who, s, _| match who {
                Who::Idle => ensure(s.value < 1_048_576.0, || {
                    format!("{} bytes left after cleanup", s.value)
                }),
                Who::Streaming => Ok(()),
            }),
        ),
    ]
}

/// No series: what a query returns by design here (checked for validity, and its selectors
/// for matching series or being [`ABSENT_IN_LIVE_RUN`] or [`EMPTY_IN_LIVE_RUN`]).
fn empty() -> Check {
    check(|r, _| ensure(r.is_empty(), || format!("{r:?}")))
}

/// One series per engine, both at 0 restarts.
fn no_restarts() -> Check {
    per_engine(both(), None, |_, s, _| {
        ensure(s.value == 0.0, || format!("{} restarts", s.value))
    })
}

/// Exactly one series, of a named filesystem, whose value satisfies `ok`.
fn one_filesystem(ok: impl Fn(f64) -> bool + 'static) -> Check {
    check(move |r, _| match r {
        [s] if !s.label("mountpoint").is_empty() && ok(s.value) => Ok(()),
        _ => Err(format!("expected one filesystem series: {r:?}")),
    })
}

fn sweep_quantile() -> Check {
    check(|r, _| match r {
        [s] if s.label("trigger") == "sweep" => ensure(s.value > 0.0 && s.value <= 120.0, || {
            format!("{} s", s.value)
        }),
        _ => Err(format!("expected the sweep trigger only: {r:?}")),
    })
}

/// Per alert: the expected series of its signal (the expression without its threshold), in the
/// same healthy run. Every alert is quiet there; the signal shows it watches real series.
fn alert_expectations() -> Vec<(&'static str, Check)> {
    vec![
        ("AcestreamAgentDown", one("up = 1", |v| v == 1.0)),
        (
            "AcestreamAgentDockerUnreachable",
            one("docker_up = 1", |v| v == 1.0),
        ),
        (
            "AcestreamAgentStoreFailing",
            one("store_up = 1", |v| v == 1.0),
        ),
        (
            "AcestreamCacheCleanupsFailing",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 0.0, || format!("{} failures", s.value))
            }),
        ),
        // Only the idle engine passes the `active_streams == 0` join.
        (
            "AcestreamIdleEngineCacheLarge",
            per_engine(&[Who::Idle], None, |_, s, _| {
                ensure(s.value < 1_048_576.0, || format!("{} bytes", s.value))
            }),
        ),
        (
            "AcestreamCleanupSweepStalled",
            one("seconds since the last sweep <= 30", |v| {
                (0.0..=30.0).contains(&v)
            }),
        ),
        (
            "AcestreamPressureWatcherStalled",
            one("seconds since the last pressure round <= 30", |v| {
                (0.0..=30.0).contains(&v)
            }),
        ),
        (
            "AcestreamEngineUnhealthy",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 1.0, || format!("healthy = {}", s.value))
            }),
        ),
        // Both healthy all along: heal never gave up on either.
        (
            "AcestreamEngineQuarantined",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 0.0, || format!("quarantined = {}", s.value))
            }),
        ),
        // No stream with statistics, so none stalled; the series is there for both.
        (
            "AcestreamEngineStreamsStalled",
            per_engine(both(), None, |_, s, _| {
                ensure(s.value == 0.0, || format!("{} stalled", s.value))
            }),
        ),
        // Neither engine states a cache limit: no ratio to compute (its cache_current_bytes
        // selector still matches the live series; the limit's is ABSENT_IN_LIVE_RUN).
        ("AcestreamEngineCacheOverLimit", empty()),
        (
            "AcestreamDiskPressureUnresolved",
            one_filesystem(|v| v == 0.0),
        ),
        (
            "AcestreamMemoryCacheNearLimit",
            per_engine(&[Who::Streaming], None, |_, s, _| {
                ensure(s.value == 0.0, || format!("pressure {}", s.value))
            }),
        ),
        // Needs 30 minutes of history before it extrapolates: empty in a fresh run (its
        // selector is still checked against the live series).
        (
            "AcestreamFilesystemFillingUp",
            check(|r, _| ensure(r.is_empty(), || format!("{r:?}"))),
        ),
        // Both engines' logs are rotated (this machine's daemon.json sets log-opts max-size),
        // so no series has rotation="false"; see EMPTY_IN_LIVE_RUN.
        ("AcestreamEngineLogLarge", empty()),
    ]
}

/// A dashboard expression as Grafana sends it: job and instance set to one selected value each
/// (multi-value variables are regex-escaped, as Grafana's Prometheus datasource does),
/// `$__rate_interval` for a 1 s scrape interval.
fn interpolate(expr: &str, instance: &str) -> String {
    let escaped: String = instance
        .chars()
        .flat_map(|c| {
            if "$^*{}[]'+?.()|\\".contains(c) {
                vec!['\\', '\\', c]
            } else {
                vec![c]
            }
        })
        .collect();
    expr.replace("${datasource}", "")
        .replace("$__rate_interval", "15s")
        .replace("$__interval_ms", "15000")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("${job}", JOB)
        .replace("$job", JOB)
        .replace("${instance}", &escaped)
        .replace("$instance", &escaped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_query_returns_engine_series_from_real_prometheus() {
    let case = unique_name("monitoring");
    let idle = TestEngine::builder()
        .name_prefix("mon-idle")
        .label(CASE_LABEL, &case)
        .start();
    // The streaming engine keeps its cache in memory (a tmpfs, under a memory limit), so the
    // memory panels and alert have a series to show.
    let streaming = TestEngine::builder()
        .name_prefix("mon-stream")
        .label(CASE_LABEL, &case)
        .docker_arg("--mount")
        .docker_arg("type=tmpfs,destination=/home/appuser/.ACEStream,tmpfs-size=256m")
        .docker_arg("--memory")
        .docker_arg("512m")
        .start();
    idle.wait_http_ready().await;
    streaming.wait_http_ready().await;
    // The viewer connects before the agent starts, so no sweep ever finds this engine idle.
    let _viewer = streaming.stream_client();
    eventually(
        Duration::from_secs(10),
        "the viewer's connection",
        || async { (streaming.established_connections() >= 1).then_some(()) },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.discovery.labels = vec![format!("{CASE_LABEL}={case}").parse().unwrap()];
    cfg.discovery.images = vec![];
    cfg.store.path = dir.path().join("state.redb");
    cfg.activity.interval = Duration::from_millis(200);
    cfg.health.interval = Duration::from_secs(1);
    cfg.cleanup.interval = Some(Duration::from_secs(2));
    cfg.cleanup.idle_grace = None;
    cfg.cleanup.exec_timeout = Duration::from_secs(10);
    // Pressure on, with a threshold no disk reaches, so the filesystem series are all there.
    cfg.pressure.min_free = Some(MinFree::Bytes(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = Agent::start(cfg, listener).await.unwrap();

    let mut prom = PromServer::start(dir.path(), agent.addr);
    prom.wait_ready().await;

    // Both engines known, healthy, the streaming one busy; and a few scrapes of that state.
    let engines = eventually(
        Duration::from_secs(15),
        "both engines healthy, one streaming",
        || async {
            let (_, v) = http_get_json(agent.addr, "/engines").await;
            let list = v.as_array().cloned().unwrap_or_default();
            let ok = list.len() == 2
                && list.iter().all(|e| e["health_status"] == "healthy")
                && list.iter().any(|e| {
                    e["container_name"] == streaming.name.as_str()
                        && e["streams"].as_array().is_some_and(|s| !s.is_empty())
                });
            ok.then_some(list).ok_or(v)
        },
    )
    .await;
    let started = Instant::now();
    eventually(
        Duration::from_secs(20),
        "3 successful scrapes of the agent",
        || async {
            let r = prom
                .query(&format!(r#"sum_over_time(up{{job="{JOB}"}}[1m])"#), None)
                .await?;
            match r.as_slice() {
                [s] if s.value >= 3.0 => Ok(()),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await;
    println!("3 scrapes after {:?}", started.elapsed());
    // The sweep's interval, which AcestreamCleanupSweepStalled scales with (2 s here).
    let r = prom
        .query(
            &format!(r#"acestream_agent_cleanup_interval_seconds{{job="{JOB}"}}"#),
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(r.as_slice(), [s] if s.value == 2.0),
        "cleanup interval: {r:?}"
    );

    // Now, with Prometheus watching, the idle engine gets 1 MiB of cache for a sweep to free.
    let freed_before = freed_total(agent.addr, &idle.name).await;
    let mut attempt = 0;
    let written = loop {
        attempt += 1;
        // Right after a sweep, so the file is in place well before the next one, and written
        // beside the cache and renamed into it, so no sweep sees half a file.
        after_sweeps_within(&agent, 1, Duration::from_secs(10)).await;
        let written = Instant::now();
        idle.exec(&[
            "/usr/bin/busybox",
            "sh",
            "-c",
            r#"head -c 1048576 /dev/urandom > "$1.tmp" && mv "$1.tmp" "$2/monitoring.bin""#,
            "sh",
            "/home/appuser/.ACEStream/monitoring",
            &idle.cache_dir,
        ]);
        // As a stream would have written it (the sweep does not look again at a cache it
        // found empty unless the engine has streamed since).
        stream_visit(agent.addr, &idle.id).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && freed_total(agent.addr, &idle.name).await < freed_before + 1_000_000
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if freed_total(agent.addr, &idle.name).await >= freed_before + 1_000_000 {
            break written;
        }
        // A sweep measures, then deletes in a second exec: a file that lands in between is
        // deleted without being counted (seen once under load before the write waited for a
        // sweep to finish). Write it again.
        let left = idle.list_cache();
        assert!(
            left.is_empty() && attempt < 3,
            "the sweep did not free the 1 MiB file (attempt {attempt}); cache holds {left:?}"
        );
        println!("attempt {attempt}: the file was deleted between a sweep's measure and delete");
    };
    let freed_query = format!(
        r#"sum(increase(acestream_cache_freed_bytes_total{{job="{JOB}", container_name="{}"}}[15s]))"#,
        idle.name
    );
    let at = eventually(
        Duration::from_secs(10),
        "Prometheus to see the 1 MiB freed",
        || async {
            let r = prom.query(&freed_query, None).await?;
            match r.as_slice() {
                [s] if s.value >= 1_000_000.0 => Ok(s.time),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await;
    println!(
        "1 MiB freed by a sweep and scraped {:?} after the file was written",
        written.elapsed()
    );

    let ctx = Ctx {
        idle: idle.name.clone(),
        streaming: streaming.name.clone(),
        endpoints: engines
            .iter()
            .map(|e| {
                (
                    e["container_name"].as_str().unwrap().to_string(),
                    format!("{}:{}", e["host"].as_str().unwrap(), e["port"]),
                )
            })
            .collect(),
        at,
    };
    let instance = agent.addr.to_string();
    let mut failures: Vec<String> = vec![];

    // Every dashboard query.
    let dash = dashboard();
    let mut expectations: BTreeMap<&str, Check> = dashboard_expectations().into_iter().collect();
    let mut checked = 0;
    for p in all_panels(&dash).into_iter().filter(|p| !is_row(p)) {
        for t in targets(p) {
            let key = format!("{}/{}", title(p), t["refId"].as_str().unwrap_or("?"));
            let q = interpolate(expr(t), &instance);
            let Some(expect) = expectations.remove(key.as_str()) else {
                failures.push(format!("{key}: no expectation in this test for `{q}`"));
                continue;
            };
            checked += 1;
            check_query(&prom, &key, &q, &expect, &ctx, &mut failures).await;
        }
    }
    for key in expectations.keys() {
        failures.push(format!(
            "{key}: expected a dashboard query that is not there"
        ));
    }

    // Every alert rule, as Prometheus loaded and evaluated it.
    let rules = eventually(Duration::from_secs(15), "every rule evaluated", || async {
        let (status, body) = try_http_get(prom.addr, "/api/v1/rules").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        evaluated
            .then_some(rules)
            .ok_or(format!("HTTP {status}: {body}"))
    })
    .await;
    let mut alert_expect: BTreeMap<&str, Check> = alert_expectations().into_iter().collect();
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        let q = r["query"].as_str().unwrap_or("");
        if r["type"] != "alerting" {
            failures.push(format!("{name}: not an alerting rule"));
            continue;
        }
        if r["health"] != "ok" {
            failures.push(format!(
                "{name}: health {} ({})",
                r["health"], r["lastError"]
            ));
        }
        if r["state"] != "inactive" {
            failures.push(format!("{name}: {} in a healthy setup", r["state"]));
        }
        if r["duration"].as_f64().unwrap_or(0.0) < 60.0 {
            failures.push(format!("{name}: `for:` under a minute ({})", r["duration"]));
        }
        for a in ["summary", "description"] {
            if r["annotations"][a]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                failures.push(format!("{name}: no {a} annotation"));
            }
        }
        if r["labels"]["severity"].as_str().is_none() {
            failures.push(format!("{name}: no severity label"));
        }
        let Some(expect) = alert_expect.remove(name) else {
            failures.push(format!("{name}: no expectation in this test for `{q}`"));
            continue;
        };
        checked += 1;
        // The whole rule: valid, and quiet.
        check_query(
            &prom,
            name,
            q,
            &check(|r, _| ensure(r.is_empty(), || format!("fires: {r:?}"))),
            &ctx,
            &mut failures,
        )
        .await;
        // Its signal, without the threshold: the engines it watches.
        match split_threshold(q) {
            Some((signal, threshold)) => {
                println!("{name}: signal `{signal}`, fires when `{threshold}`");
                check_query(
                    &prom,
                    &format!("{name} (signal)"),
                    &signal,
                    &expect,
                    &ctx,
                    &mut failures,
                )
                .await;
            }
            None => failures.push(format!(
                "{name}: no `<signal> <comparison> <threshold>` in `{q}`"
            )),
        }
    }
    for key in alert_expect.keys() {
        failures.push(format!(
            "{key}: expected an alert rule that Prometheus did not load"
        ));
    }

    println!("{checked} dashboard queries and alert rules checked at t={at:.3}");

    // Prometheus scrapes with `Accept-Encoding: gzip`, and the agent answered gzip'd: what it
    // ingested per scrape is every sample of the plain exposition.
    let (plain, scraped) = eventually(
        Duration::from_secs(15),
        "a scrape with as many samples as the plain text",
        || async {
            let (_, text) = http_get(agent.addr, "/metrics").await;
            let plain = text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count() as f64;
            let r = prom
                .query(&format!("scrape_samples_scraped{{job=\"{JOB}\"}}"), None)
                .await?;
            let scraped = r.first().map(|s| s.value).unwrap_or(-1.0);
            (scraped == plain)
                .then_some((plain, scraped))
                .ok_or(format!("plain {plain}, scraped {scraped}"))
        },
    )
    .await;
    println!("gzip'd scrape: {scraped} samples, plain text {plain}");
    drop(prom);
    agent.stop().await;
    assert!(
        failures.is_empty(),
        "{} problems:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The idle engine's `cache_freed_bytes_total` in `/engines`.
async fn freed_total(agent: SocketAddr, name: &str) -> u64 {
    let (status, v) = http_get_json(agent, &format!("/engines/{name}")).await;
    assert_eq!(status, 200, "GET /engines/{name}: {v}");
    v["cache_freed_bytes_total"].as_u64().unwrap_or(0)
}

/// Families no engine of the live run has a series of: peers and speeds exist only for an
/// engine with a started stream the engine gives statistics of (none here: the streaming
/// engine's viewer is a connection, the idle one's stream visit ends at once, and the fake
/// engines answer no statistics unless a test writes them), and the cache limit only for an
/// engine that states one (none of the fake engines has a cache-limit flag). A selector of
/// these may match nothing, but the family must be one the agent exports, as the golden
/// exposition (tests/fixtures/metrics.prom) has it, so a typo still cannot pass as "no data".
const ABSENT_IN_LIVE_RUN: [&str; 4] = [
    "acestream_engine_peers",
    "acestream_engine_download_speed_bytes",
    "acestream_engine_upload_speed_bytes",
    "acestream_engine_cache_limit_bytes",
];

/// Why a selector matching no series in the live run is a failure, or `None` if its metric is
/// one of [`ABSENT_IN_LIVE_RUN`], a gauge of the agent's golden exposition.
fn unexpectedly_absent(s: &Selector) -> Option<String> {
    if !ABSENT_IN_LIVE_RUN.contains(&s.name.as_str()) {
        return Some(format!("selector {} matches no series", s.instant()));
    }
    let golden = read_repo_file("tests/fixtures/metrics.prom");
    (!golden.contains(&format!("\n# TYPE {} gauge\n", s.name))).then(|| {
        format!(
            "selector {} matches no series, and {} is no gauge of tests/fixtures/metrics.prom",
            s.instant(),
            s.name
        )
    })
}

/// Selectors that match no series in the live run although their family has series there: a
/// matcher (`label="value"`) of a family that no series of the live run has. The engines run
/// on this machine's Docker daemon, whose /etc/docker/daemon.json sets log-opts max-size, so
/// Docker rotates their logs and every `acestream_engine_log_bytes` series has
/// `rotation="true"` (an unrotated log is tests/pressure.rs's, on a private daemon).
const EMPTY_IN_LIVE_RUN: [(&str, &str); 1] =
    [("acestream_engine_log_bytes", r#"rotation="false""#)];

/// The matcher of `s` that [`EMPTY_IN_LIVE_RUN`] says no series of the live run has, if any.
fn empty_by_design(s: &Selector) -> Option<&'static str> {
    EMPTY_IN_LIVE_RUN
        .iter()
        .find(|(name, m)| s.name == *name && s.matchers.iter().any(|x| x == m))
        .map(|(_, m)| *m)
}

/// Why `s`, one of [`EMPTY_IN_LIVE_RUN`] by its `matcher`, matching no series is a failure, or
/// `None`: without that matcher it must match live series that all carry the matcher's label
/// (so neither the family nor the label is a typo), and the golden exposition
/// (tests/fixtures/metrics.prom) must have a series of the family with the matcher's value (so
/// the value is not one either).
async fn empty_by_design_but_wrong(
    prom: &PromServer,
    s: &Selector,
    matcher: &str,
    at: f64,
) -> Option<String> {
    let (label, _) = matcher
        .split_once('=')
        .filter(|(l, v)| !l.ends_with('!') && !v.starts_with('~'))
        .unwrap_or_else(|| panic!("EMPTY_IN_LIVE_RUN has equality matchers only: {matcher}"));
    let rest = Selector {
        matchers: s
            .matchers
            .iter()
            .filter(|m| *m != matcher)
            .cloned()
            .collect(),
        ..s.clone()
    };
    let r = match prom.query(&rest.instant(), Some(at)).await {
        Ok(r) => r,
        Err(e) => return Some(format!("selector {}: {e}", rest.instant())),
    };
    if r.is_empty() {
        return Some(format!(
            "selector {} matches no series, nor does {} without {matcher}",
            s.instant(),
            rest.instant()
        ));
    }
    if let Some(x) = r.iter().find(|x| !x.labels.contains_key(label)) {
        return Some(format!(
            "selector {} matches no series, and a series of {} has no label {label}: {:?}",
            s.instant(),
            rest.instant(),
            x.labels
        ));
    }
    let golden = read_repo_file("tests/fixtures/metrics.prom");
    let prefix = format!("{}{{", s.name);
    (!golden
        .lines()
        .any(|l| l.starts_with(&prefix) && l.contains(matcher)))
    .then(|| {
        format!(
            "selector {} matches no series, and tests/fixtures/metrics.prom has no {} series with {matcher}",
            s.instant(),
            s.name
        )
    })
}

/// Evaluates `q` at `ctx.at`: it must be valid, each of its selectors must match series (so a
/// typo in a metric or label cannot pass as "no data"; those of [`ABSENT_IN_LIVE_RUN`] may
/// match none if the agent exports them, and those of [`EMPTY_IN_LIVE_RUN`] if their family
/// has series there with the label), and the result must pass `expect`.
async fn check_query(
    prom: &PromServer,
    key: &str,
    q: &str,
    expect: &Check,
    ctx: &Ctx,
    failures: &mut Vec<String>,
) {
    for s in selectors(q) {
        match prom.query(&s.instant(), Some(ctx.at)).await {
            Ok(r) if r.is_empty() => {
                let why = match empty_by_design(&s) {
                    Some(matcher) => empty_by_design_but_wrong(prom, &s, matcher, ctx.at).await,
                    None => unexpectedly_absent(&s),
                };
                if let Some(why) = why {
                    failures.push(format!("{key}: {why}"))
                }
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{key}: selector {}: {e}", s.instant())),
        }
    }
    match prom.query(q, Some(ctx.at)).await {
        Ok(r) => {
            let shown: Vec<String> = r
                .iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s.labels
                            .get("container_name")
                            .or(s.labels.get("trigger"))
                            .map(String::as_str)
                            .unwrap_or(""),
                        s.value
                    )
                })
                .collect();
            println!("{key}: {shown:?}");
            if let Err(e) = expect(&r, ctx) {
                failures.push(format!("{key}: {e}\n    query: {q}"));
            }
        }
        Err(e) => failures.push(format!(
            "{key}: invalid or failing query: {e}\n    query: {q}"
        )),
    }
}
