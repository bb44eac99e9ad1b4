//! The `loadgen` command line: the last stdout line is the JSON summary; `loadgen --local` runs
//! against a local corum cluster; Ctrl-C stops a local cluster.

mod support;

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

/// The README's main command: `loadgen --local` (target corum by default) starts a local corum
/// cluster, runs the default workload, stops the cluster and ends with the JSON line, CPU of the
/// corum processes included; the report it names exists and parses, and its histograms hold
/// exactly the operations counted.
#[test]
fn local_corum_run() {
    let data = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--local",
            "--keys",
            "2000",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ])
        .args([
            "--connections",
            "4",
            "--concurrency",
            "32",
            "--quiet",
            "--name",
            "main",
        ])
        .arg("--data-root")
        .arg(data.path())
        .arg("--out-dir")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["system"], "corum", "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 0 && v["ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["cpu_us_per_op"].as_f64().unwrap() > 0.0, "{v}");
    let dir = std::path::PathBuf::from(v["report_dir"].as_str().unwrap());
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(rep["cases"][0]["ops"].as_u64(), Some(ops));
    assert_eq!(rep["cases"][0]["cpu_pids"].as_array().unwrap().len(), 4);
    // YCSB A: gets and puts, and together exactly the operations counted.
    let counts = support::hlog_counts(&dir);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["corum/main/get", "corum/main/put"]
    );
    assert_eq!(counts.values().sum::<u64>(), ops);
    assert!(dir.join("corum-main.hgrm").is_file());
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "the cluster's directory was not removed"
    );
}

/// Children of `pid` whose command name is `etcd`, from /proc.
fn etcd_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == "etcd" && ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Ctrl-C during a run against a local etcd cluster stops the members and removes their data.
#[test]
fn ctrl_c_stops_the_local_cluster() {
    let data = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            "etcd",
            "--local",
            "--workload",
            "put",
            "--duration",
            "60s",
            "--quiet",
        ])
        .arg("--data-root")
        .arg(data.path())
        .arg("--out-dir")
        .arg(out_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let members = loop {
        let m = etcd_children(child.id());
        if m.len() == 3 {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the local cluster did not start"
        );
        assert!(child.try_wait().unwrap().is_none(), "loadgen exited early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Let the run get going, then interrupt it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    for m in members {
        assert!(
            !std::path::Path::new(&format!("/proc/{m}")).exists(),
            "etcd member {m} still exists"
        );
    }
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "member data left behind"
    );
}
