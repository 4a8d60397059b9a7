//! Keeps the benchmark harness (benches/agent.rs) from rotting: runs it in smoke mode (2
//! engines, 1 s loads, 2 files) against real Docker and checks it printed a complete table.
//! No timing assertions: this machine's figures are in BENCHMARKS.md.

#[path = "../benches/agent.rs"]
mod bench;

#[test]
fn bench_harness_smoke_run_prints_a_complete_table() {
    let table = bench::run(&bench::Params::smoke());
    println!("{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(
        rows[0].starts_with("| what | measured"),
        "no table header:\n{table}"
    );
    for name in bench::ROWS {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("row {name:?} missing from:\n{table}"));
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 5, "row {name:?} is not 5 cells: {row}");
        assert!(
            cells.iter().all(|c| !c.is_empty() && !c.contains("NaN")),
            "row {name:?} has an empty or NaN cell: {row}"
        );
        // The measured cell starts with a number.
        assert!(
            cells[1].starts_with(|c: char| c.is_ascii_digit() || c == '-'),
            "row {name:?} has no measured figure: {row}"
        );
    }
    // Header plus one line per row (the `|---|` separator does not start with "| ").
    assert_eq!(
        rows.len(),
        1 + bench::ROWS.len(),
        "unexpected rows:\n{table}"
    );
}
