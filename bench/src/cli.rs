//! The harness's command line (clap derive). A new scenario is one more variant of [`Command`]
//! (with its own flags, or `#[command(flatten)] run: RunArgs` for the common ones) and one more
//! arm in `main`. `bench` without a subcommand is `bench all`.

use clap::{Args, Parser, Subcommand};

use crate::runner::{Kind, WsPlan};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Tako's benchmark harness: runs the scenarios of BENCHMARKS.md against Tako and its \
             floors on loopback and prints the tables"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The subcommand, `all` with its defaults when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or_else(|| {
            Cli::parse_from(["bench", "all"]).command.expect("`all` is a subcommand")
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every scenario against every server in turn, one table (scenarios 1–6).
    All {
        #[command(flatten)]
        run: RunArgs,
        /// Skip scenario 5 (HTTP on PostgreSQL).
        #[arg(long)]
        no_http: bool,
        /// Skip scenario 6 (two Tako nodes on PostgreSQL and Redis).
        #[arg(long)]
        no_cluster: bool,
    },
    /// Scenarios 1–4, and 6 unless --no-cluster.
    Ws {
        #[command(flatten)]
        run: RunArgs,
        /// Skip scenario 6 (two Tako nodes on PostgreSQL and Redis).
        #[arg(long)]
        no_cluster: bool,
    },
    /// Scenario 5 only (HTTP on PostgreSQL, needs wrk).
    Http(RunArgs),
    /// Scenario 6 only (two Tako nodes on PostgreSQL and Redis).
    Cluster(RunArgs),
    /// Scenario 3 (targeted latency) with up to 50k online, on a Tako cluster whose idle sockets
    /// are held by `ballast` children (see online.rs).
    Online(OnlineArgs),
    /// Issue 18's event-day soak on one Tako: RSS drift, fds, probe latency and delivery
    /// exactness under churn (see soak.rs).
    Soak(crate::soak::SoakArgs),
    /// Three ways of taking concurrent SQLite writes, side by side (see sqlitewrites.rs).
    SqliteWrites(crate::sqlitewrites::WritesArgs),
    /// Scenario 7 (issue 14): visitors scan stamps over HTTP (PostgreSQL), each scan broadcast
    /// to every joined socket (see rally.rs).
    Rally(RallyArgs),
    /// Presence feeds at scale (issue 15): N clients at once asking `full`, then N asking
    /// `count`, on one Tako (see feeds.rs).
    Presence(PresenceArgs),
    /// Scenario 5's default leaderboard (no `limit`: every ranked user up to 10,000) on
    /// PostgreSQL, Tako against the minimal handler (see leaderboard.rs; needs wrk).
    Leaderboard(LeaderboardArgs),
    /// Holds idle joined sockets for `online`: prints `ready <joined> <errors>`, answers `status`
    /// on stdin, exits when stdin closes.
    Ballast(BallastArgs),
    /// The raw tokio-tungstenite floor server.
    Floor(PortArg),
    /// The same job through axum's WebSocketUpgrade (Tako's web stack).
    AxumFloor(PortArg),
    /// The minimal axum+sqlx handler of scenario 5.
    HttpFloor {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        database_url: String,
    },
}

/// The flags of `all`, `ws`, `http` and `cluster`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sockets per run (one process holds at most ~19,000 here).
    #[arg(long, value_delimiter = ',', value_parser = size, default_value = "1000,10000")]
    pub sizes: Vec<usize>,
    /// Servers to measure: tako, tako-nopresence, tako-phoenix, floor, axum-floor, socketio.
    #[arg(long, value_delimiter = ',', value_parser = server, default_value = "tako,floor,axum-floor,socketio")]
    pub servers: Vec<Kind>,
    /// Users in the database of scenario 5.
    #[arg(long, default_value_t = 1_000_000)]
    pub http_users: u64,
    /// Seconds of wrk load per server in scenario 5.
    #[arg(long, default_value_t = 10)]
    pub http_secs: u64,
    /// Broadcasts, one at a time, for the broadcast latency.
    #[arg(long, default_value_t = 50)]
    pub repeats: usize,
    /// Seconds of steady broadcast.
    #[arg(long, default_value_t = 5)]
    pub steady_secs: u64,
    /// Broadcasts in flight during the steady broadcast.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Targeted messages, one at a time.
    #[arg(long, default_value_t = 200)]
    pub targeted: usize,
    /// Connect storms per server and size (scenario 4), each on a fresh server; the table shows
    /// the median storm, the notes every one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub storms: u64,
    /// Also measure Tako built at this git revision, for before/after.
    #[arg(long, value_name = "REV")]
    pub tako_baseline: Option<String>,
    /// Kill a server past this resident size (the machine is shared).
    #[arg(long, default_value_t = 4096)]
    pub max_rss_mib: u64,
    /// Sockets per run of scenario 6.
    #[arg(long, value_delimiter = ',', value_parser = size, default_value = "1000,10000")]
    pub cluster_sizes: Vec<usize>,
    /// Keep the work directory (the servers' logs).
    #[arg(long)]
    pub keep: bool,
}

