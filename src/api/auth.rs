//! JWT authentication for the REST API.
//!
//! mPanel calls the API with `Authorization: Bearer <JWT>`. The [`Verifier`] checks a token
//! against settings fixed at start-up (the algorithm allow-list never comes from the token) and
//! yields the authenticated [`Caller`]. The [`Minter`] issues tokens for the dev sandbox and
//! the benchmarks.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest bearer token accepted, in bytes; bounds the work an unauthenticated request causes.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the size of the hash output).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest clock-skew leeway accepted; more would keep expired tokens alive for too long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// A signing algorithm the API can be configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl JwtAlgorithm {
    /// The JOSE name, exactly as it appears in a token header (e.g. "RS256").
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    fn to_jwt(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl FromStr for JwtAlgorithm {
    type Err = AuthConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JwtAlgorithm::Hs256,
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
        ]
        .into_iter()
        .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| AuthConfigError::UnknownAlgorithm {
            // Bounded so a pasted secret or junk cannot flood the error output.
            given: s.chars().take(32).collect(),
        })
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the API verifies bearer tokens; filled in by the CLI.
#[derive(Clone)]
pub struct AuthSettings {
    /// The only algorithm tokens may be signed with.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret bytes; RS256/ES256: the PEM-encoded public key.
    pub key: Vec<u8>,
    /// Required `iss` claim, if any.
    pub issuer: Option<String>,
    /// Required `aud` member, if any.
    pub audience: Option<String>,
    /// Clock-skew allowance applied to `exp` and `nbf` (whole seconds; at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Why auth settings or a minting request were refused; never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// The algorithm name is not one of HS256, RS256, ES256.
    #[error("unsupported JWT algorithm {given:?}; allowed values are HS256, RS256, ES256")]
    UnknownAlgorithm {
        /// The rejected name (truncated).
        given: String,
    },
    /// The HS256 secret is too short to resist brute force.
    #[error("HS256 secret is {len} bytes; at least {min} bytes are required")]
    SecretTooShort {
        /// Length of the configured secret.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The HS256 secret is a PEM key, which would let anyone holding that key forge tokens.
    #[error("HS256 secret looks like a PEM key; use a random shared secret instead")]
    SecretLooksLikePem,
    /// A private key was configured where only the public key belongs.
    #[error("the {algorithm} verification key is a private key; configure the public key only")]
    PrivateKeyNotAllowed {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
    },
    /// The key does not parse as the kind the algorithm needs.
    #[error("the {algorithm} key is not a valid PEM-encoded {expected}")]
    InvalidKey {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// What kind of key was expected.
        expected: &'static str,
    },
    /// The RSA modulus is too small.
    #[error("the RSA key has {bits} bits; at least {min} are required")]
    RsaKeyTooSmall {
        /// Size of the configured modulus.
        bits: usize,
        /// Minimum size.
        min: usize,
    },
    /// The leeway exceeds [`MAX_LEEWAY`].
    #[error("a leeway of {given_secs}s exceeds the maximum of {max_secs}s")]
    LeewayTooLarge {
        /// The configured leeway in seconds.
        given_secs: u64,
        /// The maximum in seconds.
        max_secs: u64,
    },
    /// An issuer or audience was configured as an empty string.
    #[error("the configured {setting} must not be empty")]
    EmptySetting {
        /// "issuer" or "audience".
        setting: &'static str,
    },
    /// A claim handed to [`Minter::mint`] would not pass verification.
    #[error("cannot mint a token: `{claim}` is invalid")]
    InvalidMintClaims {
        /// Name of the offending claim.
        claim: &'static str,
    },
    /// The signing backend failed.
    #[error("signing the token failed")]
    Signing,
    /// The system clock is unusable for timestamps.
    #[error("the system clock is before the Unix epoch")]
    Clock,
}

/// Why a request was not authenticated; `Display` is safe to return to clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The header or token is not a well-formed bearer JWT.
    #[error("malformed bearer token")]
    Malformed,
    /// The token header names an algorithm other than the configured one.
    #[error("token signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A claim is missing or has an invalid value.
    #[error("token claim `{claim}` is missing or invalid")]
    InvalidClaims {
        /// Name of the offending claim (never its value).
        claim: &'static str,
    },
}

impl AuthError {
    /// A short snake_case reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InvalidClaims { .. } => "invalid_claims",
        }
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Full access across the tenant.
    Admin,
    /// Ordinary user.
    User,
}

impl Role {
    /// Whether this is the admin role.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }

