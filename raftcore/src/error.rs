//! Errors returned by raftcore. Every operation that fails leaves the node unchanged.

/// Everything raftcore can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A proposal or conf change was made on a node that is not the leader.
    #[error("not the leader (leader hint: {leader_hint})")]
    NotLeader {
        /// The leader this node knows of, 0 if none.
        leader_hint: u64,
    },
    /// The leader is transferring leadership and refuses proposals until it is done.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Accepting the proposal would exceed `Config::uncommitted_bytes_max`.
    #[error("too many uncommitted bytes: {pending} pending, {incoming} incoming, limit {limit}")]
    UncommittedBytesLimit {
        /// Bytes proposed but not yet committed.
        pending: u64,
        /// Bytes of the refused proposal.
        incoming: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The batch has more entries than `Config::proposal_entries_max`.
    #[error("proposal batch of {count} entries exceeds the limit of {limit}")]
    ProposalTooLarge {
        /// Entries in the batch.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A membership change is still pending (proposed but not applied); only one at a time.
    #[error("a membership change is already pending at index {index}")]
    ConfChangePending {
        /// Index of the pending change.
        index: u64,
    },
    /// The membership change is not valid against the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(&'static str),
    /// Encoded membership change bytes are malformed.
    #[error("malformed membership change: {0}")]
    MalformedConfChange(&'static str),
    /// Too many reads are waiting (`Config::read_requests_pending_max`).
    #[error("too many pending reads (limit {limit})")]
    ReadQueueFull {
        /// The configured limit.
        limit: usize,
    },
    /// No leader is known to forward a read or transfer to.
    #[error("no leader known")]
    NoLeader,
    /// The transfer target is not a voter of the configuration.
    #[error("transfer target {0} is not a voter")]
    InvalidTransferTarget(u64),
    /// Unknown `MessageKind` byte.
    #[error("unknown message kind {0}")]
    UnknownMessageKind(u8),
    /// Unknown `EntryKind` byte.
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(u8),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(&'static str),
    /// Restart state does not fit together (entries not contiguous, commit beyond log, ...).
    #[error("invalid restart state: {0}")]
    InvalidRestartState(&'static str),
    /// Compaction index is not applied yet or not in the log.
    #[error("cannot compact at {index}: {reason}")]
    InvalidCompaction {
        /// The requested index.
        index: u64,
        /// Why not.
        reason: &'static str,
    },
    /// `on_persisted` named a Ready that was never handed out.
    #[error("ready {0} was never handed out")]
    UnknownReady(u64),
}
