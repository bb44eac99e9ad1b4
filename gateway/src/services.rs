//! The generated service traits implemented on [`Gateway`]: KV (in `kv.rs`), Cluster,
//! Maintenance, and the services that are refused with a reason (Watch, Lease, Auth).

use std::sync::Arc;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use wire::messages::Consistency;

use crate::epb::{self, alarm_request};
use crate::errors::{self, unimplemented};
use crate::kv::unary;
use crate::{Gateway, HEALTH_PROBE_INTERVAL, VERSION};

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl epb::kv_server::Kv for Gateway {
    async fn range(&self, req: Request<epb::RangeRequest>) -> Res<epb::RangeResponse> {
        unary(self, req, |r| Gateway::range(self, r)).await
    }
    async fn put(&self, req: Request<epb::PutRequest>) -> Res<epb::PutResponse> {
        unary(self, req, |r| Gateway::put(self, r)).await
    }
    async fn delete_range(
        &self,
        req: Request<epb::DeleteRangeRequest>,
    ) -> Res<epb::DeleteRangeResponse> {
        unary(self, req, |r| Gateway::delete_range(self, r)).await
    }
    async fn txn(&self, req: Request<epb::TxnRequest>) -> Res<epb::TxnResponse> {
        unary(self, req, |r| Gateway::txn(self, r)).await
    }
    async fn compact(&self, req: Request<epb::CompactionRequest>) -> Res<epb::CompactionResponse> {
        unary(self, req, |r| Gateway::compact(self, r)).await
    }
}

const WATCH_MISSING: &str = "watch is not supported yet: corum has no cluster-wide revision \
     and keeps no history to watch from (issue 16)";
const LEASE_MISSING: &str = "leases are not supported yet (issue 16)";
const AUTH_MISSING: &str = "authentication is not supported yet (issue 15)";
const MEMBERSHIP_MISSING: &str = "membership changes are not supported yet: corum's cluster \
     membership is fixed at start (adding, removing and promoting nodes: issue 11)";

#[tonic::async_trait]
impl epb::watch_server::Watch for Gateway {
    type WatchStream = BoxStream<epb::WatchResponse>;
    async fn watch(&self, _: Request<Streaming<epb::WatchRequest>>) -> Res<Self::WatchStream> {
        Err(unimplemented(WATCH_MISSING))
    }
}

#[tonic::async_trait]
impl epb::lease_server::Lease for Gateway {
    async fn lease_grant(
        &self,
        _: Request<epb::LeaseGrantRequest>,
    ) -> Res<epb::LeaseGrantResponse> {
        Err(unimplemented(LEASE_MISSING))
    }
    async fn lease_revoke(
        &self,
        _: Request<epb::LeaseRevokeRequest>,
    ) -> Res<epb::LeaseRevokeResponse> {
        Err(unimplemented(LEASE_MISSING))
    }
    type LeaseKeepAliveStream = BoxStream<epb::LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        _: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        Err(unimplemented(LEASE_MISSING))
    }
    async fn lease_time_to_live(
        &self,
        _: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Res<epb::LeaseTimeToLiveResponse> {
        Err(unimplemented(LEASE_MISSING))
    }
    async fn lease_leases(
        &self,
        _: Request<epb::LeaseLeasesRequest>,
    ) -> Res<epb::LeaseLeasesResponse> {
        Err(unimplemented(LEASE_MISSING))
    }
}

#[tonic::async_trait]
impl epb::cluster_server::Cluster for Gateway {
    async fn member_add(&self, _: Request<epb::MemberAddRequest>) -> Res<epb::MemberAddResponse> {
        Err(unimplemented(MEMBERSHIP_MISSING))
    }
    async fn member_remove(
        &self,
        _: Request<epb::MemberRemoveRequest>,
    ) -> Res<epb::MemberRemoveResponse> {
        Err(unimplemented(MEMBERSHIP_MISSING))
    }
    async fn member_update(
        &self,
        _: Request<epb::MemberUpdateRequest>,
    ) -> Res<epb::MemberUpdateResponse> {
        Err(unimplemented(MEMBERSHIP_MISSING))
    }
    async fn member_promote(
        &self,
        _: Request<epb::MemberPromoteRequest>,
    ) -> Res<epb::MemberPromoteResponse> {
        Err(unimplemented(MEMBERSHIP_MISSING))
    }

    /// One member per corum node of the cluster map. Its client URLs are the gateway's
    /// advertised URLs: etcd clients dial client URLs with gRPC, which corum's native port does
    /// not speak. Peer URLs are empty (corum's peer protocol is not etcd's either).
    async fn member_list(
        &self,
        _: Request<epb::MemberListRequest>,
    ) -> Res<epb::MemberListResponse> {
        let members = self
            .node_ids()
            .into_iter()
            .map(|id| epb::Member {
                id,
                name: format!("node-{id}"),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.advertise_client_urls.clone(),
                is_learner: false,
            })
            .collect();
        Ok(Response::new(epb::MemberListResponse {
            // The gateway is not a member: member_id 0 (partition 0, the meta group, is in no
            // client map, so there is no leader to name either).
            header: Some(self.header(0, 0, 0)),
            members,
        }))
    }
}

/// What the nodes say about the meta group (partition 0): its leader and that leader's
/// commit and applied index and term.
struct MetaStatus {
    leader: u64,
    commit_index: u64,
    applied_index: u64,
    term: u64,
}