    /// The claim value ("admin" or "user").
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    fn from_claim(value: &str) -> Option<Role> {
        match value {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The `sub` claim.
    pub user_id: String,
    /// The `tenant_id` claim (a lowercase DNS label).
    pub tenant_id: String,
    /// The `role` claim.
    pub role: Role,
}

/// Verifies bearer tokens against fixed [`AuthSettings`].
#[derive(Clone)]
pub struct Verifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.validation.aud)
            .field("leeway_secs", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Checks the settings and parses the key once, so bad config fails at start-up.
    pub fn new(settings: AuthSettings) -> Result<Verifier, AuthConfigError> {
        let AuthSettings {
            algorithm,
            key,
            issuer,
            audience,
            leeway,
        } = settings;
        if leeway > MAX_LEEWAY {
            return Err(AuthConfigError::LeewayTooLarge {
                given_secs: leeway.as_secs(),
                max_secs: MAX_LEEWAY.as_secs(),
            });
        }
        if issuer.as_deref() == Some("") {
            return Err(AuthConfigError::EmptySetting { setting: "issuer" });
        }
        if audience.as_deref() == Some("") {
            return Err(AuthConfigError::EmptySetting {
                setting: "audience",
            });
        }

        let decoding_key = match algorithm {
            JwtAlgorithm::Hs256 => {
                check_hs_secret(&key)?;
                DecodingKey::from_secret(&key)
            }
            JwtAlgorithm::Rs256 => {
                reject_private_pem(&key, algorithm)?;
                let invalid = AuthConfigError::InvalidKey {
                    algorithm,
                    expected: "RSA public key",
                };
                let decoding = DecodingKey::from_rsa_pem(&key).map_err(|_| invalid.clone())?;
                // The crate parses RSA keys lazily; converting to a JWK parses it now.
                let jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::RS256))
                    .map_err(|_| invalid.clone())?;
                check_rsa_size(&jwk, invalid)?;
                decoding
            }
            JwtAlgorithm::Es256 => {
                reject_private_pem(&key, algorithm)?;
                let invalid = AuthConfigError::InvalidKey {
                    algorithm,
                    expected: "EC P-256 public key",
                };
                let decoding = DecodingKey::from_ec_pem(&key).map_err(|_| invalid.clone())?;
                // A probe makes the backend parse the point as P-256: other curves and
                // off-curve points error here, a merely wrong signature returns Ok(false).
                jsonwebtoken::crypto::verify("", b"probe", &decoding, Algorithm::ES256)
                    .map_err(|_| invalid)?;
                decoding
            }
        };

