//! Cluster life: the placement state machine (issue 11), written down before it is built.
//!
//! This module is where placement changes are defined: how nodes join and leave, how a replica
//! moves, how a partition splits and merges, who decides and who acts, and what holds at every
//! step. Nothing below is built yet except what "(built)" marks; each part names the increment
//! that builds it, so every later increment builds the same thing. Today's map (epoch 1, fixed
//! at bootstrap) and its encoding are in [`crate::meta`]. An independent review of the first
//! draft (S1-S9, L1-L5, D1-D8 below) found holes where replicas are created and destroyed, in
//! who decides a merge, in the message acceptance rule and in a single global epoch; the text
//! below is the amended design, each amendment marked with the finding it answers (the review,
//! with its scenarios and the TiKV and CockroachDB issues it cites:
//! `engine/docs/placement-review-2026-11-28.md`).
//!
//! # Guarantees
//! - **P1 one owner per slot.** At every point of every replica's log, each slot belongs to
//!   exactly one partition, and a partition serves a key only for slots it owns at the point
//!   where the request applies. Ownership changes only at a split or merge command, which sits
//!   at one index of the owning partition's log, so every replica switches at the same point.
//! - **P2 quorum through every step.** A replica change goes through a learner, then joint
//!   consensus (thesis §4.3: decisions need a majority of the old *and* the new voters), then
//!   removal. A partition that keeps a quorum of its voters keeps serving while it moves.
//! - **P3 interruptible.** A crash, a partition or a leader change at any step leaves a valid
//!   map. The next leader finds the step from durable state alone (the map's operation record
//!   and the partition's configuration) and goes on, or rolls back where rolling back is still
//!   safe. Nothing is remembered only in memory.
//! - **P4 nothing acknowledged is lost.** A replica is destroyed only after the configuration
//!   that no longer names it is committed in its group. A split keeps every key in exactly one
//!   child. A merge reads the source's state only after the source is frozen.
//! - **P5 identities are never reused.** Node ids and replica ids are never handed out twice,
//!   and a node that lost its disk can never come back under an identity whose votes and log
//!   it forgot (see "Identities").
//!
//! # Identities (increment 1)
//! Today a partition's Raft ids are node ids: a partition has at most one replica per node, and
//! a peer message's `from` is the sending node. A node that lost its data and comes back under
//! the same ids has forgotten its votes, and a voter that forgets its vote can vote twice in one
//! term, which breaks election safety (TiKV separates peer ids from store ids for this reason).
//! So:
//! - **Replica ids.** Every replica gets a replica id, the Raft id of that replica in its
//!   group. The replicas of the epoch-1 map keep replica id = node id (existing data
//!   directories stay valid). New replicas take ids from the map's `next_replica_id`, which
//!   starts at 2^32; node ids stay below 2^32 (`validate` refuses larger ones), so the two
//!   never meet. A partition still has at most one replica per node (I2): replica ids are
//!   about forgotten votes, not about two replicas on one node (D1). A move between two shards
//!   of one node is not offered.
//! - **Cluster id and incarnation (S6).** The data directory records a random cluster id and a
//!   random node incarnation, written before anything else. Peer connections exchange
//!   (cluster id, node id, incarnation); a peer whose incarnation differs from the one the map
//!   records for that node is refused. A node with an empty data directory and no `--join`
//!   first asks its `--peers`: if any of them holds a committed map, it refuses to start ("this
//!   cluster is already bootstrapped; use --join"), as etcd does. So a wiped node can only
//!   come back as a new node with new ids.
//! - **Storage keyed by replica (S5).** WAL records, snapshot file names and tombstones are
//!   keyed by (partition, replica id), so a partition that leaves a shard and later comes back
//!   to it never recovers its old replica's log, configuration or hard state.
//! - **Tombstones (S5).** Before a node destroys a replica it writes a tombstone `(partition,
//!   replica id)` durably; recovery discards everything of a tombstoned replica, and a
//!   tombstoned id is never created again on that node.
//! - **Uninitialized replicas (D7).** A replica that exists without state yet (created from the
//!   map, or to answer a message) persists its hard state before it answers a vote, and
//!   recovery restores it (today's recovery knows only "snapshot" or "bootstrap"). Recovery
//!   bootstraps only partitions of the epoch-1 map; any other replica with no durable state
//!   comes back uninitialized and waits for its leader's snapshot (S1).
//!
//! # Messages (increment 1)
//! A peer message names replica ids; the receiving shard finds the replica by `(partition,
//! to)`. Raft is safe whatever the sender (pre-vote and check-quorum already stop disruption),
//! so the acceptance rule only keeps removed replicas out, and never blocks catching up (L1):
//! - a message is dropped only if its sender is *known removed*: below the local map's
//!   `next_replica_id` and not listed in it, or removed by the local committed configuration,
//!   or tombstoned here. A sender the node does not know yet (an id at or above
//!   `next_replica_id`) is accepted, so a lagging meta replica still hears a new meta leader;
//! - a message to a tombstoned replica is dropped and answered "removed"; the sender's node then
//!   checks its map and destroys its own replica if the map proves it removed (L2, TiKV's
//!   gc-peer messages). A message to an unknown replica that the local map places here creates
//!   it uninitialized.
//!
//! # The map, version 3 (increment 1)
//! The meta group's value under [`crate::meta::MAP_KEY`] grows these fields. The byte layout is
//! defined in `meta.rs` when the first increment writes it. Version 2 maps still decode; the
//! first version-3 map is written only once every node reports a binary that reads it, and a
//! node meeting a newer version than it knows stops with a named error (D3):
//! - **nodes**: id, state, client address, peer address, shard count, and the epoch of the last
//!   state change. States are `joining`, `up`, `draining`, `down` and `removed`; transitions are
//!   listed below. Today's `--peers` list becomes the bootstrap's initial `nodes`. From then on a
//!   node finds its peers in the map.
//! - **partitions**: slot ranges, a **generation** that grows with every split or merge, and
//!   a **configuration version** that grows with every membership change (TiKV's region epoch
//!   `version` and `conf_ver`, CockroachDB's descriptor generation). They are in the
//!   partition's own replicated state too (its snapshot), where they decide; the map's copy
//!   routes (S4, S8).
//! - **replicas** of a partition: replica id, node, shard, and role (`voter`, `learner`). The
//!   roles are the map's record of the group's configuration. What decides a quorum is the
//!   configuration in the partition's own log. The map follows it by the ordering rule below.
//! - **operations**: at most one per partition, each with an id, a kind (`move`, `split`,
//!   `merge`, `remove-replica`), its parameters, its **step**, a cancel-request flag, and the
//!   epoch it started at. A merge is recorded on both partitions and blocks both (S4). The
//!   record holds every fact a resumer needs (D8): a split's child id and replica-id table; a
//!   merge's verified alignment, `frozen at j`, and `decided: merged | aborted`.
//! - `next_node_id`, `next_replica_id`, `next_partition_id`: counters that only grow (P5).
//! - the meta group's own replicas: voters (at most 5) and learners (every other `up` node, so
//!   every node still learns the map by applying its own log).
//!
//! Every change is a **command in the meta group's log** that its state machine applies to the
//! current map deterministically (L3). A command is conditional on what it changes: the
//! affected partition's (generation, configuration version) and operation id, or a node's
//! state. Commands about unrelated partitions never conflict. The state machine gives each
//! applied change epoch + 1, and refuses a result that fails `validate` or a transition that
//! is not legal (D5: it checks the previous and next map together, so counters never go down,
//! ids are fresh and operation steps move only along their edges). The epoch is a refresh hint
//! for clients and nodes; requests are checked against the partition's generation (below), so
//! a change to one partition does not invalidate requests to the others.
//!
//! A node **adopts** a map only once its meta replica has replayed to its durable commit
//! index: never an intermediate map met during replay (S5). Adoption checks change from
//! equality with `--peers`, `--partitions` and the Raft voters to: nodes come from the map, the
//! partition count is the map's, and the map's replicas of each partition include its
//! committed configuration's members (I3) (D4).
//!
//! # The ordering rule between the map and a group's configuration
//! - **Add to the map first, then to the group.** A replica is added to the map, as a learner
//!   with the operation that adds it, *before* the group's leader proposes `AddLearner`. The
//!   destination node learns from the map that it must open an empty replica there, and every
//!   node learns where to route its messages.
//! - **Remove from the group first, then from the map.** A replica leaves the map only *after*
//!   a configuration without it is committed in its group. Until then the map still names it,
//!   so clients and peers can reach every replica a quorum may need.
//! - So at every moment the map's replicas of a partition are a superset of the members of its
//!   committed configuration (invariant I3). The map's roles may lag the log's by one step. The
//!   executor reads the log's.
//!
//! # Who decides, who acts
//! - **The planner** runs on the meta group's leader. A new meta leader counts every node's
//!   last heartbeat from its own election, so it never declares all nodes `down` at once (D6). It writes operations into the map and
//!   never executes one. Its inputs:
//!   - commands: `ctl partition move|split|merge`, `ctl node remove`, joins;
//!   - node liveness: the time since each node's last heartbeat to the meta leader, against
//!     `tuning.node_down_after_ms`;
//!   - the balancer's targets: replica and leader counts per node and shard, and partition
//!     sizes and write rates reported with the heartbeats.
//!
//!   It starts an operation only on a partition with no operation, and never one that would
//!   leave a partition without a quorum on nodes that are `up`. It refuses such a command with
//!   a reason. Cancelling is a request flag on the operation, which the executor honours or
//!   not from its log (S7).
//! - **The executor** is the current leader of the partition the operation names. Each turn it
//!   compares the map's operation with its group's configuration and takes the next step below.
//!   A step is either a proposal in its own group (a configuration change, a split or merge
//!   command) or a conditional map command, sent to the meta leader as an internal request.
//!   Every step is idempotent: a repeated step finds its effect already there and moves on.
//!   A new leader (after a crash or a transfer) resumes from the same two facts. The executor
//!   never needs to remember anything.
//! - **The executor acts only on an applied log (S7).** A new leader acts only once it has
//!   applied every entry up to its own term's no-op (an inherited, unapplied `AddLearner` or
//!   `Split` is then visible). Every admin command (`Split`, `Freeze`, `Merge`, `AbortMerge`)
//!   carries the operation id and the partition's expected (generation, configuration
//!   version); a replica that applies it with a mismatch, or with that operation id already
//!   applied, makes it a deterministic no-op. Applied operation ids are replicated state of
//!   the partition.
//!
//! # Requests and ownership (increment 1)
//! Ownership is replicated state of each partition (its slot ranges and generation, in its
//! snapshot), never read from the map (S8):
//! - data requests carry (partition, generation); Range requests must, and a paged scan whose
//!   partition's generation changed gets `StaleMap` instead of silently missing keys;
//! - a write first checks its session's cached result, and is answered from it if present
//!   (a retried write that was applied before a split is never told "not applied"); then
//!   ownership: a transaction any of whose slots the partition does not own, or any request to
//!   a frozen partition, is refused whole with `StaleMap`, without touching the session table.
//!   Only then is `StaleMap` a definite "not applied";
//! - reads check ownership and frozen against the applied state when they are served, not at
//!   routing.
//!
//! # Moving a replica (operation `move P: r on (N, s) -> r' on (M, t)`)
//! 1. The planner writes the map: `r'` as a learner on (M, t), with the operation at step
//!    `add-learner`.
//! 2. Node M adopts the map. Shard t opens an empty replica `r'` of P. It has no configuration,
//!    so it is in no quorum and never campaigns (raftcore: only a voter of its own
//!    configuration is promotable).
//! 3. The executor proposes `AddLearner(r')`. The leader then feeds `r'` entries, or a snapshot
//!    if the log was compacted (both built).
//! 4. Once `r'` has caught up (its match index is within `tuning.move_catch_up_entries` of the
//!    commit index, and that condition holds for one election timeout), the executor proposes
//!    `AddVoter(r'), Remove(r)`. This enters the joint configuration, which raftcore leaves on
//!    its own (built). If r leads, the executor first transfers leadership to another voter
//!    (built: `transfer_leader`). A leader never removes itself.
//! 5. After the configuration without `r` commits, the executor sets the map: `r` removed, `r'`
//!    a voter, operation cleared.
//! 6. Node N adopts that map. It destroys `r` only on proof of removal (S5): `r` is below the
//!    map's `next_replica_id`, the map does not list it and no operation names it, or `r`'s own
//!    committed configuration excludes it. It writes the tombstone first, then deletes `r`'s
//!    WAL records, snapshot file and state.
//!
//! **Rollback.** Before step 4 the operation can be abandoned: the destination went `down`, or
//! a cancel was requested. The executor proposes `Remove(r')` if `r'` was added, and clears the
//! operation and `r'` from the map only after a configuration without `r'` is committed (S7).
//! Whether step 4 was entered is read from the committed log, not from the map. After step 4's
//! joint configuration is proposed, the operation only rolls forward, as raftcore's joint
//! consensus does.
//!
//! **Adding and removing** a replica are the two halves of a move. Re-replication after a node
//! stays `down` is a move from the dead node's replica to a live node. The dead replica's
//! removal (step 4's `Remove(r)`) needs only the quorum of the live voters. The same path
//! raises a partition with fewer replicas than the replication factor.
//!
//! # Node states
//! - `joining -> up`: `corum serve --join HOST:PORT[,...]` with an empty data directory
//!   persists a random join token, then asks any listed node for a node id; the same token
//!   gets the same id back, so a joiner that crashed after the allocation can retry (L4). The
//!   meta leader allocates the id and writes the node as `joining`; the answer carries the
//!   current map, which the node stores as its first (L1). The new node takes a meta-group
//!   learner replica (a move of the meta group that stops after step 3, and does not hold the
//!   meta group's operation slot after that). It is `up` once that learner has caught up. A
//!   joiner that does not catch up within `tuning.join_timeout_ms` is rolled back: its learner
//!   is removed and the node marked `removed`, its id burned (L4). A `--join` whose address or
//!   id another node in the map has is refused with the holder named.
//! - `up -> draining -> removed`: `ctl node remove ID`.
//!   - The planner moves every replica and leadership away. If the node holds a meta-group
//!     voter, that voter moves first, and the node's own meta replica is *demoted* to a learner
//!     (not removed), so the node keeps learning maps (L2).
//!   - It sets `removed` once the node hosts nothing, and removes the node's meta learner last.
//!   - It refuses up front if the remaining `up` nodes cannot hold the replication factor, or if
//!     any partition would lose its quorum.
//! - `up -> down -> up`: no heartbeat to the meta leader for `node_down_after_ms`. Nothing moves
//!   at once; a node that returns goes back to `up`.
//! - `down -> removed`: after re-replication has moved every replica off the node. A node whose
//!   map says `removed` stops with a message instead of serving. The meta leader's answer to a
//!   node's heartbeat carries the node's state and the current epoch, so a node that stopped
//!   receiving maps (its meta replica removed while it was cut off) learns it too (L2).
//!
//! # Splitting a partition (operation `split P at slot S -> Q`, increment 4)
//! 1. The planner writes the operation with `Q = next_partition_id` and one fresh replica id per
//!    replica of P, on the same nodes and shards.
//! 2. The executor proposes `Split { op, at: S, child: Q, replica ids, expected generation and
//!    configuration version }` in P's log, at index i. It is a no-op unless P's committed
//!    configuration at i is not joint and has no learners (S7).
//! 3. Every replica of P applies entry i the same way (P1):
//!    - it cuts its state machine: keys with slot >= S go to Q's state; P's generation grows;
//!    - it creates Q's replica here **unless** Q's replica id is tombstoned here, or a replica
//!      of Q already exists here (S1). An existing *uninitialized* replica (created from the
//!      map or by a message) is initialized with the cut state and keeps its durable term and
//!      vote; an *initialized* one is left as it is (it is ahead: it voted or got a snapshot).
//!      In both cases P only drops the keys of `[S, end)`;
//!    - Q's replica starts with configuration = P's voters renamed to Q's replica ids, and the
//!      cut state as its bootstrap snapshot (index 1, term 1, D2). The cut state is durable
//!      (snapshot file, then a WAL marker) before P reports entry i applied, so a replay after
//!      a restart finds Q's replica existing and never re-creates it;
//!    - sessions are copied into both children with `last_index` = the child's first index
//!      (relative order kept as the tie-break), so live clients are not evicted before copied
//!      ones (S9); Q's per-partition revision starts at P's (until issue 16's oracle);
//!    - P's snapshots record the splits applied up to their index (child id, replica-id table,
//!      generation): a replica of P that catches up by a snapshot past i creates its Q replica
//!      uninitialized, from that record, and Q's leader feeds it (S1);
//!    - after i, P answers `StaleMap` for slots >= S, carrying Q's id and replica locations so
//!      clients can route before the map says so (L5).
//! 4. Q elects a leader among its replicas. P's executor (or Q's leader) sets the map (range
//!    `[S, end)` to Q, operation cleared). The window in which clients depend on the hint is
//!    bounded by the meta group's availability, not by one round trip (L5).
//!
//! Both the WAL (one log per shard, records keyed by partition) and snapshots (per partition)
//! already hold many partitions per shard, so a child costs no new files.
//!
//! # Merging two partitions (operation `merge Q into P`, increment 4)
//! TiKV's PrepareMerge / CommitMerge / RollbackMerge, with the decision in one log (S3), and
//! CockroachDB's rules for aligned replicas and for when a source replica may go (S2, S4):
//! 1. **Align.** Ordinary moves, before the merge operation is written, until P and Q have
//!    replicas on the same nodes and shards. Then the planner writes the merge operation on
//!    both P and Q; it blocks every other operation on either (S4).
//! 2. **Freeze.** Q's executor proposes `Freeze { op, into: P, expected generation and
//!    configuration version }` at index j in Q's log. From j on, Q refuses every request, reads
//!    included, until the decision. Q's state at j is final.
//! 3. **Decide, in P's log only.** P's executor proposes `Merge { op, source: Q, at: j,
//!    expected versions of P and Q }` only after **every** member of Q's configuration has
//!    applied j (leader match indexes and reported applied indexes; CockroachDB's unanimity
//!    rule), or with Q's committed entries up to j carried in the command so any replica of P
//!    can bring its local Q to j without Q's group (TiKV's CatchUpLogs). A replica of P applies
//!    it once its local Q replica has applied j: Q's log after j holds no writes, so every
//!    replica merges the same state (slots, keys, session tables united: per client the
//!    highest `first_unacked`, cached results joined, `last_index` = the Merge index, S9). A
//!    version mismatch makes it a no-op.
//! 4. P's executor records the decision in the map (Q's ranges to P, Q removed).
//! 5. **Destroying Q's replicas (S2).** Q's replica on a node is destroyed only by that node's
//!    P replica: when it applies `Merge`, or installs a P snapshot past the Merge index, and
//!    only once a P snapshot at or past the Merge index is durable there, so a replay never
//!    needs Q. The map's removal of Q never destroys a Q replica whose local P replica is
//!    behind the Merge index. If the local P replica is itself tombstoned, Q's goes with it.
//!
//! **Rollback.** `AbortMerge { op }` in P's log; once it applies, a `Merge` with that id is a
//! no-op. P's executor records the abort in the map, and only then does Q's executor propose
//! `Unfreeze` in Q's log. So a merge and an unfreeze can never both take effect (S3).
//!
//! # Invariants (checked by `MetaMap::validate` on every map, and by the simulator)
//! - **I1.** The ranges cover every slot exactly once.
//! - **I2.** A partition's replicas are on distinct nodes that are not `removed`. At most one
//!   operation exists per partition.
//! - **I3.** The map's replicas of P include every member of P's committed configuration.
//! - **I4.** Ids never repeat: every id in the map is below its counter, and the counters never
//!   go down (checked on each transition, previous and next map together, D5).
//! - **I5.** The epoch grows by exactly one with every committed change (checked on each
//!   transition).
//! - **I6.** For each slot, the partition that applied a request for it owned it at that index
//!   (the simulator checks this against its history).
//!
//! # Increments
//! The formats are fixed in increment 1, so they carry from the start what later increments
//! need (generations, configuration versions, child replica tables in snapshots).
//! 1. **Identities, formats and requests.** Replica ids on the wire; cluster id and incarnation;
//!    storage and tombstones keyed by (partition, replica id); uninitialized replicas; the
//!    acceptance rule; map v3 with per-partition generation and configuration version, applied
//!    as conditional meta commands; ownership as partition state and (partition, generation)
//!    on requests. Version 2 maps still decode. The simulator checks I1-I5 on every map.
//! 2. **Move, add and remove, with the executor** (acting only on an applied log, operation ids
//!    on commands). `ctl partition move`; the whole-node simulator starts moves during its
//!    faults and checks that each one completes or rolls back after healing.
//! 3. **Node states.** `--join` with its token, `ctl node list|remove`, `node_down_after_ms`
//!    re-replication, the meta group's at most 5 voters, demotion of a draining node's meta
//!    replica.
//! 4. **Split and merge** as commands in the partition's own log, with the creation and
//!    destruction rules above.
//! 5. **The balancer** (`tuning.balance`), and `corum local add-node|remove-node`.
//!
//! Built so far: `ctl leader transfer` (the one step every move and drain uses), and raftcore's
//! learners, joint consensus and snapshots.
