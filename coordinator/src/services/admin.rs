//! `tessera.v1.Admin`: tokens and the audit log. Every method needs an `admin` token (the
//! authentication layer checks the role); this file checks the requests and records what
//! changed in the audit log.

use std::time::Duration;

use tessera_proto::tessera::v1::{
    CreateTokenRequest, CreateTokenResponse, ListTokensRequest, ListTokensResponse,
    ReadAuditRequest, ReadAuditResponse, RevokeTokenRequest, RevokeTokenResponse, admin_server,
};
use tessera_proto::time::from_proto_duration;
use tonic::{Request, Response, Status};

use crate::auth::audit::MAX_READ;
use crate::auth::{AuditRecord, Auth, Role, principal};
use crate::status::meta_error;

/// The Admin service.
#[derive(Clone, Debug)]
pub struct AdminService {
    auth: Auth,
}

impl AdminService {
    /// Administers `auth`.
    pub fn new(auth: Auth) -> Self {
        AdminService { auth }
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = principal(&request);
        let req = request.into_inner();
        let role = Role::from_proto(req.role).ok_or_else(|| {
            Status::invalid_argument(
                "CreateTokenRequest.role must be reader, developer, ci, agent or admin",
            )
        })?;
        let expires_in = match &req.expires_in {
            None => None,
            Some(d) => Some(from_proto_duration(d).ok_or_else(|| {
                Status::invalid_argument("CreateTokenRequest.expires_in must not be negative")
            })?),
        };
        if expires_in.is_some_and(|d| d > Duration::from_secs(100 * 365 * 86_400)) {
            return Err(Status::invalid_argument(
                "CreateTokenRequest.expires_in must be at most 100 years (or absent: never)",
            ));
        }
        let (token, record) = self
            .auth
            .tokens
            .create(&req.name, role, req.instances, expires_in, &caller.name)
            .await?;
        self.auth.audit.record(
            &caller,
            AuditRecord {
                action: "token.create",
                object: &record.name,
                allowed: true,
                detail: &format!("role {role}"),
                ..Default::default()
            },
        );
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(record.to_info()),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let all = request.into_inner().all;
        let tokens = self
            .auth
            .tokens
            .list(all)
            .iter()
            .map(|t| t.to_info())
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let caller = principal(&request);
        let name = request.into_inner().name;
        let record = self.auth.tokens.revoke(&name).await?;
        self.auth.audit.record(
            &caller,
            AuditRecord {
                action: "token.revoke",
                object: &record.name,
                allowed: true,
                ..Default::default()
            },
        );
        Ok(Response::new(RevokeTokenResponse {
            token: Some(record.to_info()),
        }))
    }

    async fn read_audit(
        &self,
        request: Request<ReadAuditRequest>,
    ) -> Result<Response<ReadAuditResponse>, Status> {
        let req = request.into_inner();
        let since_ms = req.since.map_or(0, |t| {
            t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
        });
        let limit = if req.limit == 0 {
            MAX_READ
        } else {
            req.limit as usize
        };
        let audit = self.auth.audit.clone();
        let entries = tokio::task::spawn_blocking(move || audit.read(since_ms, limit))
            .await
            .map_err(|e| Status::internal(format!("audit read failed: {e}")))?
            .map_err(|e| meta_error(&e, &e))?;
        Ok(Response::new(ReadAuditResponse { entries }))
    }
}
