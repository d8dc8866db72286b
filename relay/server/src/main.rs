//! `sotto-relay`: run the relay. `sotto-relay --help` lists the flags; every flag also
//! reads an environment variable and overrides the TOML file given with `--config`.

use std::process::ExitCode;

use clap::Parser;
use sotto_relay::config::{Cli, Command, Config};
use sotto_relay::storage::Store;
use sotto_relay::{AppState, run};
use tracing::Level;

#[tokio::main]
async fn main() -> ExitCode {
    // SIGHUP (`systemctl reload`) is caught from the first moment: its default action
    // would end the relay, and systemd would not restart it.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sotto-relay: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Admin(cmd)) = &cli.command {
        return match sotto_relay::admin::run(cmd, &config).await {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sotto-relay admin: {e}");
                ExitCode::from(2)
            }
        };
    }
    let level = config.log_level.parse::<Level>().unwrap_or(Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();

    // Every connection is a file descriptor: use all the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }

    if config.database_url.is_none()
        && let Err(e) = std::fs::create_dir_all(&config.data_dir)
    {
        tracing::error!(error = %e, "cannot create the data directory");
        return ExitCode::FAILURE;
    }
    let store = match Store::open(&config.database_url(), config.db_max_connections).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the database");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %config.listen, backend = store.backend(), "relay listening");
    let state = AppState::new(config, store);
    #[cfg(unix)]
    match hangups {
        Ok(mut hangups) => {
            let state = state.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    match state.reload_tls() {
                        Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
                        Some(Err(e)) => tracing::warn!(error = %e, "TLS certificate not reloaded: the old one stays"),
                        None => tracing::info!("SIGHUP: nothing to reload (no TLS served)"),
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot catch SIGHUP: a reload would end the relay"),
    }
    match run(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
