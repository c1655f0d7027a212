//! `mapq token new|hash`: tokens for the `tokens` setting.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and, on a second line, its `sha256` for the configuration.
    New,
    /// Read a token on stdin (one trailing newline ignored) and print its `sha256` for the
    /// configuration.
    Hash,
}

pub(super) fn run_token(command: &TokenCommand) -> ExitCode {
    use crate::auth::{new_token, token_hash};
    match command {
        TokenCommand::New => match new_token() {
            Ok(token) => {
                println!("{token}\n{}", token_hash(&token));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mapq token new: cannot read /dev/urandom: {e}");
                ExitCode::FAILURE
            }
        },
        TokenCommand::Hash => {
            let mut secret = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut secret) {
                eprintln!("mapq token hash: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            let secret = secret
                .strip_suffix('\n')
                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                .unwrap_or(&secret);
            println!("{}", token_hash(secret));
            ExitCode::SUCCESS
        }
    }
}
