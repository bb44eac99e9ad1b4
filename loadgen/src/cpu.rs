//! CPU time of local server processes, from `/proc/<pid>/stat`.
//!
//! Fields 14 and 15 of `/proc/<pid>/stat` (`utime`, `stime`, in clock ticks of
//! `sysconf(_SC_CLK_TCK)`, 100 per second on Linux) are the user and system time of the whole
//! process: the kernel sums them over every thread of the thread group, live and exited, so the
//! per-thread files under `/proc/<pid>/task/` are not added again. Children's time (`cutime`,
//! `cstime`) is not counted: servers do their work in their own threads.
//!
//! The resolution is one tick (10 ms), so CPU per operation is only meaningful over runs of many
//! operations (a 10 s run at 1,000 ops/s measures to about 1 us per op).

use std::collections::BTreeMap;
use std::time::Duration;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The process does not exist (or `/proc` is not mounted).
    #[error("reading /proc/{pid}/stat: {source}")]
    Read {
        /// The process id.
        pid: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The stat line did not have the expected shape.
    #[error("unexpected /proc/{pid}/stat contents: {reason}")]
    Parse {
        /// The process id.
        pid: u32,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Parses user + system time, in clock ticks, from the text of a `/proc/<pid>/stat` file.
/// The command name (field 2) is in parentheses and may itself contain spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn parse_stat_ticks(pid: u32, stat: &str) -> Result<u64, CpuError> {
    parse_ticks(pid, stat)
        .inspect_err(|e| tracing::warn!(pid, error = %e, "cannot parse /proc stat"))
}

fn parse_ticks(pid: u32, stat: &str) -> Result<u64, CpuError> {
    let close = stat.rfind(')').ok_or(CpuError::Parse {
        pid,
        reason: "no ')' after comm",
    })?;
    // After ") " come fields 3 (state) onwards; utime is field 14, stime field 15.
    let mut fields = stat[close + 1..].split_ascii_whitespace();
    let utime = fields.nth(11).ok_or(CpuError::Parse {
        pid,
        reason: "missing utime",
    })?;
    let stime = fields.next().ok_or(CpuError::Parse {
        pid,
        reason: "missing stime",
    })?;
    let parse = |s: &str, reason| {
        s.parse::<u64>()
            .map_err(|_| CpuError::Parse { pid, reason })
    };
    Ok(parse(utime, "utime not a number")? + parse(stime, "stime not a number")?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time used so far by one process (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration, CpuError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| CpuError::Read { pid, source })?;
    let ticks = parse_stat_ticks(pid, &text)?;
    Ok(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_second(),
    ))
}

/// CPU time of a set of processes at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    per_pid: BTreeMap<u32, Duration>,
}

impl CpuSample {
    /// Samples every pid; fails if any cannot be read (a server that died mid-run makes the CPU
    /// figure meaningless, so it is not silently dropped).
    pub fn take(pids: &[u32]) -> Result<Self, CpuError> {
        let mut per_pid = BTreeMap::new();
        for &pid in pids {
            per_pid.insert(pid, process_cpu(pid)?);
        }
        Ok(CpuSample { per_pid })
    }

    /// CPU time used between `earlier` and `self`, summed over the pids present in both.
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        self.per_pid
            .iter()
            .filter_map(|(pid, now)| {
                earlier
                    .per_pid
                    .get(pid)
                    .map(|then| now.saturating_sub(*then))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line =
            "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 8 0 \
                    1000 2000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(4242, line).unwrap(), 325);
        assert!(parse_stat_ticks(1, "1 (x) S 1 2").is_err());
        assert!(parse_stat_ticks(1, "garbage").is_err());
    }

    #[test]
    fn own_process_uses_cpu() {
        let me = std::process::id();
        let before = CpuSample::take(&[me]).unwrap();
        // Burn CPU until /proc shows 50 ms of it (on a loaded machine the wall time needed can
        // be much longer than 50 ms); a reader that never saw CPU time grow would spin until
        // the 30 s limit and fail.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut used = Duration::ZERO;
        while used < Duration::from_millis(50) && start.elapsed() < Duration::from_secs(30) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            used = CpuSample::take(&[me]).unwrap().since(&before);
        }
        assert!(
            used >= Duration::from_millis(50),
            "{used:?} after {:?}",
            start.elapsed()
        );
        assert!(CpuSample::take(&[u32::MAX]).is_err());
    }
}
