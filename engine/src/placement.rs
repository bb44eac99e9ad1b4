//! Cluster life: the placement state machine (issue 11), written down before it is built.
//!
//! This module is where placement changes are defined: how nodes join and leave, how a replica
//! moves, how a partition splits and merges, who decides and who acts, and what holds at every
//! step. Nothing below is built yet except what "(built)" marks; each part names the increment
//! that builds it, so every later increment builds the same thing. Today's map (epoch 1, fixed
//! at bootstrap) and its encoding are in [`crate::meta`].
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
//!   so a node that lost its disk can never come back under an identity whose votes and log
//!   it forgot.
//!
//! # Replica ids (the first increment changes this)
//! Today a partition's Raft ids are node ids: a partition has at most one replica per node, and
//! a peer message's `from` is the sending node. That cannot express a move between two shards of
//! one node, nor a node that lost its data and rejoins. Its old replicas' votes would be
//! forgotten under the same id, and a voter that forgets its vote can vote twice in one term,
//! which breaks election safety (TiKV separates peer ids from store ids for this reason).
//! So:
//! - Every replica gets a **replica id**, the Raft id of that replica in its group. The replicas
//!   of the epoch-1 map keep replica id = node id (so existing data directories stay valid). New
//!   replicas take ids from the map's `next_replica_id`, which starts at 2^32 (node ids stay
//!   below 2^32, so the two never meet).
//! - A peer message names replica ids. The receiving shard finds the replica by
//!   `(partition, to)`. It accepts `from` only if its map places that replica on the sending
//!   node, or that replica is a member of the group's configuration in its own log. A message
//!   for a replica the node does not know is dropped and counted; Raft retransmits, and by then
//!   the map has usually arrived.
//! - A node keeps a **tombstone** `(partition, replica id, epoch)` for every replica it
//!   destroyed. A message to a tombstoned replica is dropped, so a slow leader's append cannot
//!   bring a removed replica back as an empty log that campaigns.
//!
//! # The map, version 3
//! The meta group's value under [`crate::meta::MAP_KEY`] grows these fields. The byte layout is
//! defined in `meta.rs` when the first increment writes it, and version 2 maps still decode:
//! - **nodes**: id, state, client address, peer address, shard count, and the epoch of the last
//!   state change. States are `joining`, `up`, `draining`, `down` and `removed`; transitions are
//!   listed below. Today's `--peers` list becomes the bootstrap's initial `nodes`. From then on a
//!   node finds its peers in the map.
//! - **replicas** of a partition: replica id, node, shard, and role (`voter`, `learner`). The
//!   roles are the map's record of the group's configuration. What decides a quorum is the
//!   configuration in the partition's own log. The map follows it by the ordering rule below.
//! - **operations**: at most one per partition, each with an id, a kind (`move`, `split`,
//!   `merge`, `remove-replica`), its parameters, its **step**, and the epoch it started at.
//! - `next_node_id`, `next_replica_id`, `next_partition_id`: counters that only grow (P5).
//! - the meta group's own replicas: voters (at most 5) and learners (every other `up` node, so
//!   every node still learns the map by applying its own log).
//!
//! Every change is a **compare-and-set of the epoch**: "if the map's epoch is e, write this map
//! at epoch e + 1". It is a command in the meta group's log, so all replicas of the meta group
//! decide it the same way. A writer that lost a race rereads the map and decides again.
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
//! - **The planner** runs on the meta group's leader. It writes operations into the map and
//!   never executes one. Its inputs:
//!   - commands: `ctl partition move|split|merge`, `ctl node remove`, joins;
//!   - node liveness: the time since each node's last heartbeat to the meta leader, against
//!     `tuning.node_down_after_ms`;
//!   - the balancer's targets: replica and leader counts per node and shard, and partition
//!     sizes and write rates reported with the heartbeats.
//!
//!   It starts an operation only on a partition with no operation, and never one that would
//!   leave a partition without a quorum on nodes that are `up`. It refuses such a command with
//!   a reason.
//! - **The executor** is the current leader of the partition the operation names. Each turn it
//!   compares the map's operation with its group's configuration and takes the next step below.
//!   A step is either a proposal in its own group (a configuration change, a split or merge
//!   command) or a compare-and-set of the map, sent to the meta leader as an internal request.
//!   Every step is idempotent: a repeated step finds its effect already there and moves on.
//!   A new leader (after a crash or a transfer) resumes from the same two facts. The executor
//!   never needs to remember anything.
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
//! 6. Node N adopts that map. It destroys `r` (its WAL records, its snapshot file, its state),
//!    then writes a tombstone.
//!
//! **Rollback.** Before step 4 the operation can be abandoned: the destination went `down`, or
//! a command cancelled it. The executor proposes `Remove(r')` if `r'` was added, then clears
//! the operation and `r'` from the map. After step 4's joint configuration is proposed, the
//! operation only rolls forward, as raftcore's joint consensus does.
//!
//! **Adding and removing** a replica are the two halves of a move. Re-replication after a node
//! stays `down` is a move from the dead node's replica to a live node. The dead replica's
//! removal (step 4's `Remove(r)`) needs only the quorum of the live voters. The same path
//! raises a partition with fewer replicas than the replication factor.
//!
//! # Node states
//! - `joining -> up`: `corum serve --join HOST:PORT[,...]` with an empty data directory asks any
//!   listed node for a node id. The meta leader allocates one and writes the node as `joining`.
//!   The new node takes a meta-group learner replica (a move of the meta group that stops after
//!   step 3). It is `up` once that learner has caught up. A `--join` whose address or id a node
//!   in the map already has is refused with the holder named.
//! - `up -> draining -> removed`: `ctl node remove ID`.
//!   - The planner moves every replica and leadership away. If the node holds a meta-group
//!     voter, that voter moves first.
//!   - It sets `removed` once the node hosts nothing.
//!   - It refuses up front if the remaining `up` nodes cannot hold the replication factor, or if
//!     any partition would lose its quorum.
//! - `up -> down -> up`: no heartbeat to the meta leader for `node_down_after_ms`. Nothing moves
//!   at once; a node that returns goes back to `up`.
//! - `down -> removed`: after re-replication has moved every replica off the node. A node whose
//!   map says `removed` stops with a message instead of serving.
//!
//! # Splitting a partition (operation `split P at slot S -> Q`)
//! 1. The planner writes the operation with `Q = next_partition_id` and one fresh replica id per
//!    replica of P, on the same nodes and shards.
//! 2. The executor proposes `Split { at: S, child: Q, replica ids }` in P's log, at index i.
//! 3. Every replica of P applies entry i the same way (P1):
//!    - it cuts its state machine: keys with slot >= S go to Q's state machine;
//!    - it copies the session table into both children, so a retried write is answered once
//!      whichever child it reaches;
//!    - it creates Q's group with configuration = P's voters renamed to Q's replica ids, and
//!      Q's initial snapshot = the cut state at index 0 of Q's log;
//!    - after i, P answers `StaleMap` for slots >= S. That answer is a definite error: the
//!      request was not applied. It covers writes proposed before i and applied after it.
//! 4. Q elects a leader among its replicas. P's executor sets the map (range `[S, end)` to Q,
//!    operation cleared).
//!
//!    Between steps 3 and 4, clients holding the old map reach P and get `StaleMap`. They
//!    refresh and retry, and are answered `Unavailable` until the new map is adopted. That
//!    window is one meta round trip.
//!
//! Both the WAL (one log per shard, records keyed by partition) and snapshots (per partition)
//! already hold many partitions per shard, so a child costs no new files.
//!
//! # Merging two partitions (operation `merge Q into P`)
//! 1. **Align.** The planner moves replicas until P and Q have replicas on the same nodes and
//!    shards.
//! 2. **Freeze.** Q's executor proposes `Freeze { into: P }` at index j in Q's log. After j, Q
//!    answers `StaleMap` to every request, as P does after a split. Q's state at j is final.
//! 3. **Commit.** P's executor proposes `Merge { source: Q, at: j }` in P's log. A replica of P
//!    applies it only once its local replica of Q has applied j. Q's log after j holds no
//!    writes, so every replica merges the same state. The replica then takes Q's slots, keys
//!    and session table.
//! 4. P's executor sets the map (Q's ranges to P, Q removed). Q's replicas are destroyed as in
//!    a move's step 6.
//!
//! **Rollback.** Before step 3 commits, Q can be unfrozen by `Unfreeze`, proposed by Q's
//! executor, for example when alignment failed. After step 3 commits, the merge only rolls
//! forward.
//!
//! # Invariants (checked by `MetaMap::validate` on every map, and by the simulator)
//! - **I1.** The ranges cover every slot exactly once.
//! - **I2.** A partition's replicas are on distinct nodes that are not `removed`. At most one
//!   operation exists per partition.
//! - **I3.** The map's replicas of P include every member of P's committed configuration.
//! - **I4.** Ids never repeat: every id in the map is below its counter, and the counters never
//!   go down.
//! - **I5.** The epoch grows by exactly one with every committed change.
//! - **I6.** For each slot, the partition that applied a request for it owned it at that index
//!   (the simulator checks this against its history).
//!
//! # Increments
//! 1. **Replica ids and the map v3 encoding.** Peer messages carry replica ids; tombstones; the
//!    epoch compare-and-set as a meta command. Version 2 maps still decode. The simulator
//!    checks I1-I5 on every map.
//! 2. **Move, add and remove, with the executor.** `ctl partition move`; the whole-node
//!    simulator starts moves during its faults and checks that each one completes or rolls
//!    back after healing.
//! 3. **Node states.** `--join`, `ctl node list|remove`, `node_down_after_ms` re-replication,
//!    and the meta group's at most 5 voters.
//! 4. **Split and merge** as commands in the partition's own log.
//! 5. **The balancer** (`tuning.balance`), and `corum local add-node|remove-node`.
//!
//! Built so far: `ctl leader transfer` (the one step every move and drain uses), and raftcore's
//! learners, joint consensus and snapshots.
