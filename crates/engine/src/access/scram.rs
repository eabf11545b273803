//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash) as Postgres speaks it.
//!
//! A password is stored only as a [`Verifier`] — Postgres' text form
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` — from which
//! the password cannot be recovered and which cannot itself be replayed to
//! log in (a client must prove it knows `ClientKey`, whose hash is
//! `StoredKey`). [`Exchange`] is the server's side of one authentication:
//! pure message handling, no I/O, so the Postgres front end drives it with
//! SASL messages and a test drives it with strings.
//!
//! pgwire ships a SCRAM handler too, but it wants the *salted password*
//! (a password equivalent: whoever reads it can log in) and compares proofs
//! in variable time; this one checks proofs against the verifier in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand};

/// PBKDF2 iterations of new verifiers (Postgres' default `scram_iterations`).
pub const ITERATIONS: u32 = 4096;

/// The SASL mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";

const SALT_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// What is stored of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(SCRAM-SHA-256)")
    }
}

impl Verifier {
    /// The verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        Self::with_salt(password, &random_bytes::<SALT_LEN>(), ITERATIONS)
    }

    /// The verifier of `password` with the given salt and iteration count.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier no password matches, with a salt that depends only on
    /// `user` and `secret`: what an unknown user is challenged with, so
    /// that the exchange looks the same (same salt every time) whether or
    /// not the user exists.
    pub fn impostor(user: &str, secret: &[u8]) -> Self {
        let salt = hmac_sha256(secret, user.as_bytes());
        Self {
            iterations: ITERATIONS,
            salt: salt[..SALT_LEN].to_vec(),
            stored_key: random_bytes::<KEY_LEN>(),
            server_key: random_bytes::<KEY_LEN>(),
        }
    }

    /// Reads Postgres' text form; `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let salt = B64.decode(salt).ok()?;
        let stored_key = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key = B64.decode(server).ok()?.try_into().ok()?;
        Some(Self { iterations, salt, stored_key, server_key })
    }

    /// Whether `password` is the one this verifier was made from (for
    /// protocols that send the password itself, over TLS: Flight's HTTP Basic).
    pub fn matches_password(&self, password: &str) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        constant_time_eq(&sha256(&client_key), &self.stored_key)
    }
}

impl std::fmt::Display for Verifier {
    /// Postgres' text form, as `pg_authid.rolpassword` shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow the protocol (08P01).
    Protocol(String),
    /// The proof is wrong: a wrong password, or an unknown user (28P01).
    Failed,
}

