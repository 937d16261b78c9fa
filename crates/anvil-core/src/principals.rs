//! Users, API tokens and web sessions.

use crate::crypto::{hash_password, random_token, sha256_hex, verify_password, write_private};
use crate::error::{Error, Result};
use crate::{App, limits, now};
use anvil_api_types::TokenCreated;
use anvil_types::{Token, User};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Who is acting. Recorded as the actor of every event.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    User(User),
    /// A request authenticated by an API token, acting for its owner.
    Token {
        token: Token,
        user: User,
    },
    /// Anvil itself (background work, bootstrap).
    System,
}

impl Principal {
    pub fn actor(&self) -> String {
        match self {
            Principal::User(u) => format!("user:{}", u.username),
            Principal::Token { token, user } => format!("token:{}/{}", user.username, token.name),
            Principal::System => "system".to_string(),
        }
    }

    pub fn user(&self) -> Option<&User> {
        match self {
            Principal::User(u) | Principal::Token { user: u, .. } => Some(u),
            Principal::System => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::System => true,
            _ => self.user().is_some_and(|u| u.is_admin),
        }
    }

    fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::Forbidden("this needs an administrator"))
        }
    }
}

/// A logged-in web session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub user: User,
    pub csrf_token: String,
}

/// What the first start did about the admin account.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminBootstrap {
    /// Users exist already; nothing was done.
    Existing,
    /// `admin` was created with this password, also written to `file`.
    Created { password: String, file: PathBuf },
}

const TOKEN_PREFIX: &str = "anvil_";
const ADMIN_PASSWORD_FILE: &str = "admin-password";

fn validate_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "username",
            "1 to 64 letters, digits, '-', '_', '.' or '@'",
        ))
    }
}

fn validate_password(pw: &str) -> Result<()> {
    if pw.chars().count() < limits::MIN_PASSWORD {
        return Err(Error::invalid(
            "password",
            format!("at least {} characters", limits::MIN_PASSWORD),
        ));
    }
    if pw.len() > 1024 {
        return Err(Error::invalid("password", "at most 1024 bytes"));
    }
    Ok(())
}

