//! Client authentication against the `authorization` options (user/password, token, users).

use crate::config::options::Authorization;
use crate::nats::core::ConnectOptions;

/// Whether a CONNECT's credentials satisfy the configured authorization.
pub fn check(auth: &Authorization, connect: &ConnectOptions) -> bool {
    if !auth.required() {
        return true;
    }
    if let Some(token) = &auth.token {
        return connect.auth_token.as_deref() == Some(token.as_str());
    }
    let user = connect.user.as_deref().unwrap_or("");
    let pass = connect.pass.as_deref().unwrap_or("");
    if let Some(expected) = &auth.user {
        return user == expected && Some(pass) == auth.password.as_deref();
    }
    auth.users
        .iter()
        .any(|u| u.user == user && u.password == pass)
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
}
