//! `corum doctor` as a user runs it: the real binary against a directory on a disk filesystem
//! and one on tmpfs, text and JSON output, exit codes by severity.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CORUM: &str = env!("CARGO_BIN_EXE_corum");

/// Runs `corum doctor --json` with `args`; returns the exit code and the parsed report.
fn doctor_json(args: &[&str]) -> (i32, Value) {
    let out = Command::new(CORUM)
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("run corum doctor");
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {text:?}"));
    (out.status.code().expect("exited"), report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"]
        .as_str()
        .expect("status string")
}

/// The exit code must be the worst status: fail 1, warn 3, else 0.
fn assert_exit_matches(code: i32, report: &Value) {
    let summary = &report["summary"];
    let expected = if summary["fail"].as_u64().unwrap() > 0 {
        1
    } else if summary["warn"].as_u64().unwrap() > 0 {
        3
    } else {
        0
    };
    assert_eq!(code, expected, "exit code against the summary {summary}");
    assert_eq!(report["exit_code"], expected);
}

fn statfs_type(dir: &Path) -> i64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed struct we own.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut s) }, 0, "statfs");
    s.f_type as i64
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

#[test]
fn a_disk_directory_passes_the_disk_checks() {
    // The target directory is on the build's disk (never tmpfs on the CI machine).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doctor-good");
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(
        statfs_type(Path::new(env!("CARGO_TARGET_TMPDIR"))),
        TMPFS_MAGIC,
        "the target directory is on tmpfs: this test needs a disk filesystem"
    );
    let dir_arg = dir.to_str().unwrap();
    let (code, report) = doctor_json(&["--data-dir", dir_arg, "--probe-syncs", "30"]);
    assert_exit_matches(code, &report);
    // Deterministic on any Linux that runs corum's tests at all (they need io_uring and
    // O_DIRECT): these must pass. The kernel check warns on 5.x, which runs corum.
    for name in ["io_uring", "data_dir", "o_direct"] {
        assert_eq!(status(&report, name), "ok", "{name}: {report}");
    }
    assert!(
        matches!(status(&report, "kernel"), "ok" | "warn"),
        "{report}"
    );
    assert_eq!(status(&report, "config"), "skip", "no --config given");
    // The probe ran and measured; whether it passes depends on the disk and the machine's load.
    let sync = check(&report, "fdatasync");
    assert!(
        matches!(sync["status"].as_str(), Some("ok" | "warn" | "fail")),
        "{sync}"
    );
    assert_eq!(sync["values"]["samples"], 30, "{sync}");
    assert!(sync["values"]["p99_us"].as_f64().unwrap() > 0.0, "{sync}");
    assert!(
        sync["values"]["p99_us"].as_f64() >= sync["values"]["p50_us"].as_f64(),
        "{sync}"
    );
    assert!(
        check(&report, "free_disk")["values"]["free_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The directory is created, and the probe file does not outlive the run.
    assert!(dir.is_dir());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "probe file left behind"
    );
    // Shards beyond the cores warn.
    let (code, report) = doctor_json(&["--shards", "4096"]);
    assert_eq!(status(&report, "cores"), "warn", "{report}");
    assert_ne!(code, 0);
    assert_eq!(status(&report, "data_dir"), "skip");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A directory on tmpfs: /dev/shm when it is one, else a tmpfs mounted for the test (root).
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn new() -> Option<Tmpfs> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && statfs_type(shm) == TMPFS_MAGIC {
            let dir = shm.join(format!("corum-doctor-{}", std::process::id()));
            return Some(Tmpfs {
                dir,
                mounted: false,
            });
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doctor-tmpfs");
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir, mounted: true })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn a_tmpfs_directory_is_refused_with_the_fix() {
    let Some(tmpfs) = Tmpfs::new() else {
        // No /dev/shm tmpfs and no permission to mount one: nothing to test here.
        eprintln!("SKIPPED: no tmpfs available (no tmpfs /dev/shm, mount failed)");
        return;
    };
    let data = tmpfs.dir.join("data");
    let data_arg = data.to_str().unwrap();
    let (code, report) = doctor_json(&["--data-dir", data_arg, "--probe-syncs", "5"]);
    assert_eq!(code, 1, "a failed check exits 1: {report}");
    assert_exit_matches(code, &report);
    let dd = check(&report, "data_dir");
    assert_eq!(dd["status"], "fail", "{dd}");
    assert!(dd["detail"].as_str().unwrap().contains("tmpfs"), "{dd}");
    assert_eq!(dd["values"]["filesystem"], "tmpfs");
    assert!(dd["fix"].as_str().unwrap().contains("disk"), "{dd}");
    // fdatasync means nothing on tmpfs: not measured, so not reported as fast.
    assert_eq!(status(&report, "fdatasync"), "skip", "{report}");

    // The text output names the failure and its fix.
    let out = Command::new(CORUM)
        .args(["doctor", "--data-dir", data_arg, "--probe-syncs", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("fail  data_dir"))
        .unwrap_or_else(|| panic!("no failed data_dir line in:\n{text}"));
    assert!(line.contains("tmpfs"), "{line}");
    assert!(
        text.contains("fix: put the data directory on a disk filesystem"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().contains("1 failed"), "{text}");
}

#[test]
fn a_symlink_planted_at_the_probe_name_is_never_followed() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doctor-symlink");
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, data.join(".corum-doctor-probe")).unwrap();
    let (code, report) = doctor_json(&["--data-dir", data.to_str().unwrap(), "--probe-syncs", "3"]);
    assert_exit_matches(code, &report);
    assert_eq!(status(&report, "o_direct"), "ok", "{report}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "doctor wrote through a planted symlink"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_config_file_is_checked_as_serve_would() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doctor-config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corum.toml");
    let data = dir.join("data");
    let base = format!(
        "id = 1\ndata_dir = \"{}\"\nclient_addr = \"127.0.0.1:7000\"\n\
         peer_addr = \"127.0.0.1:7100\"\npeers = {{ 1 = \"127.0.0.1:7100\" }}\nreplicas = 1\n",
        data.display()
    );
    std::fs::write(&file, format!("{base}shards = 1\n")).unwrap();
    let cfg = file.to_str().unwrap();
    let (code, report) = doctor_json(&["--config", cfg, "--probe-syncs", "3"]);
    assert_exit_matches(code, &report);
    assert_eq!(status(&report, "config"), "ok", "{report}");
    assert_eq!(
        report["data_dir"],
        data.to_str().unwrap(),
        "data_dir from the file"
    );
    // A rule serve enforces (replicas <= peers) fails the config check.
    std::fs::write(
        &file,
        format!("{base}shards = 1\n").replace("replicas = 1", "replicas = 3"),
    )
    .unwrap();
    let (code, report) = doctor_json(&["--config", cfg, "--probe-syncs", "3"]);
    assert_eq!(code, 1, "{report}");
    let c = check(&report, "config");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("replicas"), "{c}");
    // Pinned shards beyond the cores cannot start: fail, not warn.
    std::fs::write(&file, format!("{base}shards = 4096\npin = true\n")).unwrap();
    let (code, report) = doctor_json(&["--config", cfg, "--probe-syncs", "3"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(status(&report, "cores"), "fail", "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = Command::new(CORUM)
        .args(["doctor", "--shards", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for n in ["0", "100001"] {
        let out = Command::new(CORUM)
            .args(["doctor", "--probe-syncs", n])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--probe-syncs {n}");
    }
    let out = Command::new(CORUM)
        .args(["doctor", "--config", "/nonexistent/corum.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/corum.toml"));
}
