use super::*;
use std::io::Write;

const SHIPPED: &str = include_str!("../../config/acestream-agent.toml");

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A default-file path that never exists, so no test depends on the machine's /etc.
fn no_default() -> PathBuf {
    PathBuf::from("/nonexistent/acestream-agent-test/config.toml")
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_with(None, &no_default(), &env(pairs))
}

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    load_toml_env(text, &[])
}

fn load_toml_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    Config::load_with(Some(file.path()), &no_default(), &env(pairs))
}

fn invalid_key(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
}

#[test]
fn defaults_match_spec_table() {
    let c = load_env(&[]).expect("defaults load");
    assert_eq!(c.http.listen, "0.0.0.0:9477".parse::<SocketAddr>().unwrap());
    assert_eq!(c.http.token, None);
    assert_eq!(c.docker.host, None);
    assert_eq!(
        c.discovery.labels,
        vec![
            LabelMatch::new("orchestrator.managed", Some("acestream")),
            LabelMatch::new("acestream.engine", Some("true")),
        ]
    );
    assert_eq!(c.discovery.images, vec!["*acestream*", "*acelink*"]);
    assert_eq!(c.discovery.engine_port, 6878);
    assert_eq!(c.discovery.advertise_host, hostname());
    assert_eq!(c.discovery.resync_interval, Duration::from_secs(60));
    assert_eq!(c.health.interval, Duration::from_secs(20));
    assert_eq!(c.health.timeout, Duration::from_secs(5));
    assert_eq!(c.activity.interval, Duration::from_secs(5));
    assert_eq!(c.cleanup.interval, Some(Duration::from_secs(30)));
    assert_eq!(c.cleanup.idle_grace, Some(Duration::from_secs(5)));
    assert_eq!(
        c.cleanup.cache_path,
        "/home/appuser/.ACEStream/.acestream_cache"
    );
    assert_eq!(c.cleanup.exec_timeout, Duration::from_secs(60));
    assert_eq!(c.cleanup.concurrency, 4);
    assert_eq!(c.cleanup.min_bytes, 0);
    assert_eq!(c.cleanup.measure_interval, Some(Duration::from_secs(300)));
    assert_eq!(c.cleanup.method, CacheMethod::Auto);
    assert_eq!(c.pressure.interval, Duration::from_secs(10));
    assert_eq!(c.pressure.min_free, Some(MinFree::Percent(10.0)));
    assert_eq!(c.pressure.docker_root, None);
    assert_eq!(c.pressure.memory_high, Some(90.0));
    assert_eq!(c.pressure.busy_files, BusyFiles::Unopened);
    assert!(c.heal.enabled);
    assert_eq!(c.heal.after, Duration::from_secs(180));
    assert_eq!(c.heal.stop_timeout, Duration::from_secs(10));
    assert_eq!(c.heal.max_restarts, 3);
    assert_eq!(c.heal.window, Duration::from_secs(3600));
    assert_eq!(c.heal.max_per_hour, 10);
    assert_eq!(
        c.heal.skip_labels,
        vec![LabelMatch::new("orchestrator.managed", Some("acestream"))]
    );
    assert!(!c.heal.stalled);
    assert_eq!(c.streams.stat_interval, Some(Duration::from_secs(10)));
    assert_eq!(c.streams.stall_after, Duration::from_secs(120));
    assert_eq!(c.store.path, PathBuf::from("./acestream-agent.redb"));
    assert_eq!(c.store.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.store.history_per_engine, 100);
    assert_eq!(c, Config::default());
}

