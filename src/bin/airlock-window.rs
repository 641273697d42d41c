//! The Airlock window. `airlock` with no command runs this program; it is
//! the only one that links GTK and libadwaita, so that the command line and
//! the sandbox start without loading them.

fn main() -> std::process::ExitCode {
    airlock::i18n::init();
    let verbose = std::env::args_os()
        .skip(1)
        .any(|a| a == "--verbose" || a == "-v");
    airlock::cli::init_tracing(verbose);
    airlock::ui::run()
}
