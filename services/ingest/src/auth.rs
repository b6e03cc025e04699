//! Bike authentication: when `ALLEYCAT_AUTH_SECRET` is set, a bike sends a
//! JWT signed with HS256 whose subject (`sub`) is its racerId and which
//! expires (`exp`). `Authorization: Bearer <token>` on HTTP; on the
//! WebSocket that header or, since browsers cannot set headers there, a
//! `token` query parameter, checked before the upgrade.
//!
//! The setting holds one secret or several separated by commas: the first
//! signs (`alleycat token`), all verify, so a secret is rotated by putting
//! the new one first, and removing the old one once the tokens it signed
//! have expired.

use crate::AppState;
use crate::error::AppError;
use alleycat_core::RacerId;
use alleycat_core::telemetry::{MAX_SAFE_INTEGER, canonical_integer};
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shortest secret accepted: HS256 needs a key of at least its hash's 256
/// bits (RFC 7518 section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest a token may be valid, ten years (3650 days): `alleycat token`
/// issues none longer, and ingest refuses a token whose `exp` is further
/// ahead, such as one minted with milliseconds instead of seconds, which
/// would otherwise never expire.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// The `ALLEYCAT_AUTH_SECRET` setting, shared by ingest and `alleycat token`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Secret that signs bikes' tokens (HS256 JWTs, `alleycat token`); several,
    /// separated by commas, for rotation: the first signs, all verify. Each at
    /// least 32 bytes. Unset: ingest is open to any client.
    #[arg(long, env = "ALLEYCAT_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<SecretSetting>,
}

impl AuthArgs {
    /// The secrets, or `None` when none is set.
    ///
    /// # Errors
    ///
    /// When the setting holds an empty or too short secret (never shown).
    pub fn secrets(&self) -> anyhow::Result<Option<AuthSecrets>> {
        self.auth_secret
            .as_ref()
            .map(|setting| AuthSecrets::parse(&setting.0))
            .transpose()
    }
}

/// The setting's raw text. Parsed later, by [`AuthArgs::secrets`], so that
/// an invalid value is reported without clap printing it; its `Debug` hides
/// it.
#[derive(Clone)]
pub struct SecretSetting(String);

impl From<String> for SecretSetting {
    fn from(text: String) -> SecretSetting {
        SecretSetting(text)
    }
}

impl fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretSetting(<hidden>)")
    }
}

/// The keys: the first secret signs, every secret verifies.
#[derive(Clone)]
pub struct AuthSecrets(Arc<Keys>);

struct Keys {
    signing: EncodingKey,
    verifying: Vec<DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for AuthSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthSecrets({} secrets)", self.0.verifying.len())
    }
}

/// What a bike's token says: `sub`, the racerId as a string, and `exp`
/// (and `iat`), seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The racerId, as a string (a JWT's subject is a string).
    pub sub: String,
    /// When the token expires.
    pub exp: u64,
    /// When it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// A token that verified: whose it is and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The racer it is for.
    pub racer: RacerId,
    /// When it expires, seconds since the Unix epoch.
    pub expires: u64,
}

impl Verified {
    /// Whether it has expired at `now` (seconds since the epoch): a token is
    /// not accepted on or after its `exp` (RFC 7519 section 4.1.4).
    #[must_use]
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    /// When it expires, as a point on the monotonic clock (for timers): at
    /// most [`MAX_TOKEN_LIFETIME`] from now, whatever `expires` says.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        let left = Duration::from_secs(self.expires)
            .saturating_sub(since_epoch())
            .min(MAX_TOKEN_LIFETIME);
        let now = tokio::time::Instant::now();
        // `+` panics past the end of the clock, which would kill the
        // socket's task. No monotonic clock ends within ten years; if one
        // did, the token counts as expiring now (the bike reconnects).
        now.checked_add(left).unwrap_or(now)
    }
}