impl App {
    /// On first start with no users, creates `admin` with a random password,
    /// writes it to `<data_dir>/admin-password` (0600) and returns it so the
    /// caller can log it once.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<AdminBootstrap> {
        if self.store.count_users().await? > 0 {
            return Ok(AdminBootstrap::Existing);
        }
        let password = random_token(18);
        let file = data_dir.join(ADMIN_PASSWORD_FILE);
        let _ = std::fs::remove_file(&file);
        write_private(&file, &format!("{password}\n")).map_err(|e| Error::Internal {
            context: "writing the admin password file",
            source: Box::new(e),
        })?;
        self.create_user(&Principal::System, "admin", &password, true)
            .await?;
        Ok(AdminBootstrap::Created { password, file })
    }

    pub async fn create_user(
        &self,
        by: &Principal,
        username: &str,
        password: &str,
        is_admin: bool,
    ) -> Result<User> {
        by.require_admin()?;
        validate_username(username)?;
        validate_password(password)?;
        let user = User {
            id: Uuid::now_v7(),
            username: username.to_string(),
            is_admin,
            created_at: now(),
        };
        let hash = hash_password(password)?;
        self.store
            .insert_user(&user, &hash)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Duplicate { .. } => Error::Duplicate {
                    field: "username",
                    value: username.to_string(),
                    existing: None,
                },
                other => other,
            })?;
        Ok(user)
    }

    pub async fn list_users(&self, by: &Principal) -> Result<Vec<User>> {
        by.require_admin()?;
        Ok(self.store.list_users().await?)
    }

    /// Sets a password: an admin may set anyone's, a user their own.
    pub async fn set_password(&self, by: &Principal, username: &str, password: &str) -> Result<()> {
        let own = by.user().is_some_and(|u| u.username == username);
        if !own {
            by.require_admin()?;
        }
        validate_password(password)?;
        let hash = hash_password(password)?;
        if !self.store.set_password_hash(username, &hash).await? {
            return Err(Error::NotFound {
                kind: "user",
                id: username.to_string(),
            });
        }
        Ok(())
    }

    /// Checks a login; `None` for a wrong user or password (the caller must
    /// not tell which).
    pub async fn login(&self, username: &str, password: &str) -> Result<Option<SessionCookie>> {
        let Some(rec) = self.store.user_by_name(username).await? else {
            // Spend the same time as a real check, so timing does not tell
            // which usernames exist.
            let _ = verify_password(password, DUMMY_HASH);
            return Ok(None);
        };
        if !verify_password(password, &rec.password_hash) {
            return Ok(None);
        }
        let id = random_token(32);
        let csrf = random_token(24);
        let at = now();
        self.store
            .insert_session(
                &sha256_hex(&id),
                rec.user.id,
                &csrf,
                at,
                at + self.session_ttl,
            )
            .await?;
        let _ = self.store.purge_sessions(at).await;
        Ok(Some(SessionCookie {
            id,
            max_age: self.session_ttl,
        }))
    }

    /// The session of a cookie value, if it is live.
    pub async fn session(&self, cookie: &str) -> Result<Option<SessionInfo>> {
        if cookie.len() > 128 {
            return Ok(None);
        }
        Ok(self
            .store
            .session(&sha256_hex(cookie), now())
            .await?
            .map(|s| SessionInfo {
                user: s.user,
                csrf_token: s.csrf_token,
            }))
    }

    pub async fn logout(&self, cookie: &str) -> Result<()> {
        Ok(self.store.delete_session(&sha256_hex(cookie)).await?)
    }

    /// Creates an API token for the acting user (or, for `System`, for
    /// `owner`). The secret is returned once and stored only as a hash.
    pub async fn create_token(
        &self,
        by: &Principal,
        name: &str,
        owner: Option<&str>,
    ) -> Result<TokenCreated> {
        let name = name.trim();
        if name.is_empty() || name.len() > limits::MAX_TEXT {
            return Err(Error::invalid("name", "1 to 255 characters"));
        }
        let user = match (owner, by.user()) {
            (Some(owner), _) => {
                by.require_admin()?;
                self.store
                    .user_by_name(owner)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        kind: "user",
                        id: owner.to_string(),
                    })?
                    .user
            }
            (None, Some(u)) => u.clone(),
            (None, None) => return Err(Error::invalid("owner", "a token needs an owner")),
        };
        let id = Uuid::now_v7();
        let secret = format!("{TOKEN_PREFIX}{}", random_token(32));
        let at = now();
        self.store
            .insert_token(id, name, user.id, &sha256_hex(&secret), at)
            .await?;
        Ok(TokenCreated {
            token: Token {
                id,
                name: name.to_string(),
                username: user.username,
                created_at: at,
                last_used_at: None,
            },
            secret,
        })
    }

    /// The principal of a bearer token, or `Unauthenticated`.
    pub async fn authenticate_token(&self, secret: &str) -> Result<Principal> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        let Some((token, user)) = self.store.token_by_hash(&sha256_hex(secret)).await? else {
            return Err(Error::Unauthenticated);
        };
        let at = now();
        // Write last-use at most once a minute: a busy playbook must not turn
        // every read into a write.
        if token
            .last_used_at
            .is_none_or(|t| at - t > time::Duration::minutes(1))
        {
            self.store.touch_token(token.id, at).await?;
        }
        Ok(Principal::Token { token, user })
    }

    /// Tokens: an admin sees all, a user their own.
    pub async fn list_tokens(&self, by: &Principal) -> Result<Vec<Token>> {
        if by.is_admin() {
            Ok(self.store.list_tokens(None).await?)
        } else {
            let name = by.user().map(|u| u.username.as_str());
            Ok(self.store.list_tokens(name).await?)
        }
    }

    pub async fn revoke_token(&self, by: &Principal, id: Uuid) -> Result<()> {
        let visible = self.list_tokens(by).await?;
        if !visible.iter().any(|t| t.id == id) {
            return Err(Error::NotFound {
                kind: "token",
                id: id.to_string(),
            });
        }
        self.store.delete_token(id).await?;
        Ok(())
    }
}

/// A new session's cookie value and lifetime.
#[derive(Debug, Clone)]
pub struct SessionCookie {
    pub id: String,
    pub max_age: time::Duration,
}

/// A valid argon2id hash of a random string, used to equalise login timing.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9Gf5bQ4m1Vb3pFvJk3VnH6P9r3rLwH1yqQy2s0yKf0Q";
