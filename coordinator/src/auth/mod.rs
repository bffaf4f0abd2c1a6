//! Who is calling and what they may do (DESIGN.md §10).
//!
//! With `auth = "tokens"` every call carries `authorization: Bearer TOKEN`. The [`layer`]
//! authenticates it before any service sees the request: the token names a [`Principal`] (its
//! name, [`Role`] and instance scope), the method must be one the role allows ([`Permission`]),
//! and the principal rides in the request's extensions. Services then check what only they can
//! see: the instance name in the message ([`Principal::check_instance`]), a job's owner. With
//! auth off every caller is the [`Principal::anonymous`] admin.
//!
//! | module | owns |
//! | --- | --- |
//! | `tokens` | the token store: random secrets, stored hashed, revocable, expiring |
//! | `layer` | the tower layer: authentication and the method table |
//! | `audit` | the audit log in the metadata store, and its JSON log lines |
//! | `limits` | per-token rate and in-flight limits (`RESOURCE_EXHAUSTED` with `RetryInfo`) |

pub mod audit;
pub mod layer;
pub mod limits;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use tessera_proto::tessera::v1::Role as ProtoRole;
use tonic::{Request, Status};

pub use audit::{AuditLog, AuditRecord};
pub use layer::AuthLayer;
pub use limits::Limiter;
pub use tokens::{TokenError, TokenStore};

use crate::config::AuthMode;

/// What a token may do. Each role includes the ones listed above it, except `Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read the CAS and the action cache, watch jobs, status.
    Reader,
    /// `Reader` plus uploads, Execute and jobs.
    Developer,
    /// `Developer` plus action-cache writes and `on_behalf_of`.
    Ci,
    /// The agent session plus CAS reads and writes.
    Agent,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, in the order of the role table.
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Developer,
        Role::Ci,
        Role::Agent,
        Role::Admin,
    ];

    /// The role's name, as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Developer => "developer",
            Role::Ci => "ci",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    /// The role a proto enum value names (`None` for UNSPECIFIED or unknown values).
    pub fn from_proto(value: i32) -> Option<Role> {
        match ProtoRole::try_from(value).ok()? {
            ProtoRole::Unspecified => None,
            ProtoRole::Reader => Some(Role::Reader),
            ProtoRole::Developer => Some(Role::Developer),
            ProtoRole::Ci => Some(Role::Ci),
            ProtoRole::Agent => Some(Role::Agent),
            ProtoRole::Admin => Some(Role::Admin),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> ProtoRole {
        match self {
            Role::Reader => ProtoRole::Reader,
            Role::Developer => ProtoRole::Developer,
            Role::Ci => ProtoRole::Ci,
            Role::Agent => ProtoRole::Agent,
            Role::Admin => ProtoRole::Admin,
        }
    }

    /// Whether this role may do `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Agent => matches!(
                permission,
                P::Capabilities | P::CasRead | P::CasWrite | P::AgentSession
            ),
            Role::Reader => matches!(
                permission,
                P::Capabilities | P::CasRead | P::AcRead | P::JobRead
            ),
            Role::Developer => {
                Role::Reader.allows(permission)
                    || matches!(permission, P::CasWrite | P::Execute | P::JobSubmit)
            }
            Role::Ci => {
                Role::Developer.allows(permission)
                    || matches!(permission, P::AcWrite | P::Quarantine)
            }
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("unknown role \"{s}\" (expected reader, developer, ci, agent or admin)")
            })
    }
}

/// What one gRPC method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// GetCapabilities.
    Capabilities,
    /// FindMissingBlobs, BatchReadBlobs, GetTree, ByteStream Read.
    CasRead,
    /// BatchUpdateBlobs, ByteStream Write and QueryWriteStatus.
    CasWrite,
    /// GetActionResult.
    AcRead,
    /// UpdateActionResult.
    AcWrite,
    /// Execute, WaitExecution and the Operations service.
    Execute,
    /// Jobs.Submit and Jobs.Cancel (of one's own jobs).
    JobSubmit,
    /// Jobs.Watch and Jobs.Status.
    JobRead,
    /// The agent session.
    AgentSession,
    /// Quarantine.Add and Quarantine.Remove: quarantining tests.
    Quarantine,
    /// The Admin service, cancelling anyone's job.
    Admin,
}

