//! corum errors as gRPC statuses, with etcd's codes and exact messages where etcd clients match
//! on them (clientv3's `rpctypes` turns a status message back into a typed error only when it
//! is exactly etcd's text).

use tonic::Status;
use wire::client::ClientError;
use wire::messages::ServerError;
use wire::DecodeError;

/// etcd's `ErrGRPCEmptyKey`.
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
/// etcd's `ErrGRPCTimeout`.
pub const TIMEOUT: &str = "etcdserver: request timed out";
/// etcd's `ErrGRPCRequestTooLarge`.
pub const TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's `ErrGRPCTooManyRequests`.
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
/// etcd's `ErrGRPCKeyNotFound`.
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
/// etcd's `ErrGRPCValueProvided`.
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
/// etcd's `ErrGRPCDuplicateKey`.
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
/// etcd's `ErrGRPCTooManyOps`.
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
/// etcd's `ErrGRPCNoLeader`.
pub const NO_LEADER: &str = "etcdserver: no leader";

/// `InvalidArgument` "etcdserver: key is not provided".
pub fn empty_key() -> Status {
    Status::invalid_argument(EMPTY_KEY)
}

/// The status for a failed corum client call.
///
/// `ClientError::Timeout` means the outcome is unknown (the write may have been applied): it
/// becomes etcd's "request timed out" (`Unavailable`), which etcd also answers when it cannot
/// tell; the client's detail goes to the log, not to the etcd client, whose libraries match the
/// message exactly.
pub fn from_client(e: ClientError) -> Status {
    match e {
        ClientError::Timeout { attempts, last } => {
            tracing::warn!(attempts, last = %last, "corum call timed out (outcome unknown)");
            Status::unavailable(TIMEOUT)
        }
        ClientError::Server(s) => from_server(s),
        ClientError::Invalid(d) => match d {
            DecodeError::KeyTooLarge { .. }
            | DecodeError::ValueTooLarge { .. }
            | DecodeError::BodyTooLarge { .. }
            | DecodeError::TooManyItems { .. } => {
                tracing::debug!(error = %d, "request over corum's limits");
                Status::invalid_argument(TOO_LARGE)
            }
            other => Status::invalid_argument(format!("corum: {other}")),
        },
        ClientError::CrossPartition(a, b) => Status::failed_precondition(format!(
            "corum: the transaction's keys are in partitions {a} and {b}; corum runs a \
             transaction atomically only within one partition: give the keys a common \
             {{hash tag}} (e.g. {{user1}}name and {{user1}}email) so they share a partition"
        )),
        ClientError::Protocol(p) => Status::internal(format!("corum protocol error: {p}")),
    }
}

/// The status for an error the corum server answered (after the client's own retries).
pub fn from_server(e: ServerError) -> Status {
    match e {
        ServerError::Timeout | ServerError::OutcomeUnknown { .. } => {
            tracing::warn!(error = %e, "corum answered timeout / outcome unknown");
            Status::unavailable(TIMEOUT)
        }
        ServerError::TooLarge { .. } => Status::invalid_argument(TOO_LARGE),
        ServerError::Busy => Status::resource_exhausted(TOO_MANY_REQUESTS),
        ServerError::InvalidArgument { reason } => {
            Status::invalid_argument(format!("corum: invalid argument: {reason}"))
        }
        ServerError::CrossPartition { reason } => Status::failed_precondition(format!(
            "corum: transaction spans partitions: {reason}; give the keys a common {{hash tag}} \
             (e.g. {{user1}}name and {{user1}}email) so they share a partition"
        )),
        ServerError::Internal { reason } => Status::internal(format!("corum: internal: {reason}")),
        // etcd's exact messages and code (OutOfRange): clients match on them.
        ServerError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        ServerError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        e @ (ServerError::NotLeader { .. }
        | ServerError::WrongShard { .. }
        | ServerError::StaleMap { .. }
        | ServerError::Unavailable { .. }) => Status::unavailable(format!("corum: {e}")),
    }
}

/// `Unimplemented` with the gateway's reason.
pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("corum-gateway: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn timeouts_are_etcds_request_timed_out() {
        let s = from_client(ClientError::Timeout {
            attempts: 3,
            last: "x".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), TIMEOUT);
        assert_eq!(from_server(ServerError::Timeout).message(), TIMEOUT);
    }

    #[test]
    fn codes_follow_etcd() {
        assert_eq!(
            from_server(ServerError::TooLarge { limit: 1 }).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            from_server(ServerError::Busy).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            from_client(ClientError::CrossPartition(1, 2)).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            from_server(ServerError::Unavailable { reason: "x".into() }).code(),
            Code::Unavailable
        );
    }
}
