//! `IdRules::{check_path, check, check_list, filter_list}` under the default
//! id pattern and a permissive one. Whatever the pattern, an accepted id is
//! path-safe; `check_path` accepts exactly the strict percent-decoding of
//! ids that `check` accepts; lists fold duplicates and respect the max.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profile_edge::lookup::IdError;
use profile_edge_fuzz::{is_path_safe, reference_dedup, reference_percent_decode, rules_from};

#[derive(Arbitrary, Debug)]
struct Input {
    rules: u8,
    raw: String,
    list: Vec<String>,
}

fuzz_target!(|input: Input| {
    let (rules, max) = rules_from(input.rules);
    let raw = input.raw.as_str();

    // check_path
    let decoded = reference_percent_decode(raw);
    match rules.check_path("id", raw) {
        Ok(id) => {
            assert!(
                rules.check("id", &id).is_ok(),
                "check_path accepted {raw:?} -> {id:?}, check refuses it"
            );
            assert!(
                is_path_safe(&id),
                "check_path accepted unsafe {id:?} from {raw:?}"
            );
            assert_eq!(
                decoded.as_deref(),
                Some(&*id),
                "check_path decoded {raw:?} differently"
            );
        }
        Err(IdError::Invalid { field, id }) => {
            assert_eq!((field.as_str(), id.as_str()), ("id", raw));
            if let Some(d) = &decoded {
                assert!(
                    rules.check("id", d).is_err(),
                    "check_path refused {raw:?}, whose decoding {d:?} check accepts"
                );
            }
        }
        Err(e) => panic!("check_path gave {e:?}"),
    }

    // check
    match rules.check("id", raw) {
        Ok(()) => {
            assert!(is_path_safe(raw), "check accepted unsafe {raw:?}");
            if !raw.contains('%') {
                assert_eq!(rules.check_path("id", raw).as_deref(), Ok(raw));
            }
        }
        Err(IdError::Invalid { field, id }) => {
            assert_eq!((field.as_str(), id.as_str()), ("id", raw))
        }
        Err(e) => panic!("check gave {e:?}"),
    }

    // check_list
    let want = reference_dedup(&input.list);
    match rules.check_list("ids", input.list.clone()) {
        Ok(ids) => {
            assert_eq!(ids, want, "duplicates not folded to first occurrences");
            assert!(ids.len() <= max, "{} ids > max {max}", ids.len());
            for id in &ids {
                assert!(
                    rules.check("id", id).is_ok() && is_path_safe(id),
                    "list passed invalid {id:?}"
                );
            }
        }
        Err(IdError::TooMany { count, max: m }) => {
            assert_eq!((count, m), (want.len(), max));
            assert!(count > max);
        }
        Err(IdError::Invalid { field, id }) => {
            assert!(want.len() <= max, "too many ids reported as invalid");
            let i = want
                .iter()
                .position(|w| *w == id)
                .expect("the refused id is in the list");
            assert_eq!(field, format!("ids[{i}]"));
            assert!(rules.check("id", &id).is_err(), "refused a valid id {id:?}");
            assert!(
                want[..i].iter().all(|w| rules.check("id", w).is_ok()),
                "not the first invalid id"
            );
        }
    }

    // filter_list
    let kept: Vec<String> = want
        .iter()
        .filter(|w| rules.check("id", w).is_ok())
        .take(max)
        .cloned()
        .collect();
    assert_eq!(rules.filter_list(input.list), kept);
});