impl Permission {
    /// A short name for messages and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Capabilities => "capabilities",
            Permission::CasRead => "CAS reads",
            Permission::CasWrite => "CAS writes",
            Permission::AcRead => "action cache reads",
            Permission::AcWrite => "action cache writes",
            Permission::Execute => "remote execution",
            Permission::JobSubmit => "submitting jobs",
            Permission::JobRead => "reading jobs",
            Permission::AgentSession => "agent sessions",
            Permission::Quarantine => "quarantining tests",
            Permission::Admin => "administration",
        }
    }
}

/// Who is calling: a token's name, role and instance scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`-` for the anonymous principal of auth off).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Instance names it is good for; empty means all.
    pub instances: Vec<String>,
    /// The token's hash (its identity in the store); `None` for the anonymous principal.
    pub token_hash: Option<[u8; 32]>,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
}

impl Principal {
    /// The caller when authentication is off: may do everything.
    pub fn anonymous(peer: Option<SocketAddr>) -> Self {
        Principal {
            name: "-".to_owned(),
            role: Role::Admin,
            instances: Vec::new(),
            token_hash: None,
            peer,
        }
    }

    /// Whether this is the anonymous principal of auth off.
    pub fn is_anonymous(&self) -> bool {
        self.token_hash.is_none()
    }

    /// `PERMISSION_DENIED` unless the token's scope includes instance `instance`.
    pub fn check_instance(&self, instance: &str) -> Result<(), Status> {
        if self.instances.is_empty() || self.instances.iter().any(|i| i == instance) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token \"{}\" is not allowed on instance \"{instance}\" (its instances: {})",
            self.name,
            self.instances.join(", ")
        )))
    }

    /// `PERMISSION_DENIED` unless the role allows `permission`.
    pub fn check(&self, permission: Permission) -> Result<(), Status> {
        if self.role.allows(permission) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token \"{}\" has role {}, which does not allow {}",
            self.name,
            self.role,
            permission.name()
        )))
    }

    /// The trust domain of what this principal submits: its role and instance scope. What
    /// agents keep between jobs is never shared between domains. Empty for the anonymous
    /// principal (auth off: one domain, and unchanged cache keys).
    pub fn trust_domain(&self) -> String {
        if self.is_anonymous() {
            return String::new();
        }
        let scope = if self.instances.is_empty() {
            "*".to_owned()
        } else {
            let mut sorted = self.instances.clone();
            sorted.sort();
            sorted.join(",")
        };
        format!("{}:{scope}", self.role)
    }

    /// The peer address as the audit log writes it.
    pub fn peer_name(&self) -> String {
        self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string())
    }
}

/// The principal the [`layer`] attached to `request` (the anonymous one if none: only in unit
/// tests that call services directly, since the server always installs the layer).
pub fn principal<T>(request: &Request<T>) -> Arc<Principal> {
    principal_in(request.extensions())
}

/// [`principal`], from the extensions of a request (tonic's or the HTTP request itself).
fn principal_in(extensions: &http::Extensions) -> Arc<Principal> {
    extensions
        .get::<Arc<Principal>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Principal::anonymous(None)))
}

/// Everything the services need to authorize and account for calls.
#[derive(Clone, Debug)]
pub struct Auth {
    /// The mode.
    pub mode: AuthMode,
    /// The token store.
    pub tokens: TokenStore,
    /// The audit log.
    pub audit: AuditLog,
    /// Per-token limits.
    pub limits: Limiter,
}

impl Auth {
    /// Checks `principal` for instance `instance`; a denial is written to the audit log.
    pub fn check_instance(
        &self,
        principal: &Principal,
        method: &str,
        instance: &str,
    ) -> Result<(), Status> {
        principal.check_instance(instance).inspect_err(|status| {
            self.audit.denied(principal, method, instance, status);
        })
    }
}

/// The caller of one request as a service sees it: its principal and the checks only the
/// service can make (instance scope, upload bytes), each denial audited. Without [`Auth`]
/// (services built without it, in unit tests) nothing is checked or recorded.
#[derive(Debug, Clone)]
pub struct Caller {
    auth: Option<Auth>,
    principal: Arc<Principal>,
}

