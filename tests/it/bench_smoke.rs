//! Keeps the benchmark harness (benches/agent.rs) from rotting: runs it in smoke mode (2
//! engines, 1 s loads, 2 files) against real Docker and checks it printed a complete table.
//! No timing assertions: this machine's figures are in BENCHMARKS.md.

#[path = "../../benches/agent.rs"]
mod bench;

#[test]
fn bench_harness_smoke_run_prints_a_complete_table() {
    let params = bench::Params::smoke();
    let table = bench::run(&params);
    println!("{table}");
    // The main table ends where the sizing table's title starts.
    let (main, sizing) = table
        .split_once(bench::SIZING_TITLE)
        .unwrap_or_else(|| panic!("no sizing table in:\n{table}"));
    let rows: Vec<&str> = main.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(
        rows[0].starts_with("| what | measured"),
        "no table header:\n{table}"
    );
    for name in bench::ROWS {
        let name = bench::row_name(name, &params);
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
    // The sizing table: a header and rows of 4 cells, each with a figure.
    let sizing: Vec<&str> = sizing.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(
        sizing.len() >= 5 && sizing[0].starts_with("| quantity"),
        "incomplete sizing table:\n{table}"
    );
    for row in &sizing[1..] {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "sizing row is not 4 cells: {row}");
        assert!(
            cells[1..3]
                .iter()
                .all(|c| c.starts_with(|c: char| c.is_ascii_digit()) && !c.contains("NaN")),
            "sizing row without figures: {row}"
        );
    }
}
