//! Build-time configuration. Meson sets these through the environment when it
//! drives cargo; plain `cargo build` gets the development defaults, so
//! `cargo test` never needs meson first.

/// The application id (`io.github.airlock.Airlock`, `.Devel` in development builds).
pub const APP_ID: &str = match option_env!("AIRLOCK_APP_ID") {
    Some(v) => v,
    None => "io.github.airlock.Airlock",
};

/// `default` for release builds, `development` for the `.Devel` profile.
pub const PROFILE: &str = match option_env!("AIRLOCK_PROFILE") {
    Some(v) => v,
    None => "default",
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The gettext domain of our translations.
pub const GETTEXT_PACKAGE: &str = match option_env!("AIRLOCK_GETTEXT_PACKAGE") {
    Some(v) => v,
    None => "airlock",
};

/// Where compiled translations live (`$prefix/share/locale` under meson).
pub const LOCALEDIR: &str = match option_env!("AIRLOCK_LOCALEDIR") {
    Some(v) => v,
    None => "/usr/share/locale",
};

/// The D-Bus name the running app owns.
pub const DBUS_NAME: &str = "io.github.airlock.Airlock";

/// Whether this is a development build (adds the `devel` style class).
pub fn is_devel() -> bool {
    PROFILE == "development"
}