impl Caller {
    /// The caller of `request`.
    pub fn of<T>(auth: Option<&Auth>, request: &Request<T>) -> Caller {
        Caller::of_extensions(auth, request.extensions())
    }

    /// The caller of a call whose request carries `extensions` (where the auth layer put the
    /// principal), for a service that reads the HTTP request itself.
    pub fn of_extensions(auth: Option<&Auth>, extensions: &http::Extensions) -> Caller {
        Caller {
            auth: auth.cloned(),
            principal: principal_in(extensions),
        }
    }

    /// Who it is.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The auth state, when there is one.
    pub fn auth(&self) -> Option<&Auth> {
        self.auth.as_ref()
    }

    /// `PERMISSION_DENIED` (audited) unless the caller's scope includes `instance`.
    pub fn instance(&self, method: &str, instance: &str) -> Result<(), Status> {
        match &self.auth {
            Some(auth) => auth.check_instance(&self.principal, method, instance),
            None => Ok(()),
        }
    }

    /// `PERMISSION_DENIED` (audited) unless the role allows `permission`.
    pub fn allowed(&self, method: &str, permission: Permission) -> Result<(), Status> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        self.principal.check(permission).inspect_err(|status| {
            auth.audit.denied(&self.principal, method, "", status);
        })
    }

    /// `RESOURCE_EXHAUSTED` if the caller is over its upload rate.
    pub fn upload(&self, bytes: u64) -> Result<(), Status> {
        match &self.auth {
            Some(auth) => auth.limits.upload(&self.principal, bytes),
            None => Ok(()),
        }
    }

    /// Writes `record` to the audit log.
    pub fn record(&self, record: AuditRecord<'_>) {
        if let Some(auth) = &self.auth {
            auth.audit.record(&self.principal, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table() {
        use Permission as P;
        let all = [
            P::Capabilities,
            P::CasRead,
            P::CasWrite,
            P::AcRead,
            P::AcWrite,
            P::Execute,
            P::JobSubmit,
            P::JobRead,
            P::AgentSession,
            P::Quarantine,
            P::Admin,
        ];
        let allowed =
            |role: Role| -> Vec<P> { all.iter().copied().filter(|p| role.allows(*p)).collect() };
        assert_eq!(
            allowed(Role::Reader),
            [P::Capabilities, P::CasRead, P::AcRead, P::JobRead]
        );
        assert_eq!(
            allowed(Role::Developer),
            [
                P::Capabilities,
                P::CasRead,
                P::CasWrite,
                P::AcRead,
                P::Execute,
                P::JobSubmit,
                P::JobRead
            ]
        );
        assert_eq!(
            allowed(Role::Ci),
            [
                P::Capabilities,
                P::CasRead,
                P::CasWrite,
                P::AcRead,
                P::AcWrite,
                P::Execute,
                P::JobSubmit,
                P::JobRead,
                P::Quarantine
            ]
        );
        assert_eq!(
            allowed(Role::Agent),
            [P::Capabilities, P::CasRead, P::CasWrite, P::AgentSession]
        );
        assert_eq!(allowed(Role::Admin), all);
    }

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
            assert_eq!(Role::from_proto(role.to_proto() as i32), Some(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("reader"));
        assert_eq!(Role::from_proto(0), None);
        assert_eq!(Role::from_proto(99), None);
    }

    #[test]
    fn instance_scope_and_trust_domains() {
        let mut p = Principal {
            name: "dev".into(),
            role: Role::Developer,
            instances: vec!["b".into(), "a".into()],
            token_hash: Some([0; 32]),
            peer: None,
        };
        assert!(p.check_instance("a").is_ok());
        let denied = p.check_instance("c").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("\"c\""), "{}", denied.message());
        assert_eq!(p.trust_domain(), "developer:a,b");
        p.instances.clear();
        assert!(p.check_instance("anything").is_ok());
        assert_eq!(p.trust_domain(), "developer:*");
        assert_eq!(Principal::anonymous(None).trust_domain(), "");
    }
}