impl RunArgs {
    pub fn plan(&self) -> WsPlan {
        WsPlan {
            repeats: self.repeats,
            throughput_secs: self.steady_secs,
            window: self.window,
            targeted_repeats: self.targeted,
            storms: self.storms as usize,
        }
    }
}

#[derive(Debug, Args)]
pub struct RallyArgs {
    /// Visitors scanning at once.
    #[arg(long, default_value_t = 1000)]
    pub visitors: usize,
    /// Stamps each visitor scans, one after the other.
    #[arg(long, default_value_t = 10)]
    pub stamps: usize,
    /// Sockets joined to the event's topic.
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Sockets (among them) that time every broadcast.
    #[arg(long, default_value_t = 20)]
    pub observers: usize,
    /// Keep the work directory (server logs).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct OnlineArgs {
    /// Sockets online per run.
    #[arg(long, value_delimiter = ',', value_parser = size, default_value = "1000,50000")]
    pub sizes: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Keep every N's cluster up at once, message k sent to each in turn.
    #[arg(long)]
    pub together: bool,
    /// Tako nodes per cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Recipients in the measuring process.
    #[arg(long, default_value_t = 300)]
    pub recipients: usize,
    /// Targeted messages per run, one at a time.
    #[arg(long, default_value_t = 500)]
    pub targeted: usize,
    /// Sockets per ballast child at most.
    #[arg(long, default_value_t = 16_000)]
    pub per_child: usize,
    /// Joins in flight per ballast child.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds the ballast children have to join.
    #[arg(long, default_value_t = 180)]
    pub join_secs: u64,
    /// Kill a server past this resident size (the machine is shared).
    #[arg(long, default_value_t = 4096)]
    pub max_rss_mib: u64,
    /// Presence on (everyone tracked, nobody asks for frames): also measure node A's presence
    /// count and a node killed with -9 (issue 15).
    #[arg(long)]
    pub presence: bool,
    /// Keep the work directory (the servers' logs).
    #[arg(long)]
    pub keep: bool,
}

impl OnlineArgs {
    /// The flags that reproduce this run, every one spelled out (defaults may change).
    pub fn command_line(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|n| n.to_string()).collect();
        let mut out = format!(
            "--sizes {} --rounds {}{} --nodes {} --recipients {} --targeted {} --per-child {} \
             --concurrency {} --join-secs {} --max-rss-mib {}",
            sizes.join(","),
            self.rounds,
            if self.together { " --together" } else { "" },
            self.nodes,
            self.recipients,
            self.targeted,
            self.per_child,
            self.concurrency,
            self.join_secs,
            self.max_rss_mib
        );
        if self.presence {
            out.push_str(" --presence");
        }
        if self.keep {
            out.push_str(" --keep");
        }
        out
    }
}

#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// Clients joining with `{"presence":"full"}` per run (0: skip).
    #[arg(long, value_delimiter = ',', value_parser = size, default_value = "10000")]
    pub full: Vec<usize>,
    /// Clients joining with `{"presence":"count"}` per run (0: skip).
    #[arg(long, value_delimiter = ',', value_parser = size, default_value = "10000")]
    pub count: Vec<usize>,
    /// Seconds a run may take before it is reported incomplete.
    #[arg(long, default_value_t = 60)]
    pub limit_secs: u64,
    /// Kill a server past this resident size (the machine is shared).
    #[arg(long, default_value_t = 4096)]
    pub max_rss_mib: u64,
    /// Keep the work directory (the servers' logs).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct LeaderboardArgs {
    /// Ranked users in the database.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Seconds of wrk load per server.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Keep the work directory (the servers' logs).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct BallastArgs {
    /// Comma-separated `host:port` of the nodes to spread the sockets over.
    #[arg(long)]
    pub targets: String,
    #[arg(long)]
    pub count: usize,
    /// The user index of the first socket.
    #[arg(long)]
    pub first_index: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 180)]
    pub deadline_secs: u64,
}

#[derive(Debug, Args)]
pub struct PortArg {
    #[arg(long, env = "PORT")]
    pub port: u16,
}

/// One size of a comma-separated list: `50_000` and ` 1000` are fine.
fn size(s: &str) -> Result<usize, String> {
    s.trim().replace('_', "").parse().map_err(|e| format!("size {s:?}: {e}"))
}

