//! Translation set-up. Every user-visible string goes through [`gettext`];
//! [`gettext_f`] fills `{name}` placeholders after translation so that
//! translators see whole sentences.

pub use gettextrs::gettext;

use crate::config;

/// Binds our text domain. Failure only means messages stay in English, so it
/// is logged, never fatal.
pub fn init() {
    if let Err(err) = gettextrs::setlocale(gettextrs::LocaleCategory::LcAll, "")
        .ok_or("setlocale")
        .map(|_| ())
    {
        tracing::debug!("locale not set: {err}");
    }
    let results = [
        gettextrs::bindtextdomain(config::GETTEXT_PACKAGE, config::LOCALEDIR).map(|_| ()),
        gettextrs::bind_textdomain_codeset(config::GETTEXT_PACKAGE, "UTF-8").map(|_| ()),
        gettextrs::textdomain(config::GETTEXT_PACKAGE).map(|_| ()),
    ];
    for r in results {
        if let Err(err) = r {
            tracing::debug!("gettext set-up: {err}");
        }
    }
}

/// Translates `msgid`, then replaces each `{key}` with its value.
pub fn gettext_f(msgid: &str, args: &[(&str, &str)]) -> String {
    let mut s = gettext(msgid);
    for (k, v) in args {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}
