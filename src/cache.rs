//! What runs inside an engine container to measure and clear its cache (SPEC §4). Pure: argv
//! builders and output parsing; the janitor runs them through `docker::exec`.
//!
//! One fixed script, the cache path passed as `$1` and never pasted into it, so no container
//! label or config value can become shell code. The script refuses a cache directory that is
//! a symlink or resolves through one (it would lead outside the directory), deletes entries
//! with `rm -rf`, which removes symlinks themselves rather than what they point to, and keeps
//! the directory so a running engine can go on writing. `du -sb` is tried first; busybox has
//! no `-b`, so `du -sk` × 1024 is the fallback.

/// Exit codes of the script, so failures carry a reason an operator can act on.
const SCRIPT: &str = r#"d="$1"; mode="$2"
if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo missing; exit 0; fi
if [ -L "$d" ]; then echo "cache directory is a symlink; refusing to follow it" >&2; exit 10; fi
if [ ! -d "$d" ]; then echo "cache path is not a directory" >&2; exit 11; fi
r=$(readlink -f "$d" 2>/dev/null) || r="$d"
if [ "$r" != "$d" ]; then echo "cache path resolves through a symlink to $r; refusing" >&2; exit 12; fi
rc=0
if [ "$mode" = clear ]; then
  for f in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    if [ -e "$f" ] || [ -L "$f" ]; then rm -rf "$f" || rc=13; fi
  done
fi
out=$(du -sb "$d" 2>/dev/null); n=${out%%[!0-9]*}
if [ -n "$n" ]; then echo "b $n"; exit $rc; fi
out=$(du -sk "$d" 2>/dev/null); n=${out%%[!0-9]*}
if [ -n "$n" ]; then echo "k $n"; exit $rc; fi
echo "du failed" >&2; exit 14
"#;

/// What the script is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Measure only (read-only).
    Measure,
    /// Delete the directory's contents, then measure what is left.
    Clear,
}

/// argv for `docker exec`: `sh -c SCRIPT sh PATH MODE`.
pub fn argv(path: &str, mode: Mode) -> Vec<String> {
    let mode = match mode {
        Mode::Measure => "measure",
        Mode::Clear => "clear",
    };
    ["sh", "-c", SCRIPT, "sh", path, mode]
        .into_iter()
        .map(String::from)
        .collect()
}

/// The script's verdict on one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Size in bytes (after deleting, in `Clear` mode). A missing directory is 0.
    Size(u64),
    /// The script refused or failed; the text says why.
    Failed(String),
}

/// Interprets the exit code and output of one run of the script.
pub fn parse(exit_code: i64, stdout: &str, stderr: &str) -> Outcome {
    let size = stdout.lines().rev().find_map(|l| {
        let l = l.trim();
        if l == "missing" {
            return Some(0);
        }
        let (unit, n) = l.split_once(' ')?;
        let n: u64 = n.trim().parse().ok()?;
        match unit {
            "b" => Some(n),
            "k" => Some(n.saturating_mul(1024)),
            _ => None,
        }
    });
    let reason = || {
        let e = stderr.trim();
        let e = e.lines().last().unwrap_or("").trim();
        if e.is_empty() {
            format!("cache script exited with code {exit_code}")
        } else {
            format!("{e} (exit code {exit_code})")
        }
    };
    match (exit_code, size) {
        (0, Some(n)) => Outcome::Size(n),
        (13, _) => Outcome::Failed(format!(
            "some cache entries could not be deleted: {}",
            reason()
        )),
        _ => Outcome::Failed(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_an_argument_never_part_of_the_script() {
        let evil = "/cache/$(touch /pwned)\"; rm -rf / #";
        let a = argv(evil, Mode::Clear);
        assert_eq!(a[0..2], ["sh", "-c"]);
        assert!(!a[2].contains(evil));
        assert_eq!(a[3..], ["sh", evil, "clear"]);
        assert_eq!(argv("/c", Mode::Measure)[5], "measure");
    }

    #[test]
    fn parses_bytes_kib_and_missing() {
        assert_eq!(parse(0, "b 12345\n", ""), Outcome::Size(12345));
        assert_eq!(parse(0, "k 12\n", ""), Outcome::Size(12 * 1024));
        assert_eq!(parse(0, "missing\n", ""), Outcome::Size(0));
    }

    #[test]
    fn refusals_carry_the_reason() {
        assert_eq!(
            parse(
                10,
                "",
                "cache directory is a symlink; refusing to follow it\n"
            ),
            Outcome::Failed(
                "cache directory is a symlink; refusing to follow it (exit code 10)".into()
            )
        );
        match parse(
            13,
            "b 4096\n",
            "rm: can't remove '/c/x': Permission denied\n",
        ) {
            Outcome::Failed(m) => {
                assert!(m.starts_with("some cache entries could not be deleted: rm: can't remove"))
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            parse(127, "", ""),
            Outcome::Failed("cache script exited with code 127".into())
        );
        assert_eq!(
            parse(0, "garbage", ""),
            Outcome::Failed("cache script exited with code 0".into())
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
            let o = std::process::Command::new(&a[0])
                .args(&a[1..])
                .output()
                .unwrap();
            parse(
                o.status.code().unwrap_or(-1) as i64,
                &String::from_utf8_lossy(&o.stdout),
                &String::from_utf8_lossy(&o.stderr),
            )
        };
        match run(Mode::Measure) {
            Outcome::Size(n) => assert!(n >= 8192, "{n}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 5);
        match run(Mode::Clear) {
            Outcome::Size(n) => assert!(n < 8192, "{n}"),
            o => panic!("{o:?}"),
        }
        assert!(cache.is_dir());
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"keep");
    }

    #[test]
    fn script_refuses_a_symlinked_cache_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), b"keep").unwrap();
        let link = tmp.path().canonicalize().unwrap().join("cache");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let a = argv(link.to_str().unwrap(), Mode::Clear);
        let o = std::process::Command::new(&a[0])
            .args(&a[1..])
            .output()
            .unwrap();
        let out = parse(
            o.status.code().unwrap_or(-1) as i64,
            &String::from_utf8_lossy(&o.stdout),
            &String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            matches!(out, Outcome::Failed(ref m) if m.contains("symlink")),
            "{out:?}"
        );
        assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"keep");
    }
}