fn server(s: &str) -> Result<Kind, String> {
    Kind::parse(s.trim()).ok_or_else(|| {
        format!("unknown server {s:?}; try tako, tako-nopresence, tako-phoenix, floor, axum-floor, socketio")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(Cli::into_command)
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn leaderboard_flags() {
        let Command::Leaderboard(args) = parse(&["leaderboard"]).unwrap() else { panic!() };
        assert_eq!((args.users, args.secs, args.keep), (100_000, 10, false));
        let Command::Leaderboard(args) =
            parse(&["leaderboard", "--users", "5000", "--secs", "3", "--keep"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((args.users, args.secs, args.keep), (5000, 3, true));
    }

    #[test]
    fn no_subcommand_is_all_with_its_defaults() {
        let Command::All { run, no_http, no_cluster } = parse(&[]).unwrap() else { panic!() };
        assert_eq!(run.sizes, vec![1000, 10_000]);
        assert_eq!(run.cluster_sizes, vec![1000, 10_000]);
        assert_eq!(run.servers, vec![Kind::Tako, Kind::Floor, Kind::AxumFloor, Kind::SocketIo]);
        assert_eq!((run.http_users, run.http_secs, run.max_rss_mib), (1_000_000, 10, 4096));
        let plan = run.plan();
        assert_eq!(
            (plan.repeats, plan.throughput_secs, plan.window, plan.targeted_repeats, plan.storms),
            (50, 5, 8, 200, 1)
        );
        assert!(run.tako_baseline.is_none() && !run.keep && !no_http && !no_cluster);
    }

    #[test]
    fn flags_of_a_run() {
        let cmd = parse(&[
            "ws",
            "--servers",
            "tako,tako-nopresence, raw",
            "--sizes",
            "1000, 19_000",
            "--no-cluster",
            "--tako-baseline",
            "6489987",
            "--steady-secs",
            "3",
            "--keep",
        ])
        .unwrap();
        let Command::Ws { run, no_cluster } = cmd else { panic!() };
        assert!(no_cluster && run.keep);
        assert_eq!(run.sizes, vec![1000, 19_000]);
        assert_eq!(run.servers, vec![Kind::Tako, Kind::TakoNoPresence, Kind::Floor]);
        assert_eq!(run.tako_baseline.as_deref(), Some("6489987"));
        assert_eq!(run.plan().throughput_secs, 3);
        assert!(
            matches!(parse(&["http", "--http-users", "1000"]), Ok(Command::Http(r)) if r.http_users == 1000)
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["all", "--servers", "nginx"]).is_err());
        assert!(parse(&["all", "--sizes", "1k"]).is_err());
        assert!(parse(&["all", "--bogus"]).is_err());
        assert!(parse(&["http", "--no-cluster"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(
            parse(&["ballast", "--count", "5"]).is_err(),
            "--targets and --first-index are required"
        );
    }

    #[test]
    fn soak_prints_the_command_line_that_reproduces_it() {
        let Command::Soak(s) =
            parse(&["soak", "--db", "postgres", "--scale", "5", "--keep"]).unwrap()
        else {
            panic!()
        };
        let line = s.command_line();
        assert!(
            line.contains("--db postgres")
                && line.contains("--scale 5")
                && line.ends_with(" --keep")
        );
        let argv: Vec<&str> = std::iter::once("soak").chain(line.split(' ')).collect();
        let Command::Soak(again) = parse(&argv).unwrap() else { panic!() };
        assert_eq!(again.command_line(), line);
    }

    #[test]
    fn online_and_its_command_line() {
        let Command::Online(o) = parse(&["online"]).unwrap() else { panic!() };
        assert_eq!(o.sizes, vec![1000, 50_000]);
        assert_eq!((o.rounds, o.nodes, o.recipients, o.targeted), (3, 3, 300, 500));
        assert_eq!(
            (o.per_child, o.concurrency, o.join_secs, o.max_rss_mib),
            (16_000, 64, 180, 4096)
        );
        assert!(!o.together && !o.keep);
        let Command::Online(o) =
            parse(&["online", "--sizes", "1000, 50_000", "--rounds", "1", "--together"]).unwrap()
        else {
            panic!()
        };
        let line = o.command_line();
        assert!(line.starts_with("--sizes 1000,50000 --rounds 1 --together --nodes 3"), "{line}");
        // The line it prints runs the same plan.
        let args: Vec<&str> = line.split(' ').collect();
        let Command::Online(again) = parse(&[&["online"], args.as_slice()].concat()).unwrap()
        else {
            panic!()
        };
        assert_eq!(again.command_line(), line);
    }

    #[test]
    fn helpers_flags() {
        let Command::Ballast(b) = parse(&[
            "ballast",
            "--targets",
            "127.0.0.1:4001,127.0.0.1:4002",
            "--first-index",
            "7",
            "--count",
            "100",
            "--deadline-secs",
            "30",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((b.first_index, b.count, b.concurrency, b.deadline_secs), (7, 100, 64, 30));
        let Command::HttpFloor { port, database_url } =
            parse(&["http-floor", "--port", "4100", "--database-url", "postgres://x"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((port, database_url.as_str()), (4100, "postgres://x"));
        assert!(
            matches!(parse(&["axum-floor", "--port", "4101"]), Ok(Command::AxumFloor(p)) if p.port == 4101)
        );
    }
}
