//! `backplane::message`: whatever fields an entry on the log holds,
//! `Message::parse` never panics, and a message it accepts writes back to
//! fields that parse to the same message (nothing is lost or invented).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use profile_edge::backplane::Message;
use profile_edge::lookup::IdRules;
use regex::Regex;

#[derive(Arbitrary, Debug)]
struct Entry {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let ids = IdRules::new(Regex::new("^[0-9a-zA-Z-]{1,64}$").expect("regex"), 1000);
    if let Ok(m) = Message::parse(&entry.fields, &ids) {
        assert!(ids.is_valid(&m.id), "accepted an invalid id: {m:?}");
        let again: Vec<(Vec<u8>, Vec<u8>)> = m
            .fields()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(Message::parse(&again, &ids), Ok(m));
    }
});
