//! The `loadgen` command line: the last stdout line is the JSON summary; compare refuses to run
//! without the corum target.

use std::process::Command;

#[test]
fn run_ends_with_a_json_line() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            "mem",
            "--workload",
            "ycsb-b",
            "--keys",
            "1000",
            "--duration",
            "1s",
        ])
        .args(["--warmup", "200ms", "--quiet", "--name", "cli", "--out-dir"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for k in [
        "ops_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "errors",
        "cpu_us_per_op",
    ] {
        assert!(v.get(k).is_some(), "{k} missing from {last}");
    }
    assert!(v["ops_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["errors"], 0);
    let dir = std::path::PathBuf::from(v["report_dir"].as_str().unwrap());
    assert!(dir.join("summary.json").is_file());
}

#[test]
fn compare_fails_clearly_without_corum() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["compare", "--quick"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corum target is not built yet"), "{err}");
    assert!(out.stdout.is_empty(), "no figures may be printed");
}
