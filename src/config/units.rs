//! Durations and sizes as written in the config: parsing, and the exact inverse that
//! `check-config` prints. Independent of any key; the keys' rules are in the parent module.

use std::time::Duration;

const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"` and combinations such as `"1h30m"`; a plain
/// integer is seconds. Whole numbers only, millisecond resolution; must be greater than zero.
/// `"off"` is not a duration: the keys that allow it handle it before calling this.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("duration must not be empty".into());
    }
    let bad = || {
        format!(
            "invalid duration {s:?}: expected e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \
             \"7d\", \"1h30m\" or whole seconds"
        )
    };
    let total_ms = if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text
            .parse()
            .map_err(|_| format!("duration {s:?} is too large"))?;
        secs.checked_mul(1_000)
            .ok_or_else(|| format!("duration {s:?} is too large"))?
    } else {
        let mut rest = text;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("duration {s:?} is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let &(_, factor) = DURATION_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .ok_or_else(bad)?;
            total = number
                .checked_mul(factor)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| format!("duration {s:?} is too large"))?;
        }
        total
    };
    if total_ms == 0 {
        return Err(format!("duration must be greater than zero, got {s:?}"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Inverse of [`parse_duration`]: `30s`, `5m`, `1h30m`, `7d`, `1500ms` → `1s500ms`.
/// Sub-millisecond parts are dropped (parsed durations never have any).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for &(name, factor) in DURATION_UNITS {
        let factor = u128::from(factor);
        if ms >= factor {
            out.push_str(&format!("{}{name}", ms / factor));
            ms %= factor;
        }
    }
    out
}

const SIZE_UNITS: &[(&[&str], u64)] = &[
    (&["", "b"], 1),
    (&["k", "kb", "kib"], 1 << 10),
    (&["m", "mb", "mib"], 1 << 20),
    (&["g", "gb", "gib"], 1 << 30),
    (&["t", "tb", "tib"], 1 << 40),
];

/// `"500MiB"`, `"5GiB"`, `"10KiB"`, `"1TiB"`, or plain bytes `"1024"`. Units are
/// case-insensitive and always 1024-based, including `KB`/`MB`/`GB`/`TB` and `K`/`M`/`G`/`T`:
/// Config sizes are 1024-based (README "Configuration"), and the agent itself prints 1024-based
/// sizes as "MB"/"GB", so reading "5GB" as anything else would disagree with our own logs. A
/// fraction is allowed with a unit (`"1.5GiB"`) and rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("size must not be empty".into());
    }
    let bad =
        || format!("invalid size {s:?}: expected e.g. \"500MiB\", \"5GiB\" or a number of bytes");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim().to_ascii_lowercase());
    if number.is_empty() {
        return Err(bad());
    }
    let &(_, factor) = SIZE_UNITS
        .iter()
        .find(|(names, _)| names.contains(&unit.as_str()))
        .ok_or_else(bad)?;
    let too_large = || format!("size {s:?} is too large");
    if number.contains('.') {
        if factor == 1 {
            return Err(format!("size {s:?} is not a whole number of bytes"));
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = (value * factor as f64).floor();
        // u64::MAX as f64 rounds up to 2^64, so `<` keeps the cast below in range.
        if !(bytes.is_finite() && bytes < u64::MAX as f64) {
            return Err(too_large());
        }
        return Ok(bytes as u64);
    }
    let value: u64 = number.parse().map_err(|_| too_large())?;
    value.checked_mul(factor).ok_or_else(too_large)
}

/// Exact inverse of [`parse_size`]: the largest binary unit that divides `n`, else plain bytes.
pub(super) fn format_size(n: u64) -> String {
    for &(names, factor) in SIZE_UNITS.iter().rev() {
        if factor > 1 && n >= factor && n.is_multiple_of(factor) {
            let unit = match names[2] {
                "kib" => "KiB",
                "mib" => "MiB",
                "gib" => "GiB",
                _ => "TiB",
            };
            return format!("{}{unit}", n / factor);
        }
    }
    n.to_string()
}
