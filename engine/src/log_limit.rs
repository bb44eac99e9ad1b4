//! Rate-limited log lines for events an outsider can repeat at will (garbage on a port, a
//! connection flood, a failing `accept` at EMFILE) or that repeat while a fault lasts: a few
//! lines per window, and the first line let through after some were held back carries
//! `suppressed = N`, so the count is never lost.
//!
//! [`LogLimiter`] limits one stream of lines (the operations port keeps one per kind);
//! [`warn_limited!`](crate::warn_limited) gives each call site its own, shared by every thread
//! (shard) of the process:
//! ```ignore
//! crate::warn_limited!(client = %peer, error = %e, "bad request frame body");
//! ```
//! The limiter is the call site's, not the message's: one call site that logs several kinds of
//! input (a `reason` field) lets a flood of one kind hide the others, so such a line is
//! written once per kind (the peer port's refusals, `server::net::log_peer_end`). Lines of a
//! shard thread name no `shard` field: the thread's span names the node and shard.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window of [`warn_limited!`](crate::warn_limited): at most [`BURST`] lines per call
/// site per 10 s.
pub const EVERY: Duration = Duration::from_secs(10);
/// Lines per window of [`warn_limited!`](crate::warn_limited): distinct events close together
/// (a few bad connections) are all logged; a flood is cut to one line a second on average.
pub const BURST: u64 = 10;

/// Lets `burst` log lines through per window of `every` and counts the ones it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    burst: u64,
    /// (start of the current window, lines let through in it, lines held back since the last
    /// one let through).
    state: Mutex<(Option<Instant>, u64, u64)>,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self::with_burst(every, 1)
    }

    /// At most `burst` lines per window of `every`.
    pub const fn with_burst(every: Duration, burst: u64) -> Self {
        LogLimiter {
            every,
            burst,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// Some(lines suppressed since the last one) if a line may be logged at `now`.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, passed, suppressed) = &mut *g;
        if start.is_none_or(|t| now.saturating_duration_since(t) >= self.every) {
            *start = Some(now);
            *passed = 0;
        }
        if *passed < self.burst {
            *passed += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// `tracing::warn!`, at most [`BURST`] lines per call site per [`EVERY`]; the first line
/// after some were held back has `suppressed = N` (module docs).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimiter =
            $crate::log_limit::LogLimiter::with_burst(
                $crate::log_limit::EVERY,
                $crate::log_limit::BURST,
            );
        match LIMIT.admit(std::time::Instant::now()) {
            Some(0) => tracing::warn!($($arg)+),
            Some(suppressed) => tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(4)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(6)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), Some(1));
    }

    #[test]
    fn a_burst_passes_then_the_rest_of_the_window_is_counted() {
        let l = LogLimiter::with_burst(EVERY, BURST);
        let t0 = Instant::now();
        let passed: Vec<_> = (0..3 * BURST).filter_map(|_| l.admit(t0)).collect();
        assert_eq!(passed, vec![0; BURST as usize]);
        assert_eq!(l.admit(t0 + EVERY - Duration::from_millis(1)), None);
        assert_eq!(l.admit(t0 + EVERY), Some(2 * BURST + 1));
    }

    #[test]
    fn the_macro_expands_with_fields() {
        for i in 0..3 * BURST {
            crate::warn_limited!(i, "repeated test event");
        }
    }
}
