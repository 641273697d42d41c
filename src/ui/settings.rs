//! The window's size, kept in GSettings when our schema is installed. A
//! plain `cargo run` has no installed schema; GSettings would abort the
//! process on an unknown schema, so we look it up first and simply do not
//! remember the size then.

use gtk::gio;
use gtk::prelude::*;

/// The schema id. Development builds share it: the window size is the same
/// concern whichever build shows the window.
pub const SCHEMA_ID: &str = "io.github.airlock.Airlock";

/// The window's first size, also the schema's defaults (a test checks).
pub const DEFAULT_SIZE: (i32, i32) = (860, 620);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub width: i32,
    pub height: i32,
    pub maximized: bool,
}

/// Our settings from the system's schema source, if the schema is installed.
pub fn window_settings() -> Option<gio::Settings> {
    let Some(source) = gio::SettingsSchemaSource::default() else {
        tracing::info!("no GSettings schemas installed; the window size is not remembered");
        return None;
    };
    let settings = from_source(&source, None::<&gio::SettingsBackend>);
    if settings.is_none() {
        tracing::info!("schema {SCHEMA_ID} is not installed; the window size is not remembered");
    }
    settings
}

fn from_source(
    source: &gio::SettingsSchemaSource,
    backend: Option<&impl IsA<gio::SettingsBackend>>,
) -> Option<gio::Settings> {
    let schema = source.lookup(SCHEMA_ID, true)?;
    Some(gio::Settings::new_full(&schema, backend, None))
}

pub fn load(settings: &gio::Settings) -> WindowState {
    WindowState {
        width: settings.int("window-width"),
        height: settings.int("window-height"),
        maximized: settings.boolean("window-maximized"),
    }
}

pub fn save(settings: &gio::Settings, state: WindowState) {
    let results = [
        settings.set_int("window-width", state.width),
        settings.set_int("window-height", state.height),
        settings.set_boolean("window-maximized", state.maximized),
    ];
    for result in results {
        if let Err(err) = result {
            tracing::warn!("cannot remember the window size: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn compiled_source(dir: &Path, with_schema: bool) -> gio::SettingsSchemaSource {
        if with_schema {
            let schema = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data/io.github.airlock.Airlock.gschema.xml"
            );
            std::fs::copy(schema, dir.join("io.github.airlock.Airlock.gschema.xml")).unwrap();
        }
        let status = Command::new("glib-compile-schemas")
            .arg("--strict")
            .arg(dir)
            .status()
            .expect("glib-compile-schemas (libglib2.0-bin) must be installed");
        assert!(status.success());
        gio::SettingsSchemaSource::from_directory(dir, None, false).unwrap()
    }

    #[test]
    fn window_state_round_trips_through_the_real_schema() {
        let dir = tempfile::tempdir().unwrap();
        let source = compiled_source(dir.path(), true);
        let backend = gio::memory_settings_backend_new();
        let settings = from_source(&source, Some(&backend)).expect("schema found");
        assert_eq!(
            load(&settings),
            WindowState {
                width: DEFAULT_SIZE.0,
                height: DEFAULT_SIZE.1,
                maximized: false
            }
        );
        let state = WindowState {
            width: 1024,
            height: 700,
            maximized: true,
        };
        save(&settings, state);
        assert_eq!(load(&settings), state);
    }

    #[test]
    fn a_missing_schema_means_no_settings_and_no_panic() {
        let dir = tempfile::tempdir().unwrap();
        // glib-compile-schemas refuses an empty folder; add an unrelated schema.
        std::fs::write(
            dir.path().join("org.example.Other.gschema.xml"),
            r#"<schemalist><schema id="org.example.Other" path="/org/example/Other/">
               <key name="k" type="b"><default>false</default></key></schema></schemalist>"#,
        )
        .unwrap();
        let source = compiled_source(dir.path(), false);
        let backend = gio::memory_settings_backend_new();
        assert!(from_source(&source, Some(&backend)).is_none());
    }
}
