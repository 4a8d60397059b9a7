//! What runs inside an engine container to measure and clear its cache
//! (docs/cache-paths.md#docker-exec). Pure: argv builders and output parsing; the janitor runs them
//! through `docker::exec`.
//!
//! One fixed script, the cache path passed as `$1` and never pasted into it, so no container
//! label or config value can become shell code. One exec measures, deletes and measures again:
//! the janitor does its idle re-check right before this exec, so the window in which a new
//! stream could meet a deleting janitor is one exec long, and a file written between a
//! separate measure and delete can no longer be deleted without being counted.
//!
//! The script refuses a cache directory that is a symlink or resolves through one (it would
//! lead outside the directory), deletes entries with `rm -rf`, which removes symlinks
//! themselves rather than what they point to, and keeps the directory so a running engine can
//! go on writing. `du -sb` is tried first; busybox has no `-b`, so `du -sk` × 1024 is the
//! fallback.

use super::{Mode, Outcome, Sizes};

/// `$1` path, `$2` mode (`measure` | `clear`), `$3` min bytes: a cache smaller than that is
/// measured but kept, `$4` the engine's HTTP port inside the container (0: no guard), `$5` the
/// remote ports (space-separated) of the agent's own health checks, which are no client. Output
/// lines: `before <bytes>`, `after <bytes>` (absent when nothing was deleted), `kept`, `busy`,
/// `empty`. A directory that is missing (size 0) or holds no entries is `empty` in both modes
/// and nothing is deleted from it (nothing to clean is not a cleanup:
/// docs/cache-paths.md#nothing-to-clean). Exit codes name the refusal so failures carry a reason an
/// operator can act on.
///
/// After the checks the directory is entered (`cd -P`) and everything else is relative to it:
/// a directory swapped for a symlink after the checks is not followed. The entries to delete
/// are listed first (before measuring), then, right before deleting, the container's own
/// connection table (`/proc/net/tcp{,6}`, the exec runs in the container's network namespace)
/// is read: a client
/// connected to the engine's port means a stream the agent may not know of yet, and nothing is
/// deleted (`busy`). Whatever a stream writes was written while its connection was open, so
/// every listed entry is either older than that connection (which the check then sees) or
/// belongs to no live stream.
const SCRIPT: &str = r#"d="$1"; mode="$2"; min="${3:-0}"; port="${4:-0}"; ign=" ${5:-} "
if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "before 0"; echo empty; exit 0; fi
if [ -L "$d" ]; then echo "cache directory is a symlink; refusing to follow it" >&2; exit 10; fi
if [ ! -d "$d" ]; then echo "cache path is not a directory" >&2; exit 11; fi
r=$(readlink -f "$d" 2>/dev/null) || r="$d"
if [ "$r" != "$d" ]; then echo "cache path resolves through a symlink to $r; refusing" >&2; exit 12; fi
cd -P -- "$d" 2>/dev/null || { echo "cannot enter the cache directory" >&2; exit 11; }
r=$(pwd -P)
if [ "$r" != "$d" ]; then echo "cache path resolves through a symlink to $r; refusing" >&2; exit 12; fi
size() {
  out=$(du -sb . 2>/dev/null); n=${out%%[!0-9]*}
  if [ -n "$n" ]; then echo "$n"; return 0; fi
  out=$(du -sk . 2>/dev/null); n=${out%%[!0-9]*}
  if [ -n "$n" ]; then echo $((n * 1024)); return 0; fi
  return 1
}
busy() {
  hex=$(printf '%04X' "$1")
  for t in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$t" ] || continue
    while read -r _ l r st _; do
      case "$l" in *:"$hex") ;; *) continue ;; esac
      [ "$st" = 01 ] || continue
      rp=${r##*:}
      case "$rp" in *[!0-9A-Fa-f]*|"") continue ;; esac
      case "$ign" in *" $((0x$rp)) "*) continue ;; esac
      return 0
    done < "$t"
  done
  return 1
}
set -- ./* ./.[!.]* ./..?*
b=$(size) || { echo "du failed" >&2; exit 14; }
echo "before $b"
e=empty
for f in "$@"; do if [ -e "$f" ] || [ -L "$f" ]; then e=; break; fi; done
if [ -n "$e" ]; then echo empty; exit 0; fi
[ "$mode" = clear ] || exit 0
if [ "$b" -lt "$min" ]; then echo kept; exit 0; fi
if [ "$port" -gt 0 ] && busy "$port"; then echo busy; exit 0; fi
rc=0
# One rm for all entries (a pattern that matched nothing is a missing path, which -f ignores).
rm -rf -- "$@" || rc=13
a=$(size) || { echo "du failed after deleting" >&2; exit 14; }
echo "after $a"
exit $rc
"#;

/// argv for `docker exec`: `sh -c SCRIPT sh PATH MODE MIN_BYTES 0`, without the live-stream
/// guard (see [`guarded_argv`]): the script's own tests run it so.
#[cfg(test)]
pub fn argv(path: &str, mode: Mode) -> Vec<String> {
    guarded_argv(path, mode, 0, &[])
}

/// argv for `docker exec`: `sh -c SCRIPT sh PATH MODE MIN_BYTES PORT`. With a non-zero
/// `engine_port`, a clear deletes nothing while a client is connected to that port inside the
/// container (`Outcome::Busy`); connections from `own_ports` (the agent's health checks, as
/// the engine sees their remote port) do not count.
pub fn guarded_argv(path: &str, mode: Mode, engine_port: u16, own_ports: &[u16]) -> Vec<String> {
    let (mode, min) = match mode {
        Mode::Measure => ("measure", 0),
        Mode::Clear { min_bytes } => ("clear", min_bytes),
    };
    let min = min.to_string();
    let port = engine_port.to_string();
    let own: Vec<String> = own_ports.iter().map(u16::to_string).collect();
    let own = own.join(" ");
    ["sh", "-c", SCRIPT, "sh", path, mode, &min, &port, &own]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Interprets the exit code and output of one run of the script.
pub fn parse(exit_code: i64, stdout: &str, stderr: &str) -> Outcome {
    let mut before = None;
    let mut after = None;
    let mut busy = false;
    let mut empty = false;
    for l in stdout.lines().map(str::trim) {
        busy |= l == "busy";
        empty |= l == "empty";
        match l.split_once(' ') {
            Some(("before", n)) => before = n.trim().parse::<u64>().ok(),
            Some(("after", n)) => after = n.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    let reason = || {
        let e = stderr.trim();
        let e = e.lines().last().unwrap_or("").trim();
        if e.is_empty() && (129..=159).contains(&exit_code) {
            // A shell reports a process killed by signal n as 128 + n: the container stopped
            // or was removed while the script ran.
            format!(
                "cache script killed by signal {} (container stopped or removed during the \
                 cleanup?)",
                exit_code - 128
            )
        } else if e.is_empty() {
            format!("cache script exited with code {exit_code}")
        } else {
            format!("{e} (exit code {exit_code})")
        }
    };
    match exit_code {
        0 if empty && before.is_some() => Outcome::Empty {
            before: before.unwrap_or(0),
        },
        0 if busy && before.is_some() => Outcome::Busy {
            before: before.unwrap_or(0),
        },
        0 if before.is_some() => Outcome::Done(Sizes {
            before: before.unwrap_or(0),
            after,
        }),
        13 => Outcome::Failed {
            before,
            reason: format!("some cache entries could not be deleted: {}", reason()),
        },
        _ => Outcome::Failed {
            before,
            reason: reason(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the script with the host's `sh` (the same POSIX shell features as in containers)
    /// and parses its output as the janitor does.
    fn run_on_host(argv: &[String]) -> Outcome {
        let o = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        parse(
            o.status.code().unwrap_or(-1) as i64,
            &String::from_utf8_lossy(&o.stdout),
            &String::from_utf8_lossy(&o.stderr),
        )
    }

    #[test]
    fn path_is_an_argument_never_part_of_the_script() {
        let evil = "/cache/$(touch /pwned)\"; rm -rf / #";
        let a = argv(evil, Mode::Clear { min_bytes: 7 });
        assert_eq!(a[0..2], ["sh", "-c"]);
        assert!(!a[2].contains(evil));
        assert_eq!(a[3..], ["sh", evil, "clear", "7", "0", ""]);
        assert_eq!(argv("/c", Mode::Measure)[5..], ["measure", "0", "0", ""]);
        assert_eq!(
            guarded_argv("/c", Mode::Clear { min_bytes: 0 }, 6878, &[40000, 40001])[5..],
            ["clear", "0", "6878", "40000 40001"]
        );
    }

    #[test]
    fn parses_sizes_and_missing() {
        let done = |before, after| Outcome::Done(Sizes { before, after });
        assert_eq!(parse(0, "before 12345\n", ""), done(12345, None));
        assert_eq!(
            parse(0, "before 12345\nafter 4096\n", ""),
            done(12345, Some(4096))
        );
        assert_eq!(parse(0, "before 100\nkept\n", ""), done(100, None));
        assert_eq!(parse(0, "before 0\nafter 0\n", ""), done(0, Some(0)));
        assert_eq!(
            parse(0, "before 4096\nempty\n", ""),
            Outcome::Empty { before: 4096 }
        );
        assert_eq!(
            parse(0, "before 300\nbusy\n", ""),
            Outcome::Busy { before: 300 }
        );
    }

    #[test]
    fn refusals_carry_the_reason() {
        assert_eq!(
            parse(
                10,
                "",
                "cache directory is a symlink; refusing to follow it\n"
            ),
            Outcome::Failed {
                before: None,
                reason: "cache directory is a symlink; refusing to follow it (exit code 10)".into()
            }
        );
        match parse(
            13,
            "before 9000\nafter 4096\n",
            "rm: can't remove '/c/x': Permission denied\n",
        ) {
            Outcome::Failed { before, reason } => {
                assert_eq!(before, Some(9000));
                assert!(
                    reason.starts_with("some cache entries could not be deleted: rm: can't remove")
                );
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            parse(137, "before 5\n", ""),
            Outcome::Failed {
                before: Some(5),
                reason: "cache script killed by signal 9 (container stopped or removed during \
                         the cleanup?)"
                    .into()
            }
        );
        assert_eq!(
            parse(127, "", ""),
            Outcome::Failed {
                before: None,
                reason: "cache script exited with code 127".into()
            }
        );
        assert_eq!(
            parse(0, "garbage", ""),
            Outcome::Failed {
                before: None,
                reason: "cache script exited with code 0".into()
            }
        );
    }

    /// The script itself, run by the host's sh on a temp dir: contents gone, dir kept, dotfiles
    /// too, symlinks removed without following them.
    #[test]
    fn script_clears_contents_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(cache.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), b"keep").unwrap();
        std::fs::write(cache.join("a"), vec![1u8; 8192]).unwrap();
        std::fs::write(cache.join(".hidden"), b"x").unwrap();
        std::fs::write(cache.join("..dots"), b"x").unwrap();
        std::fs::write(cache.join("sub/b"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("link")).unwrap();
        let path = cache.canonicalize().unwrap();
        let path = path.to_str().unwrap();
        let run = |mode| {
            let a = argv(path, mode);
            run_on_host(&a)
        };
        match run(Mode::Measure) {
            Outcome::Done(Sizes {
                before,
                after: None,
            }) => assert!(before >= 8192, "{before}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 5);
        // Below min_bytes: measured, kept.
        match run(Mode::Clear { min_bytes: 1 << 30 }) {
            Outcome::Done(Sizes {
                before,
                after: None,
            }) => assert!(before >= 8192, "{before}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 5);
        match run(Mode::Clear { min_bytes: 0 }) {
            Outcome::Done(Sizes {
                before,
                after: Some(after),
            }) => {
                assert!(before >= 8192 && after < 8192, "{before} {after}")
            }
            o => panic!("{o:?}"),
        }
        assert!(cache.is_dir());
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"keep");
    }

    /// The live-stream guard: with a client connected to the engine port, a clear measures and
    /// deletes nothing; without one (or without a port) it deletes.
    #[test]
    fn script_deletes_nothing_while_a_client_is_connected_to_the_engine_port() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().canonicalize().unwrap().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("chunk"), vec![1u8; 8192]).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let run_ignoring = |port, own: &[u16]| {
            let a = guarded_argv(
                cache.to_str().unwrap(),
                Mode::Clear { min_bytes: 0 },
                port,
                own,
            );
            run_on_host(&a)
        };
        let run = |port| run_ignoring(port, &[]);
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        match run(port) {
            Outcome::Busy { before } => assert!(before >= 8192, "{before}"),
            o => panic!("{o:?}"),
        }
        assert!(
            cache.join("chunk").exists(),
            "nothing deleted while connected"
        );
        // The agent's own health check (its remote port passed in) is no client.
        let own = client.local_addr().unwrap().port();
        match run_ignoring(port, &[own]) {
            Outcome::Done(Sizes { after: Some(_), .. }) => {}
            o => panic!("own probe counted as a client: {o:?}"),
        }
        assert!(!cache.join("chunk").exists());
        std::fs::write(cache.join("chunk"), vec![1u8; 8192]).unwrap();
        drop((client, server));
        // Another port's connections do not count.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        assert!(matches!(run(other_port), Outcome::Done(_)));
        assert!(!cache.join("chunk").exists());
    }

    #[test]
    fn script_counts_a_missing_directory_as_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().canonicalize().unwrap().join("nope");
        let run = |mode| {
            let a = argv(path.to_str().unwrap(), mode);
            run_on_host(&a)
        };
        let empty = Outcome::Empty { before: 0 };
        assert_eq!(run(Mode::Measure), empty);
        assert_eq!(run(Mode::Clear { min_bytes: 0 }), empty);
        assert_eq!(run(Mode::Clear { min_bytes: 1 }), empty);
        assert!(!path.exists(), "a missing directory is not created");
    }

    /// A directory without entries is nothing to clean: measured (its own size), not deleted
    /// from, in both modes; one dotfile is an entry.
    #[test]
    fn script_reports_an_empty_directory_as_nothing_to_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().canonicalize().unwrap().join("cache");
        std::fs::create_dir(&path).unwrap();
        let own = std::fs::metadata(&path).unwrap().len();
        let run = |mode| run_on_host(&argv(path.to_str().unwrap(), mode));
        assert_eq!(run(Mode::Measure), Outcome::Empty { before: own });
        assert_eq!(
            run(Mode::Clear { min_bytes: 0 }),
            Outcome::Empty { before: own }
        );
        assert!(path.is_dir());
        std::fs::write(path.join(".x"), b"x").unwrap();
        assert!(matches!(run(Mode::Measure), Outcome::Done(_)));
        assert!(matches!(
            run(Mode::Clear { min_bytes: 0 }),
            Outcome::Done(Sizes { after: Some(_), .. })
        ));
        assert_eq!(run(Mode::Measure), Outcome::Empty { before: own });
    }

    #[test]
    fn script_refuses_a_symlinked_cache_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), b"keep").unwrap();
        let link = tmp.path().canonicalize().unwrap().join("cache");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let a = argv(link.to_str().unwrap(), Mode::Clear { min_bytes: 0 });
        let out = run_on_host(&a);
        assert!(
            matches!(out, Outcome::Failed { ref reason, .. } if reason.contains("symlink")),
            "{out:?}"
        );
        assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"keep");
    }
}
