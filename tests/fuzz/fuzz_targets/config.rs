//! `Config::parse` then `validate()`: never panics on any text; a config it
//! accepts validates clean and its id pattern compiles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profile_edge::config::Config;

fuzz_target!(|data: &[u8]| {
    // Valid UTF-8 is borrowed as is; anything else is fed as the lossy text
    // (what a reader that replaced bad bytes would see).
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.toml") {
        Ok(cfg) => {
            let problems = cfg.validate();
            assert!(
                problems.is_empty(),
                "parse accepted a config that validate refuses: {problems:?}"
            );
            regex::Regex::new(&cfg.profiles.id_pattern).expect("an accepted id_pattern compiles");
        }
        Err(e) => {
            assert!(
                !e.problems.is_empty(),
                "an error names at least one problem"
            );
            assert_eq!(e.file, "fuzz.toml");
            let _ = e.to_string();
        }
    }
});