/// Why a request is not authenticated (401). The messages name what to fix
/// and never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error(
        "a bearer token is required: send Authorization: Bearer <token> (on the WebSocket, or a token query parameter)"
    )]
    Missing,
    /// An `Authorization` header of another scheme.
    #[error("the Authorization header must be \"Bearer <token>\"")]
    NotBearer,
    /// Not a JWT, or not one signed with HS256 (`alg` `none` included).
    #[error("the bearer token is not a well-formed JWT signed with HS256")]
    Malformed,
    /// Signed with another algorithm than HS256.
    #[error("the bearer token must be signed with HS256")]
    Algorithm,
    /// Signed with none of the secrets.
    #[error("the bearer token's signature does not verify")]
    Signature,
    /// A claim is missing, of the wrong type, or out of range (an `exp`
    /// more than [`MAX_TOKEN_LIFETIME`] ahead).
    #[error(
        "the bearer token's claims must hold sub (the racerId, a string) and exp (seconds since the epoch): {0}"
    )]
    Claims(&'static str),
    /// `exp` is further ahead than [`MAX_TOKEN_LIFETIME`] (a token minted
    /// in milliseconds would never expire).
    #[error(
        "the bearer token's claims must hold sub (the racerId, a string) and exp (seconds since the epoch): exp too far in the future, more than {} days ahead (milliseconds instead of seconds?)",
        MAX_TOKEN_LIFETIME.as_secs() / 86_400
    )]
    ExpTooFar,
    /// `exp` has passed.
    #[error("the bearer token has expired: get a new one")]
    Expired,
    /// `nbf` has not come yet.
    #[error("the bearer token is not valid yet (nbf)")]
    NotYet,
}

impl AuthSecrets {
    /// Parses the setting: secrets separated by commas, each trimmed.
    ///
    /// # Errors
    ///
    /// When a secret is empty or shorter than [`MIN_SECRET_BYTES`]; the
    /// message says which (by position), never what it is.
    pub fn parse(setting: &str) -> anyhow::Result<AuthSecrets> {
        let secrets: Vec<&str> = setting.split(',').map(str::trim).collect();
        let count = secrets.len();
        let mut verifying = Vec::with_capacity(count);
        for (i, secret) in secrets.iter().enumerate() {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "ALLEYCAT_AUTH_SECRET: secret {} of {count} has {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                i + 1,
                secret.len()
            );
            verifying.push(DecodingKey::from_secret(secret.as_bytes())?);
        }
        let signing = EncodingKey::from_secret(secrets[0].as_bytes())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is checked to the second, without grace: the issuer is
        // this system, and a bike whose token expires reconnects with a
        // new one.
        validation.leeway = 0;
        validation.validate_nbf = true;
        Ok(AuthSecrets(Arc::new(Keys {
            signing,
            verifying,
            validation,
        })))
    }

    /// How many secrets verify.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.verifying.len()
    }

    /// Always false: a setting holds at least one secret.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.verifying.is_empty()
    }

    /// Signs `claims` with the first secret.
    #[must_use]
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.0.signing)
            .expect("HS256 signs any claims")
    }

    /// A token for `racer`, valid for `ttl` from now. Ingest refuses a
    /// token valid for longer than [`MAX_TOKEN_LIFETIME`].
    #[must_use]
    pub fn issue(&self, racer: RacerId, ttl: Duration) -> String {
        let now = since_epoch().as_secs();
        self.sign(&Claims {
            sub: racer.to_string(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        })
    }

    /// Checks `token` against every secret, in order.
    ///
    /// # Errors
    ///
    /// When it is malformed, signed with another algorithm or with none of
    /// the secrets, lacks `sub` or `exp`, its subject is not a racerId, it
    /// has expired, or it expires more than [`MAX_TOKEN_LIFETIME`] from now.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let keys = &*self.0;
        for key in &keys.verifying {
            match jsonwebtoken::decode::<Incoming>(token, key, &keys.validation) {
                Ok(data) => return verified(&data.claims),
                // Signed with another secret, maybe the next one.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => return Err(refusal(e.kind(), token)),
            }
        }
        Err(AuthError::Signature)
    }
}

/// The claims as they are read: a missing `sub` or `exp` is left to the
/// validation, which names it.
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
}

fn verified(claims: &Incoming) -> Result<Verified, AuthError> {
    let racer = canonical_integer(&claims.sub, MAX_SAFE_INTEGER)
        .map_err(|_| AuthError::Claims("sub is not a racerId"))?;
    let verified = Verified {
        racer: RacerId(racer),
        expires: claims.exp,
    };
    let now = since_epoch().as_secs();
    if verified.expired(now) {
        return Err(AuthError::Expired);
    }
    if claims.exp > now.saturating_add(MAX_TOKEN_LIFETIME.as_secs()) {
        return Err(AuthError::ExpTooFar);
    }
    Ok(verified)
}

