//! Users, API tokens and web sessions. Only hashes of secrets are stored.

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::ts::Ts;
use crate::{Store, on_pool};
use anvil_types::{Token, User};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// A user with the hash of their password.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub user: User,
    pub password_hash: String,
}

/// A live web session.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub user: User,
    pub csrf_token: String,
    pub expires_at: OffsetDateTime,
}

macro_rules! user_from_row {
    ($row:expr, $prefix:literal) => {{
        let row = $row;
        let created: Ts = row
            .try_get(concat!($prefix, "created_at"))
            .map_err(|e| corrupt("created_at", e))?;
        User {
            id: row
                .try_get(concat!($prefix, "id"))
                .map_err(|e| corrupt("id", e))?,
            username: row
                .try_get(concat!($prefix, "username"))
                .map_err(|e| corrupt("username", e))?,
            is_admin: row
                .try_get(concat!($prefix, "is_admin"))
                .map_err(|e| corrupt("is_admin", e))?,
            created_at: created.0,
        }
    }};
}

impl Store {
    pub async fn insert_user(&self, user: &User, password_hash: &str) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user.id)
            .bind(&user.username)
            .bind(password_hash)
            .bind(user.is_admin)
            .bind(Ts(user.created_at))
            .execute(p)
            .await
            .map_err(|e| match query_err("insert user")(e) {
                StoreError::Duplicate { what, .. } => StoreError::Duplicate {
                    what,
                    value: user.username.clone(),
                },
                other => other,
            })?;
        });
        Ok(())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(
                "SELECT id, username, is_admin, created_at, password_hash FROM users WHERE username = $1",
            )
            .bind(username)
            .fetch_optional(p)
            .await
            .map_err(query_err("find user"))?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(UserRecord {
                user: user_from_row!(&row, ""),
                password_hash: row
                    .try_get("password_hash")
                    .map_err(|e| corrupt("password_hash", e))?,
            }))
        })
    }

    /// Sets a user's password hash; false if there is no such user.
    pub async fn set_password_hash(&self, username: &str, hash: &str) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
                .bind(hash)
                .bind(username)
                .execute(p)
                .await
                .map_err(query_err("set password"))?;
            Ok(done.rows_affected() > 0)
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT id, username, is_admin, created_at FROM users ORDER BY username",
            )
            .fetch_all(p)
            .await
            .map_err(query_err("list users"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(user_from_row!(row, ""));
            }
            Ok(out)
        })
    }

    pub async fn count_users(&self) -> Result<u64> {
        on_pool!(self, |p, _b| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(p)
                .await
                .map_err(query_err("count users"))?;
            Ok(n.max(0) as u64)
        })
    }

    pub async fn insert_token(
        &self,
        id: Uuid,
        name: &str,
        user_id: Uuid,
        secret_hash: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO api_tokens (id, name, user_id, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(name)
            .bind(user_id)
            .bind(secret_hash)
            .bind(Ts(at))
            .execute(p)
            .await
            .map_err(query_err("insert token"))?;
        });
        Ok(())
    }

    /// The token whose secret hashes to `secret_hash`, and its owner.
    pub async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<(Token, User)>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(
                "SELECT t.id AS t_id, t.name AS t_name, t.created_at AS t_created_at, t.last_used_at AS t_last_used_at,
                        u.id AS u_id, u.username AS u_username, u.is_admin AS u_is_admin, u.created_at AS u_created_at
                 FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = $1",
            )
            .bind(secret_hash)
            .fetch_optional(p)
            .await
            .map_err(query_err("find token"))?;
            let Some(row) = row else { return Ok(None) };
            let user = user_from_row!(&row, "u_");
            let created: Ts = row
                .try_get("t_created_at")
                .map_err(|e| corrupt("created_at", e))?;
            let used: Option<Ts> = row
                .try_get("t_last_used_at")
                .map_err(|e| corrupt("last_used_at", e))?;
            let token = Token {
                id: row.try_get("t_id").map_err(|e| corrupt("id", e))?,
                name: row.try_get("t_name").map_err(|e| corrupt("name", e))?,
                username: user.username.clone(),
                created_at: created.0,
                last_used_at: used.map(|t| t.0),
            };
            Ok(Some((token, user)))
        })
    }

    /// Records that a token was used (at most every minute, by the caller).
    pub async fn touch_token(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(Ts(at))
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("touch token"))?;
        });
        Ok(())
    }

    /// Tokens, all or those of one user.
    pub async fn list_tokens(&self, username: Option<&str>) -> Result<Vec<Token>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT t.id, t.name, t.created_at, t.last_used_at, u.username FROM api_tokens t
                 JOIN users u ON u.id = t.user_id WHERE ($1 IS NULL OR u.username = $1) ORDER BY t.created_at, t.id",
            )
            .bind(username)
            .fetch_all(p)
            .await
            .map_err(query_err("list tokens"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let created: Ts = row
                    .try_get("created_at")
                    .map_err(|e| corrupt("created_at", e))?;
                let used: Option<Ts> = row
                    .try_get("last_used_at")
                    .map_err(|e| corrupt("last_used_at", e))?;
                out.push(Token {
                    id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    name: row.try_get("name").map_err(|e| corrupt("name", e))?,
                    username: row
                        .try_get("username")
                        .map_err(|e| corrupt("username", e))?,
                    created_at: created.0,
                    last_used_at: used.map(|t| t.0),
                });
            }
            Ok(out)
        })
    }

    /// Revokes (deletes) a token; false if it did not exist.
    pub async fn delete_token(&self, id: Uuid) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("delete token"))?;
            Ok(done.rows_affected() > 0)
        })
    }

    pub async fn insert_session(
        &self,
        id_hash: &str,
        user_id: Uuid,
        csrf_token: &str,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(user_id)
            .bind(csrf_token)
            .bind(Ts(at))
            .bind(Ts(expires_at))
            .execute(p)
            .await
            .map_err(query_err("insert session"))?;
        });
        Ok(())
    }

    /// The session with this id hash if it has not expired at `now`.
    pub async fn session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(
                "SELECT s.csrf_token, s.expires_at, u.id, u.username, u.is_admin, u.created_at
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2",
            )
            .bind(id_hash)
            .bind(Ts(now))
            .fetch_optional(p)
            .await
            .map_err(query_err("find session"))?;
            let Some(row) = row else { return Ok(None) };
            let expires: Ts = row
                .try_get("expires_at")
                .map_err(|e| corrupt("expires_at", e))?;
            Ok(Some(SessionRecord {
                user: user_from_row!(&row, ""),
                csrf_token: row
                    .try_get("csrf_token")
                    .map_err(|e| corrupt("csrf_token", e))?,
                expires_at: expires.0,
            }))
        })
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(p)
                .await
                .map_err(query_err("delete session"))?;
        });
        Ok(())
    }

    /// Removes expired sessions; returns how many.
    pub async fn purge_sessions(&self, now: OffsetDateTime) -> Result<u64> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(Ts(now))
                .execute(p)
                .await
                .map_err(query_err("purge sessions"))?;
            Ok(done.rows_affected())
        })
    }
}
