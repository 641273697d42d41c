//! The main window: a header bar with the primary menu, and for now the
//! empty state that says what Airlock does and offers "New Task". Tasks
//! started here run as `airlock run` processes ([`task_runner`]); their
//! outcome comes back as a toast.

use std::collections::HashMap;

use adw::prelude::*;
use gtk::{gio, glib};
use relm4::{Component, ComponentController, ComponentParts, ComponentSender, Controller};

use super::new_task::{NewTaskDialog, NewTaskInput, NewTaskOutput};
use super::settings::{self, WindowState};
use super::task_runner::{self, Outcome, TaskRequest};
use crate::config;
use crate::i18n::{gettext, gettext_f};

pub struct AppWindow {
    new_task: Controller<NewTaskDialog>,
    /// The `airlock run` processes started here that have not finished,
    /// by the number this window gave them.
    running: HashMap<u64, gio::Subprocess>,
    next_task: u64,
}

#[derive(Debug)]
pub enum AppMsg {
    NewTask,
    About,
    Start(TaskRequest),
    Finished(u64, Outcome),
}

pub struct AppWidgets {
    toast_overlay: adw::ToastOverlay,
    spinner: gtk::Spinner,
}

impl Component for AppWindow {
    type Init = ();
    type Input = AppMsg;
    type Output = ();
    type CommandOutput = ();
    type Root = adw::ApplicationWindow;
    type Widgets = AppWidgets;

    fn init_root() -> Self::Root {
        adw::ApplicationWindow::builder()
            .title("Airlock")
            .width_request(360)
            .height_request(294)
            .build()
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let builder = gtk::Builder::from_resource(&super::resource("ui/window.ui"));
        let content: gtk::Box = super::object(&builder, "content");
        let toast_overlay: adw::ToastOverlay = super::object(&builder, "toast_overlay");
        let spinner: gtk::Spinner = super::object(&builder, "spinner");
        root.set_content(Some(&content));
        if config::is_devel() {
            root.add_css_class("devel");
        }
        remember_size(&root);

        let s = sender.clone();
        let new_task = gio::ActionEntry::builder("new-task")
            .activate(move |_: &adw::ApplicationWindow, _, _| s.input(AppMsg::NewTask))
            .build();
        let s = sender.clone();
        let about = gio::ActionEntry::builder("about")
            .activate(move |_: &adw::ApplicationWindow, _, _| s.input(AppMsg::About))
            .build();
        root.add_action_entries([new_task, about]);

        let new_task = NewTaskDialog::builder()
            .transient_for(&root)
            .launch(())
            .forward(sender.input_sender(), |NewTaskOutput::Start(request)| {
                AppMsg::Start(request)
            });

        let model = AppWindow {
            new_task,
            running: HashMap::new(),
            next_task: 0,
        };
        let mut widgets = AppWidgets {
            toast_overlay,
            spinner,
        };
        model.update_view(&mut widgets, sender);
        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        match message {
            AppMsg::NewTask => self.new_task.emit(NewTaskInput::Show),
            AppMsg::About => show_about(root),
            AppMsg::Start(request) => {
                let argv = task_runner::argv(task_runner::this_launcher(), &request);
                let running = match task_runner::start(argv) {
                    Ok(running) => running,
                    Err(outcome) => {
                        widgets
                            .toast_overlay
                            .add_toast(failure_toast(root, outcome));
                        return;
                    }
                };
                let id = self.next_task;
                self.next_task += 1;
                self.running.insert(id, running.process());
                let toast = plain_toast(&gettext_f(
                    "Task started: {command}",
                    &[("command", &request.command)],
                ));
                widgets.toast_overlay.add_toast(toast.clone());
                let input = sender.input_sender().clone();
                relm4::spawn_local(async move {
                    let outcome = running.finish().await;
                    // Its outcome replaces the start notice, if still queued.
                    toast.dismiss();
                    input.emit(AppMsg::Finished(id, outcome));
                });
            }
            AppMsg::Finished(id, outcome) => {
                self.running.remove(&id);
                let toast = if outcome.success {
                    plain_toast(&outcome.message)
                } else {
                    failure_toast(root, outcome)
                };
                widgets.toast_overlay.add_toast(toast);
            }
        }
        self.update_view(widgets, sender);
    }

