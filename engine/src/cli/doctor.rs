//! `corum doctor`: checks a host before a node runs there, and says what to fix.
//!
//! Each check ends `ok`, `warn` (the node runs, but not as it should on a production server),
//! `fail` (the node must not run here: it would not start, or acknowledged writes would not be
//! durable) or `skip` (not checked, e.g. no data directory given). The exit code is the worst
//! result: [`EXIT_DOCTOR_OK`] (0) when nothing warned or failed, [`EXIT_DOCTOR_WARN`] (3) when
//! something warned, [`EXIT_FAILED`] (1) when something failed, [`super::EXIT_USAGE`] (2) for
//! bad flags.
//!
//! The checks, in order:
//! - `config`: with `--config`, the file as `corum serve` would take it (every rule it checks).
//! - `kernel`: the release; glommio needs io_uring from Linux 5.8, corum is tested on 6.x.
//! - `io_uring`: `kernel.io_uring_disabled` and a real `io_uring_setup` call.
//! - `cores`: the usable cores against the node's shard count (`--shards`, else the config
//!   file's `shards`, else the default: one per core); more shards than cores warns, and fails
//!   with the file's `pin = true` (shard i is pinned to core i).
//! - `memlock`: the `RLIMIT_MEMLOCK` the node needs (1 MiB per shard plus 1 MiB; the node
//!   raises its soft limit itself, so the hard limit is what counts for a non-root user).
//! - `open_files`: `RLIMIT_NOFILE` (one descriptor per client and peer connection, WAL segment
//!   and snapshot file).
//! - `clock`: whether the kernel says the clock is synchronised (`adjtimex`). corum's
//!   correctness does not depend on clocks with lease reads off (the default), so this only
//!   warns: log times and metrics across nodes stop lining up.
//! - `data_dir`: the directory exists or can be created, is writable, and is not on a
//!   filesystem that loses its contents on reboot (tmpfs, ramfs): the WAL's fdatasync would
//!   then promise durability it does not have.
//! - `o_direct`: a 4 KiB `O_DIRECT` write to a probe file in the directory (the WAL's I/O mode).
//! - `fdatasync`: `--probe-syncs` sequential 4 KiB `O_DIRECT` writes, each followed by
//!   `fdatasync`, over a probe file written once beforehand (as the WAL prefills its segments,
//!   so a sync overwrites written blocks); a p99 over etcd's guidance for its own WAL (10 ms),
//!   which applies to corum as well, warns, and over 50 ms (the slow-fsync alert) fails.
//! - `free_disk`: the free space on the directory's filesystem.
//!
//! The probe file is an unnamed `O_TMPFILE` in the data directory where the filesystem has
//! them (ext4, xfs, btrfs), else `.corum-doctor-probe` created new without following symlinks
//! and removed afterwards; nothing else in the directory is read or written, so doctor is safe
//! to run against the data directory of a stopped node (not of a running one: the probe
//! competes with its WAL).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::server::IO_MEMORY_BYTES;

/// Exit code of `corum doctor` when every check passed (or was skipped).
pub const EXIT_DOCTOR_OK: u8 = 0;
/// Exit code of `corum doctor` when at least one check warned and none failed.
pub const EXIT_DOCTOR_WARN: u8 = 3;

/// etcd's guidance for its WAL's fdatasync, which corum's WAL shares: p99 under 10 ms. Above
/// it doctor warns.
pub const FDATASYNC_P99_MAX: Duration = Duration::from_millis(10);
/// Above this fdatasync p99 doctor fails the host (the `CorumSlowFsync` alert's threshold in
/// deploy/prometheus-alerts.yml): a few noisy-neighbour spikes over 10 ms in 200 samples are
/// advice, a disk this slow is not.
pub const FDATASYNC_P99_FAIL: Duration = Duration::from_millis(50);

/// Below this much free space the node is refused (a WAL segment and a snapshot must fit).
const FREE_DISK_FAIL_BYTES: u64 = 1 << 30;
/// Below this much free space (or 10% of the filesystem) doctor warns.
const FREE_DISK_WARN_BYTES: u64 = 10 << 30;
/// Below this many open files doctor warns.
const OPEN_FILES_WARN: u64 = 65_536;
/// Below this many open files doctor refuses (a few hundred connections and segments).
const OPEN_FILES_FAIL: u64 = 1_024;

