//! Which candidate cache paths exist inside an engine container, and what each resolves to
//! (docs/cache-paths.md#order, docs/cache-paths.md#symlinks): the questions the cache-path
//! rule asks, answered from the host inside the container's root (`root`), or by one fixed
//! script through `docker exec` (the paths are its arguments, never part of it).

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};

use crate::container::dir::list;
use crate::container::root::{resolve, Fact};

/// What to ask the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Questions {
    pub paths: Vec<String>,
    pub globs: Vec<String>,
}

/// The container's answers, in the order of the questions. Empty when it could not be asked
/// (then paths are taken as written and nothing is known to exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub paths: Vec<Fact>,
    /// Per glob: the existing matches (as written, sorted) and each one resolved.
    pub globs: Vec<Vec<(String, Fact)>>,
}

/// Entries of a directory inside `root` (not following a final symlink), sorted.
fn list_dir(root: &OwnedFd, dir: &str) -> Vec<String> {
    let rel = dir.trim_start_matches('/');
    let fd = openat2(
        root,
        if rel.is_empty() { "." } else { rel },
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    );
    let Ok(fd) = fd else { return vec![] };
    let mut v: Vec<String> = list(fd.as_fd())
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The answers to `q` inside `root`: each path resolved, and each glob's existing matches (a
/// glob has one `*` standing for one directory name).
pub fn survey(root: &OwnedFd, q: &Questions) -> Facts {
    let paths = q.paths.iter().map(|p| resolve(root, p)).collect();
    let globs = q
        .globs
        .iter()
        .map(|g| {
            let Some((pre, post)) = g.split_once('*') else {
                return vec![];
            };
            let (parent, prefix) = pre.rsplit_once('/').unwrap_or(("", pre));
            list_dir(root, parent)
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .filter_map(|n| {
                    let m = format!("{parent}/{n}{post}");
                    let f = resolve(root, &m);
                    f.exists.then_some((m, f))
                })
                .collect()
        })
        .collect();
    Facts { paths, globs }
}

/// The survey through `docker exec`, where the host's /proc is not visible: `$1…` are the paths,
/// then `--`, then the globs. Prints `H <home>`, one `P <i> <e|m|x> <resolved>` per path (exists,
/// missing, cannot be resolved) and one `G <i> <match> <resolved>` per existing glob match,
/// tab-separated. Symlinks are resolved component by component, as `resolve` does.
pub const SURVEY_SCRIPT: &str = r#"nl='
'; tab=$(printf '\t')
res() {
  todo=${1#/}; out=; n=0
  while [ -n "$todo" ]; do
    c=${todo%%/*}
    case "$todo" in */*) todo=${todo#*/} ;; *) todo= ;; esac
    case "$c" in ''|.) continue ;; ..) out=${out%/*}; continue ;; esac
    if [ -L "$out/$c" ]; then
      n=$((n+1)); [ "$n" -le 40 ] || return 1
      # Kept whole: `$(…)` would drop a target's trailing newlines.
      t=$(readlink -- "$out/$c" && echo .) || return 1
      t=${t%.}; t=${t%"$nl"}
      case "$t" in ''|*"$nl"*|*"$tab"*) return 1 ;; esac
      case "$t" in /*) out= ;; esac
      todo=${t#/}${todo:+/$todo}
    else
      out=$out/$c
    fi
  done
  printf '%s\n' "${out:-/}"
}
case "${HOME:-}" in *"$nl"*|*"$tab"*) h= ;; *) h=${HOME:-} ;; esac
printf 'H\t%s\n' "$h"
i=0; globs=
for p in "$@"; do
  if [ -z "$globs" ] && [ "$p" = -- ]; then globs=1; i=0; continue; fi
  if [ -z "$globs" ]; then
    if r=$(res "$p"); then
      if [ -e "$r" ] || [ -L "$r" ]; then e=e; else e=m; fi
      printf 'P\t%s\t%s\t%s\n' "$i" "$e" "$r"
    else
      printf 'P\t%s\tx\t\n' "$i"
    fi
  else
    for m in $p; do
      case "$m" in *"$nl"*|*"$tab"*) continue ;; esac
      { [ -e "$m" ] || [ -L "$m" ]; } || continue
      r=$(res "$m") && printf 'G\t%s\t%s\t%s\n' "$i" "$m" "$r"
    done
  fi
  i=$((i+1))
done
"#;

/// argv of the exec survey. Paths with control characters are never asked (the answers are
/// lines; such a path is refused as a cache path anyway).
pub fn survey_argv(q: &Questions) -> Vec<String> {
    let mut v: Vec<String> = ["sh", "-c", SURVEY_SCRIPT, "sh"]
        .into_iter()
        .map(String::from)
        .collect();
    v.extend(q.paths.iter().cloned());
    v.push("--".into());
    v.extend(q.globs.iter().cloned());
    v
}

/// The exec survey's output as `Facts` and `$HOME`; `None` when it is not the script's.
pub fn parse_survey(q: &Questions, stdout: &str) -> Option<(Facts, Option<String>)> {
    let mut home = None;
    let mut paths: Vec<Option<Fact>> = vec![None; q.paths.len()];
    let mut globs: Vec<Vec<(String, Fact)>> = vec![vec![]; q.globs.len()];
    let mut saw_home = false;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["H", h] => {
                saw_home = true;
                home = (!h.is_empty()).then(|| h.to_string());
            }
            ["P", i, kind, r] => {
                let Some(slot) = i.parse::<usize>().ok().and_then(|i| paths.get_mut(i)) else {
                    continue;
                };
                *slot = Some(match *kind {
                    "x" => Fact {
                        exists: false,
                        resolved: Err("too many levels of symbolic links".into()),
                    },
                    k => Fact {
                        exists: k == "e",
                        resolved: Ok(r.to_string()),
                    },
                });
            }
            ["G", i, m, r] => {
                if let Some(g) = i.parse::<usize>().ok().and_then(|i| globs.get_mut(i)) {
                    g.push((
                        m.to_string(),
                        Fact {
                            exists: true,
                            resolved: Ok(r.to_string()),
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    if !saw_home {
        return None;
    }
    for g in &mut globs {
        g.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let paths = paths
        .into_iter()
        .zip(&q.paths)
        .map(|(f, p)| {
            f.unwrap_or(Fact {
                exists: false,
                resolved: Ok(p.clone()),
            })
        })
        .collect();
    Some((Facts { paths, globs }, home))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::container::procfs::tests::root_of;
    use crate::container::root::tests::{ok, tree};

    #[test]
    fn survey_answers_paths_and_globs() {
        let t = tree();
        let root = root_of(t.path());
        let q = Questions {
            paths: vec!["/dev/shm/.ACEStream".into(), "/nope".into()],
            globs: vec![
                "/home/*/.ACEStream".into(),
                "/srv/*/.ACEStream".into(),
                "/x/*/y".into(),
            ],
        };
        let f = survey(&root, &q);
        assert_eq!(
            f.paths,
            vec![ok(true, "/dev/shm/.ACEStream"), ok(false, "/nope")]
        );
        assert_eq!(
            f.globs[0],
            vec![
                (
                    "/home/a/.ACEStream".to_string(),
                    ok(true, "/home/a/.ACEStream")
                ),
                (
                    "/home/b/.ACEStream".to_string(),
                    ok(true, "/home/a/.ACEStream")
                ),
            ]
        );
        assert_eq!(
            f.globs[1],
            vec![(
                "/srv/ace/.ACEStream".to_string(),
                ok(true, "/dev/shm/.ACEStream")
            )]
        );
        assert!(f.globs[2].is_empty());
    }

    /// The exec script, run by the host's sh on paths in a temp tree (the host's root standing
    /// for the container's), answers as the host walk does on the same root.
    #[test]
    fn the_exec_script_answers_like_the_host_walk() {
        let t = tree();
        let base = t.path().canonicalize().unwrap();
        let b = base.to_str().unwrap();
        let q = Questions {
            paths: vec![
                format!("{b}/home/b/.ACEStream"),
                format!("{b}/nope/x"),
                format!("{b}/loop1"),
                format!("{b}/srv/file"),
            ],
            globs: vec![format!("{b}/home/*/.ACEStream")],
        };
        let argv = survey_argv(&q);
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("HOME", "/srv/eng")
            .output()
            .unwrap();
        let (facts, home) = parse_survey(&q, &String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(home.as_deref(), Some("/srv/eng"));
        let host = survey(&root_of(std::path::Path::new("/")), &q);
        assert_eq!(facts.paths[0], host.paths[0]);
        assert_eq!(facts.paths[0], ok(true, &format!("{b}/home/a/.ACEStream")));
        assert_eq!(facts.paths[1], ok(false, &format!("{b}/nope/x")));
        assert!(facts.paths[2].resolved.is_err());
        assert_eq!(facts.paths[3], host.paths[3]);
        assert_eq!(facts.globs, host.globs);
        assert_eq!(facts.globs[0].len(), 2);
    }
}