/// The server's side of one SCRAM exchange, after the client's first message.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    /// `n,,` or `y,,`: the GS2 header the client's final message must echo.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Reads the client's first message and answers it (`r=…,s=…,i=…`).
    ///
    /// # Errors
    /// [`ScramError::Protocol`] for a malformed message or a channel
    /// binding the server did not offer.
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| protocol("the client's first message is not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let (Some(binding), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(protocol("malformed SCRAM client-first-message"));
        };
        match binding {
            "n" | "y" => {}
            b if b.starts_with("p=") => {
                return Err(protocol("channel binding was not offered (the server offers SCRAM-SHA-256 only)"));
            }
            _ => return Err(protocol("malformed GS2 header in the SCRAM client-first-message")),
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(protocol("malformed authorization identity in the SCRAM client-first-message"));
        }
        if bare.starts_with("m=") {
            return Err(protocol("SCRAM extensions (m=) are not supported"));
        }
        let client_nonce =
            attribute(bare, 'r').ok_or_else(|| protocol("the SCRAM client-first-message has no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(protocol("the SCRAM client nonce has invalid characters"));
        }
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let exchange = Self {
            verifier,
            gs2_header: format!("{binding},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client's final message; on success returns the server's
    /// final message (`v=…`, proving the server knew the verifier).
    ///
    /// # Errors
    /// [`ScramError::Failed`] for a wrong proof; [`ScramError::Protocol`]
    /// for a malformed message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| protocol("the client's final message is not UTF-8"))?;
        let (without_proof, proof) =
            text.rsplit_once(",p=").ok_or_else(|| protocol("the SCRAM client-final-message has no proof"))?;
        let binding =
            attribute(without_proof, 'c').ok_or_else(|| protocol("the SCRAM client-final-message has no c="))?;
        let binding = B64.decode(binding).map_err(|_| protocol("malformed channel binding in client-final-message"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(protocol("the SCRAM channel binding does not match the client-first-message"));
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(protocol("the SCRAM nonce does not match"));
        }
        let proof: [u8; KEY_LEN] =
            B64.decode(proof).ok().and_then(|p| p.try_into().ok()).ok_or_else(|| protocol("malformed SCRAM proof"))?;
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.server_first);
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; KEY_LEN];
        for (i, byte) in client_key.iter_mut().enumerate() {
            *byte = proof[i] ^ signature[i];
        }
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn protocol(message: &str) -> ScramError {
    ScramError::Protocol(message.to_string())
}

/// The value of `name=` among comma-separated SCRAM attributes.
fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

/// PBKDF2-HMAC-SHA-256 of the SASLprep'd password (the raw password when
/// SASLprep refuses it, as Postgres does).
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let prepared = stringprep::saslprep(password).map(|p| p.into_owned()).unwrap_or_else(|_| password.to_string());
    let mut out = [0u8; KEY_LEN];
    let iterations = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, prepared.as_bytes(), &mut out);
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(hmac::sign(&key, message).as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Compares without stopping at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::SecureRandom as _;
    let mut out = [0u8; N];
    if rand::SystemRandom::new().fill(&mut out).is_err() {
        // The OS random source does not fail on the platforms we build for;
        // if it ever did, refuse rather than use predictable bytes.
        panic!("the operating system's random number generator failed");
    }
    out
}

/// A random token of `N` bytes, URL-safe base64 (passwords, bearer tokens, handles).
pub fn random_token<const N: usize>() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as RFC 5802 describes it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let nonce = attribute(server_first, 'r').unwrap();
        let salt = B64.decode(attribute(server_first, 's').unwrap()).unwrap();
        let iterations: u32 = attribute(server_first, 'i').unwrap().parse().unwrap();
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn verifier_round_trips_and_matches_only_its_password() {
        let v = Verifier::new("s3cret");
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert_eq!(Verifier::parse(&text), Some(v.clone()));
        assert!(v.matches_password("s3cret"));
        assert!(!v.matches_password("s3cret "));
        assert_eq!(Verifier::parse("md5abc"), None);
        assert_eq!(Verifier::parse("SCRAM-SHA-256$0:AA==$AA==:AA=="), None);
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::with_salt("pencil", &salt, 4096);
        let first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let exchange = Exchange {
            verifier: v,
            gs2_header: "n,,".into(),
            client_first_bare: first_bare.into(),
            server_first: server_first.into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let final_message = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            exchange.finish(final_message.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn exchange_accepts_the_password_and_refuses_others() {
        let verifier = Verifier::new("right");
        for (password, ok) in [("right", true), ("wrong", false)] {
            let (exchange, server_first) = Exchange::start(verifier.clone(), b"n,,n=,r=abcdef").unwrap();
            let reply = client_final(password, "n=,r=abcdef", &server_first);
            assert_eq!(exchange.finish(reply.as_bytes()).is_ok(), ok, "{password}");
        }
        // An impostor's salt is stable per user, and nothing matches it.
        let a = Verifier::impostor("nobody", b"secret");
        assert_eq!(a.salt, Verifier::impostor("nobody", b"secret").salt);
        assert!(!a.matches_password(""));
        assert!(matches!(Exchange::start(verifier, b"p=tls-server-end-point,,n=,r=x"), Err(ScramError::Protocol(_))));
    }
}
