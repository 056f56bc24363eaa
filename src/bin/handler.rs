//! `handler`: the executable the Azure Functions host starts (with no arguments: serve), and the
//! operator's tool for issuing tokens.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use nx_azure_cache::auth::{Access, TokenRequest};
use nx_azure_cache::config::{Config, Flags};
use nx_azure_cache::key::TeamName;
use nx_azure_cache::{server, telemetry};

#[derive(Parser)]
#[command(
    name = "handler",
    version,
    about = "Nx remote cache server for Azure Functions"
)]
struct Cli {
    /// Port to listen on (FUNCTIONS_CUSTOMHANDLER_PORT wins when set; else this, else PORT, else 3000).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Address to bind.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    bind: IpAddr,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cache (the default when no command is given).
    Serve,
    /// Manage access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check the configuration, the credential, the container and the permissions, and say
    /// what to fix.
    Doctor,
    /// What the cache holds per namespace: entries, bytes, oldest and newest entry.
    Usage(UsageArgs),
}

#[derive(Args)]
struct UsageArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token and print it (only the token) on stdout.
    Issue(IssueArgs),
}

#[derive(Args)]
struct IssueArgs {
    /// Grant the org-wide cache (`/v1/cache/...`).
    #[arg(long)]
    org: bool,
    /// Grant a team's cache (`/teams/NAME/v1/cache/...`); repeat for several teams.
    #[arg(long = "team", value_name = "NAME")]
    teams: Vec<String>,
    /// Read-only: the token can fetch entries but never store them.
    #[arg(long)]
    read_only: bool,
    /// Lifetime, e.g. 90d, 12h, 30m.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// Who or what the token is for (recorded in the token and in denial logs).
    #[arg(long, default_value = "nx-cache-client")]
    subject: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = Flags {
        port: cli.port,
        bind: Some(cli.bind),
    };
    let config = match Config::load(&flags, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => run_server(config),
        Command::Token(TokenCommand::Issue(args)) => issue_token(&config, args),
        Command::Doctor => run_doctor(&config),
        Command::Usage(args) => run_usage(&config, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("handler: {message}");
    ExitCode::FAILURE
}

fn run_server(config: Config) -> Result<(), String> {
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let prepared = server::prepare(&config).await?;
        let listener = server::bind(&config).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, under_functions = config.under_functions, "listening");
        if prepared.dev_secret {
            // Printed on stdout for the developer to copy, never through the log pipeline.
            println!(
                "Nx remote cache on {} (development secret in {}).\nPoint Nx at it with:\n{}",
                addr,
                config.data_dir.display(),
                server::nx_exports(&prepared.state, addr)?
            );
        }
        server::serve(listener, prepared.state, config.limits)
            .await
            .map_err(|e| format!("server failed: {e}"))
    })
}

fn run_doctor(config: &Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let checks = runtime.block_on(server::doctor(config));
    let mut problems = 0;
    for check in &checks {
        match &check.result {
            Ok(found) => println!("ok       {}: {found}", check.what),
            Err(problem) => {
                problems += 1;
                println!("PROBLEM  {}: {problem}", check.what);
            }
        }
    }
    match problems {
        0 => {
            println!("All checks passed.");
            Ok(())
        }
        n => Err(format!("{n} problem(s) found; see above")),
    }
}

fn run_usage(config: &Config, args: UsageArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    // Progress on stderr, so that stdout is only the answer.
    let progress = |listed: u64| eprintln!("handler: listed {listed} objects");
    let usage = runtime.block_on(server::usage(config, &progress))?;
    if args.json {
        println!("{}", usage.json());
    } else {
        print!("{}", usage.table());
    }
    Ok(())
}

fn issue_token(config: &Config, args: IssueArgs) -> Result<(), String> {
    let teams = args
        .teams
        .iter()
        .map(|t| TeamName::parse(t).map_err(|e| format!("--team '{t}': {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (secret, dev_secret) = server::resolve_secret(config)?;
    if dev_secret {
        eprintln!(
            "handler: signing with the development secret in {} (set NX_CACHE_JWT_SECRET for a real deployment)",
            config.data_dir.display()
        );
    }
    let token = server::token_authority(config, &secret).issue(&TokenRequest {
        org: args.org,
        teams,
        access: if args.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
        expires_in: args.expires_in,
        subject: args.subject,
        rule: None,
    })?;
    println!("{}", token.token);
    Ok(())
}