const PROBE_FILE: &str = ".corum-doctor-probe";
const BLOCK: usize = 4096;

/// Flags of `corum doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The data directory the node will use (created if missing, like `corum serve` does).
    /// Without it (and without `data_dir` in --config) the disk checks are skipped.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's config file: `data_dir` and `shards` are read from it; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shards the node will run [default: the config file's, else the number of cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// fdatasync calls the latency probe makes (1..=100000).
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub probe_syncs: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// How a check ended; ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Not checked.
    Skip,
    /// Fine.
    Ok,
    /// The node runs, not as it should in production.
    Warn,
    /// The node must not run here.
    Fail,
}

impl Status {
    /// The name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Skip => "skip",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// The check's name (`kernel`, `io_uring`, ...).
    pub name: &'static str,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a `warn` or `fail`.
    pub fix: Option<String>,
    /// Measured values, for the JSON output.
    pub values: Value,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: None,
            values: Value::Null,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    fn values(mut self, values: Value) -> Self {
        self.values = values;
        self
    }
}

/// The exit code for a set of results: the worst one decides.
pub fn exit_code(checks: &[Check]) -> u8 {
    match checks.iter().map(|c| c.status).max() {
        Some(Status::Fail) => EXIT_FAILED,
        Some(Status::Warn) => EXIT_DOCTOR_WARN,
        _ => EXIT_DOCTOR_OK,
    }
}

/// Runs `corum doctor`; returns the exit code.
pub fn run(args: DoctorArgs) -> u8 {
    let (data_dir, shards, pin) = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corum doctor: {e}");
            return EXIT_USAGE;
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = shards.unwrap_or(cores);
    let mut checks = vec![
        check_config(args.config.as_deref(), cores),
        check_kernel(),
        check_io_uring(),
        check_cores(cores, shards, pin),
        check_memlock(shards),
        check_open_files(),
        check_clock(),
    ];
    match &data_dir {
        None => {
            for name in ["data_dir", "o_direct", "fdatasync", "free_disk"] {
                checks.push(
                    Check::new(name, Status::Skip, "no data directory given")
                        .fix("pass --data-dir DIR (or --config FILE with data_dir)"),
                );
            }
        }
        Some(dir) => checks.extend(check_disk(dir, args.probe_syncs.max(1))),
    }
    let code = exit_code(&checks);
    if args.json {
        println!("{}", to_json(data_dir.as_deref(), shards, &checks, code));
    } else {
        print!("{}", to_text(data_dir.as_deref(), &checks));
    }
    code
}

/// The data directory and shard count from the flags, then the config file.
fn settings(args: &DoctorArgs) -> Result<(Option<PathBuf>, Option<usize>, bool), String> {
    let mut data_dir = None;
    let mut shards = None;
    let mut pin = false;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        if let Some(v) = table.get("data_dir") {
            let dir = v.as_str().ok_or_else(|| {
                format!("config file {}: data_dir is not a string", path.display())
            })?;
            data_dir = Some(PathBuf::from(dir));
        }
        if let Some(v) = table.get("shards") {
            let n = v.as_integer().filter(|n| *n > 0).ok_or_else(|| {
                format!(
                    "config file {}: shards is not a positive integer",
                    path.display()
                )
            })?;
            shards = Some(n as usize);
        }
        pin = table
            .get("pin")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
    }
    if args.data_dir.is_some() {
        data_dir = args.data_dir.clone();
    }
    if let Some(n) = args.shards {
        if n == 0 {
            return Err("--shards must be at least 1".into());
        }
        shards = Some(n);
    }
    Ok((data_dir, shards, pin))
}

/// Printed when doctor runs as root: the limits and permissions checked are root's.
const ROOT_NOTE: &str = "running as root: memlock, open files, io_uring and the directory's \
    permissions are checked for root, not for the user corum runs as (see deploy/README.md for \
    running doctor as that user)";

