fn main() -> std::process::ExitCode {
    // The sandbox helper must start before anything can create a thread: it
    // unshares namespaces, which a multi-threaded process cannot do.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(airlock::sandbox::HELPER_ARG))
    {
        airlock::sandbox::helper_main();
    }
    airlock::cli::main()
}
