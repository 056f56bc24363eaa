//! `handler`: the executable the Azure Functions host starts (with no arguments: serve), and the
//! operator's tool for issuing tokens.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use nx_azure_cache::auth::{Access, TokenRequest};
use nx_azure_cache::config::{self, Config, Flags, LogFormat};
use nx_azure_cache::key::{Client, Hash, Namespace, TeamName};
use nx_azure_cache::storage::Entry;
use nx_azure_cache::storage::entries::{self, ClaimFilter, Filter};
use nx_azure_cache::{api, server, telemetry};

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
    /// List entries with who wrote them, selected by namespace, hash, writer, claim and time.
    Entries(EntriesArgs),
    /// Delete the entries the filters select (a dry run without --yes).
    Purge(PurgeArgs),
    /// Check settings offline, as startup would (no storage, no identity issuer contacted):
    /// before a deployment, on the app settings it is about to apply. Exits 1 with the same
    /// one-line message the server would stop with (every refused trust rule on a line of its
    /// own); warnings (a value that looks like a placeholder) do not fail it.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// A settings file (`NAME=VALUE` lines, `#` comments) instead of this process's
    /// environment. Key Vault references of the token secrets are accepted unchecked (the
    /// platform resolves them).
    #[arg(long, value_name = "FILE")]
    env_file: Option<std::path::PathBuf>,
    /// Check the settings as the Azure Functions host starts the handler (the token secret is
    /// then required, logs are JSON).
    #[arg(long)]
    functions: bool,
}

#[derive(Args)]
struct UsageArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The filters of `handler entries` and `handler purge`. Clients are alternatives, and so are
/// namespaces; every other filter must hold.
#[derive(Args)]
struct FilterArgs {
    /// Entries stored through Nx's API (`/v1/cache`).
    #[arg(long)]
    nx: bool,
    /// Artifacts stored through Turborepo's API (`/v8/artifacts`).
    #[arg(long)]
    turbo: bool,
    /// Entries of the org-wide cache.
    #[arg(long)]
    org: bool,
    /// Entries of a team's cache; repeat for several teams.
    #[arg(long = "team", value_name = "NAME", value_parser = parse_team)]
    teams: Vec<TeamName>,
    /// The entry with this hash.
    #[arg(long, value_name = "HASH", value_parser = parse_hash)]
    hash: Option<Hash>,
    /// Entries written with this token id (`jti`, as NX_CACHE_REVOKED_TOKENS takes it).
    #[arg(long, value_name = "ID")]
    token_id: Option<String>,
    /// Entries written by this subject (exactly as `handler entries` shows it).
    #[arg(long, value_name = "S")]
    subject: Option<String>,
    /// Entries written with tokens exchanged under this trust rule.
    #[arg(long, value_name = "NAME")]
    rule: Option<String>,
    /// Entries whose writer's identity claim NAME matches VALUE (`*` matches anything);
    /// repeatable, all must match.
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = ClaimFilter::parse)]
    claims: Vec<ClaimFilter>,
    /// Entries stored at or after TIME: RFC 3339, or a duration ago (2d, 12h, 30m).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<time::OffsetDateTime>,
    /// Entries stored at or before TIME: RFC 3339, or a duration ago.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<time::OffsetDateTime>,
    /// Entries stored without a record of their writer (before this version).
    #[arg(long)]
    no_writer: bool,
}

#[derive(Args)]
struct EntriesArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print JSON Lines (one object per entry) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PurgeArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Delete. Without it, a dry run: what would be deleted, and nothing is.
    #[arg(long)]
    yes: bool,
    /// Allow a purge with no filter at all (every entry of the cache).
    #[arg(long)]
    all: bool,
    /// Print the selected entries as JSON Lines, and the summary as a JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_team(text: &str) -> Result<TeamName, String> {
    TeamName::parse(text).map_err(|e| e.to_string())
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    Hash::parse(text).map_err(|e| e.to_string())
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    entries::parse_time(text, time::OffsetDateTime::now_utc())
}

