//! Who may call what: optional API keys per client role, sent as
//! `authorization: Bearer <key>` metadata.
//!
//! | role | may call |
//! | --- | --- |
//! | frontend | Enqueue, GetRank, WatchRank, Leave |
//! | booking | VerifyAdmission, CompleteAdmission, GetSigningKeys, AdmitUsers (within capacity), CloseQueue |
//! | operator | everything: AdmitBatch, the admin service, and the rest (the CLI enqueues, watches and verifies too) |
//!
//! Keys are read at start from a directory with one file per role (`frontend`,
//! `booking`, `operator`), one key per line, so a Kubernetes Secret mounted
//! as a directory supplies them and several keys per role allow rotation.
//! Keys are compared in constant time. Health and reflection stay open for
//! probes and tools.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Frontend,
    Booking,
    Operator,
}

impl Role {
    const ALL: [(Role, &'static str); 3] = [
        (Role::Frontend, "frontend"),
        (Role::Booking, "booking"),
        (Role::Operator, "operator"),
    ];

    fn may_call(self, service: &str, method: &str) -> bool {
        match self {
            Role::Operator => true,
            Role::Frontend => {
                service == "waitroom.v1.QueueService"
                    && matches!(method, "Enqueue" | "GetRank" | "WatchRank" | "Leave")
            }
            Role::Booking => {
                service == "waitroom.v1.QueueService"
                    && matches!(
                        method,
                        "VerifyAdmission"
                            | "CompleteAdmission"
                            | "GetSigningKeys"
                            | "AdmitUsers"
                            | "CloseQueue"
                    )
            }
        }
    }
}

/// The accepted keys of each role.
#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<(Role, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// Reads `frontend`, `booking` and `operator` from `dir`; a missing file
    /// means that role has no key. Blank lines and `#` comments are skipped.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (role, name) in Role::ALL {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if line.len() < 16 {
                    return Err(format!(
                        "{}: keys must be at least 16 characters",
                        path.display()
                    ));
                }
                keys.push((role, line.as_bytes().to_vec()));
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "{}: no key in frontend, booking or operator",
                dir.display()
            ));
        }
        Ok(Self { keys })
    }

    /// The role of a presented key. Every key is compared, in constant time,
    /// so the time taken says nothing about which key came close.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(*role);
            }
        }
        found
    }

    pub fn roles(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Role::ALL
            .iter()
            .filter(|(r, _)| self.keys.iter().any(|(k, _)| k == r))
            .map(|(_, n)| *n)
            .collect();
        names.dedup();
        names
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<ApiKeys>,
}

impl AuthLayer {
    pub fn new(keys: Arc<ApiKeys>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            keys: Arc::clone(&self.keys),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<ApiKeys>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
            return Box::pin(self.inner.call(request));
        }
        let presented = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let refusal = match presented.map(|key| self.keys.role_of(key)) {
            None => Some(Error::Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`".into(),
            )),
            Some(None) => Some(Error::Unauthenticated("unknown API key".into())),
            Some(Some(role)) if !role.may_call(service, method) => Some(Error::PermissionDenied(
                format!("this key's role ({role:?}) may not call {service}/{method}"),
            )),
            Some(Some(role)) => {
                // Handlers read it where a field needs more than the call
                // (AdmitUsers' override_capacity).
                request.extensions_mut().insert(role);
                None
            }
        };
        match refusal {
            Some(error) => Box::pin(async move { Ok(Status::from(error).into_http()) }),
            None => Box::pin(self.inner.call(request)),
        }
    }
}
