#![no_main]
// The rules parser never panics; a refusal names a line and column inside the text.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A rules directory holding the shipped cluster key and tokens, so valid
/// rules get as far as validation does for real.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("vmsentry-fuzz-rules-{}", std::process::id()));
        let _ = std::fs::create_dir_all(d.join("tokens"));
        let key = d.join("cluster.key");
        let _ = std::fs::write(&key, [b'k'; 32]);
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
        d
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(vmsentry::config::RulesError::At { line, col, .. }) =
        vmsentry::config::Rules::from_str_in(dir(), Path::new("vmsentry.toml"), text)
    {
        assert!(line >= 1 && col >= 1, "{line}:{col}");
        assert!(line <= text.lines().count().max(1) + 1, "line {line} past the end");
    }
});
