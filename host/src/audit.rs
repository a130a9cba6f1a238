//! The audit log: what was changed through the API, by whom, written in the
//! transaction that made the change, so there is never a change without its
//! entry nor an entry without its change.
//!
//! The actor is a token's fingerprint — the first 12 lowercase hex digits
//! of its SHA-256, never the token — or one of the names below for changes
//! no token made.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// A change found in a plugin directory.
pub const PLUGIN_DIR: &str = "plugin-dir";
/// A change the host made by itself (an endpoint disabled or enabled by
/// its health).
pub const KAIROS: &str = "kairos";
/// A client route called without a token, where client routes are open.
pub const ANONYMOUS: &str = "anonymous";

/// How many hex digits of the token's SHA-256 name it.
const FINGERPRINT_HEX: usize = 12;

/// The name a token goes by in the audit log.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(FINGERPRINT_HEX);
    for byte in &digest[..FINGERPRINT_HEX / 2] {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Whoever is making a change, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn plugin_dir() -> Self {
        Self(PLUGIN_DIR.to_string())
    }

    pub fn kairos() -> Self {
        Self(KAIROS.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One entry, as `GET /audit` shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// A token's fingerprint (12 hex digits), `plugin-dir`, `kairos` or
    /// `anonymous`.
    pub actor: String,
    /// `user.create`, `type.load`, `endpoint.disable`, …
    pub action: String,
    /// What was changed: a user's or event's id, a type's name, an
    /// endpoint's id.
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: sqlx::types::Json<Value>,
}

/// Writes one entry on `conn`: call it inside the change's transaction.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)")
        .bind(actor.as_str())
        .bind(action)
        .bind(target)
        .bind(sqlx::types::Json(detail))
        .execute(conn)
        .await?;
    Ok(())
}

/// Up to `limit` entries after id `after`, oldest first.
pub async fn list(pool: &PgPool, after: Option<i64>, limit: i64) -> sqlx::Result<Vec<Entry>> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, detail FROM audit_log \
         WHERE id > coalesce($1, 0) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_first_twelve_hex_digits_of_the_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223…
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(fingerprint("secret-token").len(), 12);
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }
}
