//! Compiles the GResource bundle (UI files and icons) so that plain
//! `cargo build` and `cargo test` work without meson.

fn main() {
    glib_build_tools::compile_resources(
        &["data"],
        "data/resources.gresource.xml",
        "airlock.gresource",
    );
}
