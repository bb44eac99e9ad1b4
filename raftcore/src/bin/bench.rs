//! Throughput benchmark (not a test): a 3-replica group in one process, in memory, committing
//! batched proposals as fast as it can on one thread. Persistence is "instant" (each Ready is
//! reported durable right after it is collected), so this measures raftcore's own cost.
//!
//! `bench [--entries N] [--batch B] [--size S] [--json PATH]` prints committed entries per
//! second and CPU time per entry (getrusage, user + system).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use raftcore::{ConfState, Config, Message, RawNode, RestartState, Role};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut total: u64 = 20_000_000;
    let mut batch: usize = 256;
    let mut size: usize = 128;
    let mut json: Option<String> = None;
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--entries" => total = v.parse().unwrap_or(total),
            "--batch" => batch = v.parse().unwrap_or(batch),
            "--size" => size = v.parse().unwrap_or(size),
            "--json" => json = Some(v),
            _ => {
                eprintln!("usage: bench [--entries N] [--batch B] [--size S] [--json PATH]");
                std::process::exit(2);
            }
        }
        i += 2;
    }

    let conf = ConfState::with_voters(&[1, 2, 3]);
    let mut nodes: Vec<RawNode> = (1..=3)
        .map(|id| {
            let mut c = Config::new(id);
            c.entries_per_msg_max = 4096;
            c.msg_bytes_max = 1 << 20;
            c.inflight_msgs_max = 64;
            c.uncommitted_bytes_max = 64 << 20;
            RawNode::new(c, RestartState::bootstrap(conf.clone(), Bytes::new())).expect("config")
        })
        .collect();
    let mut queue: VecDeque<Message> = VecDeque::new();
    nodes[0].campaign_now();
    let mut committed_on_leader: u64 = 0;
    let pump = |nodes: &mut Vec<RawNode>, queue: &mut VecDeque<Message>| -> u64 {
        let mut applied = 0;
        loop {
            let mut any = false;
            for (n, node) in nodes.iter_mut().enumerate() {
                if node.has_ready() {
                    any = true;
                    let rd = node.ready();
                    queue.extend(rd.messages);
                    // "Durable" at once: release the acknowledgements and report it.
                    queue.extend(rd.persisted_messages);
                    node.on_persisted(rd.number).expect("ready number");
                    if let Some(last) = rd.committed_entries.last() {
                        if n == 0 {
                            applied += rd.committed_entries.len() as u64;
                        }
                        let idx = last.index;
                        node.on_applied(idx);
                        if idx > node.first_index() + 100_000 {
                            node.compact(idx, Bytes::new()).expect("compact");
                        }
                    }
                }
            }
            while let Some(m) = queue.pop_front() {
                any = true;
                let to = (m.to - 1) as usize;
                nodes[to].step(m);
            }
            if !any {
                return applied;
            }
        }
    };
    pump(&mut nodes, &mut queue);
    assert_eq!(nodes[0].role(), Role::Leader, "node 1 leads");
    // Payload: one buffer sliced per entry (what a server does with a received frame).
    let buf = Bytes::from(vec![0xabu8; batch * size]);
    let cmds: Vec<Bytes> = (0..batch)
        .map(|i| buf.slice(i * size..(i + 1) * size))
        .collect();

    let (wall0, cpu0) = (Instant::now(), cpu_seconds());
    let mut proposed: u64 = 0;
    // Keep several batches in flight, like a server proposing every loop turn.
    let in_flight_batches = 16u64;
    while committed_on_leader < total {
        while proposed < total && proposed - committed_on_leader < in_flight_batches * batch as u64
        {
            nodes[0].propose(&cmds).expect("propose");
            proposed += batch as u64;
        }
        committed_on_leader += pump(&mut nodes, &mut queue);
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let eps = committed_on_leader as f64 / wall;
    let cpu_ns = cpu * 1e9 / committed_on_leader as f64;
    println!(
        "bench: 3 replicas, batches of {batch} x {size} B: {committed_on_leader} entries committed in {wall:.3} s = {eps:.0} entries/s; CPU {cpu:.3} s = {cpu_ns:.1} ns/entry (all 3 replicas, one thread)"
    );
    if let Some(path) = json {
        let j = format!(
            "{{\n  \"benchmark\": \"raftcore 3-replica in-memory commit throughput\",\n  \"batch_entries\": {batch},\n  \"entry_bytes\": {size},\n  \"entries_committed\": {committed_on_leader},\n  \"wall_seconds\": {wall:.4},\n  \"entries_per_second\": {eps:.0},\n  \"cpu_seconds\": {cpu:.4},\n  \"cpu_ns_per_entry\": {cpu_ns:.1}\n}}\n"
        );
        if let Err(e) = std::fs::write(&path, j) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
