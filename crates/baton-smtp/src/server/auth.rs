//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616). The engine decodes the exchange; the IO
//! layer checks the credentials ([`Action::CheckAuth`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{Action, ServerSession, State, Wait};
use crate::replies;
use crate::reply::Reply;

/// base64("Username:") and base64("Password:").
const USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

impl ServerSession {
    /// AUTH is advertised (and accepted) only when users exist and either TLS is on or
    /// the peer is trusted.
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.auth_enabled && (self.tls || self.cfg.relay_allowed)
    }

    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.cfg.auth_enabled {
            return self.error(replies::auth_disabled());
        }
        if self.helo.is_none() || !self.esmtp {
            return self.error(replies::need_ehlo());
        }
        if self.auth_user.is_some() {
            return self.error(replies::already_authenticated());
        }
        if self.txn.is_some() {
            return self.error(replies::auth_in_txn());
        }
        if !self.tls && !self.cfg.relay_allowed {
            return self.reply(replies::encryption_required());
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.state = State::AuthPlain;
                self.reply(replies::challenge(""));
            }
            ("PLAIN", Some(resp)) => self.plain(resp.as_bytes()),
            ("LOGIN", None) => {
                self.state = State::AuthLoginUser;
                self.reply(replies::challenge(USERNAME_CHALLENGE));
            }
            ("LOGIN", Some(resp)) => self.login_user(resp.as_bytes()),
            _ => self.error(replies::unknown_mechanism()),
        }
    }

    /// A client line answering a 334 challenge.
    pub(super) fn auth_response(&mut self, line: &[u8]) {
        let state = std::mem::replace(&mut self.state, State::Command);
        match state {
            State::AuthPlain => self.plain(line),
            State::AuthLoginUser => self.login_user(line),
            State::AuthLoginPass { user } => self.login_pass(user, line),
            other => self.state = other,
        }
    }

    fn plain(&mut self, resp: &[u8]) {
        let Some(raw) = self.decode(resp) else { return };
        let mut parts = raw.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.error(replies::bad_auth_data());
        };
        let (Some(authzid), Some(user), Some(pass)) = (utf8(authzid), utf8(user), utf8(pass))
        else {
            return self.error(replies::bad_auth_data());
        };
        if user.is_empty() {
            return self.error(replies::bad_auth_data());
        }
        self.check("PLAIN", authzid, user, pass);
    }

    fn login_user(&mut self, resp: &[u8]) {
        let Some(raw) = self.decode(resp) else { return };
        match utf8(&raw) {
            Some(user) if !user.is_empty() => {
                self.state = State::AuthLoginPass { user };
                self.reply(replies::challenge(PASSWORD_CHALLENGE));
            }
            _ => self.error(replies::bad_auth_data()),
        }
    }

    fn login_pass(&mut self, user: String, resp: &[u8]) {
        let Some(raw) = self.decode(resp) else { return };
        match utf8(&raw) {
            Some(pass) => self.check("LOGIN", String::new(), user, pass),
            None => self.error(replies::bad_auth_data()),
        }
    }

    fn check(&mut self, mechanism: &str, authzid: String, username: String, password: String) {
        self.out.push(Action::CheckAuth {
            mechanism: mechanism.to_string(),
            authzid,
            username: username.clone(),
            password,
        });
        self.wait = Wait::Auth { user: username };
    }

    /// Decode a base64 response; `*` cancels, `=` is empty. On failure the error reply
    /// is sent and the exchange ends.
    fn decode(&mut self, resp: &[u8]) -> Option<Vec<u8>> {
        let fail = |s: &mut Self, r: Reply| {
            s.state = State::Command;
            s.error(r);
            None
        };
        match resp {
            b"*" => fail(self, replies::auth_cancelled()),
            b"=" => Some(Vec::new()),
            _ => match STANDARD.decode(resp) {
                Ok(v) => Some(v),
                Err(_) => fail(self, replies::bad_base64()),
            },
        }
    }
}

fn utf8(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}
