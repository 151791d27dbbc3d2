//! Client authentication against the `authorization` options (user/password, token, users).
//! Configured passwords and tokens may be bcrypt hashes (`$2a$...`, as `nats server passwd`
//! writes them), as nats-server accepts.

use crate::config::options::Authorization;
use crate::nats::core::ConnectOptions;

/// Whether a CONNECT's credentials satisfy the configured authorization.
pub fn check(auth: &Authorization, connect: &ConnectOptions) -> bool {
    if !auth.required() {
        return true;
    }
    if let Some(token) = &auth.token {
        return connect
            .auth_token
            .as_deref()
            .is_some_and(|given| secret_matches(token, given));
    }
    let user = connect.user.as_deref().unwrap_or("");
    let pass = connect.pass.as_deref().unwrap_or("");
    if let Some(expected) = &auth.user {
        return user == expected
            && auth
                .password
                .as_deref()
                .is_some_and(|p| secret_matches(p, pass));
    }
    auth.users
        .iter()
        .any(|u| u.user == user && secret_matches(&u.password, pass))
}

/// `check`, with bcrypt comparisons (tens of milliseconds each) run on the executor's blocking
/// pool so that the core keeps serving its other connections meanwhile.
pub async fn check_off_core(auth: &Authorization, connect: &ConnectOptions) -> bool {
    let hashed = auth
        .token
        .iter()
        .chain(auth.password.iter())
        .any(|s| is_bcrypt(s))
        || auth.users.iter().any(|u| is_bcrypt(&u.password));
    if !hashed {
        return check(auth, connect);
    }
    let (auth, connect) = (auth.clone(), connect.clone());
    glommio::executor()
        .spawn_blocking(move || check(&auth, &connect))
        .await
}

fn is_bcrypt(configured: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| configured.starts_with(p))
}

/// A configured secret (plain or bcrypt hash) against what the client sent.
pub fn secret_matches(configured: &str, given: &str) -> bool {
    if is_bcrypt(configured) {
        return bcrypt::verify(given, configured).unwrap_or(false);
    }
    configured == given
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::options::User;

    fn connect(user: Option<&str>, pass: Option<&str>, token: Option<&str>) -> ConnectOptions {
        ConnectOptions {
            user: user.map(Into::into),
            pass: pass.map(Into::into),
            auth_token: token.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn modes() {
        let none = Authorization::default();
        assert!(check(&none, &connect(None, None, None)));
        let single = Authorization {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(check(&single, &connect(Some("u"), Some("p"), None)));
        assert!(!check(&single, &connect(Some("u"), Some("x"), None)));
        assert!(!check(&single, &connect(None, None, None)));
        let token = Authorization {
            token: Some("t".into()),
            ..Default::default()
        };
        assert!(check(&token, &connect(None, None, Some("t"))));
        assert!(!check(&token, &connect(Some("u"), Some("p"), Some("x"))));
        let users = Authorization {
            users: vec![
                User {
                    user: "a".into(),
                    password: "1".into(),
                },
                User {
                    user: "b".into(),
                    password: "2".into(),
                },
            ],
            ..Default::default()
        };
        assert!(check(&users, &connect(Some("b"), Some("2"), None)));
        assert!(!check(&users, &connect(Some("b"), Some("1"), None)));
    }

    #[test]
    fn bcrypt_secrets() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let single = Authorization {
            user: Some("u".into()),
            password: Some(hash.clone()),
            ..Default::default()
        };
        assert!(check(&single, &connect(Some("u"), Some("s3cret"), None)));
        assert!(!check(&single, &connect(Some("u"), Some(&hash), None)));
        let token = Authorization {
            token: Some(hash),
            ..Default::default()
        };
        assert!(check(&token, &connect(None, None, Some("s3cret"))));
        assert!(!check(&token, &connect(None, None, Some("other"))));
        let broken = Authorization {
            user: Some("u".into()),
            password: Some("$2a$garbage".into()),
            ..Default::default()
        };
        assert!(!check(&broken, &connect(Some("u"), Some("x"), None)));
    }
}
