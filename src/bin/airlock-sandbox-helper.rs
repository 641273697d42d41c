//! The sandbox helper as a binary of its own. It links none of the GTK
//! stack, so the dynamic loader has a few libraries to map instead of ~70
//! each time a task starts. `airlock` uses it when it is installed next to
//! itself (see `airlock::sandbox::helper_exe`) and runs its own hidden
//! helper mode otherwise.

fn main() {
    // Started by hand (not by the supervisor, which passes the hidden
    // argument and the control socket): say what this is.
    if std::env::args_os().nth(1).as_deref()
        != Some(std::ffi::OsStr::new(airlock::sandbox::HELPER_ARG))
    {
        eprintln!("{}", airlock::i18n::gettext("airlock-sandbox-helper is started by airlock to build a task's sandbox; run `airlock run` instead"));
        std::process::exit(2);
    }
    airlock::sandbox::helper_main();
}
