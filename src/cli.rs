//! The `alleycat` command line: with no subcommand, the whole backend in one
//! process; with one, a single service as its own process.

use crate::Config;
use alleycat_runtime::{Process, ServerArgs, ServiceArgs};
use alleycat_storage::StorageArgs;
use clap::{Parser, Subcommand};

/// `alleycat [SERVICE]`.
#[derive(Parser)]
#[command(
    name = "alleycat",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    service: Option<Command>,
    #[command(flatten)]
    all_in_one: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Only the ingest service (POST /v1/telemetry, /v1/telemetry/ws).
    Ingest(Standalone<alleycat_ingest::IngestArgs>),
    /// Only the transformer (stream -> delivery objects).
    Transformer(Standalone<alleycat_transformer::TransformerArgs>),
    /// Only the history service (delivery objects -> class-N.gz); or,
    /// with `import`, imports the original system's class files.
    History(HistoryCommand),
    /// Only the rankings service (live standings, results, leaderboards).
    Rankings(Standalone<alleycat_rankings::RankingsArgs>),
    /// Prints a bike's token (signed with the first ALLEYCAT_AUTH_SECRET).
    Token(alleycat_ingest::TokenArgs),
}

/// Settings of one service run as its own process.
#[derive(clap::Args)]
struct Standalone<A: ServiceArgs> {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    service: A,
}

/// `alleycat history [import SOURCE]`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct HistoryCommand {
    #[command(subcommand)]
    action: Option<HistoryAction>,
    #[command(flatten)]
    service: Standalone<alleycat_history::HistoryArgs>,
}

#[derive(Subcommand)]
enum HistoryAction {
    /// Merges class files written by the original system (`class-N.gz` or
    /// `class-N`, N 1-6, gzip or plain JSON) into the history store by
    /// maximum, rounding values as the original did; drops what is not
    /// valid and prints what it dropped and imported, per class.
    Import(Box<alleycat_history::import::ImportArgs>),
}

impl<A: ServiceArgs> Standalone<A> {
    async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let process = Process::bind(&self.server).await?;
        let service = self
            .service
            .service(process.context(), &self.storage)
            .await?;
        process.run(vec![service], shutdown).await
    }
}

impl Cli {
    /// Runs what the command line asks for until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = alleycat_runtime::shutdown_signal();
        match self.service {
            None => {
                let config = self.all_in_one;
                let process = Process::bind(&config.server).await?;
                crate::run_process(process, config, shutdown).await
            }
            Some(Command::Ingest(service)) => service.run(shutdown).await,
            Some(Command::Transformer(service)) => service.run(shutdown).await,
            Some(Command::History(history)) => match history.action {
                None => history.service.run(shutdown).await,
                Some(HistoryAction::Import(args)) => alleycat_history::import::run(&args).await,
            },
            Some(Command::Rankings(service)) => service.run(shutdown).await,
            Some(Command::Token(token)) => token.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// `--flag-name` and `ALLEYCAT_FLAG_NAME` name the same setting, in every
    /// subcommand: one scheme, so that neither needs looking up.
    #[test]
    fn every_flag_is_named_after_its_variable() {
        let cli = Cli::command();
        let mut checked = 0;
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                // `alleycat token`'s own inputs are not settings.
                if ["help", "version", "racer", "ttl"].contains(&long) {
                    continue;
                }
                let env = arg.get_env().and_then(|e| e.to_str());
                let expected = format!("ALLEYCAT_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    env,
                    Some(expected.as_str()),
                    "--{long} of `{}`",
                    command.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * 5, "only {checked} flags found");
    }

    #[test]
    fn defaults_come_from_clap_and_flags_override_them() {
        let defaults = Config::parse_from(["alleycat"]);
        assert_eq!(defaults.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(defaults.transformer.buffer_bytes.get(), 4 << 20);
        let config = Config::parse_from(["alleycat", "--buffer-interval-ms", "200"]);
        assert_eq!(config.transformer.buffer_interval.as_millis(), 200);
        assert_eq!(config.history.poll_interval, defaults.history.poll_interval);
    }

    #[test]
    fn settings_that_would_spin_or_overflow_are_refused_at_start() {
        for (flag, value) in [
            ("--history-poll-ms", "0"),
            ("--rankings-history-reload-ms", "0"),
            ("--header-timeout-ms", "0"),
            ("--history-listing-grace-ms", "18446744073709551615"),
            ("--max-connections", "0"),
        ] {
            let parsed = Config::try_parse_from(["alleycat", flag, value]);
            assert!(parsed.is_err(), "{flag} {value} was accepted");
        }
        // Zero is a valid retention: keep for ever.
        assert!(
            Config::try_parse_from(["alleycat", "--rankings-results-retention-ms", "0"]).is_ok()
        );
    }

    #[test]
    fn each_service_parses_alone() {
        for service in ["ingest", "transformer", "history", "rankings"] {
            let cli = Cli::try_parse_from(["alleycat", service, "--data-dir", "/tmp/x"]);
            assert!(cli.is_ok_and(|c| c.service.is_some()), "{service}");
        }
    }

    #[test]
    fn history_import_is_a_subcommand_of_history() {
        let cli = Cli::try_parse_from([
            "alleycat",
            "history",
            "import",
            "s3://old/prod",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        let Some(Command::History(HistoryCommand {
            action: Some(HistoryAction::Import(args)),
            ..
        })) = cli.service
        else {
            panic!("not an import");
        };
        assert_eq!(args.source.to_string(), "s3://old/prod/");
        assert_eq!(args.storage.data_dir.to_str(), Some("/tmp/x"));
        let service = Cli::try_parse_from(["alleycat", "history", "--history-poll-ms", "100"]);
        assert!(service.is_ok_and(|c| matches!(
            c.service,
            Some(Command::History(HistoryCommand { action: None, .. }))
        )));
        assert!(Cli::try_parse_from(["alleycat", "history", "import"]).is_err());
    }
}
