//! The command line itself: shell completion scripts.

use crate::support::{Env, assert_success};

#[test]
fn completion_scripts_cover_every_command_and_load_in_bash() {
    let env = Env::uninitialised();
    let out = env.vault(&["completion", "bash"]);
    assert_success(&out);
    let script = String::from_utf8(out.stdout).unwrap();
    for command in [
        "backup",
        "restore",
        "find",
        "tag",
        "rewrite",
        "extend-retention",
    ] {
        assert!(script.contains(command), "no {command} in the bash script");
    }
    // bash accepts it and registers the completion function.
    let path = env.path("vault.bash");
    std::fs::write(&path, &script).unwrap();
    let loaded = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p vault", path.display()),
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("_vault"));
    for shell in ["zsh", "fish"] {
        let out = env.vault(&["completion", shell]);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rewrite"),
            "{shell}"
        );
    }
    assert!(!env.vault(&["completion", "tcsh"]).status.success());
}
