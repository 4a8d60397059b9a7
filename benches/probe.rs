//! What the connection probe (`activity.rs`) costs the agent per engine per tick
//! (BENCHMARKS.md, "Connection probe").
//!
//! ```sh
//! cargo bench --bench probe                                   # 150 engines, prints the table
//! ACESTREAM_BENCH_PROBE_ENGINES=10 cargo bench --bench probe  # fewer engines
//! ```
//!
//! Real Docker, fake engines (tests/fixtures/fake-engine, started by tests/common/mod.rs
//! without a published port), the probe's host read of each engine's connection tables on the
//! real `/proc` of those containers. The figure is the agent process's CPU time
//! (`CLOCK_PROCESS_CPUTIME_ID`, every thread: the async workers and the blocking pool) spent
//! per engine per tick, median of several runs of many ticks; the wall time of one tick is
//! beside it. The runtime is the agent's (multi-threaded tokio), so thread hand-offs count.
//!
//! Rows: "per engine" is the probe's former shape, before it became one blocking task per tick with
//! kept `/proc` handles (every engine its own `spawn_blocking` that opens `/proc/<pid>`, checks its
//! cgroup and reads the tables, with today's `procfs` reads); "one task per tick" is what
//! `activity.rs` does now; "the kernel alone" is one `pread` of each engine's kept `net/snmp` and
//! nothing else, the floor under an idle engine's probe on this machine (its cost differs between
//! machines several times over, so it is measured in the same run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use acestream_agent::activity;
use acestream_agent::container::{procfs, procnet};
use acestream_agent::stuck::{Call, Guarded};
use common::*;

const RUNS: usize = 5;
const TICKS: usize = 40;

fn cpu_now() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One engine as the probe sees it.
#[derive(Clone)]
struct Target {
    id: String,
    pid: u32,
}

