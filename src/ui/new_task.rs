//! The "New Task" dialog: a command, and the folders the task may see, each
//! read-only or writable. Folders come from the file chooser (the
//! xdg-desktop-portal one when a portal runs). Start hands a
//! [`TaskRequest`] to the window; the dialog itself runs nothing.

use std::path::{Path, PathBuf};

use adw::prelude::*;
use gtk::glib;
use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::{Component, ComponentParts, ComponentSender};

use super::task_runner::TaskRequest;
use crate::i18n::gettext;
use crate::policy::{Access, Grant};

pub struct NewTaskDialog {
    command: String,
    folders: FactoryVecDeque<FolderRow>,
    /// Kept while the chooser is open: GTK does not keep a native dialog
    /// alive by itself.
    chooser: Option<gtk::FileChooserNative>,
}

#[derive(Debug)]
pub enum NewTaskInput {
    Show,
    CommandChanged(String),
    ChooseFolder,
    FolderChosen(Option<PathBuf>),
    RemoveFolder(DynamicIndex),
    Start,
}

#[derive(Debug)]
pub enum NewTaskOutput {
    Start(TaskRequest),
}

pub struct NewTaskWidgets {
    command_row: adw::EntryRow,
    start_button: gtk::Button,
}

/// The request for `command` over `folders` (path, writable), or `None`
/// while the command is blank.
fn build_request<'a>(
    command: &str,
    folders: impl Iterator<Item = (&'a Path, bool)>,
) -> Option<TaskRequest> {
    let command = command.trim();
    if command.is_empty() {
        return None;
    }
    let grants = folders
        .map(|(path, writable)| Grant {
            path: path.to_owned(),
            access: if writable { Access::Rw } else { Access::Ro },
        })
        .collect();
    Some(TaskRequest {
        command: command.to_owned(),
        grants,
    })
}

impl NewTaskDialog {
    fn request(&self) -> Option<TaskRequest> {
        build_request(
            &self.command,
            self.folders
                .iter()
                .map(|row| (row.path.as_path(), row.writable)),
        )
    }

    fn open_chooser(&mut self, parent: &adw::Window, sender: &ComponentSender<Self>) {
        let chooser = gtk::FileChooserNative::new(
            Some(&gettext("Choose a Folder for the Task")),
            Some(parent),
            gtk::FileChooserAction::SelectFolder,
            Some(&gettext("_Add")),
            Some(&gettext("_Cancel")),
        );
        chooser.set_modal(true);
        let sender = sender.clone();
        chooser.connect_response(move |chooser, response| {
            let path = (response == gtk::ResponseType::Accept)
                .then(|| chooser.file())
                .flatten()
                .and_then(|file| file.path());
            sender.input(NewTaskInput::FolderChosen(path));
        });
        chooser.show();
        self.chooser = Some(chooser);
    }
}

impl Component for NewTaskDialog {
    type Init = ();
    type Input = NewTaskInput;
    type Output = NewTaskOutput;
    type CommandOutput = ();
    type Root = adw::Window;
    type Widgets = NewTaskWidgets;

    fn init_root() -> Self::Root {
        adw::Window::builder()
            .title(gettext("New Task"))
            .modal(true)
            .hide_on_close(true)
            .destroy_with_parent(true)
            .default_width(560)
            .default_height(520)
            .build()
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let builder = gtk::Builder::from_resource(&super::resource("ui/new-task-dialog.ui"));
        let content: gtk::Box = super::object(&builder, "content");
        let command_row: adw::EntryRow = super::object(&builder, "command_row");
        let start_button: gtk::Button = super::object(&builder, "start_button");
        let add_folder_button: gtk::Button = super::object(&builder, "add_folder_button");
        let folder_list: gtk::ListBox = super::object(&builder, "folder_list");
        root.set_content(Some(&content));

        let escape = gtk::ShortcutController::new();
        escape.add_shortcut(gtk::Shortcut::new(
            gtk::ShortcutTrigger::parse_string("Escape"),
            Some(gtk::NamedAction::new("window.close")),
        ));
        root.add_controller(escape);

        let s = sender.clone();
        command_row.connect_changed(move |row| {
            s.input(NewTaskInput::CommandChanged(row.text().into()));
        });
        let s = sender.clone();
        command_row.connect_entry_activated(move |_| s.input(NewTaskInput::Start));
        let s = sender.clone();
        start_button.connect_clicked(move |_| s.input(NewTaskInput::Start));
        let s = sender.clone();
        add_folder_button.connect_clicked(move |_| s.input(NewTaskInput::ChooseFolder));

        let folders = FactoryVecDeque::builder()
            .launch(folder_list)
            .forward(sender.input_sender(), |FolderRowOutput::Remove(index)| {
                NewTaskInput::RemoveFolder(index)
            });

        let model = NewTaskDialog {
            command: String::new(),
            folders,
            chooser: None,
        };
        let widgets = NewTaskWidgets {
            command_row,
            start_button,
        };
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
            NewTaskInput::Show => {
                root.present();
                widgets.command_row.grab_focus();
            }
            NewTaskInput::CommandChanged(command) => self.command = command,
            NewTaskInput::ChooseFolder => self.open_chooser(root, &sender),
            NewTaskInput::FolderChosen(path) => {
                self.chooser = None;
                if let Some(path) = path {
                    if !self.folders.iter().any(|row| row.path == path) {
                        self.folders.guard().push_back(path);
                    }
                }
            }
            NewTaskInput::RemoveFolder(index) => {
                self.folders.guard().remove(index.current_index());
            }
            NewTaskInput::Start => {
                let Some(request) = self.request() else {
                    return;
                };
                if sender.output(NewTaskOutput::Start(request)).is_err() {
                    tracing::warn!("the window is gone; the task was not started");
                }
                // A fresh dialog next time; Cancel, by contrast, keeps the draft.
                self.folders.guard().clear();
                widgets.command_row.set_text("");
                root.close();
            }
        }
        widgets
            .start_button
            .set_sensitive(!self.command.trim().is_empty());
    }
}

