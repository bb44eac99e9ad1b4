//! Reports: summaries, JSON, markdown, HdrHistogram logs and SVG plots.
//!
//! A report directory `bench-results/<YYYY-MM-DD>-<name>/` (suffixed `-2`, `-3`, ... when it
//! already exists) holds:
//! - `summary.json`: the [`Report`] (machine, commit, command, every case's [`CaseSummary`],
//!   and the ratios when two systems were compared);
//! - `README.md`: the same for people;
//! - `histograms.hlog`: HdrHistogram interval log as written by the `hdrhistogram` crate's
//!   `IntervalLogWriter` (comment lines, `StartTime` / `BaseTime` headers, then one line
//!   `Tag=<tag>,<start s>,<length s>,<max>,<base64 V2-deflate histogram>` per interval; the
//!   tagged-line layout of HdrHistogram's log format 1.3, without the legend line), values in
//!   microseconds: one line per progress interval and operation kind of the measured window,
//!   tagged `<system>/<case>/<kind>`. Summing the lines of one tag gives that case's histogram
//!   exactly;
//! - `<system>-<case>.hgrm`: the percentile distribution of all kinds of a case, in the text
//!   layout of HdrHistogram's `outputPercentileDistribution` (microseconds);
//! - `latency-<case>.svg`: latency percentile spectrum (every system of the case on one chart);
//! - `throughput.svg`: successful operations per second over time, one line per system and case.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::runner::{RunResult, Second};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File-system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Encoding JSON failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Writing the histogram log failed.
    #[error("histogram log: {0}")]
    Hlog(String),
    /// Drawing a plot failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Operations in the histogram.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

/// The summary of one run (one case of a suite).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseSummary {
    /// System under test (`etcd`, `corum`, `mem`).
    pub system: String,
    /// Case or run name.
    pub name: String,
    /// The full run configuration.
    pub config: serde_json::Value,
    /// `closed` or `open`.
    pub mode: String,
    /// Start of warm-up, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// Measured seconds (see `runner`).
    pub measured_s: f64,
    /// Successful counted operations.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Latency of all kinds together.
    pub latency: Percentiles,
    /// Latency per operation kind.
    pub per_kind: BTreeMap<String, Percentiles>,
    /// Counted failures.
    pub errors: u64,
    /// Counted failures by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Reads that found nothing.
    pub not_found: u64,
    /// Lost compare-and-sets.
    pub cas_conflicts: u64,
    /// Open loop: requests scheduled in the window.
    pub scheduled: Option<u64>,
    /// Server CPU microseconds (user + system) over the window, when measured.
    pub cpu_us: Option<u64>,
    /// Server processes measured.
    pub cpu_pids: Vec<u32>,
    /// Server CPU microseconds per successful operation.
    pub cpu_us_per_op: Option<f64>,
    /// loadgen's own CPU microseconds per successful operation over the window (it competes
    /// with local servers for the same cores).
    pub loadgen_cpu_us_per_op: Option<f64>,
    /// Per-second progress (warm-up included, flagged).
    pub timeline: Vec<Second>,
}

impl CaseSummary {
    /// Summarises a run.
    pub fn from_run(r: &RunResult) -> Self {
        CaseSummary {
            system: r.system.clone(),
            name: r.config.name.clone(),
            config: serde_json::to_value(&r.config).unwrap_or(serde_json::Value::Null),
            mode: if r.config.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            started_at_unix_s: r
                .started_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            measured_s: r.measured.as_secs_f64(),
            ops: r.ops,
            ops_per_s: r.ops_per_s(),
            latency: Percentiles::of(&r.all),
            per_kind: r
                .per_kind
                .iter()
                .map(|(k, h)| (k.name().to_string(), Percentiles::of(h)))
                .collect(),
            errors: r.error_count(),
            errors_by_kind: r.errors.clone(),
            not_found: r.not_found,
            cas_conflicts: r.cas_conflicts,
            scheduled: r.scheduled,
            cpu_us: r.cpu.as_ref().map(|c| c.cpu_us),
            cpu_pids: r.cpu.as_ref().map(|c| c.pids.clone()).unwrap_or_default(),
            cpu_us_per_op: r.cpu_us_per_op(),
            loadgen_cpu_us_per_op: r
                .loadgen_cpu_us
                .filter(|_| r.ops > 0)
                .map(|c| c as f64 / r.ops as f64),
            timeline: r.timeline.clone(),
        }
    }