#[test]
fn store_path_follows_state_directory() {
    let c = load_env(&[("STATE_DIRECTORY", "/var/lib/acestream-agent")]).unwrap();
    assert_eq!(
        c.store.path,
        PathBuf::from("/var/lib/acestream-agent/state.redb")
    );
    let c = load_env(&[("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")]).unwrap();
    assert_eq!(c.store.path, PathBuf::from("/var/lib/a/state.redb"));
    let c = load_env(&[("STATE_DIRECTORY", "")]).unwrap();
    assert_eq!(c.store.path, PathBuf::from("./acestream-agent.redb"));
    // An explicit store.path wins over STATE_DIRECTORY.
    let c = load_toml_env(
        "[store]\npath = \"/srv/x.redb\"\n",
        &[("STATE_DIRECTORY", "/var/lib/acestream-agent")],
    )
    .unwrap();
    assert_eq!(c.store.path, PathBuf::from("/srv/x.redb"));
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let text =
        "[http]\nlisten = \"127.0.0.1:9000\"\n[health]\ninterval = \"1m\"\ntimeout = \"2s\"\n";
    let c = load_toml(text).unwrap();
    assert_eq!(
        c.http.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.health.interval, Duration::from_secs(60));
    assert_eq!(c.health.timeout, Duration::from_secs(2));
    assert_eq!(
        c.activity.interval,
        Duration::from_secs(5),
        "untouched key keeps its default"
    );

    let c = load_toml_env(
        text,
        &[
            ("ACESTREAM_AGENT_HTTP__LISTEN", "127.0.0.1:1"),
            ("ACESTREAM_AGENT_HEALTH__INTERVAL", "90s"),
        ],
    )
    .unwrap();
    assert_eq!(c.http.listen, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
    assert_eq!(c.health.interval, Duration::from_secs(90));
    assert_eq!(
        c.health.timeout,
        Duration::from_secs(2),
        "file value not overridden by env"
    );
}

#[test]
fn default_file_is_read_when_no_config_is_given() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"[cleanup]\nconcurrency = 2\n").unwrap();
    let c = Config::load_with(None, file.path(), &[]).unwrap();
    assert_eq!(c.cleanup.concurrency, 2);
    // --config replaces the default file rather than stacking on it.
    let mut other = tempfile::NamedTempFile::new().unwrap();
    other
        .write_all(b"[cleanup]\nmin_bytes = \"1MiB\"\n")
        .unwrap();
    let c = Config::load_with(Some(other.path()), file.path(), &[]).unwrap();
    assert_eq!(c.cleanup.concurrency, 4);
    assert_eq!(c.cleanup.min_bytes, 1 << 20);
}

#[test]
fn env_values_are_typed_like_figment_env() {
    let c = load_env(&[
        ("ACESTREAM_AGENT_HTTP__LISTEN", "127.0.0.1:1"),
        (
            "ACESTREAM_AGENT_DISCOVERY__LABELS",
            "[a=b, c.d=true, present]",
        ),
        (
            "ACESTREAM_AGENT_DISCOVERY__IMAGES",
            "[\"ghcr.io/x/*\", \"*engine*\"]",
        ),
        ("ACESTREAM_AGENT_CLEANUP__CONCURRENCY", "8"),
        ("ACESTREAM_AGENT_HEALTH__INTERVAL", "45"),
        ("ACESTREAM_AGENT_DISCOVERY__ENGINE_PORT", "16878"),
        ("ACESTREAM_AGENT_HTTP__TOKEN", "007"),
        ("ACESTREAM_AGENT_CLEANUP__MIN_BYTES", "2048"),
        ("acestream_agent_store__retention", "2d"),
    ])
    .unwrap();
    assert_eq!(c.http.listen, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.discovery.labels,
        vec![
            LabelMatch::new("a", Some("b")),
            LabelMatch::new("c.d", Some("true")),
            LabelMatch::new("present", None),
        ]
    );
    assert_eq!(c.discovery.images, vec!["ghcr.io/x/*", "*engine*"]);
    assert_eq!(c.cleanup.concurrency, 8);
    assert_eq!(
        c.health.interval,
        Duration::from_secs(45),
        "integer env duration = seconds"
    );
    assert_eq!(c.discovery.engine_port, 16878);
    assert_eq!(
        c.http.token.as_deref(),
        Some("007"),
        "token kept verbatim, not as number 7"
    );
    assert_eq!(c.cleanup.min_bytes, 2048);
    assert_eq!(c.store.retention, Duration::from_secs(2 * 86_400));

    // Without brackets a single label is one entry.
    let c = load_env(&[("ACESTREAM_AGENT_DISCOVERY__LABELS", "acestream.engine=true")]).unwrap();
    assert_eq!(
        c.discovery.labels,
        vec![LabelMatch::new("acestream.engine", Some("true"))]
    );
}