fn refusal(kind: &ErrorKind, token: &str) -> AuthError {
    match kind {
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYet,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::Claims("no exp"),
        ErrorKind::MissingRequiredClaim(_) => AuthError::Claims("no sub"),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Claims("a claim has the wrong type"),
        // The claims are JSON, but not of the expected types (the header's
        // `alg` being one this crate does not know, `none`, is malformed).
        ErrorKind::Json(e) if e.is_data() && jsonwebtoken::decode_header(token).is_ok() => {
            AuthError::Claims("a claim has the wrong type")
        }
        _ => AuthError::Malformed,
    }
}

/// Now, since the Unix epoch.
pub(crate) fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Who sent a request: anyone, when no secret is set, or the racer its
/// token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer {
    /// No secret is set: ingest is open.
    Open,
    /// A verified token.
    Racer(Verified),
}

/// The bearer of an HTTP request, from its `Authorization` header; checked
/// before the body is read, so an unauthenticated client's body is never
/// parsed.
pub(crate) struct HttpBearer(pub(crate) Bearer);

impl FromRequestParts<AppState> for HttpBearer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(secrets) = state.gate.secrets() else {
            return Ok(HttpBearer(Bearer::Open));
        };
        let token = header_token(&parts.headers)?.ok_or(AuthError::Missing)?;
        Ok(HttpBearer(Bearer::Racer(secrets.verify(token)?)))
    }
}

/// The bearer of a WebSocket upgrade: the `Authorization` header, else the
/// `token` query parameter.
pub(crate) struct WsBearer(pub(crate) Bearer);

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<AppState> for WsBearer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(secrets) = state.gate.secrets() else {
            return Ok(WsBearer(Bearer::Open));
        };
        if let Some(token) = header_token(&parts.headers)? {
            return Ok(WsBearer(Bearer::Racer(secrets.verify(token)?)));
        }
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri)
            .map_err(|_| AuthError::Malformed)?
            .0;
        let token = query.token.ok_or(AuthError::Missing)?;
        Ok(WsBearer(Bearer::Racer(secrets.verify(&token)?)))
    }
}

/// The token of an `Authorization: Bearer <token>` header, `None` without
/// the header.
fn header_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    // Schemes are case-insensitive (RFC 9110 section 11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    match token.trim() {
        "" => Err(AuthError::Missing),
        token => Ok(Some(token)),
    }
}

/// Parses a token lifetime: a whole number with a unit, `s`, `m`, `h` or
/// `d` (`90s`, `15m`, `1h`, `7d`); at least a second, at most
/// [`MAX_TOKEN_LIFETIME`] (3650 days).
///
/// # Errors
///
/// When it is not of that form.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let usage =
        || format!("{text:?} is not a lifetime: a whole number and a unit s, m, h or d, e.g. 1h");
    let split = text.len().checked_sub(1).ok_or_else(usage)?;
    let (number, unit) = text.split_at_checked(split).ok_or_else(usage)?;
    let seconds_per: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(usage()),
    };
    let number: u64 = number.parse().map_err(|_| usage())?;
    let seconds = number.checked_mul(seconds_per).ok_or_else(usage)?;
    if seconds == 0 || seconds > MAX_TOKEN_LIFETIME.as_secs() {
        return Err(format!(
            "{text:?}: a lifetime is from 1s to {}d",
            MAX_TOKEN_LIFETIME.as_secs() / 86_400
        ));
    }
    Ok(Duration::from_secs(seconds))
}