    /// The one-line JSON object every run prints last.
    pub fn json_line(&self) -> serde_json::Value {
        serde_json::json!({
            "system": self.system,
            "name": self.name,
            "ops_per_s": round1(self.ops_per_s),
            "p50_us": self.latency.p50_us,
            "p90_us": self.latency.p90_us,
            "p99_us": self.latency.p99_us,
            "p999_us": self.latency.p999_us,
            "p9999_us": self.latency.p9999_us,
            "max_us": self.latency.max_us,
            "ops": self.ops,
            "errors": self.errors,
            "cpu_us_per_op": self.cpu_us_per_op.map(round1),
            "loadgen_cpu_us_per_op": self.loadgen_cpu_us_per_op.map(round1),
        })
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The ratios `loadgen compare` reports: corum over etcd for throughput, etcd over corum for
/// latency and CPU, so bigger is better for all four.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// corum write ops/s over etcd's.
    pub write_ratio: f64,
    /// corum read ops/s over etcd's.
    pub read_ratio: f64,
    /// etcd p99 over corum p99 at equal open-loop load.
    pub p99_ratio: f64,
    /// etcd CPU-us per write over corum's.
    pub cpu_ratio: Option<f64>,
}

/// Where and on what a report was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Filesystem type of the server data directory.
    pub filesystem: String,
    /// /proc/loadavg when the report was made (other work on the machine shows here).
    pub loadavg: String,
}

impl Machine {
    /// Describes this machine; `data_dir` is where the servers kept their data.
    pub fn describe(data_dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu_model,
            filesystem: filesystem_of(data_dir),
            loadavg: read_trim("/proc/loadavg"),
        }
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Filesystem type and device of the mount holding `path` (longest mount-point prefix in
/// /proc/mounts).
pub fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({} on {})", f[2], f[0], f[1])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

/// The short commit of the repository loadgen was built from, `-dirty` when the work tree has
/// uncommitted changes, or `unknown`.
pub fn git_commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => match run(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

/// A whole report: one or more cases, maybe two systems.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Report name (the directory is `<date>-<name>`).
    pub name: String,
    /// Seconds since the Unix epoch when written.
    pub created_unix_s: f64,
    /// Commit loadgen was built from.
    pub commit: String,
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Free-form notes (e.g. that the machine was shared).
    pub notes: Vec<String>,
    /// Every case, in the order run.
    pub cases: Vec<CaseSummary>,
    /// Ratios, when two systems were compared.
    pub ratios: Option<Ratios>,
}

/// `YYYY-MM-DD` (UTC) of a time.
pub fn utc_date(t: SystemTime) -> String {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (H. Hinnant), for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Creates `<out>/<date>-<name>[-N]` and returns it.
pub fn create_report_dir(out: &Path, name: &str) -> Result<PathBuf, ReportError> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = format!("{}-{safe}", utc_date(SystemTime::now()));
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    for n in 1.. {
        let dir = if n == 1 {
            out.join(&base)
        } else {
            out.join(format!("{base}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(ReportError::Io {
                    path: dir,
                    source: e,
                })
            }
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Writes every file of the report into `dir` (see the module documentation). `runs` are the
/// runs behind `report.cases`, in the same order, for the histograms.
pub fn write_report(dir: &Path, report: &Report, runs: &[&RunResult]) -> Result<(), ReportError> {
    let json = dir.join("summary.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?).map_err(io_err(&json))?;
    let md = dir.join("README.md");
    std::fs::write(&md, markdown(report)).map_err(io_err(&md))?;
    write_hlog(&dir.join("histograms.hlog"), runs)?;
    for r in runs {
        let p = dir.join(format!("{}-{}.hgrm", r.system, r.config.name));
        std::fs::write(&p, percentile_distribution(&r.all)).map_err(io_err(&p))?;
    }
    // One spectrum per case name, all systems that ran it on one chart.
    let mut by_case: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        by_case.entry(r.config.name.as_str()).or_default().push(r);
    }
    for (case, rs) in &by_case {
        let series: Vec<(String, &Histogram<u64>)> = if rs.len() == 1 && rs[0].per_kind.len() > 1 {
            let r = rs[0];
            let mut s = vec![(format!("{} all", r.system), &r.all)];
            s.extend(
                r.per_kind
                    .iter()
                    .map(|(k, h)| (format!("{} {}", r.system, k.name()), h)),
            );
            s
        } else {
            rs.iter().map(|r| (r.system.clone(), &r.all)).collect()
        };
        plot_spectrum(
            &dir.join(format!("latency-{case}.svg")),
            &format!("latency spectrum: {case}"),
            &series,
        )?;
    }
    plot_throughput(&dir.join("throughput.svg"), runs)?;
    Ok(())
}

fn write_hlog(path: &Path, runs: &[&RunResult]) -> Result<(), ReportError> {
    let mut buf = Vec::new();
    {
        let base = runs
            .iter()
            .map(|r| r.started_at)
            .min()
            .unwrap_or_else(SystemTime::now);
        let mut ser = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("loadgen latency intervals, values in microseconds")
            .add_comment("tag = <system>/<case>/<kind>; only operations of the measured window")
            .with_start_time(base)
            .with_base_time(base);
        let mut w = builder
            .begin_log_with(&mut buf, &mut ser)
            .map_err(|e| ReportError::Hlog(e.to_string()))?;
        for r in runs {
            let offset = r.started_at.duration_since(base).unwrap_or_default();
            for iv in &r.intervals {
                let tag = format!("{}/{}/{}", r.system, r.config.name, iv.kind.name());
                let tag =
                    Tag::new(&tag).ok_or_else(|| ReportError::Hlog(format!("bad tag {tag:?}")))?;
                w.write_histogram(&iv.hist, offset + iv.start, iv.length, Some(tag))
                    .map_err(|e| ReportError::Hlog(format!("{e:?}")))?;
            }
        }
    }
    std::fs::write(path, buf).map_err(io_err(path))
}

/// HdrHistogram's text percentile distribution (values in microseconds, shown in ms).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut s = String::from("       Value(ms)   Percentile   TotalCount 1/(1-Percentile)\n\n");
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                format!("{:.2}", 1.0 / (1.0 - q))
            } else {
                "inf".into()
            };
            let _ = writeln!(
                s,
                "{:>16.3} {:>12.6} {:>12} {:>14}",
                v.value_iterated_to() as f64 / 1000.0,
                q,
                v.count_since_last_iteration(),
                inv
            );
        }
    }
    let _ = writeln!(
        s,
        "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {:.3}, Total count = {}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    s
}

const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(23, 190, 207),
];