    fn update_view(&self, widgets: &mut Self::Widgets, _sender: ComponentSender<Self>) {
        let busy = !self.running.is_empty();
        widgets.spinner.set_visible(busy);
        widgets.spinner.set_spinning(busy);
    }

    /// The window is gone, and with it the pipes of any running task: stop
    /// them now rather than let them die on their next write. What they
    /// wrote so far stays in their task folders for review.
    fn shutdown(&mut self, _widgets: &mut Self::Widgets, _output: relm4::Sender<()>) {
        for process in self.running.values() {
            tracing::info!("stopping task process {:?}", process.identifier());
            process.send_signal(libc::SIGTERM);
        }
    }
}

/// A toast showing `text` as it is: commands and error output are not
/// Pango markup (libadwaita 1.2 always parses a toast's title as markup).
fn plain_toast(text: &str) -> adw::Toast {
    adw::Toast::new(&glib::markup_escape_text(text))
}

/// A failure stays until dismissed, and a toast is one line: the whole
/// reason is one click away.
fn failure_toast(window: &adw::ApplicationWindow, outcome: Outcome) -> adw::Toast {
    let toast = plain_toast(&outcome.message);
    toast.set_timeout(0);
    toast.set_priority(adw::ToastPriority::High);
    toast.set_button_label(Some(&gettext("Details")));
    let window = window.clone();
    toast.connect_button_clicked(move |_| show_failure(&window, &outcome));
    toast
}

/// Restores the last size and saves it on close, when our schema is
/// installed; without it the window opens at its default size.
fn remember_size(window: &adw::ApplicationWindow) {
    let Some(settings) = settings::window_settings() else {
        window.set_default_size(settings::DEFAULT_SIZE.0, settings::DEFAULT_SIZE.1);
        return;
    };
    let state = settings::load(&settings);
    window.set_default_size(state.width, state.height);
    if state.maximized {
        window.maximize();
    }
    window.connect_close_request(move |window| {
        let (width, height) = window.default_size();
        settings::save(
            &settings,
            WindowState {
                width,
                height,
                maximized: window.is_maximized(),
            },
        );
        glib::Propagation::Proceed
    });
}

fn show_failure(parent: &adw::ApplicationWindow, outcome: &Outcome) {
    let dialog = adw::MessageDialog::new(
        Some(parent),
        Some(&gettext("The Task Failed")),
        Some(&outcome.message),
    );
    dialog.add_response("close", &gettext("_Close"));
    if !outcome.details.is_empty() {
        let details = gtk::Label::builder()
            .label(&outcome.details)
            .selectable(true)
            .wrap(true)
            .wrap_mode(gtk::pango::WrapMode::WordChar)
            .xalign(0.0)
            .valign(gtk::Align::Start)
            .margin_top(6)
            .margin_bottom(6)
            .margin_start(6)
            .margin_end(6)
            .css_classes(["monospace"])
            .build();
        let scrolled = gtk::ScrolledWindow::builder()
            .child(&details)
            .hscrollbar_policy(gtk::PolicyType::Never)
            .min_content_height(120)
            .max_content_height(300)
            .propagate_natural_height(true)
            .css_classes(["card"])
            .build();
        dialog.set_extra_child(Some(&scrolled));
    }
    dialog.present();
}

fn show_about(parent: &adw::ApplicationWindow) {
    let about = adw::AboutWindow::builder()
        .transient_for(parent)
        .modal(true)
        .application_name("Airlock")
        .application_icon(super::ICON_NAME)
        .version(config::VERSION)
        .comments(gettext(
            "Run AI agents and other commands in a sandbox on the folders you choose, and review every change before it reaches your files.",
        ))
        .developer_name(gettext("The Airlock developers"))
        .copyright(gettext("© 2026 The Airlock developers"))
        .license_type(gtk::License::Gpl30)
        .website(env!("CARGO_PKG_REPOSITORY"))
        .issue_url(concat!(env!("CARGO_PKG_REPOSITORY"), "/issues"))
        .build();
    // Translators: replace with your names, one per line.
    let credits = gettext("translator-credits");
    // Untranslated, the msgid itself comes back: no credits to show then.
    if credits != "translator-credits" {
        about.set_translator_credits(&credits);
    }
    about.present();
}
