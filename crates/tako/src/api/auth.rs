//! Bearer tokens: the public client token of the web app, and the operators' admin token.

use axum::extract::Request;
use axum::http::header;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Who is calling, as far as the tokens tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the client token (or no token is configured in dev mode).
    Client,
    /// Holds the admin token (or, in dev mode, no token of either kind is configured).
    Admin,
}

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub client: Option<String>,
    pub admin: Option<String>,
}

impl Tokens {
    /// `None` means the request must be refused with 401.
    pub fn role_for(&self, bearer: Option<&str>) -> Option<Role> {
        if let (Some(given), Some(admin)) = (bearer, &self.admin) {
            if equal(given, admin) {
                return Some(Role::Admin);
            }
        }
        match (&self.client, bearer) {
            (Some(client), Some(given)) if equal(given, client) => Some(Role::Client),
            (Some(_), _) => None,
            // Dev mode without a client token: everyone is a client; with no token of either
            // kind at all, everyone may do everything (the server warned loudly at start).
            (None, _) if self.admin.is_none() => Some(Role::Admin),
            (None, _) => Some(Role::Client),
        }
    }

    pub fn is_open(&self) -> bool {
        self.client.is_none()
    }
}

/// Constant time in the content of the tokens (the length of ours is not a secret worth it).
fn equal(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Every `/api` route: 401 without a valid token, else the caller's `Role` is put in the
/// request's extensions for handlers that need more.
pub fn authorize(tokens: &Tokens, request: &mut Request) -> Result<(), ApiError> {
    match tokens.role_for(bearer(request)) {
        Some(role) => {
            request.extensions_mut().insert(role);
            Ok(())
        }
        None => Err(ApiError::unauthorized()),
    }
}

/// For admin-only handlers: 403 for a client-token holder.
pub fn require_admin(role: Role) -> Result<(), ApiError> {
    match role {
        Role::Admin => Ok(()),
        Role::Client => Err(ApiError::forbidden(
            "This needs the admin token (TAKO_ADMIN_TOKEN); the client token is public",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(client: Option<&str>, admin: Option<&str>) -> Tokens {
        Tokens { client: client.map(str::to_owned), admin: admin.map(str::to_owned) }
    }

    #[test]
    fn roles() {
        let both = tokens(Some("c"), Some("a"));
        assert_eq!(both.role_for(Some("c")), Some(Role::Client));
        assert_eq!(both.role_for(Some("a")), Some(Role::Admin));
        assert_eq!(both.role_for(Some("x")), None);
        assert_eq!(both.role_for(None), None);

        let client_only = tokens(Some("c"), None);
        assert_eq!(client_only.role_for(Some("c")), Some(Role::Client));
        assert_eq!(client_only.role_for(None), None);

        let admin_only = tokens(None, Some("a"));
        assert_eq!(admin_only.role_for(None), Some(Role::Client));
        assert_eq!(admin_only.role_for(Some("a")), Some(Role::Admin));

        let open = tokens(None, None);
        assert_eq!(open.role_for(None), Some(Role::Admin));
    }
}
