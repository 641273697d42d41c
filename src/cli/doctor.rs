//! `airlock doctor` and the hidden `airlock __probe` used by its probes.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::doctor::{self, ProbeKind, Report, Status};
use crate::i18n::gettext;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report (and the raw probe results) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of the hidden probe child.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[arg(value_enum)]
    pub kind: ProbeKind,
    /// Scratch folder of the overlay probe.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    can_run: bool,
    summary: String,
    checks: &'a [doctor::Check],
    probes: &'a doctor::Probes,
}

/// Exit status 0 when Airlock can run tasks here, 1 otherwise.
pub fn main(args: DoctorArgs, verbose: bool) -> ExitCode {
    let probes = doctor::gather();
    let report = Report::from_probes(&probes);
    if args.json {
        let json = JsonReport {
            can_run: report.can_run(),
            summary: report.summary(),
            checks: &report.checks,
            probes: &probes,
        };
        match serde_json::to_string_pretty(&json) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render(&report, verbose));
    }
    if report.can_run() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One line per check; the fix and the technical detail indented below it
/// (the detail only when something is wrong, or with --verbose).
fn render(report: &Report, verbose: bool) -> String {
    let fix_label = gettext("Fix:");
    let mut out = String::new();
    for c in &report.checks {
        out.push_str(&format!(
            "{} {}: {}\n",
            c.status.symbol(),
            c.title,
            c.consequence
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("    {fix_label} {fix}\n"));
        }
        if let Some(detail) = &c.detail {
            if verbose || c.status != Status::Ok {
                out.push_str(&format!("    ({detail})\n"));
            }
        }
    }
    out.push('\n');
    out.push_str(&report.summary());
    out.push('\n');
    out
}

/// The probe child: runs one probe and exits.
pub fn probe_main(args: ProbeArgs) -> ExitCode {
    doctor::child::main(args.kind, args.dir.as_deref())
}