        let mut validation = Validation::new(algorithm.to_jwt());
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        Ok(Verifier {
            algorithm,
            key: decoding_key,
            validation,
            issuer,
        })
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Authenticates the raw `Authorization` header value (`None` when absent).
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let header = authorization.ok_or(AuthError::MissingToken)?;
        let token = bearer_token(header)?;
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;
        // The crate accepts an array `iss` if any member matches; RFC 7519 says a single string.
        if self.issuer.is_some() && !matches!(claims.iss, Some(Value::String(_))) {
            return Err(AuthError::WrongIssuer);
        }
        caller_from_claims(claims)
    }

    /// Checks shape and header ourselves so the allow-list is enforced before any crypto and
    /// so "none" (which the crate cannot even parse) is reported as a disallowed algorithm.
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        let is_b64url_or_dot = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if !token.bytes().all(is_b64url_or_dot) {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if header.is_empty() || payload.is_empty() {
            return Err(AuthError::Malformed);
        }
        let json = b64url_decode(header).ok_or(AuthError::Malformed)?;
        let fields: serde_json::Map<String, Value> =
            serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        match fields.get("alg") {
            Some(Value::String(alg)) if alg == self.algorithm.as_str() => {}
            _ => return Err(AuthError::AlgorithmNotAllowed),
        }
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` must be refused.
        if fields.contains_key("crit") {
            return Err(AuthError::Malformed);
        }
        Ok(())
    }
}

/// Claims to put into a minted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintClaims {
    /// The user id (`sub`).
    pub sub: String,
    /// The tenant (`tenant_id`).
    pub tenant_id: String,
    /// The role (`role`).
    pub role: Role,
    /// Lifetime; `exp` = now + ttl (at least one second).
    pub ttl: Duration,
    /// `iss`, if any.
    pub issuer: Option<String>,
    /// `aud`, if any.
    pub audience: Option<String>,
}

/// Issues tokens for the dev sandbox and the benchmarks.
#[derive(Clone)]
pub struct Minter {
    algorithm: JwtAlgorithm,
    key: EncodingKey,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// Takes the HS256 secret, or the PEM private key for RS256/ES256.
    pub fn new(algorithm: JwtAlgorithm, key: &[u8]) -> Result<Minter, AuthConfigError> {
        let encoding_key = match algorithm {
            JwtAlgorithm::Hs256 => {
                check_hs_secret(key)?;
                EncodingKey::from_secret(key)
            }
            JwtAlgorithm::Rs256 => {
                let invalid = AuthConfigError::InvalidKey {
                    algorithm,
                    expected: "RSA private key",
                };
                let encoding = EncodingKey::from_rsa_pem(key).map_err(|_| invalid.clone())?;
                // Deriving the public JWK parses the private key now rather than at first use.
                let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
                    .map_err(|_| invalid.clone())?;
                check_rsa_size(&jwk, invalid)?;
                encoding
            }
            JwtAlgorithm::Es256 => {
                let invalid = AuthConfigError::InvalidKey {
                    algorithm,
                    expected: "EC P-256 private key",
                };
                let encoding = EncodingKey::from_ec_pem(key).map_err(|_| invalid.clone())?;
                Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|_| invalid)?;
                encoding
            }
        };
        Ok(Minter {
            algorithm,
            key: encoding_key,
        })
    }

    /// Signs a token with `iat` = `nbf` = now and `exp` = now + ttl.
    pub fn mint(&self, claims: &MintClaims) -> Result<String, AuthConfigError> {
        // Refuse what the verifier would refuse, so sandbox mistakes surface here.
        let invalid = |claim| AuthConfigError::InvalidMintClaims { claim };
        if !valid_user_id(&claims.sub) {
            return Err(invalid("sub"));
        }
        if !valid_tenant_id(&claims.tenant_id) {
            return Err(invalid("tenant_id"));
        }
        if claims.issuer.as_deref() == Some("") {
            return Err(invalid("iss"));
        }
        if claims.audience.as_deref() == Some("") {
            return Err(invalid("aud"));
        }
        let ttl = claims.ttl.as_secs();
        if ttl == 0 {
            return Err(invalid("ttl"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuthConfigError::Clock)?
            .as_secs();
        let exp = now.checked_add(ttl).ok_or(invalid("ttl"))?;
        let body = MintedClaims {
            sub: &claims.sub,
            tenant_id: &claims.tenant_id,
            role: claims.role.as_str(),
            iat: now,
            nbf: now,
            exp,
            iss: claims.issuer.as_deref(),
            aud: claims.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm.to_jwt()), &body, &self.key)
            .map_err(|_| AuthConfigError::Signing)
    }
}

/// Claims as received; loosely typed so a bad value becomes `InvalidClaims`, not a JSON error
/// that would pre-empt the expiry check.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<Value>,
    tenant_id: Option<Value>,
    role: Option<Value>,
    iss: Option<Value>,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    tenant_id: &'a str,
    role: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    // Further spaces (a second token, or padding) fail the charset check in `check_header`.
    Ok(token)
}

fn caller_from_claims(claims: RawClaims) -> Result<Caller, AuthError> {
    let invalid = |claim| AuthError::InvalidClaims { claim };
    let user_id = match claims.sub {
        Some(Value::String(s)) if valid_user_id(&s) => s,
        _ => return Err(invalid("sub")),
    };
    let tenant_id = match claims.tenant_id {
        Some(Value::String(s)) if valid_tenant_id(&s) => s,
        _ => return Err(invalid("tenant_id")),
    };
    let role = match &claims.role {
        Some(Value::String(s)) => Role::from_claim(s).ok_or(invalid("role"))?,
        _ => return Err(invalid("role")),
    };
    Ok(Caller {
        user_id,
        tenant_id,
        role,
    })
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        // Unreachable after `check_header`; kept so the allow-list fails closed.
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            AuthError::InvalidClaims {
                claim: spec_claim_name(c),
            }
        }
        other => {
            // Only a fixed label: the crate's messages can quote claim values.
            let label = match other {
                ErrorKind::InvalidToken => "shape",
                ErrorKind::Base64(_) => "base64",
                ErrorKind::Json(_) => "json",
                ErrorKind::Utf8(_) => "utf8",
                _ => "other",
            };
            tracing::debug!(kind = label, "JWT decoder rejected bearer token");
            AuthError::Malformed
        }
    }
}

fn spec_claim_name(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}

/// `[A-Za-z0-9._@:-]{1,128}`.
fn valid_user_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b':' | b'-'))
}

/// A lowercase DNS label, the tenant id grammar of the CRDs and the canonical tables.
fn valid_tenant_id(s: &str) -> bool {
    crate::proxmox::types::is_lower_dns_label(s)
}

fn check_hs_secret(secret: &[u8]) -> Result<(), AuthConfigError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(AuthConfigError::SecretTooShort {
            len: secret.len(),
            min: MIN_HS256_SECRET_BYTES,
        });
    }
    // A PEM "secret" is usually a public key: the HS/RS confusion attack by misconfiguration.
    if contains(secret, b"-----BEGIN") {
        return Err(AuthConfigError::SecretLooksLikePem);
    }
    Ok(())
}

fn reject_private_pem(pem: &[u8], algorithm: JwtAlgorithm) -> Result<(), AuthConfigError> {
    if contains(pem, b"PRIVATE KEY-----") {
        return Err(AuthConfigError::PrivateKeyNotAllowed { algorithm });
    }
    Ok(())
}

/// Parses the RSA modulus out of the JWK and enforces [`MIN_RSA_BITS`].
fn check_rsa_size(jwk: &Jwk, invalid: AuthConfigError) -> Result<(), AuthConfigError> {
    let AlgorithmParameters::RSA(params) = &jwk.algorithm else {
        return Err(invalid);
    };
    let n = b64url_decode(&params.n).ok_or(invalid.clone())?;
    let first = n.iter().position(|&b| b != 0).ok_or(invalid)?;
    let bits = (n.len() - first) * 8 - n[first].leading_zeros() as usize;
    if bits < MIN_RSA_BITS {
        return Err(AuthConfigError::RsaKeyTooSmall {
            bits,
            min: MIN_RSA_BITS,
        });
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Unpadded base64url (RFC 7515 §2), refusing non-canonical trailing bits.
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(input)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::process::Command;
    use std::sync::OnceLock;

    const SECRET: &[u8] = b"test-secret-0123456789-abcdefghijklmnop";
    const ISS: &str = "mpanel";
    const AUD: &str = "cloudpods-api";

    struct Keys {
        rsa_private: Vec<u8>,
        rsa_public: Vec<u8>,
        ec_private: Vec<u8>,
        ec_public: Vec<u8>,
        rsa1024_public: Vec<u8>,
        p384_public: Vec<u8>,
    }

    /// Generated once per test binary; RSA key generation is the slow part.
    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::TempDir::new().expect("tempdir");
            let openssl = |args: &[&str]| {
                let out = Command::new("openssl")
                    .args(args)
                    .output()
                    .expect("run openssl");
                assert!(out.status.success(), "openssl {args:?}: {out:?}");
            };
            let pair = |name: &str, alg: &str, opt: &str| {
                let private = dir.path().join(format!("{name}.key"));
                let public = dir.path().join(format!("{name}.pub"));
                let (private, public) = (private.to_str().unwrap(), public.to_str().unwrap());
                openssl(&[
                    "genpkey",
                    "-algorithm",
                    alg,
                    "-pkeyopt",
                    opt,
                    "-out",
                    private,
                ]);
                openssl(&["pkey", "-in", private, "-pubout", "-out", public]);
                (
                    std::fs::read(private).unwrap(),
                    std::fs::read(public).unwrap(),
                )
            };
            let (rsa_private, rsa_public) = pair("rsa", "RSA", "rsa_keygen_bits:2048");
            let (ec_private, ec_public) = pair("ec", "EC", "ec_paramgen_curve:P-256");
            let (_, rsa1024_public) = pair("rsa1024", "RSA", "rsa_keygen_bits:1024");
            let (_, p384_public) = pair("p384", "EC", "ec_paramgen_curve:P-384");
            Keys {
                rsa_private,
                rsa_public,
                ec_private,
                ec_public,
                rsa1024_public,
                p384_public,
            }
        })
    }

    /// Unpadded base64url, for hand-crafted hostile tokens.
    fn b64(data: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            let n = n << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn settings(algorithm: JwtAlgorithm, key: &[u8]) -> AuthSettings {
        let (issuer, audience) = (Some(ISS.into()), Some(AUD.into()));
        AuthSettings {
            algorithm,
            key: key.to_vec(),
            issuer,
            audience,
            leeway: Duration::ZERO,
        }
    }

    fn verifier(algorithm: JwtAlgorithm, key: &[u8]) -> Verifier {
        Verifier::new(settings(algorithm, key)).expect("verifier")
    }

    fn hs_verifier() -> Verifier {
        verifier(JwtAlgorithm::Hs256, SECRET)
    }

    fn claims() -> Value {
        let now = now();
        json!({"sub": "user-42@example.com", "tenant_id": "acme", "role": "admin",
               "iss": ISS, "aud": AUD, "iat": now, "nbf": now, "exp": now + 300})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().expect("object").remove(key);
        claims
    }

    fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
        let key = EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("encode")
    }

    fn hs(claims: &Value) -> String {
        sign(Algorithm::HS256, claims, SECRET)
    }

    fn unsigned(header: &Value, claims: &Value) -> String {
        let (h, c) = (header.to_string(), claims.to_string());
        format!("{}.{}.", b64(h.as_bytes()), b64(c.as_bytes()))
    }

    fn check(verifier: &Verifier, token: &str) -> Result<Caller, AuthError> {
        verifier.verify(Some(&format!("Bearer {token}")))
    }

    fn err(verifier: &Verifier, token: &str) -> AuthError {
        check(verifier, token).expect_err("token must be rejected")
    }

    /// Signs `claims` with the right HS256 secret and returns the verifier's error.
    fn hs_err(claims: Value) -> AuthError {
        err(&hs_verifier(), &hs(&claims))
    }

    fn mint_claims() -> MintClaims {
        MintClaims {
            sub: "alice".into(),
            tenant_id: "t-1".into(),
            role: Role::User,
            ttl: Duration::from_secs(60),
            issuer: Some(ISS.into()),
            audience: Some(AUD.into()),
        }
    }

    fn mint(algorithm: JwtAlgorithm, key: &[u8]) -> String {
        Minter::new(algorithm, key)
            .unwrap()
            .mint(&mint_claims())
            .unwrap()
    }

    #[test]
    fn valid_hs256() {
        let caller = check(&hs_verifier(), &hs(&claims())).expect("valid");
        assert_eq!(
            (caller.user_id.as_str(), caller.tenant_id.as_str()),
            ("user-42@example.com", "acme")
        );
        assert!(caller.role.is_admin());
        let token = mint(JwtAlgorithm::Hs256, SECRET);
        let caller = hs_verifier()
            .verify(Some(&format!("bEaReR {token}")))
            .expect("valid");
        assert_eq!((caller.role, caller.role.as_str()), (Role::User, "user"));
    }

    #[test]
    fn valid_rs256_and_es256() {
        let k = keys();
        for (alg, private, public) in [
            (JwtAlgorithm::Rs256, &k.rsa_private, &k.rsa_public),
            (JwtAlgorithm::Es256, &k.ec_private, &k.ec_public),
        ] {
            let token = mint(alg, private);
            let v = verifier(alg, public);
            assert_eq!(v.algorithm(), alg);
            let want = Caller {
                user_id: "alice".into(),
                tenant_id: "t-1".into(),
                role: Role::User,
            };
            assert_eq!(check(&v, &token), Ok(want));
            // Swapping in another payload must break the signature.
            let (head, rest) = token.split_once('.').unwrap();
            let (_, sig) = rest.split_once('.').unwrap();
            let payload = b64(claims().to_string().as_bytes());
            assert_eq!(
                err(&v, &format!("{head}.{payload}.{sig}")),
                AuthError::BadSignature
            );
        }
    }

    #[test]
    fn verifier_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<Minter>();
    }

    #[test]
    fn header_shape() {
        let v = hs_verifier();
        let t = hs(&claims());
        assert_eq!(v.verify(None), Err(AuthError::MissingToken));
        let bad = [
            "",
            "Bearer",
            "Bearer ",
            "Bearer  x.y.z",
            "Basic dXNlcjpwdw==",
        ];
        for header in bad.map(String::from).into_iter().chain([
            format!("Token {t}"),
            format!("Bearer  {t}"),
            format!("Bearer {t} extra"),
            format!("Bearer {t} "),
            format!("Bearer\t{t}"),
            format!("Bearer {t},{t}"),
        ]) {
            assert_eq!(
                v.verify(Some(&header)),
                Err(AuthError::Malformed),
                "{header:?}"
            );
        }
        assert!(v.verify(Some(&format!("BEARER {t}"))).is_ok());
    }

    #[test]
    fn oversized_token() {
        assert_eq!(
            err(&hs_verifier(), &"a".repeat(MAX_TOKEN_BYTES + 1)),
            AuthError::Malformed
        );
        // Even a correctly signed token is refused once it is too large.
        assert_eq!(
            hs_err(with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES)))),
            AuthError::Malformed
        );
    }

    #[test]
    fn garbage() {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let (not_json, array) = (b64(b"not json"), b64(br#"["HS256"]"#));
        for token in [
            "abc".to_string(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.###.$$$".into(),
            "..".into(),
            "A.e30.sig".into(),
            format!("{header}..sig"),
            format!("{header}.e30=.sig"),
            format!("{not_json}.e30.sig"),
            format!("{array}.e30.sig"),
        ] {
            assert_eq!(err(&hs_verifier(), &token), AuthError::Malformed, "{token}");
        }
    }

    #[test]
    fn bad_signature() {
        let other = sign(Algorithm::HS256, &claims(), &[7u8; 40]);
        assert_eq!(err(&hs_verifier(), &other), AuthError::BadSignature);
        let token = hs(&claims());
        let (message, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            err(&hs_verifier(), &format!("{message}.")),
            AuthError::BadSignature
        );
    }

    #[test]
    fn alg_none_rejected() {
        let rs = verifier(JwtAlgorithm::Rs256, &keys().rsa_public);
        for alg in ["none", "None", "NONE", ""] {
            let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &claims());
            assert_eq!(
                err(&hs_verifier(), &token),
                AuthError::AlgorithmNotAllowed,
                "{alg}"
            );
            assert_eq!(err(&rs, &token), AuthError::AlgorithmNotAllowed, "{alg}");
        }
        for header in [
            json!({"typ": "JWT"}),
            json!({"alg": null}),
            json!({"alg": ["HS256"]}),
        ] {
            let token = unsigned(&header, &claims());
            assert_eq!(
                err(&hs_verifier(), &token),
                AuthError::AlgorithmNotAllowed,
                "{header}"
            );
        }
    }

    #[test]
    fn other_hmac_alg_rejected() {
        let token = sign(Algorithm::HS512, &claims(), SECRET);
        assert_eq!(err(&hs_verifier(), &token), AuthError::AlgorithmNotAllowed);
        let lower = unsigned(&json!({"alg": "hs256"}), &claims());
        assert_eq!(err(&hs_verifier(), &lower), AuthError::AlgorithmNotAllowed);
    }

    #[test]
    fn hs_rs_confusion_rejected() {
        let k = keys();
        let forged = sign(Algorithm::HS256, &claims(), &k.rsa_public);
        let rs = verifier(JwtAlgorithm::Rs256, &k.rsa_public);
        assert_eq!(err(&rs, &forged), AuthError::AlgorithmNotAllowed);
        // Nor can an operator set it up by pasting the public key as the HS256 secret.
        let config = Verifier::new(settings(JwtAlgorithm::Hs256, &k.rsa_public));
        assert_eq!(config.unwrap_err(), AuthConfigError::SecretLooksLikePem);
    }

    #[test]
    fn cross_asymmetric_algorithms_rejected() {
        let k = keys();
        let rs_token = mint(JwtAlgorithm::Rs256, &k.rsa_private);
        let es_token = mint(JwtAlgorithm::Es256, &k.ec_private);
        let rs = verifier(JwtAlgorithm::Rs256, &k.rsa_public);
        let es = verifier(JwtAlgorithm::Es256, &k.ec_public);
        assert_eq!(err(&es, &rs_token), AuthError::AlgorithmNotAllowed);
        assert_eq!(err(&rs, &es_token), AuthError::AlgorithmNotAllowed);
        assert_eq!(
            err(&hs_verifier(), &rs_token),
            AuthError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn crit_header_rejected() {
        let token = unsigned(&json!({"alg": "HS256", "crit": ["exp"]}), &claims());
        assert_eq!(
            err(&hs_verifier(), &format!("{token}c2ln")),
            AuthError::Malformed
        );
    }

    #[test]
    fn time_claims() {
        let n = now();
        assert_eq!(
            hs_err(with(claims(), "exp", json!(n - 120))),
            AuthError::Expired
        );
        assert_eq!(
            hs_err(with(claims(), "nbf", json!(n + 120))),
            AuthError::NotYetValid
        );
        let exp = AuthError::InvalidClaims { claim: "exp" };
        assert_eq!(hs_err(without(claims(), "exp")), exp);
        assert_eq!(hs_err(with(claims(), "exp", json!("soon"))), exp);
        assert_eq!(hs_err(with(claims(), "exp", json!(-5))), exp);

        let mut lenient = settings(JwtAlgorithm::Hs256, SECRET);
        lenient.leeway = Duration::from_secs(60);
        let lenient = Verifier::new(lenient).unwrap();
        assert!(check(&lenient, &hs(&with(claims(), "exp", json!(n - 30)))).is_ok());
        assert!(check(&lenient, &hs(&with(claims(), "nbf", json!(n + 30)))).is_ok());
        assert_eq!(
            err(&lenient, &hs(&with(claims(), "exp", json!(n - 120)))),
            AuthError::Expired
        );
    }

    #[test]
    fn issuer_and_audience() {
        assert_eq!(
            hs_err(with(claims(), "iss", json!("evil"))),
            AuthError::WrongIssuer
        );
        assert_eq!(
            hs_err(with(claims(), "iss", json!([ISS, "evil"]))),
            AuthError::WrongIssuer
        );
        assert_eq!(
            hs_err(without(claims(), "iss")),
            AuthError::InvalidClaims { claim: "iss" }
        );
        assert_eq!(
            hs_err(with(claims(), "aud", json!("other"))),
            AuthError::WrongAudience
        );
        assert_eq!(
            hs_err(without(claims(), "aud")),
            AuthError::InvalidClaims { claim: "aud" }
        );
        assert!(
            check(
                &hs_verifier(),
                &hs(&with(claims(), "aud", json!(["x", AUD])))
            )
            .is_ok()
        );

        // Unconfigured: any iss passes, but a token addressed to some audience is not for us.
        let mut open = settings(JwtAlgorithm::Hs256, SECRET);
        (open.issuer, open.audience) = (None, None);
        let open = Verifier::new(open).unwrap();
        assert!(
            check(
                &open,
                &hs(&without(with(claims(), "iss", json!("x")), "aud"))
            )
            .is_ok()
        );
        assert_eq!(err(&open, &hs(&claims())), AuthError::WrongAudience);
    }

    #[test]
    fn identity_claims() {
        let bad = |claim: &'static str, value: Option<Value>| {
            let c = match value {
                Some(value) => with(claims(), claim, value),
                None => without(claims(), claim),
            };
            assert_eq!(hs_err(c.clone()), AuthError::InvalidClaims { claim }, "{c}");
        };
        let non_strings = [None, Some(json!(null)), Some(json!(7)), Some(json!(true))];
        for claim in ["sub", "tenant_id", "role"] {
            non_strings.iter().for_each(|v| bad(claim, v.clone()));
        }
        bad("tenant_id", Some(json!(["acme"])));
        bad("role", Some(json!({"admin": true})));
        // The crate itself parses `sub`, and a structured value derails its parser.
        let structured = hs_err(with(claims(), "sub", json!(["x"])));
        assert_eq!(structured, AuthError::Malformed);
        let long_sub = "a".repeat(129);
        for s in ["", "a b", "x;rm -rf", "ü", "a/b", "a\nb", &long_sub] {
            bad("sub", Some(json!(s)));
        }
        let long_tenant = "a".repeat(64);
        for s in [
            "",
            "Acme",
            "acme;drop",
            "-acme",
            "acme-",
            "a.b",
            "../x",
            "a_b",
            &long_tenant,
        ] {
            bad("tenant_id", Some(json!(s)));
        }
        for s in ["root", "Admin", "USER", "", " admin"] {
            bad("role", Some(json!(s)));
        }
        let sub = "A.b_c@d:e-".repeat(12) + "12345678";
        let edge = with(
            with(claims(), "sub", json!(sub)),
            "tenant_id",
            json!("0".repeat(63)),
        );
        assert_eq!(sub.len(), 128);
        assert!(check(&hs_verifier(), &hs(&edge)).is_ok());
    }

    #[test]
    fn config_errors() {
        let k = keys();
        let short = Verifier::new(settings(JwtAlgorithm::Hs256, &SECRET[..31]));
        assert_eq!(
            short.unwrap_err(),
            AuthConfigError::SecretTooShort { len: 31, min: 32 }
        );
        let short = Minter::new(JwtAlgorithm::Hs256, b"short");
        assert_eq!(
            short.unwrap_err(),
            AuthConfigError::SecretTooShort { len: 5, min: 32 }
        );

        let (rs, es) = (JwtAlgorithm::Rs256, JwtAlgorithm::Es256);
        let invalid = |algorithm, expected| AuthConfigError::InvalidKey {
            algorithm,
            expected,
        };
        let (rsa_pub, ec_pub) = (
            invalid(rs, "RSA public key"),
            invalid(es, "EC P-256 public key"),
        );
        let garbage = b"-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n";
        let too_small = AuthConfigError::RsaKeyTooSmall {
            bits: 1024,
            min: 2048,
        };
        for (alg, key, want) in [
            (rs, &garbage[..], rsa_pub.clone()),
            (es, &garbage[..], ec_pub.clone()),
            (rs, b"not a pem at all", rsa_pub.clone()),
            (rs, &k.ec_public, rsa_pub),
            (es, &k.rsa_public, ec_pub.clone()),
            (es, &k.p384_public, ec_pub),
            (
                rs,
                &k.rsa_private,
                AuthConfigError::PrivateKeyNotAllowed { algorithm: rs },
            ),
            (
                es,
                &k.ec_private,
                AuthConfigError::PrivateKeyNotAllowed { algorithm: es },
            ),
            (rs, &k.rsa1024_public, too_small),
        ] as [(_, &[u8], _); 9]
        {
            assert_eq!(
                Verifier::new(settings(alg, key)).unwrap_err(),
                want,
                "{alg}"
            );
        }
        let private_wanted = invalid(rs, "RSA private key");
        assert_eq!(Minter::new(rs, &k.rsa_public).unwrap_err(), private_wanted);
        let private_wanted = invalid(es, "EC P-256 private key");
        assert_eq!(Minter::new(es, &k.rsa_private).unwrap_err(), private_wanted);

        let mut s = settings(JwtAlgorithm::Hs256, SECRET);
        s.leeway = Duration::from_secs(601);
        let too_lenient = AuthConfigError::LeewayTooLarge {
            given_secs: 601,
            max_secs: 600,
        };
        assert_eq!(Verifier::new(s).unwrap_err(), too_lenient);
        let mut s = settings(JwtAlgorithm::Hs256, SECRET);
        s.audience = Some(String::new());
        let empty = AuthConfigError::EmptySetting {
            setting: "audience",
        };
        assert_eq!(Verifier::new(s).unwrap_err(), empty);
    }

    #[test]
    fn mint_refuses_bad_claims() {
        let m = Minter::new(JwtAlgorithm::Hs256, SECRET).unwrap();
        let bad = |edit: fn(&mut MintClaims), claim| {
            let mut c = mint_claims();
            edit(&mut c);
            assert_eq!(
                m.mint(&c),
                Err(AuthConfigError::InvalidMintClaims { claim })
            );
        };
        bad(|c| c.sub = "a b".into(), "sub");
        bad(|c| c.tenant_id = "Acme".into(), "tenant_id");
        bad(|c| c.ttl = Duration::from_millis(500), "ttl");
        bad(|c| c.audience = Some(String::new()), "aud");
    }

    #[test]
    fn algorithm_names() {
        use JwtAlgorithm::{Es256, Hs256, Rs256};
        for (s, alg) in [("hs256", Hs256), ("RS256", Rs256), ("Es256", Es256)] {
            assert_eq!(s.parse::<JwtAlgorithm>(), Ok(alg));
            assert_eq!(alg.to_string().parse::<JwtAlgorithm>(), Ok(alg));
        }
        for s in ["none", "HS512", "", "RS 256"] {
            let err = s.parse::<JwtAlgorithm>().unwrap_err();
            assert!(err.to_string().contains("HS256, RS256, ES256"), "{err}");
        }
    }

    #[test]
    fn reasons_are_distinct_snake_case() {
        use AuthError::*;
        let all = [
            MissingToken,
            Malformed,
            AlgorithmNotAllowed,
            BadSignature,
            Expired,
        ];
        let all = all
            .into_iter()
            .chain([NotYetValid, WrongIssuer, WrongAudience]);
        let all: Vec<_> = all.chain([InvalidClaims { claim: "sub" }]).collect();
        let reasons: std::collections::HashSet<_> = all.iter().map(AuthError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(
            reasons
                .iter()
                .all(|r| r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        assert_eq!(Expired.reason(), "expired");
    }

    #[test]
    fn nothing_secret_leaks() {
        let k = keys();
        let v = hs_verifier();
        let secret = std::str::from_utf8(SECRET).unwrap();
        let m = "tenant-secret-marker";
        let marked = |claim| with(claims(), claim, json!(m));
        let tokens = [
            hs(&with(claims(), "tenant_id", json!(format!("{m};x")))),
            hs(&with(marked("sub"), "exp", json!(now() - 999))),
            hs(&marked("iss")),
            hs(&marked("role")),
            hs(&marked("aud")),
            sign(Algorithm::HS256, &marked("sub"), &[1u8; 32]),
            unsigned(&json!({"alg": "none"}), &marked("sub")),
            format!("{}.e30.x", b64(m.as_bytes())),
        ];
        for token in &tokens {
            let e = err(&v, token);
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !text.contains(token.as_str()) && !text.contains(m),
                    "{text}"
                );
                assert!(!text.contains(secret), "{text}");
            }
        }
        let short = "short-secret-value";
        let e = Verifier::new(settings(JwtAlgorithm::Hs256, short.as_bytes())).unwrap_err();
        assert!(!e.to_string().contains(short) && !format!("{e:?}").contains(short));
        let pem = std::str::from_utf8(&k.rsa_private).unwrap();
        let body = pem.lines().nth(1).unwrap();
        for e in [
            Verifier::new(settings(JwtAlgorithm::Rs256, pem.as_bytes())).unwrap_err(),
            Minter::new(JwtAlgorithm::Es256, pem.as_bytes()).unwrap_err(),
        ] {
            assert!(!e.to_string().contains(body) && !format!("{e:?}").contains(body));
        }

        let debug = format!("{:?}", settings(JwtAlgorithm::Hs256, SECRET));
        assert!(
            debug.contains("<redacted>") && !debug.contains(secret),
            "{debug}"
        );
        assert!(!format!("{v:?}").contains(secret));
        let minter = Minter::new(JwtAlgorithm::Rs256, &k.rsa_private).unwrap();
        assert!(!format!("{minter:?}").contains(body));
    }
}
