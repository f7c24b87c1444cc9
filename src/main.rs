//! `percore`: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use percore::cli::{Cli, Command};
use percore::mock_backend::{MockBackend, MockConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in files or journald.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Some(Command::Ctl(args)) => return percore::ctl::run(args),
        Some(Command::Backend(args)) => run_backend(args),
        None => match cli.serve.to_config() {
            Ok(config) => {
                // A reload reads the file again and applies the same flags.
                let serve = cli.serve;
                let source = Box::new(move || serve.to_config());
                percore::run(config, source).map_err(|error| error.to_string())
            }
            Err(error) => Err(error.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("percore: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_backend(args: percore::cli::BackendArgs) -> Result<(), String> {
    let driver = percore::runtime::probe(args.driver).map_err(|error| error.to_string())?;
    let config = MockConfig {
        name: args.name,
        delay: std::time::Duration::from_millis(args.delay_ms),
        status: args.status,
        driver,
        ..MockConfig::new(args.listen)
    };
    let backend = MockBackend::start(config)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    tracing::info!(listen = %backend.addr(), name = backend.name(), "mock backend serving");
    backend.wait();
    Ok(())
}