/// One granted folder in the dialog's list.
struct FolderRow {
    path: PathBuf,
    writable: bool,
}

#[derive(Debug)]
enum FolderRowInput {
    SetWritable(bool),
}

#[derive(Debug)]
enum FolderRowOutput {
    Remove(DynamicIndex),
}

/// `~/Projects/x` rather than `/home/someone/Projects/x`.
fn short_path(path: &Path) -> String {
    short_path_in(path, &glib::home_dir())
}

fn short_path_in(path: &Path, home: &Path) -> String {
    // A home of "/" (some service accounts) would turn every path into "~/…".
    if home.parent().is_none() {
        return path.display().to_string();
    }
    match path.strip_prefix(home) {
        Ok(rest) if rest.as_os_str().is_empty() => "~".to_owned(),
        Ok(rest) => format!("~/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

fn access_label(writable: bool) -> String {
    if writable {
        gettext("Writable")
    } else {
        gettext("Read-only")
    }
}

#[relm4::factory]
impl FactoryComponent for FolderRow {
    type Init = PathBuf;
    type Input = FolderRowInput;
    type Output = FolderRowOutput;
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        adw::ActionRow {
            // Folder names are not Pango markup.
            set_use_markup: false,
            set_title: &self.path.file_name().map_or_else(
                || self.path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            set_subtitle: &short_path(&self.path),
            add_prefix = &gtk::Image {
                set_icon_name: Some("folder-symbolic"),
            },
            add_suffix = &gtk::Label {
                add_css_class: "dim-label",
                #[watch]
                set_label: &access_label(self.writable),
            },
            add_suffix = &gtk::Switch {
                set_valign: gtk::Align::Center,
                set_active: self.writable,
                set_tooltip_text: Some(&gettext("Let the task change this folder; changes wait for your review")),
                connect_state_set[sender] => move |_, writable| {
                    sender.input(FolderRowInput::SetWritable(writable));
                    glib::Propagation::Proceed
                },
            },
            add_suffix = &gtk::Button {
                set_icon_name: "user-trash-symbolic",
                set_valign: gtk::Align::Center,
                set_tooltip_text: Some(&gettext("Remove")),
                add_css_class: "flat",
                connect_clicked[sender, index] => move |_| {
                    if sender.output(FolderRowOutput::Remove(index.clone())).is_err() {
                        tracing::warn!("the New Task dialog is gone");
                    }
                },
            },
        }
    }

    fn init_model(path: PathBuf, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        FolderRow {
            path,
            writable: false,
        }
    }

    fn update(&mut self, message: FolderRowInput, _sender: FactorySender<Self>) {
        match message {
            FolderRowInput::SetWritable(writable) => self.writable = writable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_needs_a_command_and_keeps_each_folders_access() {
        let docs = Path::new("/home/u/Docs");
        let site = Path::new("/home/u/site");
        assert_eq!(build_request("  \n", [(docs, false)].into_iter()), None);
        let request = build_request(" make test ", [(docs, false), (site, true)].into_iter());
        assert_eq!(
            request,
            Some(TaskRequest {
                command: "make test".into(),
                grants: vec![
                    Grant {
                        path: docs.into(),
                        access: Access::Ro
                    },
                    Grant {
                        path: site.into(),
                        access: Access::Rw
                    },
                ],
            })
        );
    }

    #[test]
    fn paths_under_home_are_shown_with_a_tilde() {
        let home = Path::new("/home/u");
        assert_eq!(short_path_in(home, home), "~");
        assert_eq!(
            short_path_in(Path::new("/home/u/Projects/x"), home),
            "~/Projects/x"
        );
        assert_eq!(
            short_path_in(Path::new("/home/user2/x"), home),
            "/home/user2/x"
        );
        assert_eq!(
            short_path_in(Path::new("/srv/data"), Path::new("/")),
            "/srv/data"
        );
    }
}