#[test]
fn memory_high_is_a_percentage_or_off() {
    let c = load_toml("[pressure]\nmemory_high = \"75%\"\n").unwrap();
    assert_eq!(c.pressure.memory_high, Some(75.0));
    let c = load_env(&[("ACESTREAM_AGENT_PRESSURE__MEMORY_HIGH", "off")]).unwrap();
    assert_eq!(c.pressure.memory_high, None);
    assert_eq!(
        load_toml("[pressure]\nmemory_high = \"100%\"\n")
            .unwrap()
            .pressure
            .memory_high,
        Some(100.0)
    );
    for bad in ["\"0%\"", "\"101%\"", "\"90\"", "90", "\"lots\""] {
        assert_eq!(
            invalid_key(load_toml(&format!("[pressure]\nmemory_high = {bad}\n"))),
            "pressure.memory_high",
            "{bad}"
        );
    }
}

#[test]
fn integer_durations_in_toml_are_seconds() {
    let c = load_toml("[discovery]\nresync_interval = 120\n").unwrap();
    assert_eq!(c.discovery.resync_interval, Duration::from_secs(120));
}

#[test]
fn cleanup_method_is_auto_or_exec() {
    let c = load_toml("[cleanup]\nmethod = \"exec\"\n").unwrap();
    assert_eq!(c.cleanup.method, CacheMethod::Exec);
    let c = load_toml("[cleanup]\nmethod = \"auto\"\n").unwrap();
    assert_eq!(c.cleanup.method, CacheMethod::Auto);
    match load_toml("[cleanup]\nmethod = \"host\"\n") {
        Err(e) => assert!(
            e.to_string()
                .contains(r#"expected "auto" or "exec", got "host""#),
            "{e}"
        ),
        Ok(c) => panic!("accepted {c:?}"),
    }
}

#[test]
fn off_is_accepted_where_documented() {
    let c = load_toml(
        "[cleanup]\ninterval = \"off\"\nidle_grace = \"off\"\nmeasure_interval = \"off\"\n\
         [pressure]\nmin_free = \"off\"\n",
    )
    .unwrap();
    assert_eq!(c.cleanup.interval, None);
    assert_eq!(c.cleanup.idle_grace, None);
    assert_eq!(c.cleanup.measure_interval, None);
    assert_eq!(c.pressure.min_free, None);
    for key in [
        "discovery.resync_interval",
        "health.interval",
        "health.timeout",
        "activity.interval",
        "cleanup.exec_timeout",
        "pressure.interval",
        "store.retention",
    ] {
        let (section, name) = key.split_once('.').unwrap();
        let text = format!("[{section}]\n{name} = \"off\"\n");
        assert_eq!(
            invalid_key(load_toml(&text)),
            key,
            "{key} must not accept off"
        );
    }
}

#[test]
fn autoscale_interval_sets_cleanup_interval() {
    let c = load_toml_env(
        "[cleanup]\ninterval = \"off\"\n",
        &[
            ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "10m"),
            ("AUTOSCALE_INTERVAL_S", "45"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.cleanup.interval,
        Some(Duration::from_secs(45)),
        "highest layer wins"
    );
    let c = load_env(&[("AUTOSCALE_INTERVAL_S", "")]).unwrap();
    assert_eq!(
        c.cleanup.interval,
        Some(Duration::from_secs(30)),
        "empty means unset"
    );
    for bad in ["0", "-5", "abc", "1.5", "30s"] {
        assert_eq!(
            invalid_key(load_env(&[("AUTOSCALE_INTERVAL_S", bad)])),
            "AUTOSCALE_INTERVAL_S",
            "value {bad:?}"
        );
    }
}

#[test]
fn missing_config_file_is_a_file_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    match Config::load_with(Some(&missing), &no_default(), &[]) {
        Err(ConfigError::File { path, message }) => {
            assert_eq!(path, missing);
            assert_eq!(message, "not found");
        }
        other => panic!("expected File error, got {other:?}"),
    }
    // A missing *default* file is fine: defaults apply.
    let c = Config::load_with(None, &missing, &[]).unwrap();
    assert_eq!(c, load_env(&[]).unwrap());
    // A directory is unreadable as a file, explicit or default.
    match Config::load_with(None, dir.path(), &[]) {
        Err(ConfigError::File { path, message }) => {
            assert_eq!(path, dir.path());
            assert!(message.starts_with("cannot read"), "{message}");
        }
        other => panic!("expected File error, got {other:?}"),
    }
}

#[test]
fn toml_syntax_error_is_a_file_error() {
    match load_toml("[http\nlisten = 1") {
        Err(ConfigError::File { message, .. }) => {
            assert!(message.contains("line 1"), "{message}")
        }
        other => panic!("expected File error, got {other:?}"),
    }
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    assert_eq!(
        invalid_key(load_toml("[http]\nlistn = \"x\"\n")),
        "http.listn"
    );
    assert_eq!(invalid_key(load_toml("[bogus]\na = 1\n")), "bogus");
    assert_eq!(invalid_key(load_toml("top = 1\n")), "top");
    assert_eq!(
        invalid_key(load_env(&[("ACESTREAM_AGENT_HTTP__LISTN", "x")])),
        "http.listn"
    );
    // A single underscore does not nest, so this is an unknown section, not http.listen.
    assert_eq!(
        invalid_key(load_env(&[("ACESTREAM_AGENT_HTTP_LISTEN", "x")])),
        "http_listen"
    );
}

#[test]
fn error_messages_name_key_and_origin() {
    let err = load_toml("[cleanup]\nconcurrency = 0\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "invalid value for `cleanup.concurrency`: must be between 1 and 64, got 0 (in "
        ),
        "{err}"
    );
    let err = load_env(&[("ACESTREAM_AGENT_HEALTH__TIMEOUT", "0")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid value for `health.timeout`: duration must be greater than zero, got 0 (set by ACESTREAM_AGENT_HEALTH__TIMEOUT)"
    );
    let err = load_toml("http = 5\n").unwrap_err().to_string();
    assert!(
        err.starts_with(
            "invalid value for `http`: invalid type: found signed int `5`, expected a table"
        ),
        "{err}"
    );
    let err = load_toml("[http]\nlistn = 1\n").unwrap_err().to_string();
    assert!(
        err.starts_with(
            "invalid value for `http.listn`: unknown key (known in [http]: listen, token)"
        ),
        "{err}"
    );
}

#[test]
fn bad_values_are_invalid_with_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[http]\nlisten = \"localhost\"", "http.listen"),
        ("[http]\nlisten = \"0.0.0.0\"", "http.listen"),
        ("[http]\nlisten = 9477", "http.listen"),
        ("[http]\ntoken = \"\"", "http.token"),
        ("[http]\ntoken = \"<set>\"", "http.token"),
        ("[http]\ntoken = \"a b\"", "http.token"),
        ("[docker]\nhost = \"\"", "docker.host"),
        ("[discovery]\nengine_port = 0", "discovery.engine_port"),
        ("[discovery]\nengine_port = 65536", "discovery.engine_port"),
        ("[discovery]\nengine_port = -1", "discovery.engine_port"),
        (
            "[discovery]\nengine_port = \"http\"",
            "discovery.engine_port",
        ),
        ("[discovery]\nlabels = [\"\"]", "discovery.labels"),
        ("[discovery]\nlabels = [\"=v\"]", "discovery.labels"),
        ("[discovery]\nlabels = [1]", "discovery.labels"),
        ("[discovery]\nlabels = []\nimages = []", "discovery.labels"),
        ("[discovery]\nimages = [\"\"]", "discovery.images"),
        ("[discovery]\nimages = [\"*a*,*b*\"]", "discovery.images"),
        (
            "[discovery]\nadvertise_host = \"\"",
            "discovery.advertise_host",
        ),
        (
            "[discovery]\nresync_interval = \"0s\"",
            "discovery.resync_interval",
        ),
        ("[health]\ninterval = 0", "health.interval"),
        ("[health]\ninterval = -5", "health.interval"),
        ("[health]\ninterval = \"-5s\"", "health.interval"),
        ("[health]\ninterval = \"soon\"", "health.interval"),
        ("[health]\ninterval = 1.5", "health.interval"),
        ("[health]\ninterval = true", "health.interval"),
        ("[health]\ntimeout = \"5x\"", "health.timeout"),
        ("[activity]\ninterval = \"\"", "activity.interval"),
        ("[cleanup]\ninterval = \"0\"", "cleanup.interval"),
        ("[cleanup]\nidle_grace = \"0ms\"", "cleanup.idle_grace"),
        (
            "[cleanup]\nmeasure_interval = \"never\"",
            "cleanup.measure_interval",
        ),
        ("[cleanup]\nexec_timeout = \"0s\"", "cleanup.exec_timeout"),
        ("[cleanup]\nconcurrency = 0", "cleanup.concurrency"),
        ("[cleanup]\nconcurrency = 65", "cleanup.concurrency"),
        ("[cleanup]\nmin_bytes = -1", "cleanup.min_bytes"),
        ("[cleanup]\nmethod = \"host\"", "cleanup.method"),
        ("[cleanup]\nmethod = 1", "cleanup.method"),
        ("[cleanup]\nmin_bytes = \"5 parsecs\"", "cleanup.min_bytes"),
        ("[cleanup]\ncache_path = \"relative\"", "cleanup.cache_path"),
        ("[cleanup]\ncache_path = \"/etc\"", "cleanup.cache_path"),
        ("[pressure]\ninterval = \"0s\"", "pressure.interval"),
        ("[pressure]\nmin_free = \"0%\"", "pressure.min_free"),
        ("[pressure]\nmin_free = \"100%\"", "pressure.min_free"),
        ("[pressure]\nmin_free = \"150%\"", "pressure.min_free"),
        ("[pressure]\nmin_free = \"-1%\"", "pressure.min_free"),
        ("[pressure]\nmin_free = \"x%\"", "pressure.min_free"),
        ("[pressure]\nmin_free = \"0\"", "pressure.min_free"),
        ("[pressure]\nmin_free = 0", "pressure.min_free"),
        ("[pressure]\nmin_free = \"lots\"", "pressure.min_free"),
        (
            "[pressure]\ndocker_root = \"docker\"",
            "pressure.docker_root",
        ),
        ("[store]\npath = \"\"", "store.path"),
        ("[store]\nretention = \"0d\"", "store.retention"),
        (
            "[store]\nhistory_per_engine = 0",
            "store.history_per_engine",
        ),
        ("[http]\nlisten = [1]", "http.listen"),
        ("http = 5", "http"),
        ("[cleanup]\nconcurrency = \"x\"", "cleanup.concurrency"),
    ];
    for (text, key) in cases {
        assert_eq!(invalid_key(load_toml(text)), *key, "config:\n{text}");
    }
}

