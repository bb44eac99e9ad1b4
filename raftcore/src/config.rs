//! Node configuration. Every limit is explicit; units are named last.

use crate::error::Error;

/// Configuration of one Raft node (one replica of one group).
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id (non-zero).
    pub id: u64,
    /// Election timeout lower bound in ticks; the actual timeout is drawn uniformly from
    /// `[election_ticks_min, 2 * election_ticks_min)` each time (paper §5.2, randomized timeouts).
    pub election_ticks_min: u32,
    /// Leader heartbeat interval in ticks (must be < `election_ticks_min`).
    pub heartbeat_ticks: u32,
    /// Seed of this node's PRNG (election timeouts). Give every node a different seed.
    pub seed: u64,
    /// Run a Pre-Vote round before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// Leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader within `election_ticks_min` ignore (pre)votes
    /// (thesis §4.2.3 / §9.6).
    pub check_quorum: bool,
    /// CheckQuorum period: the leader steps down if it heard from no quorum within this many
    /// ticks. 0 (the default) means `election_ticks_min`; otherwise at least that. A longer
    /// period lets a cut-off leader go on believing it leads (and answering clients) longer;
    /// it does not shorten the followers' refusal to vote, so lease reads stay safe. The
    /// simulator uses it to keep isolated leaders serving.
    pub check_quorum_ticks: u32,
    /// Most entries in one Append message.
    pub entries_per_msg_max: usize,
    /// Most payload bytes in one Append message (at least one entry is always sent), and the
    /// snapshot chunk size.
    pub msg_bytes_max: u64,
    /// Most Append (or snapshot chunk) messages in flight to one follower.
    pub inflight_msgs_max: usize,
    /// Most bytes a leader holds proposed-but-uncommitted before refusing proposals.
    pub uncommitted_bytes_max: u64,
    /// Most entries in one `propose` batch.
    pub proposal_entries_max: usize,
    /// Most committed-entry bytes handed out in one Ready (at least one entry is).
    pub committed_bytes_per_ready_max: u64,
    /// Most read requests waiting for their confirmation round.
    pub read_requests_pending_max: usize,
    /// Serve reads from the leader lease without a heartbeat round. OFF by default. Safe only if
    /// ticks on different nodes advance at rates that differ by less than `lease_drift_ticks`
    /// per `election_ticks_min` ticks (bounded clock drift), and requires `check_quorum`.
    pub lease_reads: bool,
    /// The drift allowance: the lease lasts `election_ticks_min - lease_drift_ticks` ticks from
    /// the moment the confirming heartbeat was sent.
    pub lease_drift_ticks: u32,
}

impl Config {
    /// Defaults for replica `id`: election 10..20 ticks, heartbeat 2 ticks, pre-vote and
    /// check-quorum on, lease reads off.
    pub fn new(id: u64) -> Self {
        Config {
            id,
            election_ticks_min: 10,
            heartbeat_ticks: 2,
            seed: id,
            pre_vote: true,
            check_quorum: true,
            check_quorum_ticks: 0,
            entries_per_msg_max: 4096,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 64,
            uncommitted_bytes_max: 64 << 20,
            proposal_entries_max: 65_536,
            committed_bytes_per_ready_max: 16 << 20,
            read_requests_pending_max: 65_536,
            lease_reads: false,
            lease_drift_ticks: 2,
        }
    }

    /// The CheckQuorum period in ticks (`check_quorum_ticks`, or `election_ticks_min` for 0).
    pub fn check_quorum_period_ticks(&self) -> u32 {
        if self.check_quorum_ticks == 0 {
            self.election_ticks_min
        } else {
            self.check_quorum_ticks
        }
    }

    /// Checks the values fit together.
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("id must be non-zero"));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks_min {
            return Err(Error::InvalidConfig(
                "need 0 < heartbeat_ticks < election_ticks_min",
            ));
        }
        if self.entries_per_msg_max == 0 || self.msg_bytes_max == 0 {
            return Err(Error::InvalidConfig("message limits must be positive"));
        }
        if self.check_quorum_ticks != 0 && self.check_quorum_ticks < self.election_ticks_min {
            return Err(Error::InvalidConfig(
                "check_quorum_ticks must be 0 or at least election_ticks_min",
            ));
        }
        if self.inflight_msgs_max == 0 {
            return Err(Error::InvalidConfig("inflight_msgs_max must be positive"));
        }
        if self.proposal_entries_max == 0 || self.read_requests_pending_max == 0 {
            return Err(Error::InvalidConfig("queue limits must be positive"));
        }
        if self.lease_reads
            && (!self.check_quorum || self.lease_drift_ticks >= self.election_ticks_min)
        {
            return Err(Error::InvalidConfig(
                "lease reads need check_quorum and lease_drift_ticks < election_ticks_min",
            ));
        }
        Ok(())
    }
}