/// Latency percentile spectrum: x is the percentile on the usual "nines" scale
/// (`-log10(1 - q)`: 0 = 0%, 1 = 90%, 2 = 99%, ...), y the latency in milliseconds, log scale.
pub fn plot_spectrum(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<(), ReportError> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let points: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let pts = h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| {
                    (
                        -(1.0 - v.quantile_iterated_to()).log10(),
                        v.value_iterated_to().max(1) as f64 / 1000.0,
                    )
                })
                .chain(std::iter::once((
                    nines_max(h),
                    h.max().max(1) as f64 / 1000.0,
                )))
                .collect();
            (name.clone(), pts)
        })
        .collect();
    let xmax = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let ymax = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.01f64, f64::max)
        * 2.0;
    let ymin = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(f64::MAX, f64::min)
        .min(ymax / 4.0)
        / 2.0;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin.max(0.001)..ymax).log_scale())
        .map_err(|e| perr(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| perr(&e))?;
    for (i, (name, pts)) in points.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| perr(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| perr(&e))?;
    root.present().map_err(|e| perr(&e))
}

/// Where the maximum sits on the nines scale: one step past the last percentile the count
/// resolves (1 - 1/count).
fn nines_max(h: &Histogram<u64>) -> f64 {
    (h.len().max(1) as f64).log10()
}