#[test]
fn good_values_are_accepted() {
    let c = load_toml(
        "[http]\nlisten = \"[::1]:8080\"\ntoken = \"s3cret\"\n\
         [docker]\nhost = \"unix:///run/docker.sock\"\n\
         [discovery]\nlabels = []\nimages = [\"*ace*\"]\nengine_port = 65535\nadvertise_host = \"agent.example\"\n\
         [cleanup]\ncache_path = \"/dev/shm/.ACEStream/.acestream_cache\"\nmin_bytes = \"1.5KiB\"\nconcurrency = 64\n\
         [pressure]\nmin_free = \"5GiB\"\ndocker_root = \"/var/lib/docker\"\n\
         [store]\nhistory_per_engine = 10\n",
    )
    .unwrap();
    assert_eq!(c.http.listen, "[::1]:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.http.token.as_deref(), Some("s3cret"));
    assert_eq!(c.docker.host.as_deref(), Some("unix:///run/docker.sock"));
    assert!(c.discovery.labels.is_empty());
    assert_eq!(c.discovery.images, vec!["*ace*"]);
    assert_eq!(c.discovery.engine_port, 65535);
    assert_eq!(c.discovery.advertise_host, "agent.example");
    assert_eq!(c.cleanup.cache_path, "/dev/shm/.ACEStream/.acestream_cache");
    assert_eq!(c.cleanup.min_bytes, 1536);
    assert_eq!(c.cleanup.concurrency, 64);
    assert_eq!(c.pressure.min_free, Some(MinFree::Bytes(5 << 30)));
    assert_eq!(
        c.pressure.docker_root,
        Some(PathBuf::from("/var/lib/docker"))
    );
    assert_eq!(c.store.history_per_engine, 10);

    let c = load_toml("[pressure]\nmin_free = \"12.5%\"\n").unwrap();
    assert_eq!(c.pressure.min_free, Some(MinFree::Percent(12.5)));
    let c = load_toml("[pressure]\nmin_free = 1073741824\n").unwrap();
    assert_eq!(c.pressure.min_free, Some(MinFree::Bytes(1 << 30)));
}

#[test]
fn parse_duration_table() {
    let ok: &[(&str, u64)] = &[
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        ("1h30m", 5_400_000),
        ("1m30s", 90_000),
        ("1s500ms", 1_500),
        ("1h 30m", 5_400_000),
        ("30", 30_000),
        (" 45s ", 45_000),
        ("1", 1_000),
    ];
    for (input, ms) in ok {
        assert_eq!(
            parse_duration(input),
            Ok(Duration::from_millis(*ms)),
            "{input:?}"
        );
    }
    for bad in [
        "",
        "0",
        "0s",
        "0ms",
        "0h0m",
        "-5s",
        "s",
        "5x",
        "1.5s",
        "5M",
        "off",
        "abc",
        "30 seconds",
        "99999999999999999999s",
        "9999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
    assert_eq!(
        parse_duration("0s").unwrap_err(),
        "duration must be greater than zero, got \"0s\""
    );
}

#[test]
fn format_duration_round_trips() {
    let cases: &[(u64, &str)] = &[
        (30_000, "30s"),
        (300_000, "5m"),
        (5_400_000, "1h30m"),
        (604_800_000, "7d"),
        (1_500, "1s500ms"),
        (90_061_001, "1d1h1m1s1ms"),
    ];
    for (ms, text) in cases {
        let d = Duration::from_millis(*ms);
        assert_eq!(format_duration(d), *text);
        assert_eq!(parse_duration(text), Ok(d));
    }
}

#[test]
fn parse_size_table() {
    let ok: &[(&str, u64)] = &[
        ("0", 0),
        ("1024", 1024),
        ("500MiB", 500 << 20),
        ("5GiB", 5 << 30),
        ("10KiB", 10 << 10),
        ("1TiB", 1 << 40),
        ("5GB", 5 << 30),
        ("5gb", 5 << 30),
        ("5G", 5 << 30),
        ("1 MiB", 1 << 20),
        ("100B", 100),
        ("1.5KiB", 1536),
        ("0.5GiB", 1 << 29),
    ];
    for (input, bytes) in ok {
        assert_eq!(parse_size(input), Ok(*bytes), "{input:?}");
    }
    for bad in [
        "",
        "MiB",
        "-1",
        "1.5",
        "5XB",
        "5 parsecs",
        "1.2.3GiB",
        "99999999999TiB",
        "18446744073709551616",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
    }
    for n in [1u64, 1023, 1024, 1536, 5 << 30, 1 << 40, 3 << 41, u64::MAX] {
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
    }
    assert_eq!(format_size(5 << 30), "5GiB");
    assert_eq!(format_size(1536), "1536");
}

#[test]
fn label_match_semantics() {
    let labels: HashMap<String, String> = [("a", "1"), ("b", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!("a=1".parse::<LabelMatch>().unwrap().matches(&labels));
    assert!(!"a=2".parse::<LabelMatch>().unwrap().matches(&labels));
    assert!("a".parse::<LabelMatch>().unwrap().matches(&labels));
    assert!("b=".parse::<LabelMatch>().unwrap().matches(&labels));
    assert!(!"c".parse::<LabelMatch>().unwrap().matches(&labels));
    assert_eq!(
        "k=v=w".parse::<LabelMatch>().unwrap(),
        LabelMatch::new("k", Some("v=w"))
    );
    assert_eq!("k=v".parse::<LabelMatch>().unwrap().to_string(), "k=v");
    assert_eq!("k".parse::<LabelMatch>().unwrap().to_string(), "k");
    assert!("=v".parse::<LabelMatch>().is_err());
    assert!("".parse::<LabelMatch>().is_err());
}

#[test]
fn min_free_display() {
    assert_eq!(MinFree::Percent(10.0).to_string(), "10%");
    assert_eq!(MinFree::Percent(12.5).to_string(), "12.5%");
    assert_eq!(MinFree::Bytes(5 << 30).to_string(), "5.00 GB");
    assert_eq!(MinFree::Bytes(1536 << 20).to_string(), "1.50 GB");
    assert_eq!(MinFree::Bytes(512 << 10).to_string(), "512.00 KB");
    assert_eq!(MinFree::Bytes(100).to_string(), "100 bytes");
}

#[test]
fn to_toml_round_trips() {
    let defaults = load_env(&[]).unwrap();
    assert_eq!(load_toml(&defaults.to_toml()).unwrap(), defaults);

    let mut custom = defaults.clone();
    custom.http.listen = "[::1]:1".parse().unwrap();
    custom.docker.host = Some("tcp://docker:2375".into());
    custom.discovery.labels = vec![
        LabelMatch::new("x", None),
        LabelMatch::new("y", Some("a \"q\"")),
    ];
    custom.discovery.images = vec![];
    custom.discovery.advertise_host = "h.example".into();
    custom.discovery.resync_interval = Duration::from_millis(5_400_500);
    custom.cleanup.interval = None;
    custom.cleanup.idle_grace = None;
    custom.cleanup.measure_interval = None;
    custom.cleanup.min_bytes = 1536;
    custom.cleanup.cache_path = "/root/.ACEStream/.acestream_cache".into();
    custom.pressure.min_free = Some(MinFree::Bytes(5 << 30));
    custom.pressure.docker_root = Some("/srv/docker".into());
    custom.store.path = "/var/lib/acestream-agent/state.redb".into();
    let text = custom.to_toml();
    assert_eq!(load_toml(&text).unwrap(), custom, "{text}");

    custom.pressure.min_free = None;
    custom.cleanup.min_bytes = 1 << 20;
    assert_eq!(load_toml(&custom.to_toml()).unwrap(), custom);
    custom.pressure.min_free = Some(MinFree::Percent(2.5));
    assert_eq!(load_toml(&custom.to_toml()).unwrap(), custom);
}

#[test]
fn to_toml_hides_the_token() {
    let mut c = load_env(&[]).unwrap();
    c.http.token = Some("hunter2".into());
    let text = c.to_toml();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("token = \"<set>\""), "{text}");
    assert_eq!(
        invalid_key(load_toml(&text)),
        "http.token",
        "placeholder is not a token"
    );
    assert!(text.contains("resync_interval = \"1m\""), "{text}");
    assert!(text.contains("measure_interval = \"5m\""), "{text}");
    assert!(text.contains("retention = \"7d\""), "{text}");
}

#[test]
fn shipped_config_file_equals_defaults() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(SHIPPED.as_bytes()).unwrap();
    let loaded = Config::load_with(Some(file.path()), &no_default(), &[]).unwrap();
    assert_eq!(loaded, load_env(&[]).unwrap());
    // store.path is commented out in the shipped file, so systemd's StateDirectory still
    // decides where the store lives.
    let state = env(&[("STATE_DIRECTORY", "/var/lib/acestream-agent")]);
    let loaded = Config::load_with(Some(file.path()), &no_default(), &state).unwrap();
    assert_eq!(
        loaded.store.path,
        PathBuf::from("/var/lib/acestream-agent/state.redb")
    );
    // Every key of to_toml's output appears in the shipped file, commented or not.
    for line in load_env(&[]).unwrap().to_toml().lines() {
        let key = line
            .trim_start_matches("# ")
            .split([' ', ':'])
            .next()
            .unwrap_or("");
        if key.is_empty() {
            continue;
        }
        assert!(
            SHIPPED
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = ")) || l == key),
            "shipped file lacks {key:?}"
        );
    }
}

#[test]
fn heal_keys_from_env_and_file_and_their_bounds() {
    let c = load_env(&[
        ("ACESTREAM_AGENT_HEAL__ENABLED", "false"),
        ("ACESTREAM_AGENT_HEAL__AFTER", "90s"),
        ("ACESTREAM_AGENT_HEAL__STOP_TIMEOUT", "0"),
        ("ACESTREAM_AGENT_HEAL__SKIP_LABELS", "[a=b, c]"),
        ("ACESTREAM_AGENT_HEAL__STALLED", "true"),
    ])
    .unwrap();
    assert!(!c.heal.enabled);
    assert_eq!(c.heal.after, Duration::from_secs(90));
    assert_eq!(c.heal.stop_timeout, Duration::ZERO);
    assert_eq!(
        c.heal.skip_labels,
        vec![LabelMatch::new("a", Some("b")), LabelMatch::new("c", None)]
    );
    assert!(c.heal.stalled);
    let c = load_toml("[heal]\nmax_restarts = 5\nwindow = \"2h\"\nskip_labels = []\n").unwrap();
    assert_eq!(
        (c.heal.max_restarts, c.heal.window),
        (5, Duration::from_secs(7200))
    );
    assert!(c.heal.skip_labels.is_empty());
    for (key, value) in [
        ("ACESTREAM_AGENT_HEAL__AFTER", "off"),
        ("ACESTREAM_AGENT_HEAL__AFTER", "0"),
        ("ACESTREAM_AGENT_HEAL__STOP_TIMEOUT", "1500ms"),
        ("ACESTREAM_AGENT_HEAL__MAX_RESTARTS", "0"),
        ("ACESTREAM_AGENT_HEAL__MAX_PER_HOUR", "0"),
        ("ACESTREAM_AGENT_HEAL__ENABLED", "maybe"),
    ] {
        let k = invalid_key(load_env(&[(key, value)]));
        assert!(
            key.to_lowercase().ends_with(&k.replace('.', "__")),
            "{key}={value}: {k}"
        );
    }
}

#[test]
fn busy_files_is_unopened_or_off() {
    let c = load_env(&[("ACESTREAM_AGENT_PRESSURE__BUSY_FILES", "off")]).unwrap();
    assert_eq!(c.pressure.busy_files, BusyFiles::Off);
    assert_eq!(
        invalid_key(load_env(&[("ACESTREAM_AGENT_PRESSURE__BUSY_FILES", "all")])),
        "pressure.busy_files"
    );
}

#[test]
fn streams_keys_and_off() {
    let c = load_env(&[
        ("ACESTREAM_AGENT_STREAMS__STAT_INTERVAL", "off"),
        ("ACESTREAM_AGENT_STREAMS__STALL_AFTER", "30s"),
    ])
    .unwrap();
    assert_eq!(c.streams.stat_interval, None);
    assert_eq!(c.streams.stall_after, Duration::from_secs(30));
    assert_eq!(
        invalid_key(load_env(&[("ACESTREAM_AGENT_STREAMS__STALL_AFTER", "off")])),
        "streams.stall_after"
    );
}

#[test]
fn hostname_is_not_empty() {
    let name = hostname();
    assert!(!name.is_empty());
    assert!(!name.contains('\0'));
}

/// `Config::load` itself, on the real process environment: everything above passes an
/// environment in, and figment's `Jail` restores the process's own afterwards.
// The closure's error type is figment's, fixed by `Jail::expect_with`.
#[allow(clippy::result_large_err)]
#[test]
fn load_reads_the_process_environment() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("agent.toml", "[cleanup]\nconcurrency = 2\n")?;
        jail.set_env("ACESTREAM_AGENT_HTTP__TOKEN", "007");
        jail.set_env("ACESTREAM_AGENT_HEALTH__INTERVAL", "45");
        jail.set_env(AUTOSCALE_ENV, "90");
        let c = Config::load(Some(Path::new("agent.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(c.cleanup.concurrency, 2);
        assert_eq!(c.http.token.as_deref(), Some("007"));
        assert_eq!(c.health.interval, Duration::from_secs(45));
        assert_eq!(c.cleanup.interval, Some(Duration::from_secs(90)));

        jail.set_env("ACESTREAM_AGENT_HEALTH__TIMEOUT", "0");
        let err = Config::load(Some(Path::new("agent.toml")))
            .expect_err("timeout 0 is refused")
            .to_string();
        assert_eq!(
            err,
            "invalid value for `health.timeout`: duration must be greater than zero, got 0 (set by ACESTREAM_AGENT_HEALTH__TIMEOUT)"
        );
        Ok(())
    });
}

#[test]
fn autoscale_interval_does_not_hide_a_bad_cleanup_interval() {
    let result = load_toml_env(
        "[cleanup]\ninterval = \"soon\"\n",
        &[("AUTOSCALE_INTERVAL_S", "45")],
    );
    assert_eq!(invalid_key(result), "cleanup.interval");
}
