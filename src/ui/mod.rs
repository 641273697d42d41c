//! The libadwaita window, built with relm4. Layout lives in GtkBuilder files
//! under `data/ui/` (compiled into the binary by `build.rs`); each component
//! loads its part and keeps the widgets it updates.
//!
//! - [`window`]: the application window, its actions and toasts.
//! - [`new_task`]: the New Task dialog and its folder rows.
//! - [`task_runner`]: runs a task as an `airlock run` process.
//! - [`settings`]: window size persistence in GSettings.

pub mod new_task;
pub mod settings;
pub mod task_runner;
pub mod window;

use std::process::ExitCode;

use adw::prelude::*;
use gtk::{gio, glib};
use relm4::RelmApp;

use crate::config;
use crate::i18n::gettext_f;

/// Where our resources live, whatever the app id (`.Devel` included).
const RESOURCE_BASE: &str = "/io/github/airlock/Airlock";

/// The icon bundled in our resources (the installed one is named after the
/// app id, which differs in development builds).
pub const ICON_NAME: &str = "io.github.airlock.Airlock";

fn resource(path: &str) -> String {
    format!("{RESOURCE_BASE}/{path}")
}

/// An object from one of our own, compiled-in UI files. A missing id is a
/// mistake in this program, caught by the first start of the window.
fn object<T: IsA<glib::Object>>(builder: &gtk::Builder, id: &str) -> T {
    builder
        .object(id)
        .unwrap_or_else(|| panic!("UI file lacks an object {id:?} of the expected type"))
}

/// Opens the window and runs until it is closed.
pub fn run() -> ExitCode {
    if let Err(err) = gio::resources_register_include!("airlock.gresource") {
        eprintln!(
            "{}",
            gettext_f(
                "Cannot load the window's resources: {error}",
                &[("error", &err.to_string())]
            )
        );
        return ExitCode::FAILURE;
    }
    if let Err(err) = gtk::init() {
        tracing::debug!("gtk::init: {err}");
        eprintln!(
            "{}",
            gettext_f(
                "Cannot open the window: no graphical session was found ({error}). From a terminal, “airlock run” starts a task and “airlock --help” lists the other commands.",
                &[("error", &err.to_string())],
            )
        );
        return ExitCode::FAILURE;
    }
    glib::set_application_name("Airlock");

    let app = adw::Application::builder()
        .application_id(config::APP_ID)
        .resource_base_path(RESOURCE_BASE)
        .build();
    let quit = gio::ActionEntry::builder("quit")
        .activate(|app: &adw::Application, _, _| {
            // Closing each window (rather than app.quit()) lets it save its size.
            for window in app.windows() {
                window.close();
            }
        })
        .build();
    app.add_action_entries([quit]);
    app.set_accels_for_action("app.quit", &["<Control>q"]);
    app.set_accels_for_action("win.new-task", &["<Control>n"]);

    // Our own command line was parsed by clap already; GApplication must not
    // see options such as `--verbose`.
    let program = std::env::args()
        .next()
        .unwrap_or_else(|| "airlock".to_owned());
    RelmApp::from_app(app)
        .with_args(vec![program])
        .run::<window::AppWindow>(());
    ExitCode::SUCCESS
}