impl FilterArgs {
    fn into_filter(self) -> Filter {
        let mut namespaces: Vec<Namespace> = self.teams.into_iter().map(Namespace::Team).collect();
        if self.org {
            namespaces.insert(0, Namespace::Org);
        }
        let clients = [(self.nx, Client::Nx), (self.turbo, Client::Turbo)]
            .into_iter()
            .filter_map(|(chosen, client)| chosen.then_some(client))
            .collect();
        Filter {
            clients,
            namespaces,
            hash: self.hash,
            token_id: self.token_id,
            subject: self.subject,
            rule: self.rule,
            claims: self.claims,
            since: self.since,
            until: self.until,
            no_writer: self.no_writer,
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token and print it (only the token) on stdout.
    Issue(IssueArgs),
}

#[derive(Args)]
struct IssueArgs {
    /// Grant the org-wide cache (Nx: `/v1/cache/...`; turbo: `TURBO_TEAM=_org`).
    #[arg(long)]
    org: bool,
    /// Grant a team's cache (Nx: `/teams/NAME/v1/cache/...`; turbo: `TURBO_TEAM=NAME`); repeat
    /// for several teams.
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
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Check(args) = command {
        return match run_check(&flags, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(&message),
        };
    }
    // Filters that can select nothing, or a purge of everything without --all: bad input,
    // refused (exit 2) before any setting or storage is looked at.
    let command = match command {
        Command::Entries(args) => Command::Entries(checked_entries(args)),
        Command::Purge(args) => Command::Purge(checked_purge(args)),
        other => other,
    };
    let config = match Config::load(&flags, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) if matches!(command, Command::Serve) && functions_port().is_some() => {
            return match run_degraded(&flags, e.to_string()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => fail(&message),
            };
        }
        Err(e) => return fail(&e.to_string()),
    };
    let result = match command {
        Command::Serve => run_server(config, &flags),
        Command::Token(TokenCommand::Issue(args)) => issue_token(&config, args),
        Command::Doctor => run_doctor(&config),
        Command::Usage(args) => run_usage(&config, args),
        Command::Entries(args) => run_entries(&config, args),
        Command::Purge(args) => run_purge(&config, args),
        Command::Check(_) => unreachable!("handled above"),
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

/// The port the Functions host gave, when it started the handler.
fn functions_port() -> Option<u16> {
    std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .ok()
        .and_then(|p| p.trim().parse().ok())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run_server(config: Config, flags: &Flags) -> Result<(), String> {
    // Held to the end: dropping it flushes the queued log lines.
    let _log = telemetry::init(config.log_format, config.log_queue);
    runtime()?.block_on(async {
        let prepared = match server::prepare(&config).await {
            Ok(prepared) => prepared,
            // Under the Functions host a refused configuration must not take the cache down:
            // exiting would turn every request into an error that aborts the build.
            Err(server::NotPrepared::Configuration(problem)) if config.under_functions => {
                return serve_degraded(flags, problem).await;
            }
            Err(problem) => return Err(problem.to_string()),
        };
        let listener = server::bind(&config).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, under_functions = config.under_functions, "listening");
        if prepared.dev_secret {
            // Printed on stdout for the developer to copy, never through the log pipeline.
            println!(
                "Nx and Turborepo remote cache on {} (development secret in {}).\n{}",
                addr,
                config.data_dir.display(),
                server::client_exports(&prepared.state, addr)?
            );
        }
        server::serve(listener, api::router(prepared.state), config.limits)
            .await
            .map_err(|e| format!("server failed: {e}"))
    })
}

/// Under the Functions host, with a configuration that was refused: keep answering, misses and
/// refusals only (`api::degraded`), so no build aborts on the cache.
fn run_degraded(flags: &Flags, problem: String) -> Result<(), String> {
    let _log = telemetry::init(LogFormat::Json, config::telemetry::DEFAULT_LOG_QUEUE);
    runtime()?.block_on(serve_degraded(flags, problem))
}

async fn serve_degraded(flags: &Flags, problem: String) -> Result<(), String> {
    let port = functions_port().ok_or("FUNCTIONS_CUSTOMHANDLER_PORT is not a port")?;
    tracing::error!(%problem,
        "the configuration was refused: serving without it under the Functions host (every cache GET a miss, every upload refused, POST /token 503, /health 503)");
    let (app, limits) = server::degraded(problem, &|name| std::env::var(name).ok());
    let addr = std::net::SocketAddr::new(flags.bind.unwrap_or(IpAddr::from([127, 0, 0, 1])), port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, under_functions = true, configured = false, "listening");
    server::serve(listener, app, limits)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

fn run_check(flags: &Flags, args: CheckArgs) -> Result<(), String> {
    let mut settings: Vec<(String, String)> = match &args.env_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::env_file::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => std::env::vars().collect(),
    };
    let notes = config::env_file::stand_in_for_key_vault_references(&mut settings);
    if args.functions
        && !settings
            .iter()
            .any(|(n, _)| n == "FUNCTIONS_CUSTOMHANDLER_PORT")
    {
        // Any port: only its presence matters to the checks.
        settings.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), "7071".into()));
    }
    let loaded = Config::load(flags, |name| {
        settings
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.clone())
    });
    let config = match loaded {
        Ok(config) => config,
        Err(refused) => {
            for warning in &refused.warnings {
                println!("WARNING  {warning}");
            }
            // Every trust rule that would stop the server, one line each (startup names the
            // first and counts the others).
            let Some((last, before)) = refused.each.split_last() else {
                return Err(refused.to_string());
            };
            for problem in before {
                eprintln!(
                    "handler: configuration error: {}: {problem}",
                    refused.setting
                );
            }
            return Err(format!("configuration error: {}: {last}", refused.setting));
        }
    };
    let checked = server::check(&config)?;
    for note in notes {
        println!("note     {note}");
    }
    for line in checked.lines {
        println!("ok       {line}");
    }
    for warning in checked.warnings {
        println!("WARNING  {warning}");
    }
    println!("configuration OK");
    Ok(())
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
            Ok(found) if check.warning => println!("WARNING  {}: {found}", check.what),
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