/// `alleycat token`: prints a bike's token.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The racerId the token is for (its subject).
    #[arg(long)]
    pub racer: u64,
    /// How long the token is valid: a number with a unit s, m, h or d; at
    /// most 3650d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The secret(s) ingest verifies with: the first signs.
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl TokenArgs {
    /// Signs the token; what it is for goes to stderr, the token alone on
    /// the last line of stdout (`TOKEN=$(alleycat token --racer 101)`).
    ///
    /// # Errors
    ///
    /// Without a secret, with an invalid one, a racerId out of range, or a
    /// lifetime longer than [`MAX_TOKEN_LIFETIME`], whose token ingest would
    /// refuse.
    pub fn run(&self) -> anyhow::Result<()> {
        let secrets = self.auth.secrets()?.ok_or_else(|| {
            anyhow::anyhow!(
                "no secret to sign with: set ALLEYCAT_AUTH_SECRET (or --auth-secret) to the secret ingest verifies tokens with"
            )
        })?;
        anyhow::ensure!(
            self.racer <= MAX_SAFE_INTEGER,
            "--racer must be a racerId from 0 to {MAX_SAFE_INTEGER}"
        );
        anyhow::ensure!(
            self.ttl.as_secs() >= 1 && self.ttl <= MAX_TOKEN_LIFETIME,
            "--ttl must be from 1s to {}d: ingest refuses a token valid for longer",
            MAX_TOKEN_LIFETIME.as_secs() / 86_400
        );
        let token = secrets.issue(RacerId(self.racer), self.ttl);
        let expires = since_epoch().as_secs() + self.ttl.as_secs();
        eprintln!(
            "token for racer {}, valid for {} s (exp {expires}):",
            self.racer,
            self.ttl.as_secs()
        );
        println!("{token}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &str = "a secret of at least thirty-two bytes";
    const OLD: &str = "the previous secret still verifying";

    fn secrets(setting: &str) -> AuthSecrets {
        AuthSecrets::parse(setting).unwrap()
    }

    fn now() -> u64 {
        since_epoch().as_secs()
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp,
            iat: None,
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn a_token_it_issued_verifies_as_its_racer() {
        let keys = secrets(SECRET);
        let token = keys.issue(RacerId(101), Duration::from_secs(3600));
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified.racer, RacerId(101));
        assert!((now() + 3599..=now() + 3600).contains(&verified.expires));
    }

    #[test]
    fn the_first_secret_signs_and_every_secret_verifies() {
        let rotated = secrets(&format!("{SECRET}, {OLD}"));
        let before = secrets(OLD).issue(RacerId(7), Duration::from_secs(60));
        assert_eq!(rotated.verify(&before).unwrap().racer, RacerId(7));
        let after = rotated.issue(RacerId(7), Duration::from_secs(60));
        assert!(
            secrets(SECRET).verify(&after).is_ok(),
            "signed with the first"
        );
        assert_eq!(secrets(OLD).verify(&after), Err(AuthError::Signature));
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let keys = secrets(SECRET);
        let good = keys.sign(&claims("101", now() + 60));
        let (header, rest) = good.split_once('.').unwrap();
        let (payload, _signature) = rest.split_once('.').unwrap();
        let unsigned = |alg: &str| {
            format!(
                "{}.{payload}.",
                b64(&serde_json::json!({"alg": alg, "typ": "JWT"}))
            )
        };
        let with_payload = |payload: serde_json::Value| {
            let claims = b64(&payload);
            // Signed properly: only the claims are wrong.
            let message = format!("{header}.{claims}");
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{message}.{signature}")
        };
        let other = secrets("another secret of at least thirty-two bytes");
        for (token, refusal) in [
            ("".to_owned(), AuthError::Malformed),
            ("not a jwt".to_owned(), AuthError::Malformed),
            ("a.b.c".to_owned(), AuthError::Malformed),
            (unsigned("none"), AuthError::Malformed),
            (unsigned("HS512"), AuthError::Algorithm),
            (unsigned("RS256"), AuthError::Algorithm),
            (format!("{header}.{payload}."), AuthError::Signature),
            (format!("{header}.{payload}.AAAA"), AuthError::Signature),
            (other.sign(&claims("101", now() + 60)), AuthError::Signature),
            (keys.sign(&claims("101", now() - 1)), AuthError::Expired),
            (keys.sign(&claims("101", now())), AuthError::Expired),
            (
                with_payload(serde_json::json!({"sub": "101"})),
                AuthError::Claims("no exp"),
            ),
            (
                with_payload(serde_json::json!({"exp": now() + 60})),
                AuthError::Claims("no sub"),
            ),
            (
                with_payload(serde_json::json!({"sub": "101", "exp": "never"})),
                AuthError::Claims("a claim has the wrong type"),
            ),
            (
                with_payload(serde_json::json!({"sub": 101, "exp": now() + 60})),
                AuthError::Claims("a claim has the wrong type"),
            ),
            (
                with_payload(
                    serde_json::json!({"sub": "101", "exp": now() + 60, "nbf": now() + 30}),
                ),
                AuthError::NotYet,
            ),
            (
                // Milliseconds instead of seconds: it would never expire.
                keys.sign(&claims("101", now() * 1000)),
                AuthError::ExpTooFar,
            ),
            (keys.sign(&claims("101", u64::MAX)), AuthError::ExpTooFar),
            (
                keys.sign(&claims("101", now() + MAX_TOKEN_LIFETIME.as_secs() + 60)),
                AuthError::ExpTooFar,
            ),
            (
                keys.sign(&claims("Hubert", now() + 60)),
                AuthError::Claims("sub is not a racerId"),
            ),
            (
                keys.sign(&claims("0101", now() + 60)),
                AuthError::Claims("sub is not a racerId"),
            ),
            (
                keys.sign(&claims(&(MAX_SAFE_INTEGER + 1).to_string(), now() + 60)),
                AuthError::Claims("sub is not a racerId"),
            ),
        ] {
            assert_eq!(keys.verify(&token), Err(refusal), "{token}");
        }
        assert!(keys.verify(&good).is_ok());
    }

    #[test]
    fn a_token_may_be_valid_for_ten_years_and_no_longer() {
        assert_eq!(MAX_TOKEN_LIFETIME, Duration::from_secs(3650 * 86_400));
        let keys = secrets(SECRET);
        let longest = keys.issue(RacerId(101), MAX_TOKEN_LIFETIME);
        assert!(
            keys.verify(&longest).is_ok(),
            "the longest lifetime verifies"
        );
        let error = keys
            .verify(&keys.issue(RacerId(101), MAX_TOKEN_LIFETIME + Duration::from_secs(60)))
            .unwrap_err();
        assert_eq!(error, AuthError::ExpTooFar);
        assert!(
            error.to_string().contains("more than 3650 days ahead"),
            "{error}"
        );
        assert!(
            error.to_string().contains("seconds since the epoch"),
            "{error}"
        );
        // `alleycat token` issues none longer.
        let args = |ttl| TokenArgs {
            racer: 101,
            ttl,
            auth: AuthArgs {
                auth_secret: Some(SecretSetting::from(SECRET.to_owned())),
            },
        };
        let error = args(MAX_TOKEN_LIFETIME + Duration::from_secs(1))
            .run()
            .unwrap_err();
        assert!(error.to_string().contains("--ttl"), "{error}");
        assert!(args(Duration::ZERO).run().is_err());
    }

    /// A socket's timer is set from `exp`: a far one must not overflow the
    /// clock (which panics, killing the socket's task).
    #[test]
    fn a_far_expiry_is_a_deadline_not_a_panic() {
        let start = tokio::time::Instant::now();
        for expires in [u64::MAX, now() * 1000] {
            let deadline = Verified {
                racer: RacerId(1),
                expires,
            }
            .deadline();
            assert!(deadline >= start + MAX_TOKEN_LIFETIME - Duration::from_secs(5));
            assert!(deadline <= tokio::time::Instant::now() + MAX_TOKEN_LIFETIME);
        }
        let soon = Verified {
            racer: RacerId(1),
            expires: now() + 60,
        }
        .deadline();
        assert!(soon <= tokio::time::Instant::now() + Duration::from_secs(60));
    }

    #[test]
    fn secrets_must_be_long_enough_and_are_never_shown() {
        let short = "short-secret";
        for setting in [
            "",
            short,
            &format!("{SECRET},"),
            &format!("{SECRET},{short}"),
        ] {
            let error = AuthSecrets::parse(setting).unwrap_err().to_string();
            assert!(error.contains("HS256 needs at least 32"), "{error}");
            assert!(!error.contains(short), "{error}");
        }
        let args = AuthArgs {
            auth_secret: Some(SecretSetting::from(SECRET.to_owned())),
        };
        assert!(!format!("{args:?}").contains(SECRET));
        assert!(!format!("{:?}", args.secrets().unwrap()).contains(SECRET));
    }

    #[test]
    fn the_authorization_header_must_be_a_bearer() {
        let headers = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert_eq!(header_token(&HeaderMap::new()), Ok(None));
        assert_eq!(header_token(&headers("Bearer abc")), Ok(Some("abc")));
        assert_eq!(header_token(&headers("bearer  abc ")), Ok(Some("abc")));
        assert_eq!(
            header_token(&headers("Basic abc")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(header_token(&headers("Bearer")), Err(AuthError::NotBearer));
        assert_eq!(header_token(&headers("Bearer ")), Err(AuthError::Missing));
    }

    #[test]
    fn lifetimes_take_a_unit() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("3650d"), Ok(MAX_TOKEN_LIFETIME));
        assert_eq!(parse_ttl("87600h"), Ok(MAX_TOKEN_LIFETIME));
        for bad in [
            "",
            "h",
            "1",
            "1w",
            "-1h",
            "0s",
            "1.5h",
            "3651d",
            "87601h",
            "315360001s",
            "99999999999999999999d",
            "1é",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