fn nines_label(x: f64) -> String {
    let n = x.round() as i32;
    match n {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

/// Successful operations per second over time, one line per run (warm-up included, at negative
/// times: the measured window starts at 0).
pub fn plot_throughput(path: &Path, runs: &[&RunResult]) -> Result<(), ReportError> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let w = r.config.warmup.as_secs_f64();
            let pts = r
                .timeline
                .iter()
                .map(|s| (s.t_s + s.len_s - w, s.ops_per_s))
                .collect();
            (format!("{} {}", r.system, r.config.name), pts)
        })
        .collect();
    let xmin = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(0.0f64, f64::min)
        .floor();
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "throughput (successful ops/s per second; warm-up before 0)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(xmin..xmax, 0f64..ymax)
        .map_err(|e| perr(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ops/s")
        .draw()
        .map_err(|e| perr(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| perr(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| perr(&e))?;
    root.present().map_err(|e| perr(&e))
}

fn opt_f(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// The summary table (also printed to stdout by the CLI).
pub fn summary_table(cases: &[CaseSummary]) -> String {
    let mut s = String::from(
        "| system | case | mode | ops/s | p50 | p90 | p99 | p99.9 | p99.99 | max | errors | server CPU us/op | loadgen CPU us/op |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cases {
        let l = &c.latency;
        let mode = match c.config.get("rate").and_then(|r| r.as_f64()) {
            Some(rate) => format!("open {rate:.0}/s"),
            None => format!(
                "closed {}",
                c.config
                    .get("concurrency")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
            ),
        };
        let errors = if c.errors == 0 {
            "0".to_string()
        } else {
            let kinds: Vec<String> = c
                .errors_by_kind
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            format!("{} ({})", c.errors, kinds.join(", "))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.system,
            c.name,
            mode,
            c.ops_per_s,
            crate::runner::fmt_us(l.p50_us),
            crate::runner::fmt_us(l.p90_us),
            crate::runner::fmt_us(l.p99_us),
            crate::runner::fmt_us(l.p999_us),
            crate::runner::fmt_us(l.p9999_us),
            crate::runner::fmt_us(l.max_us),
            errors,
            opt_f(c.cpu_us_per_op),
            opt_f(c.loadgen_cpu_us_per_op),
        );
    }
    s
}

/// The markdown page.
pub fn markdown(r: &Report) -> String {
    let mut s = format!("# loadgen report: {}\n\n", r.name);
    let _ = writeln!(s, "- commit: `{}`", r.commit);
    let _ = writeln!(s, "- command: `{}`", r.command);
    let m = &r.machine;
    let _ = writeln!(
        s,
        "- machine: {} CPUs, {}, kernel {}",
        m.nproc, m.cpu_model, m.kernel
    );
    let _ = writeln!(s, "- server data filesystem: {}", m.filesystem);
    let _ = writeln!(s, "- load average when written: {}", m.loadavg);
    for n in &r.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    s.push_str("\n## Summary\n\n");
    s.push_str(&summary_table(&r.cases));
    if let Some(x) = &r.ratios {
        s.push_str("\n## Ratios (bigger is better)\n\n| write_ratio | read_ratio | p99_ratio | cpu_ratio |\n|---:|---:|---:|---:|\n");
        let _ = writeln!(
            s,
            "| {:.2} | {:.2} | {:.2} | {} |",
            x.write_ratio,
            x.read_ratio,
            x.p99_ratio,
            opt_f(x.cpu_ratio)
        );
    }
    s.push_str("\n## Per operation kind\n\n| system | case | kind | count | p50 | p99 | p99.9 | max |\n|---|---|---|---:|---:|---:|---:|---:|\n");
    for c in &r.cases {
        for (k, p) in &c.per_kind {
            let _ = writeln!(
                s,
                "| {} | {} | {k} | {} | {} | {} | {} | {} |",
                c.system,
                c.name,
                p.count,
                crate::runner::fmt_us(p.p50_us),
                crate::runner::fmt_us(p.p99_us),
                crate::runner::fmt_us(p.p999_us),
                crate::runner::fmt_us(p.max_us)
            );
        }
    }
    s.push_str("\n## Cases\n\n");
    for c in &r.cases {
        let _ = writeln!(
            s,
            "- `{}` on {}: {} ops in {:.1} s, not found {}, CAS conflicts {}{}; config `{}`",
            c.name,
            c.system,
            c.ops,
            c.measured_s,
            c.not_found,
            c.cas_conflicts,
            c.scheduled
                .map(|n| format!(", scheduled {n}"))
                .unwrap_or_default(),
            c.config
        );
    }
    s.push_str(
        "\n## Files\n\n- `summary.json`: everything above, machine-readable\n\
         - `histograms.hlog`: HdrHistogram interval log (microseconds), tags `<system>/<case>/<kind>`\n\
         - `*.hgrm`: percentile distributions (HdrHistogram text layout)\n\
         - `latency-<case>.svg`: latency percentile spectra; `throughput.svg`: ops/s over time\n",
    );
    s.push_str("\n![throughput](throughput.svg)\n");
    let mut names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
    names.dedup();
    for n in names {
        let _ = writeln!(s, "\n![latency {n}](latency-{n}.svg)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            utc_date(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(
            utc_date(UNIX_EPOCH + std::time::Duration::from_secs(1_795_305_600)),
            "2026-11-22"
        );
    }

    #[test]
    fn nines() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(5.0), "99.999%");
    }
}
