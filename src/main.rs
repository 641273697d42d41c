fn main() -> std::process::ExitCode {
    // The sandbox helper must start before anything can create a thread: it
    // unshares namespaces, which a multi-threaded process cannot do.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(airlock::sandbox::HELPER_ARG))
    {
        airlock::sandbox::helper_main();
    }
    // Removing or measuring a deep tree an agent left holds one descriptor
    // per level: as many as the hard limit allows (the sandbox sets its
    // own limit for the agent).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    airlock::cli::main()
}
