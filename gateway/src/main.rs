//! `shardgate`: run the gateway, or validate a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use shardgate_gateway::config;
use shardgate_gateway::server::{RunOptions, run};
use shardgate_runtime::shard::DriverChoice;

#[derive(Parser, Debug)]
#[command(
    name = "shardgate",
    version,
    about = "Thread-per-core API gateway with a full OpenID Connect relying party",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (same as `shardgate run -c FILE`).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Number of shards (one pinned thread each); default: one per available core.
    #[arg(long, global = true)]
    shards: Option<usize>,
    /// I/O driver: io_uring, epoll, or auto (io_uring with fallback).
    #[arg(long, value_enum, global = true)]
    driver: Option<DriverArg>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the gateway.
    Run,
    /// Load and check a config; print every problem with its path. Exit 0 when valid, 2 otherwise.
    Validate {
        /// With `gateway.config_provider: etcd`: also read the objects under the etcd prefix and
        /// report every invalid one by its key.
        #[arg(long)]
        etcd: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DriverArg {
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let Some(path) = cli.config.clone() else {
        eprintln!(
            "shardgate: a config file is required: shardgate run -c FILE (or shardgate validate -c FILE)"
        );
        return ExitCode::from(2);
    };
    match cli.command {
        Some(Command::Validate { etcd: false }) => validate(&path),
        Some(Command::Validate { etcd: true }) => validate_etcd(&path),
        Some(Command::Run) | None => {
            let opts = RunOptions {
                config_path: path,
                shards: cli.shards,
                driver: cli.driver.map(|d| match d {
                    DriverArg::Auto => DriverChoice::Auto,
                    DriverArg::Uring => DriverChoice::Uring,
                    DriverArg::Epoll => DriverChoice::Epoll,
                }),
            };
            ExitCode::from(u8::try_from(run(opts)).unwrap_or(1))
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {}: {}", w.path, w.message);
            }
            let plugins = shardgate_gateway::pipeline::PluginGlobals::new();
            match shardgate_gateway::published::Published::build(1, loaded.config, &plugins) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}", config::report(path, &e.to_string()));
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            eprintln!("{}", config::report(path, &e.to_string()));
            ExitCode::from(2)
        }
    }
}

/// The file's `gateway` section plus every object etcd holds now, checked as the provider would
/// publish them: each invalid object is printed with its key (exit 2), as the running gateway
/// would skip it.
fn validate_etcd(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}", config::report(path, &e.to_string()));
            return ExitCode::from(2);
        }
    };
    let config::Provider::Etcd(conf) = &loaded.config.gateway.provider else {
        eprintln!(
            "{}: --etcd needs gateway.config_provider: etcd (and gateway.etcd) in the file",
            path.display()
        );
        return ExitCode::from(2);
    };
    let mut client =
        config::etcd::client::Client::new(conf.hosts.clone(), conf.timeout, conf.auth.clone());
    let (revision, kvs) = match client.range(&format!("{}/", conf.prefix)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let objects: config::etcd::Objects = kvs.into_iter().collect();
    let plugins = shardgate_gateway::pipeline::PluginGlobals::new();
    let result = config::etcd::assemble_file(path, &conf.prefix, &objects, &mut |c| {
        shardgate_gateway::published::Published::build(1, c, &plugins).map(|_| ())
    });
    match result {
        Ok(a) => {
            for w in &a.warnings {
                eprintln!("warning: {}: {}", w.path, w.message);
            }
            for s in &a.skipped {
                for p in &s.problems {
                    eprintln!("{}: {p}", s.key);
                }
            }
            if a.skipped.is_empty() {
                println!(
                    "{}: ok ({} keys under {}/ at etcd revision {revision})",
                    path.display(),
                    objects.len(),
                    conf.prefix
                );
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} of {} keys under {}/ are invalid (etcd revision {revision}); a gateway skips them",
                    a.skipped.len(),
                    objects.len(),
                    conf.prefix
                );
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("{}", config::report(path, &e.to_string()));
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SHARDGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Escape codes only make sense on a terminal; in files and journald they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