fn to_text(data_dir: Option<&Path>, checks: &[Check]) -> String {
    let mut out = String::new();
    match data_dir {
        Some(d) => out.push_str(&format!("corum doctor: data directory {}\n", d.display())),
        None => out.push_str("corum doctor: no data directory given (disk checks skipped)\n"),
    }
    if is_root() {
        out.push_str(&format!("note: {ROOT_NOTE}\n"));
    }
    for c in checks {
        out.push_str(&format!(
            "{:<5} {:<11} {}\n",
            c.status.name(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            if matches!(c.status, Status::Warn | Status::Fail) {
                out.push_str(&format!("{:<17} fix: {fix}\n", ""));
            }
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "doctor: {} ok, {} warnings, {} failed, {} skipped\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

fn to_json(data_dir: Option<&Path>, shards: usize, checks: &[Check], code: u8) -> Value {
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    json!({
        "data_dir": data_dir.map(|d| d.display().to_string()),
        "shards": shards,
        "as_root": is_root(),
        "checks": checks.iter().map(|c| json!({
            "check": c.name,
            "status": c.status.name(),
            "detail": c.detail,
            "fix": c.fix,
            "values": c.values,
        })).collect::<Vec<_>>(),
        "summary": {
            "ok": count(Status::Ok),
            "warn": count(Status::Warn),
            "fail": count(Status::Fail),
            "skip": count(Status::Skip),
        },
        "exit_code": code,
    })
}

// ---- host checks -----------------------------------------------------------------------------

/// `(major, minor)` of a kernel release string such as `6.18.0-1-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn uname_release() -> io::Result<String> {
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

fn check_kernel() -> Check {
    let release = match uname_release() {
        Ok(r) => r,
        Err(e) => return Check::new("kernel", Status::Fail, format!("uname failed: {e}")),
    };
    let values = json!({ "release": release });
    match kernel_version(&release) {
        None => Check::new(
            "kernel",
            Status::Warn,
            format!("cannot parse the kernel release {release:?}"),
        )
        .values(values),
        Some((major, minor)) if (major, minor) < (5, 8) => Check::new(
            "kernel",
            Status::Fail,
            format!("Linux {release}: glommio's io_uring needs Linux 5.8 or later"),
        )
        .fix("run corum on Linux 5.8 or later (6.x is what corum is tested on)")
        .values(values),
        Some((major, _)) if major < 6 => Check::new(
            "kernel",
            Status::Warn,
            format!("Linux {release}: runs, but corum is tested on 6.x"),
        )
        .fix("prefer a 6.x kernel")
        .values(values),
        Some(_) => Check::new("kernel", Status::Ok, format!("Linux {release}")).values(values),
    }
}

/// Creates and closes an io_uring with 4 entries; the error if the kernel refuses.
fn io_uring_probe() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags, default sizes".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the 120-byte params block we own.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn check_io_uring() -> Check {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let values = json!({ "io_uring_disabled": disabled });
    match io_uring_probe() {
        Ok(()) => Check::new(
            "io_uring",
            Status::Ok,
            format!(
                "io_uring_setup works (kernel.io_uring_disabled = {})",
                disabled.map_or("absent".to_owned(), |d| d.to_string())
            ),
        )
        .values(values),
        Err(e) => Check::new(
            "io_uring",
            Status::Fail,
            format!(
                "io_uring_setup failed: {e} (kernel.io_uring_disabled = {})",
                disabled.map_or("absent".to_owned(), |d| d.to_string())
            ),
        )
        .fix(
            "enable io_uring: sysctl kernel.io_uring_disabled=0 (or add the corum user to \
             kernel.io_uring_group when it is 1); in a container, allow io_uring_setup in the \
             seccomp profile",
        )
        .values(values),
    }
}

/// The config file as `corum serve` would take it (every rule `serve` checks).
fn check_config(path: Option<&Path>, cores: usize) -> Check {
    let Some(path) = path else {
        return Check::new("config", Status::Skip, "no --config given");
    };
    let args = super::serve::ServeArgs {
        config: Some(path.to_owned()),
        ..Default::default()
    };
    match super::serve::build_config(&args, cores) {
        Ok(c) => Check::new(
            "config",
            Status::Ok,
            format!(
                "{}: node {} of {} peers, {} shards, {} partitions x {} replicas",
                path.display(),
                c.id,
                c.peers.len(),
                c.shards,
                c.partitions,
                c.replicas
            ),
        ),
        Err(e) => Check::new(
            "config",
            Status::Fail,
            format!("{}: corum serve would refuse it: {e}", path.display()),
        )
        .fix("fix the file (engine/CLI.md lists every setting)"),
    }
}

fn check_cores(cores: usize, shards: usize, pin: bool) -> Check {
    let values = json!({ "cores": cores, "shards": shards, "pin": pin });
    if pin && shards > cores {
        Check::new(
            "cores",
            Status::Fail,
            format!("pin = true with {shards} shards on {cores} usable cores: shard i is pinned to core i, and cores {cores}.. do not exist for this process"),
        )
        .fix(format!("run --shards {cores} or turn pin off"))
        .values(values)
    } else if shards > cores {
        Check::new(
            "cores",
            Status::Warn,
            format!("{shards} shards on {cores} usable cores: shards will share cores"),
        )
        .fix(format!(
            "run --shards {cores} (one per core), or give the process more cores"
        ))
        .values(values)
    } else {
        Check::new(
            "cores",
            Status::Ok,
            format!("{shards} shards on {cores} usable cores"),
        )
        .values(values)
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

fn check_memlock(shards: usize) -> Check {
    let need = IO_MEMORY_BYTES as u64 * shards as u64 + (1 << 20);
    let (soft, hard) = match rlimit(libc::RLIMIT_MEMLOCK) {
        Ok(l) => l,
        Err(e) => return Check::new("memlock", Status::Warn, format!("getrlimit: {e}")),
    };
    let values = json!({ "need_bytes": need, "soft": soft, "hard": hard });
    let found = format!(
        "RLIMIT_MEMLOCK soft {} hard {} bytes, the node needs {need}",
        limit_text(soft),
        limit_text(hard)
    );
    if soft >= need {
        Check::new("memlock", Status::Ok, found).values(values)
    } else if hard >= need || is_root() {
        Check::new(
            "memlock",
            Status::Ok,
            format!("{found} (the node raises its soft limit itself)"),
        )
        .values(values)
    } else {
        Check::new("memlock", Status::Fail, found)
            .fix(format!(
                "raise the hard limit to at least {need} bytes: LimitMEMLOCK={need} in the \
                 systemd unit, or memlock in /etc/security/limits.conf"
            ))
            .values(values)
    }
}

fn check_open_files() -> Check {
    let (soft, hard) = match rlimit(libc::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => return Check::new("open_files", Status::Warn, format!("getrlimit: {e}")),
    };
    let values = json!({ "soft": soft, "hard": hard });
    let found = format!(
        "RLIMIT_NOFILE soft {} hard {}",
        limit_text(soft),
        limit_text(hard)
    );
    let fix = "LimitNOFILE=1048576 in the systemd unit (deploy/corum.service), or ulimit -n";
    if soft < OPEN_FILES_FAIL {
        Check::new(
            "open_files",
            Status::Fail,
            format!("{found}: under {OPEN_FILES_FAIL}, a few hundred connections exhaust it"),
        )
        .fix(fix)
        .values(values)
    } else if soft < OPEN_FILES_WARN {
        Check::new(
            "open_files",
            Status::Warn,
            format!("{found}: under {OPEN_FILES_WARN}, the limit for a production server"),
        )
        .fix(fix)
        .values(values)
    } else {
        Check::new("open_files", Status::Ok, found).values(values)
    }
}

fn check_clock() -> Check {
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state into our struct.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state < 0 {
        return Check::new(
            "clock",
            Status::Warn,
            format!("adjtimex failed: {}", io::Error::last_os_error()),
        );
    }
    let unsync = state == libc::TIME_ERROR || t.status & libc::STA_UNSYNC != 0;
    let values = json!({
        "synchronised": !unsync,
        "max_error_us": t.maxerror,
        "est_error_us": t.esterror,
    });
    if unsync {
        Check::new(
            "clock",
            Status::Warn,
            "the kernel reports the clock as not synchronised (no NTP or PTP discipline)",
        )
        .fix(
            "run an NTP client (chrony or systemd-timesyncd): corum's correctness does not \
             depend on clocks with lease reads off (the default), but logs, metrics and \
             lease reads do",
        )
        .values(values)
    } else {
        Check::new(
            "clock",
            Status::Ok,
            format!(
                "synchronised (estimated error {} µs, maximum {} µs)",
                t.esterror, t.maxerror
            ),
        )
        .values(values)
    }
}

// ---- disk checks -----------------------------------------------------------------------------

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A filesystem type's name, for the ones worth naming.
fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6573_5546 => "fuse".into(),
        0x6969 => "nfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        TMPFS_MAGIC => "tmpfs".into(),
        RAMFS_MAGIC => "ramfs".into(),
        other => format!("type 0x{other:x}"),
    }
}

/// `path` as a C string for the libc calls below.
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn statfs(dir: &Path) -> io::Result<libc::statfs> {
    let c = c_path(dir)?;
    // SAFETY: statfs reads the NUL-terminated path and fills the zeroed struct we own.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// A 4 KiB-aligned block of `len` bytes, for O_DIRECT writes.
struct AlignedBlock {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new(len: usize, fill: u8) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `ptr` is valid for `len` bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        AlignedBlock { ptr, layout }
    }

    fn pwrite(&self, file: &File, offset: u64) -> io::Result<()> {
        // SAFETY: the buffer is valid for `layout.size()` bytes for the call's duration.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                self.ptr as *const libc::c_void,
                self.layout.size(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != self.layout.size() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", self.layout.size()),
            ));
        }
        Ok(())
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn fdatasync(file: &File) -> io::Result<()> {
    // SAFETY: a valid descriptor we own.
    if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the probe file for `O_DIRECT` I/O: an unnamed `O_TMPFILE` in `dir` where the
/// filesystem has them (nothing can be planted under its name, and nothing is left behind
/// however doctor ends), else `probe_path`, created new (`O_EXCL`, `O_NOFOLLOW`: a symlink
/// planted there is never followed, so doctor run as root cannot be made to overwrite another
/// file) after removing a stale probe file, and removed by the returned guard.
fn open_probe(dir: &Path, probe_path: &Path) -> io::Result<(File, Option<ProbeFile>)> {
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_DIRECT)
        .open(dir);
    if let Ok(f) = unnamed {
        return Ok((f, None));
    }
    // A stale probe file of an interrupted run (or anything planted under its name): remove
    // the name only (remove_file never follows a symlink).
    match std::fs::remove_file(probe_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
        .open(probe_path)?;
    Ok((f, Some(ProbeFile(probe_path.to_owned()))))
}

/// Removes the probe file when dropped.
struct ProbeFile(PathBuf);

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `access(dir, W_OK | X_OK)`: whether this user may create files in `dir`, else why not.
fn writable(dir: &Path) -> io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: access reads the NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check_disk(dir: &Path, syncs: u32) -> Vec<Check> {
    let mut checks = Vec::new();
    let skip_rest = |checks: &mut Vec<Check>, why: &str| {
        for name in ["o_direct", "fdatasync", "free_disk"] {
            if !checks.iter().any(|c: &Check| c.name == name) {
                checks.push(Check::new(name, Status::Skip, why.to_owned()));
            }
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        checks.push(
            Check::new(
                "data_dir",
                Status::Fail,
                format!("cannot create {}: {e}", dir.display()),
            )
            .fix("create the directory, owned by the user corum runs as"),
        );
        skip_rest(&mut checks, "the data directory is not usable");
        return checks;
    }
    let fs = match statfs(dir) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::new(
                "data_dir",
                Status::Fail,
                format!("statfs {}: {e}", dir.display()),
            ));
            skip_rest(&mut checks, "the data directory is not usable");
            return checks;
        }
    };
    let magic = fs.f_type as i64;
    let fs_type = fs_name(magic);
    // tmpfs and ramfs keep nothing on a disk.
    let volatile = magic == TMPFS_MAGIC || magic == RAMFS_MAGIC;
    let dir_values = json!({ "path": dir.display().to_string(), "filesystem": fs_type });
    if volatile {
        checks.push(
            Check::new(
                "data_dir",
                Status::Fail,
                format!(
                    "{} is on {fs_type}: its contents are lost on reboot or power loss, so \
                     acknowledged writes would not be durable",
                    dir.display()
                ),
            )
            .fix("put the data directory on a disk filesystem (ext4 or xfs on an SSD)")
            .values(dir_values),
        );
    } else if let Err(e) = writable(dir) {
        checks.push(
            Check::new(
                "data_dir",
                Status::Fail,
                format!(
                    "{} on {fs_type} is not writable by this user: {e}",
                    dir.display()
                ),
            )
            .fix("make the directory owned by (or writable for) the user corum runs as")
            .values(dir_values),
        );
    } else {
        checks.push(
            Check::new(
                "data_dir",
                Status::Ok,
                format!("{} on {fs_type}", dir.display()),
            )
            .values(dir_values),
        );
    }

    let probe_path = dir.join(PROBE_FILE);
    let (file, _cleanup) = match open_probe(dir, &probe_path) {
        Ok(f) => f,
        Err(e) => {
            let (status, fix) = if e.raw_os_error() == Some(libc::EINVAL) {
                (
                    Status::Fail,
                    "the filesystem does not support O_DIRECT, which the WAL uses: use ext4 \
                     or xfs",
                )
            } else {
                (
                    Status::Fail,
                    "make the directory writable by the user corum runs as",
                )
            };
            checks.push(
                Check::new(
                    "o_direct",
                    status,
                    format!("cannot open {} with O_DIRECT: {e}", probe_path.display()),
                )
                .fix(fix),
            );
            checks.push(Check::new(
                "fdatasync",
                Status::Skip,
                "no O_DIRECT probe file",
            ));
            checks.push(check_free_disk(&fs));
            return checks;
        }
    };
    let block = AlignedBlock::new(BLOCK, 0xA5);
    match block.pwrite(&file, 0) {
        Ok(()) => checks.push(Check::new(
            "o_direct",
            Status::Ok,
            "4 KiB O_DIRECT writes work",
        )),
        Err(e) => {
            checks.push(
                Check::new(
                    "o_direct",
                    Status::Fail,
                    format!("a 4 KiB O_DIRECT write failed: {e}"),
                )
                .fix("the WAL needs O_DIRECT writes: use ext4 or xfs on a local disk"),
            );
            checks.push(Check::new(
                "fdatasync",
                Status::Skip,
                "O_DIRECT writes fail",
            ));
            checks.push(check_free_disk(&fs));
            return checks;
        }
    }
    if volatile {
        checks.push(Check::new(
            "fdatasync",
            Status::Skip,
            format!("{fs_type} keeps no data on a disk: fdatasync does nothing there"),
        ));
    } else {
        checks.push(check_fdatasync(&file, &block, syncs));
    }
    drop(file);
    checks.push(check_free_disk(&fs));
    checks
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn check_fdatasync(file: &File, block: &AlignedBlock, syncs: u32) -> Check {
    // Write the whole probe range once and sync it, as the WAL prefills its segments with
    // zeros (`WalConfig::prefill_segments`): the samples then measure overwrites of written
    // blocks, as WAL syncs are, not block allocation or the conversion of unwritten extents
    // (which costs a journal commit per fdatasync on ext4 and xfs).
    for i in 0..u64::from(syncs) {
        if let Err(e) = block.pwrite(file, i * BLOCK as u64) {
            return Check::new(
                "fdatasync",
                Status::Fail,
                format!("prefilling the probe file failed: {e}"),
            )
            .fix("check the disk and the kernel log (dmesg)");
        }
    }
    if let Err(e) = file.sync_all() {
        return Check::new("fdatasync", Status::Fail, format!("fsync failed: {e}"))
            .fix("check the disk and the kernel log (dmesg)");
    }
    let mut samples = Vec::with_capacity(syncs as usize);
    for i in 0..u64::from(syncs) {
        let start = Instant::now();
        let result = block
            .pwrite(file, i * BLOCK as u64)
            .and_then(|()| fdatasync(file));
        if let Err(e) = result {
            return Check::new(
                "fdatasync",
                Status::Fail,
                format!("write + fdatasync {i} failed: {e}"),
            )
            .fix("check the disk and the kernel log (dmesg)");
        }
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    let p50 = quantile(&samples, 0.50);
    let p99 = quantile(&samples, 0.99);
    let max = *samples.last().expect("at least one sample");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let values = json!({
        "samples": samples.len(),
        "p50_us": us(p50).round(),
        "p99_us": us(p99).round(),
        "max_us": us(max).round(),
        "p99_warn_us": us(FDATASYNC_P99_MAX),
        "p99_fail_us": us(FDATASYNC_P99_FAIL),
    });
    let found = format!(
        "{} x (4 KiB O_DIRECT write + fdatasync): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        us(p50) / 1e3,
        us(p99) / 1e3,
        us(max) / 1e3
    );
    if p99 > FDATASYNC_P99_MAX {
        let (status, what) = if p99 > FDATASYNC_P99_FAIL {
            (
                Status::Fail,
                format!("over {} ms", FDATASYNC_P99_FAIL.as_millis()),
            )
        } else {
            (
                Status::Warn,
                format!(
                    "over {} ms, etcd's guidance for its WAL, which corum shares",
                    FDATASYNC_P99_MAX.as_millis()
                ),
            )
        };
        Check::new("fdatasync", status, format!("{found}: p99 {what}"))
            .fix(
                "use a faster disk (an SSD with power-loss protection), keep other write-heavy \
             processes off it, or put the data directory on its own device",
            )
            .values(values)
    } else {
        Check::new("fdatasync", Status::Ok, found).values(values)
    }
}

fn check_free_disk(fs: &libc::statfs) -> Check {
    let block = fs.f_bsize as u64;
    let free = fs.f_bavail * block;
    let total = fs.f_blocks * block;
    let values = json!({ "free_bytes": free, "total_bytes": total });
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let found = format!("{:.1} GiB free of {:.1} GiB", gib(free), gib(total));
    let fix = "free space or move the data directory to a larger disk (the WAL, snapshots and \
               a snapshot being received must fit)";
    if free < FREE_DISK_FAIL_BYTES {
        Check::new("free_disk", Status::Fail, format!("{found}: under 1 GiB"))
            .fix(fix)
            .values(values)
    } else if free < FREE_DISK_WARN_BYTES || free.saturating_mul(10) < total {
        Check::new(
            "free_disk",
            Status::Warn,
            format!("{found}: under 10 GiB or 10%"),
        )
        .fix(fix)
        .values(values)
    } else {
        Check::new("free_disk", Status::Ok, found).values(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.8.0"), Some((5, 8)));
        assert_eq!(kernel_version("4.19.0+"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(kernel_version("6"), None);
    }

    #[test]
    fn the_worst_result_decides_the_exit_code() {
        let c = |s| Check::new("x", s, "");
        assert_eq!(exit_code(&[]), EXIT_DOCTOR_OK);
        assert_eq!(exit_code(&[c(Status::Ok), c(Status::Skip)]), EXIT_DOCTOR_OK);
        assert_eq!(
            exit_code(&[c(Status::Ok), c(Status::Warn)]),
            EXIT_DOCTOR_WARN
        );
        assert_eq!(
            exit_code(&[c(Status::Fail), c(Status::Warn), c(Status::Ok)]),
            EXIT_FAILED
        );
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&samples, 0.50), ms(50));
        assert_eq!(quantile(&samples, 0.99), ms(99));
        assert_eq!(quantile(&samples, 1.0), ms(100));
        assert_eq!(quantile(&[ms(7)], 0.99), ms(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn config_file_settings_are_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("corum-doctor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("corum.toml");
        std::fs::write(&file, "id = 1\ndata_dir = \"/srv/corum\"\nshards = 3\n").unwrap();
        let mut args = DoctorArgs {
            data_dir: None,
            config: Some(file.clone()),
            shards: None,
            probe_syncs: 1,
            json: false,
        };
        assert_eq!(
            settings(&args).unwrap(),
            (Some(PathBuf::from("/srv/corum")), Some(3), false)
        );
        args.data_dir = Some("/other".into());
        args.shards = Some(2);
        assert_eq!(
            settings(&args).unwrap(),
            (Some(PathBuf::from("/other")), Some(2), false)
        );
        std::fs::write(&file, "shards = -1\n").unwrap();
        args.shards = None;
        assert!(settings(&args).unwrap_err().contains("shards"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
