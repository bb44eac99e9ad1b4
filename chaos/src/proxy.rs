//! A userspace TCP proxy on every peer link, for the `delay` nemesis (the kernel here has no
//! netem). With it enabled, node *i*'s connection to node *j*'s peer port is redirected inside
//! *i*'s namespace (nftables DNAT) to the harness at `10.77.0.1:`[`proxy_port`]`(i, j)`, which
//! connects on to *j* and forwards both directions. Each byte waits in the proxy until
//! `arrival + delay(i, j)`, so a link's delay can change at any time and order is kept.
//!
//! corum peers identify each other by the hello frame, not by source address, so the extra hop
//! is invisible to them. Every peer frame a node sends travels on the connection it dialed;
//! cutting the i→j proxy leg in *i*'s namespace therefore cuts what *i* says to *j*.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::net::{bridge_addr, node_addr};
use crate::nodes::PEER_PORT;

/// Chunks in flight per direction of one proxied connection before the reader waits: at most
/// this many reads (of up to 64 KiB) are held back by a delay.
const CHUNKS_IN_FLIGHT_MAX: usize = 1024;
/// Largest delay a link may be given, ms.
pub const DELAY_MS_MAX: u64 = 10_000;

/// The harness port that proxies node `from`'s connection to node `to`'s peer port.
pub fn proxy_port(from: u64, to: u64) -> u16 {
    17_000 + (from * 16 + to) as u16
}

/// The current one-way delay of every link, ms, indexed `from * (nodes + 1) + to`.
#[derive(Debug)]
pub struct Delays {
    nodes: u64,
    ms: Vec<AtomicU64>,
}

impl Delays {
    /// Every link at 0 ms.
    pub fn new(nodes: u64) -> Arc<Self> {
        Arc::new(Delays {
            nodes,
            ms: (0..(nodes + 1) * (nodes + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    fn slot(&self, from: u64, to: u64) -> &AtomicU64 {
        &self.ms[(from * (self.nodes + 1) + to) as usize]
    }

    /// The delay from `from` to `to`.
    pub fn get(&self, from: u64, to: u64) -> Duration {
        Duration::from_millis(self.slot(from, to).load(Ordering::Relaxed))
    }

    /// Sets the delay of both directions of every link touching a node in `nodes`.
    pub fn slow(&self, nodes: &[u64], ms: u64) {
        let ms = ms.min(DELAY_MS_MAX);
        for &n in nodes {
            for other in (1..=self.nodes).filter(|&o| o != n) {
                self.slot(n, other).store(ms, Ordering::Relaxed);
                self.slot(other, n).store(ms, Ordering::Relaxed);
            }
        }
    }

    /// Every link back to 0 ms.
    pub fn clear(&self) {
        for d in &self.ms {
            d.store(0, Ordering::Relaxed);
        }
    }
}

/// Binds every link's listener (on the bridge address) and serves them until the runtime
/// stops. Fails if a port cannot be bound.
pub async fn start(nodes: u64, delays: Arc<Delays>) -> std::io::Result<()> {
    for from in 1..=nodes {
        for to in (1..=nodes).filter(|&t| t != from) {
            let listener = TcpListener::bind((bridge_addr(), proxy_port(from, to))).await?;
            let delays = delays.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    tokio::spawn(link(inbound, from, to, delays.clone()));
                }
            });
        }
    }
    Ok(())
}

/// One proxied connection from node `from` to node `to`'s peer port.
async fn link(inbound: TcpStream, from: u64, to: u64, delays: Arc<Delays>) {
    let Ok(outbound) = TcpStream::connect((node_addr(to), PEER_PORT)).await else {
        return; // dropping `inbound` closes it: the node sees a failed peer connection
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_rd, in_wr) = inbound.into_split();
    let (out_rd, out_wr) = outbound.into_split();
    // Either direction ending ends the connection (both halves drop).
    tokio::select! {
        _ = pipe(in_rd, out_wr, from, to, delays.clone()) => {}
        _ = pipe(out_rd, in_wr, to, from, delays) => {}
    }
}

/// Copies `rd` to `wr`, each chunk held until its arrival time plus the link's delay.
async fn pipe(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    from: u64,
    to: u64,
    delays: Arc<Delays>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if tx.send((Instant::now(), chunk)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((arrived, chunk)) = rx.recv().await {
            tokio::time::sleep_until(arrived + delays.get(from, to)).await;
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_per_ordered_pair() {
        let mut seen = std::collections::HashSet::new();
        for a in 1..=5 {
            for b in (1..=5).filter(|&b| b != a) {
                assert!(seen.insert(proxy_port(a, b)));
            }
        }
    }

    #[test]
    fn slowing_a_node_touches_only_its_links() {
        let d = Delays::new(3);
        d.slow(&[2], 300);
        assert_eq!(d.get(1, 2), Duration::from_millis(300));
        assert_eq!(d.get(2, 3), Duration::from_millis(300));
        assert_eq!(d.get(1, 3), Duration::ZERO);
        d.clear();
        assert_eq!(d.get(2, 1), Duration::ZERO);
    }
}
