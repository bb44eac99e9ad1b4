//! The run directory: `report.json` (verdict, counts, per-key verdicts, fault timeline, plan),
//! `history.jsonl` (one operation per line, in call order), `latency.svg` (latency and
//! throughput over time with the fault windows shaded) and `report.md` (the same, short).

use std::io::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::run::{FaultEvent, RunOutput};
use crate::workload::{OpRecord, Status};

/// Writes every file of the report into `dir`.
pub fn write(dir: &Path, out: &RunOutput, command: &str) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{}/{what}: {e}", dir.display());
    let report = serde_json::json!({
        "command": command,
        "summary": out.summary,
        "faults": out.faults,
        "plan": out.plan,
        "workload_ms": out.workload_ms,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    )
    .map_err(|e| io("report.json", e))?;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(dir.join("history.jsonl")).map_err(|e| io("history.jsonl", e))?,
    );
    for op in &out.history {
        let line = serde_json::to_string(op).unwrap_or_default();
        writeln!(f, "{line}").map_err(|e| io("history.jsonl", e))?;
    }
    f.flush().map_err(|e| io("history.jsonl", e))?;
    svg(
        &dir.join("latency.svg"),
        &out.history,
        &out.faults,
        out.workload_ms,
    )?;
    std::fs::write(dir.join("report.md"), markdown(out, command))
        .map_err(|e| io("report.md", e))?;
    Ok(())
}

fn markdown(out: &RunOutput, command: &str) -> String {
    let s = &out.summary;
    let mut m = String::new();
    m += &format!(
        "# corum chaos run, seed {}\n\n`{command}`\n\n**Verdict: {}**\n\n",
        s.seed,
        if s.clean { "clean" } else { "NOT CLEAN" }
    );
    m += &format!(
        "- {} nodes, {} s, nemeses {:?}\n- {} ops ({} ok, {} info, {} fail), {} faults\n",
        s.nodes, s.seconds, s.nemeses, s.ops, s.ops_ok, s.ops_info, s.ops_fail, s.faults
    );
    m += &format!(
        "- linearizability: {} keys checked, {} not linearizable, {} unknown\n",
        s.keys.len(),
        s.keys
            .iter()
            .filter(|k| k.verdict == "not linearizable")
            .count(),
        s.keys_unknown
    );
    m += &format!(
        "- set: {} acknowledged adds, {} present after healing, {} lost\n",
        s.adds_acked,
        s.adds_present,
        s.lost.len()
    );
    m += &format!(
        "- leaders everywhere {} after healing; replicas converged {}; {} keys compared, {} partitions differ\n",
        s.heal_ms.map_or("NEVER".into(), |ms| format!("{ms} ms")),
        s.converge_ms.map_or("NEVER".into(), |ms| format!("after {ms} ms")),
        s.keys_compared,
        s.divergences.len()
    );
    m += &format!(
        "- phantom stale reads: {}; crashes: {}; harness errors: {}\n\n",
        s.phantom_reads.len(),
        s.crashes.len(),
        s.harness_errors.len()
    );
    m += "## Faults\n\n| start s | end s | writes back after (ms) | fault |\n|---|---|---|---|\n";
    for f in &out.faults {
        m += &format!(
            "| {:.1} | {} | {} | {} |\n",
            f.start_ms as f64 / 1000.0,
            f.end_ms
                .map_or("-".into(), |e| format!("{:.1}", e as f64 / 1000.0)),
            f.recovery_ms.map_or("-".into(), |r| r.to_string()),
            f.description
        );
    }
    for k in s.keys.iter().filter(|k| k.detail.is_some()) {
        m += &format!(
            "\n## {} is {}\n\n```\n{}\n```\n",
            k.key,
            k.verdict,
            k.detail.as_deref().unwrap_or("")
        );
    }
    m
}

/// Bucket width of the latency chart.
const BUCKET_MS: u64 = 500;

fn fault_color(f: &FaultEvent) -> RGBColor {
    match f.fault.nemesis() {
        crate::nemesis::Nemesis::Kill => RGBColor(230, 80, 80),
        crate::nemesis::Nemesis::Pause => RGBColor(230, 170, 60),
        crate::nemesis::Nemesis::Partition => RGBColor(90, 120, 230),
        crate::nemesis::Nemesis::Loss => RGBColor(150, 90, 200),
        crate::nemesis::Nemesis::KillAll => RGBColor(150, 20, 20),
        crate::nemesis::Nemesis::Blackhole => RGBColor(60, 60, 60),
        crate::nemesis::Nemesis::Delay => RGBColor(40, 170, 120),
    }
}

fn svg(
    path: &Path,
    history: &[OpRecord],
    faults: &[FaultEvent],
    workload_ms: u64,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let buckets = (workload_ms / BUCKET_MS + 1) as usize;
    // Per bucket (by completion time): latencies of ok ops, and counts of info/fail.
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    let mut bad = vec![0u64; buckets];
    for op in history.iter().filter(|o| o.client != 0) {
        let b = ((op.end_us / 1000) / BUCKET_MS) as usize;
        if b >= buckets {
            continue;
        }
        match op.status {
            Status::Ok => lat[b].push((op.end_us - op.start_us) as f64 / 1000.0),
            _ => bad[b] += 1,
        }
    }
    let quantile = |v: &mut Vec<f64>, q: f64| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    };
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    let mut tput = Vec::new();
    let mut errs = Vec::new();
    let per_s = 1000.0 / BUCKET_MS as f64;
    for (i, v) in lat.iter_mut().enumerate() {
        let t = (i as u64 * BUCKET_MS + BUCKET_MS / 2) as f64 / 1000.0;
        tput.push((t, v.len() as f64 * per_s));
        errs.push((t, bad[i] as f64 * per_s));
        if let (Some(a), Some(b), Some(c)) = (quantile(v, 0.5), quantile(v, 0.99), quantile(v, 1.0))
        {
            p50.push((t, a.max(0.01)));
            p99.push((t, b.max(0.01)));
            max.push((t, c.max(0.01)));
        }
    }
    let x_max = workload_ms as f64 / 1000.0;
    let y_max = max.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.5;
    let t_max = tput
        .iter()
        .chain(errs.iter())
        .map(|p| p.1)
        .fold(1.0f64, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(420);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "latency of ok operations (ms, log scale); shaded: faults",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (0.01f64..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| err(&e))?;
    for f in faults {
        let end = f.end_ms.unwrap_or(workload_ms) as f64 / 1000.0;
        let c = fault_color(f);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f.start_ms as f64 / 1000.0, 0.01), (end, y_max)],
                c.mix(0.18).filled(),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                serde_json::to_value(f.fault.nemesis())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                (f.start_ms as f64 / 1000.0, y_max / 1.6),
                ("sans-serif", 12).into_font().color(&c),
            )))
            .map_err(|e| err(&e))?;
    }
    for (series, color, label) in [
        (&p50, RGBColor(40, 40, 40), "p50"),
        (&p99, RGBColor(0, 130, 200), "p99"),
        (&max, RGBColor(220, 0, 0), "max"),
    ] {
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("ops/s: ok (black), info+fail (red)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..t_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(&e))?;
    for f in faults {
        let end = f.end_ms.unwrap_or(workload_ms) as f64 / 1000.0;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f.start_ms as f64 / 1000.0, 0.0), (end, t_max)],
                fault_color(f).mix(0.18).filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(LineSeries::new(tput, BLACK))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(errs, RED))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
