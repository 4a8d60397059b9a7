//! The engine's own command line (its port, docs/deployments.md#addresses; its cache path,
//! docs/cache-paths.md#command-line): which `--http-port`, `--cache-dir` and `--state-dir` an
//! engine runs with. Pure: the caller reads the processes' argv and environment, the image's
//! `Entrypoint` + `Cmd`, and `@file`s; this module turns them into [`EngineArgs`].
//!
//! Public images pass these flags every way (docs/cache-paths.md#command-line): exec form,
//! `--flag=V`, shell form with arguments from the environment
//! (`sh -c "start-engine ${ACESTREAM_ARGS}"`, where the container's `Cmd` holds the literal
//! `${ACESTREAM_ARGS}`), entrypoint scripts that run the engine as a child (the official
//! `start-engine` does not `exec`), init processes as PID 1 (`docker-init`, `tini`, `catatonit`),
//! and argument files (`@/opt/acestream/acestream.conf`). The flags follow Python argparse, which
//! the engine uses: `--flag V` or `--flag=V`, the last occurrence wins, `@file` is expanded in
//! place, and a token with other characters around the flag (`" --bind-all"`, `-–http-port`) is no
//! flag.

/// What an engine's command line says about where it listens and keeps its cache, and how
/// large it lets its cache grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineArgs {
    pub http_port: Option<u16>,
    pub cache_dir: Option<String>,
    pub state_dir: Option<String>,
    /// In bytes: `--cache-limit N` (GiB, as the engine's console help has it),
    /// `--disk-cache-limit N` or `--cache-max-bytes N` (bytes), the last one given.
    pub disk_cache_limit: Option<u64>,
    /// `--memory-cache-limit N`, bytes.
    pub memory_cache_limit: Option<u64>,
    /// `--live-cache-type memory|disk`.
    pub live_cache_type: Option<String>,
}

impl EngineArgs {
    pub fn is_empty(&self) -> bool {
        *self == EngineArgs::default()
    }
}

/// The flags `parse_flags` reads; every other argument is passed over.
const FLAGS: &[&str] = &[
    "--http-port",
    "--cache-dir",
    "--state-dir",
    "--cache-limit",
    "--disk-cache-limit",
    "--cache-max-bytes",
    "--memory-cache-limit",
    "--live-cache-type",
];

/// A size flag's value: whole bytes, or `unit` bytes times a decimal number (`2.5` GiB); 0 and
/// nonsense are no value.
fn size_value(value: &str, unit: u64) -> Option<u64> {
    let v = value.trim();
    let bytes = match v.parse::<u64>() {
        Ok(n) => n.checked_mul(unit)?,
        Err(_) if unit > 1 => {
            let f = v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)?;
            let b = f * unit as f64;
            (b < u64::MAX as f64).then_some(b as u64)?
        }
        Err(_) => return None,
    };
    (bytes > 0).then_some(bytes)
}

/// Stands for a part of a word whose value cannot be known without running the shell (a
/// command substitution, a variable the environment given does not hold): a flag value that
/// contains it is not a path the agent may use (`cache::path` refuses it).
pub const UNKNOWN: char = '\u{0}';

/// Variables the shell sets itself.
const SHELL_VARIABLES: &[&str] = &[
    "PWD", "OLDPWD", "RANDOM", "PPID", "LINENO", "SECONDS", "UID", "EUID", "HOSTNAME", "IFS",
];

/// `@file` arguments are expanded this many levels deep (a file naming another file).
const MAX_FILE_DEPTH: usize = 3;
/// Argument files read for one command line at most.
const MAX_FILES: usize = 16;
/// More arguments than this (after expansion) are not looked at.
const MAX_ARGS: usize = 4096;

