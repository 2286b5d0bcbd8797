//! `hash-password`: an argon2id PHC string for `[[smtp.user]] password_hash`, from a
//! password read on standard input (prompted for on a terminal). Needs no server.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// Reads one line, prints its hash; exit 2 for an unreadable or empty password.
pub fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("batonctl: cannot read the password: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("batonctl: empty password");
        return ExitCode::from(2);
    }
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("batonctl: cannot hash: {e}");
            ExitCode::from(1)
        }
    }
}
