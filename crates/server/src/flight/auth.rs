//! Flight SQL authentication: every RPC passes [`Authenticator::check`]
//! (a tonic interceptor) before it reaches the service.
//!
//! - `authorization: Bearer <token>`: a token from an earlier Handshake,
//!   valid for `auth.token_ttl_s`, bound to its user.
//! - `authorization: Basic <base64 user:password>` (what ADBC and the
//!   Flight SQL JDBC driver send to Handshake): the password is checked
//!   against the role's SCRAM verifier. Accepted over TLS, or from a
//!   loopback client; a password never crosses a network in the clear.
//! - no `authorization`: only where `[auth]` trusts the client's address;
//!   the user is the `x-streamhouse-user` header (default `flight`).
//!
//! The [`Login`] found is put in the request's extensions for the service.

use std::sync::Arc;

use base64::Engine as _;
use streamhouse_engine::Engine;
use streamhouse_engine::access::scram;
use tonic::{Request, Status};

use crate::auth::{self, AuthConfig, Login, Method, Tokens};

/// Checks the credentials of every Flight request.
#[derive(Clone)]
pub struct Authenticator {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<AuthConfig>,
    pub(crate) tokens: Arc<Tokens>,
    /// Whether Flight is served over TLS.
    pub(crate) tls: bool,
    /// Salts the impostor verifiers of unknown users.
    pub(crate) secret: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("tls", &self.tls).finish_non_exhaustive()
    }
}

fn unauthenticated(message: &str) -> Status {
    Status::unauthenticated(message.to_string())
}

impl Authenticator {
    /// The interceptor: finds who the request is from, or refuses it.
    ///
    /// # Errors
    /// UNAUTHENTICATED without valid credentials.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let login = self.login(&request)?;
        request.extensions_mut().insert(login);
        Ok(request)
    }

    #[allow(clippy::result_large_err)]
    fn login(&self, request: &Request<()>) -> Result<Login, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let header = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or_default().to_string());
        match header {
            Some(value) => {
                let (scheme, credentials) = value.split_once(' ').unwrap_or((value.as_str(), ""));
                if scheme.eq_ignore_ascii_case("bearer") {
                    return self
                        .tokens
                        .check(credentials.trim())
                        .ok_or_else(|| unauthenticated("invalid or expired bearer token: log in again (Handshake)"));
                }
                if scheme.eq_ignore_ascii_case("basic") {
                    if !self.tls && !peer.is_some_and(|ip| ip.is_loopback() || is_mapped_loopback(ip)) {
                        return Err(unauthenticated(
                            "passwords are accepted over TLS only: configure server.tls and connect with grpc+tls://",
                        ));
                    }
                    return self.password_login(credentials.trim());
                }
                Err(unauthenticated("unsupported authorization scheme: use Basic (Handshake) or Bearer"))
            }
            None => match peer.map(|ip| self.config.method_for(ip)) {
                Some(Method::Trust) => {
                    let user = request
                        .metadata()
                        .get("x-streamhouse-user")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("flight")
                        .to_string();
                    let role = auth::session_role(&self.engine, &user).map_err(|m| unauthenticated(&m))?;
                    Ok(Login { user, role })
                }
                _ => Err(unauthenticated(
                    "authentication required: log in with HTTP Basic credentials (Handshake) and send the bearer token",
                )),
            },
        }
    }

    /// `user:password`, base64: the same answer for a wrong password and an unknown user.
    #[allow(clippy::result_large_err)]
    fn password_login(&self, encoded: &str) -> Result<Login, Status> {
        let failed = || unauthenticated("password authentication failed");
        // With or without padding: the Go Flight client (under ADBC) sends none.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = lenient.decode(encoded).map_err(|_| failed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| failed())?;
        let (user, password) = decoded.split_once(':').ok_or_else(failed)?;
        let verifier = auth::verifier_for(&self.engine, user, self.secret.as_ref());
        if !verifier.matches_password(password) {
            tracing::info!(%user, "flight password authentication failed");
            return Err(failed());
        }
        let role = auth::session_role(&self.engine, user).map_err(|m| unauthenticated(&m))?;
        Ok(Login { user: user.to_string(), role })
    }
}

fn is_mapped_loopback(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// The login the interceptor found for `request`.
///
/// # Errors
/// UNAUTHENTICATED when the request did not pass the interceptor (a bug).
#[allow(clippy::result_large_err)]
pub fn login_of<T>(request: &Request<T>) -> Result<Login, Status> {
    request.extensions().get::<Login>().cloned().ok_or_else(|| unauthenticated("request was not authenticated"))
}

/// A fresh random handle (tickets, prepared statements).
pub fn random_handle() -> bytes::Bytes {
    bytes::Bytes::from(scram::random_token::<24>())
}
