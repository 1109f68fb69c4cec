//! Who may do what. Every request is made by an `Identity` (a token's name and role); every route
//! needs one `Permission`; `Role::allows` is the whole policy, in one table.
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything |
//! | `operator` | read, run, cancel, requeue, respond to inquiries, emit events |
//! | `viewer` | read (secret values are never readable by anyone) |
//! | `worker` | enroll workers (the enrollment token of `worker.token`), nothing else |
//! | `agent` | the worker protocol, as the one worker its credential was issued to |

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    /// Enrollment: may register a worker (and get that worker's own credential).
    Worker,
    /// A registered worker's own credential, bound to it.
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Viewer, Role::Worker, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Roles a person may give a token (agents' credentials are issued at registration).
    pub fn grantable(self) -> bool {
        self != Role::Agent
    }

    /// The one policy.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => !matches!(p, Enroll | WorkerProtocol),
            Role::Operator => matches!(p, Read | Run | Cancel | Requeue | Respond | EmitEvents),
            Role::Viewer => matches!(p, Read),
            Role::Worker => matches!(p, Enroll),
            Role::Agent => matches!(p, WorkerProtocol),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| {
            let all: Vec<_> = Role::ALL.iter().filter(|r| r.grantable()).map(|r| r.as_str()).collect();
            format!("unknown role {s:?}; expected one of: {}", all.join(", "))
        })
    }
}

/// What a route needs. Each route declares one, next to its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read executions, workers, packs, actions, dead letters, events, metrics, key names.
    Read,
    /// Submit executions.
    Run,
    Cancel,
    /// Requeue dead letters.
    Requeue,
    /// Answer inquiries.
    Respond,
    /// Emit events.
    EmitEvents,
    /// Load and replace packs, manage tokens and keys: administration.
    Admin,
    /// Register a worker.
    Enroll,
    /// Everything a registered worker does.
    WorkerProtocol,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::Read,
        Permission::Run,
        Permission::Cancel,
        Permission::Requeue,
        Permission::Respond,
        Permission::EmitEvents,
        Permission::Admin,
        Permission::Enroll,
        Permission::WorkerProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Run => "run",
            Permission::Cancel => "cancel",
            Permission::Requeue => "requeue",
            Permission::Respond => "respond",
            Permission::EmitEvents => "emit_events",
            Permission::Admin => "admin",
            Permission::Enroll => "enroll",
            Permission::WorkerProtocol => "worker_protocol",
        }
    }

    /// The roles that have this permission, for messages.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.allows(self)).collect()
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: the token's name and role (and for an agent, its worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub worker: Option<Uuid>,
}

impl Identity {
    /// How it appears in history (`actor`): `user:<token name>`, or the worker's.
    pub fn actor(&self) -> String {
        match self.role {
            Role::Agent | Role::Worker => format!("worker:{}", self.name),
            _ => format!("user:{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    #[test]
    fn the_policy_as_a_table() {
        let all = [Read, Run, Cancel, Requeue, Respond, EmitEvents, Admin, Enroll, WorkerProtocol];
        let expect = |r: Role| -> Vec<Permission> {
            match r {
                Role::Admin => vec![Read, Run, Cancel, Requeue, Respond, EmitEvents, Admin],
                Role::Operator => vec![Read, Run, Cancel, Requeue, Respond, EmitEvents],
                Role::Viewer => vec![Read],
                Role::Worker => vec![Enroll],
                Role::Agent => vec![WorkerProtocol],
            }
        };
        for r in Role::ALL {
            let got: Vec<_> = all.into_iter().filter(|p| r.allows(*p)).collect();
            assert_eq!(got, expect(r), "{r}");
        }
        assert!("agent".parse::<Role>().unwrap() == Role::Agent && !Role::Agent.grantable());
        assert!("root".parse::<Role>().unwrap_err().contains("admin, operator, viewer, worker"));
    }
}

/// A token as listed: never its secret (which is shown once, at creation, and stored only hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: crate::Timestamp,
    /// Who created it (`user:<name>`, or `bootstrap` for the first admin token).
    pub created_by: Option<String>,
    pub expires_at: Option<crate::Timestamp>,
    pub revoked_at: Option<crate::Timestamp>,
    pub last_used_at: Option<crate::Timestamp>,
    /// For a worker's own credential: the worker.
    pub worker_id: Option<Uuid>,
}

impl TokenInfo {
    /// Whether it may be used at `now`.
    pub fn valid_at(&self, now: crate::Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}
