//! A policy built against another version of the WIT package: the proxy
//! must refuse it at load time with a clear message.

wit_bindgen::generate!({
    inline: r#"
        package profile-edge:policy@0.0.9;
        interface enricher {
            needed-ids: func(body: string) -> result<list<string>, string>;
            enrich: func(body: string, profiles: list<string>) -> result<string, string>;
        }
        world enrich-policy {
            export enricher;
        }
    "#,
    world: "enrich-policy",
});

use exports::profile_edge::policy::enricher::Guest;

struct Policy;

impl Guest for Policy {
    fn needed_ids(_body: String) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn enrich(body: String, _profiles: Vec<String>) -> Result<String, String> {
        Ok(body)
    }
}

export!(Policy);
