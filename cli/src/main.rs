//! `keel`: inspect and operate a Keel job database from a shell.
//!
//! Every command opens the database as it is (only `keel migrate` creates or
//! migrates one), makes its calls through [`keel::admin::Admin`], and prints a
//! table, or JSON with `--json`. `keel --help` lists the commands and the exit
//! codes.

mod args;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use args::Cli;
use commands::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&Failure::Storage(format!("cannot start tokio: {e}"))),
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => report(&failure),
    }
}

fn report(failure: &Failure) -> ExitCode {
    eprintln!("keel: {failure}");
    ExitCode::from(failure.exit_code())
}
