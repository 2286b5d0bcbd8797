//! `batonctl`: Baton's admin CLI. For now: `hash-password`; the gRPC commands come with
//! the admin API.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "batonctl", version, about = "Baton admin CLI")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hash a password for `[[smtp.user]] password_hash` (argon2id). Reads the password
    /// from standard input (one line), or prompts on a terminal.
    HashPassword,
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::HashPassword => hash_password(),
    }
}

fn hash_password() -> ExitCode {
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
            eprintln!("batonctl: {e}");
            ExitCode::FAILURE
        }
    }
}
