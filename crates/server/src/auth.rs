//! Who may connect (`[auth]` in the configuration): how a client is
//! authenticated, chosen by its address as in a minimal `pg_hba.conf`, and
//! the Flight SQL bearer tokens handed out after a login.
//!
//! - `trust`: no password. A user name that is a role logs in as that role
//!   (with its privileges; a role without LOGIN is refused); a name that is
//!   no role gets every right, as trust lets a client name any role,
//!   superusers included.
//! - `scram`: SCRAM-SHA-256 against the role's stored verifier (Postgres),
//!   or the password of an HTTP Basic `authorization` header checked
//!   against it (Flight SQL, answered with a bearer token). A wrong
//!   password, an unknown user and a role without a password all get the
//!   same answer (28P01 / UNAUTHENTICATED).
//!
//! The default trusts loopback (`127.0.0.0/8`, `::1`) and asks everyone else
//! for SCRAM; [`AuthConfig::check_listen`] refuses to listen on a
//! non-loopback address while any non-loopback client would be trusted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use streamhouse_engine::access::scram;

/// How a client is authenticated.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// No password.
    Trust,
    /// SCRAM-SHA-256 (Postgres) or a password over TLS (Flight Basic).
    Scram,
}

/// One rule: clients whose address is in `address` use `method`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// An address range in CIDR form (`10.0.0.0/8`, `::1/128`) or one address.
    pub address: String,
    /// How those clients authenticate.
    pub method: Method,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The method for clients no rule matches.
    pub method: Method,
    /// Rules by client address, first match wins.
    pub rules: Vec<Rule>,
    /// The bootstrap superuser's password, set on the first start only
    /// (`STREAMHOUSE__AUTH__BOOTSTRAP_PASSWORD`). Unset: a random one is
    /// generated and written once to `<data_dir>/bootstrap_password` (0600).
    pub bootstrap_password: Option<String>,
    /// How long a Flight SQL bearer token stays valid, in seconds.
    pub token_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: Method::Scram,
            rules: vec![
                Rule { address: "127.0.0.0/8".into(), method: Method::Trust },
                Rule { address: "::1/128".into(), method: Method::Trust },
            ],
            bootstrap_password: None,
            token_ttl_s: 3600,
        }
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("auth rule address {text:?} is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("auth rule address {text:?} has an invalid prefix length"))?,
        };
        Ok(Self { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// Every address in the range is a loopback address.
    fn is_loopback(&self) -> bool {
        match self.network {
            IpAddr::V4(n) => self.prefix >= 8 && n.octets()[0] == 127,
            IpAddr::V6(n) => self.prefix == 128 && n.is_loopback(),
        }
    }
}

impl AuthConfig {
    /// Checks the rules parse.
    ///
    /// # Errors
    /// A rule whose address is not an address or range.
    pub fn validate(&self) -> Result<(), String> {
        for rule in &self.rules {
            Cidr::parse(&rule.address)?;
        }
        Ok(())
    }

    /// The method for a client at `ip`.
    pub fn method_for(&self, ip: IpAddr) -> Method {
        self.rules
            .iter()
            .find(|rule| Cidr::parse(&rule.address).is_ok_and(|cidr| cidr.contains(ip)))
            .map_or(self.method, |rule| rule.method)
    }

    /// Secure by default: listening on `host` is refused when it is not a
    /// loopback address and a client that is not on loopback would be trusted.
    ///
    /// # Errors
    /// The message says what to configure.
    pub fn check_listen(&self, host: &str) -> Result<(), String> {
        self.validate()?;
        let loopback_host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        };
        if loopback_host {
            return Ok(());
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.method == Method::Trust && Cidr::parse(&r.address).is_ok_and(|c| !c.is_loopback()))
        {
            return Err(format!(
                "refusing to listen on {host}: the auth rule for {} trusts clients that are not on this machine; \
                 use method = \"scram\" for it (SCRAM-SHA-256 passwords), or listen on 127.0.0.1",
                rule.address
            ));
        }
        if self.method == Method::Trust {
            return Err(format!(
                "refusing to listen on {host}: auth.method = \"trust\" would let anyone who reaches the port in \
                 without a password; set auth.method = \"scram\" (loopback clients stay trusted by the default \
                 rules), or listen on 127.0.0.1"
            ));
        }
        Ok(())
    }
}

