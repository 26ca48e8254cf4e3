use std::{
    io::{IsTerminal, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use modtrace::{enforcement, kernel::StrategyChoice, policy, replay, sink::Format, watch};

#[derive(Parser)]
#[command(
    version,
    about = "Trace Linux kernel module loads, unloads and their causes with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream every init_module, finit_module and delete_module call.
    Watch(WatchArgs),
    /// Show, check and try out policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Re-judge a recorded NDJSON capture with a policy.
    Replay(ReplayArgs),
    /// The enforcement pinned in the kernel by `watch --enforce`.
    #[command(subcommand)]
    Enforce(EnforceCommand),
    /// Check this host against the hardening guide: Secure Boot, lockdown,
    /// signatures, taint, the CIS deny list, the initramfs, audit rules.
    /// Exits 0 when all pass, 1 on any warn or unknown, 2 on any fail.
    Audit(AuditArgs),
    /// Record every module file on disk, and verify the disk against it.
    #[command(subcommand)]
    Baseline(BaselineCommand),
}

#[derive(Subcommand)]
enum EnforceCommand {
    /// Whether deny rules are enforced, since when, by which policy, the
    /// denials per rule, and whether a collector is attached.
    Status {
        /// [default: json when stdout is not a terminal, else text]
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// End enforcement: remove the pins, which detaches the LSM programs.
    /// Logged in the capture (an `enforce_command` record).
    Release,
    /// Emergency unblock: let module NAME load for a while, whatever the
    /// deny rules or the lock say. Expires in the kernel; logged.
    Allow {
        name: String,
        /// How long: seconds, or with a unit: 90s, 10m, 1h.
        #[arg(long = "for", value_name = "DURATION", value_parser = enforcement::parse_duration)]
        duration: std::time::Duration,
    },
    /// Lock module loading: from now on only the modules loaded now (and
    /// those named with --also) may load. Logged.
    Lock {
        /// A module that may load too (repeat for more).
        #[arg(long, value_name = "NAME")]
        also: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BaselineCommand {
    /// Hash every module file of the running kernel (path, size, times,
    /// device, inode, sha256, signer, owning package) into a baseline file.
    Create {
        /// Where to write it (atomically, mode 0600).
        #[arg(long, value_name = "FILE", default_value = modtrace::posture::baseline::DEFAULT_PATH)]
        output: PathBuf,
        /// Every kernel's tree under /lib/modules, not only the running one's.
        #[arg(long)]
        all_kernels: bool,
        /// Treat DIR as the filesystem root (an image, a test tree).
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
    },
    /// List added, removed and changed module files, each told apart as a
    /// package's change or unexplained. Exits 0 when nothing changed, 1 when
    /// packages explain every change, 2 when any is unexplained.
    Verify {
        #[arg(value_name = "FILE", default_value = modtrace::posture::baseline::DEFAULT_PATH)]
        file: PathBuf,
        /// Rehash every file, not only those whose size, mtime or ctime changed.
        #[arg(long)]
        full: bool,
        /// Output on stdout [default: json when stdout is not a terminal, else text]
        #[arg(long, value_enum)]
        format: Option<Format>,
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
    },
    /// Write the baseline's (device, inode, ctime) set in the binary form
    /// of docs/baseline.md, for an in-kernel allow-list.
    ExportIds {
        #[arg(value_name = "FILE", default_value = modtrace::posture::baseline::DEFAULT_PATH)]
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Output on stdout [default: json when stdout is not a terminal, else text]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Run only these checks (repeat, or separate with commas).
    #[arg(long = "check", value_name = "ID", value_delimiter = ',')]
    checks: Vec<String>,
    /// Print a shell script of the fixes instead of the report.
    #[arg(long)]
    fix_script: bool,
    /// Treat DIR as the filesystem root (an image, a test tree).
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the embedded default policy.
    ShowDefault,
    /// Validate a policy file and list its rules.
    Check { file: PathBuf },
    /// Show which rules of a policy match one event record, and why.
    Test {
        /// The policy [default: the embedded default policy]
        file: Option<PathBuf>,
        /// One syscall record as JSON (a line of `watch` output).
        #[arg(long, value_name = "JSON")]
        event: String,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// A capture written by `modtrace watch` (NDJSON).
    file: PathBuf,
    /// The policy to judge with [default: the embedded default policy]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Output on stdout [default: json when stdout is not a terminal, else text]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Alert window in seconds, instead of the one the capture's `start`
    /// record names (0: write every alert)
    #[arg(long, value_name = "SECONDS")]
    alert_window: Option<u64>,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Output on stdout [default: json when stdout is not a terminal, else text]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Also append NDJSON to this file (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Force an attach strategy instead of the best available: one for all
    /// syscalls (kprobe, fentry, syscall-tracepoints, raw-syscalls), or one
    /// per syscall named, e.g. `init_module=kprobe,delete_module=fentry`
    /// (the others keep the best available).
    #[arg(
        long,
        env = "MODTRACE_STRATEGY",
        value_name = "STRATEGY|SYSCALL=STRATEGY,..."
    )]
    strategy: Option<StrategyChoice>,
    /// Kernel BTF to read structure offsets from.
    #[arg(long, default_value = modtrace::kernel::btf::VMLINUX_BTF, value_name = "FILE")]
    btf: PathBuf,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = 8 << 20, value_parser = parse_ring_size)]
    ring_buffer_size: u32,
    /// Lock file that keeps a second instance from starting.
    #[arg(long, default_value = "/run/modtrace.lock", value_name = "FILE")]
    lock_file: PathBuf,
    /// Policy file (owned by root, not writable by others); SIGHUP reloads
    /// it [default: the embedded default policy]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Count repeated failing calls and autoload requests in the kernel and
    /// report them as `summary` records; `off` reports every call in full.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    aggregate: Switch,
    /// Length of an aggregation window, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=3600))]
    aggregate_window: u32,
    /// Full reports of each distinct failing call per process and window.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    aggregate_threshold: u32,
    /// Failing calls with distinct arguments reported in full per process,
    /// syscall, result and window; beyond it they are only counted.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    aggregate_budget: u32,
    /// Alerts of one rule from one process on failed calls within this many
    /// seconds become the first alert and one closing alert with their count
    /// (0: write every alert). Alerts on calls that succeeded are always
    /// written.
    #[arg(long, value_name = "SECONDS", default_value_t = policy::dedup::DEFAULT_WINDOW_S)]
    alert_window: u64,
    /// Enforce the policy's `deny` rules in the kernel through the BPF LSM:
    /// the loads they match fail with EPERM. Without it deny rules only
    /// alert, and their records say `"would_deny": true`.
    #[arg(long)]
    enforce: bool,
    /// End enforcement when watch exits (SIGINT/SIGTERM). Without it the
    /// LSM programs stay pinned under /sys/fs/bpf/modtrace/ and keep
    /// denying until the next `watch --enforce` takes over or `modtrace
    /// enforce release`.
    #[arg(long, requires = "enforce")]
    release_on_exit: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

impl WatchArgs {
    fn aggregation(&self) -> modtrace::kernel::Aggregation {
        let window = match self.aggregate {
            Switch::On => std::time::Duration::from_secs(self.aggregate_window.into()),
            Switch::Off => std::time::Duration::ZERO,
        };
        modtrace::kernel::Aggregation {
            window,
            threshold: self.aggregate_threshold,
            budget: self.aggregate_budget,
        }
    }
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a size in bytes: {e}"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!("{size} must be a power of two of at least 4096"));
    }
    Ok(size)
}

/// The error and its causes, each said once: an error whose message already
/// quotes its source (`cannot open output file /etc: Is a directory`) is
/// not followed by that source again.
fn each_cause_once(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MODTRACE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("modtrace: error: {}", each_cause_once(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Watch(args) => {
            let terminal = std::io::stdout().is_terminal();
            let aggregation = args.aggregation();
            let options = watch::WatchOptions {
                format: args
                    .format
                    .unwrap_or(if terminal { Format::Text } else { Format::Json }),
                colour: terminal,
                output: args.output,
                strategy: args.strategy.unwrap_or_default(),
                btf: args.btf,
                ring_buffer_bytes: args.ring_buffer_size,
                aggregation,
                lock_file: args.lock_file,
                policy: args.policy,
                alert_window_s: args.alert_window,
                enforce: args.enforce,
                release_on_exit: args.release_on_exit,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime
                .block_on(watch::run(options))
                .context("modtrace watch")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(command) => run_policy(command).map(|()| ExitCode::SUCCESS),
        Command::Replay(args) => run_replay(args).map(|()| ExitCode::SUCCESS),
        Command::Enforce(command) => run_enforce(command).map(|()| ExitCode::SUCCESS),
        Command::Audit(args) => run_audit(&args),
        Command::Baseline(command) => run_baseline(command),
    }
}

/// The owner rule (root-owned, not writable by others) holds for the live
/// host's baseline when root reads it, as for the policy.
fn check_owner(root: &std::path::Path) -> bool {
    nix::unistd::geteuid().is_root() && root == std::path::Path::new("/")
}

fn run_baseline(command: BaselineCommand) -> anyhow::Result<ExitCode> {
    use modtrace::posture::{baseline, HostRoot};
    let progress = std::io::stderr().is_terminal();
    match command {
        BaselineCommand::Create {
            output,
            all_kernels,
            root,
        } => {
            let options = baseline::CreateOptions {
                all_kernels,
                progress,
            };
            let recorded = baseline::create(&HostRoot::new(&root), options)?;
            baseline::write(&recorded, &output)?;
            eprintln!(
                "modtrace: {} module files of {} recorded in {}",
                recorded.files.len(),
                recorded.kernels.join(", "),
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BaselineCommand::Verify {
            file,
            full,
            format,
            root,
        } => {
            let host = HostRoot::new(&root);
            let recorded = baseline::load(&host, &file, check_owner(&root))?;
            let options = baseline::VerifyOptions { full, progress };
            let verification = baseline::verify(&host, &recorded, options)?;
            let terminal = std::io::stdout().is_terminal();
            let text = match format.unwrap_or(if terminal { Format::Text } else { Format::Json }) {
                Format::Json => serde_json::to_string_pretty(&verification)? + "\n",
                Format::Text => verification.text(),
            };
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("writing the verification")?;
            Ok(ExitCode::from(verification.exit_code()))
        }
        BaselineCommand::ExportIds { file, output } => {
            let recorded = baseline::read(&file, check_owner(std::path::Path::new("/")))?;
            std::fs::write(&output, baseline::export_ids(&recorded))
                .with_context(|| format!("cannot write {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_audit(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    use modtrace::posture::{audit, HostRoot};
    let checks = audit::select(&args.checks)?;
    let host = audit::Host::read(HostRoot::new(&args.root));
    let report = audit::run(&host, &checks);
    let terminal = std::io::stdout().is_terminal();
    let text = if args.fix_script {
        audit::fix_script(&report)
    } else {
        match args
            .format
            .unwrap_or(if terminal { Format::Text } else { Format::Json })
        {
            Format::Json => serde_json::to_string_pretty(&report)? + "\n",
            Format::Text => audit::table(&report, terminal),
        }
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the audit")?;
    Ok(ExitCode::from(report.exit_code()))
}

fn run_policy(command: PolicyCommand) -> anyhow::Result<()> {
    let text = match command {
        PolicyCommand::ShowDefault => policy::defaults::DEFAULT_POLICY.to_owned(),
        PolicyCommand::Check { file } => policy::commands::check(&file)?,
        PolicyCommand::Test { file, event } => policy::commands::test(file.as_deref(), &event)?,
    };
    print!("{text}");
    Ok(())
}

fn run_enforce(command: EnforceCommand) -> anyhow::Result<()> {
    let text = match command {
        EnforceCommand::Status { format } => {
            let format = format.unwrap_or(if std::io::stdout().is_terminal() {
                Format::Text
            } else {
                Format::Json
            });
            let status = enforcement::status().context("reading the pinned enforcement")?;
            enforcement::render_status(&status, format)
        }
        EnforceCommand::Release => enforcement::release().context("releasing enforcement")?,
        EnforceCommand::Allow { name, duration } => {
            enforcement::allow(&name, duration).with_context(|| format!("allowing {name}"))?
        }
        EnforceCommand::Lock { also } => {
            enforcement::lock(&also).context("locking module loading")?
        }
    };
    print!("{text}");
    Ok(())
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let name = args.file.display().to_string();
    let input = std::fs::File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
    let terminal = std::io::stdout().is_terminal();
    let mut replay = replay::Replay {
        file: &name,
        format: args
            .format
            .unwrap_or(if terminal { Format::Text } else { Format::Json }),
        colour: terminal,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        diagnostics: std::io::stderr(),
        alert_window_s: args.alert_window,
    };
    let source = replay::PolicySource {
        path: args.policy,
        check_owner: false,
    };
    let summary = replay.run(std::io::BufReader::new(input), &source)?;
    replay.out.flush().context("writing the replay")?;
    eprint!("{}", summary.text());
    Ok(())
}
