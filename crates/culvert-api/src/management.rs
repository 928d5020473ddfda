//! Management tokens (spec §10.4): ES256 JWTs that authorise `cloudflared
//! tail`-style access to one tunnel's connectors.
//!
//! The P-256 key is generated on first start and kept in the store, so every
//! server sharing the database signs and verifies with the same key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use culvert_store::{Store, StoreError};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const KEY_SETTING: &str = "management_jwt_es256_pkcs8";
/// Lifetime of issued tokens, as in the one known sample.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
pub const ISSUER: &str = "tunnelstore";
const KEY_ID: &str = "1";

/// Resources a management token can grant.
pub const RESOURCES: &[&str] = &["logs", "admin", "host_details"];

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("management signing key unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("stored management key is invalid: {0}")]
    BadKey(String),
    #[error("signing failed")]
    Sign,
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("wrong issuer")]
    WrongIssuer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelClaim {
    pub id: String,
    pub account_tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorClaim {
    pub id: String,
    pub support: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub tun: TunnelClaim,
    pub actor: ActorClaim,
    pub res: Vec<String>,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// Signs and verifies management tokens.
pub struct ManagementKeys {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl ManagementKeys {
    /// Loads the key from the store, creating it on first start.
    pub async fn load_or_create(store: &Store) -> Result<Self, ManagementError> {
        let rng = SystemRandom::new();
        let stored = match store.get_setting(KEY_SETTING).await? {
            Some(v) => v,
            None => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| ManagementError::Sign)?;
                // Another server may have raced us; use whichever key won.
                store
                    .put_setting_if_absent(KEY_SETTING, &STANDARD.encode(pkcs8.as_ref()))
                    .await?
            }
        };
        let der = STANDARD
            .decode(stored.trim())
            .map_err(|e| ManagementError::BadKey(e.to_string()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| ManagementError::BadKey(e.to_string()))?;
        Ok(ManagementKeys { pair, rng })
    }

    /// The uncompressed public point (for verifiers elsewhere).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn issue(
        &self,
        tunnel_id: Uuid,
        account_tag: &str,
        actor: &str,
        resources: Vec<String>,
        now_secs: i64,
    ) -> Result<String, ManagementError> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": KEY_ID});
        let claims = Claims {
            tun: TunnelClaim {
                id: tunnel_id.to_string(),
                account_tag: account_tag.to_string(),
            },
            actor: ActorClaim {
                id: actor.to_string(),
                support: false,
            },
            res: resources,
            iss: ISSUER.to_string(),
            iat: now_secs,
            exp: now_secs + TOKEN_LIFETIME_SECS,
        };
        let claims = serde_json::to_vec(&claims).map_err(|_| ManagementError::Sign)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| ManagementError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Checks signature (ES256 only), issuer and expiry; returns the claims.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, ManagementError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ManagementError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(ManagementError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(ManagementError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| ManagementError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.public_key())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| ManagementError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(ManagementError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(ManagementError::WrongIssuer);
        }
        if claims.exp <= now_secs {
            return Err(ManagementError::Expired);
        }
        Ok(claims)
    }
}