/// The verifier a login checks a password against: the role's, or, for an
/// unknown user or a role without a password, an impostor's no password
/// matches (so neither can be told apart from a wrong password).
pub(crate) fn verifier_for(engine: &streamhouse_engine::Engine, user: &str, secret: &[u8]) -> scram::Verifier {
    let state = engine.access().snapshot();
    state
        .role(user)
        .and_then(|role| role.password.as_deref())
        .and_then(scram::Verifier::parse)
        .unwrap_or_else(|| scram::Verifier::impostor(user, secret))
}

/// What a login resolves to: the session's role (`None`: every right).
///
/// # Errors
/// A role that may not log in (the message Postgres gives).
pub(crate) fn session_role(engine: &streamhouse_engine::Engine, user: &str) -> Result<Option<String>, String> {
    let state = engine.access().snapshot();
    match state.role(user) {
        Some(role) if !role.login => Err(format!("role \"{user}\" is not permitted to log in")),
        Some(_) => Ok(Some(user.to_string())),
        None => Ok(None),
    }
}

/// Flight SQL bearer tokens: random, expiring, bound to the user who logged in.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    issued: Mutex<HashMap<String, (Login, Instant)>>,
}

/// Who a token (or a trusted request) stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub user: String,
    /// The role checked (`None`: every right).
    pub role: Option<String>,
}

impl Tokens {
    /// Tokens valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, issued: Mutex::new(HashMap::new()) }
    }

    /// A new token for `login`.
    pub fn issue(&self, login: Login) -> String {
        let token = scram::random_token::<32>();
        let mut issued = self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        issued.retain(|_, (_, expires)| *expires > now);
        issued.insert(token.clone(), (login, now + self.ttl));
        token
    }

    /// The login a token stands for, while it is valid.
    pub fn check(&self, token: &str) -> Option<Login> {
        let issued = self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        issued.get(token).filter(|(_, expires)| *expires > Instant::now()).map(|(login, _)| login.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_address_and_guard_the_listener() {
        let config = AuthConfig::default();
        assert_eq!(config.method_for("127.0.0.1".parse().unwrap()), Method::Trust);
        assert_eq!(config.method_for("127.0.0.2".parse().unwrap()), Method::Trust);
        assert_eq!(config.method_for("::1".parse().unwrap()), Method::Trust);
        assert_eq!(config.method_for("::ffff:127.0.0.1".parse().unwrap()), Method::Trust);
        assert_eq!(config.method_for("10.1.2.3".parse().unwrap()), Method::Scram);
        assert!(config.check_listen("0.0.0.0").is_ok());
        let trusting = AuthConfig { method: Method::Trust, ..AuthConfig::default() };
        assert!(trusting.check_listen("127.0.0.1").is_ok());
        assert!(trusting.check_listen("0.0.0.0").unwrap_err().contains("auth.method = \"trust\""));
        let lan = AuthConfig {
            rules: vec![Rule { address: "10.0.0.0/8".into(), method: Method::Trust }],
            ..AuthConfig::default()
        };
        assert_eq!(lan.method_for("10.9.9.9".parse().unwrap()), Method::Trust);
        assert_eq!(lan.method_for("11.0.0.1".parse().unwrap()), Method::Scram);
        assert!(lan.check_listen("10.0.0.5").unwrap_err().contains("10.0.0.0/8"));
        let bad = AuthConfig { rules: vec![Rule { address: "nope".into(), method: Method::Trust }], ..lan };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn tokens_expire() {
        let tokens = Tokens::new(Duration::from_millis(50));
        let token = tokens.issue(Login { user: "a".into(), role: Some("a".into()) });
        assert_eq!(tokens.check(&token).unwrap().user, "a");
        assert!(tokens.check("forged").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(tokens.check(&token).is_none());
    }
}
