//! The static path resolver on arbitrary request paths: whatever it accepts is a
//! relative path of plain names, never `..`, never absolute, never a dotfile.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use threadchat::static_files::relative_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = relative_path(raw) else { return };
    for part in path.components() {
        let Component::Normal(name) = part else { panic!("{raw:?} gave {path:?}") };
        assert!(!name.to_string_lossy().starts_with('.'), "{raw:?} gave {path:?}");
    }
});