impl Gateway {
    async fn meta_status(&self) -> Result<MetaStatus, Status> {
        // Every node of the map, concurrently; a node that does not answer is skipped (the
        // client's `status()` fails as soon as one node is down, and so would `etcdctl
        // endpoint status` with it). Only "no node reports leading" is an error.
        let mut asks = tokio::task::JoinSet::new();
        for endpoint in self.client.cluster_map().endpoints() {
            let client = self.client.clone();
            let endpoint = endpoint.to_owned();
            asks.spawn(async move {
                let r = client.status_of(&endpoint).await;
                (endpoint, r)
            });
        }
        let mut statuses = Vec::new();
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((endpoint, Ok(st))) => statuses.push((endpoint, st)),
                Ok((endpoint, Err(e))) => {
                    tracing::debug!(%endpoint, error = %e, "status: node skipped");
                }
                Err(e) => tracing::warn!(error = %e, "status task failed"),
            }
        }
        // The replica that says it leads, in the highest term if two do (an old leader that
        // has not heard of the new term yet).
        let mut leader_view = None;
        for (_, st) in &statuses {
            for p in st.partitions.iter().filter(|p| p.partition == 0) {
                if p.is_leader {
                    let better = leader_view
                        .as_ref()
                        .is_none_or(|v: &MetaStatus| p.term > v.term);
                    if better {
                        leader_view = Some(MetaStatus {
                            leader: st.node,
                            commit_index: p.commit_index,
                            applied_index: p.applied_index,
                            term: p.term,
                        });
                    }
                }
            }
        }
        leader_view.ok_or_else(|| {
            tracing::warn!("no node reports leading the meta group");
            Status::unavailable(errors::NO_LEADER)
        })
    }
}

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for Gateway {
    /// Alarms: corum raises none, so the list is empty and deactivating succeeds.
    async fn alarm(&self, req: Request<epb::AlarmRequest>) -> Res<epb::AlarmResponse> {
        if req.get_ref().action() == alarm_request::AlarmAction::Activate {
            return Err(unimplemented(
                "corum raises no alarms and cannot be given one to activate",
            ));
        }
        Ok(Response::new(epb::AlarmResponse {
            header: Some(self.header(0, 0, 0)),
            alarms: Vec::new(),
        }))
    }

    /// The meta group's view (see the crate docs): `leader` is its leader node; the header's
    /// member is 0 (the gateway is no member).
    async fn status(&self, _: Request<epb::StatusRequest>) -> Res<epb::StatusResponse> {
        let m = self.meta_status().await?;
        Ok(Response::new(epb::StatusResponse {
            // member_id 0: the gateway is not a member, so `etcdctl endpoint status` says
            // IS LEADER false for it; `leader` names the meta group's leader node.
            header: Some(self.header(0, 0, m.term)),
            version: VERSION.to_owned(),
            db_size: 0,
            leader: m.leader,
            raft_index: m.commit_index,
            raft_term: m.term,
            raft_applied_index: m.applied_index,
            errors: Vec::new(),
            db_size_in_use: 0,
            is_learner: false,
        }))
    }

    /// Nothing to defragment (corum's state is in memory, its logs are compacted behind
    /// snapshots): success.
    async fn defragment(&self, _: Request<epb::DefragmentRequest>) -> Res<epb::DefragmentResponse> {
        Ok(Response::new(epb::DefragmentResponse {
            header: Some(self.header(0, 0, 0)),
        }))
    }

    async fn hash(&self, _: Request<epb::HashRequest>) -> Res<epb::HashResponse> {
        Err(unimplemented("hash is not supported yet"))
    }
    async fn hash_kv(&self, _: Request<epb::HashKvRequest>) -> Res<epb::HashKvResponse> {
        Err(unimplemented(
            "hashkv is not supported yet (it needs multi-version reads: issue 16)",
        ))
    }
    type SnapshotStream = BoxStream<epb::SnapshotResponse>;
    async fn snapshot(&self, _: Request<epb::SnapshotRequest>) -> Res<Self::SnapshotStream> {
        Err(unimplemented(
            "snapshot is not supported yet (a corum backup stream; etcd's restore could not \
             read it anyway)",
        ))
    }
    async fn move_leader(
        &self,
        _: Request<epb::MoveLeaderRequest>,
    ) -> Res<epb::MoveLeaderResponse> {
        Err(unimplemented(
            "move-leader is not supported: corum has a leader per partition; use \
             `corum ctl leader transfer PARTITION --to NODE`",
        ))
    }
}

/// The Auth service: every method refused with the same reason.
macro_rules! auth_refused {
    ($($method:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl epb::auth_server::Auth for Gateway {
            $(
                async fn $method(&self, _: Request<epb::$req>) -> Res<epb::$resp> {
                    Err(unimplemented(AUTH_MISSING))
                }
            )*
        }
    };
}

auth_refused! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    authenticate(AuthenticateRequest) -> AuthenticateResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

/// Keeps the gRPC health service's overall status (service "") current: SERVING while a
/// linearizable read of the key `health` succeeds (the partition holding it has a leader and a
/// quorum; the same check etcdctl's `endpoint health` makes), NOT_SERVING otherwise. Runs
/// until aborted.
pub(crate) async fn health_probe(gateway: Arc<Gateway>, reporter: HealthReporter) {
    let mut last = None;
    loop {
        let status = match gateway
            .client
            .get_with("health", Consistency::Linearizable)
            .await
        {
            Ok(_) => ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "health probe: corum did not answer");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            tracing::info!(?status, "health");
            last = Some(status);
        }
        reporter.set_service_status("", status).await;
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
}