/// Exits 2 with clap's usage message when the filters contradict each other.
fn usage_error(message: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

fn checked_entries(args: EntriesArgs) -> EntriesArgs {
    if let Err(message) = filter_of(&args.filter).check() {
        usage_error(message);
    }
    args
}

fn checked_purge(args: PurgeArgs) -> PurgeArgs {
    let filter = filter_of(&args.filter);
    if let Err(message) = filter.check() {
        usage_error(message);
    }
    if filter.is_empty() && !args.all {
        usage_error("purge needs a filter (--nx, --turbo, --org, --team, --hash, --token-id, --subject, --rule, --claim, --since, --until, --no-writer), or --all to purge every entry".into());
    }
    args
}

/// The filter of `args`, for checks before they are consumed.
fn filter_of(args: &FilterArgs) -> Filter {
    FilterArgs {
        nx: args.nx,
        turbo: args.turbo,
        org: args.org,
        teams: args.teams.clone(),
        hash: args.hash.clone(),
        token_id: args.token_id.clone(),
        subject: args.subject.clone(),
        rule: args.rule.clone(),
        claims: args.claims.clone(),
        since: args.since,
        until: args.until,
        no_writer: args.no_writer,
    }
    .into_filter()
}

/// Progress on stderr once a listing takes more than a moment, at most once a second.
fn listing_progress() -> impl Fn(u64) + Send + Sync {
    let start = std::time::Instant::now();
    let last = std::sync::Mutex::new(start);
    move |listed: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if start.elapsed() >= Duration::from_secs(1) && last.elapsed() >= Duration::from_secs(1) {
            *last = std::time::Instant::now();
            eprintln!("handler: looked at {listed} entries");
        }
    }
}

fn run_entries(config: &Config, args: EntriesArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let filter = args.filter.into_filter();
    let json = args.json;
    if !json {
        println!("{}", entries::table_header());
    }
    let mut count = 0u64;
    let mut print = |entry: Entry| {
        count += 1;
        if json {
            println!("{}", entries::json(&entry));
        } else {
            println!("{}", entries::table_row(&entry));
        }
    };
    runtime.block_on(server::entries(
        config,
        &filter,
        &mut print,
        &listing_progress(),
    ))?;
    eprintln!("handler: {count} entries");
    Ok(())
}

fn run_purge(config: &Config, args: PurgeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let filter = args.filter.into_filter();
    let (json, dry_run) = (args.json, !args.yes);
    let mut selected = |entry: &Entry| {
        if json {
            println!("{}", entries::json(entry));
        } else if dry_run {
            println!("would delete {}", entries::table_row(entry));
        }
    };
    // One audit line per deleted entry, naming it and its writer, on stderr (the operator's
    // log), in the configured log format.
    let log_format = config.log_format;
    let mut deleted = |entry: &Entry| eprintln!("{}", audit_line(entry, log_format));
    let summary = runtime.block_on(server::purge(
        config,
        &filter,
        dry_run,
        &mut selected,
        &mut deleted,
        &listing_progress(),
    ))?;
    let line = summary.line(dry_run);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "dry_run": dry_run,
                "selected": summary.selected,
                "selected_bytes": summary.selected_bytes,
                "deleted": summary.deleted,
                "deleted_bytes": summary.deleted_bytes,
                "not_deleted": summary.kept,
            })
        );
    } else {
        println!("{line}");
    }
    eprintln!("handler: {line}");
    match summary.not_deleted() {
        0 => Ok(()),
        n => Err(format!("{n} selected entries were not deleted; see above")),
    }
}

/// `purged teams/web/123 (1024 bytes) written by token 3f2a... (subject ..., exchanged under
/// rule web-main)`, or the same as one JSON object.
fn audit_line(entry: &Entry, format: LogFormat) -> String {
    let name = entry.key.object_name();
    match format {
        LogFormat::Json => serde_json::json!({
            "message": "entry purged",
            "entry": name,
            "bytes": entry.bytes,
            "created": entries::json(entry)["created"],
            "writer": entries::json(entry)["writer"],
        })
        .to_string(),
        LogFormat::Text => {
            let writer = match &entry.record.writer {
                Some(w) => format!(
                    "written by token {} (subject {}, {}{})",
                    w.token_id,
                    w.subject,
                    w.kind.as_str(),
                    w.rule
                        .as_deref()
                        .map(|r| format!(" under rule {r}"))
                        .unwrap_or_default()
                ),
                None => "writer unknown (stored without a record)".into(),
            };
            format!("handler: purged {name} ({} bytes), {writer}", entry.bytes)
        }
    }
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
        rule_digest: None,
        origin: None,
    })?;
    println!("{}", token.token);
    Ok(())
}