/// The probe's former shape: one `spawn_blocking` per engine, each opening and checking
/// `/proc/<pid>` before reading the tables. Returns the clients seen (so nothing is optimised
/// away) and fails if an engine's tables could not be read from the host.
async fn tick_per_engine(engines: &[Target]) -> usize {
    let probes = engines.iter().map(|t| {
        let t = t.clone();
        async move {
            let text = tokio::task::spawn_blocking(move || procfs::connection_tables(t.pid, &t.id))
                .await
                .expect("join")
                .expect("the host reads the container's tables");
            procnet::clients_of(&text, ENGINE_PORT).len()
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .sum()
}

/// The probe now (`activity.rs`): every engine of the tick in one blocking task under the
/// stuck-call guard, through the handles kept across ticks.
async fn tick_batched(
    guarded: &Guarded,
    kept: &mut Option<procfs::Kept>,
    engines: &[Target],
) -> usize {
    let wanted: Vec<(String, u32, bool)> = engines
        .iter()
        .map(|t| (t.id.clone(), t.pid, false))
        .collect();
    let mut mine = kept.take().unwrap_or_default();
    let work = move || {
        let tables = activity::read_all(&mut mine, &wanted, &activity::ProbePorts::default());
        (mine, tables)
    };
    let Call::Done((back, tables)) = guarded.run("bench", work).await else {
        panic!("the host read timed out");
    };
    *kept = Some(back);
    tables
        .into_iter()
        .map(|t| {
            let text = t.expect("the host reads the container's tables");
            procnet::clients_of(&text, ENGINE_PORT).len()
        })
        .sum()
}

/// The kernel's part: one `pread` at offset 0 of every engine's `/proc/<pid>/net/snmp`, kept
/// open, in this thread, with nothing else around it. What an idle engine's probe cannot go
/// under whatever the agent does, so the table tells the agent's share from the machine's.
fn tick_snmp_only(files: &[std::fs::File]) -> usize {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    files
        .iter()
        .map(|f| f.read_at(&mut buf, 0).expect("pread net/snmp"))
        .sum()
}

struct Row {
    what: &'static str,
    cpu_per_engine_us: f64,
    wall_per_tick_ms: f64,
}

/// One run: `tick` `TICKS` times; (CPU µs per engine per tick, wall ms per tick).
fn run_once<F, Fut>(rt: &tokio::runtime::Runtime, n: usize, tick: &mut F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let (c0, w0) = (cpu_now(), Instant::now());
    for _ in 0..TICKS {
        rt.block_on(tick());
    }
    let (c, w) = (cpu_now() - c0, w0.elapsed());
    (
        c.as_secs_f64() * 1e6 / (TICKS * n) as f64,
        w.as_secs_f64() * 1e3 / TICKS as f64,
    )
}

/// The share of the machine's CPU time that was idle over `window` (`/proc/stat`).
fn idle_share(window: Duration) -> f64 {
    let read = || -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // idle + iowait, and the total.
        (
            v.get(3).unwrap_or(&0) + v.get(4).unwrap_or(&0),
            v.iter().sum(),
        )
    };
    let (i0, t0) = read();
    std::thread::sleep(window);
    let (i1, t1) = read();
    (i1 - i0) as f64 / (t1 - t0).max(1) as f64
}

/// Waits (at most a minute) until the machine is quiet after the containers' start: 90 % of
/// its CPU idle over a second. Returns the last idle share seen.
fn wait_quiet() -> f64 {
    let mut idle = 0.0;
    for _ in 0..60 {
        idle = idle_share(Duration::from_secs(1));
        if idle >= 0.9 {
            break;
        }
    }
    idle
}

fn main() {
    if !bench_requested("probe") {
        return;
    }
    let n: usize = std::env::var("ACESTREAM_BENCH_PROBE_ENGINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let started = Instant::now();
    let engines = start_engines(n);
    eprintln!(
        "{n} engines started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let targets: Vec<Target> = engines
        .iter()
        .map(|e| Target {
            id: e.id.clone(),
            pid: e.pid(),
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let idle = wait_quiet();
    let load = load_average();
    let guarded = Guarded::new(Duration::from_secs(5), |_, _| {}, |_| {});
    let kept = std::cell::RefCell::new(None);
    let mut before = || tick_per_engine(&targets);
    let mut now = || {
        let (g, k, t) = (&guarded, &kept, &targets);
        async move {
            let mut mine = k.take();
            let r = tick_batched(g, &mut mine, t).await;
            *k.borrow_mut() = mine;
            r
        }
    };
    let snmp: Vec<std::fs::File> = targets
        .iter()
        .map(|t| std::fs::File::open(format!("/proc/{}/net/snmp", t.pid)).expect("open net/snmp"))
        .collect();
    let mut floor = || std::future::ready(tick_snmp_only(&snmp));
    // Warm-up (the blocking pool's threads, the first opens), then the shapes run by turns,
    // so all meet the same machine.
    rt.block_on(before());
    rt.block_on(now());
    let (mut b, mut w, mut f) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        b.push(run_once(&rt, n, &mut before));
        w.push(run_once(&rt, n, &mut now));
        f.push(run_once(&rt, n, &mut floor));
    }
    let row = |what, runs: Vec<(f64, f64)>| Row {
        what,
        cpu_per_engine_us: median(runs.iter().map(|r| r.0).collect()),
        wall_per_tick_ms: median(runs.iter().map(|r| r.1).collect()),
    };
    let rows = vec![
        row("per engine (before the one-task probe)", b),
        row("one task per tick, kept handles and files (now)", w),
        row("the kernel alone: one pread of each kept net/snmp", f),
    ];
    println!();
    println!(
        "connection probe, {n} engines, {TICKS} ticks x {RUNS} runs each by turns (median); at the start {:.0} % of the CPU idle, load average {load}",
        idle * 100.0
    );
    println!();
    println!("| probe | CPU per engine per tick | wall per tick |");
    println!("|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} µs | {:.2} ms |",
            r.what, r.cpu_per_engine_us, r.wall_per_tick_ms
        );
    }
    println!();
    drop(engines);
}

/// `n` fake engines, started four at a time per thread (as benches/agent.rs does).
fn start_engines(n: usize) -> Vec<TestEngine> {
    let per_thread = n.div_ceil(8).max(1);
    let handles: Vec<_> = (0..n)
        .collect::<Vec<_>>()
        .chunks(per_thread)
        .map(|c| {
            let c = c.to_vec();
            std::thread::spawn(move || {
                c.into_iter()
                    .map(|_| {
                        TestEngine::builder()
                            .name_prefix("ace-probe-bench")
                            .publish(false)
                            .start()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("engine start thread"))
        .collect()
}