/// The flags of one argv (after `@file` expansion), argparse-style: the last one wins; a
/// value that is itself an option (`--cache-dir --foo`) is no value.
pub fn parse_flags(argv: &[String]) -> EngineArgs {
    let mut out = EngineArgs::default();
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a, None),
        };
        if !FLAGS.contains(&flag) {
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => Some(v),
            None => match argv.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    i += 1;
                    Some(v.clone())
                }
                _ => None,
            },
        };
        i += 1;
        let Some(value) = value else { continue };
        match flag {
            "--http-port" => {
                if let Ok(p) = value.trim().parse::<u16>() {
                    if p > 0 {
                        out.http_port = Some(p);
                    }
                }
            }
            "--cache-dir" if !value.is_empty() => out.cache_dir = Some(value),
            "--state-dir" if !value.is_empty() => out.state_dir = Some(value),
            "--cache-limit" => {
                if let Some(b) = size_value(&value, 1 << 30) {
                    out.disk_cache_limit = Some(b);
                }
            }
            "--disk-cache-limit" | "--cache-max-bytes" => {
                if let Some(b) = size_value(&value, 1) {
                    out.disk_cache_limit = Some(b);
                }
            }
            "--memory-cache-limit" => {
                if let Some(b) = size_value(&value, 1) {
                    out.memory_cache_limit = Some(b);
                }
            }
            "--live-cache-type" => {
                if let t @ ("memory" | "disk") = value.trim() {
                    out.live_cache_type = Some(t.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// The tokens of an argument file: one argument a line, or `flag value` on one line (split at
/// the first blank); blank lines are skipped, `\r` and surrounding blanks are dropped.
pub fn argfile_tokens(text: &str) -> Vec<String> {
    let mut out = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once(char::is_whitespace) {
            Some((flag, value)) if flag.starts_with('-') => {
                out.push(flag.to_string());
                let value = value.trim();
                if !value.is_empty() {
                    out.push(unquote(value));
                }
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// `argv` with every `@path` argument replaced by the file's tokens (files naming files, up to
/// `MAX_FILE_DEPTH`). `read` returns a file's text, `None` when it cannot be read (then the
/// argument is dropped, as it names no flag); the paths it was asked for are returned.
pub fn expand_arg_files(
    argv: &[String],
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> (Vec<String>, Vec<String>) {
    let mut asked = vec![];
    // Each file is read once, and at most `MAX_FILES` of them: a file named many times, or
    // files naming each other, cost no more.
    let mut texts: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut once = |p: &str| -> Option<String> {
        if let Some(t) = texts.get(p) {
            return t.clone();
        }
        if texts.len() >= MAX_FILES {
            return None;
        }
        let t = read(p);
        texts.insert(p.to_string(), t.clone());
        t
    };
    let out = expand(argv, &mut once, 0, &mut asked);
    asked.dedup();
    (out, asked)
}

fn expand(
    argv: &[String],
    read: &mut dyn FnMut(&str) -> Option<String>,
    depth: usize,
    asked: &mut Vec<String>,
) -> Vec<String> {
    let mut out = vec![];
    for a in argv {
        if out.len() >= MAX_ARGS || asked.len() >= MAX_ARGS {
            break;
        }
        match a.strip_prefix('@') {
            Some(path) if !path.is_empty() && depth < MAX_FILE_DEPTH => {
                asked.push(path.to_string());
                if let Some(text) = read(path) {
                    let tokens = argfile_tokens(&text);
                    out.extend(expand(&tokens, read, depth + 1, asked));
                }
            }
            _ => out.push(a.clone()),
        }
    }
    out.truncate(MAX_ARGS);
    out
}

/// The script of a shell run as `sh -c SCRIPT [NAME ARGS...]` (sh, bash, ash, dash, busybox
/// sh; `-c` also inside combined options such as `-ec`), with its positional arguments.
pub fn shell_script(argv: &[String]) -> Option<(&str, &[String])> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let mut i = match argv.first().map(|a| base(a)).as_deref() {
        Some("sh" | "bash" | "ash" | "dash" | "zsh") => 1,
        Some("busybox") if argv.get(1).map(|a| base(a)).as_deref() == Some("sh") => 2,
        _ => return None,
    };
    while let Some(a) = argv.get(i) {
        if a == "--" || !a.starts_with('-') {
            return None;
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        if a[1..].contains('c') {
            let script = argv.get(i + 1)?;
            let rest = argv.get(i + 2..).unwrap_or(&[]);
            return Some((script.as_str(), rest));
        }
        i += 1;
    }
    None
}

/// The words of a shell script as the shell would run them, for finding flags in it: quotes
/// (`'…'`, `"…"`), backslashes, `$VAR`, `${VAR}`, `${VAR:-word}` / `${VAR-word}` (and `:=`,
/// `=`), positional `$1`…, `$@`, `$*`; an unquoted expansion is split on blanks. Operators
/// (`;`, `&`, `|`, `&&`, `||`, newlines, parentheses) and redirections separate words and are
/// dropped; comments are skipped. Command substitutions are not run: they expand to nothing.
pub fn shell_words(
    script: &str,
    env: &dyn Fn(&str) -> Option<String>,
    positional: &[String],
) -> Vec<String> {
    let mut lx = Lexer {
        chars: script.chars().collect(),
        i: 0,
        env,
        positional,
        words: vec![],
        cur: String::new(),
        has_word: false,
    };
    lx.run();
    lx.words.truncate(MAX_ARGS);
    lx.words
}

struct Lexer<'a> {
    chars: Vec<char>,
    i: usize,
    env: &'a dyn Fn(&str) -> Option<String>,
    positional: &'a [String],
    words: Vec<String>,
    cur: String,
    /// A word is being built (quotes make even an empty one).
    has_word: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn end_word(&mut self) {
        if self.has_word {
            self.words.push(std::mem::take(&mut self.cur));
        }
        self.has_word = false;
    }

    fn run(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>' => {
                    self.end_word();
                    self.i += 1;
                }
                '#' if !self.has_word => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                '\'' => {
                    self.has_word = true;
                    self.i += 1;
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        if c == '\'' {
                            break;
                        }
                        self.cur.push(c);
                    }
                }
                '"' => {
                    self.has_word = true;
                    self.i += 1;
                    while let Some(c) = self.peek() {
                        match c {
                            '"' => {
                                self.i += 1;
                                break;
                            }
                            '\\' => {
                                self.i += 1;
                                match self.peek() {
                                    Some(n @ ('$' | '`' | '"' | '\\')) => {
                                        self.cur.push(n);
                                        self.i += 1;
                                    }
                                    Some('\n') => self.i += 1,
                                    _ => self.cur.push('\\'),
                                }
                            }
                            '$' => {
                                let v = self.expansion();
                                self.cur.push_str(&v.join(" "));
                            }
                            c => {
                                self.cur.push(c);
                                self.i += 1;
                            }
                        }
                    }
                }
                '\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some('\n') => self.i += 1,
                        Some(n) => {
                            self.has_word = true;
                            self.cur.push(n);
                            self.i += 1;
                        }
                        None => {}
                    }
                }
                '$' => {
                    // Unquoted: the value's words are split on blanks; the first joins the
                    // word being built, the last starts the word that follows.
                    let v = self.expansion();
                    let fields: Vec<String> = v
                        .iter()
                        .flat_map(|s| s.split_whitespace().map(str::to_string))
                        .collect();
                    let starts_blank = v
                        .first()
                        .is_some_and(|s| s.starts_with(char::is_whitespace));
                    let ends_blank = v.last().is_some_and(|s| s.ends_with(char::is_whitespace));
                    if starts_blank {
                        self.end_word();
                    }
                    let n = fields.len();
                    for (k, f) in fields.into_iter().enumerate() {
                        self.cur.push_str(&f);
                        self.has_word = true;
                        if k + 1 < n {
                            self.end_word();
                        }
                    }
                    if ends_blank {
                        self.end_word();
                    }
                }
                '`' => {
                    // A command substitution is not run: its value is unknown.
                    self.i += 1;
                    while self.peek().is_some_and(|c| c != '`') {
                        self.i += 1;
                    }
                    self.i += 1;
                    self.cur.push(UNKNOWN);
                    self.has_word = true;
                }
                c => {
                    self.has_word = true;
                    self.cur.push(c);
                    self.i += 1;
                }
            }
        }
        self.end_word();
    }

    /// Reads one `$…` at `self.i` and returns its value (several for `$@`/`$*`).
    fn expansion(&mut self) -> Vec<String> {
        self.i += 1; // '$'
        match self.peek() {
            Some('{') => {
                self.i += 1;
                let start = self.i;
                let mut depth = 1;
                while let Some(c) = self.peek() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                let inner: String = self.chars[start..self.i.min(self.chars.len())]
                    .iter()
                    .collect();
                self.i += 1; // '}'
                vec![self.braced(&inner)]
            }
            Some('(') => {
                // `$(…)` (command substitution) or `$((…))` (arithmetic): not evaluated, so
                // its value is unknown.
                let mut depth = 0;
                while let Some(c) = self.peek() {
                    self.i += 1;
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                vec![UNKNOWN.to_string()]
            }
            Some('@') | Some('*') => {
                self.i += 1;
                self.positional.iter().skip(1).cloned().collect()
            }
            Some(c) if c.is_ascii_digit() => {
                self.i += 1;
                let n = c.to_digit(10).unwrap_or(0) as usize;
                vec![self.positional.get(n).cloned().unwrap_or_default()]
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
                {
                    self.i += 1;
                }
                let name: String = self.chars[start..self.i].iter().collect();
                vec![self.variable(&name)]
            }
            // `$?`, `$$`, `$#`, `$!`, `$-`: the shell's own, unknown here.
            Some('?' | '$' | '#' | '!' | '-') => {
                self.i += 1;
                vec![UNKNOWN.to_string()]
            }
            _ => vec!["$".to_string()],
        }
    }

    /// A variable's value: from the environment given; the shell's own variables (`$PWD`,
    /// `$RANDOM`, ...) are unknown unless the environment has them.
    fn variable(&self, name: &str) -> String {
        match (self.env)(name) {
            Some(v) => v,
            None if SHELL_VARIABLES.contains(&name) => UNKNOWN.to_string(),
            None => String::new(),
        }
    }

    /// `${NAME}`, `${NAME:-word}`, `${NAME-word}` (`=` forms alike); other forms expand to the
    /// variable's value.
    fn braced(&self, inner: &str) -> String {
        let name_end = inner
            .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
            .unwrap_or(inner.len());
        let (name, op) = inner.split_at(name_end);
        let value = if name.chars().all(|c| c.is_ascii_digit()) && !name.is_empty() {
            self.positional
                .get(name.parse::<usize>().unwrap_or(usize::MAX))
                .cloned()
        } else if name.is_empty() {
            Some(UNKNOWN.to_string())
        } else {
            (self.env)(name)
                .or_else(|| SHELL_VARIABLES.contains(&name).then(|| UNKNOWN.to_string()))
        };
        let word = |w: &str| {
            let env = self.env;
            shell_words(w, env, self.positional).join(" ")
        };
        if let Some(w) = op.strip_prefix(":-").or_else(|| op.strip_prefix(":=")) {
            return match value {
                Some(v) if !v.is_empty() => v,
                _ => word(w),
            };
        }
        if let Some(w) = op.strip_prefix('-').or_else(|| op.strip_prefix('=')) {
            return value.unwrap_or_else(|| word(w));
        }
        value.unwrap_or_default()
    }
}

/// One process of a container, as read from the host's /proc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub argv: Vec<String>,
    /// Its environment (`KEY=VALUE`), for the variables of a `sh -c` script.
    pub env: Vec<String>,
}

/// The words a process runs with: its argv, or, for `sh -c SCRIPT`, the script's words with
/// its variables expanded from `env` (that shell may not have started the engine yet). With
/// `env_complete`, `env` is the shell's whole environment and an unset variable is empty, as
/// the shell has it; otherwise (the image's `Env`, which the process may extend, or an
/// environment that could not be read) an unset variable is [`UNKNOWN`].
pub fn effective_argv(argv: &[String], env: &[String], env_complete: bool) -> Vec<String> {
    match shell_script(argv) {
        Some((script, positional)) => {
            let lookup = |name: &str| -> Option<String> {
                env.iter()
                    .rev()
                    .find_map(|kv| {
                        kv.split_once('=')
                            .filter(|(k, _)| *k == name)
                            .map(|(_, v)| v.to_string())
                    })
                    .or_else(|| (!env_complete).then(|| UNKNOWN.to_string()))
            };
            // The shell's own arguments after the script are `$0 $1 …`: they reach the engine
            // only through `"$@"` (or `$1`…), which the words expand.
            shell_words(script, &lookup, positional)
        }
        None => argv.to_vec(),
    }
}

/// The image's command line as Docker runs it: `Entrypoint` followed by `Cmd` (each of which
/// Docker already holds as argv; the shell form is `["/bin/sh", "-c", "…"]`).
pub fn image_argv(entrypoint: &[String], cmd: &[String]) -> Vec<String> {
    entrypoint.iter().chain(cmd).cloned().collect()
}

/// The engine's flags from the container's processes (in the order read: the container's main
/// process first, then its children, breadth first): the last process whose words, with
/// `@file`s expanded by `read`, name a flag, because wrappers (init, shells, `start-engine`)
/// pass their arguments down and the deepest one is what really runs. `None` when no process
/// names one. Discovery calls [`pick_engine`], which also says which process it was.
#[cfg(test)]
pub fn from_processes(
    processes: &[Process],
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<EngineArgs> {
    pick_engine(processes, read).map(|(_, a)| a)
}

/// [`from_processes`], with the index of the process that named the flags.
pub fn pick_engine(
    processes: &[Process],
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<(usize, EngineArgs)> {
    processes.iter().enumerate().rev().find_map(|(i, p)| {
        let words = effective_argv(&p.argv, &p.env, !p.env.is_empty());
        let (words, _) = expand_arg_files(&words, read);
        let args = parse_flags(&words);
        (!args.is_empty()).then_some((i, args))
    })
}

/// The engine's flags from the image's `Entrypoint` + `Cmd`, `${VAR}` expanded from the
/// container's `Env` (the fallback where the host's /proc is not visible). Discovery composes
/// the same steps itself, as it also keeps the expanded words.
#[cfg(test)]
pub fn from_image(
    entrypoint: &[String],
    cmd: &[String],
    env: &[String],
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> EngineArgs {
    let words = effective_argv(&image_argv(entrypoint, cmd), env, false);
    let (words, _) = expand_arg_files(&words, read);
    parse_flags(&words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn cache_limits_and_the_live_cache_type() {
        let a = parse_flags(&v(&[
            "start-engine",
            "--cache-limit",
            "2",
            "--live-cache-type=memory",
            "--memory-cache-limit",
            "104857600",
        ]));
        assert_eq!(a.disk_cache_limit, Some(2 << 30));
        assert_eq!(a.memory_cache_limit, Some(104_857_600));
        assert_eq!(a.live_cache_type.as_deref(), Some("memory"));
        // Bytes flags; the last size flag given wins; a half GiB.
        let a = parse_flags(&v(&["--cache-limit=1", "--disk-cache-limit", "5000000"]));
        assert_eq!(a.disk_cache_limit, Some(5_000_000));
        let a = parse_flags(&v(&["--cache-max-bytes=7000", "--cache-limit", "0.5"]));
        assert_eq!(a.disk_cache_limit, Some(1 << 29));
        // No value: 0, words, a fraction of a byte, an unknown cache type.
        for bad in [
            v(&["--cache-limit", "0"]),
            v(&["--disk-cache-limit", "lots"]),
            v(&["--disk-cache-limit", "1.5"]),
            v(&["--cache-limit", "-1"]),
            v(&["--live-cache-type", "ssd"]),
            v(&["--disk-cache-limit", "--cache-dir"]),
        ] {
            let a = parse_flags(&bad);
            assert_eq!(
                (a.disk_cache_limit, a.live_cache_type),
                (None, None),
                "{bad:?}"
            );
        }
        // An argument file line `flag value`, as the engine reads it.
        assert_eq!(
            parse_flags(&argfile_tokens("--disk-cache-limit 123456\n")).disk_cache_limit,
            Some(123_456)
        );
    }

    #[test]
    fn flags_both_ways_last_one_wins() {
        let a = parse_flags(&v(&[
            "acestreamengine",
            "--client-console",
            "--http-port",
            "16214",
            "--cache-dir=/srv/ace/cache",
            "--http-port=16215",
            "--state-dir",
            "/tmp/state/.ACEStream",
        ]));
        assert_eq!(
            a,
            EngineArgs {
                http_port: Some(16215),
                cache_dir: Some("/srv/ace/cache".into()),
                state_dir: Some("/tmp/state/.ACEStream".into()),
                ..EngineArgs::default()
            }
        );
    }

    #[test]
    fn junk_is_no_flag() {
        for argv in [
            v(&["--http-port"]),
            v(&["--http-port", "--bind-all"]),
            v(&["--http-port", "x"]),
            v(&["--http-port", "0"]),
            v(&["--http-port", "70000"]),
            v(&[" --http-port", "1"]),
            v(&["-–http-port", "1"]),
            v(&["--http-portx", "1"]),
            v(&["--cache-dir="]),
            v(&["''"]),
        ] {
            assert_eq!(parse_flags(&argv), EngineArgs::default(), "{argv:?}");
        }
    }

    #[test]
    fn argument_files_one_argument_or_flag_value_per_line() {
        let text = "--client-console\r\n\n--http-port 6879\n--cache-dir\n/srv/x y\n  --state-dir=/s  \n--live-cache-type memory\n";
        assert_eq!(
            argfile_tokens(text),
            v(&[
                "--client-console",
                "--http-port",
                "6879",
                "--cache-dir",
                "/srv/x y",
                "--state-dir=/s",
                "--live-cache-type",
                "memory"
            ])
        );
        assert_eq!(
            argfile_tokens("--cache-dir \"/a b\"\n"),
            v(&["--cache-dir", "/a b"])
        );
    }

    #[test]
    fn argument_files_expand_in_place_and_nest() {
        let mut read = |p: &str| match p {
            "/opt/acestream/acestream.conf" => Some("--http-port=7000\n@/more.conf\n".to_string()),
            "/more.conf" => Some("--cache-dir /c\n".to_string()),
            "/loop" => Some("@/loop\n".to_string()),
            _ => None,
        };
        let (words, asked) = expand_arg_files(
            &v(&[
                "start-engine",
                "@/opt/acestream/acestream.conf",
                "--http-port",
                "7001",
                "@/missing",
            ]),
            &mut read,
        );
        assert_eq!(
            words,
            v(&[
                "start-engine",
                "--http-port=7000",
                "--cache-dir",
                "/c",
                "--http-port",
                "7001"
            ])
        );
        assert_eq!(
            asked,
            v(&["/opt/acestream/acestream.conf", "/more.conf", "/missing"])
        );
        assert_eq!(
            parse_flags(&words).http_port,
            Some(7001),
            "the later flag wins"
        );
        // A file naming itself stops after a few levels, and is read once.
        let mut reads = 0;
        let mut counting = |p: &str| {
            reads += 1;
            read(p)
        };
        let (words, asked) = expand_arg_files(&v(&["@/loop"]), &mut counting);
        assert!(
            words.len() <= 1 && asked == ["/loop"],
            "{words:?} {asked:?}"
        );
        assert_eq!(reads, 1);
        // Many lines naming many files: at most MAX_FILES reads.
        let mut reads = 0;
        let mut fan = |p: &str| {
            reads += 1;
            Some((0..1000).map(|i| format!("@{p}{i}\n")).collect::<String>())
        };
        let (_, asked) = expand_arg_files(&v(&["@/f"]), &mut fan);
        assert!(reads <= MAX_FILES, "{reads} reads, {} asked", asked.len());
    }

    #[test]
    fn shell_words_quote_and_expand_like_sh() {
        let env = |n: &str| match n {
            "ACESTREAM_ARGS" => Some("--client-console --bind-all --http-port 16215 ".to_string()),
            "HTTP_PORT" => Some("6880".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let w = |s: &str| shell_words(s, &env, &[]);
        assert_eq!(
            w("/acestream/start-engine ${ACESTREAM_ARGS}"),
            v(&[
                "/acestream/start-engine",
                "--client-console",
                "--bind-all",
                "--http-port",
                "16215"
            ])
        );
        assert_eq!(
            w("exec x --http-port $HTTP_PORT"),
            v(&["exec", "x", "--http-port", "6880"])
        );
        assert_eq!(
            w("x --http-port=${HTTP_PORT}"),
            v(&["x", "--http-port=6880"])
        );
        assert_eq!(
            w("x \"$ACESTREAM_ARGS\""),
            v(&["x", "--client-console --bind-all --http-port 16215 "])
        );
        assert_eq!(
            w("x ${UNSET:-7000} ${EMPTY:-8000} ${EMPTY-9000}"),
            v(&["x", "7000", "8000"]),
            "an unquoted empty expansion is no word"
        );
        assert_eq!(
            w("a 'b c' \"d $HTTP_PORT\" e\\ f"),
            v(&["a", "b c", "d 6880", "e f"])
        );
        assert_eq!(
            w("printf x > /tmp/f; exec /e.sh @/tmp/f # --http-port 1"),
            v(&["printf", "x", "/tmp/f", "exec", "/e.sh", "@/tmp/f"])
        );
        let u = UNKNOWN.to_string();
        assert_eq!(
            w("a $(cat /args.txt) `id` $((1+2)) b --cache-dir \"$(pwd)/data\" $PWD/x"),
            v(&[
                "a",
                &u,
                &u,
                &u,
                "b",
                "--cache-dir",
                &format!("{u}/data"),
                &format!("{u}/x")
            ]),
            "what the shell would compute is unknown, never empty"
        );
        assert_eq!(w("\"\" x"), v(&["", "x"]));
        assert_eq!(
            shell_words("x \"$@\" $1", &no_env, &v(&["sh", "--http-port", "5"])),
            v(&["x", "--http-port 5", "--http-port"])
        );
    }

    #[test]
    fn shell_scripts_are_found_in_sh_c() {
        let a = v(&["/bin/sh", "-c", "start-engine ${ACESTREAM_ARGS}"]);
        assert_eq!(
            shell_script(&a).map(|s| s.0),
            Some("start-engine ${ACESTREAM_ARGS}")
        );
        let a = v(&["bash", "-ec", "exec x", "name", "--http-port", "1"]);
        let (script, rest) = shell_script(&a).unwrap();
        assert_eq!(
            (script, rest),
            ("exec x", &v(&["name", "--http-port", "1"])[..])
        );
        assert_eq!(
            shell_script(&v(&["/bin/busybox", "sh", "-c", "y"])).map(|s| s.0),
            Some("y")
        );
        assert_eq!(shell_script(&v(&["/bin/sh", "/entrypoint.sh", "-c"])), None);
        assert_eq!(shell_script(&v(&["python", "-c", "x"])), None);
    }

    /// The forms public images use (docs/cache-paths.md#command-line), from the image's
    /// Entrypoint + Cmd with its Env.
    #[test]
    fn public_image_forms_from_entrypoint_and_cmd() {
        let mut none = |_: &str| None;
        // krinkuto11/aceserve, exec form.
        let a = from_image(
            &[],
            &v(&[
                "python",
                "main.py",
                "--bind-all",
                "--live-cache-type",
                "memory",
                "--http-port",
                "19001",
            ]),
            &[],
            &mut none,
        );
        assert_eq!(a.http_port, Some(19001));
        // jopsis: shell form with arguments from the environment.
        let a = from_image(
            &[],
            &v(&["/bin/sh", "-c", "/acestream/start-engine ${ACESTREAM_ARGS}"]),
            &v(&["PATH=/bin", "ACESTREAM_ARGS=--client-console --bind-all --http-port 6890 --cache-dir /acestream/.ACEStream"]),
            &mut none,
        );
        assert_eq!(a.http_port, Some(6890));
        assert_eq!(a.cache_dir.as_deref(), Some("/acestream/.ACEStream"));
        // RonZ-dev: Entrypoint + Cmd joined, with an argument file; blaise-io `--flag=V`.
        let mut files = |p: &str| {
            (p == "/ace/config/acestream.conf")
                .then(|| "--http-port=6900\n--state-dir=/data\n".to_string())
        };
        let a = from_image(
            &v(&["/ace/start-engine"]),
            &v(&["--client-console", "@/ace/config/acestream.conf"]),
            &[],
            &mut files,
        );
        assert_eq!(
            (a.http_port, a.state_dir.as_deref()),
            (Some(6900), Some("/data"))
        );
        // No flags at all.
        assert!(from_image(&v(&["/entrypoint.sh"]), &[], &[], &mut none).is_empty());
    }

    #[test]
    fn the_deepest_process_with_flags_is_the_engine() {
        let p = |argv: &[&str], env: &[&str]| Process {
            argv: v(argv),
            env: v(env),
        };
        let mut none = |_: &str| None;
        // docker-init → sh start-engine → acestreamengine (the official script does not exec).
        let tree = [
            p(
                &[
                    "/sbin/docker-init",
                    "--",
                    "/opt/acestream/start-engine",
                    "--client-console",
                    "--http-port",
                    "6878",
                ],
                &[],
            ),
            p(
                &[
                    "/bin/sh",
                    "/opt/acestream/start-engine",
                    "--client-console",
                    "--http-port",
                    "6878",
                ],
                &[],
            ),
            p(
                &[
                    "/opt/acestream/acestreamengine",
                    "--lib-path",
                    "/opt/acestream",
                    "--client-console",
                    "--http-port",
                    "6878",
                    "--cache-dir",
                    "/c",
                ],
                &[],
            ),
            p(&["sleep", "1"], &[]),
        ];
        let a = from_processes(&tree, &mut none).unwrap();
        assert_eq!(
            (a.http_port, a.cache_dir.as_deref()),
            (Some(6878), Some("/c"))
        );
        // Only the shell so far, before it started the engine: its script, its environment.
        let tree = [p(
            &["/bin/sh", "-c", "start-engine ${ARGS}"],
            &["ARGS=--http-port 7100"],
        )];
        assert_eq!(
            from_processes(&tree, &mut none).unwrap().http_port,
            Some(7100)
        );
        // Nothing names a flag.
        assert_eq!(
            from_processes(&[p(&["/entrypoint.sh"], &[])], &mut none),
            None
        );
    }
}
